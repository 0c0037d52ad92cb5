//! Debug pages of the control plane (behind the API token): connected proxies and their sync
//! state (`strait proxy-status`), and what the control plane sends each proxy
//! (`strait proxy-config`). And `/metrics` for Prometheus, with `/debug/prometheus_sd`: every
//! connected proxy's stats address for Prometheus's HTTP service discovery. Secrets are shown by name, with
//! what their certificates say; their keys and bytes never leave the control plane this way.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use serde_json::{Value, json};
use strait_ads::{AdsServer, Generator, SyncState};
use strait_xds_core::{TypeUrl, XdsResources};

use crate::Mesh;

#[derive(Clone)]
struct DebugState {
    ads: AdsServer,
    mesh: Arc<Mesh>,
}

pub fn routes(ads: AdsServer, mesh: Arc<Mesh>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/proxies", get(proxies))
        .route("/debug/prometheus_sd", get(prometheus_sd))
        .route("/debug/proxies/{id}/{what}", get(proxy_config))
        .route("/debug/services", get(services))
        .route("/debug/authz/check", post(authz_check))
        .with_state(DebugState { ads, mesh })
}

async fn metrics(State(s): State<DebugState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.ads.metrics_text(),
    )
        .into_response()
}

async fn proxies(State(s): State<DebugState>) -> Response {
    let revision = s.mesh.current().snapshot.revision;
    let list: Vec<Value> = s
        .ads
        .status()
        .into_iter()
        .map(|p| {
            let types: serde_json::Map<String, Value> = p
                .types
                .iter()
                .map(|(t, st)| {
                    let (state, reason) = match &st.state {
                        SyncState::Synced => ("SYNCED", None),
                        SyncState::Stale => ("STALE", None),
                        SyncState::Nack { reason } => ("NACK", Some(reason.clone())),
                        SyncState::NotSent => ("NOT SENT", None),
                    };
                    (
                        t.short().to_string(),
                        json!({
                            "state": state,
                            "reason": reason,
                            "sent_version": st.sent_version,
                            "acked_version": st.acked_version,
                            "resources": st.resources,
                        }),
                    )
                })
                .collect();
            json!({
                "id": p.id,
                "workload": p.proxy.workload,
                "namespace": p.proxy.namespace,
                "role": format!("{:?}", p.proxy.role),
                "stream": format!("{:?}", p.stream),
                "connected_at": p.connected_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "version": revision.to_string(),
                "types": types,
            })
        })
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

/// Prometheus's HTTP service discovery (`http_sd_configs`): one target group per connected
/// proxy, its stats on Istio's port on the proxy's address (`IP:15090`, path
/// `/stats/prometheus`), labelled with its namespace and pod as Istio's scrape config labels
/// them; the proxy's role, id and workload labels as `__meta_strait_*` for relabelling.
async fn prometheus_sd(State(s): State<DebugState>) -> Response {
    let mut groups: Vec<(String, Value)> = s
        .ads
        .status()
        .into_iter()
        .map(|p| {
            let target =
                std::net::SocketAddr::new(p.proxy.ip, strait_xds_core::names::PROMETHEUS_PORT)
                    .to_string();
            (target.clone(), sd_group(&target, &p.proxy))
        })
        .collect();
    // One group per address: a proxy that reconnected is listed once.
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups.dedup_by(|a, b| a.0 == b.0);
    axum::Json(Value::Array(groups.into_iter().map(|(_, g)| g).collect())).into_response()
}

fn sd_group(target: &str, proxy: &strait_xds_core::Proxy) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("__metrics_path__".into(), json!("/stats/prometheus"));
    labels.insert("namespace".into(), json!(proxy.namespace));
    labels.insert("pod".into(), json!(proxy.workload));
    let role = match proxy.role {
        strait_xds_core::ProxyRole::Sidecar => "sidecar",
        strait_xds_core::ProxyRole::Gateway => "router",
    };
    labels.insert("__meta_strait_role".into(), json!(role));
    labels.insert("__meta_strait_proxy_id".into(), json!(proxy.id));
    for (name, value) in &proxy.labels {
        labels.insert(
            format!("__meta_strait_label_{}", label_name(name)),
            json!(value),
        );
    }
    json!({ "targets": [target], "labels": labels })
}

/// A Kubernetes label name as a Prometheus label name (`[a-zA-Z0-9_]`), as Prometheus's own
/// Kubernetes discovery writes `__meta_kubernetes_pod_label_*`.
fn label_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `strait authz check`: what the destination's proxy would decide (crate::authz_check).
async fn authz_check(
    State(s): State<DebugState>,
    axum::Json(req): axum::Json<crate::authz_check::CheckRequest>,
) -> Response {
    use crate::authz_check::{CheckError, check, find};
    let proxies: Vec<strait_xds_core::Proxy> =
        s.ads.status().into_iter().map(|p| p.proxy).collect();
    let error = |code: StatusCode, message: String| {
        (code, axum::Json(json!({ "message": message }))).into_response()
    };
    let dest = match find(&proxies, &req.to, &req.to_namespace) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::NOT_FOUND, m),
    };
    let source = match &req.from {
        Some(name) => match find(&proxies, name, &req.from_namespace) {
            Ok(p) => Some(p),
            Err(m) => return error(StatusCode::NOT_FOUND, m),
        },
        None => None,
    };
    let resources = s.mesh.generate(dest);
    let trust_domain = s.mesh.current().snapshot.mesh.trust_domain.clone();
    match check(&req, dest, &resources, source, &trust_domain) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(CheckError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(CheckError::Bad(m)) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// The registry's services with their virtual IPs and ports (read-only): what `strait run` writes
/// into a pod's hosts file.
async fn services(State(s): State<DebugState>) -> Response {
    let state = s.mesh.current();
    let list: Vec<Value> = state
        .registry
        .services
        .values()
        .map(|svc| {
            json!({
                "hostname": svc.hostname,
                "namespace": svc.namespace,
                "addresses": svc.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": svc.ports.iter().map(|p| json!({
                    "name": p.name,
                    "port": p.number,
                    "endpoints": state.registry.endpoints(&svc.hostname, p.number).iter().map(|e| json!({
                        "address": e.address,
                        "port": e.port,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

async fn proxy_config(
    State(s): State<DebugState>,
    Path((id, what)): Path<(String, String)>,
) -> Response {
    let Some(status) = s.ads.status().into_iter().find(|p| p.id == id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": format!("no connected proxy {id:?}: `strait proxy-status` lists them")})),
        )
            .into_response();
    };
    let resources = s.mesh.generate(&status.proxy);
    let body = match what.as_str() {
        "clusters" => clusters(&resources),
        "listeners" => listeners(&resources),
        "routes" => route_table(&resources),
        "endpoints" => endpoints(&resources),
        "secrets" => secrets(&resources, s.ads.sent(&id).as_ref()),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": format!("unknown config kind {what:?}: use listeners, routes, clusters, endpoints or secrets")})),
            )
                .into_response();
        }
    };
    axum::Json(body).into_response()
}

fn table(
    columns: &[&str],
    rows: Vec<Vec<String>>,
    type_url: TypeUrl,
    resources: &XdsResources,
) -> Value {
    let names: Vec<&String> = match type_url {
        TypeUrl::Cluster => resources.clusters.keys().collect(),
        TypeUrl::Endpoint => resources.endpoints.keys().collect(),
        TypeUrl::Listener => resources.listeners.keys().collect(),
        TypeUrl::Route => resources.routes.keys().collect(),
        TypeUrl::Secret => resources.secrets.keys().collect(),
    };
    let objects: Vec<Value> = rows
        .iter()
        .map(|r| {
            Value::Object(
                columns
                    .iter()
                    .zip(r)
                    .map(|(c, v)| (c.to_ascii_lowercase().replace(' ', "_"), json!(v)))
                    .collect(),
            )
        })
        .collect();
    json!({"columns": columns, "rows": rows, "resources": objects, "names": names})
}

fn clusters(r: &XdsResources) -> Value {
    let rows = r
        .clusters
        .values()
        .map(|c| {
            let parts: Vec<&str> = c.name.split('|').collect();
            let (direction, port, subset, host) = match parts.as_slice() {
                [d, p, s, h] => (d.to_string(), p.to_string(), s.to_string(), h.to_string()),
                _ => ("-".into(), "-".into(), "-".into(), c.name.clone()),
            };
            let kind = match &c.cluster_discovery_type {
                Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(t)) => {
                    envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::try_from(*t)
                        .map_or_else(|_| t.to_string(), |d| d.as_str_name().to_string())
                }
                _ => "-".into(),
            };
            vec![host, port, subset, direction, kind]
        })
        .collect();
    table(
        &["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"],
        rows,
        TypeUrl::Cluster,
        r,
    )
}

fn address(a: Option<&Address>) -> (String, String) {
    match a.and_then(|a| a.address.as_ref()) {
        Some(AddressKind::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p.to_string(),
                _ => "-".into(),
            };
            (s.address.clone(), port)
        }
        _ => ("-".into(), "-".into()),
    }
}

fn listeners(r: &XdsResources) -> Value {
    let rows = r
        .listeners
        .values()
        .flat_map(|l| {
            let (addr, port) = address(l.address.as_ref());
            let chains = l.filter_chains.len();
            let filters: Vec<String> = l
                .filter_chains
                .iter()
                .flat_map(|fc| fc.filters.iter().map(|f| f.name.clone()))
                .collect();
            vec![vec![
                l.name.clone(),
                addr,
                port,
                chains.to_string(),
                filters.join(","),
            ]]
        })
        .collect();
    table(
        &["NAME", "ADDRESS", "PORT", "CHAINS", "FILTERS"],
        rows,
        TypeUrl::Listener,
        r,
    )
}

fn route_table(r: &XdsResources) -> Value {
    let mut rows = Vec::new();
    for rc in r.routes.values() {
        for vh in &rc.virtual_hosts {
            for route in &vh.routes {
                let m = route.r#match.as_ref();
                let path = match m.and_then(|m| m.path_specifier.as_ref()) {
                    Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
                    Some(PathSpecifier::Path(p)) => p.clone(),
                    Some(PathSpecifier::SafeRegex(re)) => format!("~{}", re.regex),
                    _ => "-".into(),
                };
                let headers = m.map_or(0, |m| m.headers.len());
                let action = match &route.action {
                    Some(Action::Route(ra)) => match &ra.cluster_specifier {
                        Some(ClusterSpecifier::Cluster(c)) => c.clone(),
                        Some(ClusterSpecifier::WeightedClusters(w)) => w
                            .clusters
                            .iter()
                            .map(|c| format!("{} {}%", c.name, c.weight.map_or(0, |w| w.value)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        _ => "-".into(),
                    },
                    Some(Action::Redirect(_)) => "redirect".into(),
                    Some(Action::DirectResponse(d)) => format!("direct {}", d.status),
                    _ => "-".into(),
                };
                let matcher = if headers > 0 {
                    format!("{path} +{headers} headers")
                } else {
                    path
                };
                rows.push(vec![rc.name.clone(), vh.domains.join(","), matcher, action]);
            }
        }
    }
    table(
        &["NAME", "DOMAINS", "MATCH", "DESTINATION"],
        rows,
        TypeUrl::Route,
        r,
    )
}

/// Istio's `proxy-config secret` columns. STATUS: ACTIVE when the proxy ACKed the version it
/// was sent, WARMING while it has not, NOT SENT when it was not (not asked for, or the stream is
/// not authenticated). Certificates only: the bytes and the keys stay out.
fn secrets(r: &XdsResources, sent: Option<&strait_ads::SentConfig>) -> Value {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let sent = sent.and_then(|s| s.types.get(&TypeUrl::Secret));
    let rows = r
        .secrets
        .values()
        .map(|secret| {
            let (kind, pem) = match &secret.r#type {
                Some(Type::TlsCertificate(t)) => ("Cert Chain", t.certificate_chain.as_ref()),
                Some(Type::ValidationContext(v)) => ("CA", v.trusted_ca.as_ref()),
                _ => ("-", None),
            };
            let pem = match pem.and_then(|d| d.specifier.as_ref()) {
                Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).to_string(),
                _ => String::new(),
            };
            let first = strait_identity::cert::certs_from_pem(&pem, &secret.name)
                .ok()
                .and_then(|certs| certs.into_iter().next())
                .and_then(|der| strait_identity::cert::CertInfo::parse(&der, &secret.name).ok());
            let status = match sent.and_then(|t| t.resources.get(&secret.name).map(|e| (t, e))) {
                Some((t, _)) if t.acked_version == t.version => "ACTIVE",
                Some(_) => "WARMING",
                None => "NOT SENT",
            };
            let now = std::time::SystemTime::now();
            let (valid, serial, not_after, not_before) = match &first {
                Some(c) => (
                    (c.not_before <= now && now <= c.not_after).to_string(),
                    c.serial.clone(),
                    strait_identity::cert::rfc3339(c.not_after),
                    strait_identity::cert::rfc3339(c.not_before),
                ),
                None => ("false".into(), "-".into(), "-".into(), "-".into()),
            };
            vec![
                secret.name.clone(),
                kind.to_string(),
                status.to_string(),
                valid,
                serial,
                not_after,
                not_before,
            ]
        })
        .collect();
    table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        rows,
        TypeUrl::Secret,
        r,
    )
}

fn endpoints(r: &XdsResources) -> Value {
    let mut rows = Vec::new();
    for cla in r.endpoints.values() {
        for le in &cla.endpoints {
            for ep in &le.lb_endpoints {
                let addr = match &ep.host_identifier {
                    Some(HostIdentifier::Endpoint(e)) => {
                        let (a, p) = address(e.address.as_ref());
                        format!("{a}:{p}")
                    }
                    _ => "-".into(),
                };
                let weight = ep.load_balancing_weight.map_or(1, |w| w.value);
                rows.push(vec![
                    addr,
                    "HEALTHY".to_string(),
                    weight.to_string(),
                    cla.cluster_name.clone(),
                ]);
            }
        }
    }
    table(
        &["ENDPOINT", "STATUS", "WEIGHT", "CLUSTER"],
        rows,
        TypeUrl::Endpoint,
        r,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_is_a_target_on_istios_stats_port_with_its_pod() {
        let proxy = strait_xds_core::Proxy {
            id: "sidecar~10.44.0.3~productpage-v1.default~default.svc.cluster.local".into(),
            role: strait_xds_core::ProxyRole::Sidecar,
            ip: "10.44.0.3".parse().unwrap(),
            workload: "productpage-v1".into(),
            namespace: "default".into(),
            labels: [("app", "productpage"), ("app.kubernetes.io/version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capture: strait_xds_core::CaptureMode::Iptables,
            service_account: "bookinfo-productpage".into(),
            app_address: None,
            mtls: false,
        };
        let group = sd_group("10.44.0.3:15090", &proxy);
        assert_eq!(
            group,
            json!({
                "targets": ["10.44.0.3:15090"],
                "labels": {
                    "__metrics_path__": "/stats/prometheus",
                    "namespace": "default",
                    "pod": "productpage-v1",
                    "__meta_strait_role": "sidecar",
                    "__meta_strait_proxy_id": proxy.id,
                    "__meta_strait_label_app": "productpage",
                    "__meta_strait_label_app_kubernetes_io_version": "v1",
                },
            })
        );
    }
}
