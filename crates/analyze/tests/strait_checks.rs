//! Strait's own checks (STR0xxx): each with a case that must be reported and one that must not.

use strait_analyze::{Object, Options, analyze, analyze_all, analyzers};

fn objects(yaml: &str) -> Vec<Object> {
    let (docs, err) = strait_analyze::object::parse_documents(yaml);
    assert!(err.is_none(), "{err:?}");
    docs.into_iter()
        .filter_map(|d| Object::from_value(d, None, "default"))
        .collect()
}

/// The `code resource` lines one analyzer reports.
fn run(analyzer: &str, yaml: &str) -> Vec<String> {
    let a = analyzers::by_name(analyzer).unwrap_or_else(|| panic!("no analyzer {analyzer}"));
    analyze(&objects(yaml), &[a], &Options::default())
        .messages
        .iter()
        .map(|m| format!("{} {}", m.code.code, m.subject))
        .collect()
}

const REVIEWS: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: prod}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: prod}
spec:
  selector: {matchLabels: {app: reviews, version: v1}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec: {containers: [{name: reviews, image: reviews}]}
";

#[test]
fn str0001_tls_mode_against_peer_authentication() {
    let strict = "
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: prod}
spec: {mtls: {mode: STRICT}}
";
    let dr = |mode: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: prod}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: {mode}}}}}\n"
        )
    };
    let a = "strait.DestinationRuleTLSAnalyzer";
    let plaintext = run(a, &format!("{REVIEWS}{strict}{}", dr("DISABLE")));
    assert_eq!(plaintext, ["STR0001 DestinationRule prod/reviews"]);
    assert!(run(a, &format!("{REVIEWS}{strict}{}", dr("ISTIO_MUTUAL"))).is_empty());
    // Without a PeerAuthentication the mode is PERMISSIVE: plaintext works.
    assert!(run(a, &format!("{REVIEWS}{}", dr("DISABLE"))).is_empty());
    // Istio mutual TLS to workloads whose PeerAuthentication disables it.
    let disable = strict.replace("STRICT", "DISABLE");
    assert_eq!(
        run(a, &format!("{REVIEWS}{disable}{}", dr("ISTIO_MUTUAL"))),
        ["STR0001 DestinationRule prod/reviews"]
    );
    // A workload-level PeerAuthentication overrides the namespace's.
    let permissive_workload = "
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: prod}
spec: {selector: {matchLabels: {app: reviews}}, mtls: {mode: PERMISSIVE}}
";
    assert!(
        run(
            a,
            &format!("{REVIEWS}{strict}{permissive_workload}{}", dr("DISABLE"))
        )
        .is_empty()
    );
}

#[test]
fn str0002_workload_outside_allow_policies() {
    let yaml = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: a, namespace: prod}
spec: {template: {metadata: {labels: {app: a}}, spec: {containers: [{name: a, image: a}]}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: prod}
spec: {address: 10.0.0.2, labels: {app: b}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: prod}
spec:
  selector: {matchLabels: {app: a}}
  rules: [{from: [{source: {principals: [cluster.local/ns/prod/sa/x]}}]}]
";
    let a = "strait.AuthorizationPolicyCoverageAnalyzer";
    assert_eq!(run(a, yaml), ["STR0002 WorkloadEntry prod/b"]);
    let namespace_wide = format!(
        "{yaml}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: all, namespace: prod}}\nspec: {{}}\n"
    );
    assert!(run(a, &namespace_wide).is_empty());
    // DENY policies do not make a namespace default-deny.
    assert!(
        run(
            a,
            &yaml.replace("  selector:", "  action: DENY\n  selector:")
        )
        .is_empty()
    );
}

#[test]
fn str0003_route_after_a_catch_all() {
    let vs = |first: &str, second: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: default}}\nspec:\n  hosts: [r]\n  http:\n  - match: [{first}]\n    route: [{{destination: {{host: r}}}}]\n  - match: [{second}]\n    route: [{{destination: {{host: r, subset: v2}}}}]\n"
        )
    };
    let a = "strait.VirtualServiceShadowedRouteAnalyzer";
    let shadowed = run(
        a,
        &vs(
            "{uri: {prefix: /}}",
            "{uri: {prefix: /api}, method: {exact: POST}}",
        ),
    );
    assert_eq!(shadowed, ["STR0003 VirtualService default/r"]);
    assert!(
        run(
            a,
            &vs(
                "{uri: {prefix: /api}, method: {exact: POST}}",
                "{uri: {prefix: /}}"
            )
        )
        .is_empty()
    );
    // A catch-all narrowed by a header is not one.
    assert!(
        run(
            a,
            &vs(
                "{uri: {prefix: /}, headers: {x: {exact: y}}}",
                "{uri: {prefix: /api}}"
            )
        )
        .is_empty()
    );
}

#[test]
fn str0004_subset_without_endpoints_of_its_service() {
    let other = "
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings-v2, namespace: prod}
spec: {template: {metadata: {labels: {app: ratings, version: v2}}, spec: {containers: [{name: r, image: r}]}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";
    let a = "strait.DestinationRuleSubsetEndpointAnalyzer";
    // v2 exists (on ratings' pods), so Istio's IST0173 is silent; none of reviews' has it.
    assert_eq!(
        run(a, &format!("{REVIEWS}{other}")),
        ["STR0004 DestinationRule prod/reviews"]
    );
    let ok = other.replace("  - {name: v2, labels: {version: v2}}\n", "");
    assert!(run(a, &format!("{REVIEWS}{ok}")).is_empty());
}

#[test]
fn str0005_sidecar_egress_hosts() {
    let sidecar = |hosts: &str| {
        format!(
            "{REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: prod}}\nspec:\n  egress: [{{hosts: [{hosts}]}}]\n"
        )
    };
    let a = "strait.SidecarEgressHostAnalyzer";
    assert!(
        run(
            a,
            &sidecar("./reviews.prod.svc.cluster.local, istio-system/*, \"*/*.example.com\"")
        )
        .is_empty()
    );
    assert_eq!(
        run(a, &sidecar("prod/ratings.prod.svc.cluster.local")),
        ["STR0005 Sidecar prod/default"]
    );
    assert_eq!(
        run(a, &sidecar("nosuchns/*")),
        ["STR0005 Sidecar prod/default"]
    );
}

#[test]
fn str0006_principal_without_service_account() {
    let yaml = |principal: &str| {
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: bookinfo-reviews, namespace: prod}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  rules: [{{from: [{{source: {{principals: [{principal}]}}}}]}}]\n"
        )
    };
    let a = "strait.AuthorizationPolicyPrincipalAnalyzer";
    assert_eq!(
        run(a, &yaml("cluster.local/ns/prod/sa/bookinfo-reviewz")),
        ["STR0006 AuthorizationPolicy prod/p"]
    );
    assert!(run(a, &yaml("cluster.local/ns/prod/sa/bookinfo-reviews")).is_empty());
    // Namespaces whose service accounts the input does not list are not judged.
    assert!(run(a, &yaml("cluster.local/ns/other/sa/anything")).is_empty());
}

#[test]
fn str0007_peer_authentication_selector() {
    let pa = |app: &str| {
        format!(
            "{REVIEWS}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: prod}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, mtls: {{mode: STRICT}}}}\n"
        )
    };
    let a = "strait.PeerAuthenticationSelectorAnalyzer";
    assert_eq!(
        run(a, &pa("revuews")),
        ["STR0007 PeerAuthentication prod/p"]
    );
    assert!(run(a, &pa("reviews")).is_empty());
}

#[test]
fn workload_checks_wait_for_workloads_and_annotations_suppress() {
    // No workloads at all: selector checks are skipped, not reported everywhere.
    let yaml = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p, namespace: prod}
spec: {selector: {matchLabels: {app: x}}}
";
    let report = analyze_all(&objects(yaml), &Options::default());
    assert!(report.messages.iter().all(|m| m.code.code != "STR0007"));
    assert!(
        report
            .skipped
            .iter()
            .any(|(name, _)| *name == "strait.PeerAuthenticationSelectorAnalyzer")
    );
    // Istio's suppression annotation.
    let vs = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: r
  namespace: default
  annotations: {galley.istio.io/analyze-suppress: \"IST0101,IST0132\"}
spec:
  hosts: [r]
  gateways: [nope]
  http: [{route: [{destination: {host: nothere}}]}]
";
    let codes = |yaml: &str| -> Vec<&'static str> {
        analyze_all(&objects(yaml), &Options::default())
            .messages
            .iter()
            .map(|m| m.code.code)
            .collect()
    };
    assert!(codes(&vs.replace("IST0101,IST0132", "IST0000")).contains(&"IST0101"));
    assert!(!codes(vs).contains(&"IST0101"));
    assert!(!codes(&vs.replace("IST0101,IST0132", "*")).contains(&"IST0132"));
}
