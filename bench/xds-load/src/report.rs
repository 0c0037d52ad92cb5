//! The Markdown table of a result file.

use serde_json::Value;

/// A Markdown table of a run's summary (`run` as written by `strait-xds-load`, or a result file
/// with it under `"run"`).
pub fn table(result: &Value) -> String {
    let run = result.get("run").unwrap_or(result);
    let ms = |v: &Value| match v.as_f64() {
        Some(s) if s >= 1.0 => format!("{s:.2} s"),
        Some(s) => format!("{:.1} ms", s * 1000.0),
        None => "-".to_string(),
    };
    let s = |v: &Value| v.as_f64().map_or("-".to_string(), |s| format!("{s:.2} s"));
    let mb = |v: &Value| v.as_f64().map_or("-".to_string(), |m| format!("{m:.0} MB"));
    let bound = |v: &Value| match v {
        Value::String(_) => "> 10 s (above the top bucket)".to_string(),
        v => v
            .as_f64()
            .map_or("-".to_string(), |b| format!("≤ {:.0} ms", b * 1000.0)),
    };
    let clients = &run["clients"];
    let change = &run["single_change"];
    let last = &change["write_to_last_client"];
    let cp = &change["control_plane_push_latency"];
    let full = &run["full_push"];
    let restart = &run["restart"];
    let mem = &run["memory"];
    let peak = [
        "steady_with_clients",
        "after_changes",
        "before_restart",
        "after_restart",
    ]
    .iter()
    .filter_map(|k| mem[*k]["hwm_mb"].as_f64())
    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let p99 = last["p99_s"].as_f64();
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "-",
    };
    let mut rows = vec![
        (
            format!("Full push: {clients} clients connect at once → last ACK"),
            format!(
                "{} (per client p50 {}, p99 {}; {} clusters, {} endpoint sets, {} listeners, {} routes, {:.1} MB each)",
                s(&full["all_synced_s"]),
                s(&full["per_client_p50_s"]),
                s(&full["per_client_p99_s"]),
                full["per_client_resources"]["clusters"],
                full["per_client_resources"]["endpoints"],
                full["per_client_resources"]["listeners"],
                full["per_client_resources"]["routes"],
                full["per_client_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            ),
            "-".to_string(),
        ),
        (
            format!(
                "One endpoint change: API write returns → last of {clients} clients has it (p50 / p99 / max of {})",
                run["changes"]
            ),
            format!("{} / {} / {}", ms(&last["p50_s"]), ms(&last["p99_s"]), ms(&last["max_s"])),
            format!("p99 < 100 ms: {}", verdict(p99.map(|p| p < 0.1))),
        ),
        (
            "Same, control plane's own `strait_xds_push_latency_seconds` (store write → last ACK; p50 / p99 bucket, mean)".to_string(),
            format!("{} / {} / {}", bound(&cp["p50_le_s"]), bound(&cp["p99_le_s"]), ms(&cp["mean_s"])),
            "-".to_string(),
        ),
        (
            "Full push after restart: SIGTERM → every client reconnected and ACKed".to_string(),
            format!(
                "{} (first reconnect → last ACK {}; new process listening → last ACK {})",
                s(&restart["sigterm_to_all_synced_s"]),
                s(&restart["first_reconnect_to_all_synced_s"]),
                s(&restart["xds_listening_to_all_synced_s"]),
            ),
            "-".to_string(),
        ),
        (
            format!("Control plane memory: RSS with {clients} clients (steady) / peak VmHWM"),
            format!("{} / {}", mb(&mem["steady_with_clients"]["rss_mb"]), peak.map_or("-".to_string(), |p| format!("{p:.0} MB"))),
            format!("< 300 MB: {}", verdict(peak.map(|p| p < 300.0))),
        ),
        (
            "Control plane CPU: full push / all changes / per change".to_string(),
            format!(
                "{} / {} / {}",
                s(&full["cpu_s"]),
                s(&change["cpu_s"]),
                s(&Value::from(change["cpu_s"].as_f64().unwrap_or(0.0) / run["changes"].as_f64().unwrap_or(1.0).max(1.0))),
            ),
            "-".to_string(),
        ),
    ];
    if let Some(seed) = result.get("seed") {
        rows.insert(
            0,
            (
                "Config written through the API".to_string(),
                format!(
                    "{} Services, {} WorkloadEntries in {}",
                    seed["services"],
                    seed["endpoints"],
                    s(&seed["seconds"])
                ),
                "-".to_string(),
            ),
        );
    }
    let mut out = String::from("| measure | result | target |\n|---|---|---|\n");
    for (a, b, c) in rows {
        out.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn says_when_a_target_is_missed() {
        let run = json!({
            "clients": 2, "changes": 3,
            "single_change": {"write_to_last_client": {"p50_s": 0.05, "p99_s": 0.25, "max_s": 0.25}},
            "memory": {"steady_with_clients": {"rss_mb": 40.0, "hwm_mb": 50.0}},
        });
        let t = table(&run);
        assert!(t.contains("50.0 ms / 250.0 ms / 250.0 ms"), "{t}");
        assert!(t.contains("p99 < 100 ms: **missed**"), "{t}");
        assert!(t.contains("< 300 MB: met"), "{t}");
    }
}
