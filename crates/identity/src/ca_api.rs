//! The mesh CA's gRPC API, Istio's: `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (istio/api `security/v1alpha1/ca.proto`), and a client for it over TLS.
//!
//! The caller proves who it is either with a bearer token in `authorization` (the first
//! certificate: a single-use bootstrap credential on the local platform, later a Kubernetes
//! service-account token) or with its current certificate as the TLS client certificate (every
//! renewal). The CA answers with the chain, one PEM certificate per entry, leaf first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The method's full path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";

/// `IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The PEM CSR.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// The lifetime asked for, in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// One PEM certificate per entry: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot reach the mesh CA at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the mesh CA at {addr} refused the request: {message} ({code:?})")]
    Refused {
        addr: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    #[error(
        "the mesh CA at {addr} answered with {entries} certificate(s); expected the leaf and its chain"
    )]
    ShortChain { addr: SocketAddr, entries: usize },
}

/// A client of the mesh CA at one address, over TLS with `tls` (whose verifier checks the CA's
/// own identity, and whose client certificate, if any, proves the caller's).
pub struct CaClient {
    addr: SocketAddr,
    channel: Channel,
}

impl CaClient {
    /// Connects (TCP, then TLS with `tls`, then HTTP/2).
    pub async fn connect(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<CaClient, CaError> {
        let connector = tokio_rustls::TlsConnector::from(tls);
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| CaError::Connect {
            addr,
            reason: format!("{server_name:?} is not a server name: {e}"),
        })?;
        let channel = Endpoint::from_static("http://strait-ca.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                let name = name.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| CaError::Connect {
                addr,
                reason: crate::peer::error_chain(&e),
            })?;
        Ok(CaClient { addr, channel })
    }

    /// Asks for a certificate for `csr_pem`, valid for `ttl`, proving the caller with `bearer`
    /// (if given) on top of the TLS client certificate. Returns the chain, leaf first.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        ttl: Duration,
        bearer: Option<&str>,
    ) -> Result<Vec<String>, CaError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| CaError::Connect {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: ttl.as_secs() as i64,
            metadata: None,
        });
        if let Some(token) = bearer {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| CaError::Refused {
                    addr: self.addr,
                    code: tonic::Code::InvalidArgument,
                    message: "the bootstrap credential is not a valid header value".to_string(),
                })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response: tonic::Response<IstioCertificateResponse> = grpc
            .unary(
                request,
                PathAndQuery::from_static(CREATE_CERTIFICATE),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(|s| CaError::Refused {
                addr: self.addr,
                code: s.code(),
                message: s.message().to_string(),
            })?;
        let chain = response.into_inner().cert_chain;
        if chain.len() < 2 {
            return Err(CaError::ShortChain {
                addr: self.addr,
                entries: chain.len(),
            });
        }
        Ok(chain)
    }
}
