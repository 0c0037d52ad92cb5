//! Checks that many kinds share: host names, ports, labels, durations, addresses.
//!
//! Each returns `Err(message)` with Istio's wording, so callers can place it at a field path with
//! [`Report::check`](super::Report::check).

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::Duration;

static DNS1123_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$").unwrap());
static WILDCARD_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\*|\*?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?|\*-[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$").unwrap()
});
static QUALIFIED_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").unwrap());
static LABEL_VALUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap());
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});

/// A DNS-1123 label: 1 to 63 letters, digits or `-`, starting and ending with a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && DNS1123_LABEL.is_match(s)
}

/// A DNS-1123 label that may start with `*` (`*`, `*foo`, `*-foo`).
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && WILDCARD_LABEL.is_match(s)
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_string());
    }
    Ok(())
}

/// Every dot-separated label of `domain` is a DNS-1123 label (a trailing dot is allowed) and the
/// top-level label is not all digits.
pub fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let top = parts[parts.len() - 1];
    if !top.is_empty() && top.parse::<i64>().is_ok() {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {top:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// A fully-qualified domain name, such as `reviews.default.svc.cluster.local`.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    dns1123_preconditions(fqdn)?;
    validate_dns1123_labels(fqdn)
}

/// A domain name whose first label may be a wildcard: `*.example.com`, `*`, `reviews`.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => validate_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// A port number in 1..=65535.
pub fn validate_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// A duration of at least 1ms, with millisecond precision (Istio's `ValidateDuration`).
pub fn validate_duration(d: &Duration) -> Result<(), String> {
    if d.as_nanos() < 1_000_000 {
        return Err("duration must be greater than 1ms".to_string());
    }
    if d.as_nanos() % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".to_string());
    }
    Ok(())
}

/// A duration within `[min, max]` nanoseconds.
pub fn validate_duration_range(d: &Duration, min: &Duration, max: &Duration) -> Result<(), String> {
    if d.as_nanos() > max.as_nanos() || d.as_nanos() < min.as_nanos() {
        return Err(format!("time {d} must be >{min} and <{max}"));
    }
    Ok(())
}

/// A Kubernetes label key: an optional DNS-1123 subdomain prefix and `/`, then a name of up to
/// 63 characters.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !DNS1123_SUBDOMAIN.is_match(p))
    {
        return Err(format!(
            "invalid label key {key:?}: the prefix must be a DNS-1123 subdomain"
        ));
    }
    if name.is_empty() || name.len() > 63 || !QUALIFIED_NAME.is_match(name) {
        return Err(format!(
            "invalid label key {key:?}: a name of up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or up to 63 characters like a label name.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 || !LABEL_VALUE.is_match(value) {
        return Err(format!(
            "invalid label value {value:?}: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Labels as a workload selector or a resource's labels.
pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    for (k, v) in labels {
        validate_label_key(k)?;
        validate_label_value(v)?;
    }
    Ok(())
}

/// A DNS-1123 subdomain, as Kubernetes object names are.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && DNS1123_SUBDOMAIN.is_match(s)
}

/// An IP address (v4 or v6), without a prefix length.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// A CIDR block (`10.0.0.0/8`) or a plain IP address.
pub fn validate_ip_or_cidr(s: &str) -> Result<(), String> {
    if s.contains('/') {
        s.parse::<ipnet::IpNet>()
            .map(|_| ())
            .map_err(|_| format!("{s:?} is not a valid CIDR block"))
    } else if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid IP address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(validate_fqdn("reviews.default.svc.cluster.local").is_ok());
        assert!(validate_fqdn("istio.io.").is_ok());
        assert!(validate_fqdn("").is_err());
        assert!(validate_fqdn("foo.123").is_err());
        assert!(validate_fqdn("-bad.com").is_err());
        assert!(validate_wildcard_domain("*").is_ok());
        assert!(validate_wildcard_domain("*.example.com").is_ok());
        assert!(validate_wildcard_domain("*foo.example.com").is_ok());
        assert!(validate_wildcard_domain("foo.*.com").is_err());
        assert!(validate_wildcard_domain(&"a".repeat(256)).is_err());
    }

    #[test]
    fn labels_and_ports() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("istio.io/rev").is_ok());
        assert!(validate_label_key("bad key").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1").is_ok());
        assert!(validate_label_value("-x").is_err());
        assert!(validate_port(0).is_err());
        assert!(validate_port(65536).is_err());
        assert!(validate_port(9080).is_ok());
    }
}
