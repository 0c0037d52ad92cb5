//! The analyzers, each under Istio's name.

use crate::Analyzer;

pub mod annotations;
pub mod deployment;
pub mod destinationrule;
pub mod envoyfilter;
pub mod gateway;
pub mod injection;
pub mod kube;
pub mod policy;
pub mod schema;
pub mod service;
pub mod serviceentry;
pub mod sidecar;
pub mod strait;
pub mod telemetry;
pub mod virtualservice;

pub(crate) const NET: &str = "networking.istio.io";
pub(crate) const SEC: &str = "security.istio.io";

/// Declares an analyzer: a unit struct with Istio's name and its codes; `workloads` marks one
/// that needs workloads, `optional` one a plain run leaves out. The struct's `run` does the work.
macro_rules! analyzer {
    ($ty:ident, $name:literal, [$($code:expr),* $(,)?]) => {
        analyzer!(@impl $ty, $name, [$($code),*], false, false);
    };
    ($ty:ident, $name:literal, [$($code:expr),* $(,)?], workloads) => {
        analyzer!(@impl $ty, $name, [$($code),*], true, false);
    };
    ($ty:ident, $name:literal, [$($code:expr),* $(,)?], optional) => {
        analyzer!(@impl $ty, $name, [$($code),*], false, true);
    };
    (@impl $ty:ident, $name:literal, [$($code:expr),*], $workloads:expr, $optional:expr) => {
        #[doc = concat!("Istio's `", $name, "`.")]
        pub struct $ty;
        impl crate::Analyzer for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn codes(&self) -> &'static [crate::message::Code] {
                const CODES: &[crate::message::Code] = &[$($code),*];
                CODES
            }
            fn needs_workloads(&self) -> bool {
                $workloads
            }
            fn default_on(&self) -> bool {
                !$optional
            }
            fn analyze(&self, ctx: &mut crate::context::Context<'_>) {
                self.run(ctx)
            }
        }
    };
}
pub(crate) use analyzer;

/// Every analyzer, Istio's first (in `istioctl`'s order), then Strait's own.
pub fn all() -> Vec<&'static dyn Analyzer> {
    vec![
        &annotations::K8sAnalyzer,
        &annotations::AlphaAnalyzer,
        &policy::AuthorizationPoliciesAnalyzer,
        &policy::BlockedCidrsAnalyzer,
        &deployment::ServiceAssociationAnalyzer,
        &deployment::ApplicationUidAnalyzer,
        &annotations::DeprecationAnalyzer,
        &kube::ExternalControlPlaneAnalyzer,
        &gateway::IngressGatewayPortAnalyzer,
        &gateway::CertificateAnalyzer,
        &gateway::SecretAnalyzer,
        &gateway::ConflictingGatewayAnalyzer,
        &injection::InjectionAnalyzer,
        &injection::ImageAnalyzer,
        &injection::ImageAutoAnalyzer,
        &kube::MeshNetworksAnalyzer,
        &service::PortNameAnalyzer,
        &sidecar::SelectorAnalyzer,
        &virtualservice::ConflictingMeshGatewayHostsAnalyzer,
        &virtualservice::DestinationHostAnalyzer,
        &virtualservice::DestinationRuleAnalyzer,
        &virtualservice::GatewayAnalyzer,
        &virtualservice::JwtClaimRouteAnalyzer,
        &destinationrule::CaCertificateAnalyzer,
        &destinationrule::PodNotSelectedAnalyzer,
        &serviceentry::ProtocolAddressesAnalyzer,
        &serviceentry::ConflictingProtocolAnalyzer,
        &kube::WebhookAnalyzer,
        &envoyfilter::EnvoyPatchAnalyzer,
        &telemetry::ProviderAnalyzer,
        &telemetry::SelectorAnalyzer,
        &telemetry::DefaultSelectorAnalyzer,
        &telemetry::LightstepAnalyzer,
        &kube::KubernetesGatewaySelectorAnalyzer,
        &kube::CrdVersionAnalyzer,
        &kube::ConditionAnalyzer,
        &schema::ValidationAnalyzer,
        &strait::TlsModeAnalyzer,
        &strait::AllowPolicyCoverageAnalyzer,
        &strait::ShadowedRouteAnalyzer,
        &strait::SubsetEndpointAnalyzer,
        &strait::SidecarEgressAnalyzer,
        &strait::PrincipalAnalyzer,
        &strait::PeerAuthenticationSelectorAnalyzer,
    ]
}

/// An analyzer by name: Istio's (`virtualservice.GatewayAnalyzer`) or Strait's (`strait.…`).
pub fn by_name(name: &str) -> Option<&'static dyn Analyzer> {
    all().into_iter().find(|a| a.name() == name)
}
