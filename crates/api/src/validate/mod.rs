//! Validation as strict as Istio's validating webhook.
//!
//! Each kind has a `validate` function that appends errors and warnings to a [`Report`], each
//! at the [`FieldPath`] of the offending field (`spec.http[0].route[1].weight`). Messages follow
//! Istio's wording where users may search for it, and say how to fix the problem.

pub mod common;

use std::fmt;

use serde::Serialize;

/// Where in a resource a problem is: `spec.http[0].match[1].uri`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        Self(name.to_string())
    }

    /// `self.name`
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// `self[key]`, for map entries.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem: the field it is at and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The errors and warnings found in one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
}

impl Report {
    pub fn error(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.errors.push(Issue {
            path: at.0.clone(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.warnings.push(Issue {
            path: at.0.clone(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, at `at`.
    pub fn check(&mut self, at: &FieldPath, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(at, message);
        }
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn merge(&mut self, other: Report) {
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}
