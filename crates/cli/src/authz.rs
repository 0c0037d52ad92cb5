//! `strait authz check`: what the destination's proxy would decide for a request from a source
//! workload, evaluated by the control plane over the config it sends that proxy (the RBAC
//! filters AuthorizationPolicy becomes), with the engine strait-proxy enforces them with. No
//! traffic is sent.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::Connection;

#[derive(clap::Subcommand)]
pub enum AuthzCommand {
    /// Decide one request without sending it: `strait authz check --from sleep.foo --to
    /// httpbin.foo --path /ip`. Exit code 0 when allowed, 3 when denied, 4 when a CUSTOM
    /// policy sends it to an external authorizer (whose answer decides).
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The destination workload: NAME.NAMESPACE (or NAME in `default`), as `strait
    /// proxy-status` lists it.
    #[arg(long, value_name = "WORKLOAD")]
    to: String,
    /// The source workload (its identity, address and certificate); without it, a client
    /// outside the mesh.
    #[arg(long, value_name = "WORKLOAD")]
    from: Option<String>,
    /// The destination's port (default: its only inbound port); a port no Service of the
    /// workload declares takes the passthrough chain, as the proxy does.
    #[arg(long)]
    port: Option<u16>,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// The Host header (default: WORKLOAD:PORT).
    #[arg(long)]
    host: Option<String>,
    /// A request header, `NAME=VALUE` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A JWT read from FILE, sent as `Authorization: Bearer TOKEN`: the destination's
    /// RequestAuthentication checks it as its proxy would (signature, issuer, audiences,
    /// expiry), and the policies' requestPrincipals and request.auth.* see its claims.
    #[arg(long, value_name = "FILE")]
    jwt: Option<std::path::PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: crate::ReportFormat,
}

/// `NAME.NAMESPACE` or `NAME` (namespace `default`).
fn workload(s: &str) -> (String, String) {
    match s.split_once('.') {
        Some((name, ns)) => (name.to_string(), ns.to_string()),
        None => (s.to_string(), "default".to_string()),
    }
}

pub fn run(conn: &Connection, cmd: AuthzCommand) -> Result<ExitCode> {
    let AuthzCommand::Check(args) = cmd;
    let (to, to_namespace) = workload(&args.to);
    let from = args.from.as_deref().map(workload);
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once('=') else {
            bail!("--header {h:?}: write NAME=VALUE, e.g. --header x-token=admin");
        };
        headers.push((k.trim().to_string(), v.to_string()));
    }
    let jwt = match &args.jwt {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("--jwt {}: cannot read the token file", path.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                bail!(
                    "--jwt {}: the file is empty; it must hold one JWT (three base64url parts joined by dots)",
                    path.display()
                );
            }
            Some(token)
        }
        None => None,
    };
    let body = json!({
        "to": to,
        "to_namespace": to_namespace,
        "from": from.as_ref().map(|(n, _)| n),
        "from_namespace": from.as_ref().map_or("default", |(_, ns)| ns.as_str()),
        "port": args.port,
        "method": args.method,
        "path": args.path,
        "host": args.host,
        "headers": headers,
        "jwt": jwt,
    });
    let client = conn.connect()?;
    let answer = client.request("POST", "/debug/authz/check", Some(&body))?;
    if !answer.is_success() {
        bail!("{}", answer.message());
    }
    let v = answer.body;
    match args.output {
        crate::ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        crate::ReportFormat::Text => print!("{}", text(&args, &v)),
    }
    Ok(match v["allowed"].as_bool() {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::from(3),
        // A CUSTOM policy: the external authorizer decides.
        None => ExitCode::from(4),
    })
}

fn text(args: &CheckArgs, v: &Value) -> String {
    let verdict = match v["allowed"].as_bool() {
        Some(true) => "ALLOW",
        Some(false) => "DENY",
        None => "CUSTOM",
    };
    let from = args.from.as_deref().unwrap_or("a client outside the mesh");
    let dest = &v["destination"];
    let mut out = format!(
        "{verdict} {} {} from {from} to {}:{} (listener {}, chain {})\n",
        args.method,
        args.path,
        args.to,
        dest["port"],
        dest["listener"].as_str().unwrap_or("?"),
        dest["chain"].as_str().unwrap_or("?"),
    );
    match v["source"]["principal"].as_str() {
        Some(p) => out.push_str(&format!("  peer identity (mutual TLS): {p}\n")),
        None => out.push_str("  peer identity: none (plaintext)\n"),
    }
    for f in v["filters"].as_array().into_iter().flatten() {
        if f["filter"].as_str() == Some("jwt_authn") {
            out.push_str(&format!(
                "  jwt_authn: {}{}\n",
                if f["allowed"].as_bool() == Some(true) {
                    format!("token {}", f["token"].as_str().unwrap_or("?"))
                } else {
                    "token refused".to_string()
                },
                f["explanation"]
                    .as_str()
                    .map_or(String::new(), |e| format!(" ({e})"))
            ));
            continue;
        }
        if f["filter"].as_str() == Some("ext_authz") {
            out.push_str(&format!(
                "  http ext_authz {}: {}\n",
                f["cluster"].as_str().unwrap_or("?"),
                match f["policy"].as_str() {
                    Some(p) => format!("called (CUSTOM {p})"),
                    None => "not called (no CUSTOM rule matched)".to_string(),
                }
            ));
            continue;
        }
        let policy = f["policy"].as_str().unwrap_or("no policy matched");
        out.push_str(&format!(
            "  {} RBAC {}: {}{}\n",
            f["layer"].as_str().unwrap_or("?"),
            f["action"].as_str().unwrap_or("?"),
            if f["allowed"].as_bool() == Some(true) {
                "allowed"
            } else {
                "denied"
            },
            if f["policy"].is_null() && f["allowed"].as_bool() == Some(true) {
                String::new()
            } else {
                format!(" ({policy})")
            }
        ));
        if let Some(shadow) = f["shadow"].as_object() {
            if shadow["custom"].as_bool() == Some(true) {
                out.push_str(&format!(
                    "    CUSTOM rule matched: {}\n",
                    shadow["policy"].as_str().unwrap_or("?")
                ));
                continue;
            }
            out.push_str(&format!(
                "    dry run: {} would {}\n",
                shadow["policy"].as_str().unwrap_or("no policy"),
                if shadow["would_allow"].as_bool() == Some(true) {
                    "allow"
                } else {
                    "deny"
                }
            ));
        }
    }
    if let Some(reason) = v["reason"].as_str() {
        out.push_str(&format!(
            "  why: {reason} ({})\n",
            v["decided_by"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "  the client sees: {}\n",
        v["outcome"].as_str().unwrap_or("?")
    ));
    out
}
