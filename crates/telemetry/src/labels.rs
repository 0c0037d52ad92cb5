//! Istio's label set and how each reporter fills it in (Istio's `istio_stats` filter): the
//! client sidecar (`reporter="source"`, outbound and gateways) labels the source with itself and
//! the destination with the upstream peer; the server sidecar (`reporter="destination"`,
//! inbound) labels the destination with itself and the source with the downstream peer. What
//! is not known is `unknown` (a canonical revision: `latest`).
//!
//! The labels of a series are split in two: the [`EdgeLabels`] (who talks to whom, over what),
//! fixed for a connection and its peer, and the response's (`response_code`,
//! `grpc_response_status`, `response_flags`), which [`crate::registry::ResponseKey`] holds.

use crate::workload::{Workload, principal_namespace};

pub const UNKNOWN: &str = "unknown";

/// Which side reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar, or a gateway (outbound listeners).
    Source,
    /// The server's sidecar (inbound listeners).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// `request_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The service an upstream cluster is for (`filter_metadata.istio.services[0]` of the cluster,
/// as Istio's translator and Strait's set it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Service {
    /// `reviews.default.svc.cluster.local`
    pub host: String,
    /// `reviews`
    pub name: String,
    pub namespace: String,
}

/// What a reporter knows about one request or connection, from which it derives the labels.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub reporter: Reporter,
    /// The proxy's own workload.
    pub local: &'a Workload,
    /// The proxy's own SPIFFE id, when the connection to the peer is mutual TLS with it.
    pub local_principal: Option<&'a str>,
    /// The peer's workload: the downstream's exchanged metadata (destination reporter), the
    /// upstream's exchanged metadata or endpoint metadata (source reporter).
    pub peer: Option<&'a Workload>,
    /// The peer's SPIFFE id from its certificate.
    pub peer_principal: Option<&'a str>,
    /// The upstream cluster's service.
    pub service: Option<&'a Service>,
    /// The request's Host (authority): Istio's fallback for `destination_service`.
    pub host: Option<&'a str>,
    pub protocol: Protocol,
}

/// The labels of a series but the response's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: Protocol,
    /// `mutual_tls`, `none` (server side) or `unknown` (client side, as Istio).
    pub connection_security_policy: &'static str,
}

fn or(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

fn opt(value: Option<&str>, default: &str) -> String {
    or(value.unwrap_or_default(), default)
}

impl EdgeLabels {
    /// The labels as Istio's stats filter derives them for `o.reporter`.
    pub fn derive(o: &Observed<'_>) -> EdgeLabels {
        let peer = o.peer;
        let field = |f: fn(&Workload) -> &str| peer.map(f).unwrap_or_default();
        // The peer's namespace: its certificate's, else its metadata's.
        let peer_namespace = o
            .peer_principal
            .and_then(principal_namespace)
            .unwrap_or(field(|w| &w.namespace));
        let local = o.local;
        match o.reporter {
            Reporter::Destination => {
                let canonical = or(&local.canonical_service, UNKNOWN);
                EdgeLabels {
                    reporter: Reporter::Destination,
                    source_workload: or(field(|w| &w.name), UNKNOWN),
                    source_workload_namespace: or(peer_namespace, UNKNOWN),
                    source_principal: opt(o.peer_principal, UNKNOWN),
                    source_app: or(field(|w| &w.app), UNKNOWN),
                    source_version: or(field(|w| &w.version), UNKNOWN),
                    source_canonical_service: or(field(|w| &w.canonical_service), UNKNOWN),
                    source_canonical_revision: or(field(|w| &w.canonical_revision), "latest"),
                    source_cluster: or(field(|w| &w.cluster), UNKNOWN),
                    destination_workload: or(&local.name, UNKNOWN),
                    destination_workload_namespace: or(&local.namespace, UNKNOWN),
                    destination_principal: opt(o.local_principal, UNKNOWN),
                    destination_app: or(&local.app, UNKNOWN),
                    destination_version: or(&local.version, UNKNOWN),
                    destination_service: o
                        .service
                        .map(|s| s.host.as_str())
                        .or(o.host)
                        .map_or_else(|| canonical.clone(), str::to_string),
                    destination_service_name: o
                        .service
                        .map(|s| s.name.as_str())
                        .or(o.host)
                        .map_or_else(|| canonical.clone(), str::to_string),
                    destination_service_namespace: or(&local.namespace, UNKNOWN),
                    destination_canonical_revision: or(&local.canonical_revision, "latest"),
                    destination_canonical_service: canonical,
                    destination_cluster: or(&local.cluster, UNKNOWN),
                    request_protocol: o.protocol,
                    connection_security_policy: if o.peer_principal.is_some()
                        && o.local_principal.is_some()
                    {
                        "mutual_tls"
                    } else {
                        "none"
                    },
                }
            }
            Reporter::Source => EdgeLabels {
                reporter: Reporter::Source,
                source_workload: or(&local.name, UNKNOWN),
                source_workload_namespace: or(&local.namespace, UNKNOWN),
                source_principal: opt(o.local_principal, UNKNOWN),
                source_app: or(&local.app, UNKNOWN),
                source_version: or(&local.version, UNKNOWN),
                source_canonical_service: or(&local.canonical_service, UNKNOWN),
                source_canonical_revision: or(&local.canonical_revision, "latest"),
                source_cluster: or(&local.cluster, UNKNOWN),
                destination_workload: or(field(|w| &w.name), UNKNOWN),
                destination_workload_namespace: or(peer_namespace, UNKNOWN),
                destination_principal: opt(o.peer_principal, UNKNOWN),
                destination_app: or(field(|w| &w.app), UNKNOWN),
                destination_version: or(field(|w| &w.version), UNKNOWN),
                destination_service: opt(o.service.map(|s| s.host.as_str()).or(o.host), UNKNOWN),
                destination_service_name: opt(
                    o.service.map(|s| s.name.as_str()).or(o.host),
                    UNKNOWN,
                ),
                destination_service_namespace: or(peer_namespace, UNKNOWN),
                destination_canonical_service: or(field(|w| &w.canonical_service), UNKNOWN),
                destination_canonical_revision: or(field(|w| &w.canonical_revision), "latest"),
                destination_cluster: or(field(|w| &w.cluster), UNKNOWN),
                request_protocol: o.protocol,
                connection_security_policy: UNKNOWN,
            },
        }
    }

    /// The labels of the overflow series: every label `overflow` but the reporter and the
    /// protocol.
    pub fn overflow(reporter: Reporter, protocol: Protocol) -> EdgeLabels {
        let o = || crate::registry::OVERFLOW.to_string();
        EdgeLabels {
            reporter,
            source_workload: o(),
            source_workload_namespace: o(),
            source_principal: o(),
            source_app: o(),
            source_version: o(),
            source_canonical_service: o(),
            source_canonical_revision: o(),
            source_cluster: o(),
            destination_workload: o(),
            destination_workload_namespace: o(),
            destination_principal: o(),
            destination_app: o(),
            destination_version: o(),
            destination_service: o(),
            destination_service_name: o(),
            destination_service_namespace: o(),
            destination_canonical_service: o(),
            destination_canonical_revision: o(),
            destination_cluster: o(),
            request_protocol: protocol,
            connection_security_policy: crate::registry::OVERFLOW,
        }
    }

    /// The labels in the Prometheus text format, in Istio's order, values escaped:
    /// `reporter="source",source_workload="...",...` (no braces, no trailing comma).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let pairs: [(&str, &str); 22] = [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &self.source_workload),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &self.source_app),
            ("source_version", &self.source_version),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_canonical_revision", &self.source_canonical_revision),
            ("source_cluster", &self.source_cluster),
            ("destination_workload", &self.destination_workload),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &self.destination_app),
            ("destination_version", &self.destination_version),
            ("destination_service", &self.destination_service),
            ("destination_service_name", &self.destination_service_name),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            (
                "destination_canonical_service",
                &self.destination_canonical_service,
            ),
            (
                "destination_canonical_revision",
                &self.destination_canonical_revision,
            ),
            ("destination_cluster", &self.destination_cluster),
            ("request_protocol", self.request_protocol.as_str()),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
        ];
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            label(&mut out, name, value);
        }
        out
    }
}

/// Appends `name="value"` with the value escaped as the Prometheus text format asks
/// (backslash, double quote and line feed).
pub fn label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn workload(name: &str, app: &str, version: &str) -> Workload {
        let labels: BTreeMap<String, String> = [("app", app), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Workload::from_labels(name, "default", &labels, "Kubernetes")
    }

    #[test]
    fn the_server_labels_the_destination_with_itself_and_the_source_with_its_peer() {
        let local = workload("productpage-v1", "productpage", "v1");
        let gateway = Workload::from_labels(
            "istio-ingressgateway",
            "istio-system",
            &[("istio".to_string(), "ingressgateway".to_string())].into(),
            "Kubernetes",
        );
        let service = Service {
            host: "productpage.default.svc.cluster.local".into(),
            name: "productpage".into(),
            namespace: "default".into(),
        };
        let l = EdgeLabels::derive(&Observed {
            reporter: Reporter::Destination,
            local: &local,
            local_principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            peer: Some(&gateway),
            peer_principal: Some(
                "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
            ),
            service: Some(&service),
            host: Some("productpage:9080"),
            protocol: Protocol::Http,
        });
        assert_eq!(l.source_workload, "istio-ingressgateway");
        assert_eq!(l.source_workload_namespace, "istio-system");
        assert_eq!(l.source_app, UNKNOWN);
        assert_eq!(l.source_canonical_service, "istio-ingressgateway");
        assert_eq!(l.source_canonical_revision, "latest");
        assert_eq!(l.destination_workload, "productpage-v1");
        assert_eq!(l.destination_app, "productpage");
        assert_eq!(l.destination_version, "v1");
        assert_eq!(
            l.destination_service,
            "productpage.default.svc.cluster.local"
        );
        assert_eq!(l.destination_service_name, "productpage");
        assert_eq!(l.destination_service_namespace, "default");
        assert_eq!(l.destination_canonical_revision, "v1");
        assert_eq!(l.destination_cluster, "Kubernetes");
        assert_eq!(l.connection_security_policy, "mutual_tls");
        // Without a peer certificate: plaintext, and a namespace from the metadata.
        let plain = EdgeLabels::derive(&Observed {
            peer_principal: None,
            service: None,
            host: Some("productpage:9080"),
            ..Observed {
                reporter: Reporter::Destination,
                local: &local,
                local_principal: None,
                peer: Some(&gateway),
                peer_principal: None,
                service: None,
                host: None,
                protocol: Protocol::Http,
            }
        });
        assert_eq!(plain.connection_security_policy, "none");
        assert_eq!(plain.source_principal, UNKNOWN);
        assert_eq!(plain.source_workload_namespace, "istio-system");
        assert_eq!(plain.destination_service, "productpage:9080");
        // No peer at all: unknown.
        let none = EdgeLabels::derive(&Observed {
            reporter: Reporter::Destination,
            local: &local,
            local_principal: None,
            peer: None,
            peer_principal: None,
            service: None,
            host: None,
            protocol: Protocol::Tcp,
        });
        assert_eq!(none.source_workload, UNKNOWN);
        assert_eq!(none.source_workload_namespace, UNKNOWN);
        assert_eq!(none.destination_service, "productpage");
    }

    #[test]
    fn the_client_labels_the_source_with_itself_and_the_destination_with_its_peer() {
        let local = workload("productpage-v1", "productpage", "v1");
        // From endpoint metadata: no app or version.
        let peer =
            Workload::from_endpoint_encoding("reviews-v2;default;reviews;v2;Kubernetes").unwrap();
        let service = Service {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
        };
        let l = EdgeLabels::derive(&Observed {
            reporter: Reporter::Source,
            local: &local,
            local_principal: None,
            peer: Some(&peer),
            peer_principal: None,
            service: Some(&service),
            host: Some("reviews:9080"),
            protocol: Protocol::Http,
        });
        assert_eq!(l.source_workload, "productpage-v1");
        assert_eq!(l.source_app, "productpage");
        assert_eq!(l.source_principal, UNKNOWN);
        assert_eq!(l.destination_workload, "reviews-v2");
        assert_eq!(l.destination_app, UNKNOWN);
        assert_eq!(l.destination_canonical_service, "reviews");
        assert_eq!(l.destination_canonical_revision, "v2");
        assert_eq!(l.destination_service, "reviews.default.svc.cluster.local");
        assert_eq!(l.destination_service_name, "reviews");
        assert_eq!(l.destination_service_namespace, "default");
        assert_eq!(l.connection_security_policy, UNKNOWN);
        // An unknown upstream (PassthroughCluster): the Host names the service.
        let out = EdgeLabels::derive(&Observed {
            peer: None,
            service: None,
            host: Some("example.com"),
            ..Observed {
                reporter: Reporter::Source,
                local: &local,
                local_principal: None,
                peer: None,
                peer_principal: None,
                service: None,
                host: None,
                protocol: Protocol::Http,
            }
        });
        assert_eq!(out.destination_service, "example.com");
        assert_eq!(out.destination_workload, UNKNOWN);
        assert_eq!(out.destination_canonical_revision, "latest");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        label(&mut out, "x", "a\"b\\c\nd");
        assert_eq!(out, r#"x="a\"b\\c\nd""#);
    }
}
