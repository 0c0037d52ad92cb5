//! Single-use bootstrap credentials: what a workload proves its identity with before it has a
//! certificate. The API issues one, bound to a namespace and service account, to a caller that
//! holds the API token (`strait run`, `strait gateway`); the CA accepts it once, within its
//! lifetime, for that identity only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a credential is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub namespace: String,
    pub service_account: String,
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the bootstrap credential is not one this control plane issued, or it was used already (each is good for one certificate)"
    )]
    Unknown,
    #[error("the bootstrap credential expired {0:?} ago: ask the API for a new one")]
    Expired(Duration),
}

/// The outstanding credentials, by a hash of their value. Kept in memory: a control plane
/// restart invalidates them (a workload then needs a new one, as after expiry).
#[derive(Debug, Default)]
pub struct BootstrapTokens {
    issued: Mutex<HashMap<[u8; 32], (Binding, Instant)>>,
}

/// How many unused credentials may wait at once (issuing more drops the oldest).
const MAX_OUTSTANDING: usize = 10_000;

fn digest(token: &str) -> [u8; 32] {
    use aws_lc_rs::digest;
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl BootstrapTokens {
    /// A new credential for `binding`, good once within `ttl`.
    pub fn issue(&self, binding: Binding, ttl: Duration) -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        issued.retain(|_, (_, expires)| *expires > now);
        if issued.len() >= MAX_OUTSTANDING
            && let Some(oldest) = issued
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(k, _)| *k)
        {
            issued.remove(&oldest);
        }
        issued.insert(digest(&token), (binding, now + ttl));
        token
    }

    /// Accepts `token` once: its binding, or why not.
    pub fn redeem(&self, token: &str) -> Result<Binding, TokenError> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let (binding, expires) = issued.remove(&digest(token)).ok_or(TokenError::Unknown)?;
        let now = Instant::now();
        if expires <= now {
            return Err(TokenError::Expired(now - expires));
        }
        Ok(binding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_single_use_and_expire() {
        let tokens = BootstrapTokens::default();
        let b = Binding {
            namespace: "foo".into(),
            service_account: "sleep".into(),
        };
        let t = tokens.issue(b.clone(), Duration::from_secs(60));
        assert_eq!(t.len(), 64);
        assert_eq!(tokens.redeem(&t), Ok(b.clone()));
        assert_eq!(tokens.redeem(&t), Err(TokenError::Unknown));
        assert_eq!(tokens.redeem("made-up"), Err(TokenError::Unknown));
        let short = tokens.issue(b, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(tokens.redeem(&short), Err(TokenError::Expired(_))));
    }
}
