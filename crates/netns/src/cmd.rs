//! Running `ip` and `iptables-restore`, and the crate's errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What went wrong building or removing a pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{tool}` is not installed: install it with `apt-get install -y iptables iproute2`")]
    MissingTool { tool: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free address left in the pod range {range}: stop some pods or give a larger range")]
    Exhausted { range: String },
    #[error("invalid pod range {text:?}: {reason}; write an IPv4 CIDR such as 10.44.0.0/16")]
    BadRange { text: String, reason: &'static str },
    #[error(
        "a pod named {name:?} is already running (pid {pid}): stop it or choose another --name"
    )]
    NameTaken { name: String, pid: u32 },
    #[error("invalid annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: String,
        value: String,
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Runs `tool ARGS`, returns its stdout; a missing tool or a failure is an [`Error`].
pub fn run_tool(tool: &str, args: &[&str]) -> Result<String, Error> {
    run_tool_stdin(tool, args, None)
}

/// [`run_tool`] with `input` on standard input.
pub fn run_tool_stdin(tool: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let command = std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingTool {
                tool: tool.to_string(),
            },
            _ => Error::Failed {
                command: command.clone(),
                status: "not started".into(),
                stderr: e.to_string(),
            },
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::Failed {
                command: command.clone(),
                status: "stdin".into(),
                stderr: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Failed {
        command: command.clone(),
        status: "wait".into(),
        stderr: e.to_string(),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // `ip netns exec` reports a missing program on stderr with status 255.
    if let Some(rest) = stderr.strip_prefix("exec of \"")
        && let Some((prog, _)) = rest.split_once('"')
        && stderr.contains("No such file")
    {
        return Err(Error::MissingTool {
            tool: prog.to_string(),
        });
    }
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_the_install_line() {
        let e = run_tool("strait-no-such-tool", &["x"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("strait-no-such-tool"), "{text}");
        assert!(
            text.contains("apt-get install -y iptables iproute2"),
            "{text}"
        );
    }

    #[test]
    fn a_failing_tool_reports_its_stderr() {
        let e = run_tool("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("nope"), "{text}");
        assert_eq!(run_tool("sh", &["-c", "echo yes"]).unwrap(), "yes\n");
        assert_eq!(
            run_tool_stdin("cat", &[], Some("fed")).unwrap(),
            "fed".to_string()
        );
    }
}
