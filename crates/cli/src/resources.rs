//! `strait apply`, `strait get`, `strait delete`.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use strait_api::Kind;
use strait_api::parse::Outcome;

use crate::GetFormat;
use crate::client::{Client, Connection};
use crate::input::read_all;
use crate::output;

const DEFAULT_NAMESPACE: &str = "default";

/// Every document must be a valid resource before anything is applied: one bad document changes
/// nothing. Kinds Strait does not handle are skipped with a note.
pub fn apply(conn: &Connection, files: &[String], namespace: Option<&str>) -> Result<ExitCode> {
    let docs = read_all(files)?;
    let mut resources = Vec::new();
    let mut failed = false;
    for doc in &docs {
        match &doc.outcome {
            Outcome::Resource(r) => {
                let report = r.validate();
                for w in &report.warnings {
                    eprintln!("warning: {}: {w}", output::describe(doc));
                }
                if report.errors.is_empty() {
                    resources.push(r.as_ref().clone());
                } else {
                    failed = true;
                    for e in &report.errors {
                        eprintln!("error: {}: {e}", output::describe(doc));
                    }
                }
            }
            Outcome::Unsupported(why) => eprintln!("skipped: {}: {why}", output::describe(doc)),
            Outcome::Invalid(e) => {
                failed = true;
                eprintln!("error: {}: {}", output::describe(doc), e.to_issue());
            }
        }
    }
    if failed {
        bail!("nothing was applied: fix the errors above and apply again");
    }
    let mut items = Vec::with_capacity(resources.len());
    let mut labels = Vec::with_capacity(resources.len());
    for r in &resources {
        let ns = target_namespace(r.kind, r.namespace(), namespace)?;
        let mut body = r.raw.clone();
        if let Some(ns) = &ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        labels.push(format!("{}/{}", r.kind.qualified_name(), r.name()));
        items.push(body);
    }
    if items.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // One request, one store transaction: every resource is applied, or none is (also if the
    // control plane stops midway).
    let client = conn.connect()?;
    let answer = client.request("POST", "/batch", Some(&json!({"items": items})))?;
    if !answer.is_success() {
        bail!("nothing was applied: {}", answer.message());
    }
    let results = answer.body["items"].as_array().cloned().unwrap_or_default();
    if results.len() != labels.len() {
        bail!(
            "the control plane answered {} results for {} resources: is it the same version as this strait?",
            results.len(),
            labels.len()
        );
    }
    for (label, result) in labels.iter().zip(&results) {
        println!("{label} {}", result["result"].as_str().unwrap_or("applied"));
    }
    Ok(ExitCode::SUCCESS)
}

/// The namespace a resource goes to: its own, else `-n`, else `default`; the two must agree.
fn target_namespace(kind: Kind, own: Option<&str>, flag: Option<&str>) -> Result<Option<String>> {
    if !kind.namespaced() {
        return Ok(None);
    }
    match (own, flag) {
        (Some(o), Some(f)) if o != f => bail!(
            "the namespace of the resource ({o:?}) does not match --namespace {f:?}: drop one of them"
        ),
        (Some(o), _) => Ok(Some(o.to_string())),
        (None, Some(f)) => Ok(Some(f.to_string())),
        (None, None) => Ok(Some(DEFAULT_NAMESPACE.to_string())),
    }
}

fn lookup_kind(word: &str) -> Result<Kind> {
    Kind::lookup(word).ok_or_else(|| {
        let known: Vec<String> = Kind::ALL
            .iter()
            .map(|k| match k.short_names().first() {
                Some(s) => format!("{} ({s})", k.plural()),
                None => k.plural().to_string(),
            })
            .collect();
        anyhow!("unknown kind {word:?}: use one of {}", known.join(", "))
    })
}

pub fn get(
    conn: &Connection,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    all_namespaces: bool,
    format: GetFormat,
) -> Result<ExitCode> {
    let kind = lookup_kind(kind)?;
    if all_namespaces && name.is_some() {
        bail!("a name cannot be used with --all-namespaces: give -n NAMESPACE instead");
    }
    let client = conn.connect()?;
    let ns = if all_namespaces {
        None
    } else {
        Some(namespace.unwrap_or(DEFAULT_NAMESPACE))
    };
    let collection = kind.collection_path(ns);
    let (items, single) = match name {
        Some(n) => {
            let answer = client.request("GET", &format!("{collection}/{n}"), None)?;
            if !answer.is_success() {
                bail!("{}", answer.message());
            }
            (vec![answer.body], true)
        }
        None => {
            let answer = client.request("GET", &collection, None)?;
            if !answer.is_success() {
                bail!("{}", answer.message());
            }
            let items = answer.body["items"].as_array().cloned().unwrap_or_default();
            (items, false)
        }
    };
    match format {
        GetFormat::Table => {
            if items.is_empty() {
                match ns {
                    Some(ns) if kind.namespaced() => {
                        eprintln!("No resources found in {ns} namespace.")
                    }
                    _ => eprintln!("No resources found."),
                }
            } else {
                print!("{}", output::table(kind, &items, all_namespaces));
            }
        }
        GetFormat::Json | GetFormat::Yaml => {
            let value = if single {
                items.into_iter().next().unwrap_or(Value::Null)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            if matches!(format, GetFormat::Json) {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_yaml_ng::to_string(&value)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(
    conn: &Connection,
    kind: Option<&str>,
    name: Option<&str>,
    files: &[String],
    namespace: Option<&str>,
) -> Result<ExitCode> {
    let targets: Vec<(Kind, Option<String>, String)> = match (kind, name, files.is_empty()) {
        (Some(k), Some(n), true) => {
            let kind = lookup_kind(k)?;
            vec![(
                kind,
                target_namespace(kind, None, namespace)?,
                n.to_string(),
            )]
        }
        (None, None, false) => {
            let docs = read_all(files)?;
            let mut targets = Vec::new();
            for doc in &docs {
                match &doc.outcome {
                    Outcome::Resource(r) => {
                        targets.push((
                            r.kind,
                            target_namespace(r.kind, r.namespace(), namespace)?,
                            r.name().to_string(),
                        ));
                    }
                    Outcome::Unsupported(why) => {
                        eprintln!("skipped: {}: {why}", output::describe(doc))
                    }
                    Outcome::Invalid(e) => bail!("{}: {}", output::describe(doc), e.to_issue()),
                }
            }
            targets
        }
        _ => bail!(
            "give either KIND NAME or -f FILE: `strait delete vs reviews` or `strait delete -f reviews.yaml`"
        ),
    };
    let client: Client = conn.connect()?;
    let mut missing = false;
    for (kind, ns, name) in targets {
        let path = format!("{}/{name}", kind.collection_path(ns.as_deref()));
        let answer = client.request("DELETE", &path, None)?;
        let label = format!("{}/{name}", kind.qualified_name());
        if answer.is_success() {
            println!("{label} deleted");
        } else if answer.code == 404 {
            missing = true;
            eprintln!("error: {label} not found");
        } else {
            bail!("{label}: {}", answer.message());
        }
    }
    Ok(if missing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
