//! `envoy.filters.network.tcp_proxy`: picks the cluster (by weight, per connection) and an
//! endpoint, connects within the cluster's connect timeout, and copies bytes both ways. Each
//! direction's end of stream is passed on as a half-close (the other direction keeps going);
//! a reset or error on either side closes both; no bytes either way for the idle timeout
//! closes both. A connection that cannot be routed (no cluster, no healthy endpoint — as with
//! `BlackHoleCluster` — or a failed connect) is closed, as Envoy does.
//!
//! Istio's TCP metrics count each connection made to an upstream (or refused by it: `UF`) and
//! its bytes as they move: `istio_tcp_connections_opened_total`/`_closed_total`,
//! `istio_tcp_received_bytes_total` (from the downstream) and `istio_tcp_sent_bytes_total` (to
//! it), with `reporter="destination"` on inbound listeners and `"source"` elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::Shared;
use crate::balance::outlier::Observed;
use crate::config::listener::TcpProxyConfig;
use crate::config::route::Target;
use crate::io::Io;
use crate::listeners::Accepted;
use crate::metrics::PeerKey;
use crate::routing;
use crate::upstream::Picked;

/// Bytes read at once, per direction.
const BUFFER: usize = 8 * 1024;

/// Proxies one downstream connection to its destination (its original one, for ORIGINAL_DST
/// clusters such as `PassthroughCluster`).
pub(crate) async fn proxy(shared: &Shared, tcp: &TcpProxyConfig, downstream: Io, down: &Accepted) {
    let destination = down.destination;
    // Until an upstream connection is made, leaving resets the downstream connection, as
    // Envoy's tcp_proxy does (it has read nothing from it yet).
    let mut unrouted = Unrouted(Some(downstream));
    let cluster = {
        let config = shared.config.load();
        let name = match &tcp.target {
            Target::Cluster(name) => Some(name.as_str()),
            Target::Weighted(clusters) => routing::pick_weighted_random(clusters),
        };
        match name.and_then(|n| config.clusters.get(n)) {
            Some(c) => c.clone(),
            None => {
                shared.stats.flag("NC");
                tracing::debug!(cluster = ?name, "tcp_proxy: cluster not found: closing");
                return;
            }
        }
    };
    let Some(lb) = crate::upstream::balancer(&cluster) else {
        shared.stats.flag("UH");
        tracing::error!(cluster = %cluster.name, "tcp_proxy: a cluster without its balancer (an unpublished config): closing");
        return;
    };
    let Some(picked) = lb.pick(None, &destination.to_string(), None) else {
        shared.stats.flag("UH");
        tracing::debug!(cluster = %cluster.name, "tcp_proxy: no healthy upstream: closing");
        return;
    };
    // max_connections (and pending connections) hold for the connection's life.
    let _admitted = match lb.circuit().admit(false).await {
        Ok(a) => a,
        Err(overflow) => {
            shared.stats.flag("UO");
            tracing::debug!(cluster = %cluster.name, %overflow, "tcp_proxy: circuit breaker overflow: closing");
            return;
        }
    };
    lb.stats().connection();
    let upstream = match picked.host().connect(cluster.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            lb.report(&picked, Observed::LocalFailure);
            shared.stats.flag("UF");
            if let Some(series) = series(shared, down, &cluster, &picked, "UF") {
                series.tcp_opened.fetch_add(1, Ordering::Relaxed);
                series.tcp_closed.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(cluster = %cluster.name, upstream = %picked.authority(), error = ?e, "tcp_proxy: connect failed");
            return;
        }
    };
    // A connection made is a success for outlier detection (Envoy's connect success).
    lb.report(&picked, Observed::Status(200));
    tracing::debug!(cluster = %cluster.name, upstream = %picked.authority(), "tcp_proxy: connected");
    let downstream = unrouted
        .0
        .take()
        .expect("the downstream connection is held until here");
    let series = series(shared, down, &cluster, &picked, "-");
    if let Some(series) = &series {
        series.tcp_opened.fetch_add(1, Ordering::Relaxed);
    }
    let bytes = series.as_ref().map(|series| Bytes {
        received: &series.tcp_received,
        sent: &series.tcp_sent,
    });
    match pipe(downstream, upstream, tcp.idle_timeout, bytes).await {
        Ok(Ended::Closed) => tracing::debug!("tcp_proxy: both sides closed"),
        Ok(Ended::Idle) => tracing::debug!("tcp_proxy: idle timeout: closed"),
        Err(e) => tracing::debug!(error = %e, "tcp_proxy: connection error: closed"),
    }
    if let Some(series) = series {
        series.tcp_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Istio series of a connection to `picked` (a registry lookup: once per connection);
/// `None` when the listener reports none of the TCP metrics. (Metrics disabled one by one are
/// counted and left out of `/stats/prometheus`.)
fn series(
    shared: &Shared,
    down: &Accepted,
    cluster: &crate::config::Cluster,
    picked: &Picked,
    flags: &'static str,
) -> Option<Arc<strait_telemetry::Series>> {
    if down
        .disabled_metrics
        .covers(strait_telemetry::MetricSet::TCP)
    {
        return None;
    }
    let key = PeerKey {
        inbound: down.inbound,
        protocol: strait_telemetry::Protocol::Tcp,
        peer_header: None,
        endpoint: picked.host().workload.clone().filter(|_| !down.inbound),
        peer_principal: down
            .tls
            .as_ref()
            .and_then(|t| t.peer.as_ref())
            .and_then(|p| p.principal())
            .map(Arc::from)
            .filter(|_| down.inbound),
        upstream_mtls: picked.host().is_tls() && !down.inbound,
        service: cluster.service.clone(),
        host: None,
    };
    Some(
        shared
            .telemetry
            .edge(&key)
            .series(strait_telemetry::ResponseKey::tcp(flags)),
    )
}

/// Where a piped connection counts its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Bytes<'a> {
    /// From the downstream (the first side).
    pub(crate) received: &'a AtomicU64,
    /// To the downstream.
    pub(crate) sent: &'a AtomicU64,
}

/// A downstream connection not yet routed: reset if dropped.
struct Unrouted(Option<Io>);

impl Drop for Unrouted {
    fn drop(&mut self) {
        if let Some(io) = &self.0 {
            io.reset_on_close();
        }
    }
}

/// How a piped connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both directions reached end of stream.
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
}

/// When bytes last moved, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Copies one direction until end of stream, then half-closes the writer; counts the bytes
/// copied in `count`.
async fn half<R, W>(
    mut from: R,
    mut to: W,
    activity: &Activity,
    count: Option<&AtomicU64>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Copies both ways until both ends have closed, either errs, or nothing moves for `idle`;
/// counts the bytes each way in `bytes` (`a` is the downstream).
pub(crate) async fn pipe<A, B>(
    a: A,
    b: B,
    idle: Option<Duration>,
    bytes: Option<Bytes<'_>>,
) -> std::io::Result<Ended>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let both = async {
        tokio::try_join!(
            half(ar, bw, &activity, bytes.map(|b| b.received)),
            half(br, aw, &activity, bytes.map(|b| b.sent))
        )
        .map(|_| Ended::Closed)
    };
    let Some(idle) = idle else {
        return both.await;
    };
    let watchdog = async {
        loop {
            let deadline = activity.last() + idle;
            if Instant::now() >= deadline {
                return Ended::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = both => r,
        ended = watchdog => Ok(ended),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn each_side_half_closes_and_the_other_direction_keeps_flowing() {
        let (client, proxy_down) = duplex(1024);
        let (proxy_up, server) = duplex(1024);
        let piping = tokio::spawn(pipe(proxy_down, proxy_up, None, None));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        // The client sends a request and closes its sending side.
        cw.write_all(b"request").await.unwrap();
        cw.shutdown().await.unwrap();
        // The server reads to end of stream, then answers on the still-open direction.
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        sw.write_all(b"answer after EOF").await.unwrap();
        sw.shutdown().await.unwrap();
        let mut answer = Vec::new();
        cr.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after EOF");
        assert_eq!(piping.await.unwrap().unwrap(), Ended::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (client, proxy_down) = duplex(1024);
        let (proxy_up, server) = duplex(1024);
        let start = Instant::now();
        let piping = tokio::spawn(pipe(
            proxy_down,
            proxy_up,
            Some(Duration::from_secs(10)),
            None,
        ));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, _sw) = tokio::io::split(server);
        tokio::time::sleep(Duration::from_secs(6)).await;
        cw.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        sr.read_exact(&mut one).await.unwrap();
        // Activity at 6 s moves the deadline to 16 s.
        assert_eq!(piping.await.unwrap().unwrap(), Ended::Idle);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(16) && took < Duration::from_secs(17),
            "{took:?}"
        );
        // Both sides see the close.
        let mut rest = Vec::new();
        assert_eq!(cr.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
