//! Cross-resource analysis of Istio configuration, like `istioctl analyze`.
//!
//! Istio's analyzers (`pkg/config/analysis/analyzers` in istio/istio) re-implemented over the
//! objects Strait reads, with Istio's message codes, names and levels, plus checks of Strait's
//! own (`STR0xxx`, see `docs/analyze.md`). Each analyzer has Istio's name
//! (`virtualservice.DestinationRuleAnalyzer`), so Istio's analyzer tests can run one at a time.
//!
//! The input is any Kubernetes-shaped document ([`Object`]): the kinds Strait stores and those
//! it does not (Pods, ConfigMaps, Secrets, webhook configurations, Gateway API resources ...),
//! which are read raw, for analysis only.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod analyzers;
mod cert;
pub mod context;
pub mod hosts;
pub mod labels;
pub mod message;
pub mod object;

pub use context::{Context, Options};
pub use message::{Code, Level, Message, Subject};
pub use object::{Object, Source};

/// One analyzer.
pub trait Analyzer: Sync {
    /// Istio's name for it (its Go package and type), or `strait.<Name>` for Strait's own.
    fn name(&self) -> &'static str;
    /// The codes it reports.
    fn codes(&self) -> &'static [Code];
    /// Whether it says nothing useful without workloads (Pods, WorkloadEntries, Deployments).
    fn needs_workloads(&self) -> bool {
        false
    }
    /// Whether a plain `strait analyze` runs it (Istio leaves its alpha-annotation analyzer out).
    fn default_on(&self) -> bool {
        true
    }
    fn analyze(&self, ctx: &mut Context<'_>);
}

/// Why an analysis could not run as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown analyzer {0:?}: see `strait_analyze::analyzers::all()` for the names")]
    UnknownAnalyzer(String),
    #[error(
        "invalid --suppress {0:?}: use CODE=KIND NAME, e.g. \"IST0102=Namespace frod\" (`*` matches any text)"
    )]
    InvalidSuppression(String),
}

/// What an analysis found.
#[derive(Debug, Default)]
pub struct Report {
    /// Sorted like istioctl: by level, code, resource, then text; duplicates removed.
    pub messages: Vec<Message>,
    /// Analyzers that did not run, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

/// The annotation that suppresses messages on a resource: codes, comma-separated, or `*`.
pub const SUPPRESS_ANNOTATION: &str = "galley.istio.io/analyze-suppress";

/// Runs `analyzers` over `objects`.
pub fn analyze(objects: &[Object], analyzers: &[&dyn Analyzer], options: &Options) -> Report {
    let synthetic = context::synthetic_objects(objects, options);
    let mut ctx = Context::new(objects, &synthetic, options);
    let mut skipped = Vec::new();
    for a in analyzers {
        if a.needs_workloads()
            && options.skip_workload_checks_without_workloads
            && !ctx.has_workloads()
        {
            skipped.push((
                a.name(),
                "no workloads in the input (Pods, Deployments or WorkloadEntries)".to_string(),
            ));
            continue;
        }
        a.analyze(&mut ctx);
    }
    let mut messages = std::mem::take(&mut ctx.messages);
    // Istio's `galley.istio.io/analyze-suppress` annotation.
    messages.retain(|m| {
        let Some(o) = ctx
            .objects()
            .iter()
            .find(|o| message::Subject::of(o) == m.subject)
        else {
            return true;
        };
        let Some(codes) = o.annotation(SUPPRESS_ANNOTATION) else {
            return true;
        };
        !codes
            .split(',')
            .map(str::trim)
            .any(|c| c == "*" || c.eq_ignore_ascii_case(m.code.code))
    });
    sort_dedup(&mut messages);
    Report { messages, skipped }
}

/// Runs every analyzer `istioctl analyze` runs (and Strait's own).
pub fn analyze_all(objects: &[Object], options: &Options) -> Report {
    let all: Vec<&dyn Analyzer> = analyzers::all()
        .into_iter()
        .filter(|a| a.default_on())
        .collect();
    analyze(objects, &all, options)
}

/// Sorts like istioctl (level, code, resource, text) and drops messages with the same code,
/// resource and text.
pub fn sort_dedup(messages: &mut Vec<Message>) {
    messages.sort_by(|a, b| {
        (a.code.level, a.code.code, &a.subject, &a.text).cmp(&(
            b.code.level,
            b.code.code,
            &b.subject,
            &b.text,
        ))
    });
    messages.dedup_by(|a, b| a.code == b.code && a.subject == b.subject && a.text == b.text);
}

/// `--suppress CODE=KIND NAME`: drops the matching messages; `*` matches any text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    code: String,
    resource: String,
}

impl std::str::FromStr for Suppression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let (code, resource) = s
            .split_once('=')
            .ok_or_else(|| Error::InvalidSuppression(s.to_string()))?;
        let (code, resource) = (code.trim(), resource.trim());
        if code.is_empty() || resource.is_empty() {
            return Err(Error::InvalidSuppression(s.to_string()));
        }
        Ok(Suppression {
            code: code.to_string(),
            resource: resource.to_string(),
        })
    }
}

impl Suppression {
    pub fn matches(&self, m: &Message) -> bool {
        glob(&self.code, m.code.code) && glob(&self.resource, &m.subject.to_string())
    }
}

/// `*` matches any run of characters; everything else itself (ASCII case-insensitive).
fn glob(pattern: &str, s: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let s = s.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == s;
    }
    let mut rest = s.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("IST0102", "IST0102"));
        assert!(glob("Namespace *", "Namespace frod"));
        assert!(glob("*", "anything"));
        assert!(glob("Pod default/*-v1", "Pod default/reviews-v1"));
        assert!(!glob("Pod default/*-v1", "Pod other/reviews-v1"));
        assert!("IST0102=Namespace frod".parse::<Suppression>().is_ok());
        assert!("IST0102".parse::<Suppression>().is_err());
    }
}
