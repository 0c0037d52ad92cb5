//! `strait`: the Strait CLI and control plane.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod agent;
mod analyze;
mod authz;
mod client;
mod control_plane;
mod dashboard;
mod demo;
mod gateway;
mod inject_webhook;
mod input;
mod istio_iptables;
mod kube_inject;
mod output;
mod pod_identity;
mod proxies;
mod readiness;
mod resources;
mod run;
mod sidecar;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "Strait: a service mesh that reads Istio's configuration"
)]
struct Cli {
    /// The control plane's API address (default: the one the local control plane recorded in
    /// its data directory, else http://127.0.0.1:15014); several, comma-separated, for replicas
    /// on one store: tried in turn when one cannot be reached.
    #[arg(long, global = true, env = "STRAIT_SERVER")]
    server: Option<String>,
    /// The API token (default: the `token` file in the data directory); for `strait
    /// control-plane`, the token it accepts instead of that file's (replicas share one).
    #[arg(long, global = true, env = "STRAIT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The control plane's data directory (default: $STRAIT_HOME, else ~/.strait).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the resource API on an embedded store.
    ControlPlane {
        /// Where the API listens; it binds loopback unless told otherwise.
        #[arg(long, default_value = "127.0.0.1:15014")]
        api_addr: String,
        /// Where the xDS (ADS) server listens, plain gRPC.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_addr: String,
        /// How long to wait for more changes before pushing (milliseconds).
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Istio's MeshConfig: the `istio` ConfigMap (or its `data.mesh`), an IstioOperator or
        /// Helm values file (`meshConfig`), or a bare MeshConfig. Honoured: rootNamespace,
        /// trustDomain, outboundTrafficPolicy, enableAutoMtls, extensionProviders; the flags
        /// below override it.
        #[arg(long, value_name = "FILE")]
        mesh_config: Option<PathBuf>,
        /// Mesh-wide outbound traffic policy for hosts not in the registry [default: allow-any,
        /// or the mesh config's].
        #[arg(long, value_enum)]
        outbound_traffic_policy: Option<OutboundPolicyArg>,
        /// The range services' virtual IPs come from.
        #[arg(long, default_value = "240.240.0.0/16")]
        vip_range: String,
        /// Where the TLS port listens: the mesh CA and xDS over mutual TLS (Istio's 15012).
        #[arg(long, default_value = "127.0.0.1:15012")]
        tls_addr: String,
        /// The mesh's trust domain: workload identities are spiffe://TRUST_DOMAIN/ns/NS/sa/SA
        /// [default: cluster.local, or the mesh config's].
        #[arg(long)]
        trust_domain: Option<String>,
        /// A plug-in CA in Istio's cacerts layout (ca-cert.pem, ca-key.pem, cert-chain.pem,
        /// root-cert.pem) instead of the self-signed root kept in the data directory.
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// The lifetime of workload certificates when a request asks for none (at most 90d).
        #[arg(long, default_value = "24h", value_parser = strait_xds_core::flags::parse_duration)]
        workload_cert_ttl: std::time::Duration,
        /// The trust bundle (PEM file) the proxies verify servers against when they originate
        /// TLS without `caCertificates` (a DestinationRule's SIMPLE or MUTUAL); the proxies read
        /// it, so it must exist where they run.
        #[arg(long, value_name = "FILE", default_value = strait_translate::translate::SYSTEM_CA_BUNDLE)]
        system_ca_bundle: PathBuf,
        /// Fetch RequestAuthentication `jwksUri`s on HOST:PORT from IP:PORT instead (like curl's
        /// --resolve), for machines without the issuer's network; the URI is unchanged, so TLS
        /// still checks HOST. Repeatable.
        #[arg(long, value_name = "HOST:PORT=IP:PORT", value_parser = parse_jwks_resolve)]
        jwks_resolve: Vec<(String, std::net::SocketAddr)>,
        /// Extra trust roots (PEM file) for https `jwksUri` fetches, besides
        /// --system-ca-bundle. Repeatable.
        #[arg(long, value_name = "FILE")]
        jwks_ca: Vec<PathBuf>,
        /// How often fetched key sets are fetched again (failed fetches: every 30s).
        #[arg(long, default_value = "20m", value_parser = strait_xds_core::flags::parse_duration)]
        jwks_refresh: std::time::Duration,
        /// Where the config lives: `file` (the embedded store in the data directory) or
        /// `etcd://HOST:PORT[,HOST:PORT...]`, shared by several control planes (each given the
        /// same --token and --ca-dir).
        #[arg(long, default_value = "file", value_name = "file|etcd://HOST:PORT,...")]
        store: String,
        /// The key prefix in etcd (several meshes may share one etcd under different prefixes).
        #[arg(long, default_value = "/strait", value_name = "PREFIX")]
        etcd_prefix: String,
        /// The CA certificate (PEM) that signed etcd's server certificate: TLS to etcd.
        #[arg(long, value_name = "FILE")]
        etcd_ca: Option<PathBuf>,
        /// A client certificate (PEM) for etcd, with --etcd-key.
        #[arg(long, value_name = "FILE", requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, value_name = "FILE", requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// Receive traces here (OTLP/HTTP `POST /v1/traces` and OTLP/gRPC on one port, e.g.
        /// 127.0.0.1:4318) and keep the most recent in memory for the dashboard
        /// (`strait dashboard`); point a MeshConfig opentelemetry provider at it.
        #[arg(long, value_name = "IP:PORT")]
        otlp_addr: Option<String>,
    },
    /// Print a bootstrap for a data plane: `strait bootstrap envoy --workload reviews-v1 ...`.
    Bootstrap {
        #[command(subcommand)]
        target: proxies::BootstrapTarget,
    },
    /// Connected proxies and, per xDS type, whether they are SYNCED, STALE or NACK.
    ProxyStatus,
    /// The URL of the control plane's web UI: the live service graph, traces, proxy status
    /// (like `istioctl dashboard kiali`).
    Dashboard,
    /// What the control plane sends a proxy: listeners, routes, clusters or endpoints.
    ProxyConfig {
        #[arg(value_enum)]
        what: proxies::ConfigKind,
        /// The proxy: its node id, or WORKLOAD.NAMESPACE, or WORKLOAD.
        proxy: String,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: GetFormat,
    },
    /// Check resources on their own, as Istio's validating webhook does.
    Validate {
        /// Files, folders (read recursively) or `-` for standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: ReportFormat,
    },
    /// Check resources together, like `istioctl analyze`, with Istio's message codes (and
    /// Strait's STR codes): docs/analyze.md. Exit code 79 when issues reach the threshold.
    Analyze(analyze::AnalyzeArgs),
    /// Create or update resources from files.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// The namespace for resources that do not name one (default: `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Show resources: `strait get vs`, `strait get dr reviews -o yaml`, `strait get se -A`.
    Get {
        /// A kind: name, plural or short name (vs, dr, gw, se, sidecar, we, wg, pa, ap, ra, svc, ...).
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: GetFormat,
        /// Show Secrets' data (otherwise each value reads `<redacted: N bytes>`).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Create a Secret from files, as kubectl does: `strait create secret tls NAME --cert F
    /// --key F`, `strait create secret generic NAME --from-file=KEY=F ...`.
    Create {
        #[command(subcommand)]
        what: resources::CreateKind,
    },
    /// Run a workload with its sidecar on the local platform:
    /// `strait run --name web --labels app=web --port http:8000 -- python3 -m http.server 8000`.
    Run(run::RunArgs),
    /// Run an ingress gateway on the host's network, selected by Gateway resources' labels.
    Gateway(gateway::GatewayArgs),
    /// The node agent beside Envoy: obtains and renews the workload's certificate and serves it
    /// to Envoy over SDS on a Unix socket (Istio's pilot-agent role; strait run starts it).
    Agent(agent::AgentArgs),
    /// Bookinfo with sidecars behind an ingress gateway, with its own control plane, until
    /// Ctrl-C: `strait demo [--proxy envoy]` (as root, pods in network namespaces with iptables
    /// capture; otherwise on loopback addresses, the apps using their sidecars as HTTP proxies).
    Demo(demo::DemoArgs),
    /// Add Strait's sidecar to workloads, like `istioctl kube-inject`:
    /// `strait kube-inject -f deployment.yaml | kubectl apply -f -`.
    KubeInject(kube_inject::KubeInjectArgs),
    /// Serve the sidecar injection webhook (`POST /inject`, AdmissionReview v1 and v1beta1) over
    /// HTTPS: `strait inject-webhook --tls-cert cert.pem --tls-key key.pem`.
    InjectWebhook(inject_webhook::InjectWebhookArgs),
    /// What the injected istio-init container runs: installs Istio's capture rules in the
    /// current network namespace, with istio-iptables' flags (`-p 15001 -z 15006 -u 1337 -m
    /// REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020`).
    IstioIptables(istio_iptables::IstioIptablesArgs),
    /// Authorization: `strait authz check --from sleep.foo --to httpbin.foo --path /ip` decides
    /// a request as the destination's proxy would (the AuthorizationPolicies that apply, the
    /// rule that decided, and why), without sending it.
    Authz {
        #[command(subcommand)]
        what: authz::AuthzCommand,
    },
    /// Delete resources named in files, or one by kind and name.
    Delete {
        kind: Option<String>,
        name: Option<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutboundPolicyArg {
    AllowAny,
    RegistryOnly,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GetFormat {
    Table,
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let connection = client::Connection {
        server: cli.server,
        token: cli.token,
        data_dir: cli.data_dir.clone(),
    };
    let result = match cli.command {
        Command::ControlPlane {
            api_addr,
            xds_addr,
            debounce_ms,
            mesh_config,
            outbound_traffic_policy,
            vip_range,
            tls_addr,
            trust_domain,
            ca_dir,
            workload_cert_ttl,
            system_ca_bundle,
            jwks_resolve,
            jwks_ca,
            jwks_refresh,
            store,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            otlp_addr,
        } => match store_choice(&store, etcd_prefix, etcd_ca, etcd_cert, etcd_key) {
            Err(e) => Err(e),
            Ok(store) => control_plane::run(
                strait_controlplane::Options {
                    jwks: strait_controlplane::jwks::JwksOptions {
                        resolve: jwks_resolve.into_iter().collect(),
                        extra_roots: jwks_ca,
                        system_roots: Some(system_ca_bundle.clone()),
                        refresh: jwks_refresh,
                    },
                    data_dir: control_plane::data_dir(cli.data_dir.as_deref()),
                    api_addr,
                    xds_addr,
                    tls_addr,
                    identity: strait_controlplane::IdentityOptions {
                        trust_domain: String::new(),
                        ca_dir,
                        workload_cert_ttl,
                    },
                    debounce: std::time::Duration::from_millis(debounce_ms),
                    outbound_policy: strait_translate::OutboundPolicy::AllowAny,
                    mesh: Default::default(),
                    vip_range,
                    system_ca_bundle,
                    store,
                    token: connection.token.clone(),
                    otlp_addr,
                },
                control_plane::MeshFlags {
                    file: mesh_config,
                    trust_domain,
                    outbound_policy: outbound_traffic_policy.map(|p| match p {
                        OutboundPolicyArg::AllowAny => strait_translate::OutboundPolicy::AllowAny,
                        OutboundPolicyArg::RegistryOnly => {
                            strait_translate::OutboundPolicy::RegistryOnly
                        }
                    }),
                },
            ),
        },
        Command::Run(args) => run::run(&connection, args),
        Command::Gateway(args) => gateway::run(&connection, args),
        Command::Agent(args) => agent::run(args),
        Command::Demo(args) => demo::run(cli.data_dir.as_deref(), args),
        Command::KubeInject(args) => kube_inject::run(args),
        Command::InjectWebhook(args) => inject_webhook::run(args),
        Command::IstioIptables(args) => istio_iptables::run(args),
        Command::Bootstrap { target } => proxies::bootstrap(&connection, target),
        Command::ProxyStatus => proxies::status(&connection),
        Command::Dashboard => dashboard::run(&connection),
        Command::Authz { what } => authz::run(&connection, what),
        Command::ProxyConfig {
            what,
            proxy,
            output,
        } => proxies::config(&connection, what, &proxy, output),
        Command::Validate { files, output } => analyze::validate(&files, output),
        Command::Analyze(args) => analyze::analyze(&args, args.live().then_some(&connection)),
        Command::Apply { files, namespace } => {
            resources::apply(&connection, &files, namespace.as_deref())
        }
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
            show_secrets,
        } => resources::get(
            &connection,
            &kind,
            name.as_deref(),
            namespace.as_deref(),
            all_namespaces,
            output,
            show_secrets,
        ),
        Command::Create { what } => resources::create(&connection, what),
        Command::Delete {
            kind,
            name,
            files,
            namespace,
        } => resources::delete(
            &connection,
            kind.as_deref(),
            name.as_deref(),
            &files,
            namespace.as_deref(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_jwks_resolve(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    strait_controlplane::jwks::parse_resolve(s).map_err(|e| format!("{e:#}"))
}

/// `--store` and the etcd flags.
fn store_choice(
    store: &str,
    prefix: String,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<strait_controlplane::StoreChoice> {
    if store == "file" {
        anyhow::ensure!(
            ca.is_none() && cert.is_none() && key.is_none(),
            "--etcd-ca/--etcd-cert/--etcd-key need --store etcd://HOST:PORT"
        );
        return Ok(strait_controlplane::StoreChoice::File);
    }
    let mut opts = strait_controlplane::EtcdOptions::from_url(store).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        prefix.starts_with('/'),
        "--etcd-prefix {prefix:?}: start it with `/` (like /strait)"
    );
    opts.prefix = prefix;
    opts.ca = ca;
    opts.cert = cert;
    opts.key = key;
    Ok(strait_controlplane::StoreChoice::Etcd(opts))
}
