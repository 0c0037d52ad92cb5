//! A DestinationRule's traffic policy, merged for one port and subset, and applied to a cluster
//! the way Istio applies it (`cluster_traffic_policy.go`): connection pool → circuit breakers,
//! connect timeout, TCP keepalive and HTTP protocol options; outlier detection; load balancer;
//! HTTP/2 upgrade. Also the route hash policy of consistent hashing.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self as cl, CommonLbConfig, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    TcpKeepalive,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, CookieAttribute, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use strait_api::Duration;
use strait_api::networking::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, SimpleLb, TrafficPolicy,
};

/// The key of the upstream HTTP options in `typed_extension_protocol_options`.
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's default connect timeout (`meshConfig.connectTimeout`).
pub(crate) const DEFAULT_CONNECT_TIMEOUT_SECS: i64 = 10;

/// The parts of a traffic policy that apply to one cluster, after Istio's merge of the rule's
/// policy, its port-level settings, and the subset's policy.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Policy<'a> {
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    /// Applied by `mtls::upstream_tls`.
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Policy<'a> {
    /// Istio's `GetPortLevelTrafficPolicy`: the port's settings replace the whole policy (they do
    /// not inherit from it); the bool says whether port-level settings were found.
    fn for_port(tp: &'a TrafficPolicy, port: u16) -> (Policy<'a>, bool) {
        match tp
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        {
            Some(p) => (
                Policy {
                    connection_pool: p.connection_pool.as_ref(),
                    load_balancer: p.load_balancer.as_ref(),
                    outlier_detection: p.outlier_detection.as_ref(),
                    tls: p.tls.as_ref(),
                },
                true,
            ),
            None => (
                Policy {
                    connection_pool: tp.connection_pool.as_ref(),
                    load_balancer: tp.load_balancer.as_ref(),
                    outlier_detection: tp.outlier_detection.as_ref(),
                    tls: tp.tls.as_ref(),
                },
                false,
            ),
        }
    }

    /// Istio's `MergeSubsetTrafficPolicy`: the rule's policy for the port, overridden field by
    /// field by the subset's (all fields when the subset has settings for the port).
    pub(crate) fn merged(
        rule: Option<&'a DestinationRule>,
        subset: Option<&str>,
        port: u16,
    ) -> Policy<'a> {
        let Some(rule) = rule else {
            return Policy::default();
        };
        let original = rule
            .traffic_policy
            .as_deref()
            .map(|tp| Policy::for_port(tp, port).0);
        let subset_tp = subset
            .and_then(|name| rule.subset(name))
            .and_then(|s| s.traffic_policy.as_ref());
        let Some(subset_tp) = subset_tp else {
            return original.unwrap_or_default();
        };
        let (sub, port_level) = Policy::for_port(subset_tp, port);
        let Some(mut merged) = original else {
            return sub;
        };
        if sub.connection_pool.is_some() || port_level {
            merged.connection_pool = sub.connection_pool;
        }
        if sub.outlier_detection.is_some() || port_level {
            merged.outlier_detection = sub.outlier_detection;
        }
        if sub.load_balancer.is_some() || port_level {
            merged.load_balancer = sub.load_balancer;
        }
        if sub.tls.is_some() || port_level {
            merged.tls = sub.tls;
        }
        merged
    }
}

/// A cluster being built, with its upstream HTTP options kept apart until the end.
pub(crate) struct ClusterBuild {
    pub cluster: Cluster,
    pub http: Option<HttpProtocolOptions>,
}

impl ClusterBuild {
    pub(crate) fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            http: None,
        }
    }

    fn http(&mut self) -> &mut HttpProtocolOptions {
        self.http.get_or_insert_with(HttpProtocolOptions::default)
    }

    /// Speak HTTP/2 to the upstream (Istio's `setH2Options`).
    pub(crate) fn set_h2(&mut self) {
        self.http().upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        ));
    }

    /// TLS origination without a fixed SNI (Istio's `setAutoSniAndAutoSanValidation`): the SNI
    /// from the request's host, and the server's certificate checked against it.
    pub(crate) fn set_auto_sni(&mut self, auto_sni: bool, auto_san_validation: bool) {
        let options = self
            .http()
            .upstream_http_protocol_options
            .get_or_insert_with(Default::default);
        options.auto_sni = auto_sni;
        options.auto_san_validation = auto_san_validation;
    }

    fn is_h2(&self) -> bool {
        matches!(
            self.http
                .as_ref()
                .and_then(|h| h.upstream_protocol_options.as_ref()),
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_))
                }
            ))
        )
    }

    /// The cluster, with the HTTP options packed in (HTTP/1.1 when they name no protocol, as
    /// Envoy requires one).
    pub(crate) fn finish(self) -> Cluster {
        let mut cluster = self.cluster;
        if let Some(mut http) = self.http {
            if http.upstream_protocol_options.is_none() {
                http.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                    ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        )),
                    },
                ));
            }
            cluster
                .typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(http));
        }
        cluster
    }
}

pub(crate) fn pb_duration(d: &Duration) -> PbDuration {
    let n = d.as_nanos().max(0);
    PbDuration {
        seconds: i64::try_from(n / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: (n % 1_000_000_000) as i32,
    }
}

pub(crate) fn secs(seconds: i64) -> PbDuration {
    PbDuration { seconds, nanos: 0 }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn positive(v: i32) -> Option<u32> {
    u32::try_from(v).ok().filter(|v| *v > 0)
}

/// Istio's default thresholds: everything unlimited (Envoy's own defaults, such as 3 retries,
/// are too low for a mesh), with remaining capacity tracked.
pub(crate) fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: u32v(u32::MAX),
        max_pending_requests: u32v(u32::MAX),
        max_requests: u32v(u32::MAX),
        max_retries: u32v(u32::MAX),
        track_remaining: true,
        ..Default::default()
    }
}

/// Istio's `applyConnectionPool` (called with empty settings when the policy has none).
pub(crate) fn apply_connection_pool(
    b: &mut ClusterBuild,
    settings: Option<&ConnectionPoolSettings>,
) {
    let empty = ConnectionPoolSettings::default();
    let settings = settings.unwrap_or(&empty);
    let mut t = default_thresholds();
    let mut idle_timeout = None;
    let mut max_requests_per_connection = None;
    let mut max_concurrent_streams = None;
    let mut max_connection_duration = None;
    if let Some(http) = &settings.http {
        if let Some(v) = positive(http.http2_max_requests) {
            t.max_requests = u32v(v);
        }
        if let Some(v) = positive(http.http1_max_pending_requests) {
            t.max_pending_requests = u32v(v);
        }
        if let Some(v) = positive(http.max_retries) {
            t.max_retries = u32v(v);
        }
        idle_timeout = http.idle_timeout.as_ref();
        max_requests_per_connection = positive(http.max_requests_per_connection);
        max_concurrent_streams = positive(http.max_concurrent_streams);
    }
    b.cluster.connect_timeout = Some(secs(DEFAULT_CONNECT_TIMEOUT_SECS));
    if let Some(tcp) = &settings.tcp {
        if let Some(d) = &tcp.connect_timeout {
            b.cluster.connect_timeout = Some(pb_duration(d));
        }
        if let Some(v) = positive(tcp.max_connections) {
            t.max_connections = u32v(v);
        }
        max_connection_duration = tcp.max_connection_duration.as_ref();
        if idle_timeout.is_none() {
            idle_timeout = tcp.idle_timeout.as_ref();
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            b.cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: (ka.probes > 0).then_some(UInt32Value { value: ka.probes }),
                    keepalive_time: ka.time.as_ref().map(keepalive_secs),
                    keepalive_interval: ka.interval.as_ref().map(keepalive_secs),
                }),
                ..Default::default()
            });
        }
    }
    b.cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
    if idle_timeout.is_some()
        || max_requests_per_connection.is_some()
        || max_concurrent_streams.is_some()
        || max_connection_duration.is_some()
    {
        let h2 = b.is_h2();
        let http = b.http();
        let common = http
            .common_http_protocol_options
            .get_or_insert_with(CommonHttpOptions::default);
        if let Some(d) = idle_timeout {
            common.idle_timeout = Some(pb_duration(d));
        }
        if let Some(v) = max_requests_per_connection {
            common.max_requests_per_connection = u32v(v);
        }
        if let Some(d) = max_connection_duration {
            common.max_connection_duration = Some(pb_duration(d));
        }
        if let (true, Some(v)) = (h2, max_concurrent_streams)
            && let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(o)),
            })) = &mut http.upstream_protocol_options
        {
            o.max_concurrent_streams = u32v(v);
        }
    }
    if settings
        .http
        .as_ref()
        .is_some_and(|h| h.use_client_protocol)
    {
        b.http().upstream_protocol_options = Some(
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            }),
        );
    }
}

fn keepalive_secs(d: &Duration) -> UInt32Value {
    UInt32Value {
        value: u32::try_from(d.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX),
    }
}

/// Istio's `shouldH2Upgrade`: the policy's `h2UpgradePolicy: UPGRADE` upgrades any port;
/// otherwise HTTP ports follow the mesh default, which (Istio's `DO_NOT_UPGRADE`) is not to.
pub(crate) fn should_h2_upgrade(settings: Option<&ConnectionPoolSettings>) -> bool {
    settings
        .and_then(|s| s.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
        == Some(H2UpgradePolicy::Upgrade)
}

/// Istio's `applyOutlierDetection`.
pub(crate) fn apply_outlier_detection(c: &mut Cluster, outlier: Option<&OutlierDetection>) {
    let Some(o) = outlier else {
        return;
    };
    let enforcing = |v: u32| u32v(if v > 0 { 100 } else { 0 });
    let mut out = EnvoyOutlier {
        enforcing_success_rate: u32v(0),
        ..Default::default()
    };
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = u32v(v);
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u32v(v);
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    out.interval = o.interval.as_ref().map(pb_duration);
    out.base_ejection_time = o.base_ejection_time.as_ref().map(pb_duration);
    if let Some(v) = positive(o.max_ejection_percent) {
        out.max_ejection_percent = u32v(v);
    }
    if o.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u32v(v);
            out.enforcing_consecutive_local_origin_failure = u32v(100);
        }
        out.enforcing_local_origin_success_rate = u32v(0);
    }
    c.outlier_detection = Some(out);
    // Istio disables Envoy's panic threshold (50% by default) unless minHealthPercent is set.
    if o.min_health_percent >= 0 {
        c.common_lb_config
            .get_or_insert_with(CommonLbConfig::default)
            .healthy_panic_threshold = Some(Percent {
            value: f64::from(o.min_health_percent),
        });
    }
}

/// Istio's `applyLoadBalancer` (locality settings aside). Returns false when the policy turned
/// the cluster into an original-destination one (`PASSTHROUGH`), which has no endpoints.
pub(crate) fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) -> bool {
    if c.cluster_discovery_type
        == Some(cl::ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ))
    {
        c.lb_policy = LbPolicy::ClusterProvided as i32;
        return false;
    }
    let warmup = lb.and_then(|lb| {
        lb.warmup
            .as_ref()
            .and_then(|w| w.duration.as_ref())
            .or(lb.warmup_duration_secs.as_ref())
    });
    let slow_start = warmup.map(|d| cl::SlowStartConfig {
        slow_start_window: Some(pb_duration(d)),
        ..Default::default()
    });
    match lb.and_then(|lb| lb.simple) {
        Some(SimpleLb::Random) => c.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            c.lb_policy = LbPolicy::RoundRobin as i32;
            if slow_start.is_some() {
                c.lb_config = Some(LbConfig::RoundRobinLbConfig(cl::RoundRobinLbConfig {
                    slow_start_config: slow_start,
                }));
            }
        }
        Some(SimpleLb::Passthrough) => {
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster_discovery_type = Some(cl::ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.load_assignment = None;
            c.eds_cluster_config = None;
            return false;
        }
        // LEAST_REQUEST, LEAST_CONN, UNSPECIFIED and unset: Istio's default, least request.
        _ => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
            if slow_start.is_some() {
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(cl::LeastRequestLbConfig {
                    slow_start_config: slow_start,
                    ..Default::default()
                }));
            }
        }
    }
    if let Some(ch) = lb.and_then(|lb| lb.consistent_hash.as_ref()) {
        if let Some(m) = &ch.maglev {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config =
                (m.table_size != 0).then_some(LbConfig::MaglevLbConfig(cl::MaglevLbConfig {
                    table_size: Some(UInt64Value {
                        value: m.table_size,
                    }),
                }));
        } else if let Some(r) = &ch.ring_hash {
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = (r.minimum_ring_size != 0).then(|| ring_hash(r.minimum_ring_size));
        } else {
            c.lb_policy = LbPolicy::RingHash as i32;
            let size = if ch.minimum_ring_size != 0 {
                ch.minimum_ring_size
            } else {
                1024
            };
            c.lb_config = Some(ring_hash(size));
        }
    }
    true
}

fn ring_hash(minimum_ring_size: u64) -> LbConfig {
    LbConfig::RingHashLbConfig(cl::RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value {
            value: minimum_ring_size,
        }),
        ..Default::default()
    })
}

/// The route hash policy of a consistent-hash load balancer (Istio's
/// `consistentHashToHashPolicy`), if the settings hash.
pub(crate) fn hash_policy_of(lb: Option<&LoadBalancerSettings>) -> Option<HashPolicy> {
    let ch = lb?.consistent_hash.as_ref()?;
    let spec = if let Some(name) = &ch.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: name.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.as_ref().map(pb_duration),
            path: cookie.path.clone(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                })
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(name) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    })
}
