//! The harness's smallest mode against a 2-second load, so it cannot silently rot: the report
//! has direct, strait and envoy side by side with the ratios, and no request failed. It asserts
//! the report's shape and zero errors, never speed.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), Envoy
//! (`bash scripts/install-envoy.sh`), k6 (`bash scripts/install-k6.sh`) and h2load
//! (`apt-get install -y nghttp2-client`); scripts/test.sh does all of it first.

use std::path::Path;
use std::process::Command;

#[test]
fn smoke_mode_reports_direct_strait_and_envoy_side_by_side_without_errors() {
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
