//! How resources and reports are shown.

use serde_json::Value;
use strait_api::Kind;
use strait_api::parse::Parsed;

/// `file[2] VirtualService default/reviews`: where a document is and what it is.
pub fn describe(doc: &Parsed) -> String {
    let what = match (doc.kind.as_str(), doc.name.as_str()) {
        ("", _) => "document".to_string(),
        (k, "") => k.to_string(),
        (k, n) => match &doc.namespace {
            Some(ns) => format!("{k} {ns}/{n}"),
            None => format!("{k} {n}"),
        },
    };
    format!("{}[{}] {what}", doc.source.file, doc.source.index)
}

/// A table column: its header and how to read its cell from an object.
type Column = (&'static str, fn(&Value) -> String);

/// A kubectl-like table of `items`.
pub fn table(kind: Kind, items: &[Value], with_namespace: bool) -> String {
    let columns: &[Column] = match kind {
        Kind::VirtualService => &[
            ("GATEWAYS", |v| list(&v["spec"]["gateways"])),
            ("HOSTS", |v| list(&v["spec"]["hosts"])),
        ],
        Kind::DestinationRule => &[("HOST", |v| text(&v["spec"]["host"]))],
        Kind::ServiceEntry => &[
            ("HOSTS", |v| list(&v["spec"]["hosts"])),
            ("LOCATION", |v| text(&v["spec"]["location"])),
            ("RESOLUTION", |v| text(&v["spec"]["resolution"])),
        ],
        Kind::WorkloadEntry => &[("ADDRESS", |v| text(&v["spec"]["address"]))],
        Kind::AuthorizationPolicy => &[("ACTION", |v| {
            let a = text(&v["spec"]["action"]);
            if a.is_empty() { "ALLOW".into() } else { a }
        })],
        Kind::PeerAuthentication => &[("MODE", |v| text(&v["spec"]["mtls"]["mode"]))],
        Kind::Secret => &[
            ("TYPE", |v| {
                let t = text(&v["type"]);
                if t.is_empty() { "Opaque".into() } else { t }
            }),
            ("DATA", |v| {
                let keys = |f: &str| v[f].as_object().map(|m| m.keys().cloned().collect());
                let mut all: std::collections::BTreeSet<String> = keys("data").unwrap_or_default();
                all.extend(keys("stringData").unwrap_or_default());
                all.len().to_string()
            }),
        ],
        Kind::Service => &[
            ("TYPE", |v| {
                let t = text(&v["spec"]["type"]);
                if t.is_empty() { "ClusterIP".into() } else { t }
            }),
            ("PORTS", |v| {
                v["spec"]["ports"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            }),
        ],
        _ => &[],
    };
    let mut header: Vec<String> = Vec::new();
    if with_namespace && kind.namespaced() {
        header.push("NAMESPACE".into());
    }
    header.push("NAME".into());
    header.extend(columns.iter().map(|(h, _)| h.to_string()));
    header.push("AGE".into());
    let mut rows = vec![header];
    for item in items {
        let mut row = Vec::new();
        if with_namespace && kind.namespaced() {
            row.push(text(&item["metadata"]["namespace"]));
        }
        row.push(text(&item["metadata"]["name"]));
        row.extend(columns.iter().map(|(_, f)| f(item)));
        row.push(age(&item["metadata"]["creationTimestamp"]));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn list(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!("[{}]", items.join(","))
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 UTC timestamp.
fn age(ts: &Value) -> String {
    let Some(secs) = ts.as_str().and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let d = (now - secs).max(0);
    match d {
        d if d < 120 => format!("{d}s"),
        d if d < 7200 => format!("{}m", d / 60),
        d if d < 172_800 => format!("{}h", d / 3600),
        d => format!("{}d", d / 86_400),
    }
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-22T01:50:34Z"), Some(1_795_312_234));
    }
}
