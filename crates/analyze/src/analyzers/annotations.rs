//! Annotation analyzers (unknown, misplaced, invalid, deprecated, alpha) and deprecated fields
//! (Istio's `analyzers/annotations`, `analyzers/maturity`, `analyzers/deprecation`).

use std::net::IpAddr;

use super::{NET, analyzer};
use crate::context::Context;
use crate::message::{self as msg, Message, q};
use crate::object::{Object, items, number, text};

/// One Istio annotation: name, the kinds it applies to, deprecated, alpha.
struct Annotation {
    name: &'static str,
    resources: &'static [&'static str],
    deprecated: bool,
    alpha: bool,
}

const fn a(
    name: &'static str,
    resources: &'static [&'static str],
    deprecated: bool,
    alpha: bool,
) -> Annotation {
    Annotation {
        name,
        resources,
        deprecated,
        alpha,
    }
}

const POD: &[&str] = &["Pod"];
const SVC: &[&str] = &["Service"];
const ANY: &[&str] = &["Any"];
const WE: &[&str] = &["WorkloadEntry"];
const GW: &[&str] = &["Gateway"];

/// Istio's resource annotations (istio/api `annotation/annotations.yaml`, Apache-2.0).
const ANNOTATIONS: &[Annotation] = &[
    a("alpha.istio.io/canonical-serviceaccounts", SVC, true, true),
    a("alpha.istio.io/kubernetes-serviceaccounts", SVC, true, true),
    a("ambient.istio.io/bypass-inbound-capture", POD, false, true),
    a("ambient.istio.io/redirection", POD, false, false),
    a(
        "ambient.istio.io/waypoint-inbound-binding",
        &["GatewayClass", "Gateway"],
        false,
        true,
    ),
    a("galley.istio.io/analyze-suppress", ANY, false, true),
    a("gateway.istio.io/controller-version", ANY, false, true),
    a("gateway.istio.io/name-override", GW, false, true),
    a("gateway.istio.io/service-account", GW, false, true),
    a("inject.istio.io/templates", POD, false, true),
    a("istio.io/autoRegistrationGroup", WE, false, true),
    a("istio.io/connectedAt", WE, false, true),
    a("istio.io/disconnectedAt", WE, false, true),
    a("istio.io/dry-run", &["AuthorizationPolicy"], false, true),
    a("istio.io/rev", POD, false, true),
    a("istio.io/workloadController", WE, false, true),
    a("kubernetes.io/ingress.class", &["Ingress"], false, false),
    a("networking.istio.io/exportTo", SVC, false, true),
    a("networking.istio.io/service-type", GW, false, true),
    a(
        "networking.istio.io/traffic-distribution",
        &["Service", "ServiceEntry"],
        false,
        true,
    ),
    a("prometheus.istio.io/merge-metrics", POD, false, true),
    a("proxy.istio.io/config", POD, false, false),
    a("proxy.istio.io/overrides", POD, false, true),
    a(
        "readiness.status.sidecar.istio.io/applicationPorts",
        POD,
        false,
        true,
    ),
    a(
        "readiness.status.sidecar.istio.io/failureThreshold",
        POD,
        false,
        true,
    ),
    a(
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        POD,
        false,
        true,
    ),
    a(
        "readiness.status.sidecar.istio.io/periodSeconds",
        POD,
        false,
        true,
    ),
    a("sidecar.istio.io/agentLogLevel", POD, false, true),
    a("sidecar.istio.io/bootstrapOverride", POD, false, true),
    a("sidecar.istio.io/componentLogLevel", POD, false, true),
    a("sidecar.istio.io/discoveryAddress", POD, true, true),
    a("sidecar.istio.io/enableCoreDump", POD, false, true),
    a("sidecar.istio.io/extraStatTags", POD, true, true),
    a("sidecar.istio.io/inject", POD, true, false),
    a("sidecar.istio.io/interceptionMode", POD, false, true),
    a("sidecar.istio.io/logLevel", POD, false, true),
    a("sidecar.istio.io/nativeSidecar", POD, false, true),
    a("sidecar.istio.io/proxyCPU", POD, false, true),
    a("sidecar.istio.io/proxyCPULimit", POD, false, true),
    a("sidecar.istio.io/proxyImage", POD, false, true),
    a("sidecar.istio.io/proxyImageType", POD, false, true),
    a("sidecar.istio.io/proxyMemory", POD, false, true),
    a("sidecar.istio.io/proxyMemoryLimit", POD, false, true),
    a("sidecar.istio.io/rewriteAppHTTPProbers", POD, false, true),
    a("sidecar.istio.io/statsHistogramBuckets", POD, false, true),
    a("sidecar.istio.io/statsInclusionPrefixes", POD, true, true),
    a("sidecar.istio.io/statsInclusionRegexps", POD, true, true),
    a("sidecar.istio.io/statsInclusionSuffixes", POD, true, true),
    a("sidecar.istio.io/status", POD, false, true),
    a("sidecar.istio.io/userVolume", POD, false, true),
    a("sidecar.istio.io/userVolumeMount", POD, false, true),
    a("status.sidecar.istio.io/port", POD, false, true),
    a(
        "topology.istio.io/controlPlaneClusters",
        &["Namespace"],
        false,
        true,
    ),
    a("traffic.istio.io/nodeSelector", SVC, false, false),
    a(
        "traffic.sidecar.istio.io/excludeInboundPorts",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/excludeInterfaces",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/includeInboundPorts",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/includeOutboundPorts",
        POD,
        false,
        true,
    ),
    a(
        "traffic.sidecar.istio.io/kubevirtInterfaces",
        POD,
        false,
        true,
    ),
];

/// Whether an annotation is in Istio's domain (`*istio.io/...`, and the documented
/// `kubernetes.io/ingress.class`).
fn istio_annotation(name: &str) -> bool {
    name == "kubernetes.io/ingress.class"
        || name.split('/').next().unwrap_or("").ends_with("istio.io")
}

fn lookup(name: &str) -> Option<&'static Annotation> {
    ANNOTATIONS.iter().find(|a| a.name == name)
}

/// The kinds whose annotations are checked, as Istio's.
const ANNOTATED: &[&str] = &["Namespace", "Service", "Pod", "Deployment"];

fn objects_of<'a>(ctx: &Context<'a>, kind: &str) -> Vec<&'a Object> {
    let group = if kind == "Deployment" { "apps" } else { "" };
    ctx.kind(group, kind)
        .iter()
        .copied()
        .filter(|o| !ctx.is_synthetic(o))
        .collect()
}

fn port_list(v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(());
    }
    for p in v.split(',') {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("failed parsing port '{p}'"))?;
    }
    Ok(())
}

fn cidr_list(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    for c in v.split(',') {
        let ok = c.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<IpAddr>().is_ok_and(|ip| {
                bits.parse::<u8>()
                    .is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })
            })
        });
        if !ok {
            return Err(format!("failed parsing cidr '{c}'"));
        }
    }
    Ok(())
}

/// Istio's injection-time validation of an annotation's value, where it has one.
fn validate(name: &str, v: &str) -> Result<(), String> {
    match name {
        "sidecar.istio.io/interceptionMode" => match v {
            "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
            _ => Err(format!(
                "interceptionMode invalid, use REDIRECT,TPROXY,NONE: {v}"
            )),
        },
        "status.sidecar.istio.io/port" => v
            .trim()
            .parse::<u16>()
            .map(|_| ())
            .map_err(|_| format!("failed parsing port '{v}'")),
        "readiness.status.sidecar.istio.io/initialDelaySeconds"
        | "readiness.status.sidecar.istio.io/periodSeconds"
        | "readiness.status.sidecar.istio.io/failureThreshold" => v
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("strconv.ParseUint: parsing {}: invalid syntax", q(v))),
        "traffic.sidecar.istio.io/includeOutboundIPRanges" if v == "*" => Ok(()),
        "traffic.sidecar.istio.io/includeOutboundIPRanges"
        | "traffic.sidecar.istio.io/excludeOutboundIPRanges" => cidr_list(v),
        "traffic.sidecar.istio.io/includeInboundPorts" if v == "*" => Ok(()),
        "traffic.sidecar.istio.io/includeInboundPorts"
        | "traffic.sidecar.istio.io/excludeInboundPorts"
        | "traffic.sidecar.istio.io/excludeOutboundPorts" => port_list(v),
        "prometheus.istio.io/merge-metrics" => match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" | "0" | "f" | "F" | "false" | "FALSE"
            | "False" => Ok(()),
            _ => Err(format!(
                "strconv.ParseBool: parsing {}: invalid syntax",
                q(v)
            )),
        },
        "proxy.istio.io/config" => serde_yaml_ng::from_str::<serde_json::Value>(v)
            .ok()
            .filter(|c| c.is_object() || c.is_null())
            .map(|_| ())
            .ok_or_else(|| {
                "failed to convert to apply proxy config: not a ProxyConfig mapping".to_string()
            }),
        _ => Ok(()),
    }
}

analyzer!(
    K8sAnalyzer,
    "annotations.K8sAnalyzer",
    [
        msg::UNKNOWN_ANNOTATION,
        msg::DEPRECATED_ANNOTATION,
        msg::MISPLACED_ANNOTATION,
        msg::INVALID_ANNOTATION
    ]
);

impl K8sAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for &kind in ANNOTATED {
            for o in objects_of(ctx, kind) {
                for (name, value) in o.annotations() {
                    if !istio_annotation(&name) {
                        continue;
                    }
                    let Some(def) = lookup(&name) else {
                        out.push(
                            Message::new(
                                msg::UNKNOWN_ANNOTATION,
                                o,
                                format!("Unknown annotation: {name}"),
                            )
                            .hint("check the spelling; Istio does not define this annotation"),
                        );
                        continue;
                    };
                    if def.deprecated
                        && !(name == "sidecar.istio.io/inject"
                            && o.label("sidecar.istio.io/inject").is_some())
                    {
                        let extra = if name == "sidecar.istio.io/inject" {
                            " in favor of the \"sidecar.istio.io/inject\" label"
                        } else {
                            ""
                        };
                        out.push(Message::new(
                            msg::DEPRECATED_ANNOTATION,
                            o,
                            format!(
                                "Annotation {} has been deprecated{extra} and may not work in future Istio versions.",
                                q(&name)
                            ),
                        ));
                    }
                    if def.resources.contains(&"Any") {
                        continue;
                    }
                    if !def.resources.contains(&kind) {
                        out.push(Message::new(
                            msg::MISPLACED_ANNOTATION,
                            o,
                            format!(
                                "Misplaced annotation: {name} can only be applied to {}",
                                def.resources.join(", ")
                            ),
                        ).hint("move it to the kind it applies to (for a Deployment: its pod template)"));
                        continue;
                    }
                    if let Err(problem) = validate(&name, &value) {
                        out.push(Message::new(
                            msg::INVALID_ANNOTATION,
                            o,
                            format!("Invalid annotation {name}: {problem}"),
                        ));
                    }
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    AlphaAnalyzer,
    "maturity.AlphaAnalyzer",
    [msg::ALPHA_ANNOTATION],
    optional
);

impl AlphaAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        const ALWAYS_IGNORED: &[&str] = &[
            "sidecar.istio.io/status",
            "gateway.istio.io/controller-version",
            "istio.io/rev",
        ];
        const SET_BY_DEFAULT: &[&str] = &[
            "sidecar.istio.io/interceptionMode",
            "traffic.sidecar.istio.io/includeInboundPorts",
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
        ];
        let mut out = Vec::new();
        for &kind in ANNOTATED {
            for o in objects_of(ctx, kind) {
                // Without an istio-init container (CNI), injection sets these itself.
                let cni = kind == "Pod"
                    && !items(&o.spec()["initContainers"])
                        .iter()
                        .any(|c| c["name"] == "istio-init");
                for name in o.annotations().keys() {
                    if !istio_annotation(name) {
                        continue;
                    }
                    let Some(def) = lookup(name) else {
                        continue;
                    };
                    if !def.alpha
                        || ALWAYS_IGNORED.contains(&def.name)
                        || (cni && SET_BY_DEFAULT.contains(&def.name))
                    {
                        continue;
                    }
                    out.push(Message::new(
                        msg::ALPHA_ANNOTATION,
                        o,
                        format!(
                            "Annotation {} is part of an alpha-phase feature and may be incompletely supported.",
                            q(name)
                        ),
                    ));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    DeprecationAnalyzer,
    "deprecation.FieldAnalyzer",
    [msg::DEPRECATED]
);

impl DeprecationAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for vs in ctx.kind(NET, "VirtualService") {
            for r in items(&vs.spec()["http"]) {
                if number(&r["fault"]["delay"]["percent"]).is_some_and(|p| p > 0) {
                    out.push(Message::new(
                        msg::DEPRECATED,
                        vs,
                        "Deprecated: HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage",
                    ).hint("write fault.delay.percentage.value instead"));
                }
            }
        }
        for sc in ctx.kind(NET, "Sidecar") {
            if !sc.spec()["outboundTrafficPolicy"]["egressProxy"].is_null() {
                out.push(Message::new(
                    msg::DEPRECATED,
                    sc,
                    "Deprecated: OutboundTrafficPolicy.EgressProxy ignored",
                ));
            }
        }
        for crd in ctx.kind("apiextensions.k8s.io", "CustomResourceDefinition") {
            let group = text(&crd.spec()["group"]);
            let kind = text(&crd.spec()["names"]["kind"]);
            if group == "rbac.istio.io"
                && matches!(
                    kind,
                    "ClusterRbacConfig" | "RbacConfig" | "ServiceRole" | "ServiceRoleBinding"
                )
            {
                out.push(
                    Message::new(
                        msg::DEPRECATED,
                        crd,
                        format!("Deprecated: Custom resource type {group} {kind} is removed"),
                    )
                    .hint("use AuthorizationPolicy"),
                );
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
