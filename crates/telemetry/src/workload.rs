//! Who a workload is, for telemetry: the fields Istio's metrics label a source or destination
//! with, derived from the workload's labels as Istio derives them, and the two ways peers learn
//! them from the mesh: the endpoint metadata the control plane sends (`filter_metadata.istio.
//! workload`, Istio's `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`) and the
//! metadata sidecars exchange in the `x-envoy-peer-metadata` header (a base64 protobuf
//! `Struct` with Istio's node metadata keys).

use std::collections::BTreeMap;

use base64::Engine;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;

/// The request and response header carrying a sidecar's workload metadata (Istio's).
pub const PEER_METADATA_HEADER: &str = "x-envoy-peer-metadata";
/// The request and response header carrying a sidecar's node id (Istio's).
pub const PEER_METADATA_ID_HEADER: &str = "x-envoy-peer-metadata-id";
/// Istio's labels for the canonical service and revision (set by its injector).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
/// The cluster id Istio uses when none is configured (`CLUSTER_ID`).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// The largest `x-envoy-peer-metadata` value read (base64); a larger one is ignored.
pub const MAX_PEER_METADATA: usize = 8 * 1024;

/// A workload as the metrics name it. Empty fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Workload {
    /// The workload name (a Deployment's name, `reviews-v1`; Istio's `WORKLOAD_NAME`).
    pub name: String,
    pub namespace: String,
    /// The `app` label.
    pub app: String,
    /// The `version` label.
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// The cluster id (Istio's `CLUSTER_ID`).
    pub cluster: String,
}

/// Why an `x-envoy-peer-metadata` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerMetadataError {
    #[error("x-envoy-peer-metadata is larger than {MAX_PEER_METADATA} bytes")]
    TooLarge,
    #[error("x-envoy-peer-metadata is not base64: {0}")]
    Base64(String),
    #[error("x-envoy-peer-metadata is not a protobuf Struct: {0}")]
    Protobuf(String),
}

impl Workload {
    /// A workload from its name, namespace, labels and cluster, as Istio derives the canonical
    /// service (`service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`,
    /// else the workload name) and revision (`service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`).
    pub fn from_labels(
        name: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        cluster: &str,
    ) -> Workload {
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            app: label("app").unwrap_or_default(),
            version: label("version").unwrap_or_default(),
            canonical_service: label(CANONICAL_NAME_LABEL)
                .or_else(|| label("app.kubernetes.io/name"))
                .or_else(|| label("app"))
                .unwrap_or_else(|| name.to_string()),
            canonical_revision: label(CANONICAL_REVISION_LABEL)
                .or_else(|| label("app.kubernetes.io/version"))
                .or_else(|| label("version"))
                .unwrap_or_else(|| "latest".to_string()),
            cluster: cluster.to_string(),
        }
    }

    /// Istio's endpoint encoding, `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`
    /// (the value of `filter_metadata.istio.workload` on an LbEndpoint).
    pub fn endpoint_encoding(&self) -> String {
        format!(
            "{};{};{};{};{}",
            self.name,
            self.namespace,
            self.canonical_service,
            self.canonical_revision,
            self.cluster
        )
    }

    /// Reads Istio's endpoint encoding (app and version are not in it). `None` when it has
    /// fewer than five parts, as Istio.
    pub fn from_endpoint_encoding(text: &str) -> Option<Workload> {
        let mut parts = text.split(';');
        let mut next = || parts.next().map(str::to_string);
        let w = Workload {
            name: next()?,
            namespace: next()?,
            canonical_service: next()?,
            canonical_revision: next()?,
            cluster: next()?,
            ..Workload::default()
        };
        Some(w)
    }

    /// The node metadata Istio's sidecars exchange about themselves: `NAME`, `NAMESPACE`,
    /// `WORKLOAD_NAME`, `CLUSTER_ID` and `LABELS` (`app`, `version` and the canonical labels).
    pub fn to_struct(&self) -> Struct {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let mut labels = BTreeMap::new();
        for (k, v) in [
            ("app", &self.app),
            ("version", &self.version),
            (CANONICAL_NAME_LABEL, &self.canonical_service),
            (CANONICAL_REVISION_LABEL, &self.canonical_revision),
        ] {
            if !v.is_empty() {
                labels.insert(k.to_string(), s(v));
            }
        }
        let mut fields = BTreeMap::new();
        fields.insert("NAME".to_string(), s(&self.name));
        fields.insert("WORKLOAD_NAME".to_string(), s(&self.name));
        fields.insert("NAMESPACE".to_string(), s(&self.namespace));
        fields.insert("CLUSTER_ID".to_string(), s(&self.cluster));
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: labels.into_iter().collect(),
                })),
            },
        );
        Struct {
            fields: fields.into_iter().collect(),
        }
    }

    /// Reads node metadata as [`Workload::to_struct`] writes it (and Istio's sidecars send it):
    /// the canonical service and revision from the labels, derived as
    /// [`Workload::from_labels`] does when missing.
    pub fn from_struct(s: &Struct) -> Workload {
        let text = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let labels: BTreeMap<String, String> =
            match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
                Some(Kind::StructValue(l)) => l
                    .fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect(),
                _ => BTreeMap::new(),
            };
        let name = match text("WORKLOAD_NAME") {
            n if n.is_empty() => text("NAME"),
            n => n,
        };
        Workload::from_labels(&name, &text("NAMESPACE"), &labels, &text("CLUSTER_ID"))
    }

    /// The `x-envoy-peer-metadata` value: [`Workload::to_struct`], protobuf, base64.
    pub fn peer_header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_struct().encode_to_vec())
    }

    /// Reads an `x-envoy-peer-metadata` value.
    pub fn from_peer_header(value: &[u8]) -> Result<Workload, PeerMetadataError> {
        if value.len() > MAX_PEER_METADATA {
            return Err(PeerMetadataError::TooLarge);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| PeerMetadataError::Base64(e.to_string()))?;
        let s = Struct::decode(bytes.as_slice())
            .map_err(|e| PeerMetadataError::Protobuf(e.to_string()))?;
        Ok(Workload::from_struct(&s))
    }
}

/// The namespace in a SPIFFE id (`spiffe://TD/ns/NS/sa/SA`), as Istio reads it for the peer's
/// namespace.
pub fn principal_namespace(principal: &str) -> Option<&str> {
    let rest = &principal[principal.find("/ns/")? + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_service_and_revision_are_derived_as_istio_does() {
        let w = Workload::from_labels(
            "reviews-v2",
            "default",
            &labels(&[("app", "reviews"), ("version", "v2")]),
            "Kubernetes",
        );
        assert_eq!(w.app, "reviews");
        assert_eq!(w.version, "v2");
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v2");
        let w = Workload::from_labels("db", "ns", &BTreeMap::new(), "c");
        assert_eq!((w.app.as_str(), w.version.as_str()), ("", ""));
        assert_eq!(w.canonical_service, "db");
        assert_eq!(w.canonical_revision, "latest");
        let w = Workload::from_labels(
            "x",
            "ns",
            &labels(&[
                ("app", "a"),
                ("app.kubernetes.io/name", "k8s-name"),
                (CANONICAL_REVISION_LABEL, "r7"),
                ("version", "v1"),
            ]),
            "c",
        );
        assert_eq!(w.canonical_service, "k8s-name");
        assert_eq!(w.canonical_revision, "r7");
        let w = Workload::from_labels(
            "x",
            "ns",
            &labels(&[(CANONICAL_NAME_LABEL, "canon"), ("app", "a")]),
            "c",
        );
        assert_eq!(w.canonical_service, "canon");
    }

    #[test]
    fn endpoint_encoding_round_trips_without_app_and_version() {
        let w = Workload::from_labels(
            "reviews-v1",
            "default",
            &labels(&[("app", "reviews"), ("version", "v1")]),
            "Kubernetes",
        );
        let text = w.endpoint_encoding();
        assert_eq!(text, "reviews-v1;default;reviews;v1;Kubernetes");
        let back = Workload::from_endpoint_encoding(&text).unwrap();
        assert_eq!(
            back,
            Workload {
                app: String::new(),
                version: String::new(),
                ..w
            }
        );
        assert_eq!(Workload::from_endpoint_encoding("a;b;c;d"), None);
    }

    #[test]
    fn peer_header_round_trips_and_refuses_garbage() {
        let w = Workload::from_labels(
            "productpage-v1",
            "default",
            &labels(&[("app", "productpage"), ("version", "v1")]),
            "Kubernetes",
        );
        let header = w.peer_header();
        assert_eq!(Workload::from_peer_header(header.as_bytes()), Ok(w));
        assert!(matches!(
            Workload::from_peer_header(b"not base64!"),
            Err(PeerMetadataError::Base64(_))
        ));
        assert!(matches!(
            Workload::from_peer_header(b"/////w=="),
            Err(PeerMetadataError::Protobuf(_))
        ));
        assert_eq!(
            Workload::from_peer_header(&vec![b'A'; MAX_PEER_METADATA + 4]),
            Err(PeerMetadataError::TooLarge)
        );
    }

    #[test]
    fn namespace_of_a_principal() {
        assert_eq!(
            principal_namespace("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
            Some("default")
        );
        assert_eq!(principal_namespace("spiffe://td/ns/x"), Some("x"));
        assert_eq!(principal_namespace("spiffe://td/sa/x"), None);
    }
}
