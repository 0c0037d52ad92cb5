//! A mesh for scenario tests: a real control plane, test backends registered as Services and
//! WorkloadEntries, and proxies: real Envoy bootstrapped by `strait bootstrap envoy`, or
//! `strait-proxy` with the same flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_testsupport::{Backend, Envoy, HttpReply, free_port, http_get, via_proxy};

use super::strait_proxy::StraitProxy;
use super::{ControlPlane, testdata};

/// A unique loopback address per proxy in this test process (`127.0.100.N`), so several proxies
/// can each own port 15080 and gateway ports.
pub fn next_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250, "out of test addresses");
    IpAddr::from([127, 0, 100 + (std::process::id() % 50) as u8, n])
}

pub fn sample(path: &str) -> PathBuf {
    testdata().join("istio-samples").join(path)
}

/// Which data plane runs as the proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlane {
    Envoy,
    Strait,
    /// strait-proxy over state-of-the-world ADS (`--api sotw`) instead of Delta.
    StraitSotw,
}

pub struct Mesh {
    pub cp: ControlPlane,
    pub backends: Vec<(String, String, Backend)>,
    pub files: tempfile::TempDir,
    /// Flags added to every strait-proxy this mesh starts from now on (e.g. shorter timeouts).
    pub strait_proxy_flags: Vec<String>,
    /// Arguments added to every Envoy this mesh starts from now on (e.g. `--drain-time-s 1`).
    pub envoy_args: Vec<String>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh::new()
    }
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh {
            cp: ControlPlane::start(),
            backends: Vec::new(),
            files: tempfile::tempdir().unwrap(),
            strait_proxy_flags: Vec::new(),
            envoy_args: Vec::new(),
        }
    }

    /// Starts a control plane with extra flags.
    pub fn with_flags(flags: &[&str]) -> Mesh {
        Mesh {
            cp: ControlPlane::start_with(flags),
            backends: Vec::new(),
            files: tempfile::tempdir().unwrap(),
            strait_proxy_flags: Vec::new(),
            envoy_args: Vec::new(),
        }
    }

    pub fn apply(&self, path: &Path) {
        self.cp.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    pub fn apply_yaml(&self, name: &str, yaml: &str) {
        let path = self.files.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        self.apply(&path);
    }

    /// A Kubernetes Service `name` on `port` (port name `http` unless given) selecting `app: name`.
    pub fn service(&self, name: &str, port: u16, port_name: &str) {
        self.apply_yaml(
            &format!("svc-{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: {port_name}, port: {port}}}\n"
            ),
        );
    }

    /// A backend registered as a WorkloadEntry `app: name, version: version` whose port
    /// `port_name` is the backend's port.
    pub fn workload(&mut self, name: &str, version: &str, port_name: &str, backend: Backend) {
        let addr = backend.addr();
        self.apply_yaml(
            &format!("we-{name}-{version}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}-{version}}}\nspec:\n  address: {}\n  ports: {{{port_name}: {}}}\n  labels: {{app: {name}, version: {version}}}\n",
                addr.ip(),
                addr.port()
            ),
        );
        self.backends
            .push((name.to_string(), version.to_string(), backend));
    }

    /// An HTTP service with one backend per version.
    pub fn http_service(&mut self, name: &str, port: u16, versions: &[&str]) {
        self.service(name, port, "http");
        for v in versions {
            self.workload(name, v, "http", Backend::http(name, v));
        }
    }

    pub fn backend(&self, name: &str, version: &str) -> &Backend {
        &self
            .backends
            .iter()
            .find(|(n, v, _)| n == name && v == version)
            .unwrap_or_else(|| panic!("no backend {name} {version}"))
            .2
    }

    /// Bookinfo's four services with backends for every version, and Istio's
    /// destination-rule-all.yaml.
    pub fn bookinfo() -> Mesh {
        let mut mesh = Mesh::new();
        mesh.http_service("productpage", 9080, &["v1"]);
        mesh.http_service("details", 9080, &["v1"]);
        mesh.http_service("reviews", 9080, &["v1", "v2", "v3"]);
        mesh.http_service("ratings", 9080, &["v1"]);
        mesh.apply(&sample("bookinfo/networking/destination-rule-all.yaml"));
        mesh
    }

    /// A client sidecar in no-capture mode: its HTTP proxy listener is `IP:15080`.
    pub async fn sidecar(&self, plane: DataPlane, workload: &str, labels: &str) -> Proxy {
        self.proxy(plane, workload, labels, "sidecar", &[]).await
    }

    /// A gateway proxy with `labels`, listening on its own loopback address.
    pub async fn gateway(
        &self,
        plane: DataPlane,
        workload: &str,
        labels: &str,
        ports: &[u16],
    ) -> Proxy {
        self.proxy(plane, workload, labels, "gateway", ports).await
    }

    async fn proxy(
        &self,
        plane: DataPlane,
        workload: &str,
        labels: &str,
        role: &str,
        ports: &[u16],
    ) -> Proxy {
        let ip = next_ip();
        let admin: SocketAddr = (IpAddr::from([127, 0, 0, 1]), free_port()).into();
        let ip_text = ip.to_string();
        let admin_text = admin.to_string();
        let identity = [
            "--workload",
            workload,
            "--namespace",
            "default",
            "--address",
            &ip_text,
            "--role",
            role,
            "--labels",
            labels,
            "--capture",
            "none",
        ];
        let listen: Vec<SocketAddr> = if role == "sidecar" {
            vec![(ip, 15080).into()]
        } else {
            ports.iter().map(|p| (ip, *p).into()).collect()
        };
        let running = match plane {
            DataPlane::Envoy => {
                let mut args = vec!["bootstrap", "envoy"];
                args.extend(identity);
                args.extend(["--admin", &admin_text]);
                let bootstrap = self.cp.ok(&args);
                let extra: Vec<&str> = self.envoy_args.iter().map(String::as_str).collect();
                let envoy = Envoy::start_with_args(&bootstrap, workload, &extra);
                envoy.wait_ready(Duration::from_secs(20)).await;
                for l in &listen {
                    envoy.wait_listener(*l).await;
                }
                Running::Envoy(envoy)
            }
            DataPlane::Strait | DataPlane::StraitSotw => {
                let xds = std::fs::read_to_string(self.cp.data_dir().join("xds"))
                    .expect("the control plane records its xDS address in DATA_DIR/xds");
                let mut args = identity.to_vec();
                args.extend(["--xds", xds.trim()]);
                if plane == DataPlane::StraitSotw {
                    args.extend(["--api", "sotw"]);
                }
                args.extend(self.strait_proxy_flags.iter().map(String::as_str));
                let mut proxy = StraitProxy::start(workload, &args, admin);
                proxy.wait_ready(Duration::from_secs(20)).await;
                for l in &listen {
                    proxy.wait_listener(*l).await;
                }
                Running::Strait(proxy)
            }
        };
        Proxy { ip, running }
    }

    /// A workload `service` `version` behind its own sidecar, as the client sidecar → server
    /// sidecar → app path needs: a Sidecar resource whose ingress listener on `port` (HTTP, or
    /// `protocol` as Istio names it) sends to `app` (the `defaultEndpoint`), the sidecar (no
    /// capture, labels `app=SERVICE,version=VERSION`), and the WorkloadEntry at the sidecar's
    /// address, so clients reach the service there. Returns once the sidecar's inbound
    /// listener `IP:PORT` accepts connections. The Service itself is the caller's
    /// ([`Mesh::service`]).
    pub async fn server_sidecar(
        &self,
        plane: DataPlane,
        service: &str,
        version: &str,
        port: u16,
        protocol: &str,
        app: SocketAddr,
    ) -> Proxy {
        self.apply_yaml(
            &format!("sidecar-{service}-{version}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {service}-{version}}}\nspec:\n  workloadSelector:\n    labels: {{app: {service}, version: {version}}}\n  ingress:\n  - port: {{number: {port}, protocol: {protocol}, name: {}}}\n    defaultEndpoint: {app}\n",
                protocol.to_ascii_lowercase()
            ),
        );
        let server = self
            .sidecar(
                plane,
                &format!("{service}-{version}"),
                &format!("app={service},version={version}"),
            )
            .await;
        self.apply_yaml(
            &format!("we-{service}-{version}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {service}-{version}}}\nspec:\n  address: {}\n  ports: {{{}: {port}}}\n  labels: {{app: {service}, version: {version}}}\n",
                server.ip,
                protocol.to_ascii_lowercase()
            ),
        );
        server.wait_listener((server.ip, port).into()).await;
        server
    }

    /// `strait proxy-status` as JSON rows.
    pub fn proxy_status(&self) -> Value {
        let (code, body) = super::http(
            &self.cp.server(),
            "GET",
            "/debug/proxies",
            Some(&self.cp.token()),
            None,
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

pub struct Proxy {
    pub ip: IpAddr,
    pub running: Running,
}

/// The data plane process behind a [`Proxy`].
pub enum Running {
    Envoy(Envoy),
    Strait(StraitProxy),
}

impl Proxy {
    /// The proxy's admin `/config_dump` as compact JSON text: Envoy's, or strait-proxy's own
    /// shape (which names route fields as Envoy does: `weighted_clusters`, `"weight":90`,
    /// `"timeout":"0.500s"`, `"num_retries":3`).
    pub async fn config_dump(&self) -> String {
        match &self.running {
            Running::Envoy(e) => e.config_dump().await.to_string(),
            Running::Strait(p) => p.config_dump().await,
        }
    }

    /// The admin `/stats/prometheus`, whole.
    pub async fn prometheus(&self) -> String {
        let admin = match &self.running {
            Running::Envoy(e) => e.admin_addr(),
            Running::Strait(p) => p.admin,
        };
        http_get(&format!("http://{admin}/stats/prometheus"), &[])
            .await
            .unwrap_or_else(|e| panic!("{admin}/stats/prometheus: {e}"))
            .body
    }

    /// The proxy's log, for failure messages.
    pub fn log(&self) -> String {
        match &self.running {
            Running::Envoy(e) => e.log(),
            Running::Strait(p) => p.log(),
        }
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Envoy(e) => e.pid(),
            Running::Strait(p) => p.pid(),
        }
    }

    /// Envoy, for tests that only run with Envoy.
    pub fn envoy(&self) -> &Envoy {
        match &self.running {
            Running::Envoy(e) => e,
            Running::Strait(_) => panic!("this proxy is strait-proxy, not Envoy"),
        }
    }

    /// Waits until the proxy accepts connections on `addr`.
    pub async fn wait_listener(&self, addr: SocketAddr) {
        match &self.running {
            Running::Envoy(e) => e.wait_listener(addr).await,
            Running::Strait(p) => p.wait_listener_shared(addr).await,
        }
    }

    /// Requests the proxy sent to `cluster` (attempts), from Envoy's `/stats` or
    /// strait-proxy's `/stats/prometheus`; 0 before the first.
    pub async fn upstream_requests(&self, cluster: &str) -> u64 {
        match &self.running {
            Running::Envoy(e) => e
                .stat(&format!("cluster.{cluster}.upstream_rq_total"))
                .await
                .unwrap_or(0),
            Running::Strait(p) => p
                .stat(&format!(
                    "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{cluster}\"}}"
                ))
                .await
                .unwrap_or(0),
        }
    }

    /// The no-capture HTTP proxy listener.
    pub fn http_proxy(&self) -> SocketAddr {
        (self.ip, 15080).into()
    }

    /// `GET url` through this sidecar, as an app with `HTTP_PROXY` set does.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> HttpReply {
        via_proxy(self.http_proxy(), url, headers)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "GET {url} through {}: {e}\n{}",
                    self.http_proxy(),
                    self.log()
                )
            })
    }

    /// Waits until `check` holds for a request (config propagation), then returns that reply.
    pub async fn get_until(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        what: &str,
        check: impl Fn(&HttpReply) -> bool,
    ) -> HttpReply {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let last = match via_proxy(self.http_proxy(), url, headers).await {
                Ok(r) if check(&r) => return r,
                Ok(r) => format!("{r:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "waited 15 s for {what} at {url}; last reply: {last}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `version` of `n` replies from `url`, counted.
    pub async fn versions(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let r = self.get(url, headers).await;
            assert_eq!(r.status, 200, "{url}: {r:?}");
            *counts
                .entry(r.json()["version"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        counts
    }
}

/// Opens a TCP connection to `addr`, sends `line` (with a newline) and returns the first line
/// of the answer, without its newline; 5 s at most.
pub async fn tcp_line(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut answer = String::new();
        let n = BufReader::new(stream).read_line(&mut answer).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without an answer",
            ));
        }
        Ok(answer.trim_end().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in 5 s",
            ))
        })
}

/// Waits (15 s at most) until a line sent to `addr` is answered with one that `check` accepts.
pub async fn tcp_line_until(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&str) -> bool,
    proxy: &Proxy,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = match tcp_line(addr, "hello").await {
            Ok(answer) if check(&answer) => return answer,
            Ok(answer) => answer,
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "waited 15 s for {what} at {addr}; last answer: {last}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
