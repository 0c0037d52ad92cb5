//! `strait apply`, `strait get`, `strait delete`, `strait create secret`.

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
/// The API's query parameter that shows Secrets' data.
pub const SHOW_SECRETS: &str = "showSecrets=true";

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
    show_secrets: bool,
) -> Result<ExitCode> {
    let kind = lookup_kind(kind)?;
    if all_namespaces && name.is_some() {
        bail!("a name cannot be used with --all-namespaces: give -n NAMESPACE instead");
    }
    if show_secrets && kind != Kind::Secret {
        bail!("--show-secrets is for Secrets only");
    }
    let query = if show_secrets {
        format!("?{SHOW_SECRETS}")
    } else {
        String::new()
    };
    let client = conn.connect()?;
    let ns = if all_namespaces {
        None
    } else {
        Some(namespace.unwrap_or(DEFAULT_NAMESPACE))
    };
    let collection = kind.collection_path(ns);
    let (items, single) = match name {
        Some(n) => {
            let answer = client.request("GET", &format!("{collection}/{n}{query}"), None)?;
            if !answer.is_success() {
                bail!("{}", answer.message());
            }
            (vec![answer.body], true)
        }
        None => {
            let answer = client.request("GET", &format!("{collection}{query}"), None)?;
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

/// `strait create secret ...`.
#[derive(clap::Subcommand)]
pub enum CreateKind {
    /// A Secret, from files.
    Secret {
        #[command(subcommand)]
        secret: SecretArgs,
    },
}

/// kubectl's `create secret tls` and `create secret generic` (from files).
#[derive(clap::Subcommand)]
pub enum SecretArgs {
    /// A `kubernetes.io/tls` Secret: `tls.crt` and `tls.key` from PEM files.
    Tls {
        name: String,
        /// The certificate (chain), PEM.
        #[arg(long)]
        cert: std::path::PathBuf,
        /// Its private key, PEM.
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// An `Opaque` Secret: one key per file (`--from-file=KEY=PATH`, or `--from-file=PATH` for
    /// the file's name as the key).
    Generic {
        name: String,
        #[arg(long = "from-file", required = true)]
        from_file: Vec<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

/// Creates a Secret (it must not exist, as with kubectl); prints `secret/NAME created`.
pub fn create(conn: &Connection, what: CreateKind) -> Result<ExitCode> {
    use base64::Engine;
    let CreateKind::Secret { secret } = what;
    let (name, namespace, secret_type, files) = match secret {
        SecretArgs::Tls {
            name,
            cert,
            key,
            namespace,
        } => (
            name,
            namespace,
            strait_api::core::secret::TLS_TYPE,
            vec![("tls.crt".to_string(), cert), ("tls.key".to_string(), key)],
        ),
        SecretArgs::Generic {
            name,
            from_file,
            namespace,
        } => {
            let mut files = Vec::new();
            for spec in from_file {
                let (key, path) = match spec.split_once('=') {
                    Some((k, p)) => (k.to_string(), std::path::PathBuf::from(p)),
                    None => {
                        let path = std::path::PathBuf::from(&spec);
                        let key = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .ok_or_else(|| anyhow!("--from-file={spec}: name the key: KEY=PATH"))?
                            .to_string();
                        (key, path)
                    }
                };
                files.push((key, path));
            }
            (
                name,
                namespace,
                strait_api::core::secret::OPAQUE_TYPE,
                files,
            )
        }
    };
    let ns = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let mut data = serde_json::Map::new();
    for (key, path) in files {
        let bytes =
            std::fs::read(&path).map_err(|e| anyhow!("{}: cannot read it: {e}", path.display()))?;
        if data
            .insert(
                key.clone(),
                json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            )
            .is_some()
        {
            bail!("the key {key:?} is given twice");
        }
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": secret_type,
        "data": data,
    });
    // Validated here as on the server, so that a mistake is reported before anything is sent.
    let parsed = strait_api::parse_value(
        strait_api::Source {
            file: "create secret".into(),
            index: 0,
        },
        body.clone(),
    );
    match &parsed.outcome {
        Outcome::Resource(r) => {
            let report = r.validate();
            if let Some(e) = report.errors.first() {
                bail!("secret/{name}: {e}");
            }
        }
        Outcome::Invalid(e) => bail!("secret/{name}: {}", e.to_issue()),
        Outcome::Unsupported(why) => bail!("secret/{name}: {why}"),
    }
    let client = conn.connect()?;
    let answer = client.request(
        "POST",
        &Kind::Secret.collection_path(Some(&ns)),
        Some(&body),
    )?;
    if !answer.is_success() {
        bail!("secret/{name}: {}", answer.message());
    }
    println!("secret/{name} created");
    Ok(ExitCode::SUCCESS)
}
