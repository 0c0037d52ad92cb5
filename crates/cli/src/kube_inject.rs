//! `strait kube-inject -f FILE [-o FILE]`: Istio's `istioctl kube-inject`, with Strait's sidecar.
//! The injection itself is `strait-inject`'s; this reads the file, the values and the cluster's
//! Kubernetes version from flags (there is no cluster to ask), and writes the result.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use strait_inject::{Injector, Values};

/// The most kube-inject reads from one file or standard input.
const MAX_INPUT_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct KubeInjectArgs {
    /// The workloads to inject: a YAML file (several documents and `kind: List` are fine) or
    /// `-` for standard input. Kinds without pods pass through unchanged.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Where to write the result (default: standard output).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The namespace of documents that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    injection: InjectionArgs,
}

/// What shapes the sidecar, shared by `kube-inject` and `inject-webhook`.
#[derive(clap::Args)]
pub struct InjectionArgs {
    /// Injection values (a subset of Istio's Helm values: global.hub, global.tag,
    /// global.proxy.*, sidecarInjectorWebhook.*); what it does not set keeps its default.
    #[arg(long = "values", value_name = "FILE")]
    values: Option<PathBuf>,
    /// The oldest kubelet version in the cluster. With 1.33 or newer, the sidecar is a native
    /// sidecar (an init container with `restartPolicy: Always`), as Istio decides with
    /// `ENABLE_NATIVE_SIDECARS=auto`; the pod annotation `sidecar.istio.io/nativeSidecar` and
    /// the values' `sidecarInjectorWebhook.nativeSidecars` override it.
    #[arg(long, value_name = "MAJOR.MINOR", default_value = "1.33")]
    kubelet_version: String,
}

impl InjectionArgs {
    pub fn injector(&self) -> Result<Injector> {
        let values = match &self.values {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read the values file", path.display()))?;
                Values::from_yaml(&path.display().to_string(), &text)?
            }
            None => Values::default(),
        };
        let mut injector = Injector::new(values);
        injector.cluster_native = parse_version(&self.kubelet_version)? >= (1, 33);
        Ok(injector)
    }
}

/// `1.33`, `v1.34.0` → (1, 33).
fn parse_version(text: &str) -> Result<(u32, u32)> {
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let parsed = (|| {
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    })();
    parsed.with_context(|| {
        format!("--kubelet-version {text:?}: write the version as MAJOR.MINOR, like 1.33")
    })
}

fn read_input(file: &str) -> Result<(String, String)> {
    let mut bytes = Vec::new();
    let name = if file == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        "-".to_string()
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("{file}: cannot read it"))?
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{file}: cannot read it"))?;
        file.to_string()
    };
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        bail!("{name}: the input is larger than {MAX_INPUT_BYTES} bytes: split it");
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((name, text))
}

pub fn run(args: KubeInjectArgs) -> Result<ExitCode> {
    let injector = args.injection.injector()?;
    let (name, text) = read_input(&args.file)?;
    let injected = injector.kube_inject(&name, &text, &args.namespace)?;
    for warning in &injected.warnings {
        eprintln!("{warning}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, &injected.output)
            .with_context(|| format!("{}: cannot write it", path.display()))?,
        None => std::io::stdout()
            .lock()
            .write_all(injected.output.as_bytes())
            .context("writing standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.33").unwrap(), (1, 33));
        assert_eq!(parse_version("v1.28.3").unwrap(), (1, 28));
        let e = parse_version("latest").unwrap_err().to_string();
        assert!(
            e.contains("--kubelet-version") && e.contains("MAJOR.MINOR"),
            "{e}"
        );
    }
}
