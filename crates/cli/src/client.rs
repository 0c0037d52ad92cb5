//! Talking to the control plane's API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::control_plane;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15014";

/// How to reach the control plane, as given on the command line.
pub struct Connection {
    pub server: Option<String>,
    pub token: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// A connected API client.
pub struct Client {
    agent: ureq::Agent,
    /// The control plane's API, or several replicas' (`--server A,B`): tried in turn, starting
    /// with the one that answered last.
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    token: String,
}

/// An API answer: the HTTP status and the JSON body (a Status object on errors).
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The server's message for an error answer.
    pub fn message(&self) -> String {
        self.body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", self.code))
    }
}

impl Connection {
    pub fn connect(&self) -> Result<Client> {
        let dir = control_plane::data_dir(self.data_dir.as_deref());
        let base = match &self.server {
            Some(s) => s.clone(),
            None => std::fs::read_to_string(dir.join(control_plane::SERVER_FILE))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        };
        let bases: Vec<String> = base
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| {
                let b = if b.contains("://") {
                    b.to_string()
                } else {
                    format!("http://{b}")
                };
                b.trim_end_matches('/').to_string()
            })
            .collect();
        if bases.is_empty() {
            bail!(
                "--server {base:?}: give the control plane's API address (or several, comma-separated)"
            );
        }
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = dir.join(strait_apiserver::TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        anyhow!(
                            "no API token: cannot read {} ({e}); start the control plane with `strait control-plane`, \
                             or pass --token / STRAIT_TOKEN, or --data-dir of the running control plane",
                            path.display()
                        )
                    })?
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Client {
            agent,
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            token,
        })
    }
}

impl Client {
    fn address(&self) -> &str {
        let base = &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed)];
        base.split("://").nth(1).unwrap_or(base)
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        let all: Vec<&str> = self
            .bases
            .iter()
            .map(|b| b.split("://").nth(1).unwrap_or(b))
            .collect();
        anyhow!(
            "no control plane at {}: start one with `strait control-plane` (or point --server / STRAIT_SERVER at it) ({e})",
            all.join(", ")
        )
    }

    /// The API token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The API addresses (`HOST:PORT`) this client was given: several for replicas.
    pub fn addresses(&self) -> Vec<&str> {
        self.bases
            .iter()
            .map(|b| b.split("://").nth(1).unwrap_or(b))
            .collect()
    }

    /// Sends a GET to every address given (each replica answers for itself); an address that
    /// cannot be reached gets its error.
    pub fn get_each(&self, path: &str) -> Vec<(String, Result<Answer>)> {
        self.bases
            .iter()
            .map(|base| {
                let addr = base.split("://").nth(1).unwrap_or(base).to_string();
                let answer = match self.request_at(base, "GET", path, None) {
                    Ok(Ok(a)) => Ok(a),
                    Ok(Err(e)) => Err(anyhow!("no control plane at {addr} ({e})")),
                    Err(e) => Err(e),
                };
                (addr, answer)
            })
            .collect()
    }

    /// Sends the request to the current API address; when it cannot be reached, to the next
    /// (a replica), in turn.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.bases.len() {
            let at = (start + i) % self.bases.len();
            self.current.store(at, std::sync::atomic::Ordering::Relaxed);
            match self.request_at(&self.bases[at], method, path, body)? {
                Ok(answer) => return Ok(answer),
                Err(e) => last = Some(e),
            }
        }
        self.current
            .store(start, std::sync::atomic::Ordering::Relaxed);
        Err(self.unreachable(last.expect("at least one address")))
    }

    fn request_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<std::result::Result<Answer, ureq::Error>> {
        let url = format!("{base}{path}");
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_json(b),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .send_json(b),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if code == 401 {
            bail!(
                "the control plane at {} refused the token: {}",
                self.address(),
                body["message"].as_str().unwrap_or("unauthorized")
            );
        }
        Ok(Ok(Answer { code, body }))
    }
}
