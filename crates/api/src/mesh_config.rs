//! Istio's MeshConfig (`mesh.istio.io/v1alpha1`), read from the files Istio keeps it in:
//!
//! - the `istio` ConfigMap of `istio-system` (or just its `data:` fragment), whose `mesh` key holds
//!   the MeshConfig as a YAML string;
//! - an IstioOperator (`spec.meshConfig`) or Helm values file (`meshConfig`);
//! - a bare MeshConfig document (what `istioctl analyze --meshConfigFile` takes).
//!
//! Several documents in one file are read in order and merged: objects field by field, and the
//! `extensionProviders` lists appended (a provider name given twice is an error). The result is
//! the bare MeshConfig as JSON ([`MeshConfigFile::raw`]), the fields Strait honours, typed
//! ([`MeshConfigFile::config`]), and one warning per field Strait does not honour.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Duration;

/// Why a mesh config file could not be read; names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct MeshConfigError {
    pub file: String,
    /// The field's path in the MeshConfig (`extensionProviders[0].envoyExtAuthzGrpc.port`), or
    /// the document when the whole document is wrong.
    pub field: String,
    pub reason: String,
}

/// A mesh config file, read.
#[derive(Debug, Clone, Default)]
pub struct MeshConfigFile {
    /// The bare MeshConfig, every field as written (the documents merged).
    pub raw: Value,
    pub config: MeshConfig,
    /// One line per field Strait does not honour (`defaultConfig.holdApplicationUntilProxyStarts:
    /// not honoured by Strait, ignored`).
    pub warnings: Vec<String>,
}

/// The MeshConfig fields Strait honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub root_namespace: Option<String>,
    pub trust_domain: Option<String>,
    /// `outboundTrafficPolicy.mode`: `ALLOW_ANY` or `REGISTRY_ONLY`.
    pub outbound_traffic_policy: Option<OutboundMode>,
    pub enable_auto_mtls: Option<bool>,
    pub extension_providers: Vec<ExtensionProvider>,
    /// `enableTracing`, `defaultProviders.tracing` and `defaultConfig.tracing.sampling`.
    pub tracing: TracingDefaults,
}

/// The MeshConfig's tracing settings: what a proxy gets when no Telemetry resource says more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracingDefaults {
    /// `enableTracing` (Istio's default: true). Without a Telemetry resource and without
    /// `defaultProviders.tracing`, Istio falls back to the proxy's own tracer; Strait has none,
    /// so nothing is traced then.
    pub enable: Option<bool>,
    /// `defaultProviders.tracing`: the providers used when a Telemetry resource names none.
    pub default_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling`: the random sampling percentage when no Telemetry
    /// resource sets one (Istio: 0 or unset means 1%; above 100 means 1%).
    pub sampling: Option<Percent>,
}

/// A percentage in [0, 100] (never NaN, so it is `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Eq for Percent {}

impl Percent {
    /// `value` when it is a number in [0, 100].
    pub fn new(value: f64) -> Option<Percent> {
        (0.0..=100.0).contains(&value).then_some(Percent(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

/// One `extensionProviders` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionProvider {
    pub name: String,
    pub provider: Provider,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    EnvoyExtAuthzHttp(ExtAuthzHttp),
    EnvoyExtAuthzGrpc(ExtAuthzGrpc),
    /// `opentelemetry`: an OTLP trace exporter (gRPC, or HTTP when `http` is given).
    Opentelemetry(Opentelemetry),
    /// Any other provider (`prometheus`, `envoyFileAccessLog`, `zipkin`, ...):
    /// its key and its settings as written, kept for the telemetry work.
    Other {
        kind: String,
        config: Value,
    },
}

/// `envoyExtAuthzGrpc`: Envoy's ext_authz gRPC check API (`envoy.service.auth.v3.Authorization`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpc {
    /// The authorizer's host (`ext-authz.foo.svc.cluster.local`, or `NAMESPACE/HOST`).
    pub service: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    /// An HTTP status code as a string (`"500"`).
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBody>,
}

/// `envoyExtAuthzHttp`: the HTTP check API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttp {
    pub service: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Deprecated by Istio in favour of `includeRequestHeadersInCheck`.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBody>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `opentelemetry`: Istio's OpenTelemetry tracing provider. Istio reads its MeshConfig as
/// protobuf JSON, so each field is accepted in camelCase and with its proto name
/// (`maxTagLength`, `max_tag_length`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Opentelemetry {
    /// The collector's host (`opentelemetry-collector.observability.svc.cluster.local`, or
    /// `NAMESPACE/HOST`).
    pub service: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// The longest `http.url` tag (Envoy's default 256).
    #[serde(default, alias = "max_tag_length")]
    pub max_tag_length: u32,
    /// OTLP over HTTP (protobuf) instead of gRPC.
    #[serde(default)]
    pub http: Option<OtlpHttp>,
    /// OTLP over gRPC's settings (the default transport).
    #[serde(default)]
    pub grpc: Option<OtlpGrpc>,
    /// Resource detectors (`environment`, `dynatrace`): accepted, not honoured.
    #[serde(default, alias = "resource_detectors")]
    pub resource_detectors: Option<Value>,
    /// A custom sampler (Dynatrace's): accepted, not honoured (Istio then samples 100% and
    /// lets the sampler decide; Strait samples at the configured percentage).
    #[serde(default, alias = "dynatrace_sampler")]
    pub dynatrace_sampler: Option<Value>,
}

/// `opentelemetry.http`: OTLP/HTTP's path, timeout and extra headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpHttp {
    /// The request path (`/v1/traces`, OTLP/HTTP's usual one, when empty).
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub headers: Vec<ProviderHeader>,
}

/// `opentelemetry.grpc`: the export's timeout and extra metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtlpGrpc {
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default, alias = "initial_metadata")]
    pub initial_metadata: Vec<ProviderHeader>,
}

/// A header a provider sends: a value, or the control plane's environment variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderHeader {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, alias = "env_name")]
    pub env_name: Option<String>,
}

impl ProviderHeader {
    /// The value sent: `value`, else the environment variable's (empty when unset), as Istio.
    pub fn resolved(&self) -> String {
        match (&self.value, &self.env_name) {
            (Some(v), _) => v.clone(),
            (None, Some(env)) => std::env::var(env).unwrap_or_default(),
            (None, None) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// A port as Istio's YAML writes it: a number, or a number in a string (`"9000"`).
fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = Value::deserialize(d)?;
    let n = match &v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(serde::de::Error::custom(format!(
            "port must be a number in [1, 65535], found {v}"
        ))),
    }
}

/// MeshConfig fields Strait honours; every other field of a MeshConfig gets a warning.
const HONOURED: &[&str] = &[
    "rootNamespace",
    "trustDomain",
    "outboundTrafficPolicy",
    "enableAutoMtls",
    "extensionProviders",
    "enableTracing",
];

/// Reads a mesh config file (see the module's documentation for the shapes it takes).
pub fn load(path: &Path) -> Result<MeshConfigFile, MeshConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| MeshConfigError {
        file: file.clone(),
        field: "(file)".into(),
        reason: format!("cannot read the mesh config: {e}"),
    })?;
    parse(&file, &text)
}

/// Reads mesh config text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<MeshConfigFile, MeshConfigError> {
    let err = |field: &str, reason: String| MeshConfigError {
        file: file.to_string(),
        field: field.to_string(),
        reason,
    };
    let mut raw = Value::Object(serde_json::Map::new());
    let mut names = std::collections::BTreeSet::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("document {}", i + 1);
        let value = Value::deserialize(doc).map_err(|e| err(&at, format!("not YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let mesh = bare_mesh(&value).map_err(|r| err(&at, r))?;
        let Value::Object(mesh) = mesh else {
            return Err(err(
                &at,
                "a MeshConfig is a mapping (rootNamespace, trustDomain, extensionProviders, ...)"
                    .into(),
            ));
        };
        for (k, v) in mesh {
            if k == "extensionProviders" {
                let Value::Array(list) = v else {
                    return Err(err(&k, "must be a list of providers".into()));
                };
                let Value::Object(out) = &mut raw else {
                    unreachable!()
                };
                let all = out
                    .entry("extensionProviders")
                    .or_insert_with(|| Value::Array(Vec::new()));
                for p in list {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    if !name.is_empty() && !names.insert(name.clone()) {
                        return Err(err(
                            "extensionProviders",
                            format!(
                                "the provider name {name:?} is given twice: names must be unique"
                            ),
                        ));
                    }
                    if let Value::Array(a) = all {
                        a.push(p);
                    }
                }
            } else {
                let mut one = serde_json::Map::new();
                one.insert(k, v);
                merge(&mut raw, &Value::Object(one));
            }
        }
    }
    let config = typed(&raw).map_err(|(field, reason)| err(&field, reason))?;
    let mut warnings = Vec::new();
    for (k, v) in raw.as_object().into_iter().flatten() {
        if HONOURED.contains(&k.as_str()) {
            continue;
        }
        // Objects Strait honours a part of: a warning per other field.
        let honoured_part = match k.as_str() {
            "defaultProviders" => Some(&["tracing"][..]),
            "defaultConfig" => Some(&["tracing"][..]),
            _ => None,
        };
        match (honoured_part, v) {
            (Some(part), Value::Object(fields)) => {
                for (f, fv) in fields {
                    if !part.contains(&f.as_str()) {
                        warnings.push(format!("{k}.{f}: not honoured by Strait, ignored"));
                    } else if k == "defaultConfig" {
                        for t in fv.as_object().into_iter().flatten().map(|(t, _)| t) {
                            if t != "sampling" {
                                warnings
                                    .push(format!("{k}.{f}.{t}: not honoured by Strait, ignored"));
                            }
                        }
                    }
                }
            }
            _ => warnings.push(format!("{k}: not honoured by Strait, ignored")),
        }
    }
    Ok(MeshConfigFile {
        raw,
        config,
        warnings,
    })
}

/// The bare MeshConfig of one document: a ConfigMap's (or its `data:` fragment's) `mesh` string,
/// an IstioOperator's `spec.meshConfig`, Helm values' `meshConfig`, or the document itself.
fn bare_mesh(doc: &Value) -> Result<Value, String> {
    let from_string = |s: &Value, what: &str| -> Result<Value, String> {
        let text = s
            .as_str()
            .ok_or_else(|| format!("{what} must be a string holding the MeshConfig YAML"))?;
        let v: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| format!("{what} is not a YAML MeshConfig: {e}"))?;
        Ok(if v.is_null() {
            Value::Object(serde_json::Map::new())
        } else {
            v
        })
    };
    if let Some(data) = doc.get("data") {
        return match data.get("mesh") {
            Some(m) => from_string(m, "data.mesh"),
            None => Err("a ConfigMap without a `mesh` key in `data` (Istio's `istio` ConfigMap keeps the MeshConfig there)".into()),
        };
    }
    if doc.get("kind").and_then(Value::as_str) == Some("IstioOperator") {
        return Ok(doc["spec"]
            .get("meshConfig")
            .cloned()
            .unwrap_or_else(|| Value::Object(serde_json::Map::new())));
    }
    if let Some(m) = doc.get("meshConfig") {
        return Ok(m.clone());
    }
    if let Some(m) = doc.get("mesh") {
        return from_string(m, "mesh");
    }
    Ok(doc.clone())
}

/// The honoured fields, typed; `Err((field path, reason))`.
fn typed(raw: &Value) -> Result<MeshConfig, (String, String)> {
    let string = |k: &str| -> Result<Option<String>, (String, String)> {
        match raw.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err((k.to_string(), format!("must be a string, found {other}"))),
        }
    };
    let outbound = match raw.get("outboundTrafficPolicy") {
        None | Some(Value::Null) => None,
        Some(p) => match p.get("mode").and_then(Value::as_str) {
            Some("ALLOW_ANY") | None => Some(OutboundMode::AllowAny),
            Some("REGISTRY_ONLY") => Some(OutboundMode::RegistryOnly),
            Some(other) => {
                return Err((
                    "outboundTrafficPolicy.mode".into(),
                    format!("{other:?} is not a mode: write ALLOW_ANY or REGISTRY_ONLY"),
                ));
            }
        },
    };
    let auto_mtls = match raw.get("enableAutoMtls") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err((
                "enableAutoMtls".into(),
                format!("must be true or false, found {other}"),
            ));
        }
    };
    let tracing = tracing_defaults(raw)?;
    let mut providers = Vec::new();
    if let Some(Value::Array(list)) = raw.get("extensionProviders") {
        for (i, p) in list.iter().enumerate() {
            providers
                .push(provider(p).map_err(|(f, r)| (format!("extensionProviders[{i}]{f}"), r))?);
        }
    }
    Ok(MeshConfig {
        root_namespace: string("rootNamespace")?,
        trust_domain: string("trustDomain")?,
        outbound_traffic_policy: outbound,
        enable_auto_mtls: auto_mtls,
        extension_providers: providers,
        tracing,
    })
}

/// `enableTracing`, `defaultProviders.tracing`, `defaultConfig.tracing.sampling`.
fn tracing_defaults(raw: &Value) -> Result<TracingDefaults, (String, String)> {
    let enable = match raw.get("enableTracing") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err((
                "enableTracing".into(),
                format!("must be true or false, found {other}"),
            ));
        }
    };
    let default_providers = match raw.get("defaultProviders").and_then(|d| d.get("tracing")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|p| match p {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err((
                    "defaultProviders.tracing".into(),
                    format!("must be a list of provider names, found {other}"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err((
                "defaultProviders.tracing".into(),
                format!("must be a list of provider names, found {other}"),
            ));
        }
    };
    let sampling = match raw
        .get("defaultConfig")
        .and_then(|d| d.get("tracing"))
        .and_then(|t| t.get("sampling"))
    {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            let Some(n) = n.filter(|n| n.is_finite() && *n >= 0.0) else {
                return Err((
                    "defaultConfig.tracing.sampling".into(),
                    format!("must be a percentage (a number from 0.0 to 100.0), found {v}"),
                ));
            };
            // Istio: 0 means unset (its default, 1%), and above 100 means 1%.
            if n == 0.0 {
                None
            } else {
                Percent::new(n).or(Percent::new(1.0))
            }
        }
    };
    Ok(TracingDefaults {
        enable,
        default_providers,
        sampling,
    })
}

fn provider(p: &Value) -> Result<ExtensionProvider, (String, String)> {
    let Value::Object(map) = p else {
        return Err((
            String::new(),
            "a provider is a mapping with `name` and one provider".into(),
        ));
    };
    let name = match map.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err((
                ".name".into(),
                "every provider needs a non-empty name".into(),
            ));
        }
    };
    let kinds: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != "name").collect();
    let [(kind, config)] = kinds.as_slice() else {
        return Err((
            String::new(),
            format!(
                "provider {name:?} must have exactly one provider field (envoyExtAuthzHttp, envoyExtAuthzGrpc, opentelemetry, ...), found {}",
                kinds.len()
            ),
        ));
    };
    fn de<T: serde::de::DeserializeOwned>(kind: &str, v: &Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." || path.is_empty() {
                format!(".{kind}")
            } else {
                format!(".{kind}.{path}")
            };
            (at, e.into_inner().to_string())
        })
    }
    let provider = match kind.as_str() {
        "envoyExtAuthzHttp" => Provider::EnvoyExtAuthzHttp(de(kind, config)?),
        "envoyExtAuthzGrpc" => Provider::EnvoyExtAuthzGrpc(de(kind, config)?),
        "opentelemetry" => Provider::Opentelemetry(de(kind, config)?),
        _ => Provider::Other {
            kind: kind.to_string(),
            config: (*config).clone(),
        },
    };
    match &provider {
        Provider::EnvoyExtAuthzHttp(h) => {
            check_common(kind, &h.service, h.status_on_error.as_deref())?;
            if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                return Err((
                    format!(".{kind}.pathPrefix"),
                    format!("must begin with `/`, found {:?}", h.path_prefix),
                ));
            }
        }
        Provider::EnvoyExtAuthzGrpc(g) => {
            check_common(kind, &g.service, g.status_on_error.as_deref())?
        }
        Provider::Opentelemetry(o) => {
            check_common(kind, &o.service, None)?;
            if let Some(h) = &o.http
                && !h.path.is_empty()
                && !h.path.starts_with('/')
            {
                return Err((
                    format!(".{kind}.http.path"),
                    format!("must begin with `/`, found {:?}", h.path),
                ));
            }
        }
        Provider::Other { .. } => {}
    }
    Ok(ExtensionProvider { name, provider })
}

fn check_common(kind: &str, service: &str, status: Option<&str>) -> Result<(), (String, String)> {
    if service.is_empty() {
        return Err((format!(".{kind}.service"), "must not be empty".into()));
    }
    if let Some(s) = status {
        match s.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => {}
            _ => {
                return Err((
                    format!(".{kind}.statusOnError"),
                    format!("{s:?} is not an HTTP status code (write one like \"500\")"),
                ));
            }
        }
    }
    Ok(())
}

impl ExtAuthzHttp {
    /// The headers sent to the authorizer: `includeRequestHeadersInCheck`, else the deprecated
    /// `includeHeadersInCheck`.
    pub fn request_headers(&self) -> &[String] {
        if self.include_request_headers_in_check.is_empty() {
            &self.include_headers_in_check
        } else {
            &self.include_request_headers_in_check
        }
    }
}

/// Merges `over` into `base`: objects field by field, everything else replaced.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_fragment_of_istios_authz_custom_task() {
        let text = r#"
data:
  mesh: |-
    extensionProviders:
    - name: "sample-ext-authz-grpc"
      envoyExtAuthzGrpc:
        service: "ext-authz.foo.svc.cluster.local"
        port: "9000"
    - name: "sample-ext-authz-http"
      envoyExtAuthzHttp:
        service: "ext-authz.foo.svc.cluster.local"
        port: "8000"
        includeRequestHeadersInCheck: ["x-ext-authz"]
---
data:
  mesh: |-
    extensionProviders:
    - name: "oauth2-proxy"
      envoyExtAuthzHttp:
        service: "oauth2-proxy.foo.svc.cluster.local"
        port: "4180"
        headersToDownstreamOnAllow: ["set-cookie"]
"#;
        let m = parse("mesh.yaml", text).unwrap();
        let p = &m.config.extension_providers;
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "sample-ext-authz-grpc");
        let Provider::EnvoyExtAuthzGrpc(g) = &p[0].provider else {
            panic!("{p:?}")
        };
        assert_eq!(
            (g.service.as_str(), g.port),
            ("ext-authz.foo.svc.cluster.local", 9000)
        );
        let Provider::EnvoyExtAuthzHttp(h) = &p[1].provider else {
            panic!("{p:?}")
        };
        assert_eq!(h.request_headers(), ["x-ext-authz"]);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn istio_operator_helm_values_and_bare_documents() {
        let op = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  meshConfig:\n    trustDomain: example.org\n    rootNamespace: mesh-root\n    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n    enableTracing: true\n    extensionProviders:\n    - name: otel\n      opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\n";
        let m = parse("op.yaml", op).unwrap();
        assert_eq!(m.config.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(m.config.root_namespace.as_deref(), Some("mesh-root"));
        assert_eq!(
            m.config.outbound_traffic_policy,
            Some(OutboundMode::RegistryOnly)
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(m.config.tracing.enable, Some(true));
        assert!(matches!(
            &m.config.extension_providers[0].provider,
            Provider::Opentelemetry(o) if o.port == 4317 && o.http.is_none()
        ));
        let helm = parse("values.yaml", "meshConfig:\n  enableAutoMtls: false\n").unwrap();
        assert_eq!(helm.config.enable_auto_mtls, Some(false));
        let bare = parse("bare.yaml", "trustDomain: td\n").unwrap();
        assert_eq!(bare.config.trust_domain.as_deref(), Some("td"));
    }

    #[test]
    fn a_bad_field_is_an_error_naming_the_file_and_the_field() {
        let e = parse(
            "mesh.yaml",
            "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: s, port: \"x\"}\n",
        )
        .unwrap_err();
        assert_eq!(e.file, "mesh.yaml");
        assert_eq!(e.field, "extensionProviders[0].envoyExtAuthzGrpc.port");
        let e = parse(
            "mesh.yaml",
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: s, port: 1, portt: 2}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("portt"), "{e}");
        let e = parse("m.yaml", "outboundTrafficPolicy: {mode: DENY}\n").unwrap_err();
        assert_eq!(e.field, "outboundTrafficPolicy.mode");
        let e = parse(
            "m.yaml",
            "extensionProviders:\n- {name: a, prometheus: {}}\n- {name: a, prometheus: {}}\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("given twice"), "{e}");
    }

    /// Each document of a file on its own (Istio's install inputs are alternatives).
    fn documents(path: &str) -> Vec<MeshConfigFile> {
        let dir =
            std::env::var("STRAIT_TESTDATA").unwrap_or_else(|_| "/work/shared/testdata".into());
        let file = format!("{dir}/istio-install/telemetry/{path}");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{file}: {e} (set STRAIT_TESTDATA to the test data)"));
        text.split("\n---\n")
            .map(|doc| parse(&file, doc).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn istios_opentelemetry_task_inputs() {
        let docs = documents("tracing-opentelemetry.yaml");
        assert_eq!(docs.len(), 2);
        let otel = |m: &MeshConfigFile| match &m.config.extension_providers[0].provider {
            Provider::Opentelemetry(o) => o.clone(),
            other => panic!("{other:?}"),
        };
        let grpc = otel(&docs[0]);
        assert_eq!(
            (grpc.service.as_str(), grpc.port, grpc.http.is_none()),
            (
                "opentelemetry-collector.observability.svc.cluster.local",
                4317,
                true
            )
        );
        assert!(grpc.resource_detectors.is_some());
        let http = otel(&docs[1]);
        let h = http.http.expect("the http exporter");
        assert_eq!((http.port, h.path.as_str()), (4318, "/v1/traces"));
        assert_eq!(
            h.timeout.map(|t| t.to_std()),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(h.headers[0].name, "custom-header");
        assert_eq!(h.headers[0].resolved(), "custom value");
        for d in &docs {
            assert_eq!(d.config.tracing.enable, Some(true));
            assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        }
    }

    #[test]
    fn istios_sampling_task_inputs() {
        let docs = documents("tracing-sampling.yaml");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].config.tracing.sampling, Percent::new(10.0));
        assert_eq!(docs[1].config.tracing.sampling, None);
        let Provider::Opentelemetry(dt) = &docs[2].config.extension_providers[0].provider else {
            panic!()
        };
        assert!(dt.dynatrace_sampler.is_some());
        assert_eq!(dt.port, 443);
        let api = documents("tracing-telemetry-api.yaml");
        assert_eq!(api[0].config.tracing.sampling, None);
        assert!(matches!(
            &api[0].config.extension_providers[0].provider,
            Provider::Other { kind, .. } if kind == "zipkin"
        ));
        let examples = documents("telemetry-api-examples-mesh-config.yaml");
        assert_eq!(examples[0].config.extension_providers.len(), 2);
    }

    #[test]
    fn tracing_defaults_as_istio_reads_them() {
        let m = parse(
            "m.yaml",
            "defaultProviders: {tracing: [otel], metrics: [prometheus]}\ndefaultConfig:\n  tracing: {sampling: 250, zipkin: {address: z:9411}}\n  holdApplicationUntilProxyStarts: true\n",
        )
        .unwrap();
        assert_eq!(m.config.tracing.default_providers, ["otel"]);
        // Above 100 is Istio's 1%.
        assert_eq!(m.config.tracing.sampling, Percent::new(1.0));
        assert_eq!(
            m.warnings,
            [
                "defaultConfig.holdApplicationUntilProxyStarts: not honoured by Strait, ignored",
                "defaultConfig.tracing.zipkin: not honoured by Strait, ignored",
                "defaultProviders.metrics: not honoured by Strait, ignored",
            ]
        );
        let e = parse("m.yaml", "defaultConfig: {tracing: {sampling: lots}}\n").unwrap_err();
        assert_eq!(e.field, "defaultConfig.tracing.sampling");
        let e = parse(
            "m.yaml",
            "extensionProviders:\n- {name: o, opentelemetry: {service: s, port: 4318, http: {path: v1/traces}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "extensionProviders[0].opentelemetry.http.path");
    }
}
