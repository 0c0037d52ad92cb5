//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: who is asking, then the signature.
//!
//! The caller proves its identity with its TLS client certificate (checked against the trust
//! bundle in the handshake: a renewal), or else with `authorization: Bearer CREDENTIAL`, which an
//! [`Authenticator`] turns into an identity (the local platform's single-use bootstrap
//! credentials; Kubernetes' service-account tokens later). The CSR must ask for exactly that
//! identity.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use strait_identity::Identity;
use strait_identity::ca_api::{
    CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse, SERVICE_NAME,
};
use strait_identity::cert::{CertInfo, certs_from_pem};
use strait_identity::peer::PeerInfo;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status};

use crate::{BootstrapTokens, MeshCa, SignError};

/// Turns a bearer credential into the identity it proves.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, bearer: &str, trust_domain: &str) -> Result<Identity, String>;
}

impl Authenticator for BootstrapTokens {
    fn authenticate(&self, bearer: &str, trust_domain: &str) -> Result<Identity, String> {
        let binding = self.redeem(bearer).map_err(|e| e.to_string())?;
        Ok(Identity::new(
            trust_domain,
            binding.namespace,
            binding.service_account,
        ))
    }
}

/// The CA's gRPC service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<MeshCa>,
    authenticators: Arc<Vec<Arc<dyn Authenticator>>>,
}

impl CaService {
    pub fn new(ca: Arc<MeshCa>, authenticators: Vec<Arc<dyn Authenticator>>) -> CaService {
        CaService {
            ca,
            authenticators: Arc::new(authenticators),
        }
    }

    /// Who the request proves it is.
    fn caller(&self, req: &Request<IstioCertificateRequest>) -> Result<Identity, Status> {
        if let Some(peer) = req.extensions().get::<PeerInfo>()
            && let Some(id) = &peer.identity
        {
            return Ok(id.clone());
        }
        let Some(header) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "the request proves no identity: present a workload certificate from this mesh, or a bootstrap credential as `authorization: Bearer CREDENTIAL`",
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer CREDENTIAL`")
            })?;
        let mut reasons = Vec::new();
        for a in self.authenticators.iter() {
            match a.authenticate(token, self.ca.trust_domain()) {
                Ok(id) => return Ok(id),
                Err(why) => reasons.push(why),
            }
        }
        Err(Status::unauthenticated(format!(
            "the bearer credential proves no identity: {}",
            reasons.join("; ")
        )))
    }

    /// Handles one request.
    pub fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.caller(&req)?;
        let body = req.into_inner();
        let ttl = Duration::from_secs(body.validity_duration.max(0) as u64);
        let chain = self.ca.sign(&body.csr, &caller, ttl).map_err(|e| {
            tracing::warn!(identity = %caller, error = %e, "certificate refused");
            match e {
                SignError::WrongIdentity { .. } | SignError::WrongTrustDomain { .. } => {
                    Status::permission_denied(e.to_string())
                }
                SignError::BadCsr(_) | SignError::TtlTooLong { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                SignError::Sign(_) => Status::internal(e.to_string()),
            }
        })?;
        if let Some(info) = certs_from_pem(&chain[0], "leaf")
            .ok()
            .and_then(|c| CertInfo::parse(c[0].as_ref(), "leaf").ok())
        {
            tracing::info!(identity = %caller, serial = %info.serial, not_after = ?info.not_after, "certificate issued");
        }
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for CaService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let service = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Unary(service), req).await)
        })
    }
}

struct Unary(CaService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        // Signing is a few hundred microseconds of CPU: not worth a blocking thread.
        Box::pin(async move { service.create_certificate(request) })
    }
}
