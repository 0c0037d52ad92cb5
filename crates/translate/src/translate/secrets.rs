//! The Secrets a proxy gets over SDS (ADS), as istiod's SDS generator makes them: for every
//! `kubernetes://NAME` its listeners and clusters name, the certificate chain and private key of
//! Secret NAME (`cert`/`key`, else `tls.crt`/`tls.key`, with `tls.ocsp-staple` if present); for
//! every `kubernetes://NAME-cacert`, the CA of Secret `NAME-cacert`, else of Secret NAME
//! (`cacert`, else `ca.crt`, with `ca.crl`). Only Secrets of the proxy's own namespace, and only
//! those its config names: a Secret that is missing or lacks the keys is left out (logged by
//! name, never by content), and what named it fails closed (no handshake completes).

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use strait_api::core::secret::Secret as KubeSecret;
use strait_api::{Kind, Spec};
use strait_xds_core::XdsResources;

use super::Ctx;
use super::tls::{CA_SUFFIX, KUBERNETES_PREFIX, inline};
use crate::snapshot::namespace_of;

/// Adds the Secrets the translation named to `out`.
pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    let names: Vec<String> = ctx.credentials.borrow().iter().cloned().collect();
    for sds_name in names {
        match resolve(ctx, &sds_name) {
            Ok(s) => {
                out.secrets.insert(sds_name, s);
            }
            Err(why) => tracing::warn!(
                proxy = %ctx.proxy,
                secret = %sds_name,
                namespace = %ctx.proxy.namespace,
                "{why}; the TLS that names it fails until it is fixed"
            ),
        }
    }
}

/// The Secret `name` of the proxy's namespace.
fn find<'a>(ctx: &Ctx<'a>, name: &str) -> Option<&'a KubeSecret> {
    ctx.config.of(Kind::Secret).find_map(|r| match &r.spec {
        Spec::Secret(s) if r.name() == name && namespace_of(&r.metadata) == ctx.proxy.namespace => {
            Some(s)
        }
        _ => None,
    })
}

fn resolve(ctx: &Ctx<'_>, sds_name: &str) -> Result<Secret, String> {
    let Some(name) = sds_name.strip_prefix(KUBERNETES_PREFIX) else {
        return Err("not a Kubernetes Secret name".to_string());
    };
    if name.contains('/') {
        return Err(format!(
            "Secret {name:?} names another namespace: a proxy reads only the Secrets of its own \
             namespace ({})",
            ctx.proxy.namespace
        ));
    }
    if let Some(base) = name.strip_suffix(CA_SUFFIX) {
        let (from, secret) = match find(ctx, name) {
            Some(s) => (name, s),
            None => match find(ctx, base) {
                Some(s) => (base, s),
                None => {
                    return Err(format!(
                        "neither Secret {name} nor {base} exists in namespace {}",
                        ctx.proxy.namespace
                    ));
                }
            },
        };
        let ca = secret.ca_cert().ok_or_else(|| {
            format!(
                "Secret {from} has no CA certificate (cacert or ca.crt); found: {}",
                secret.keys()
            )
        })?;
        return Ok(Secret {
            name: sds_name.to_string(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca),
                    crl: secret.ca_crl().and_then(inline),
                    ..Default::default()
                },
            )),
        });
    }
    let secret = find(ctx, name).ok_or_else(|| {
        format!(
            "Secret {name} does not exist in namespace {}",
            ctx.proxy.namespace
        )
    })?;
    let (_, cert, key) = secret
        .key_and_cert()
        .map_err(|e| format!("Secret {name}: {e}"))?;
    Ok(Secret {
        name: sds_name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ocsp_staple: secret.ocsp_staple().and_then(inline),
            ..Default::default()
        })),
    })
}
