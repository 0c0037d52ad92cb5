//! One ADS stream: a task that owns the stream's protocol state and reacts to requests and to
//! config changes.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::generated::Generated;
use super::state::{Events, Protocol};
use super::{Inner, ProxyStatus, SentConfig, Shared, StreamKind};
use strait_xds_core::ProxyError;
use strait_xds_core::{Proxy, TypeUrl};

/// A stream's state as `status()` and `sent()` see it.
pub(super) trait View: Send + Sync {
    fn proxy_id(&self) -> String;
    fn status(&self) -> ProxyStatus;
    fn sent(&self) -> SentConfig;
}

struct Conn<P> {
    proxy: Proxy,
    connected_at: SystemTime,
    kind: StreamKind,
    protocol: P,
    generated: Arc<Generated>,
    /// The latest revision whose config this stream handled.
    revision: u64,
}

impl<P: Protocol> View for Mutex<Conn<P>> {
    fn proxy_id(&self) -> String {
        self.lock().expect("ADS stream lock").proxy.id.clone()
    }

    fn status(&self) -> ProxyStatus {
        let c = self.lock().expect("ADS stream lock");
        ProxyStatus {
            id: c.proxy.id.clone(),
            proxy: c.proxy.clone(),
            connected_at: c.connected_at,
            stream: c.kind,
            types: c
                .protocol
                .types()
                .iter()
                .map(|(ty, t)| (*ty, t.status()))
                .collect(),
        }
    }

    fn sent(&self) -> SentConfig {
        let c = self.lock().expect("ADS stream lock");
        SentConfig {
            stream: c.kind,
            types: c
                .protocol
                .types()
                .iter()
                .filter(|(_, t)| !t.nonce.is_empty())
                .map(|(ty, t)| (*ty, t.sent_type()))
                .collect(),
        }
    }
}

/// Runs one stream to its end. Responses (and a final error, if any) go to `tx`.
pub(super) async fn run<P: Protocol>(
    inner: Arc<Inner>,
    kind: StreamKind,
    peer: Option<SocketAddr>,
    extensions: tonic::codegen::http::Extensions,
    mut requests: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(?peer, %status, "ADS stream ended before its first request");
            return;
        }
    };
    let proxy = match P::node(&first)
        .ok_or(ProxyError::NoNode)
        .and_then(Proxy::from_node)
    {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::warn!(?peer, stream = ?kind, %error, "refused an ADS stream");
            let _ = tx
                .send(Err(Status::invalid_argument(error.to_string())))
                .await;
            return;
        }
    };
    let verified = match &inner.authorizer {
        Some(authorizer) => match authorizer.authorize(&proxy, &extensions) {
            Ok(verified) => verified,
            Err(why) => {
                tracing::warn!(?peer, proxy = %proxy.id, stream = ?kind, reason = %why, "refused an ADS stream");
                let _ = tx.send(Err(Status::permission_denied(why))).await;
                return;
            }
        },
        None => super::Peer::Anonymous,
    };
    let span = tracing::info_span!("ads", proxy = %proxy.id, stream = ?kind);
    serve::<P>(inner, kind, peer, verified, proxy, first, requests, tx)
        .instrument(span)
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn serve<P: Protocol>(
    inner: Arc<Inner>,
    kind: StreamKind,
    peer: Option<SocketAddr>,
    verified: super::Peer,
    proxy: Proxy,
    first: P::Request,
    mut requests: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let id = inner
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut revisions = inner.revisions.subscribe();
    let revision = *revisions.borrow_and_update();
    let generated = match generate(&inner, &proxy).await {
        Ok(generated) => generated,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let conn = Arc::new(Mutex::new(Conn {
        proxy: proxy.clone(),
        connected_at: SystemTime::now(),
        kind,
        protocol: P::default(),
        generated,
        revision,
    }));
    inner
        .conns
        .lock()
        .expect("ADS lock")
        .insert(id, conn.clone());
    inner.metrics.connected(1);
    let _registered = Registered {
        inner: inner.clone(),
        id,
    };
    tracing::info!(?peer, "proxy connected");

    let mut unsupported = BTreeSet::new();
    let mut next = Some(first);
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ADS stream failed");
                        break;
                    }
                },
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let revision = *revisions.borrow_and_update();
                    let generated = match generate(&inner, &proxy).await {
                        Ok(generated) => generated,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    };
                    let mut ev = Events::default();
                    let (responses, awaiting) = {
                        let mut c = conn.lock().expect("ADS stream lock");
                        let c = &mut *c;
                        c.generated = generated;
                        c.revision = revision;
                        let out = c.protocol.on_generated(&c.generated, &mut || inner.nonce(), &mut ev);
                        (out, c.protocol.awaiting())
                    };
                    if !send_all::<P>(&tx, responses).await {
                        break;
                    }
                    record(&inner, &ev);
                    inner.metrics.handled(id, revision, !ev.pushed.is_empty(), awaiting);
                    continue;
                }
                _ = tx.closed() => break,
            },
        };
        let type_url = P::type_url(&request);
        let Some(ty) = TypeUrl::parse(type_url) else {
            if unsupported.insert(type_url.to_string()) {
                tracing::warn!(
                    type_url,
                    "proxy asked for a resource type Strait does not serve; not answered"
                );
            }
            continue;
        };
        if ty == TypeUrl::Secret && verified != super::Peer::Verified {
            // Secrets hold private keys: only for a peer that proved the identity (and so the
            // namespace) its node claims. Envoy waits for them; its TLS chains fail closed.
            if unsupported.insert(type_url.to_string()) {
                tracing::warn!(
                    "proxy asked for Secrets (SDS) over an unauthenticated stream; none are sent: \
                     connect it to the control plane's TLS port with its workload certificate"
                );
            }
            continue;
        }
        let mut ev = Events::default();
        let (responses, awaiting, revision) = {
            let mut c = conn.lock().expect("ADS stream lock");
            let c = &mut *c;
            let out =
                c.protocol
                    .on_request(ty, request, &c.generated, &mut || inner.nonce(), &mut ev);
            (out, c.protocol.awaiting(), c.revision)
        };
        if !send_all::<P>(&tx, responses).await {
            break;
        }
        record(&inner, &ev);
        if ev.answered && !awaiting {
            inner.metrics.answered(id, revision);
        }
    }
}

/// Generates a proxy's resources on a blocking thread, at most one generation per core at a time.
/// With the generator's [`Inputs`](super::Inputs), once per revision and proxy shape: streams of
/// the same shape share the result, and an endpoint-only change regenerates only the changed
/// hosts' clusters and endpoints.
async fn generate(inner: &Arc<Inner>, proxy: &Proxy) -> Result<Arc<Generated>, Status> {
    let failed = |error: tokio::task::JoinError| {
        tracing::error!(%error, "generating the proxy's config failed");
        Status::internal(format!(
            "the control plane failed to generate the config of proxy {}: {error}",
            proxy.id
        ))
    };
    let Some(inputs) = inner.generator.inputs() else {
        let _permit = inner.generating.acquire().await;
        let generator = inner.generator.clone();
        let who = proxy.clone();
        inner.metrics.generated();
        return tokio::task::spawn_blocking(move || {
            Arc::new(Generated::new(&generator.generate(&who)))
        })
        .await
        .map_err(failed);
    };
    let shape = inputs.shape(proxy);
    let slot = shape_slot(inner, &shape);
    let mut shared = slot.lock().await;
    // Another stream of this shape may have generated while this one waited; use the newest
    // inputs either way.
    let inputs = inner.generator.inputs().unwrap_or(inputs);
    if let Some(generated) = &shared.generated
        && shared.revision >= inputs.revision()
    {
        return Ok(generated.clone());
    }
    if inputs.shape(proxy) != shape {
        // The proxy's shape changed with the inputs: generate for it alone.
        drop(shared);
        return Box::pin(generate(inner, proxy)).await;
    }
    let _permit = inner.generating.acquire().await;
    let previous = shared.generated.clone();
    let since = shared.revision;
    let who = proxy.clone();
    let inputs2 = inputs.clone();
    inner.metrics.generated();
    let generated = tokio::task::spawn_blocking(move || {
        let incremental = previous.and_then(|previous| {
            let hosts = inputs2.endpoint_changes_since(since)?;
            let partial = inputs2.generate_hosts(&who, &hosts)?;
            Some(previous.with_hosts(&partial, &hosts))
        });
        Arc::new(incremental.unwrap_or_else(|| Generated::new(&inputs2.generate(&who))))
    })
    .await
    .map_err(failed)?;
    shared.revision = inputs.revision();
    shared.generated = Some(generated.clone());
    Ok(generated)
}

/// The generation slot of a proxy shape. Slots no stream uses any more are dropped when a new
/// shape arrives.
fn shape_slot(inner: &Inner, shape: &str) -> Arc<tokio::sync::Mutex<Shared>> {
    let mut shapes = inner.shapes.lock().expect("ADS shapes lock");
    if let Some(slot) = shapes.get(shape) {
        return slot.clone();
    }
    shapes.retain(|_, slot| {
        Arc::strong_count(slot) > 1
            || slot.try_lock().map_or(true, |s| {
                s.generated
                    .as_ref()
                    .is_some_and(|g| Arc::strong_count(g) > 1)
            })
    });
    let slot = Arc::new(tokio::sync::Mutex::new(Shared::default()));
    shapes.insert(shape.to_string(), slot.clone());
    slot
}

/// Sends the responses in order, each built only once the channel has room for it.
async fn send_all<P: Protocol>(
    tx: &mpsc::Sender<Result<P::Response, Status>>,
    responses: Vec<P::Pending>,
) -> bool {
    for pending in responses {
        let Ok(permit) = tx.reserve().await else {
            return false;
        };
        permit.send(Ok(P::materialize(pending)));
    }
    true
}

fn record(inner: &Inner, ev: &Events) {
    for ty in &ev.pushed {
        inner.metrics.pushed(*ty);
    }
    for (ty, reason) in &ev.nacks {
        inner.metrics.nacked(*ty);
        tracing::warn!(r#type = ty.short(), %reason, "proxy rejected the config (NACK)");
    }
    if !ev.pushed.is_empty() {
        let types: HashSet<&str> = ev.pushed.iter().map(|t| t.short()).collect();
        tracing::debug!(?types, "pushed");
    }
}

/// Unregisters a stream when it ends, however it ends.
struct Registered {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.inner.conns.lock().expect("ADS lock").remove(&self.id);
        self.inner.metrics.connected(-1);
        self.inner.metrics.gone(self.id);
        tracing::info!("proxy disconnected");
    }
}
