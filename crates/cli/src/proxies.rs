//! `strait bootstrap`, `strait proxy-status`, `strait proxy-config`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::Value;
use strait_translate::bootstrap::{BootstrapIdentity, BootstrapOptions, envoy_bootstrap};
use strait_xds_core::flags::DEFAULT_XDS;
use strait_xds_core::{ProxyFlags, XdsApi};

use crate::GetFormat;
use crate::client::Connection;
use crate::control_plane;

#[derive(Subcommand)]
pub enum BootstrapTarget {
    /// An Envoy bootstrap that connects to this control plane over ADS.
    Envoy(EnvoyBootstrapArgs),
}

/// `strait bootstrap envoy`: the proxy's flags, and where its node agent serves SDS.
#[derive(clap::Args)]
pub struct EnvoyBootstrapArgs {
    #[command(flatten)]
    pub proxy: ProxyFlags,
    /// With --ca-addr: the node agent's SDS socket (`strait agent --sds-socket`), where Envoy
    /// gets its certificate and the trust bundle.
    #[arg(long, value_name = "PATH")]
    pub sds_socket: Option<std::path::PathBuf>,
    /// Serve `/stats/prometheus` here too, as Istio's bootstrap does on `POD_IP:15090` (the
    /// admin port serves it either way).
    #[arg(long, value_name = "IP:PORT")]
    pub prometheus: Option<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConfigKind {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    /// The Secrets (`kubernetes://NAME`) the proxy's config names: certificates, never keys.
    #[value(alias = "secrets")]
    Secret,
}

impl ConfigKind {
    fn path(self) -> &'static str {
        match self {
            ConfigKind::Listeners => "listeners",
            ConfigKind::Routes => "routes",
            ConfigKind::Clusters => "clusters",
            ConfigKind::Endpoints => "endpoints",
            ConfigKind::Secret => "secrets",
        }
    }
}

/// The xDS addresses for a proxy: its flag's, else the local control plane's, else
/// 127.0.0.1:15010.
pub fn xds_addr(flags: &ProxyFlags, conn: &Connection) -> Result<Vec<SocketAddr>> {
    if !flags.xds.is_empty() {
        return Ok(flags.xds.clone());
    }
    xds_recorded(conn).map(|a| vec![a])
}

fn xds_recorded(conn: &Connection) -> Result<SocketAddr> {
    let file = control_plane::data_dir(conn.data_dir.as_deref()).join(control_plane::XDS_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold an address", file.display())),
        Err(_) => Ok(DEFAULT_XDS),
    }
}

pub fn bootstrap(conn: &Connection, target: BootstrapTarget) -> Result<ExitCode> {
    match target {
        BootstrapTarget::Envoy(EnvoyBootstrapArgs {
            proxy: args,
            sds_socket,
            prometheus,
        }) => {
            let identity = match (&args.identity.ca_addr, sds_socket) {
                (None, None) => None,
                (Some(_), Some(sds_socket)) => Some(BootstrapIdentity {
                    sds_socket,
                    trust_domain: args.identity.trust_domain.clone(),
                }),
                (Some(_), None) => bail!(
                    "--ca-addr needs --sds-socket: Envoy gets its certificate from the node agent \
                     (`strait agent --sds-socket PATH ...`) over SDS"
                ),
                (None, Some(_)) => bail!(
                    "--sds-socket needs --ca-addr (the control plane's TLS port), where Envoy's \
                     xDS connection goes with its certificate"
                ),
            };
            let xds = xds_addr(&args, conn)?;
            let opts = BootstrapOptions {
                proxy: args.proxy(),
                xds_addr: xds[0],
                more_xds: xds[1..].to_vec(),
                admin_addr: args.admin,
                delta: args.api == XdsApi::Delta,
                concurrency: None,
                identity,
                prometheus_addr: prometheus,
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
    let client = conn.connect()?;
    // With several replicas (`--server A,B`), each is asked for the proxies connected to it,
    // and a REPLICA column says which.
    let replicas = client.addresses().len() > 1;
    let mut list = Vec::new();
    if replicas {
        let mut reached = 0;
        for (addr, answer) in client.get_each("/debug/proxies") {
            match answer {
                Ok(a) if a.is_success() => {
                    reached += 1;
                    for mut p in a.body.as_array().cloned().unwrap_or_default() {
                        p["replica"] = Value::String(addr.clone());
                        list.push(p);
                    }
                }
                Ok(a) => eprintln!("{addr}: {}", a.message()),
                Err(e) => eprintln!("{addr}: {e:#}"),
            }
        }
        if reached == 0 {
            bail!("no replica answered: {}", client.addresses().join(", "));
        }
    } else {
        let proxies = get_json(conn, "/debug/proxies")?;
        list = proxies.as_array().cloned().unwrap_or_default();
    }
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
        if replicas {
            row.push(p["replica"].as_str().unwrap_or_default().to_string());
        }
        rows.push(row);
    }
    let mut header = vec!["NAME", "STREAM", "CDS", "LDS", "EDS", "RDS", "VERSION"];
    if replicas {
        header.push("REPLICA");
    }
    print_table(&header, &rows);
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
