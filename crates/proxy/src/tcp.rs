//! `envoy.filters.network.tcp_proxy`: picks the cluster (by weight, per connection) and an
//! endpoint, connects within the cluster's connect timeout, and copies bytes both ways. Each
//! direction's end of stream is passed on as a half-close (the other direction keeps going);
//! a reset or error on either side closes both; no bytes either way for the idle timeout
//! closes both. A connection that cannot be routed (no cluster, no healthy endpoint — as with
//! `BlackHoleCluster` — or a failed connect) is closed, as Envoy does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::Shared;
use crate::balance::outlier::Observed;
use crate::config::listener::TcpProxyConfig;
use crate::config::route::Target;
use crate::io::Io;
use crate::routing;

/// Bytes read at once, per direction.
const BUFFER: usize = 8 * 1024;

/// Proxies one downstream connection whose destination is `destination` (its original one,
/// for ORIGINAL_DST clusters such as `PassthroughCluster`).
pub(crate) async fn proxy(
    shared: &Shared,
    tcp: &TcpProxyConfig,
    downstream: Io,
    destination: SocketAddr,
) {
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
    match pipe(downstream, upstream, tcp.idle_timeout).await {
        Ok(Ended::Closed) => tracing::debug!("tcp_proxy: both sides closed"),
        Ok(Ended::Idle) => tracing::debug!("tcp_proxy: idle timeout: closed"),
        Err(e) => tracing::debug!(error = %e, "tcp_proxy: connection error: closed"),
    }
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

/// Copies one direction until end of stream, then half-closes the writer.
async fn half<R, W>(mut from: R, mut to: W, activity: &Activity) -> std::io::Result<()>
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
        to.write_all(&buf[..n]).await?;
    }
}

/// Copies both ways until both ends have closed, either errs, or nothing moves for `idle`.
pub(crate) async fn pipe<A, B>(a: A, b: B, idle: Option<Duration>) -> std::io::Result<Ended>
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
        tokio::try_join!(half(ar, bw, &activity), half(br, aw, &activity)).map(|_| Ended::Closed)
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
        let piping = tokio::spawn(pipe(proxy_down, proxy_up, None));
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
        let piping = tokio::spawn(pipe(proxy_down, proxy_up, Some(Duration::from_secs(10))));
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
