//! The kinds Strait knows, and a resource of any of them.

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validate::common::{is_dns1123_label, is_dns1123_subdomain, validate_labels};
use crate::{FieldPath, ObjectMeta, Report, core, networking, policy, security, telemetry};

/// One resource kind: its API group, the versions served, its REST plural and short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    WorkloadGroup,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Telemetry,
    LocalRateLimit,
    Service,
    ServiceAccount,
    Namespace,
    Deployment,
    Secret,
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];
const TELEMETRY: &[&str] = &["v1", "v1alpha1"];
const CORE: &[&str] = &["v1"];
const STRAIT_POLICY: &[&str] = &["v1"];

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
        Kind::LocalRateLimit,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::Namespace,
        Kind::Deployment,
        Kind::Secret,
    ];

    /// (kind, group, versions served, plural, short names)
    fn info(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static str,
        &'static [&'static str],
    ) {
        match self {
            Kind::VirtualService => (
                "VirtualService",
                "networking.istio.io",
                NETWORKING,
                "virtualservices",
                &["vs"],
            ),
            Kind::DestinationRule => (
                "DestinationRule",
                "networking.istio.io",
                NETWORKING,
                "destinationrules",
                &["dr"],
            ),
            Kind::Gateway => (
                "Gateway",
                "networking.istio.io",
                NETWORKING,
                "gateways",
                &["gw"],
            ),
            Kind::ServiceEntry => (
                "ServiceEntry",
                "networking.istio.io",
                NETWORKING,
                "serviceentries",
                &["se"],
            ),
            Kind::Sidecar => (
                "Sidecar",
                "networking.istio.io",
                NETWORKING,
                "sidecars",
                &[],
            ),
            Kind::WorkloadEntry => (
                "WorkloadEntry",
                "networking.istio.io",
                NETWORKING,
                "workloadentries",
                &["we"],
            ),
            Kind::WorkloadGroup => (
                "WorkloadGroup",
                "networking.istio.io",
                NETWORKING,
                "workloadgroups",
                &["wg"],
            ),
            Kind::PeerAuthentication => (
                "PeerAuthentication",
                "security.istio.io",
                SECURITY,
                "peerauthentications",
                &["pa"],
            ),
            Kind::AuthorizationPolicy => (
                "AuthorizationPolicy",
                "security.istio.io",
                SECURITY,
                "authorizationpolicies",
                &["ap"],
            ),
            Kind::RequestAuthentication => (
                "RequestAuthentication",
                "security.istio.io",
                SECURITY,
                "requestauthentications",
                &["ra"],
            ),
            Kind::Telemetry => (
                "Telemetry",
                "telemetry.istio.io",
                TELEMETRY,
                "telemetries",
                &[],
            ),
            Kind::LocalRateLimit => (
                "LocalRateLimit",
                "policy.strait.dev",
                STRAIT_POLICY,
                "localratelimits",
                &["lrl"],
            ),
            Kind::Service => ("Service", "", CORE, "services", &["svc"]),
            Kind::ServiceAccount => ("ServiceAccount", "", CORE, "serviceaccounts", &["sa"]),
            Kind::Namespace => ("Namespace", "", CORE, "namespaces", &["ns"]),
            Kind::Deployment => ("Deployment", "apps", CORE, "deployments", &["deploy"]),
            Kind::Secret => ("Secret", "", CORE, "secrets", &[]),
        }
    }

    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// The API group; empty for Kubernetes' core group.
    pub fn group(self) -> &'static str {
        self.info().1
    }

    pub fn versions(self) -> &'static [&'static str] {
        self.info().2
    }

    /// The version the API stores and returns.
    pub fn preferred_version(self) -> &'static str {
        self.info().2[0]
    }

    pub fn plural(self) -> &'static str {
        self.info().3
    }

    pub fn short_names(self) -> &'static [&'static str] {
        self.info().4
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// `apiVersion` for the preferred version: `networking.istio.io/v1`, `v1`, `apps/v1`.
    pub fn api_version(self) -> String {
        api_version(self.group(), self.preferred_version())
    }

    /// `virtualservice.networking.istio.io`, `service`: the name kubectl prints.
    pub fn qualified_name(self) -> String {
        let lower = self.name().to_ascii_lowercase();
        if self.group().is_empty() {
            lower
        } else {
            format!("{lower}.{}", self.group())
        }
    }

    /// The REST path of the collection: `/apis/{group}/{version}/namespaces/{ns}/{plural}`.
    pub fn collection_path(self, namespace: Option<&str>) -> String {
        let base = if self.group().is_empty() {
            format!("/api/{}", self.preferred_version())
        } else {
            format!("/apis/{}/{}", self.group(), self.preferred_version())
        };
        match namespace {
            Some(ns) if self.namespaced() => format!("{base}/namespaces/{ns}/{}", self.plural()),
            _ => format!("{base}/{}", self.plural()),
        }
    }

    /// Finds a kind by its name, plural, short name or qualified name, in any case:
    /// `VirtualService`, `virtualservices`, `vs`, `virtualservice.networking.istio.io`.
    pub fn lookup(word: &str) -> Option<Kind> {
        let w = word.to_ascii_lowercase();
        let w = w.split_once('.').map_or(w.as_str(), |(k, _)| k);
        Kind::ALL.into_iter().find(|k| {
            k.name().eq_ignore_ascii_case(w) || k.plural() == w || k.short_names().contains(&w)
        })
    }

    /// The kind for an `apiVersion` and `kind`, or why there is none.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Kind, TypeError> {
        let (group, version) = split_api_version(api_version);
        if let Some(k) = Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.group() == group)
        {
            if k.versions().contains(&version) {
                return Ok(k);
            }
            return Err(TypeError::Version {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
                served: k.versions().iter().map(|v| api_version_of(k, v)).collect(),
            });
        }
        if is_known_unsupported(group, kind) {
            return Err(TypeError::Unsupported {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
            });
        }
        Err(TypeError::Unknown {
            kind: kind.to_string(),
            api_version: api_version.to_string(),
        })
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn api_version_of(k: Kind, version: &str) -> String {
    api_version(k.group(), version)
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// Kinds that Kubernetes or Istio define and users' YAML often holds, but that Strait does not
/// handle (yet). They are skipped with a warning rather than refused as unknown.
fn is_known_unsupported(group: &str, kind: &str) -> bool {
    match group {
        "" => matches!(
            kind,
            "ConfigMap"
                | "Pod"
                | "Endpoints"
                | "PersistentVolumeClaim"
                | "LimitRange"
                | "ResourceQuota"
        ),
        "apps" => matches!(kind, "StatefulSet" | "DaemonSet" | "ReplicaSet"),
        "networking.istio.io" => matches!(kind, "EnvoyFilter" | "ProxyConfig"),
        "extensions.istio.io" => kind == "WasmPlugin",
        "gateway.networking.k8s.io" | "gateway.networking.x-k8s.io" => true,
        "networking.k8s.io" => matches!(kind, "Ingress" | "IngressClass" | "NetworkPolicy"),
        "autoscaling" | "policy" | "batch" | "rbac.authorization.k8s.io" => true,
        g => g.starts_with("cert-manager.io") || g.starts_with("certmanager.k8s.io"),
    }
}

/// Why an `apiVersion`/`kind` pair names no kind Strait handles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error(
        "unknown kind {kind:?} in apiVersion {api_version:?}: Strait handles {}",
        known_kinds()
    )]
    Unknown { kind: String, api_version: String },
    #[error("{kind} is not served at apiVersion {api_version:?}: use one of {served:?}")]
    Version {
        kind: String,
        api_version: String,
        served: Vec<String>,
    },
    #[error("{kind} ({api_version}) is not supported by Strait yet; the document is skipped")]
    Unsupported { kind: String, api_version: String },
}

fn known_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|k| format!("{} ({})", k.name(), k.api_version()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The typed body of a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(networking::virtual_service::VirtualService),
    DestinationRule(networking::destination_rule::DestinationRule),
    Gateway(networking::gateway::Gateway),
    ServiceEntry(networking::service_entry::ServiceEntry),
    Sidecar(networking::sidecar::Sidecar),
    WorkloadEntry(networking::workload::WorkloadEntry),
    WorkloadGroup(networking::workload::WorkloadGroup),
    PeerAuthentication(security::peer_authentication::PeerAuthentication),
    AuthorizationPolicy(security::authorization_policy::AuthorizationPolicy),
    RequestAuthentication(security::request_authentication::RequestAuthentication),
    Telemetry(telemetry::Telemetry),
    LocalRateLimit(policy::LocalRateLimit),
    Service(core::service::ServiceSpec),
    ServiceAccount(core::ServiceAccount),
    Namespace(core::NamespaceSpec),
    Deployment(core::deployment::DeploymentSpec),
    /// A Secret's data, decoded (its `Debug` shows keys and sizes, never values).
    Secret(core::secret::Secret),
}

/// A resource of a kind Strait handles: typed, and as it was written.
#[derive(Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    /// The whole object as it was written (the store keeps this).
    pub raw: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<T> {
    #[expect(dead_code)]
    api_version: String,
    #[expect(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    spec: Option<T>,
    #[serde(default)]
    #[expect(dead_code)]
    status: Option<Value>,
}

impl fmt::Debug for Resource {
    /// As derived, except that a Secret's object as written (its data) is left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Resource");
        d.field("kind", &self.kind)
            .field("api_version", &self.api_version)
            .field("metadata", &self.metadata)
            .field("spec", &self.spec);
        if self.kind == Kind::Secret {
            d.field("raw", &"<a Secret's data is not shown>");
        } else {
            d.field("raw", &self.raw);
        }
        d.finish()
    }
}

/// A type error in a document, with the path of the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

fn typed<T: DeserializeOwned + Default>(raw: &Value) -> Result<(ObjectMeta, T), FieldError> {
    let env: Envelope<T> = from_value(raw)?;
    Ok((env.metadata, env.spec.unwrap_or_default()))
}

/// Deserializes `raw`, reporting the path of the first field that does not fit.
pub(crate) fn from_value<T: DeserializeOwned>(raw: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

impl Resource {
    /// Types a parsed object of a known kind.
    pub fn from_value(kind: Kind, raw: Value) -> Result<Resource, FieldError> {
        let api_version = raw
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (metadata, spec) = match kind {
            Kind::VirtualService => typed(&raw).map(|(m, s)| (m, Spec::VirtualService(s)))?,
            Kind::DestinationRule => typed(&raw).map(|(m, s)| (m, Spec::DestinationRule(s)))?,
            Kind::Gateway => typed(&raw).map(|(m, s)| (m, Spec::Gateway(s)))?,
            Kind::ServiceEntry => typed(&raw).map(|(m, s)| (m, Spec::ServiceEntry(s)))?,
            Kind::Sidecar => typed(&raw).map(|(m, s)| (m, Spec::Sidecar(s)))?,
            Kind::WorkloadEntry => typed(&raw).map(|(m, s)| (m, Spec::WorkloadEntry(s)))?,
            Kind::WorkloadGroup => typed(&raw).map(|(m, s)| (m, Spec::WorkloadGroup(s)))?,
            Kind::PeerAuthentication => {
                typed(&raw).map(|(m, s)| (m, Spec::PeerAuthentication(s)))?
            }
            Kind::AuthorizationPolicy => {
                typed(&raw).map(|(m, s)| (m, Spec::AuthorizationPolicy(s)))?
            }
            Kind::RequestAuthentication => {
                typed(&raw).map(|(m, s)| (m, Spec::RequestAuthentication(s)))?
            }
            Kind::Telemetry => typed(&raw).map(|(m, s)| (m, Spec::Telemetry(s)))?,
            Kind::LocalRateLimit => typed(&raw).map(|(m, s)| (m, Spec::LocalRateLimit(s)))?,
            Kind::Service => typed(&raw).map(|(m, s)| (m, Spec::Service(s)))?,
            Kind::Namespace => typed(&raw).map(|(m, s)| (m, Spec::Namespace(s)))?,
            Kind::Deployment => typed(&raw).map(|(m, s)| (m, Spec::Deployment(s)))?,
            Kind::ServiceAccount => {
                let obj: core::ServiceAccountObject = from_value(&raw)?;
                (obj.metadata.clone(), Spec::ServiceAccount(obj.into_spec()))
            }
            Kind::Secret => {
                let obj: core::secret::SecretObject = from_value(&raw)?;
                (obj.metadata.clone(), Spec::Secret(obj.into_spec()))
            }
        };
        Ok(Resource {
            kind,
            api_version,
            metadata,
            spec,
            raw,
        })
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// Checks the resource on its own, as Istio's validating webhook does.
    pub fn validate(&self) -> Report {
        let mut report = Report::default();
        let meta = FieldPath::root("metadata");
        if self.metadata.name.is_empty() {
            report.error(&meta.field("name"), "name is required: set metadata.name");
        } else if !is_dns1123_subdomain(&self.metadata.name) {
            report.error(
                &meta.field("name"),
                format!(
                    "invalid name {:?}: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (at most 253)",
                    self.metadata.name
                ),
            );
        }
        if let Some(ns) = &self.metadata.namespace {
            if !self.kind.namespaced() {
                report.error(
                    &meta.field("namespace"),
                    format!("{} is not namespaced: remove metadata.namespace", self.kind),
                );
            } else if !is_dns1123_label(ns) || ns.chars().any(|c| c.is_ascii_uppercase()) {
                report.error(
                    &meta.field("namespace"),
                    format!(
                        "invalid namespace {ns:?}: lower-case letters, digits and '-' (at most 63)"
                    ),
                );
            }
        }
        report.check(
            &meta.field("labels"),
            validate_labels(&self.metadata.labels),
        );
        let at = FieldPath::root("spec");
        let m = &self.metadata;
        let r = &mut report;
        match &self.spec {
            Spec::VirtualService(s) => networking::virtual_service::validate(s, m, &at, r),
            Spec::DestinationRule(s) => networking::destination_rule::validate(s, m, &at, r),
            Spec::Gateway(s) => networking::gateway::validate(s, m, &at, r),
            Spec::ServiceEntry(s) => networking::service_entry::validate(s, m, &at, r),
            Spec::Sidecar(s) => networking::sidecar::validate(s, m, &at, r),
            Spec::WorkloadEntry(s) => networking::workload::validate_entry(s, m, &at, r),
            Spec::WorkloadGroup(s) => networking::workload::validate_group(s, m, &at, r),
            Spec::PeerAuthentication(s) => security::peer_authentication::validate(s, m, &at, r),
            Spec::AuthorizationPolicy(s) => security::authorization_policy::validate(s, m, &at, r),
            Spec::RequestAuthentication(s) => {
                security::request_authentication::validate(s, m, &at, r)
            }
            Spec::Telemetry(s) => telemetry::validate(s, m, &at, r),
            Spec::LocalRateLimit(s) => policy::validate(s, m, &at, r),
            Spec::Service(s) => core::service::validate(s, m, &at, r),
            Spec::ServiceAccount(_) | Spec::Namespace(_) => {}
            Spec::Deployment(s) => core::deployment::validate(s, m, &at, r),
            Spec::Secret(s) => core::secret::validate(s, m, r),
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_every_name() {
        assert_eq!(Kind::lookup("vs"), Some(Kind::VirtualService));
        assert_eq!(Kind::lookup("VirtualServices"), Some(Kind::VirtualService));
        assert_eq!(
            Kind::lookup("virtualservice.networking.istio.io"),
            Some(Kind::VirtualService)
        );
        assert_eq!(Kind::lookup("sidecar"), Some(Kind::Sidecar));
        assert_eq!(Kind::lookup("svc"), Some(Kind::Service));
        assert_eq!(Kind::lookup("nope"), None);
        assert_eq!(
            Kind::VirtualService.collection_path(Some("default")),
            "/apis/networking.istio.io/v1/namespaces/default/virtualservices"
        );
        assert_eq!(
            Kind::Service.collection_path(Some("x")),
            "/api/v1/namespaces/x/services"
        );
        assert_eq!(
            Kind::Namespace.collection_path(Some("x")),
            "/api/v1/namespaces"
        );
    }

    #[test]
    fn api_versions() {
        assert_eq!(
            Kind::from_type("networking.istio.io/v1alpha3", "VirtualService"),
            Ok(Kind::VirtualService)
        );
        assert_eq!(
            Kind::from_type("apps/v1", "Deployment"),
            Ok(Kind::Deployment)
        );
        assert!(matches!(
            Kind::from_type("networking.istio.io/v2", "VirtualService"),
            Err(TypeError::Version { .. })
        ));
        assert!(matches!(
            Kind::from_type("networking.istio.io/v1", "VirtualServis"),
            Err(TypeError::Unknown { .. })
        ));
        assert!(matches!(
            Kind::from_type("gateway.networking.k8s.io/v1", "HTTPRoute"),
            Err(TypeError::Unsupported { .. })
        ));
    }
}
