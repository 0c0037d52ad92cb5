//! Message codes (Istio's `IST0xxx` and Strait's own `STR0xxx`), levels and messages.
//!
//! Istio's codes, names and levels are those of Istio's `pkg/config/analysis/msg/messages.yaml`
//! (Apache-2.0); the texts follow its templates so that output reads like `istioctl analyze`.

use std::fmt;

use serde::Serialize;

use crate::object::{Object, Source};

/// How bad a message is. Ordered from the most to the least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        }
    }

    /// `Error`, `Warning` or `Info`, in any case.
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warning" | "warn" => Some(Level::Warning),
            "info" => Some(Level::Info),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message type: its code, name, level and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
    pub meaning: &'static str,
}

macro_rules! codes {
    ($($id:ident = $code:literal, $name:literal, $level:ident, $meaning:literal;)*) => {
        $(pub const $id: Code = Code { code: $code, name: $name, level: Level::$level, meaning: $meaning };)*
        /// Every code Strait can report, in code order.
        pub const ALL: &[Code] = &[$($id),*];
    };
}

codes! {
    DEPRECATED = "IST0002", "Deprecated", Warning,
        "A deprecated field, kind or telemetry provider is used.";
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101", "ReferencedResourceNotFound", Error,
        "A resource references another (gateway, host, subset, selector, credential, namespace) that does not exist.";
    NAMESPACE_NOT_INJECTED = "IST0102", "NamespaceNotInjected", Info,
        "A namespace has no sidecar injection label.";
    POD_MISSING_PROXY = "IST0103", "PodMissingProxy", Warning,
        "A pod in an injected namespace has no istio-proxy container.";
    SCHEMA_VALIDATION_ERROR = "IST0106", "SchemaValidationError", Error,
        "The resource fails validation (Strait's rules, which follow Istio's webhook).";
    MISPLACED_ANNOTATION = "IST0107", "MisplacedAnnotation", Warning,
        "An Istio annotation is on a kind it does not apply to.";
    UNKNOWN_ANNOTATION = "IST0108", "UnknownAnnotation", Warning,
        "An annotation in an istio.io domain that Istio does not define.";
    CONFLICTING_MESH_GATEWAY_VS_HOSTS = "IST0109", "ConflictingMeshGatewayVirtualServiceHosts", Error,
        "Several VirtualServices bound to the mesh gateway define the same host.";
    CONFLICTING_SIDECAR_SELECTORS = "IST0110", "ConflictingSidecarWorkloadSelectors", Error,
        "Several Sidecars select the same workload.";
    MULTIPLE_SIDECARS_WITHOUT_SELECTOR = "IST0111", "MultipleSidecarsWithoutWorkloadSelectors", Error,
        "Several Sidecars in one namespace have no workload selector.";
    VS_DESTINATION_PORT_REQUIRED = "IST0112", "VirtualServiceDestinationPortSelectorRequired", Error,
        "A route goes to a service with several ports without naming one.";
    DEPLOYMENT_MULTIPLE_SERVICES = "IST0116", "DeploymentAssociatedToMultipleServices", Warning,
        "A deployment's pods are in several services that use one port with different protocols.";
    PORT_NAME_CONVENTION = "IST0118", "PortNameIsNotUnderNamingConvention", Info,
        "A Service port name does not tell Istio its protocol (`http-...`, `grpc`, `tcp-...`).";
    NAMESPACE_MULTIPLE_INJECTION_LABELS = "IST0123", "NamespaceMultipleInjectionLabels", Warning,
        "A namespace has several injection labels (istio-injection, istio.io/rev, dataplane mode).";
    INVALID_ANNOTATION = "IST0125", "InvalidAnnotation", Warning,
        "An Istio annotation's value is invalid.";
    UNKNOWN_MESH_NETWORKS_REGISTRY = "IST0126", "UnknownMeshNetworksServiceRegistry", Error,
        "MeshNetworks names a service registry that does not exist.";
    NO_MATCHING_WORKLOADS = "IST0127", "NoMatchingWorkloadsFound", Warning,
        "An AuthorizationPolicy selects no workload.";
    NO_SERVER_CERT_VERIFICATION_DR = "IST0128", "NoServerCertificateVerificationDestinationLevel", Warning,
        "A DestinationRule originates TLS without caCertificates to verify the server.";
    NO_SERVER_CERT_VERIFICATION_PORT = "IST0129", "NoServerCertificateVerificationPortLevel", Warning,
        "A DestinationRule port originates TLS without caCertificates to verify the server.";
    VS_UNREACHABLE_RULE = "IST0130", "VirtualServiceUnreachableRule", Warning,
        "A VirtualService rule can never be used.";
    VS_INEFFECTIVE_MATCH = "IST0131", "VirtualServiceIneffectiveMatch", Info,
        "A VirtualService match repeats or is covered by an earlier one.";
    VS_HOST_NOT_IN_GATEWAY = "IST0132", "VirtualServiceHostNotFoundInGateway", Warning,
        "A VirtualService's hosts are not among its gateway's hosts.";
    SCHEMA_WARNING = "IST0133", "SchemaWarning", Warning,
        "Validation warns about the resource.";
    SERVICE_ENTRY_ADDRESSES_REQUIRED = "IST0134", "ServiceEntryAddressesRequired", Warning,
        "A TCP (or protocol-less) ServiceEntry port without addresses.";
    DEPRECATED_ANNOTATION = "IST0135", "DeprecatedAnnotation", Info,
        "A deprecated Istio annotation.";
    ALPHA_ANNOTATION = "IST0136", "AlphaAnnotation", Info,
        "An alpha-phase Istio annotation (reported only when the alpha analyzer runs).";
    DEPLOYMENT_CONFLICTING_PORTS = "IST0137", "DeploymentConflictingPorts", Warning,
        "Services of one deployment use one targetPort with different ports.";
    GATEWAY_DUPLICATE_CERTIFICATE = "IST0138", "GatewayDuplicateCertificate", Warning,
        "Gateways on one workload share a certificate (HTTP/2 connection reuse gives 404s).";
    INVALID_WEBHOOK = "IST0139", "InvalidWebhook", Error,
        "Istio's injection webhooks overlap or point at a missing service.";
    INGRESS_ROUTE_RULES_NOT_AFFECTED = "IST0140", "IngressRouteRulesNotAffected", Warning,
        "A gateway route without subset bypasses the subsets another VirtualService defines.";
    INVALID_APPLICATION_UID = "IST0144", "InvalidApplicationUID", Warning,
        "An application runs as UID 1337, the sidecar's.";
    CONFLICTING_GATEWAYS = "IST0145", "ConflictingGateways", Error,
        "Gateways on one workload and port define the same host.";
    IMAGE_AUTO_WITHOUT_INJECTION_WARNING = "IST0146", "ImageAutoWithoutInjectionWarning", Warning,
        "A Deployment uses `image: auto` but no injection webhook selects it.";
    IMAGE_AUTO_WITHOUT_INJECTION_ERROR = "IST0147", "ImageAutoWithoutInjectionError", Error,
        "A Pod uses `image: auto`, which only injection can replace.";
    NAMESPACE_INJECTION_ENABLED_BY_DEFAULT = "IST0148", "NamespaceInjectionEnabledByDefault", Info,
        "Injection is on for unlabelled namespaces (enableNamespacesByDefault).";
    JWT_CLAIM_ROUTING_WITHOUT_REQUEST_AUTHN = "IST0149", "JwtClaimBasedRoutingWithoutRequestAuthN", Error,
        "A route matches JWT claims but no RequestAuthentication applies to the gateway.";
    EXTERNAL_NAME_INVALID_PORT_NAME = "IST0150", "ExternalNameServiceTypeInvalidPortName", Warning,
        "An ExternalName Service port name that does not give its protocol.";
    ENVOY_FILTER_RELATIVE_OPERATION = "IST0151", "EnvoyFilterUsesRelativeOperation", Warning,
        "An EnvoyFilter without priority uses a relative patch operation.";
    ENVOY_FILTER_REPLACE_INCORRECTLY = "IST0152", "EnvoyFilterUsesReplaceOperationIncorrectly", Error,
        "An EnvoyFilter uses REPLACE where it has no effect.";
    ENVOY_FILTER_ADD_INCORRECTLY = "IST0153", "EnvoyFilterUsesAddOperationIncorrectly", Error,
        "An EnvoyFilter uses ADD on route configuration, where it is ignored.";
    ENVOY_FILTER_REMOVE_INCORRECTLY = "IST0154", "EnvoyFilterUsesRemoveOperationIncorrectly", Error,
        "An EnvoyFilter uses REMOVE on route configuration, where it is ignored.";
    ENVOY_FILTER_RELATIVE_WITH_PROXY_VERSION = "IST0155", "EnvoyFilterUsesRelativeOperationWithProxyVersion", Warning,
        "An EnvoyFilter without priority uses a relative operation and a proxyVersion match.";
    INVALID_TELEMETRY_PROVIDER = "IST0157", "InvalidTelemetryProvider", Warning,
        "A Telemetry access-logging entry names no provider and the mesh has no default.";
    PODS_PROXY_IMAGE_MISMATCH = "IST0158", "PodsIstioProxyImageMismatchInNamespace", Warning,
        "Pods run a proxy image other than the injector's.";
    CONFLICTING_TELEMETRY_SELECTORS = "IST0159", "ConflictingTelemetryWorkloadSelectors", Error,
        "Several Telemetries select the same workload.";
    MULTIPLE_TELEMETRIES_WITHOUT_SELECTOR = "IST0160", "MultipleTelemetriesWithoutWorkloadSelectors", Error,
        "Several Telemetries in one namespace have no selector.";
    INVALID_GATEWAY_CREDENTIAL = "IST0161", "InvalidGatewayCredential", Error,
        "A Gateway's credentialName Secret has no valid, unexpired certificate.";
    GATEWAY_PORT_NOT_ON_SERVICE = "IST0162", "GatewayPortNotDefinedOnService", Warning,
        "A Gateway listens on a port the gateway workload's Service does not expose.";
    INVALID_EXTERNAL_CONTROL_PLANE_CONFIG = "IST0163", "InvalidExternalControlPlaneConfig", Warning,
        "An Istio webhook has neither a URL nor a service.";
    EXTERNAL_CONTROL_PLANE_ADDRESS_IS_IP = "IST0164", "ExternalControlPlaneAddressIsNotAHostname", Info,
        "An Istio webhook URL uses an IP address.";
    REFERENCED_INTERNAL_GATEWAY = "IST0165", "ReferencedInternalGateway", Warning,
        "A VirtualService names a gateway generated for a Gateway API Gateway.";
    INEFFECTIVE_SELECTOR = "IST0166", "IneffectiveSelector", Warning,
        "A policy uses a selector on a Gateway API gateway's pods instead of targetRef.";
    INEFFECTIVE_POLICY = "IST0167", "IneffectivePolicy", Warning,
        "A Sidecar applies to ambient-mode workloads, which have no sidecar.";
    NEGATIVE_CONDITION_STATUS = "IST0171", "NegativeConditionStatus", Warning,
        "A resource's status carries a negative condition.";
    DR_SUBSET_NOT_SELECT_PODS = "IST0173", "DestinationRuleSubsetNotSelectPods", Error,
        "A DestinationRule subset's labels match no pod.";
    UNKNOWN_DR_HOST = "IST0174", "UnknownDestinationRuleHost", Warning,
        "A DestinationRule's host matches no Service or ServiceEntry.";
    JWKS_URI_FETCH_UNRESTRICTED = "IST0175", "JwksUriFetchUnrestricted", Warning,
        "RequestAuthentications exist but istiod does not restrict JWKS fetches.";
    GATEWAY_API_CRD_TOO_OLD = "IST0176", "GatewayAPICRDVersionBelowMinimum", Warning,
        "A Gateway API CRD is older than Istio requires.";
    CONFLICTING_SERVICE_ENTRY_PROTOCOL = "IST0177", "ConflictingServiceEntryProtocol", Warning,
        "ServiceEntries define one host and port with different protocols.";
    DR_TLS_CONFLICTS_WITH_PEER_AUTHN = "STR0001", "DestinationRuleTLSConflictsWithPeerAuthentication", Error,
        "A DestinationRule's TLS mode contradicts the PeerAuthentication of its destination (plaintext to a STRICT workload, or Istio mTLS to a DISABLE one): requests fail with 503.";
    WORKLOAD_NOT_COVERED_BY_ALLOW_POLICY = "STR0002", "WorkloadNotCoveredByAllowPolicy", Warning,
        "A namespace has ALLOW AuthorizationPolicies for some workloads but none for this one, which therefore accepts every request.";
    VS_ROUTE_SHADOWED = "STR0003", "VirtualServiceRouteShadowed", Warning,
        "An HTTP route can never match because an earlier route matches every request.";
    DR_SUBSET_SELECTS_NO_ENDPOINT = "STR0004", "DestinationRuleSubsetSelectsNoEndpoint", Warning,
        "A subset's labels, with its service's selector, match none of the service's endpoints (pods, WorkloadEntries, ServiceEntry endpoints).";
    SIDECAR_EGRESS_HOST_NOT_FOUND = "STR0005", "SidecarEgressHostNotFound", Warning,
        "A Sidecar egress host names a namespace or service that does not exist.";
    AUTHZ_PRINCIPAL_NOT_FOUND = "STR0006", "AuthorizationPolicyPrincipalNotFound", Warning,
        "An AuthorizationPolicy principal names a service account that does not exist.";
    PEER_AUTHN_SELECTS_NO_WORKLOAD = "STR0007", "PeerAuthenticationSelectsNoWorkload", Warning,
        "A PeerAuthentication's selector matches no workload in its namespace.";
}

/// A code by its `IST0101`/`STR0001` form.
pub fn lookup(code: &str) -> Option<Code> {
    ALL.iter()
        .copied()
        .find(|c| c.code.eq_ignore_ascii_case(code))
}

/// What a message is about: a resource as Istio names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Subject {
    pub fn of(o: &Object) -> Subject {
        Subject {
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub code: Code,
    pub subject: Subject,
    pub text: String,
    /// How to fix it, when there is more to say than the message.
    pub hint: Option<String>,
    pub source: Option<Source>,
}

impl Message {
    pub fn new(code: Code, on: &Object, text: impl Into<String>) -> Message {
        Message {
            code,
            subject: Subject::of(on),
            text: text.into(),
            hint: None,
            source: on.source.clone(),
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Message {
        self.hint = Some(hint.into());
        self
    }

    pub fn level(&self) -> Level {
        self.code.level
    }

    /// Istio's documentation page for an `IST` code.
    pub fn documentation_url(&self) -> Option<String> {
        self.code.code.starts_with("IST").then(|| {
            format!(
                "https://istio.io/latest/docs/reference/config/analysis/{}/",
                self.code.code.to_ascii_lowercase()
            )
        })
    }
}

/// `Error [IST0101] (VirtualService default/reviews) Referenced host not found: "reviews"`.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] ({}) {}",
            self.code.level, self.code.code, self.subject, self.text
        )
    }
}

/// Go's `%q` for a string: double-quoted with escapes.
pub fn q(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `%v` for a list of strings: `[a b c]`.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        for w in ALL.windows(2) {
            assert!(w[0].code < w[1].code, "{} / {}", w[0].code, w[1].code);
        }
        assert_eq!(lookup("ist0101"), Some(REFERENCED_RESOURCE_NOT_FOUND));
        assert_eq!(list(&["a", "b"]), "[a b]");
    }

    /// docs/analyze.md has a row for every code, with its name and level.
    #[test]
    fn every_code_is_documented() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/analyze.md"
        ))
        .expect("docs/analyze.md");
        for c in ALL {
            let row = format!("| {} | {} | {} |", c.code, c.name, c.level);
            assert!(doc.contains(&row), "docs/analyze.md lacks {row}");
        }
    }
}
