//! Why a resource is refused (NACKed), kept typed until the message is built: the resource, the
//! path of the field inside it (`virtual_hosts[reviews:9080].routes[0].route.retry_policy`), and
//! what is wrong with that field ([`Problem`]). Conversions return a [`Refusal`] (a path and a
//! problem) and each level adds its own segment on the way out ([`At`]); the resource's
//! `TryFrom` turns it into an [`Invalid`] with the resource's kind and name.

use std::fmt;

/// The kind of a resource, as NACK messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Listener,
    RouteConfiguration,
    Cluster,
    ClusterLoadAssignment,
    Secret,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Listener => "listener",
            Kind::RouteConfiguration => "route configuration",
            Kind::Cluster => "cluster",
            Kind::ClusterLoadAssignment => "cluster load assignment",
            Kind::Secret => "secret",
        })
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A field: `.retry_policy`.
    Field(&'static str),
    /// An entry of a list by position: `[2]`.
    Index(usize),
    /// An entry of a list by the name it carries (virtual hosts): `[reviews:9080]`.
    Named(String),
    /// An entry of a map by its key: `["envoy.filters.http.fault"]`.
    Key(String),
}

/// A field path, outermost segment first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Segment>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Named(name) => write!(f, "[{name}]")?,
                Segment::Key(key) => write!(f, "[{key:?}]")?,
            }
        }
        Ok(())
    }
}

/// What is wrong with the field at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// strait-proxy does not implement the field (or this value of it, named in `detail`).
    Unsupported { detail: Option<String> },
    /// The value cannot be used: it is not what the field takes.
    BadValue { value: String, expected: String },
    /// A field the resource needs is absent.
    Missing,
    /// A typed config (`Any`) of another type than the field takes.
    WrongType { got: String, expected: &'static str },
    /// A typed config that does not decode as its type.
    Undecodable { error: String },
    /// Fields that are each valid but break a rule together (the router must be the last
    /// HTTP filter, an EDS cluster has no load assignment, ...).
    Rule(&'static str),
}

/// A refusal inside a resource: the field's path (built from the innermost segment out) and the
/// problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Innermost segment first: each level pushes its own on the way out.
    reversed: Vec<Segment>,
    pub problem: Problem,
}

/// A field path given as `a.b.c`: one [`Segment::Field`] per name.
fn fields(path: &'static str) -> impl DoubleEndedIterator<Item = Segment> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .map(Segment::Field)
}

impl Refusal {
    fn new(path: &'static str, problem: Problem) -> Refusal {
        Refusal {
            reversed: fields(path).rev().collect(),
            problem,
        }
    }

    /// `path` is not supported.
    pub fn unsupported(path: &'static str) -> Refusal {
        Refusal::new(path, Problem::Unsupported { detail: None })
    }

    /// `path` with this value (or in this form) is not supported.
    pub fn unsupported_value(path: &'static str, detail: impl fmt::Display) -> Refusal {
        Refusal::new(
            path,
            Problem::Unsupported {
                detail: Some(detail.to_string()),
            },
        )
    }

    /// `value` at `path` is not `expected`.
    pub fn bad_value(
        path: &'static str,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Refusal {
        Refusal::new(
            path,
            Problem::BadValue {
                value: value.to_string(),
                expected: expected.into(),
            },
        )
    }

    /// `path` is needed and absent.
    pub fn missing(path: &'static str) -> Refusal {
        Refusal::new(path, Problem::Missing)
    }

    /// The fields at `path` break `rule`.
    pub fn rule(path: &'static str, rule: &'static str) -> Refusal {
        Refusal::new(path, Problem::Rule(rule))
    }

    pub(crate) fn wrong_type(got: &str, expected: &'static str) -> Refusal {
        Refusal {
            reversed: Vec::new(),
            problem: Problem::WrongType {
                got: got.to_string(),
                expected,
            },
        }
    }

    pub(crate) fn undecodable(error: impl fmt::Display) -> Refusal {
        Refusal {
            reversed: Vec::new(),
            problem: Problem::Undecodable {
                error: error.to_string(),
            },
        }
    }

    /// The same refusal one level out: `segment` goes before the path so far.
    pub fn at(mut self, segment: Segment) -> Refusal {
        self.reversed.push(segment);
        self
    }

    /// The same refusal under `a.b` (fields, outermost first).
    pub fn under(mut self, path: &'static str) -> Refusal {
        self.reversed.extend(fields(path).rev());
        self
    }

    /// The path, outermost first.
    pub fn path(&self) -> FieldPath {
        FieldPath(self.reversed.iter().rev().cloned().collect())
    }

    /// The refusal as a whole resource's.
    pub fn of(self, kind: Kind, name: &str) -> Invalid {
        Invalid {
            kind,
            name: name.to_string(),
            path: self.path(),
            problem: self.problem,
        }
    }
}

/// Adds the enclosing field to a refusal on its way out.
pub trait At<T> {
    /// Under the fields `a.b` (outermost first).
    fn under(self, path: &'static str) -> Result<T, Refusal>;
    /// Under list entry `i`.
    fn index(self, i: usize) -> Result<T, Refusal>;
    /// Under the list entry named `name`.
    fn named(self, name: &str) -> Result<T, Refusal>;
    /// Under the map entry `key`.
    fn key(self, key: &str) -> Result<T, Refusal>;
}

impl<T> At<T> for Result<T, Refusal> {
    fn under(self, path: &'static str) -> Result<T, Refusal> {
        self.map_err(|r| r.under(path))
    }

    fn index(self, i: usize) -> Result<T, Refusal> {
        self.map_err(|r| r.at(Segment::Index(i)))
    }

    fn named(self, name: &str) -> Result<T, Refusal> {
        self.map_err(|r| r.at(Segment::Named(name.to_string())))
    }

    fn key(self, key: &str) -> Result<T, Refusal> {
        self.map_err(|r| r.at(Segment::Key(key.to_string())))
    }
}

/// Refuses `path` when `cond` holds.
pub(crate) fn refuse_if(cond: bool, path: &'static str) -> Result<(), Refusal> {
    if cond {
        Err(Refusal::unsupported(path))
    } else {
        Ok(())
    }
}

/// Why an xDS resource was refused (NACKed): which resource, the path of the field in it, and
/// what strait-proxy cannot honour there. The message is built from these only when shown, so
/// `strait proxy-status` tells the operator what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {}", describe(path, problem))]
pub struct Invalid {
    pub kind: Kind,
    pub name: String,
    pub path: FieldPath,
    pub problem: Problem,
}

fn describe(path: &FieldPath, problem: &Problem) -> String {
    let path = path.to_string();
    let sep = if path.is_empty() { "" } else { " " };
    match problem {
        Problem::Unsupported { detail: None } => {
            format!("{path}{sep}is not supported by strait-proxy")
        }
        Problem::Unsupported {
            detail: Some(detail),
        } => format!("{path}{sep}{detail} is not supported by strait-proxy"),
        Problem::BadValue { value, expected } => format!("{path}{sep}{value} is not {expected}"),
        Problem::Missing => format!("{path}{sep}is missing"),
        Problem::WrongType { got, expected } => {
            format!("{path}{sep}has type {got}, expected {expected}")
        }
        Problem::Undecodable { error } => format!("{path}{sep}does not decode: {error}"),
        Problem::Rule(rule) if path.is_empty() => rule.to_string(),
        Problem::Rule(rule) => format!("{path}: {rule}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_from_the_inside_out_and_shown_outermost_first() {
        let r: Result<(), Refusal> =
            Err(Refusal::unsupported_value("retry_policy.retry_on", "\"x\""));
        let r = r
            .under("route")
            .index(0)
            .under("routes")
            .named("reviews:9080");
        let invalid = r
            .unwrap_err()
            .under("virtual_hosts")
            .of(Kind::RouteConfiguration, "15080");
        assert_eq!(
            invalid.path.to_string(),
            "virtual_hosts[reviews:9080].routes[0].route.retry_policy.retry_on"
        );
        let invalid = Err::<(), _>(Refusal::missing("cluster"))
            .under("route")
            .key("envoy.filters.http.fault")
            .unwrap_err()
            .under("typed_per_filter_config")
            .of(Kind::RouteConfiguration, "r");
        assert_eq!(
            invalid.to_string(),
            "route configuration \"r\": typed_per_filter_config[\"envoy.filters.http.fault\"].route.cluster is missing"
        );
    }
}
