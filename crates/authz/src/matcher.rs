//! The matchers Envoy's RBAC and jwt_authn configs are made of, compiled: strings, protobuf-like
//! values in dynamic metadata, headers, address ranges and path templates. Each shows itself as
//! a short pattern for explanations (`"/ip"`, `"/api*"`, `/^v[0-9]$/`, `10.0.0.0/8`).

use std::fmt;
use std::net::IpAddr;

use regex::Regex;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// A compiled regular expression, matched against the whole text (RE2's full match, as Envoy's
/// `safe_regex`), shown and compared by its source.
#[derive(Debug, Clone)]
pub struct Re {
    source: String,
    compiled: Regex,
}

impl Re {
    /// Compiles `source` to match whole strings.
    pub fn new(source: &str) -> Result<Re, regex::Error> {
        Ok(Re {
            source: source.to_string(),
            compiled: Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.compiled.is_match(text)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Re {
    fn eq(&self, other: &Re) -> bool {
        self.source == other.source
    }
}

impl Serialize for Re {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// Envoy's `StringMatcher`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StringMatch {
    pub kind: StringKind,
    /// Exact, prefix, suffix and contains compare ASCII case-insensitively.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    SafeRegex(Re),
}

impl StringMatch {
    pub fn exact(s: impl Into<String>) -> StringMatch {
        StringMatch {
            kind: StringKind::Exact(s.into()),
            ignore_case: false,
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let fold = |s: &str| -> String {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &self.kind {
            StringKind::Exact(p) if self.ignore_case => p.eq_ignore_ascii_case(text),
            StringKind::Exact(p) => p == text,
            StringKind::Prefix(p) => fold(text).starts_with(&fold(p)),
            StringKind::Suffix(p) => fold(text).ends_with(&fold(p)),
            StringKind::Contains(p) => fold(text).contains(&fold(p)),
            StringKind::SafeRegex(re) => re.is_match(text),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StringKind::Exact(p) => write!(f, "{p:?}")?,
            StringKind::Prefix(p) => write!(f, "\"{p}*\"")?,
            StringKind::Suffix(p) => write!(f, "\"*{p}\"")?,
            StringKind::Contains(p) => write!(f, "\"*{p}*\"")?,
            StringKind::SafeRegex(re) if re.as_str() == ".+" || re.as_str() == ".*" => {
                f.write_str("\"*\"")?
            }
            StringKind::SafeRegex(re) => write!(f, "/{}/", re.as_str())?,
        }
        if self.ignore_case {
            f.write_str(" (any case)")?;
        }
        Ok(())
    }
}

/// Envoy's `DoubleMatcher`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoubleMatch {
    /// `[start, end)`.
    Range {
        start: f64,
        end: f64,
    },
    Exact(f64),
}

/// Envoy's `ValueMatcher`, over a JSON value (dynamic metadata as JSON: a JWT's payload).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Null,
    Double(DoubleMatch),
    String(StringMatch),
    Bool(bool),
    /// Whether the path refers to a primitive value (string, number, bool).
    Present(bool),
    /// A list, one of whose elements matches.
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}

impl ValueMatch {
    /// `value` is `None` when the path does not exist.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            ValueMatch::Null => matches!(value, Some(Value::Null)),
            ValueMatch::Double(d) => match value.and_then(Value::as_f64) {
                Some(n) => match d {
                    DoubleMatch::Range { start, end } => *start <= n && n < *end,
                    DoubleMatch::Exact(x) => n == *x,
                },
                None => false,
            },
            ValueMatch::String(s) => value.and_then(Value::as_str).is_some_and(|v| s.matches(v)),
            ValueMatch::Bool(b) => value.and_then(Value::as_bool) == Some(*b),
            ValueMatch::Present(want) => {
                let primitive = matches!(
                    value,
                    Some(Value::String(_) | Value::Number(_) | Value::Bool(_))
                );
                primitive == *want
            }
            ValueMatch::ListOneOf(inner) => value
                .and_then(Value::as_array)
                .is_some_and(|items| items.iter().any(|v| inner.matches(Some(v)))),
            ValueMatch::Or(all) => all.iter().any(|m| m.matches(value)),
        }
    }
}

impl fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueMatch::Null => f.write_str("null"),
            ValueMatch::Double(DoubleMatch::Exact(x)) => write!(f, "{x}"),
            ValueMatch::Double(DoubleMatch::Range { start, end }) => write!(f, "[{start}, {end})"),
            ValueMatch::String(s) => write!(f, "{s}"),
            ValueMatch::Bool(b) => write!(f, "{b}"),
            ValueMatch::Present(true) => f.write_str("(present)"),
            ValueMatch::Present(false) => f.write_str("(absent)"),
            ValueMatch::ListOneOf(inner) => write!(f, "a list with {inner}"),
            ValueMatch::Or(all) => {
                let parts: Vec<String> = all.iter().map(|m| m.to_string()).collect();
                write!(f, "{}", parts.join(" or "))
            }
        }
    }
}

/// Envoy's `MetadataMatcher`: a value at a path in one filter's dynamic metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetadataMatch {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatch,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

impl MetadataMatch {
    pub fn matches(&self, metadata: &crate::Metadata) -> bool {
        self.value.matches(self.lookup(metadata)) != self.invert
    }

    /// The value at the path, if any.
    pub fn lookup<'m>(&self, metadata: &'m crate::Metadata) -> Option<&'m Value> {
        let mut v = metadata.get(&self.filter)?;
        for key in &self.path {
            v = v.as_object()?.get(key)?;
        }
        Some(v)
    }
}

/// Envoy's `HeaderMatcher`. Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) read
/// the request line; several values of one header are joined with `,` (Envoy's rule).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    pub kind: HeaderKind,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub treat_missing_as_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderKind {
    /// The value as a string (exact, prefix, suffix, contains, regex; the deprecated
    /// `exact_match`, `prefix_match`, ... fields become this too).
    String(StringMatch),
    /// `[start, end)` of the value as an integer.
    Range {
        start: i64,
        end: i64,
    },
    Present(bool),
}

impl HeaderMatch {
    /// Whether the header matches, given its (joined) value, `None` when absent.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => "",
            // Envoy: an absent header matches only a presence check that wants it absent (or,
            // inverted, present).
            None => {
                return match self.kind {
                    HeaderKind::Present(present) => present == self.invert,
                    _ => false,
                };
            }
        };
        let m = match &self.kind {
            HeaderKind::String(s) => s.matches(value),
            HeaderKind::Range { start, end } => {
                value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
            HeaderKind::Present(present) => *present,
        };
        m != self.invert
    }
}

impl fmt::Display for HeaderMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.invert {
            f.write_str("not ")?;
        }
        match &self.kind {
            HeaderKind::String(s) => write!(f, "{s}"),
            HeaderKind::Range { start, end } => write!(f, "[{start}, {end})"),
            HeaderKind::Present(true) => f.write_str("(present)"),
            HeaderKind::Present(false) => f.write_str("(absent)"),
        }
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(a: &[u8], b: &[u8], len: u8) -> bool {
            let (full, rest) = (usize::from(len / 8), len % 8);
            a[..full] == b[..full]
                && (rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0)
        }
        // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => bits(&a.octets(), &b.octets(), self.prefix_len),
            (IpAddr::V6(a), IpAddr::V6(b)) => bits(&a.octets(), &b.octets(), self.prefix_len),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// Envoy's URI template match (`envoy.path.match.uri_template`): `*` is one path segment,
/// `**` any number of segments (`/`s included), `{name}` and `{name=*}` one segment,
/// `{name=**}` the rest; anything else literal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathTemplate {
    pub template: String,
    #[serde(skip)]
    re: Option<Re>,
}

impl PathTemplate {
    pub fn new(template: &str) -> Result<PathTemplate, String> {
        if !template.starts_with('/') {
            return Err(format!("{template:?} does not start with /"));
        }
        let mut pattern = String::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let Some(end) = after.find('}') else {
                    return Err(format!("{template:?} has an unclosed {{"));
                };
                let var = &after[..end];
                // `{name}`, `{name=*}`, `{name=**}`, and Istio's bare `{*}` and `{**}`.
                let op = match var.split_once('=') {
                    Some((_, op)) => op,
                    None if var == "**" => "**",
                    None => "*",
                };
                match op {
                    "*" => pattern.push_str("[^/]+"),
                    "**" => pattern.push_str(".*"),
                    other => {
                        return Err(format!(
                            "{template:?}: the operator {other:?} is not * or **"
                        ));
                    }
                }
                rest = &after[end + 1..];
            } else if let Some(after) = rest.strip_prefix("**") {
                pattern.push_str(".*");
                rest = after;
            } else if let Some(after) = rest.strip_prefix('*') {
                pattern.push_str("[^/]+");
                rest = after;
            } else {
                let n = rest.find(['{', '*']).unwrap_or(rest.len());
                pattern.push_str(&regex::escape(&rest[..n]));
                rest = &rest[n..];
            }
        }
        let re = Re::new(&pattern).map_err(|e| format!("{template:?}: {e}"))?;
        Ok(PathTemplate {
            template: template.to_string(),
            re: Some(re),
        })
    }

    /// Whether `path` (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        self.re.as_ref().is_some_and(|re| re.is_match(path))
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_match_as_envoy_matches_them() {
        let m = |kind, ignore_case| StringMatch { kind, ignore_case };
        assert!(m(StringKind::Exact("GET".into()), false).matches("GET"));
        assert!(!m(StringKind::Exact("GET".into()), false).matches("get"));
        assert!(m(StringKind::Exact("Host.COM".into()), true).matches("host.com"));
        assert!(m(StringKind::Prefix("/api/".into()), false).matches("/api/x"));
        assert!(m(StringKind::Suffix(".suffix.com".into()), true).matches("A.SUFFIX.com"));
        assert!(m(StringKind::Contains("mid".into()), false).matches("amidb"));
        let re = m(
            StringKind::SafeRegex(Re::new(".*/ns/foo/.*").unwrap()),
            false,
        );
        assert!(re.matches("spiffe://cluster.local/ns/foo/sa/x"));
        assert!(!re.matches("spiffe://cluster.local/ns/foobar/sa/x"));
        // Full match, not a search.
        assert!(!m(StringKind::SafeRegex(Re::new("a").unwrap()), false).matches("ba"));
    }

    #[test]
    fn values_match_strings_lists_and_presence() {
        let groups = json!(["group1", "group2"]);
        let one_of =
            ValueMatch::ListOneOf(Box::new(ValueMatch::String(StringMatch::exact("group1"))));
        assert!(one_of.matches(Some(&groups)));
        assert!(!one_of.matches(Some(&json!("group1"))));
        assert!(!one_of.matches(None));
        let either = ValueMatch::Or(vec![
            ValueMatch::String(StringMatch::exact("group1")),
            one_of,
        ]);
        assert!(either.matches(Some(&json!("group1"))));
        assert!(ValueMatch::Present(true).matches(Some(&json!(3))));
        assert!(!ValueMatch::Present(true).matches(Some(&json!({"a": 1}))));
        assert!(!ValueMatch::Present(true).matches(None));
        assert!(ValueMatch::Double(DoubleMatch::Exact(3.0)).matches(Some(&json!(3))));
    }

    #[test]
    fn absent_headers_match_only_absence_checks() {
        let h = |kind, invert| HeaderMatch {
            name: "x".into(),
            kind,
            invert,
            treat_missing_as_empty: false,
        };
        let exact = HeaderKind::String(StringMatch::exact("a"));
        assert!(!h(exact.clone(), false).matches_value(None));
        assert!(!h(exact.clone(), true).matches_value(None));
        assert!(h(exact.clone(), true).matches_value(Some("b")));
        assert!(h(HeaderKind::Present(true), false).matches_value(Some("")));
        assert!(!h(HeaderKind::Present(true), false).matches_value(None));
        assert!(h(HeaderKind::Present(true), true).matches_value(None));
        assert!(h(HeaderKind::Range { start: 1, end: 5 }, false).matches_value(Some("4")));
    }

    #[test]
    fn cidrs_hold_their_addresses_and_mapped_ipv4() {
        let c = Cidr {
            address: "10.0.0.0".parse().unwrap(),
            prefix_len: 8,
        };
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
    }

    #[test]
    fn path_templates_match_segments() {
        let t = PathTemplate::new("/path/template/{*}").unwrap();
        assert!(t.matches("/path/template/x"));
        assert!(!t.matches("/path/template/x/y"));
        assert!(!t.matches("/path/template/"));
        let t = PathTemplate::new("/{**}/path/template").unwrap();
        assert!(t.matches("/a/b/path/template"));
        let t = PathTemplate::new("/api/{version=*}/items/{rest=**}").unwrap();
        assert!(t.matches("/api/v1/items/a/b/c"));
        assert!(!t.matches("/api/v1/x/items/a"));
        assert!(PathTemplate::new("/a/{x=***}").is_err());
    }
}
