//! Istio's pod annotations that shape the sidecar, checked as Istio checks them: a bad value
//! refuses the injection with a message naming the annotation and what to write instead.

use std::collections::BTreeMap;

use crate::InjectError;
use crate::values::Values;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
pub const TEMPLATES: &str = "inject.istio.io/templates";
pub const OVERRIDES: &str = "proxy.istio.io/overrides";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
pub const READINESS_APPLICATION_PORTS: &str = "readiness.status.sidecar.istio.io/applicationPorts";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
pub const SCRAPE_TARGETS: &str = "prometheus.istio.io/scrape-targets";
pub const REWRITE_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
pub const REVISION: &str = "istio.io/rev";
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";

/// The labels injection adds.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// How traffic is captured (`sidecar.istio.io/interceptionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
    /// No capture: no init container.
    None,
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }
}

/// The fields of Istio's ProxyConfig that `proxy.istio.io/config` may set. Strait applies
/// `holdApplicationUntilProxyStarts`, `interceptionMode`, `statusPort` and `proxyMetadata`
/// (as environment variables of the sidecar); the others are accepted and passed to the sidecar
/// in `PROXY_CONFIG`, where they have no effect yet.
const PROXY_CONFIG_FIELDS: &[&str] = &[
    "configPath",
    "binaryPath",
    "serviceCluster",
    "drainDuration",
    "parentShutdownDuration",
    "discoveryAddress",
    "discoveryRefreshDelay",
    "zipkinAddress",
    "statsdUdpAddress",
    "envoyMetricsServiceAddress",
    "proxyAdminPort",
    "availabilityZone",
    "controlPlaneAuthPolicy",
    "customConfigFile",
    "statNameLength",
    "concurrency",
    "proxyBootstrapTemplatePath",
    "interceptionMode",
    "tracing",
    "sds",
    "envoyAccessLogService",
    "envoyMetricsService",
    "proxyMetadata",
    "runtimeValues",
    "statusPort",
    "extraStatTags",
    "gatewayTopology",
    "terminationDrainDuration",
    "meshId",
    "readinessProbe",
    "proxyStatsMatcher",
    "holdApplicationUntilProxyStarts",
    "caCertificatesPem",
    "image",
    "privateKeyProvider",
    "proxyHeaders",
    "fileFlushInterval",
    "fileFlushMinSizeKb",
    "startupProbe",
];

/// What a pod's annotations (over the values) decide about its sidecar.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interception: InterceptionMode,
    /// 0: no status port (no probe rewriting, no metrics merge).
    pub status_port: u16,
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub reroute_interfaces: Option<String>,
    pub exclude_interfaces: Option<String>,
    pub hold_application: bool,
    pub rewrite_probes: bool,
    pub merge_metrics: bool,
    pub native: Option<bool>,
    pub proxy_image: Option<String>,
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    pub readiness_initial_delay: u32,
    pub readiness_period: u32,
    pub readiness_failure_threshold: u32,
    pub application_ports: Option<String>,
    pub user_volumes: BTreeMap<String, serde_json::Value>,
    pub user_volume_mounts: BTreeMap<String, serde_json::Value>,
    /// `proxy.istio.io/config`, as JSON (empty object when unset).
    pub proxy_config: serde_json::Map<String, serde_json::Value>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub log_level: String,
}

fn bad(annotation: &str, value: &str, why: impl Into<String>) -> InjectError {
    InjectError::BadAnnotation {
        annotation: annotation.to_string(),
        value: value.to_string(),
        reason: why.into(),
    }
}

/// Istio's port list: numbers 0-65535 separated by commas; empty is no port.
fn check_ports(annotation: &str, param: &str, value: &str) -> Result<(), InjectError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(());
    }
    for p in trimmed.split(',') {
        if p.trim().parse::<u16>().is_err() {
            return Err(bad(
                annotation,
                value,
                format!(
                    "{param} invalid: {p:?} is not a port; write port numbers separated by commas, like \"8080,9090\""
                ),
            ));
        }
    }
    Ok(())
}

/// Istio's CIDR list (IPv4 or IPv6 prefixes, separated by commas); empty is none.
fn check_cidrs(annotation: &str, param: &str, value: &str) -> Result<(), InjectError> {
    if value.is_empty() {
        return Ok(());
    }
    for c in value.split(',') {
        if c.parse::<ipnet::IpNet>().is_err() {
            return Err(bad(
                annotation,
                value,
                format!(
                    "{param} invalid: {c:?} is not a CIDR; write CIDRs like \"10.0.0.0/8,fd00::/8\" separated by commas"
                ),
            ));
        }
    }
    Ok(())
}

fn check_bool(annotation: &str, value: &str) -> Result<bool, InjectError> {
    parse_go_bool(value).ok_or_else(|| bad(annotation, value, "write \"true\" or \"false\""))
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn check_u32(annotation: &str, value: &str) -> Result<u32, InjectError> {
    value
        .parse::<u32>()
        .map_err(|_| bad(annotation, value, "write a whole number of at least 0"))
}

/// A Kubernetes resource quantity: `100m`, `1.5`, `128Mi`, `1G`, `2e3`.
pub fn is_quantity(value: &str) -> bool {
    let v = value.strip_prefix(['+', '-']).unwrap_or(value);
    let digits_end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, suffix) = v.split_at(digits_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return false;
    }
    matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .chars()
            .all(|c| c.is_ascii_digit())
        && suffix.len() > 1)
}

fn json_map(
    annotation: &str,
    value: &str,
) -> Result<BTreeMap<String, serde_json::Value>, InjectError> {
    serde_json::from_str(value).map_err(|e| {
        bad(
            annotation,
            value,
            format!("write a JSON object keyed by volume name ({e})"),
        )
    })
}

impl Settings {
    /// Reads the annotations over the values; the first bad annotation is the error (in name
    /// order, so the same pod always gives the same error).
    pub fn read(
        annotations: &BTreeMap<String, String>,
        values: &Values,
    ) -> Result<Settings, InjectError> {
        let p = &values.global.proxy;
        let get = |k: &str| annotations.get(k).map(String::as_str);

        // proxy.istio.io/config first: it may set the interception mode and status port.
        let mut proxy_config = serde_json::Map::new();
        if let Some(v) = get(PROXY_CONFIG) {
            let parsed: serde_json::Value = serde_yaml_ng::from_str(v).map_err(|e| {
                bad(
                    PROXY_CONFIG,
                    v,
                    format!("write Istio's ProxyConfig as YAML or JSON ({e})"),
                )
            })?;
            match parsed {
                serde_json::Value::Object(m) => proxy_config = m,
                serde_json::Value::Null => {}
                _ => {
                    return Err(bad(
                        PROXY_CONFIG,
                        v,
                        "write Istio's ProxyConfig as a YAML or JSON object",
                    ));
                }
            }
            for key in proxy_config.keys() {
                if !PROXY_CONFIG_FIELDS.contains(&key.as_str()) {
                    return Err(bad(
                        PROXY_CONFIG,
                        v,
                        format!("{key:?} is not a ProxyConfig field"),
                    ));
                }
            }
        }
        let pc_bool = |k: &str| -> Result<Option<bool>, InjectError> {
            match proxy_config.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(bad(
                    PROXY_CONFIG,
                    get(PROXY_CONFIG).unwrap_or_default(),
                    format!("{k} must be true or false, not {other}"),
                )),
            }
        };
        let hold_pc = pc_bool("holdApplicationUntilProxyStarts")?;
        let mut proxy_metadata = BTreeMap::new();
        if let Some(m) = proxy_config.get("proxyMetadata") {
            let map = m.as_object().ok_or_else(|| {
                bad(
                    PROXY_CONFIG,
                    get(PROXY_CONFIG).unwrap_or_default(),
                    "proxyMetadata must map names to strings",
                )
            })?;
            for (k, v) in map {
                let s = v.as_str().ok_or_else(|| {
                    bad(
                        PROXY_CONFIG,
                        get(PROXY_CONFIG).unwrap_or_default(),
                        format!("proxyMetadata.{k} must be a string"),
                    )
                })?;
                proxy_metadata.insert(k.clone(), s.to_string());
            }
        }

        let mode_text = get(INTERCEPTION_MODE)
            .map(str::to_string)
            .or_else(|| {
                proxy_config
                    .get("interceptionMode")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| p.interception_mode.clone());
        let interception = match mode_text.as_str() {
            "REDIRECT" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            "NONE" => InterceptionMode::None,
            other => {
                return Err(bad(
                    INTERCEPTION_MODE,
                    other,
                    "interceptionMode invalid, use REDIRECT, TPROXY or NONE",
                ));
            }
        };

        let status_port = match get(STATUS_PORT) {
            Some(v) => v.trim().parse::<u16>().map_err(|_| {
                bad(
                    STATUS_PORT,
                    v,
                    "write a port number (0 turns the status port off)",
                )
            })?,
            None => match proxy_config.get("statusPort").and_then(|v| v.as_u64()) {
                Some(n) => u16::try_from(n).map_err(|_| {
                    bad(
                        PROXY_CONFIG,
                        get(PROXY_CONFIG).unwrap_or_default(),
                        "statusPort must be a port number",
                    )
                })?,
                None => p.status_port,
            },
        };

        let include_ip_ranges = get(INCLUDE_OUTBOUND_IP_RANGES)
            .map(str::to_string)
            .unwrap_or_else(|| p.include_ip_ranges.clone());
        if include_ip_ranges != "*" {
            check_cidrs(
                INCLUDE_OUTBOUND_IP_RANGES,
                "includeIPRanges",
                &include_ip_ranges,
            )?;
        }
        let exclude_ip_ranges = get(EXCLUDE_OUTBOUND_IP_RANGES)
            .map(str::to_string)
            .unwrap_or_else(|| p.exclude_ip_ranges.clone());
        check_cidrs(
            EXCLUDE_OUTBOUND_IP_RANGES,
            "excludeIPRanges",
            &exclude_ip_ranges,
        )?;
        let include_inbound_ports = get(INCLUDE_INBOUND_PORTS)
            .map(str::to_string)
            .unwrap_or_else(|| p.include_inbound_ports.clone());
        if include_inbound_ports != "*" {
            check_ports(
                INCLUDE_INBOUND_PORTS,
                "includeInboundPorts",
                &include_inbound_ports,
            )?;
        }
        let exclude_inbound_ports = get(EXCLUDE_INBOUND_PORTS)
            .map(str::to_string)
            .unwrap_or_else(|| p.exclude_inbound_ports.clone());
        check_ports(
            EXCLUDE_INBOUND_PORTS,
            "excludeInboundPorts",
            &exclude_inbound_ports,
        )?;
        let exclude_outbound_ports =
            get(EXCLUDE_OUTBOUND_PORTS).map(str::to_string).or_else(|| {
                (!p.exclude_outbound_ports.is_empty()).then(|| p.exclude_outbound_ports.clone())
            });
        if let Some(v) = &exclude_outbound_ports {
            check_ports(EXCLUDE_OUTBOUND_PORTS, "excludeOutboundPorts", v)?;
        }
        let include_outbound_ports =
            get(INCLUDE_OUTBOUND_PORTS).map(str::to_string).or_else(|| {
                (!p.include_outbound_ports.is_empty()).then(|| p.include_outbound_ports.clone())
            });
        if let Some(v) = &include_outbound_ports {
            check_ports(INCLUDE_OUTBOUND_PORTS, "includeOutboundPorts", v)?;
        }
        let reroute_interfaces = get(REROUTE_VIRTUAL_INTERFACES)
            .or_else(|| get(KUBEVIRT_INTERFACES))
            .map(str::to_string);
        let exclude_interfaces = get(EXCLUDE_INTERFACES).map(str::to_string);

        let merge_metrics = match get(MERGE_METRICS) {
            Some(v) => check_bool(MERGE_METRICS, v)?,
            None => true,
        };
        let rewrite_probes = match get(REWRITE_PROBERS).and_then(parse_go_bool) {
            Some(b) => b,
            None => values.sidecar_injector_webhook.rewrite_app_http_probe,
        };
        let native = match get(NATIVE_SIDECAR) {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        };
        let mut requests = p.resources.requests.clone();
        let mut limits = p.resources.limits.clone();
        for (key, is_limit, res) in [
            (PROXY_CPU, false, "cpu"),
            (PROXY_MEMORY, false, "memory"),
            (PROXY_CPU_LIMIT, true, "cpu"),
            (PROXY_MEMORY_LIMIT, true, "memory"),
        ] {
            if let Some(v) = get(key) {
                if !is_quantity(v) {
                    return Err(bad(
                        key,
                        v,
                        "write a Kubernetes quantity, like 100m, 2, 128Mi or 1Gi",
                    ));
                }
                let map = if is_limit { &mut limits } else { &mut requests };
                map.insert(res.to_string(), v.to_string());
            }
        }
        let readiness_initial_delay = match get(READINESS_INITIAL_DELAY) {
            Some(v) => check_u32(READINESS_INITIAL_DELAY, v)?,
            None => p.readiness_initial_delay_seconds,
        };
        let readiness_period = match get(READINESS_PERIOD) {
            Some(v) => check_u32(READINESS_PERIOD, v)?,
            None => p.readiness_period_seconds,
        };
        let readiness_failure_threshold = match get(READINESS_FAILURE_THRESHOLD) {
            Some(v) => check_u32(READINESS_FAILURE_THRESHOLD, v)?,
            None => p.readiness_failure_threshold,
        };
        let application_ports = get(READINESS_APPLICATION_PORTS).map(str::to_string);
        if let Some(v) = &application_ports {
            check_ports(READINESS_APPLICATION_PORTS, "applicationPorts", v)?;
        }
        let user_volumes = match get(USER_VOLUME) {
            Some(v) => json_map(USER_VOLUME, v)?,
            None => BTreeMap::new(),
        };
        let user_volume_mounts = match get(USER_VOLUME_MOUNT) {
            Some(v) => json_map(USER_VOLUME_MOUNT, v)?,
            None => BTreeMap::new(),
        };
        Ok(Settings {
            interception,
            status_port,
            include_ip_ranges,
            exclude_ip_ranges,
            include_inbound_ports,
            exclude_inbound_ports,
            include_outbound_ports,
            exclude_outbound_ports,
            reroute_interfaces,
            exclude_interfaces,
            hold_application: hold_pc.unwrap_or(p.hold_application_until_proxy_starts),
            rewrite_probes,
            merge_metrics,
            native,
            proxy_image: get(PROXY_IMAGE).map(str::to_string),
            requests,
            limits,
            readiness_initial_delay,
            readiness_period,
            readiness_failure_threshold,
            application_ports,
            user_volumes,
            user_volume_mounts,
            proxy_config,
            proxy_metadata,
            log_level: get(LOG_LEVEL)
                .map(str::to_string)
                .unwrap_or_else(|| p.log_level.clone()),
        })
    }

    /// The inbound ports never redirected (`-d`): the proxy's own (15090, 15021), the excluded
    /// ones, and the status port.
    pub fn excluded_inbound(&self) -> String {
        let mut parts = vec!["15090".to_string(), "15021".to_string()];
        if !self.exclude_inbound_ports.trim().is_empty() {
            parts.push(self.exclude_inbound_ports.clone());
        }
        if self.status_port != 0 {
            parts.push(self.status_port.to_string());
        }
        parts.join(",")
    }

    /// istio-iptables' arguments, as Istio's injection template writes them (the init
    /// container runs `strait istio-iptables ARGS`, which takes the same flags).
    pub fn init_args(&self, uid: u32) -> Vec<String> {
        let mut args: Vec<String> = ["istio-iptables", "-p", "15001", "-z", "15006", "-u"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(uid.to_string());
        args.extend([
            "-m".to_string(),
            self.interception.as_str().to_string(),
            "-i".to_string(),
            self.include_ip_ranges.clone(),
            "-x".to_string(),
            self.exclude_ip_ranges.clone(),
            "-b".to_string(),
            self.include_inbound_ports.clone(),
            "-d".to_string(),
            self.excluded_inbound(),
        ]);
        if let Some(q) = &self.include_outbound_ports {
            args.extend(["-q".to_string(), q.clone()]);
        }
        if let Some(o) = &self.exclude_outbound_ports {
            args.extend(["-o".to_string(), o.clone()]);
        }
        if let Some(k) = &self.reroute_interfaces {
            args.extend(["-k".to_string(), k.clone()]);
        }
        if let Some(c) = &self.exclude_interfaces {
            args.extend(["-c".to_string(), c.clone()]);
        }
        args.push("--log_output_level=default:info".to_string());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, InjectError> {
        let a = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::read(&a, &Values::default())
    }

    #[test]
    fn defaults_give_istios_init_args() {
        let s = read(&[]).unwrap();
        assert_eq!(
            s.init_args(1337).join(" "),
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x  -b * -d 15090,15021,15020 --log_output_level=default:info"
        );
    }

    #[test]
    fn traffic_annotations_shape_the_args() {
        let s = read(&[
            (INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.1/24,10.96.0.1/24"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.2/24,10.96.0.3/24"),
            (INCLUDE_INBOUND_PORTS, "1,2,3"),
            (EXCLUDE_INBOUND_PORTS, "4,5,6"),
            (EXCLUDE_OUTBOUND_PORTS, "7,8,9"),
        ])
        .unwrap();
        assert_eq!(
            s.init_args(1337).join(" "),
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i 127.0.0.1/24,10.96.0.1/24 -x 10.96.0.2/24,10.96.0.3/24 -b 1,2,3 -d 15090,15021,4,5,6,15020 -o 7,8,9 --log_output_level=default:info"
        );
        let zero = read(&[(STATUS_PORT, "0")]).unwrap();
        assert_eq!(zero.excluded_inbound(), "15090,15021");
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (key, value) in [
            (INCLUDE_OUTBOUND_IP_RANGES, "bad"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (INCLUDE_INBOUND_PORTS, "bad"),
            (EXCLUDE_INBOUND_PORTS, "*"),
            (EXCLUDE_OUTBOUND_PORTS, "bad"),
            (PROXY_CPU, "lots"),
            (INTERCEPTION_MODE, "MAGIC"),
            (PROXY_CONFIG, "{\"holdApplicationUntilProxyStart\": true}"),
        ] {
            let e = read(&[(key, value)]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "1.5", "128Mi", "1Gi", "2e3", "1000m", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for no in ["", "m", "1.2.3", "1Gb", "lots", "1e"] {
            assert!(!is_quantity(no), "{no}");
        }
    }

    #[test]
    fn proxy_config_holds_the_application() {
        let s = read(&[(
            PROXY_CONFIG,
            "{ \"holdApplicationUntilProxyStarts\": true }",
        )])
        .unwrap();
        assert!(s.hold_application);
    }
}
