//! `strait gateway`: a proxy in the gateway role on the host's network, selected by Gateway
//! resources through its labels (Istio's `istio: ingressgateway` by default).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use strait_xds_core::flags::parse_label;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole};
use tokio::signal::unix::{SignalKind, signal};

use crate::client::Connection;
use crate::run::{self, PlatformArgs, Pod};
use crate::sidecar::{Launch, ProxyKind, RunningProxy};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// The gateway's name (its workload name).
    #[arg(long, default_value = "istio-ingressgateway")]
    pub name: String,
    #[arg(short = 'n', long, default_value = "istio-system")]
    pub namespace: String,
    /// The labels Gateway resources select it by.
    #[arg(long, value_delimiter = ',', value_parser = parse_label, default_value = "istio=ingressgateway")]
    pub labels: Vec<(String, String)>,
    /// The address the gateway's listeners bind (the ports come from the Gateway resources).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// The proxy's admin address (default: LISTEN:15000).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "strait")]
    pub proxy: ProxyKind,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    #[command(flatten)]
    pub platform: PlatformArgs,
}

pub fn run(conn: &Connection, args: GatewayArgs) -> Result<ExitCode> {
    run::logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(conn, args))
}

async fn run_async(conn: &Connection, args: GatewayArgs) -> Result<ExitCode> {
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    let IpAddr::V4(listen) = args.listen else {
        bail!("--listen {}: the local platform is IPv4 only", args.listen);
    };
    let client = conn.connect()?;
    let pods = args.platform.pods()?;
    run::reap(&pods, &client)?;
    let xds = args.platform.xds_for(conn, false, pods.range())?;
    let tls = args.platform.tls_for(conn, false, pods.range())?;
    let admin = args.admin.unwrap_or_else(|| {
        let ip = if listen.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::V4(listen)
        };
        SocketAddr::new(ip, 15000)
    });
    let mut rec = pods.create_host(&format!("{}.{}", args.name, args.namespace), listen)?;
    let mut pod = Pod {
        pods: &pods,
        client: &client,
        rec: rec.clone(),
        sidecar: None,
    };
    let result = async {
        let dir = pods.files_dir(&rec)?;
        // The gateway's identity (its mTLS to the mesh): Envoy through a node agent,
        // strait-proxy itself.
        let identity = match tls {
            Some(ca) => Some(crate::pod_identity::prepare(
                &client,
                &dir,
                &args.namespace,
                &args.service_account,
                ca,
                None,
                args.platform.cert_ttl,
            )?),
            _ => None,
        };
        let proxy = Proxy {
            id: Proxy::node_id(ProxyRole::Gateway, listen.into(), &args.name, &args.namespace),
            role: ProxyRole::Gateway,
            ip: listen.into(),
            workload: args.name.clone(),
            namespace: args.namespace.clone(),
            labels: labels.clone(),
            capture: CaptureMode::None,
            service_account: args.service_account.clone(),
            app_address: None,
            mtls: identity.is_some(),
        };
        let gw = RunningProxy::start(Launch {
            proxy,
            kind: args.proxy,
            xds: if identity.is_some() {
                vec![tls.expect("checked")]
            } else {
                xds.clone()
            },
            admin,
            netns: None,
            dir: &dir,
            identity: identity.as_ref(),
        })
        .await?;
        rec.processes.push(gw.id);
        if let Some((_, agent)) = &gw.agent {
            rec.processes.push(*agent);
        }
        let path = run::workload_entry_path(&args.namespace, &args.name);
        rec.registrations = json!({ "paths": [path] });
        pods.update(&rec)?;
        pod.rec = rec.clone();
        let gw = pod.sidecar.insert(gw);
        gw.wait_ready(Duration::from_secs(60)).await?;
        run::put(
            &client,
            &path,
            &json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {
                    "name": args.name,
                    "namespace": args.namespace,
                    "annotations": { "strait.io/registered-by": "strait gateway" },
                },
                "spec": {
                    "address": listen.to_string(),
                    "labels": labels,
                    "serviceAccount": args.service_account,
                },
            }),
        )?;
        eprintln!(
            "strait: gateway {}.{} listens on {listen} (admin {admin}); Gateway resources select it by {}",
            args.name,
            args.namespace,
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            status = gw.child.wait() => {
                let status = status?;
                bail!("the gateway exited ({status}); its log ({}):\n{}", gw.log.display(), gw.log_tail());
            }
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(ExitCode::SUCCESS)
    }
    .await;
    pod.stop(Duration::from_secs(1)).await;
    result
}
