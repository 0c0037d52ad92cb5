//! `strait inject-webhook`: the sidecar injection webhook (Istio's `POST /inject`) over HTTPS, on
//! its own. The admission logic is `strait-inject`'s (the same code as `strait kube-inject`);
//! this is the TLS listener, HTTP/1.1 and the routes. Kubernetes calls webhooks over TLS only,
//! so there is no plaintext mode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_inject::webhook::Webhook;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The largest AdmissionReview read (the API server's request limit is 3 MiB).
const MAX_BODY: usize = 8 << 20;

#[derive(clap::Args)]
pub struct InjectWebhookArgs {
    /// Where to listen (Istio's webhook port is 15017).
    #[arg(long, default_value = "0.0.0.0:15017")]
    listen: SocketAddr,
    /// The serving certificate chain (PEM); its names must include the webhook Service's DNS
    /// name, and its CA goes in the MutatingWebhookConfiguration's `caBundle`.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    #[command(flatten)]
    injection: crate::kube_inject::InjectionArgs,
}

fn tls_config(cert_path: &PathBuf, key_path: &PathBuf) -> Result<Arc<rustls::ServerConfig>> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read it", p.display()))
    };
    let certs =
        strait_identity::cert::certs_from_pem(&read(cert_path)?, &cert_path.display().to_string())?;
    let key =
        strait_identity::cert::key_from_pem(&read(key_path)?, &key_path.display().to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(strait_identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "--tls-cert {} and --tls-key {}: the key does not match the certificate",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

async fn handle(
    req: Request<Incoming>,
    webhook: Arc<Webhook>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, "/inject") => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => {
                    let r = webhook.serve(content_type.as_deref(), &body.to_bytes());
                    reply(r.status, r.content_type, r.body)
                }
                Err(e) => reply(
                    StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
                    text,
                    format!("reading the request body: {e} (the limit is {MAX_BODY} bytes)\n"),
                ),
            }
        }
        (&Method::GET, "/metrics") => {
            reply(200, "text/plain; version=0.0.4", webhook.metrics.render())
        }
        (&Method::GET, "/ready") => reply(200, text, "ready\n"),
        (_, path) => reply(404, text, format!("no route {path}: POST /inject\n")),
    };
    Ok(response)
}

async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
) -> Result<ExitCode> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there"))?;
    eprintln!(
        "injection webhook listening on https://{}/inject",
        listener.local_addr()?
    );
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |req| handle(req, webhook.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

pub fn run(args: InjectWebhookArgs) -> Result<ExitCode> {
    let injector = args.injection.injector()?;
    let tls = tls_config(&args.tls_cert, &args.tls_key)?;
    let webhook = Arc::new(Webhook::new(injector));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args.listen, tls, webhook))
}
