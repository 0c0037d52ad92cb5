//! Validation is linear in the number of hosts: a 70,000-host document (about 1.4 MiB, near the
//! 1.5 MiB limit of one object) validates in well under a second, and ten times the hosts costs
//! about ten times as much, not a hundred. A bound on complexity, not a speed figure: the limits
//! are generous (quadratic validation took 11 s for 70,000 hosts).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_api::parse::{Outcome, Source, parse_value};

/// 70,000 of these make a document of about 1.47 MiB, within the 1.5 MiB limit.
fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i}.example.com")).collect()
}

fn documents(n: usize) -> Vec<(&'static str, Value)> {
    let hosts = hosts(n);
    let wildcards: Vec<String> = (0..n).map(|i| format!("*.w{i}.ex.io")).collect();
    vec![
        (
            "VirtualService",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "big", "namespace": "default"},
                   "spec": {"hosts": hosts, "http": [{"route": [{"destination": {"host": "a"}}]}]}}),
        ),
        (
            "VirtualService (wildcards)",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "big", "namespace": "default"},
                   "spec": {"hosts": wildcards, "http": [{"route": [{"destination": {"host": "a"}}]}]}}),
        ),
        (
            "ServiceEntry",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                   "metadata": {"name": "big", "namespace": "default"},
                   "spec": {"hosts": hosts, "ports": [{"number": 80, "name": "http"}],
                            "resolution": "DNS"}}),
        ),
        (
            "Gateway",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                   "metadata": {"name": "big", "namespace": "default"},
                   "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                         "hosts": hosts}]}}),
        ),
        (
            "Sidecar",
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                   "metadata": {"name": "big", "namespace": "default"},
                   "spec": {"egress": [{"hosts": (0..n).map(|i| format!("n/h{i}.ex.io")).collect::<Vec<_>>()}]}}),
        ),
    ]
}

/// The fastest of three validations of `value`, and whether it was valid.
fn validate(value: &Value) -> (Duration, bool) {
    let mut best = Duration::MAX;
    let mut valid = false;
    for _ in 0..3 {
        let parsed = parse_value(
            Source {
                file: "big".into(),
                index: 0,
            },
            value.clone(),
        );
        let Outcome::Resource(r) = parsed.outcome else {
            panic!("does not parse: {:?}", parsed.outcome);
        };
        let started = Instant::now();
        let report = r.validate();
        best = best.min(started.elapsed());
        valid = report.errors.is_empty();
    }
    (best, valid)
}

#[test]
fn validation_is_linear_in_the_hosts() {
    let small = documents(7_000);
    let large = documents(70_000);
    for ((kind, small), (_, large)) in small.iter().zip(&large) {
        let bytes = serde_json::to_vec(large).unwrap().len();
        let (t_small, valid_small) = validate(small);
        let (t_large, valid_large) = validate(large);
        eprintln!("{kind}: 7,000 hosts {t_small:?}, 70,000 hosts ({bytes} bytes) {t_large:?}");
        assert_eq!(valid_small, valid_large, "{kind}");
        assert!(
            t_large < Duration::from_secs(1),
            "{kind}: 70,000 hosts took {t_large:?} to validate"
        );
        // Linear: 10x the hosts, about 10x the time; quadratic would be 100x. The small case
        // is floored at 2 ms so that timer noise on a tiny figure cannot fail the ratio.
        let floor = t_small.max(Duration::from_millis(2));
        assert!(
            t_large < floor * 30,
            "{kind}: 7,000 hosts {t_small:?}, 70,000 hosts {t_large:?}: grows faster than linear"
        );
    }
}
