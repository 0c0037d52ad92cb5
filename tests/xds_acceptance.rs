//! Differential acceptance: everything Strait translates, applied one feature at a time, with
//! Envoy and strait-proxy connected to one control plane as sidecars (no capture) and as
//! gateways. Each fixture in `tests/fixtures/ack/` is one feature of Istio's reference (a field
//! docs/istio-support.md lists as translated), in a VirtualService, DestinationRule, Gateway,
//! ServiceEntry or Sidecar. After each, the control plane's `/debug/proxies` (what
//! `strait proxy-status` shows) says per proxy and type whether the proxy ACKed or NACKed it.
//!
//! Features are applied in turn, each in one batch with the deletion of the one before (and
//! Bookinfo's DestinationRules again, which some features replace); after a NACK, the feature
//! is deleted on its own and every proxy must ACK again.
//!
//! The test fails when strait-proxy NACKs what Envoy ACKs, unless the feature is one of
//! [`EXCEPTIONS`], the refusals docs/xds-support.md names with their reason; it also fails when
//! a listed exception is accepted after all (the list and the docs must then shrink), and when
//! Envoy NACKs a feature (the translator's output is then wrong).

use strait_e2e as support;

/// Certificate rotation under load (tests/rotation.rs) is compiled into this binary so that its
/// two minutes of steady traffic run beside this test's feature loop (libtest runs a binary's
/// tests in parallel); neither needs what the other holds.
#[path = "rotation.rs"]
mod rotation;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_testsupport::Backend;
use support::mesh::{DataPlane, Mesh, Proxy, sample};

/// Features strait-proxy refuses on purpose, with a part of its NACK reason: each is in
/// docs/xds-support.md ("What the differential test allows").
const EXCEPTIONS: &[(&str, &str)] = &[
    // A Unix domain socket as an endpoint: strait-proxy connects over TCP only.
    (
        "sidecar-ingress-unix-endpoint.yaml",
        "other than a socket address",
    ),
];

/// The xDS types `/debug/proxies` reports.
const TYPES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];

/// Per xDS type, the NACK reason, if NACKed.
type Verdict = BTreeMap<&'static str, Option<String>>;

struct Planes {
    mesh: Mesh,
    /// (workload, plane, proxy): the four proxies.
    proxies: Vec<(&'static str, DataPlane, Proxy)>,
    marks: usize,
}

impl Planes {
    async fn start() -> Planes {
        let mut mesh = Mesh::bookinfo();
        mesh.apply(&sample("tcp-echo/tcp-echo-services.yaml"));
        for (version, prefix) in [("v1", "one"), ("v2", "two")] {
            mesh.workload("tcp-echo", version, "tcp", Backend::tcp_echo(prefix));
        }
        mesh.apply(&support::fixture("ack-baseline.yaml"));
        let mut proxies = Vec::new();
        for (workload, plane) in [
            ("ack-envoy-sidecar", DataPlane::Envoy),
            ("ack-strait-sidecar", DataPlane::Strait),
        ] {
            let p = mesh.sidecar(plane, workload, "app=client").await;
            proxies.push((workload, plane, p));
        }
        for (workload, plane) in [
            ("ack-envoy-gateway", DataPlane::Envoy),
            ("ack-strait-gateway", DataPlane::Strait),
        ] {
            let p = mesh
                .gateway(plane, workload, "istio=ingressgateway", &[8080])
                .await;
            proxies.push((workload, plane, p));
        }
        let mut planes = Planes {
            mesh,
            proxies,
            marks: 0,
        };
        planes.settle().await;
        let baseline = planes.verdicts();
        assert!(
            baseline.values().all(|v| v.values().all(Option::is_none)),
            "a proxy NACKs the baseline (tests/fixtures/ack-baseline.yaml): {baseline:#?}"
        );
        planes
    }

    /// Applies a marker (a ServiceEntry whose host changes every time) after everything
    /// applied so far, and waits until every proxy has the marker's cluster (so it got the
    /// generation with everything before it) and has answered every response (no type STALE).
    async fn settle(&mut self) {
        self.settle_with(None).await
    }

    /// [`Planes::settle`] with the documents of `file` applied first, in the same batch.
    async fn settle_with(&mut self, file: Option<&std::path::Path>) {
        self.settle_with_files(file.as_slice()).await
    }

    /// [`Planes::settle`] with the documents of `files` applied first, in order, in the same
    /// batch.
    async fn settle_with_files(&mut self, files: &[&std::path::Path]) {
        self.marks += 1;
        let host = format!("marker-{}.ack.test", self.marks);
        let before: String = files
            .iter()
            .map(|f| {
                let text =
                    std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                format!("{text}\n---\n")
            })
            .collect();
        self.mesh.apply_yaml(
            "ack-marker.yaml",
            &format!(
                "{before}apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ack-marker}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{{address: 127.0.0.1}}]\n"
            ),
        );
        let needle = format!("||{host}\"");
        let deadline = Instant::now() + Duration::from_secs(30);
        for (workload, _, proxy) in &self.proxies {
            loop {
                if proxy.config_dump().await.contains(&needle) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{workload} did not get the marker {host} within 30 s: {}\n{}",
                    self.rows(),
                    proxy.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        loop {
            let status = self.mesh.proxy_status();
            let stale: Vec<String> = self
                .proxies
                .iter()
                .flat_map(|(w, _, _)| {
                    let row = row(&status, w);
                    TYPES
                        .iter()
                        .filter(move |t| row["types"][**t]["state"] == "STALE")
                        .map(move |t| format!("{w} {t}"))
                })
                .collect();
            if stale.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still STALE after 30 s: {stale:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each proxy's verdict per type.
    fn verdicts(&self) -> BTreeMap<&'static str, Verdict> {
        let status = self.mesh.proxy_status();
        self.proxies
            .iter()
            .map(|(w, _, _)| {
                let row = row(&status, w);
                let verdict = TYPES
                    .iter()
                    .map(|t| {
                        let s = &row["types"][*t];
                        let reason = (s["state"] == "NACK")
                            .then(|| s["reason"].as_str().unwrap_or_default().to_string());
                        (*t, reason)
                    })
                    .collect();
                (*w, verdict)
            })
            .collect()
    }

    /// `/debug/proxies` for failure messages.
    fn rows(&self) -> String {
        serde_json::to_string_pretty(&self.mesh.proxy_status()).unwrap_or_default()
    }
}

fn row<'a>(status: &'a Value, workload: &str) -> &'a Value {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["workload"] == workload)
        .unwrap_or_else(|| panic!("{workload} is not connected: {status}"))
}

fn features() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ack");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() > 40, "only {} features", files.len());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strait_proxy_accepts_every_feature_envoy_accepts() {
    let mut planes = Planes::start().await;
    let mut failures = Vec::new();
    let mut excepted = Vec::new();
    // DestinationRule features replace Bookinfo's `reviews`: it is applied again before each.
    let bookinfo_rules = sample("bookinfo/networking/destination-rule-all.yaml");
    // The feature before, deleted just before the next one is applied when every proxy ACKed it (a
    // leftover NACK would then show in the next verdicts, and be checked on its own below).
    let mut previous: Option<PathBuf> = None;
    for path in features() {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(p) = previous.take() {
            planes.cp_delete(&p);
        }
        planes.settle_with_files(&[&bookinfo_rules, &path]).await;
        let verdicts = planes.verdicts();
        let any_nack = verdicts.values().any(|v| v.values().any(Option::is_some));
        for (envoy, strait) in [
            ("ack-envoy-sidecar", "ack-strait-sidecar"),
            ("ack-envoy-gateway", "ack-strait-gateway"),
        ] {
            for ty in TYPES {
                let e = &verdicts[envoy][ty];
                let s = &verdicts[strait][ty];
                if let Some(reason) = e {
                    failures.push(format!(
                        "{file}: Envoy ({envoy}) NACKs {ty}, so the translator's output is wrong: {reason}"
                    ));
                    continue;
                }
                let Some(reason) = s else { continue };
                match EXCEPTIONS.iter().find(|(f, _)| *f == file) {
                    Some((_, why)) if reason.contains(why) => excepted.push(file.clone()),
                    _ => failures.push(format!(
                        "{file}: strait-proxy ({strait}) NACKs {ty}, which Envoy ACKs: {reason}"
                    )),
                }
            }
        }
        if !any_nack {
            previous = Some(path);
            continue;
        }
        // A NACK: deleting the feature must clear it (or it was a leftover of the one before).
        planes.cp_delete(&path);
        planes.settle_with(Some(&bookinfo_rules)).await;
        let after = planes.verdicts();
        assert!(
            after.values().all(|v| v.values().all(Option::is_none)),
            "after deleting {file} (and the feature before it), a proxy still NACKs: {after:#?}"
        );
    }
    for (file, _) in EXCEPTIONS {
        if !excepted.iter().any(|f| f == file) {
            failures.push(format!(
                "{file} is listed as an exception but strait-proxy accepts it (or it is gone): \
                 take it off EXCEPTIONS and docs/xds-support.md"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

impl Planes {
    fn cp_delete(&self, path: &std::path::Path) {
        self.mesh.cp.ok(&["delete", "-f", path.to_str().unwrap()]);
    }
}
