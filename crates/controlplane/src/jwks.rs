//! The key sets RequestAuthentications name by `jwksUri`, fetched by the control plane (as
//! istiod does) and inlined into the proxies' jwt_authn filters as `local_jwks`.
//!
//! Fetching never holds up translation: the mesh tells the fetcher which URIs its policies
//! use after every change ([`JwksFetcher::want`]); a background task fetches the new ones at
//! once, refetches the others every `refresh`, and retries failures every
//! [`RETRY_FAILED`]. When the set of key sets changes it writes them to the store under
//! [`JWKS_KEY_KIND`] (so they survive a restart), and the store's watch brings them into the
//! mesh state at a new revision, which the ADS server pushes. Until a URI's first fetch
//! succeeds the translator puts Istio's stand-in key set there (tokens fail with 401, requests
//! without one pass); a refetch that fails keeps the last key set that was fetched.
//!
//! Offline machines and tests point hosts elsewhere with `resolve` (`HOST:PORT=IP:PORT`, as
//! curl's `--resolve`) and trust extra roots with `extra_roots`; the URI, and so the YAML,
//! stays unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use strait_store::{Key, Precondition, Store};
use tokio::sync::mpsc;

/// The store kind the fetched key sets are kept under (not served by the API).
pub const JWKS_KEY_KIND: &str = "internal.strait.io/Jwks";
/// How soon a failed fetch is tried again.
pub const RETRY_FAILED: Duration = Duration::from_secs(30);
/// How long one fetch may take (Istio's default `timeout`).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set accepted.
const MAX_BYTES: usize = 1 << 20;

/// The store key of the fetched key sets.
pub fn jwks_key() -> Key {
    Key {
        kind: JWKS_KEY_KIND.to_string(),
        namespace: String::new(),
        name: "jwks".to_string(),
    }
}

/// The key sets as the store keeps them: `{"keys": {URI: JWKS text}}`.
pub fn parse_stored(value: &serde_json::Value) -> BTreeMap<String, String> {
    value["keys"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// How key sets are fetched.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// `HOST:PORT` → the address to connect to instead of resolving HOST.
    pub resolve: BTreeMap<String, SocketAddr>,
    /// PEM files of extra trust roots for https fetches (besides the system's bundle).
    pub extra_roots: Vec<PathBuf>,
    /// The system's trust bundle, if it exists.
    pub system_roots: Option<PathBuf>,
    /// How often a fetched key set is fetched again (Istio: 20 minutes).
    pub refresh: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            resolve: BTreeMap::new(),
            extra_roots: Vec::new(),
            system_roots: Some(PathBuf::from(strait_translate::translate::SYSTEM_CA_BUNDLE)),
            refresh: Duration::from_secs(20 * 60),
        }
    }
}

/// Parses `HOST:PORT=IP:PORT`.
pub fn parse_resolve(s: &str) -> Result<(String, SocketAddr)> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{s:?}: expected HOST:PORT=IP:PORT"))?;
    let (host, port) = from
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{s:?}: expected HOST:PORT=IP:PORT (no port in {from:?})"))?;
    port.parse::<u16>()
        .with_context(|| format!("{s:?}: the port {port:?}"))?;
    let to: SocketAddr = to
        .parse()
        .with_context(|| format!("{s:?}: {to:?} is not IP:PORT"))?;
    Ok((format!("{}:{port}", host.to_ascii_lowercase()), to))
}

/// The handle the mesh tells which URIs are in use.
#[derive(Clone)]
pub struct JwksFetcher {
    wanted: mpsc::UnboundedSender<BTreeSet<String>>,
}

impl JwksFetcher {
    /// Starts the fetching task; it writes into `store`.
    pub fn start(opts: JwksOptions, store: Arc<dyn Store>) -> Result<JwksFetcher> {
        let tls = Arc::new(client_config(&opts)?);
        let (wanted, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(opts, tls, store, rx));
        Ok(JwksFetcher { wanted })
    }

    /// The URIs the policies use now.
    pub fn want(&self, uris: BTreeSet<String>) {
        let _ = self.wanted.send(uris);
    }
}

fn client_config(opts: &JwksOptions) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut add = |path: &Path, required: bool| -> Result<()> {
        let certs = match CertificateDer::pem_file_iter(path) {
            Ok(iter) => iter.collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        };
        match certs {
            Ok(certs) => {
                let (_, bad) = roots.add_parsable_certificates(certs);
                if required && bad > 0 {
                    bail!("{}: {bad} certificate(s) could not be used", path.display());
                }
                Ok(())
            }
            Err(e) if required => Err(anyhow!("reading trust roots from {}: {e}", path.display())),
            Err(_) => Ok(()),
        }
    };
    if let Some(system) = &opts.system_roots {
        add(system, false)?;
    }
    for extra in &opts.extra_roots {
        add(extra, true).context("--jwks-ca")?;
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Default)]
struct Entry {
    /// The last key set fetched.
    keys: Option<String>,
    /// When to fetch again.
    next: Option<tokio::time::Instant>,
}

async fn run(
    opts: JwksOptions,
    tls: Arc<rustls::ClientConfig>,
    store: Arc<dyn Store>,
    mut wanted: mpsc::UnboundedReceiver<BTreeSet<String>>,
) {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    // What the store holds (so a restart does not lose key sets).
    let mut written = match store.get(&jwks_key()) {
        Ok(Some(obj)) => parse_stored(&obj.value),
        _ => BTreeMap::new(),
    };
    for (uri, keys) in &written {
        entries.insert(
            uri.clone(),
            Entry {
                keys: Some(keys.clone()),
                next: Some(tokio::time::Instant::now()),
            },
        );
    }
    loop {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.next.is_none_or(|n| n <= now))
            .map(|(u, _)| u.clone())
            .collect();
        for uri in due {
            let result = fetch(&opts, &tls, &uri).await;
            let entry = entries.entry(uri.clone()).or_default();
            match result {
                Ok(text) => {
                    if looks_like_jwks(&text).is_err() {
                        tracing::warn!(%uri, "the fetched JWKS is not a key set; keeping the last one");
                        entry.next = Some(tokio::time::Instant::now() + RETRY_FAILED);
                        continue;
                    }
                    tracing::info!(%uri, "JWKS fetched");
                    entry.keys = Some(text);
                    entry.next = Some(tokio::time::Instant::now() + opts.refresh);
                }
                Err(e) => {
                    tracing::warn!(
                        %uri,
                        error = %format!("{e:#}"),
                        kept_last = entry.keys.is_some(),
                        "fetching the JWKS failed: tokens of this issuer fail (401) until a fetch succeeds \
                         (--jwks-resolve, --jwks-ca)"
                    );
                    entry.next = Some(tokio::time::Instant::now() + RETRY_FAILED);
                }
            }
        }
        let current: BTreeMap<String, String> = entries
            .iter()
            .filter_map(|(u, e)| Some((u.clone(), e.keys.clone()?)))
            .collect();
        // Of several control planes on one store, only the leader saves what it fetched (the
        // others serve what it saved).
        if current != written && store.is_leader() {
            let value = json!({"metadata": {"name": "jwks"}, "keys": current});
            match store.put(&jwks_key(), value, Precondition::None) {
                Ok(_) => written = current,
                Err(e) => tracing::error!(error = %e, "could not save the fetched JWKS"),
            }
        }
        let next = entries.values().filter_map(|e| e.next).min();
        let sleep = async {
            match next {
                Some(n) => tokio::time::sleep_until(n).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = wanted.recv() => {
                let Some(mut uris) = got else { return };
                while let Ok(more) = wanted.try_recv() {
                    uris = more;
                }
                entries.retain(|u, _| uris.contains(u));
                for uri in uris {
                    entries.entry(uri).or_default();
                }
            }
            _ = sleep => {}
        }
    }
}

/// Whether the text is a JSON object with a `keys` list (a key set to inline).
fn looks_like_jwks(text: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    if v["keys"].is_array() {
        Ok(())
    } else {
        bail!("no \"keys\" list")
    }
}

/// GET `uri` (http or https), following the `resolve` overrides.
pub async fn fetch(
    opts: &JwksOptions,
    tls: &Arc<rustls::ClientConfig>,
    uri: &str,
) -> Result<String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(opts, tls, uri))
        .await
        .map_err(|_| anyhow!("no answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_inner(
    opts: &JwksOptions,
    tls: &Arc<rustls::ClientConfig>,
    uri: &str,
) -> Result<String> {
    let parsed: hyper::Uri = uri.parse().context("not a URI")?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => bail!("scheme {other:?}: expected http or https"),
    };
    let host = parsed
        .host()
        .ok_or_else(|| anyhow!("no host"))?
        .to_ascii_lowercase();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = format!("{host}:{port}");
    let tcp = match opts.resolve.get(&target) {
        Some(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr} (--jwks-resolve {target}={addr})"))?,
        None => tokio::net::TcpStream::connect(&target)
            .await
            .with_context(|| format!("connecting to {target}"))?,
    };
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(target.clone());
    let path = parsed
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a TLS server name"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("HTTP status {status}");
    }
    String::from_utf8(body.to_vec()).context("the body is not UTF-8")
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .context("sending the request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_flags_parse() {
        let (k, v) = parse_resolve("Raw.GitHubUserContent.com:443=127.0.0.1:8443").unwrap();
        assert_eq!(k, "raw.githubusercontent.com:443");
        assert_eq!(v, "127.0.0.1:8443".parse().unwrap());
        assert!(parse_resolve("example.com=127.0.0.1:1").is_err());
        assert!(parse_resolve("example.com:443=localhost").is_err());
    }

    #[tokio::test]
    async fn fetch_goes_where_resolve_says_and_keeps_the_uri() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"keys":[]}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let opts = JwksOptions {
            resolve: [("issuer.example:80".to_string(), addr)].into(),
            system_roots: None,
            ..JwksOptions::default()
        };
        let tls = Arc::new(client_config(&opts).unwrap());
        let text = fetch(&opts, &tls, "http://issuer.example/keys/jwks.json")
            .await
            .unwrap();
        assert_eq!(text, r#"{"keys":[]}"#);
        let head = server.await.unwrap();
        assert!(
            head.starts_with("GET /keys/jwks.json HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("host: issuer.example\r\n"),
            "{head}"
        );
        assert!(looks_like_jwks(&text).is_ok());
        assert!(looks_like_jwks("<html>").is_err());

        // An unknown scheme is refused before any connection.
        let err = fetch(&opts, &tls, "ftp://issuer.example/jwks.json")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("expected http or https"),
            "{err:#}"
        );
    }

    #[test]
    fn stored_key_sets_round_trip() {
        let v = json!({"keys": {"https://a/jwks.json": "{\"keys\":[]}"}});
        assert_eq!(
            parse_stored(&v),
            [(
                "https://a/jwks.json".to_string(),
                "{\"keys\":[]}".to_string()
            )]
            .into()
        );
    }
}
