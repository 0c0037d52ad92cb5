//! `strait validate` (each resource on its own) and `strait analyze` (resources together, like
//! `istioctl analyze`: the analyzers are in `strait-analyze`; this is their front end: files,
//! `--live`, flags, output and exit codes).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use strait_analyze::{Level, Message, Object, Options, Source, Suppression};
use strait_api::Issue;
use strait_api::Kind;
use strait_api::parse::{Outcome, Parsed};

use crate::ReportFormat;
use crate::client::Connection;
use crate::input::read_all;
use crate::output::describe;

/// The report for one document, as `-o json` prints it.
#[derive(Serialize)]
struct DocReport {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    file: String,
    index: usize,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

#[derive(Serialize, Clone)]
struct Finding {
    path: String,
    message: String,
}

impl From<&Issue> for Finding {
    fn from(i: &Issue) -> Self {
        Finding {
            path: i.path.clone(),
            message: i.message.clone(),
        }
    }
}

fn report_for(doc: &Parsed) -> DocReport {
    let mut r = DocReport {
        api_version: doc.api_version.clone(),
        kind: doc.kind.clone(),
        namespace: doc.namespace.clone(),
        name: doc.name.clone(),
        file: doc.source.file.clone(),
        index: doc.source.index,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    match &doc.outcome {
        Outcome::Resource(res) => {
            let v = res.validate();
            r.errors.extend(v.errors.iter().map(Finding::from));
            r.warnings.extend(v.warnings.iter().map(Finding::from));
        }
        Outcome::Unsupported(why) => r.warnings.push(Finding {
            path: String::new(),
            message: why.clone(),
        }),
        Outcome::Invalid(e) => r.errors.push(Finding::from(&e.to_issue())),
    }
    r
}

pub fn validate(files: &[String], format: ReportFormat) -> Result<ExitCode> {
    let docs = read_all(files)?;
    let reports: Vec<DocReport> = docs.iter().map(report_for).collect();
    print_reports(&docs, &reports, format)
}

fn print_reports(docs: &[Parsed], reports: &[DocReport], format: ReportFormat) -> Result<ExitCode> {
    let failed = reports.iter().any(|r| !r.errors.is_empty());
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(reports)?),
        ReportFormat::Text => {
            let (mut ok, mut bad, mut skipped) = (0, 0, 0);
            for (doc, r) in docs.iter().zip(reports) {
                let what = describe(doc);
                for e in &r.errors {
                    println!("Error {what}: {}", at(e));
                }
                for w in &r.warnings {
                    println!("Warning {what}: {}", at(w));
                }
                match (&doc.outcome, r.errors.is_empty()) {
                    (Outcome::Unsupported(_), _) => skipped += 1,
                    (_, true) => ok += 1,
                    (_, false) => bad += 1,
                }
            }
            let skipped = if skipped > 0 {
                format!(", {skipped} skipped")
            } else {
                String::new()
            };
            eprintln!("{} resources: {ok} valid, {bad} invalid{skipped}", ok + bad);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn at(f: &Finding) -> String {
    if f.path.is_empty() {
        f.message.clone()
    } else {
        format!("{}: {}", f.path, f.message)
    }
}

/// `strait analyze`'s flags, after `istioctl analyze`'s.
#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Files, folders (read recursively: .yaml, .yml, .json) or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Also analyze what the control plane holds (a file's version of a resource replaces it).
    #[arg(long)]
    live: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value = "log")]
    output: AnalyzeFormat,
    /// Drop messages: CODE=KIND NAME, `*` for any text ("IST0102=Namespace frod",
    /// "IST0107=Pod *.default"). Repeat for more.
    #[arg(short = 'S', long = "suppress")]
    suppress: Vec<String>,
    /// The lowest level that makes the exit code 79: Info, Warning or Error.
    #[arg(long, default_value = "Error", value_parser = parse_level)]
    failure_threshold: Level,
    /// The lowest level printed: Info, Warning or Error.
    #[arg(long, default_value = "Info", value_parser = parse_level)]
    output_threshold: Level,
    /// A MeshConfig file merged over Istio's defaults.
    #[arg(long = "meshConfigFile", alias = "mesh-config-file")]
    mesh_config_file: Option<PathBuf>,
    /// The namespace of resources that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Also run Istio's alpha-annotation analyzer (left out by default, as istioctl does).
    #[arg(long)]
    alpha: bool,
}

/// `log` is istioctl's name for the text output.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AnalyzeFormat {
    #[value(alias = "text")]
    Log,
    Json,
    Yaml,
}

impl AnalyzeArgs {
    pub fn live(&self) -> bool {
        self.live
    }
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| format!("{s:?}: use Info, Warning or Error"))
}

/// istioctl's exit codes: 79 when a message reaches the failure threshold, 65 when an input
/// could not be parsed.
const EXIT_ISSUES: u8 = 79;
const EXIT_DATA_ERROR: u8 = 65;

/// One message as `-o json|yaml` prints it (istioctl's fields, plus `resource`, `name` and the
/// fix `hint`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonMessage {
    code: &'static str,
    level: &'static str,
    name: &'static str,
    message: String,
    resource: String,
    /// istioctl's name for the resource.
    origin: String,
    /// Where the resource came from: `file[index]`, or `live`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    documentation_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

impl From<&Message> for JsonMessage {
    fn from(m: &Message) -> Self {
        JsonMessage {
            code: m.code.code,
            level: m.code.level.as_str(),
            name: m.code.name,
            message: m.text.clone(),
            resource: m.subject.to_string(),
            origin: m.subject.to_string(),
            reference: m.source.as_ref().map(|s| {
                if s.file.starts_with("live:") {
                    "live".to_string()
                } else {
                    format!("{}[{}]", s.file, s.index)
                }
            }),
            documentation_url: m.documentation_url(),
            hint: m.hint.clone(),
        }
    }
}

pub fn analyze(args: &AnalyzeArgs, live: Option<&Connection>) -> Result<ExitCode> {
    if args.files.is_empty() && live.is_none() {
        bail!("nothing to analyze: give -f FILE... and/or --live");
    }
    let suppressions = args
        .suppress
        .iter()
        .map(|s| s.parse::<Suppression>())
        .collect::<Result<Vec<_>, _>>()?;
    let (mut objects, unparsed) = read_objects(&args.files, &args.namespace)?;
    for u in &unparsed {
        eprintln!(
            "error: {}: malformed YAML: {}; the rest of the file is not analyzed",
            u.file, u.error
        );
    }
    if let Some(conn) = live {
        let from_files: BTreeSet<(String, String, String, String)> = objects
            .iter()
            .map(|o| {
                (
                    o.group.clone(),
                    o.kind.clone(),
                    o.namespace.clone(),
                    o.name.clone(),
                )
            })
            .collect();
        for o in fetch_live(conn)? {
            let key = (
                o.group.clone(),
                o.kind.clone(),
                o.namespace.clone(),
                o.name.clone(),
            );
            if !from_files.contains(&key) {
                objects.push(o);
            }
        }
    }
    let mut options = Options {
        default_namespace: args.namespace.clone(),
        ..Options::default()
    };
    if let Some(path) = &args.mesh_config_file {
        // The same reader as `strait control-plane --mesh-config`: a bare MeshConfig, the
        // `istio` ConfigMap (or its `data.mesh`), or an IstioOperator/Helm `meshConfig`.
        let mesh = strait_api::mesh_config::load(path)?;
        options.mesh_config = Some(mesh.raw);
    }
    let analyzers: Vec<&dyn strait_analyze::Analyzer> = strait_analyze::analyzers::all()
        .into_iter()
        .filter(|a| a.default_on() || (args.alpha && a.name() == "maturity.AlphaAnalyzer"))
        .collect();
    let report = strait_analyze::analyze(&objects, &analyzers, &options);
    let messages: Vec<&Message> = report
        .messages
        .iter()
        .filter(|m| !suppressions.iter().any(|s| s.matches(m)))
        .collect();
    let shown: Vec<&Message> = messages
        .iter()
        .copied()
        .filter(|m| m.level() <= args.output_threshold)
        .collect();
    let target = match (args.files.is_empty(), live.is_some()) {
        (false, true) => "the files and the control plane",
        (false, false) => "the files",
        (true, _) => "the control plane",
    };
    match args.output {
        AnalyzeFormat::Log => {
            for m in &shown {
                println!("{m}");
                if let Some(h) = &m.hint {
                    println!("    hint: {h}");
                }
            }
            if shown.is_empty() {
                eprintln!("\u{2714} No validation issues found when analyzing {target}.");
            }
            if !report.skipped.is_empty() {
                let names: Vec<&str> = report.skipped.iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "note: {} checks skipped, the input has no workloads (Pods, Deployments or WorkloadEntries): {}",
                    names.len(),
                    names.join(", ")
                );
            }
        }
        AnalyzeFormat::Json => {
            let out: Vec<JsonMessage> = shown.iter().map(|m| JsonMessage::from(*m)).collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        AnalyzeFormat::Yaml => {
            let out: Vec<JsonMessage> = shown.iter().map(|m| JsonMessage::from(*m)).collect();
            print!("{}", serde_yaml_ng::to_string(&out)?);
        }
    }
    if !unparsed.is_empty() {
        eprintln!("error: some files couldn't be parsed");
        return Ok(ExitCode::from(EXIT_DATA_ERROR));
    }
    if messages.iter().any(|m| m.level() <= args.failure_threshold) {
        eprintln!(
            "error: analyzers found issues when analyzing {target}; see docs/analyze.md for each code"
        );
        return Ok(ExitCode::from(EXIT_ISSUES));
    }
    Ok(ExitCode::SUCCESS)
}

/// A file whose YAML could not be read to the end, and why.
struct Unparsed {
    file: String,
    error: String,
}

/// Every document in `paths` (files, folders, `-`) as an object, with the files whose YAML
/// could not be read to the end.
fn read_objects(paths: &[String], namespace: &str) -> Result<(Vec<Object>, Vec<Unparsed>)> {
    let mut objects = Vec::new();
    let mut unparsed = Vec::new();
    let mut add = |name: &str, bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let (docs, err) = strait_analyze::object::parse_documents(&text);
        for (index, doc) in docs.into_iter().enumerate() {
            let source = Source {
                file: name.to_string(),
                index,
            };
            objects.extend(Object::from_value(doc, Some(source), namespace));
        }
        if let Some(error) = err {
            unparsed.push(Unparsed {
                file: name.to_string(),
                error,
            });
        }
    };
    for p in paths {
        if p == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(strait_api::parse::MAX_INPUT_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            add("-", &buf);
            continue;
        }
        let path = Path::new(p);
        let meta = std::fs::metadata(path).with_context(|| format!("{p}: cannot read it"))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!("{p}: the folder has no .yaml, .yml or .json files");
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let name = f.display().to_string();
            let len = std::fs::metadata(&f)?.len();
            if len > strait_api::parse::MAX_INPUT_BYTES as u64 {
                bail!(
                    "{name}: the file is {len} bytes; the limit is {} bytes: split it",
                    strait_api::parse::MAX_INPUT_BYTES
                );
            }
            let bytes = std::fs::read(&f).with_context(|| format!("{name}: cannot read it"))?;
            add(&name, &bytes);
        }
    }
    Ok((objects, unparsed))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list it", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Every resource the control plane holds.
fn fetch_live(conn: &Connection) -> Result<Vec<Object>> {
    let client = conn.connect()?;
    let mut out = Vec::new();
    for kind in Kind::ALL {
        // The Secret analyzers read certificates (gateway credentials): with the data.
        let path = if kind == Kind::Secret {
            format!(
                "{}?{}",
                kind.collection_path(None),
                crate::resources::SHOW_SECRETS
            )
        } else {
            kind.collection_path(None)
        };
        let answer = client.request("GET", &path, None)?;
        if !answer.is_success() {
            bail!(
                "listing {} from the control plane: {}",
                kind.plural(),
                answer.message()
            );
        }
        let items = answer.body["items"].as_array().cloned().unwrap_or_default();
        for (index, mut item) in items.into_iter().enumerate() {
            // Lists may leave out each item's type.
            if item.get("kind").is_none() {
                item["kind"] = Value::from(kind.name());
                item["apiVersion"] = Value::from(kind.api_version());
            }
            let source = Source {
                file: format!("live:{}", kind.plural()),
                index,
            };
            out.extend(Object::from_value(item, Some(source), "default"));
        }
    }
    Ok(out)
}
