//! What the two protocols share: per-type ACK/NACK bookkeeping, and the events a request or a
//! config change produces.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::rpc;

use super::generated::{Encoded, Generated};
use super::{SentType, SyncState, TypeStatus};
use strait_xds_core::TypeUrl;

/// What happened while handling one input, for metrics and logs.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Types a response was sent for, in order.
    pub pushed: Vec<TypeUrl>,
    /// NACKs: type and Envoy's reason.
    pub nacks: Vec<(TypeUrl, String)>,
    /// Whether some ACK or NACK of the latest response of a type arrived.
    pub answered: bool,
}

/// ACK/NACK state of one type on one stream.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The client asked for this type on this stream.
    pub started: bool,
    /// The nonce of the latest response; empty before the first.
    pub nonce: String,
    pub sent_version: String,
    pub acked_version: String,
    /// The latest response is neither ACKed nor NACKed yet.
    pub awaiting: bool,
    /// The reason of the latest NACK, until the next ACK.
    pub nack: Option<String>,
    /// What the client has (as far as the server knows), by name.
    pub sent: BTreeMap<Arc<str>, Arc<Encoded>>,
}

/// How a request relates to the responses of its type.
pub(crate) enum Answer {
    /// No nonce: a new subscription (or a subscription change without an ACK).
    None,
    /// The nonce of an older response: ignore the ACK/NACK it carries.
    Stale,
    Ack,
    Nack,
}

impl TypeState {
    /// Reads the nonce and error of a request, and records an ACK or NACK of the latest response.
    pub fn answer(
        &mut self,
        ty: TypeUrl,
        nonce: &str,
        error: Option<&rpc::Status>,
        ev: &mut Events,
    ) -> Answer {
        if nonce.is_empty() || self.nonce.is_empty() {
            return Answer::None;
        }
        if nonce != self.nonce {
            return Answer::Stale;
        }
        let was_awaiting = std::mem::replace(&mut self.awaiting, false);
        if was_awaiting {
            ev.answered = true;
        }
        match error {
            Some(status) => {
                let reason = if status.message.is_empty() {
                    format!("rejected with code {} and no message", status.code)
                } else {
                    status.message.clone()
                };
                if was_awaiting {
                    ev.nacks.push((ty, reason.clone()));
                }
                self.nack = Some(reason);
                Answer::Nack
            }
            None => {
                self.acked_version = self.sent_version.clone();
                self.nack = None;
                Answer::Ack
            }
        }
    }

    /// Records a response sent with this nonce and version.
    pub fn sent(&mut self, ty: TypeUrl, nonce: String, version: String, ev: &mut Events) {
        self.nonce = nonce;
        self.sent_version = version;
        self.awaiting = true;
        ev.pushed.push(ty);
    }

    pub fn status(&self) -> TypeStatus {
        let state = if self.nonce.is_empty() {
            SyncState::NotSent
        } else if self.awaiting {
            SyncState::Stale
        } else if let Some(reason) = &self.nack {
            SyncState::Nack {
                reason: reason.clone(),
            }
        } else {
            SyncState::Synced
        };
        TypeStatus {
            state,
            sent_version: self.sent_version.clone(),
            acked_version: self.acked_version.clone(),
            resources: self.sent.len(),
        }
    }

    pub fn sent_type(&self) -> SentType {
        SentType {
            version: self.sent_version.clone(),
            acked_version: self.acked_version.clone(),
            resources: self
                .sent
                .iter()
                .map(|(name, encoded)| (name.to_string(), encoded.clone()))
                .collect(),
        }
    }
}

/// A stream's protocol state machine: SotW or Delta.
pub(crate) trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// A response decided but not built yet: built with [`Protocol::materialize`] when the
    /// stream can send it.
    type Pending: Send + 'static;

    fn node(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn type_url(req: &Self::Request) -> &str;

    /// Builds a response to send.
    fn materialize(pending: Self::Pending) -> Self::Response;

    /// Handles a request of type `ty`; returns the responses to send, in order.
    fn on_request(
        &mut self,
        ty: TypeUrl,
        req: Self::Request,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Self::Pending>;

    /// The proxy's resources were regenerated: returns the pushes, CDS before EDS, LDS before RDS.
    fn on_generated(
        &mut self,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Self::Pending>;

    fn types(&self) -> &BTreeMap<TypeUrl, TypeState>;

    /// Some response is neither ACKed nor NACKed.
    fn awaiting(&self) -> bool {
        self.types().values().any(|t| t.awaiting)
    }
}
