//! The flags that say who a proxy is, defined once: `strait-proxy` and `strait bootstrap envoy`
//! take them (flattened into their own arguments), and the launchers (`strait run`,
//! `strait gateway`) render a [`Proxy`] back into them with [`ProxyFlags::to_args`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::{CaptureMode, Proxy, ProxyRole};

/// The control plane's plaintext xDS address when none is given (Istio's 15010).
pub const DEFAULT_XDS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15010);

/// The ADS variant a proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdsApi {
    /// Incremental (`DeltaAggregatedResources`); strait-proxy falls back to sotw when the
    /// control plane has no Delta.
    #[default]
    Delta,
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
}

impl XdsApi {
    pub fn as_str(self) -> &'static str {
        match self {
            XdsApi::Delta => "delta",
            XdsApi::Sotw => "sotw",
        }
    }
}

/// Who a proxy is, and where its control plane and admin interface are.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ProxyFlags {
    /// The workload (pod) name.
    #[arg(long)]
    pub workload: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The workload's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    #[arg(long, value_enum, default_value = "sidecar")]
    pub role: ProxyRole,
    /// The workload's labels: `app=reviews,version=v1`.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How traffic reaches the proxy: iptables capture, or none (HTTP proxy on ADDRESS:15080).
    #[arg(long, value_enum, default_value = "iptables")]
    pub capture: CaptureMode,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Where the app serves, when not on 127.0.0.1 (without capture, apps on one machine need
    /// addresses of their own): the proxy's inbound traffic goes there.
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// The control plane's xDS address (default: the one a local control plane recorded in its
    /// data directory, else 127.0.0.1:15010); several, comma-separated, for control-plane
    /// replicas on one store: the proxy connects to the first that answers and fails over to
    /// the next.
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    pub xds: Vec<SocketAddr>,
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// The ADS variant.
    #[arg(long, value_enum, default_value = "delta")]
    pub api: XdsApi,
    #[command(flatten)]
    pub identity: IdentityFlags,
}

/// How a proxy (or the node agent beside Envoy) gets its workload certificate.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct IdentityFlags {
    /// The mesh CA: the control plane's TLS port (Istio's 15012). With it the workload obtains
    /// a certificate for spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, renews it, and
    /// speaks xDS over mutual TLS to --xds (which must then be the TLS port too).
    #[arg(long, value_name = "ADDR")]
    pub ca_addr: Option<SocketAddr>,
    /// The mesh's trust bundle (PEM; Istio's istio-ca-root-cert): the CA's certificate, and
    /// every peer's, must chain to it.
    #[arg(long, value_name = "FILE")]
    pub root_cert: Option<PathBuf>,
    /// A file holding a single-use bootstrap credential for the first certificate (strait run
    /// and strait gateway get one from the API); it is removed once read.
    #[arg(long, value_name = "FILE")]
    pub bootstrap_token: Option<PathBuf>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The certificate lifetime asked for (the CA allows 10s to 90d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
}

impl Default for IdentityFlags {
    fn default() -> Self {
        IdentityFlags {
            ca_addr: None,
            root_cert: None,
            bootstrap_token: None,
            trust_domain: "cluster.local".to_string(),
            cert_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl IdentityFlags {
    /// The flags as command-line arguments (none without a CA).
    pub fn to_args(&self) -> Vec<String> {
        let Some(ca) = self.ca_addr else {
            return Vec::new();
        };
        let mut args = vec!["--ca-addr".to_string(), ca.to_string()];
        if let Some(p) = &self.root_cert {
            args.extend(["--root-cert".to_string(), p.display().to_string()]);
        }
        if let Some(p) = &self.bootstrap_token {
            args.extend(["--bootstrap-token".to_string(), p.display().to_string()]);
        }
        args.extend([
            "--trust-domain".to_string(),
            self.trust_domain.clone(),
            "--cert-ttl".to_string(),
            format!("{}s", self.cert_ttl.as_secs()),
        ]);
        args
    }
}

/// A duration as flags write it: a number and a unit, `500ms`, `30s`, `15m`, `24h`, `90d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: write a number and a unit, like 30s, 15m, 24h or 90d")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// One `KEY=VALUE` label.
pub fn parse_label(item: &str) -> Result<(String, String), String> {
    match item.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "label {item:?} is not KEY=VALUE: write --labels app=reviews,version=v1"
        )),
    }
}

impl ProxyFlags {
    /// The flags of a proxy the launcher knows.
    pub fn from_proxy(proxy: &Proxy, xds: Vec<SocketAddr>, admin: SocketAddr, api: XdsApi) -> Self {
        ProxyFlags {
            workload: proxy.workload.clone(),
            namespace: proxy.namespace.clone(),
            address: proxy.ip,
            role: proxy.role,
            labels: proxy
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            capture: proxy.capture,
            service_account: proxy.service_account.clone(),
            app_address: proxy.app_address,
            xds,
            admin,
            api,
            identity: IdentityFlags::default(),
        }
    }

    /// The proxy these flags describe, with Istio's node id.
    pub fn proxy(&self) -> Proxy {
        Proxy {
            id: Proxy::node_id(self.role, self.address, &self.workload, &self.namespace),
            role: self.role,
            ip: self.address,
            workload: self.workload.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            capture: self.capture,
            service_account: self.service_account.clone(),
            app_address: self.app_address,
            mtls: self.identity.ca_addr.is_some(),
        }
    }

    /// The control plane's xDS addresses: the flag's, else [`DEFAULT_XDS`].
    pub fn xds_or_default(&self) -> Vec<SocketAddr> {
        if self.xds.is_empty() {
            vec![DEFAULT_XDS]
        } else {
            self.xds.clone()
        }
    }

    /// The same flags as command-line arguments (what `strait run` passes to strait-proxy).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--workload".to_string(),
            self.workload.clone(),
            "--namespace".to_string(),
            self.namespace.clone(),
            "--address".to_string(),
            self.address.to_string(),
            "--role".to_string(),
            self.role.as_str().to_string(),
            "--capture".to_string(),
            self.capture.as_str().to_string(),
            "--service-account".to_string(),
            self.service_account.clone(),
            "--admin".to_string(),
            self.admin.to_string(),
            "--api".to_string(),
            self.api.as_str().to_string(),
        ];
        if !self.labels.is_empty() {
            args.push("--labels".to_string());
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            args.push(labels.join(","));
        }
        if let Some(app) = self.app_address {
            args.push("--app-address".to_string());
            args.push(app.to_string());
        }
        if !self.xds.is_empty() {
            args.push("--xds".to_string());
            let list: Vec<String> = self.xds.iter().map(|a| a.to_string()).collect();
            args.push(list.join(","));
        }
        args.extend(self.identity.to_args());
        args
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyFlags,
    }

    fn parse(args: &[String]) -> Result<ProxyFlags, clap::Error> {
        Cli::try_parse_from(std::iter::once("proxy".to_string()).chain(args.iter().cloned()))
            .map(|c| c.proxy)
    }

    #[test]
    fn rendered_flags_parse_back_to_the_same_proxy() {
        let proxy = Proxy {
            id: String::new(),
            role: ProxyRole::Gateway,
            ip: "10.44.0.7".parse().unwrap(),
            workload: "reviews-v2".into(),
            namespace: "bookinfo".into(),
            labels: [("app", "reviews"), ("version", "v2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            capture: CaptureMode::None,
            service_account: "bookinfo-reviews".into(),
            app_address: Some("127.45.0.9".parse().unwrap()),
            mtls: false,
        };
        let flags = ProxyFlags::from_proxy(
            &proxy,
            vec![
                "10.44.0.1:15010".parse().unwrap(),
                "10.44.0.2:15010".parse().unwrap(),
            ],
            "10.44.0.7:15000".parse().unwrap(),
            XdsApi::Sotw,
        );
        let parsed = parse(&flags.to_args()).unwrap();
        assert_eq!(parsed, flags);
        let with_identity = ProxyFlags {
            identity: IdentityFlags {
                ca_addr: Some("10.44.0.1:15012".parse().unwrap()),
                root_cert: Some("/run/strait/pods/x/root-cert.pem".into()),
                bootstrap_token: Some("/run/strait/pods/x/token".into()),
                trust_domain: "example.org".into(),
                cert_ttl: Duration::from_secs(30),
            },
            ..flags.clone()
        };
        assert_eq!(parse(&with_identity.to_args()).unwrap(), with_identity);
        let back = parsed.proxy();
        assert_eq!(
            back.id,
            "router~10.44.0.7~reviews-v2.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(
            Proxy {
                id: String::new(),
                ..back
            },
            proxy
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        for bad in ["30", "s", "3x", "", "-1s"] {
            assert!(
                parse_duration(bad).unwrap_err().contains("not a duration"),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_and_bad_labels() {
        let flags = parse(&["--workload".into(), "w".into()]).unwrap();
        assert_eq!(flags.role, ProxyRole::Sidecar);
        assert_eq!(flags.capture, CaptureMode::Iptables);
        assert_eq!(flags.api, XdsApi::Delta);
        assert_eq!(flags.xds_or_default(), [DEFAULT_XDS]);
        assert!(flags.labels.is_empty());
        let err = parse(&[
            "--workload".into(),
            "w".into(),
            "--labels".into(),
            "app".into(),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("label \"app\" is not KEY=VALUE"), "{err}");
    }
}
