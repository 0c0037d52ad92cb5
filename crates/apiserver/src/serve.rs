//! Serving the API over HTTP/1.1 with the limits a control plane on a shared machine needs: a
//! request head must arrive within [`Limits::header_read_timeout`], a connection with no request
//! in flight is closed after [`Limits::idle_timeout`], and connections are capped in two pools.
//!
//! A new connection counts as *unauthenticated* until one of its requests carries the right
//! bearer token; it then moves to the *authenticated* pool. When a pool is full, its oldest
//! connection with no request in flight is closed to make room (a new one is refused only when
//! every connection of the pool is busy). So idle connections that never authenticate (a flood
//! of them is an unauthenticated local denial of service) can only ever hold
//! [`Limits::max_unauthenticated`] descriptors and never displace an authenticated client, and
//! a new client (a health check, `strait apply`) always gets in. The request body's deadline is
//! the router's ([`crate::ApiState::with_body_timeout`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

/// The API server's connection limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte a request head may take (hyper's header read timeout).
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight (before its first
    /// request, and between requests).
    pub idle_timeout: Duration,
    /// Connections that have not (yet) sent the bearer token.
    pub max_unauthenticated: usize,
    /// Connections that have.
    pub max_authenticated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_unauthenticated: 256,
            max_authenticated: 512,
        }
    }
}

impl Limits {
    /// Limits that fit `descriptors` file descriptors for the API, with the defaults as the
    /// most: a quarter for unauthenticated connections, half for authenticated ones.
    pub fn for_descriptors(descriptors: usize) -> Limits {
        let d = Limits::default();
        Limits {
            max_unauthenticated: d.max_unauthenticated.min(descriptors / 4).max(1),
            max_authenticated: d.max_authenticated.min(descriptors / 2).max(1),
            ..d
        }
    }

    /// The most descriptors the API's connections can hold.
    pub fn descriptors(&self) -> usize {
        self.max_unauthenticated + self.max_authenticated
    }
}

/// One connection's state, shared by its task, its requests and the pools.
#[derive(Debug)]
struct Conn {
    id: u64,
    in_flight: AtomicUsize,
    authenticated: AtomicBool,
    /// When the last request ended (or the connection was accepted).
    idle_since: Mutex<Instant>,
    close: Notify,
}

/// What a request knows of its connection: the authentication middleware tells it when the
/// token was right.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    conn: Arc<Conn>,
    pools: Arc<Pools>,
    peer: Option<std::net::SocketAddr>,
}

impl ConnHandle {
    /// The client's address.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Moves the connection to the authenticated pool (once).
    pub fn authenticated(&self) {
        if !self.conn.authenticated.load(Ordering::Relaxed) {
            self.pools.authenticate(&self.conn);
        }
    }
}

#[derive(Debug, Default)]
struct PoolsInner {
    next_id: u64,
    unauthenticated: BTreeMap<u64, Arc<Conn>>,
    authenticated: BTreeMap<u64, Arc<Conn>>,
}

#[derive(Debug)]
struct Pools {
    limits: Limits,
    inner: Mutex<PoolsInner>,
}

/// Closes the oldest connection of `pool` with no request in flight; false if all are busy.
fn evict_oldest_idle(pool: &mut BTreeMap<u64, Arc<Conn>>) -> bool {
    let victim = pool
        .iter()
        .find(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
        .map(|(id, _)| *id);
    match victim.and_then(|id| pool.remove(&id)) {
        Some(conn) => {
            conn.close.notify_one();
            true
        }
        None => false,
    }
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, in the unauthenticated pool; None if that pool is full of busy ones.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut inner = self.lock();
        if inner.unauthenticated.len() >= self.limits.max_unauthenticated
            && !evict_oldest_idle(&mut inner.unauthenticated)
        {
            return None;
        }
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            id: inner.next_id,
            in_flight: AtomicUsize::new(0),
            authenticated: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        inner.unauthenticated.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn authenticate(&self, conn: &Arc<Conn>) {
        let mut inner = self.lock();
        if conn.authenticated.load(Ordering::Relaxed) {
            return;
        }
        if inner.authenticated.len() >= self.limits.max_authenticated
            && !evict_oldest_idle(&mut inner.authenticated)
        {
            // Every authenticated connection is busy: this one stays counted as it was.
            return;
        }
        inner.unauthenticated.remove(&conn.id);
        inner.authenticated.insert(conn.id, conn.clone());
        conn.authenticated.store(true, Ordering::Relaxed);
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = self.lock();
        inner.unauthenticated.remove(&conn.id);
        inner.authenticated.remove(&conn.id);
    }

    fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.unauthenticated.len(), inner.authenticated.len())
    }
}

/// Counts a request in flight until its response body is dropped (for a watch: until it ends).
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's [`InFlight`].
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The API's server: accepts on `listener` until `shutdown` completes, then asks every
/// connection to finish its request in flight and waits up to `grace` for them.
pub struct Server {
    pools: Arc<Pools>,
}

impl Server {
    pub fn new(limits: Limits) -> Server {
        Server {
            pools: Arc::new(Pools {
                limits,
                inner: Mutex::default(),
            }),
        }
    }

    /// Open connections: (unauthenticated, authenticated).
    pub fn connections(&self) -> (usize, usize) {
        self.pools.len()
    }

    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let limits = self.pools.limits;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors (EMFILE) or a connection reset before accept:
                        // wait a little rather than spin.
                        tracing::warn!(%error, "the API could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let Some(conn) = self.pools.admit() else {
                tracing::debug!("API connection refused: every unauthenticated connection is busy");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handle = ConnHandle {
                conn: conn.clone(),
                pools: self.pools.clone(),
                peer: Some(peer),
            };
            let app = app.clone();
            let mut stop = stop_rx.clone();
            let pools = self.pools.clone();
            tasks.spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let in_flight = InFlight::start(&handle.conn);
                        req.extensions_mut().insert(handle.clone());
                        let app = app.clone();
                        async move {
                            let response = app.oneshot(req.map(Body::new)).await?;
                            Ok::<_, std::convert::Infallible>(response.map(|body| {
                                Body::new(Tracked {
                                    body,
                                    _in_flight: in_flight,
                                })
                            }))
                        }
                    });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .keep_alive(true);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let idle = idle_watch(&conn, limits.idle_timeout);
                tokio::pin!(idle);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        _ = connection.as_mut() => break,
                        () = conn.close.notified() => break,
                        () = &mut idle => break,
                        _ = stop.wait_for(|s| *s), if !stopping => {
                            stopping = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
                pools.remove(&conn);
            });
        }
        let _ = stop_tx.send(true);
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.abort_all();
    }
}

/// Completes once the connection has had no request in flight for `timeout`.
async fn idle_watch(conn: &Conn, timeout: Duration) {
    loop {
        let since = *conn.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = since + timeout;
        if Instant::now() >= deadline && conn.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Busy, or idle for less than the timeout: look again when it could have expired.
        let next = if Instant::now() >= deadline {
            Instant::now() + timeout.min(Duration::from_secs(1))
        } else {
            deadline
        };
        tokio::time::sleep_until(next).await;
    }
}
