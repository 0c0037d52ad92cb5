//! An RBAC filter as Envoy runs it: enforced rules and shadow rules (Istio's dry run, and the
//! CUSTOM action's trigger), the decision, the dynamic metadata a shadow result leaves for the
//! filters after it, and what the access log says about a denial.

use serde::Serialize;
use serde_json::Value;

use crate::Metadata;
use crate::attributes::Input;
use crate::rbac::{Action, Rbac, display_policy_name};

/// The dynamic metadata namespaces the HTTP and network RBAC filters write.
pub const HTTP_RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_NAMESPACE: &str = "envoy.filters.network.rbac";

/// `envoy.filters.http.rbac` or `envoy.filters.network.rbac`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RbacFilter {
    pub rules: Option<Rbac>,
    pub shadow: Option<Rbac>,
    /// Prefixes the shadow result's metadata keys (`istio_ext_authz_`, `istio_dry_run_allow_`).
    pub shadow_prefix: String,
}

/// What one RBAC filter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The enforced rules' action, when there are enforced rules.
    pub action: Option<Action>,
    /// The enforced policy that matched.
    pub policy: Option<String>,
    /// The shadow rules' result: the policy that matched, and whether they would allow.
    pub shadow: Option<(Option<String>, bool)>,
}

impl RbacFilter {
    pub fn decide(&self, input: &Input<'_>) -> Decision {
        let (allowed, action, policy) = match &self.rules {
            Some(r) => {
                let v = r.verdict(input);
                (v.allowed, Some(r.action), v.policy)
            }
            None => (true, None, None),
        };
        let shadow = self.shadow.as_ref().map(|s| {
            let v = s.verdict(input);
            (v.policy, v.allowed)
        });
        Decision {
            allowed,
            action,
            policy,
            shadow,
        }
    }

    /// Records the shadow result in `metadata[namespace]` as Envoy does:
    /// `PREFIXshadow_effective_policy_id` (when a shadow policy matched) and
    /// `PREFIXshadow_engine_result` (`allowed` or `denied`).
    pub fn record(&self, d: &Decision, metadata: &mut Metadata, namespace: &str) {
        let Some((policy, allowed)) = &d.shadow else {
            return;
        };
        let entry = metadata
            .entry(namespace.to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(map) = entry {
            if let Some(p) = policy {
                map.insert(
                    format!("{}shadow_effective_policy_id", self.shadow_prefix),
                    Value::String(p.clone()),
                );
            }
            map.insert(
                format!("{}shadow_engine_result", self.shadow_prefix),
                Value::String(if *allowed { "allowed" } else { "denied" }.to_string()),
            );
        }
    }

    /// Why the enforced rules refused the request, for the access log and `strait authz
    /// check`: the deciding policy for DENY; for ALLOW, each policy and what did not match.
    pub fn explain_denial(&self, d: &Decision, input: &Input<'_>) -> String {
        let Some(rules) = &self.rules else {
            return "allowed".to_string();
        };
        match (rules.action, &d.policy) {
            (Action::Deny, Some(p)) => format!("DENY policy {} matched", display_policy_name(p)),
            (Action::Allow, _) => {
                let why: Vec<String> = rules
                    .explain_no_match(input)
                    .into_iter()
                    .map(|line| match line.split_once(": ") {
                        Some((name, rest)) => format!("{}: {rest}", display_policy_name(name)),
                        None => line,
                    })
                    .collect();
                format!("no ALLOW policy matched ({})", why.join("; "))
            }
            _ => "allowed".to_string(),
        }
    }
}

/// Envoy's response code details for an RBAC denial:
/// `rbac_access_denied_matched_policy[ns[foo]-policy[deny-get]-rule[0]]`, `[none]` when no
/// ALLOW policy matched.
pub fn denial_details(d: &Decision) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        d.policy.as_deref().unwrap_or("none")
    )
}
