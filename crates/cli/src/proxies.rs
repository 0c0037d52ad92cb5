//! `strait bootstrap`, `strait proxy-status`, `strait proxy-config`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::Value;
use strait_xds::bootstrap::{BootstrapOptions, envoy_bootstrap};
use strait_xds::{CaptureMode, Proxy, ProxyRole};

use crate::GetFormat;
use crate::client::Connection;
use crate::control_plane;

#[derive(Subcommand)]
pub enum BootstrapTarget {
    /// An Envoy bootstrap that connects to this control plane over ADS.
    Envoy(ProxyArgs),
}

/// Who a proxy is: the same flags for `strait bootstrap envoy` and `strait-proxy`.
#[derive(clap::Args, Clone)]
pub struct ProxyArgs {
    /// The workload (pod) name.
    #[arg(long)]
    pub workload: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The workload's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    #[arg(long, value_enum, default_value = "sidecar")]
    pub role: RoleArg,
    /// The workload's labels: `app=reviews,version=v1`.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// How traffic reaches the proxy: iptables capture, or none (HTTP proxy on ADDRESS:15080).
    #[arg(long, value_enum, default_value = "iptables")]
    pub capture: CaptureArg,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Where the app serves, when not on 127.0.0.1 (without capture, apps on one machine need
    /// addresses of their own): the proxy's inbound traffic goes there.
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// The control plane's xDS address (default: the one the local control plane recorded).
    #[arg(long)]
    pub xds: Option<SocketAddr>,
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// The ADS flavour.
    #[arg(long, value_enum, default_value = "delta")]
    pub api: ApiArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Sidecar,
    Gateway,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CaptureArg {
    Iptables,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ApiArg {
    Delta,
    Sotw,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConfigKind {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
}

impl ConfigKind {
    fn path(self) -> &'static str {
        match self {
            ConfigKind::Listeners => "listeners",
            ConfigKind::Routes => "routes",
            ConfigKind::Clusters => "clusters",
            ConfigKind::Endpoints => "endpoints",
        }
    }
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    anyhow!("label {l:?} is not KEY=VALUE: write --labels app=reviews,version=v1")
                })
        })
        .collect()
}

impl ProxyArgs {
    pub fn proxy(&self) -> Result<Proxy> {
        let role = match self.role {
            RoleArg::Sidecar => ProxyRole::Sidecar,
            RoleArg::Gateway => ProxyRole::Gateway,
        };
        Ok(Proxy {
            id: Proxy::node_id(role, self.address, &self.workload, &self.namespace),
            role,
            ip: self.address,
            workload: self.workload.clone(),
            namespace: self.namespace.clone(),
            labels: parse_labels(&self.labels)?,
            capture: match self.capture {
                CaptureArg::Iptables => CaptureMode::Iptables,
                CaptureArg::None => CaptureMode::None,
            },
            service_account: self.service_account.clone(),
            app_address: self.app_address,
        })
    }

    /// The xDS address: the flag, else the local control plane's, else 127.0.0.1:15010.
    pub fn xds_addr(&self, conn: &Connection) -> Result<SocketAddr> {
        if let Some(a) = self.xds {
            return Ok(a);
        }
        let file = control_plane::data_dir(conn.data_dir.as_deref()).join(control_plane::XDS_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold an address", file.display())),
            Err(_) => Ok("127.0.0.1:15010".parse().expect("a valid address")),
        }
    }
}

pub fn bootstrap(conn: &Connection, target: BootstrapTarget) -> Result<ExitCode> {
    match target {
        BootstrapTarget::Envoy(args) => {
            let opts = BootstrapOptions {
                proxy: args.proxy()?,
                xds_addr: args.xds_addr(conn)?,
                admin_addr: args.admin,
                delta: matches!(args.api, ApiArg::Delta),
                concurrency: None,
            };
            print!("{}", envoy_bootstrap(&opts));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_json(conn: &Connection, path: &str) -> Result<Value> {
    let client = conn.connect()?;
    let answer = client.request("GET", path, None)?;
    if !answer.is_success() {
        bail!("{}", answer.message());
    }
    Ok(answer.body)
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    all.extend(rows.iter().cloned());
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

pub fn status(conn: &Connection) -> Result<ExitCode> {
    let proxies = get_json(conn, "/debug/proxies")?;
    let list = proxies.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("No proxies are connected.");
        return Ok(ExitCode::SUCCESS);
    }
    let types = ["CDS", "LDS", "EDS", "RDS"];
    let mut rows = Vec::new();
    let mut reasons = Vec::new();
    for p in &list {
        let name = format!(
            "{}.{}",
            p["workload"].as_str().unwrap_or_default(),
            p["namespace"].as_str().unwrap_or_default()
        );
        let mut row = vec![
            name.clone(),
            p["stream"].as_str().unwrap_or_default().to_string(),
        ];
        for t in types {
            let s = &p["types"][t];
            row.push(s["state"].as_str().unwrap_or("NOT SENT").to_string());
            if let Some(reason) = s["reason"].as_str() {
                reasons.push(format!("{name} {t} NACK: {reason}"));
            }
        }
        row.push(p["version"].as_str().unwrap_or_default().to_string());
        rows.push(row);
    }
    print_table(
        &["NAME", "STREAM", "CDS", "LDS", "EDS", "RDS", "VERSION"],
        &rows,
    );
    for r in reasons {
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn config(
    conn: &Connection,
    what: ConfigKind,
    proxy: &str,
    format: GetFormat,
) -> Result<ExitCode> {
    let proxies = get_json(conn, "/debug/proxies")?;
    let list = proxies.as_array().cloned().unwrap_or_default();
    let matches: Vec<&Value> = list
        .iter()
        .filter(|p| {
            let id = p["id"].as_str().unwrap_or_default();
            let workload = p["workload"].as_str().unwrap_or_default();
            let qualified = format!("{workload}.{}", p["namespace"].as_str().unwrap_or_default());
            id == proxy || qualified == proxy || workload == proxy
        })
        .collect();
    let id = match matches.as_slice() {
        [one] => one["id"].as_str().unwrap_or_default().to_string(),
        [] => bail!("no connected proxy {proxy:?}: `strait proxy-status` lists them"),
        _ => bail!("{proxy:?} names several proxies: give WORKLOAD.NAMESPACE or the node id"),
    };
    let body = get_json(
        conn,
        &format!("/debug/proxies/{}/{}", encode(&id), what.path()),
    )?;
    match format {
        GetFormat::Json => println!("{}", serde_json::to_string_pretty(&body["resources"])?),
        GetFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&body["resources"])?),
        GetFormat::Table => {
            let header: Vec<String> = body["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = body["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            r.as_array()
                                .map(|cells| {
                                    cells
                                        .iter()
                                        .map(|c| {
                                            c.as_str().map_or_else(|| c.to_string(), str::to_string)
                                        })
                                        .collect()
                                })
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            print_table(&header, &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
