//! DestinationRule: policies for traffic to a service after routing, and its subsets.
//!
//! The types mirror `istio.networking.v1alpha3.DestinationRule` field for field, with Istio's
//! proto-JSON names. Istio's oneofs are flattened in proto-JSON, so they appear here as several
//! `Option` fields. Validation lives in [`validate`](self::validate()).

mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::common::{PortSelector, WorkloadSelector};

pub use validate::{validate, validate_connection_pool};
pub(crate) use validate::{validate_export_to, validate_subset_name};

/// `spec` of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// The service the rule applies to: a registry host name (short names are resolved in the
    /// rule's namespace), with an optional `*` prefix wildcard.
    #[serde(default)]
    pub host: String,
    /// Policies for all traffic to `host` (subsets and ports may override them). Boxed: it is
    /// large, and most rules leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    /// Named groups of the service's endpoints, selected by labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces that see this rule: `.` (its own), `*` (all) or namespace names. Empty means
    /// all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Limits the rule to the workloads (clients) with these labels, in the rule's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

impl DestinationRule {
    /// The subset with this name.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// Load balancing, connection pool, outlier detection and TLS settings for a destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides for single ports; a port's settings replace (not merge with) these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel TCP to the destination through an HTTP CONNECT/POST proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// Send a PROXY protocol header upstream; cannot be used with `tunnel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Limit on concurrent retries relative to active requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Traffic policies for one port of the destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// Required: the port these settings apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Where to tunnel TCP connections (Istio's `TrafficPolicy.TunnelSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Required: the host (FQDN or IP) the proxy connects to.
    #[serde(default)]
    pub target_host: String,
    /// Required: the port the proxy connects to.
    #[serde(default)]
    pub target_port: u32,
}

/// The PROXY protocol header sent upstream (Istio's `TrafficPolicy.ProxyProtocol`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    /// Human-readable format (the default).
    #[default]
    V1,
    /// Binary format.
    V2,
}

/// Limit on concurrent retries (Istio's `TrafficPolicy.RetryBudget`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Concurrent retries as a percentage of active and pending requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries always allowed regardless of `percent` (default 3).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub min_retry_concurrency: u32,
}

/// A named group of the service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Required: a DNS label, referred to by `destination.subset` in routes.
    #[serde(default)]
    pub name: String,
    /// Endpoints with all these labels belong to the subset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's traffic policy for this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing: a simple algorithm or consistent hashing (one of the two), plus locality
/// settings and warm-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality weights and failover; overrides the mesh-wide setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Envoy's automatic zone-aware balancing; cannot be used with `localityLbSetting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated: use `warmup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start for new endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfiguration>,
}

/// A simple load balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SimpleLb {
    /// Istio's default (`LEAST_REQUEST`).
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    /// Deprecated alias of `LEAST_REQUEST`.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    #[serde(rename = "RANDOM")]
    Random,
    /// Forward to the address the caller asked for, without load balancing.
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
}

/// Consistent hashing: a hash key (one of header, cookie, source IP, query parameter) and a
/// hash algorithm (ring hash or Maglev).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash on a cookie, which the proxy creates when `ttl` is set and the cookie is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MagLev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub minimum_ring_size: u64,
}

/// A cookie to hash on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Required.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Lifetime of a generated cookie; no cookie is generated when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Extra attributes of a generated cookie (`SameSite`, `Secure`, ...), each name once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// An attribute of a generated cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Ring hash settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring (Envoy's default is 1024).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub minimum_ring_size: u64,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Required: a prime below 5000011.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub table_size: u64,
}

/// Locality-weighted load balancing (one of `distribute`, `failover`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    /// Shares of traffic from a locality to others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region to fail over to when a region's endpoints are unhealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order endpoints into priorities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Traffic from one locality, split over others (Istio's `LocalityLoadBalancerSetting.Distribute`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// `region/zone/subzone`, with an optional trailing `*`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Locality to weight; the weights sum to 100.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, u32>,
}

/// A failover between regions (Istio's `LocalityLoadBalancerSetting.Failover`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
}

/// Envoy's zone-aware load balancing, with optional cross-region failover ordering.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLoadBalancerSetting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Order of the regions to fail over to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order endpoints into priorities (not the topology labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Smallest local cluster for which zone-aware balancing applies (Envoy's default is 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cluster_size: Option<u64>,
}

/// Slow start for new endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Required: how long a new endpoint warms up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Share of traffic a new endpoint starts with, in 0..=100 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// Curve of the increase, at least 1 (default 1: linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Connection limits to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

/// TCP connection settings (Istio's `ConnectionPoolSettings.TCPSettings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections to each destination host (default 2^32-1).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_connections: i32,
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout (default 1h); `0s` disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// TCP keepalive probes (Istio's `ConnectionPoolSettings.TCPSettings.TcpKeepalive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub probes: u32,
    /// Idle time before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Time between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// HTTP connection settings (Istio's `ConnectionPoolSettings.HTTPSettings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum requests waiting for a connection.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub http1_max_pending_requests: i32,
    /// Maximum active requests to a destination.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub http2_max_requests: i32,
    /// Requests per connection before it is closed; 1 disables keep-alive.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_requests_per_connection: i32,
    /// Maximum outstanding retries to the destination.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_retries: i32,
    /// Idle timeout of pooled connections (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 connections are upgraded to HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol (HTTP/1.1 or HTTP/2) upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_client_protocol: bool,
    /// Maximum concurrent streams on one HTTP/2 connection.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_concurrent_streams: i32,
    /// HTTP/2 PING keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// Whether HTTP/1.1 connections are upgraded to HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum H2UpgradePolicy {
    /// The mesh-wide default.
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "DO_NOT_UPGRADE")]
    DoNotUpgrade,
    #[serde(rename = "UPGRADE")]
    Upgrade,
}

/// HTTP/2 PING keepalive (Istio's `ConnectionPoolSettings.HTTPSettings.ConnectionKeepalive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Required: time between PINGs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Required: how long to wait for the PING's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Ejection of unhealthy endpoints (circuit breaking).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Tell local-origin failures (connection errors) from upstream errors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    /// Consecutive local-origin failures before ejection; needs
    /// `splitExternalLocalOriginErrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive 502/503/504 (and connection errors) before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx (and connection errors) before ejection (default 5).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "consecutive5xxErrors"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between ejection sweeps (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Minimum ejection time, multiplied by the number of ejections (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected (default 10).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_ejection_percent: i32,
    /// Outlier detection stops below this share of healthy endpoints (default 0).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub min_health_percent: i32,
    /// Deprecated: use `consecutiveGatewayErrors` or `consecutive5xxErrors`.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub consecutive_errors: i32,
}

/// TLS from the proxy to the upstream (Istio's `ClientTLSSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    /// Required for `MUTUAL` without `credentialName`: a file path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    /// Required for `MUTUAL` without `credentialName`: a file path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// CA bundle file to verify the server's certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// A Secret (or `configmap://` ConfigMap) holding the client certificate, key and CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Names the server certificate must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    /// Skip verification of the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
}

impl ClientTlsSettings {
    /// The mode, `DISABLE` when unset.
    pub fn mode(&self) -> ClientTlsMode {
        self.mode.unwrap_or_default()
    }
}

/// How connections to the upstream are secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientTlsMode {
    /// Plain text.
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    /// TLS, verifying the server.
    #[serde(rename = "SIMPLE")]
    Simple,
    /// TLS with a client certificate from the settings.
    #[serde(rename = "MUTUAL")]
    Mutual,
    /// Mesh mTLS with the workload's own identity.
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proto_json_and_writes_it_back() {
        let json = serde_json::json!({
            "host": "reviews",
            "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http2KeepAlive": {"interval": "15s", "timeout": "5s"}}},
                "outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m"},
                "loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}},
                "tls": {"mode": "ISTIO_MUTUAL"},
            },
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
        });
        let dr: DestinationRule = serde_json::from_value(json.clone()).unwrap();
        let tp = dr.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            Some(7)
        );
        assert_eq!(tp.tls.as_ref().unwrap().mode(), ClientTlsMode::IstioMutual);
        assert_eq!(dr.subset("v1").unwrap().labels["version"], "v1");
        assert_eq!(serde_json::to_value(&dr).unwrap(), json);
    }
}
