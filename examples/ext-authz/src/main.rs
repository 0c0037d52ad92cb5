//! `ext-authz`: a stand-in for Istio's sample external authorizer (`samples/extauthz`, image
//! `registry.istio.io/testing/ext-authz`, which cannot run here), behaving as its README says:
//!
//! - Envoy's ext_authz gRPC v3 check API (`envoy.service.auth.v3.Authorization/Check`) on
//!   `--grpc` (9000) and the HTTP check API on `--http` (8000).
//! - A check is allowed when the request carries `x-ext-authz: allow`; the gRPC server also
//!   allows a request without that header whose source principal ends in
//!   `/sa/ALLOW_SERVICE_ACCOUNT` (`--allow-service-account`, default `a`).
//! - Denied: 403 with the body ``denied by ext_authz for not found header `x-ext-authz: allow`
//!   in the request``. Both outcomes set `x-ext-authz-check-result` (`allowed`/`denied`),
//!   `x-ext-authz-check-received` (the check request, dumped) and
//!   `x-ext-authz-additional-header-override` (HTTP: copied from the check request; gRPC:
//!   `grpc-additional-header-override-value`).
//! - One log line per check on stdout, as the sample prints them: `[gRPCv3][allowed]: HOST PATH,
//!   ...`, `[gRPCv3][denied]: ...`, `[HTTP][allowed]: ...`, `[HTTP][denied]: ...`.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

const CHECK_HEADER: &str = "x-ext-authz";
const ALLOWED_VALUE: &str = "allow";
const RESULT_HEADER: &str = "x-ext-authz-check-result";
const RECEIVED_HEADER: &str = "x-ext-authz-check-received";
const OVERRIDE_HEADER: &str = "x-ext-authz-additional-header-override";
const GRPC_OVERRIDE_VALUE: &str = "grpc-additional-header-override-value";
const DENY_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";
/// gRPC's PERMISSION_DENIED.
const PERMISSION_DENIED: i32 = 7;

#[derive(Parser)]
#[command(about = "A stand-in for Istio's sample ext-authz server")]
struct Args {
    /// The HTTP check API's address.
    #[arg(long, default_value = "0.0.0.0:8000")]
    http: SocketAddr,
    /// The gRPC check API's address.
    #[arg(long, default_value = "0.0.0.0:9000")]
    grpc: SocketAddr,
    /// A source principal ending in /sa/NAME is allowed by the gRPC server without the header.
    #[arg(long, default_value = "a")]
    allow_service_account: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let http = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("binding the HTTP address {}", args.http))?;
        let grpc = tokio::net::TcpListener::bind(args.grpc)
            .await
            .with_context(|| format!("binding the gRPC address {}", args.grpc))?;
        println!("Starting HTTP server at {}", http.local_addr()?);
        println!("Starting gRPC server at {}", grpc.local_addr()?);
        let server = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(GrpcV3 {
                allowed_suffix: format!("/sa/{}", args.allow_service_account),
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc));
        tokio::select! {
            r = server => r.context("the gRPC server failed"),
            r = serve_http(http) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

struct GrpcV3 {
    allowed_suffix: String,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcV3 {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        let attrs = check.attributes.clone().unwrap_or_default();
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.clone())
            .unwrap_or_default();
        let principal = attrs
            .source
            .as_ref()
            .map(|s| s.principal.clone())
            .unwrap_or_default();
        let value = http.headers.get(CHECK_HEADER).map(String::as_str);
        let allowed = value == Some(ALLOWED_VALUE)
            || (value.is_none() && principal.ends_with(&self.allowed_suffix));
        let received = format!("{check:?}");
        let result = if allowed { "allowed" } else { "denied" };
        println!(
            "[gRPCv3][{result}]: {}{}, attributes: source principal {principal:?}, {CHECK_HEADER}: {value:?}",
            http.host, http.path
        );
        let headers = vec![
            header(RESULT_HEADER, result),
            header(RECEIVED_HEADER, &received.replace(['\n', '\r'], " ")),
            header(OVERRIDE_HEADER, GRPC_OVERRIDE_VALUE),
        ];
        let response = if allowed {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(Status {
                    code: PERMISSION_DENIED,
                    ..Default::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 403 }),
                        headers,
                        body: DENY_BODY.to_string(),
                    },
                )),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

async fn serve_http(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(http_check);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

async fn http_check(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let allowed = parts
        .headers
        .get(CHECK_HEADER)
        .is_some_and(|v| v.as_bytes() == ALLOWED_VALUE.as_bytes());
    let result = if allowed { "allowed" } else { "denied" };
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut dump = format!("{} {}{}", parts.method, host, parts.uri);
    for (k, v) in &parts.headers {
        dump.push_str(&format!(", {k}: {}", String::from_utf8_lossy(v.as_bytes())));
    }
    println!(
        "[HTTP][{result}]: {dump}, body: [{}]",
        String::from_utf8_lossy(&body)
    );
    let mut resp = Response::builder()
        .header(RESULT_HEADER, result)
        .header(RECEIVED_HEADER, dump.replace(['\n', '\r'], " "));
    if let Some(v) = parts.headers.get(OVERRIDE_HEADER) {
        resp = resp.header(OVERRIDE_HEADER, v);
    }
    let resp = if allowed {
        resp.status(200).body(Full::new(Bytes::new()))
    } else {
        resp.status(403)
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(DENY_BODY.as_bytes())))
    };
    Ok(resp.unwrap_or_default())
}
