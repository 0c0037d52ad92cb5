//! The harness's smallest mode against a 2-second load, so it cannot silently rot: the report
//! has direct, strait and envoy side by side with the ratios, and no request failed. It asserts
//! the report's shape and zero errors, never speed.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), Envoy
//! (`bash scripts/install-envoy.sh`), k6 (`bash scripts/install-k6.sh`) and h2load
//! (`apt-get install -y nghttp2-client`); scripts/test.sh does all of it first.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The two full-harness smoke runs (plaintext, mutual TLS) take turns: each asserts that k6
/// started every request on time, which a second harness on the same 2 cores could spoil.
static HARNESS: Mutex<()> = Mutex::new(());

#[test]
fn smoke_mode_reports_direct_strait_and_envoy_side_by_side_without_errors() {
    let _turn = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    let bench = Path::new(env!("CARGO_BIN_EXE_strait-bench"));
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bench)
        .args(["--mode", "smoke", "--name", "smoke-test", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "strait-bench --mode smoke failed ({}):\n{stderr}\n(it needs `cargo build --workspace \
         --bins`, `bash scripts/install-envoy.sh`, `bash scripts/install-k6.sh` and \
         `apt-get install -y nghttp2-client`)",
        run.status
    );

    let json = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    for config in ["direct", "strait", "envoy"] {
        let s = &report["summary"][config];
        assert!(s.is_object(), "no summary for {config}: {report:#}");
        assert_eq!(s["errors"], 0, "{config} had errors: {s:#}");
        for key in [
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "fixed_rps",
            "max_rps",
        ] {
            assert!(
                s[key].as_f64().is_some_and(|v| v > 0.0),
                "{config}.{key} missing: {s:#}"
            );
        }
        for proto in ["h2", "grpc"] {
            assert_eq!(s[proto]["errors"], 0, "{config} {proto} had errors: {s:#}");
            assert!(
                s[proto]["rps"].as_f64().is_some_and(|v| v > 0.0),
                "{config} {proto}: no requests: {s:#}"
            );
        }
        if config != "direct" {
            for key in [
                "added_p99_ms",
                "cpu_per_1000_requests",
                "idle_rss_mb",
                "peak_rss_mb",
            ] {
                assert!(s[key].is_number(), "{config}.{key} missing: {s:#}");
            }
        }
    }
    // Every round offered the whole constant-rate load, and k6 started every request on time.
    for r in report["rounds"].as_array().unwrap() {
        let fixed = &r["fixed"];
        assert_eq!(fixed["dropped"], 0, "dropped iterations: {r:#}");
        assert!(
            fixed["requests"].as_u64().unwrap() >= 300,
            "too few requests: {r:#}"
        );
    }
    // The added-latency ratio is left out, by design, when noise puts either proxy's p99 at or
    // below the direct path's (a difference of noisy numbers has no meaningful ratio).
    let added = |config: &str| report["summary"][config]["added_p99_ms"].as_f64().unwrap();
    if added("strait") > 0.0 && added("envoy") > 0.0 {
        assert!(
            report["ratios"]["added_p99_latency"].is_number(),
            "ratio added_p99_latency missing: {:#}",
            report["ratios"]
        );
    } else {
        assert!(report["ratios"].get("added_p99_latency").is_none());
    }
    for ratio in ["steady_rss", "peak_rss", "cpu_per_1000_rps", "max_rps"] {
        assert!(
            report["ratios"][ratio].is_number(),
            "ratio {ratio} missing: {:#}",
            report["ratios"]
        );
    }
    let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
    for row in ["| direct |", "| strait |", "| envoy |", "| p99_latency |"] {
        assert!(md.contains(row), "the Markdown table lacks {row}:\n{md}");
    }
    assert_eq!(
        md.contains("| added_p99_latency |"),
        report["ratios"]["added_p99_latency"].is_number(),
        "the Markdown table has the added-latency ratio exactly when the report does:\n{md}"
    );
}

/// `--mtls --authz-rules 20`: both sidecars with workload certificates from the CA, STRICT, and
/// 20 ALLOW rules on the server sidecar (only the last matches the client); the harness itself
/// refuses to measure unless the server sidecar refuses plaintext. Every protocol passes
/// through mutual TLS and the policy without an error (a 403 would count), and the report says
/// so.
#[test]
fn mtls_smoke_mode_reports_strait_and_envoy_without_errors() {
    let _turn = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    let report = run_report(&[
        "--mode",
        "smoke",
        "--mtls",
        "--authz-rules",
        "20",
        "--configs",
        "strait,envoy",
        "--name",
        "smoke-mtls",
    ]);
    assert_eq!(report["settings"]["mtls"], true, "{:#}", report["settings"]);
    assert_eq!(
        report["settings"]["authz_rules"], 20,
        "{:#}",
        report["settings"]
    );
    for config in ["strait", "envoy"] {
        let s = &report["summary"][config];
        assert_eq!(s["errors"], 0, "{config} had errors: {s:#}");
        assert!(
            s["max_rps"].as_f64().is_some_and(|v| v > 0.0),
            "{config}: no maximum rate: {s:#}"
        );
        for proto in ["h2", "grpc"] {
            assert_eq!(s[proto]["errors"], 0, "{config} {proto} had errors: {s:#}");
            assert!(
                s[proto]["rps"].as_f64().is_some_and(|v| v > 0.0),
                "{config} {proto}: no requests: {s:#}"
            );
        }
    }
}

/// The JSON report `strait-bench ARGS --out DIR` wrote.
fn run_report(args: &[&str]) -> serde_json::Value {
    let bench = Path::new(env!("CARGO_BIN_EXE_strait-bench"));
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bench)
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "strait-bench {} failed ({}):\n{}\n(it needs `cargo build --workspace --bins` and \
         `bash scripts/install-envoy.sh`)",
        args.join(" "),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let md = std::fs::read_to_string(json.with_extension("md")).unwrap();
    assert!(
        md.contains("| strait |") && md.contains("| envoy |"),
        "{md}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// The churn mode, 20 changes: both sidecars followed every change without an error and each
/// has memory samples at the baseline and at the end.
#[test]
fn churn_mode_reports_strait_and_envoy_memory_without_errors() {
    let report = run_report(&[
        "churn",
        "--changes",
        "20",
        "--baseline",
        "10",
        "--sample-every",
        "10",
        "--name",
        "churn-smoke",
    ]);
    let proxies = report["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{report:#}");
    for p in proxies {
        assert_eq!(p["errors"], 0, "{p:#}");
        assert_eq!(p["requests"], 21 * 6, "{p:#}");
        assert_eq!(p["samples"].as_array().unwrap().len(), 2, "{p:#}");
        for key in ["rss_at_baseline_mb", "rss_at_end_mb"] {
            assert!(p[key].as_f64().is_some_and(|v| v > 1.0), "{key}: {p:#}");
        }
    }
    assert!(report["strait_within_limit"].is_boolean(), "{report:#}");
    // Each sidecar keeps connections to the current endpoints at most (3 each, a few more
    // at once under its two worker threads), none to the 60 replaced ones.
    assert!(
        report["upstream_connections_at_end"].as_u64().unwrap() <= 12,
        "{report:#}"
    );
}

/// The endpoints mode, small: CPU per request for both Services and both sidecars, no errors.
#[test]
fn endpoints_mode_reports_cpu_per_request_for_both_sidecars() {
    let report = run_report(&[
        "endpoints",
        "--endpoints",
        "100",
        "--rate",
        "200",
        "--seconds",
        "2",
        "--warmup-seconds",
        "1",
        "--rounds",
        "1",
        "--name",
        "endpoints-smoke",
    ]);
    for config in ["strait", "envoy"] {
        let s = &report["summary"][config];
        assert_eq!(s["errors"], 0, "{config}: {s:#}");
        for key in ["one_cpu_ms_per_request", "many_cpu_ms_per_request", "ratio"] {
            assert!(
                s[key].as_f64().is_some_and(|v| v > 0.0),
                "{config}.{key}: {s:#}"
            );
        }
    }
    assert!(report["strait_within_limit"].is_boolean(), "{report:#}");
}
