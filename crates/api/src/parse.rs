//! Reading resources from YAML or JSON: files, folders, standard input.
//!
//! Every document is parsed on its own, so one bad document does not hide the others, and every
//! problem names its file, document index and field path.

use serde_json::Value;

use crate::resource::{Kind, Resource, TypeError};
use crate::validate::Issue;

/// The largest document accepted, as Kubernetes limits an object (1.5 MiB in etcd).
pub const MAX_DOCUMENT_BYTES: usize = 1536 * 1024;
/// The largest input (file or standard input) read at once.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// Where a document came from: a file (or `-`) and its 0-based index among the file's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub index: usize,
}

/// A problem that stops a document (or a whole input) from being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{file}: not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8")]
    NotUtf8 { file: String, offset: usize },
    #[error(
        "{file}: input is {size} bytes; the limit is {MAX_INPUT_BYTES} bytes: split it into smaller files"
    )]
    InputTooLarge { file: String, size: usize },
    #[error(
        "document is {size} bytes; the limit for one resource is {MAX_DOCUMENT_BYTES} bytes: make it smaller"
    )]
    DocumentTooLarge { size: usize },
    #[error("malformed YAML: {0}")]
    Yaml(String),
    #[error("the document is not a mapping (an object with apiVersion, kind, metadata and spec)")]
    NotAnObject,
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(transparent)]
    Type(#[from] TypeError),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

impl ParseError {
    /// The field path the error is at, if any.
    pub fn path(&self) -> &str {
        match self {
            ParseError::Field { path, .. } => path,
            ParseError::Missing(field) => field,
            _ => "",
        }
    }

    /// The error as an issue for a report.
    pub fn to_issue(&self) -> Issue {
        match self {
            ParseError::Field { path, message } => Issue {
                path: path.clone(),
                message: message.clone(),
            },
            ParseError::Missing(field) => Issue {
                path: field.to_string(),
                message: "required: every resource has apiVersion, kind and metadata (is this a Kubernetes or Istio resource?)".to_string(),
            },
            other => Issue {
                path: other.path().to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// What became of one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A resource of a kind Strait handles (not yet validated).
    Resource(Box<Resource>),
    /// A kind Strait knows of but does not handle; skipped.
    Unsupported(String),
    /// The document could not be read.
    Invalid(ParseError),
}

/// One document of an input.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub source: Source,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub outcome: Outcome,
}

/// Reads every document of `bytes` (YAML, possibly several documents, or JSON).
/// `file` names the input in messages. `kind: List` documents are expanded into their items.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Vec<Parsed> {
    let whole = |e: ParseError| {
        vec![Parsed {
            source: Source {
                file: file.to_string(),
                index: 0,
            },
            api_version: String::new(),
            kind: String::new(),
            name: String::new(),
            namespace: None,
            outcome: Outcome::Invalid(e),
        }]
    };
    if bytes.len() > MAX_INPUT_BYTES {
        return whole(ParseError::InputTooLarge {
            file: file.to_string(),
            size: bytes.len(),
        });
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return whole(ParseError::NotUtf8 {
                file: file.to_string(),
                offset: e.valid_up_to(),
            });
        }
    };
    let mut out = Vec::new();
    let mut index = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let source = Source {
            file: file.to_string(),
            index,
        };
        match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(Value::Object(obj))
                if obj.get("kind").and_then(Value::as_str) == Some("List")
                    && obj.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = obj.get("items") {
                    for item in items {
                        out.push(parse_value(
                            Source {
                                file: file.to_string(),
                                index,
                            },
                            item.clone(),
                        ));
                        index += 1;
                    }
                }
                continue;
            }
            Ok(value) => out.push(parse_value(source, value)),
            Err(e) => {
                out.push(Parsed {
                    source,
                    api_version: String::new(),
                    kind: String::new(),
                    name: String::new(),
                    namespace: None,
                    outcome: Outcome::Invalid(ParseError::Yaml(e.to_string())),
                });
                // The YAML stream cannot be resumed after a syntax error.
                break;
            }
        }
        index += 1;
    }
    out
}

/// Types one already-parsed document.
pub fn parse_value(source: Source, value: Value) -> Parsed {
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let api_version = text("apiVersion");
    let kind = text("kind");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let outcome = type_value(&api_version, &kind, value);
    Parsed {
        source,
        api_version,
        kind,
        name,
        namespace,
        outcome,
    }
}

fn type_value(api_version: &str, kind: &str, value: Value) -> Outcome {
    if !value.is_object() {
        return Outcome::Invalid(ParseError::NotAnObject);
    }
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
    if size > MAX_DOCUMENT_BYTES {
        return Outcome::Invalid(ParseError::DocumentTooLarge { size });
    }
    if api_version.is_empty() {
        return Outcome::Invalid(ParseError::Missing("apiVersion"));
    }
    if kind.is_empty() {
        return Outcome::Invalid(ParseError::Missing("kind"));
    }
    let k = match Kind::from_type(api_version, kind) {
        Ok(k) => k,
        Err(e @ TypeError::Unsupported { .. }) => return Outcome::Unsupported(e.to_string()),
        Err(e) => return Outcome::Invalid(e.into()),
    };
    match Resource::from_value(k, value) {
        Ok(r) => Outcome::Resource(Box::new(r)),
        Err(e) => Outcome::Invalid(ParseError::Field {
            path: e.path,
            message: e.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_utf8_and_oversized_input() {
        let out = parse_bytes("x.yaml", b"kind: \xff\xfe");
        assert!(matches!(
            out[0].outcome,
            Outcome::Invalid(ParseError::NotUtf8 { offset: 6, .. })
        ));
        let big = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  annotations:\n    x: \"{}\"\n",
            "a".repeat(2 * MAX_DOCUMENT_BYTES)
        );
        let out = parse_bytes("big.yaml", big.as_bytes());
        assert!(matches!(
            out[0].outcome,
            Outcome::Invalid(ParseError::DocumentTooLarge { .. })
        ));
    }

    #[test]
    fn reports_malformed_yaml_with_its_location() {
        let out = parse_bytes("bad.yaml", b"apiVersion: v1\nkind: [unclosed\n");
        let Outcome::Invalid(ParseError::Yaml(msg)) = &out[0].outcome else {
            panic!("{:?}", out[0].outcome)
        };
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn skips_empty_documents_and_counts_the_rest() {
        let out = parse_bytes(
            "two.yaml",
            b"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n",
        );
        assert_eq!(out.len(), 2);
        assert!(matches!(out[0].outcome, Outcome::Resource(_)));
        assert!(matches!(out[1].outcome, Outcome::Unsupported(_)));
        assert_eq!(out[1].source.index, 1);
    }
}
