//! HTTP/2 abuse against a server sidecar's inbound h2c listener (a Service port named `http2`),
//! the same attacks and bounds with Envoy and with strait-proxy. The attacker is a raw TCP client
//! on loopback writing HTTP/2 frames by hand; every loop is bounded by a frame count and a time.
//! For each attack the proxy's resident memory (VmRSS) and CPU time (utime + stime) are read from
//! /proc before and after, and must stay under absolute bounds that a correct proxy meets with a
//! wide margin; afterwards a normal request on a new connection must still succeed.
//!
//! - rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs on one connection; the proxy closes
//!   the connection or forwards only a bounded number of them;
//! - CONTINUATION flood: HEADERS without END_HEADERS and then CONTINUATION frames without end;
//!   the proxy refuses the block (RST_STREAM, GOAWAY or closing) before 4 MB and closes the
//!   connection;
//! - SETTINGS and PING floods from a client that never reads its ACKs: the proxy closes the
//!   connection or stops reading it, with no queue of ACKs that grows;
//! - HPACK abuse: a dynamic table size update beyond SETTINGS_HEADER_TABLE_SIZE, and a "bomb" (one
//!   4 KB entry in the dynamic table referenced thousands of times, a 40 MB header list in a
//!   small block): refused, the app never sees the request; then 1000 requests that each add a
//!   4 KB entry (evicting the last one);
//! - a client that never opens its flow-control window, asking for a 256 MB response: the proxy
//!   reads less than half of it from the app in 5 s (it does not buffer the whole body), and
//!   releases the upstream stream within 10 s of the client going away.
//!
//! The whole file takes about 20 s (the ten tests run two at a time).

use strait_e2e as support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use support::mesh::{DataPlane, Mesh, Proxy};

type TestBody = BoxBody<Bytes, Infallible>;

/// Resident memory a proxy may gain during one attack.
const MAX_RSS_GROWTH_KB: u64 = 50 * 1024;
/// CPU time a proxy may spend during one attack.
const MAX_CPU: Duration = Duration::from_secs(5);
/// The server sidecar's inbound cluster (to the app), whose upstream requests the proxies count.
const INBOUND_CLUSTER: &str = "inbound|8080||";

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_envoy() {
    rapid_reset(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_strait_proxy() {
    rapid_reset(DataPlane::Strait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_envoy() {
    continuation_flood(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_strait_proxy() {
    continuation_flood(DataPlane::Strait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_envoy() {
    control_floods(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_strait_proxy() {
    control_floods(DataPlane::Strait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_abuse_envoy() {
    hpack_abuse(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_abuse_strait_proxy() {
    hpack_abuse(DataPlane::Strait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_window_envoy() {
    closed_window(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_window_strait_proxy() {
    closed_window(DataPlane::Strait).await;
}

// ---------------------------------------------------------------------------------------------
// Rapid reset

/// HEADERS + RST_STREAM pairs the attacker sends at most.
const RESET_PAIRS: u32 = 100_000;

async fn rapid_reset(plane: DataPlane) {
    let t = Target::start(plane).await;
    let before = Usage::of(&t.server);
    let sent_before = t.server.upstream_requests(INBOUND_CLUSTER).await;
    let mut conn = Attack::connect(t.addr, &[]).await;
    let block = request_block("/ping");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pairs = 0;
    while pairs < RESET_PAIRS && Instant::now() < deadline {
        // 500 pairs a write.
        let mut batch = Vec::new();
        for _ in 0..500 {
            let id = 2 * pairs + 1;
            batch.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
            pairs += 1;
        }
        if !conn.send(&batch).await {
            break;
        }
    }
    let seen = conn.finish(Duration::from_secs(2)).await;
    let used = Usage::of(&t.server).since(&before);
    // Streams the proxy opened upstream (the app's own protection may refuse them).
    let forwarded = t.server.upstream_requests(INBOUND_CLUSTER).await - sent_before;
    eprintln!("{plane:?} rapid reset: {pairs} pairs sent, {seen}, {forwarded} forwarded, {used}");
    assert!(
        seen.closed() || forwarded < 1000,
        "{plane:?} neither closed the connection nor bounded the requests it forwarded: \
         {pairs} pairs sent, {forwarded} sent upstream, {seen}"
    );
    used.assert_bounded(plane, "rapid reset", &t.server);
    t.assert_serves("after the rapid reset").await;
}

// ---------------------------------------------------------------------------------------------
// CONTINUATION flood

/// CONTINUATION bytes the attacker sends at most.
const FLOOD_BYTES: usize = 64 << 20;
/// The proxy must refuse the header block (RST_STREAM, GOAWAY or closing) before the attacker
/// has written this many bytes; the proxy's socket receive buffer on loopback may hold a few MB
/// of them before the proxy reads any.
const MAX_UNREFUSED_CONTINUATION: usize = 4 << 20;

async fn continuation_flood(plane: DataPlane) {
    let t = Target::start(plane).await;
    let before = Usage::of(&t.server);
    let mut conn = Attack::connect(t.addr, &[]).await;
    conn.send(&frame(HEADERS, 0, 1, &request_block("/ping")))
        .await;
    // Whole header representations per frame: `x-flood-N: 100 x`.
    let mut payload = Vec::new();
    let mut n = 0;
    while payload.len() < 16_000 {
        literal(
            &mut payload,
            0x00,
            4,
            format!("x-flood-{n}").as_bytes(),
            &[b'x'; 100],
        );
        n += 1;
    }
    let continuation = frame(CONTINUATION, 0, 1, &payload);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    // Bytes written when the proxy's refusal (RST_STREAM, GOAWAY or EOF) was first seen; the
    // flood goes on after it, to check that the proxy does not keep what follows.
    let mut refused_at = None;
    while sent < FLOOD_BYTES && Instant::now() < deadline {
        // Stops at the first write that fails or that the proxy does not read within 1 s.
        if !conn.send(&continuation).await {
            break;
        }
        sent += continuation.len();
        if refused_at.is_none() && conn.seen().refused() {
            refused_at = Some(sent);
        }
    }
    let seen = conn.finish(Duration::from_secs(3)).await;
    let used = Usage::of(&t.server).since(&before);
    eprintln!(
        "{plane:?} CONTINUATION flood: {sent} bytes accepted, refused after {refused_at:?}, \
         {seen}, {used}"
    );
    let refused_at = refused_at.unwrap_or(sent);
    assert!(
        seen.refused() && refused_at < MAX_UNREFUSED_CONTINUATION,
        "{plane:?} did not refuse a CONTINUATION flood within {MAX_UNREFUSED_CONTINUATION} \
         bytes: {sent} bytes sent, {seen}"
    );
    assert!(
        seen.closed(),
        "{plane:?} kept the connection open through a CONTINUATION flood: {sent} bytes sent, {seen}"
    );
    used.assert_bounded(plane, "CONTINUATION flood", &t.server);
    t.assert_serves("after the CONTINUATION flood").await;
}

// ---------------------------------------------------------------------------------------------
// SETTINGS and PING floods

/// Frames of each flood at most.
const FLOOD_FRAMES: usize = 1_000_000;

async fn control_floods(plane: DataPlane) {
    // strait-proxy with `--http2-keepalive` (off by default) closes a connection whose client
    // does not answer its keep-alive PING: within 2 + 2 s here; without it the connection only
    // stalls. Envoy closes it once 1,000 control frames are queued.
    let t = Target::start_with(plane, &["--http2-keepalive", "2"]).await;
    for (what, one) in [
        // SETTINGS_ENABLE_PUSH=0 again and again: each needs an ACK.
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0])),
        ("PING", frame(PING, 0, 0, b"flooding")),
    ] {
        let before = Usage::of(&t.server);
        // The attacker never reads: the ACKs pile up in its socket, then in the proxy's.
        let mut conn = Attack::connect_deaf(t.addr).await;
        let batch: Vec<u8> = one.repeat(1000);
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut sent = 0;
        let mut stalled = false;
        while sent < FLOOD_FRAMES && Instant::now() < deadline {
            match conn.send_or_stall(&batch).await {
                Sent::Written => sent += 1000,
                Sent::Stalled => {
                    stalled = true;
                    break;
                }
                Sent::Closed => break,
            }
        }
        let closed = conn.closed_within_10_s().await;
        let used = Usage::of(&t.server).since(&before);
        eprintln!(
            "{plane:?} {what} flood: {sent} frames accepted, stalled {stalled}, closed {closed}, \
             {used}"
        );
        assert!(
            closed,
            "{plane:?} kept the connection of a {what} flood open for 10 s after the flood ({sent} \
             frames read, stalled: {stalled})"
        );
        used.assert_bounded(plane, &format!("{what} flood"), &t.server);
        drop(conn);
        t.assert_serves(&format!("during/after the {what} flood"))
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// HPACK abuse

async fn hpack_abuse(plane: DataPlane) {
    let t = Target::start(plane).await;

    // A dynamic table size update to 1 MB, beyond the 4096 octets the proxy allows.
    let before = Usage::of(&t.server);
    let mut conn = Attack::connect(t.addr, &[]).await;
    let mut block = Vec::new();
    hpack_int(&mut block, 0x20, 5, 1 << 20);
    block.extend(request_block("/ping"));
    conn.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        .await;
    let seen = conn.finish(Duration::from_secs(3)).await;
    eprintln!("{plane:?} table size update beyond the limit: {seen}");
    assert!(
        seen.closed(),
        "{plane:?} accepted a dynamic table size update of 1 MB (SETTINGS_HEADER_TABLE_SIZE \
         4096): {seen}"
    );

    // An HPACK bomb: one 4000-byte entry added to the dynamic table, then referenced 10,000
    // times (one byte each): a 40 MB header list in a 14 kB block (HEADERS + CONTINUATION).
    let mut conn = Attack::connect(t.addr, &[]).await;
    let mut block = request_block("/bomb");
    literal(&mut block, 0x40, 6, b"x-bomb", &[b'b'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, 10_000));
    let (first, rest) = block.split_at(12_000);
    let mut frames = frame(HEADERS, END_STREAM, 1, first);
    frames.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    conn.send(&frames).await;
    let seen = conn.finish(Duration::from_secs(3)).await;
    eprintln!("{plane:?} HPACK bomb: {seen}");
    assert!(
        seen.refused(),
        "{plane:?} did not refuse a 40 MB header list (an HPACK bomb): {seen}"
    );

    // Large entries in turn, each evicting the last, on many streams: the table stays 4096.
    let mut conn = Attack::connect(t.addr, &[]).await;
    let mut frames = Vec::new();
    for i in 0..1000u32 {
        let mut block = request_block("/ping");
        literal(
            &mut block,
            0x40,
            6,
            b"x-big",
            format!("{i:04000}").as_bytes(),
        );
        frames.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    conn.send(&frames).await;
    let seen = conn.finish(Duration::from_secs(3)).await;
    eprintln!("{plane:?} table churn: {seen}");

    let used = Usage::of(&t.server).since(&before);
    eprintln!("{plane:?} HPACK abuse: {used}");
    assert_eq!(
        t.app.bombs.load(Ordering::Relaxed),
        0,
        "{plane:?} forwarded the HPACK bomb to the app"
    );
    used.assert_bounded(plane, "HPACK abuse", &t.server);
    t.assert_serves("after the HPACK abuse").await;
}

// ---------------------------------------------------------------------------------------------
// A client that never opens its window

/// The response the client asks for and never reads.
const BIG: u64 = 256 << 20;

async fn closed_window(plane: DataPlane) {
    let t = Target::start(plane).await;
    let before = Usage::of(&t.server);
    // SETTINGS_INITIAL_WINDOW_SIZE 0, and no WINDOW_UPDATE ever.
    let mut conn = Attack::connect(t.addr, &[(4, 0)]).await;
    conn.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("/big"),
    ))
    .await;
    // The app streams as fast as the proxy takes it, for 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.app.big_started.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "{plane:?}: the app never got the request for /big\n{}",
            t.server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pulled = t.app.big_sent.load(Ordering::Relaxed);
    let used = Usage::of(&t.server).since(&before);
    eprintln!("{plane:?} closed window: the app sent {pulled} bytes in 5 s, {used}");
    assert!(
        pulled < BIG / 2,
        "{plane:?} read {pulled} bytes of a response its client cannot take"
    );
    used.assert_bounded(plane, "a closed window", &t.server);

    // The client goes away: the proxy lets go of the upstream stream.
    drop(conn);
    let gone = Instant::now();
    while !t.app.big_dropped.load(Ordering::Relaxed) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "{plane:?} kept the upstream stream of /big for 10 s after its client went away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.assert_serves("after a closed window").await;
}

// ---------------------------------------------------------------------------------------------
// The mesh: a server sidecar in front of an h2c app

struct Target {
    _mesh: Mesh,
    server: Proxy,
    plane: DataPlane,
    /// The sidecar's inbound h2c listener.
    addr: SocketAddr,
    app: Arc<AppState>,
}

impl Target {
    async fn start(plane: DataPlane) -> Target {
        Target::start_with(plane, &[]).await
    }

    /// With `strait_flags` added to strait-proxy's.
    async fn start_with(plane: DataPlane, strait_flags: &[&str]) -> Target {
        let mut mesh = Mesh::new();
        mesh.strait_proxy_flags = strait_flags.iter().map(|f| f.to_string()).collect();
        mesh.service("h2app", 8080, "http2");
        let app = Arc::new(AppState::default());
        let app_addr = spawn_app(app.clone());
        let server = mesh
            .server_sidecar(plane, "h2app", "v1", 8080, "HTTP2", app_addr)
            .await;
        let addr = SocketAddr::new(server.ip, 8080);
        let t = Target {
            _mesh: mesh,
            server,
            plane,
            addr,
            app,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = t.serves().await {
            assert!(
                Instant::now() < deadline,
                "{plane:?}: no h2c answer from the inbound listener {addr} in 15 s: {e}\n{}",
                t.server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t
    }

    /// An h2c request on a new connection gets the app's answer.
    async fn serves(&self) -> Result<(), String> {
        let url = format!("http://{}/ping", self.addr);
        let get = strait_testsupport::http2_get(&url, &[]);
        match tokio::time::timeout(Duration::from_secs(5), get).await {
            Ok(Ok(r)) if r.status == 200 && r.body == "pong" => Ok(()),
            Ok(Ok(r)) => Err(format!("{r:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in 5 s".into()),
        }
    }

    /// A fresh request (a new connection each try) succeeds within 5 s: a proxy whose upstream
    /// connection went away with the attack may answer one 503 before it opens a new one.
    async fn assert_serves(&self, when: &str) {
        let since = Instant::now();
        while let Err(e) = self.serves().await {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "{:?}: no fresh h2c request succeeded within 5 s {when}: {e}\n{}",
                self.plane,
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Default)]
struct AppState {
    requests: AtomicU64,
    big_started: AtomicU64,
    big_sent: AtomicU64,
    big_dropped: AtomicBool,
    /// Requests for `/bomb` (the HPACK bomb's path).
    bombs: AtomicU64,
}

/// `/ping` answers `pong`; `/big` streams `BIG` bytes as fast as they are taken.
fn spawn_app(state: Arc<AppState>) -> SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = TcpListener::from_std(std_listener).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        state.requests.fetch_add(1, Ordering::Relaxed);
                        if req.uri().path() == "/bomb" {
                            state.bombs.fetch_add(1, Ordering::Relaxed);
                        }
                        let body: TestBody = if req.uri().path() == "/big" {
                            state.big_started.fetch_add(1, Ordering::Relaxed);
                            Big { left: BIG, state }.boxed()
                        } else {
                            Full::new(Bytes::from_static(b"pong")).boxed()
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                // The app observes what the proxy forwards; it does not cut the proxy's
                // connection over streams the proxy resets (h2 allows 20 by default).
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().max_pending_accept_reset_streams(1_000_000);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `/big`'s body: zeros, counted as they are taken; says when it is dropped.
struct Big {
    left: u64,
    state: Arc<AppState>,
}

impl Body for Big {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 64 << 10] = [0; 64 << 10];
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        self.state.big_sent.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

impl Drop for Big {
    fn drop(&mut self) {
        self.state.big_dropped.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy's memory and CPU

struct Usage {
    rss_kb: u64,
    cpu_ticks: u64,
}

/// What a proxy gained and spent during an attack.
struct Used {
    rss_growth_kb: u64,
    cpu: Duration,
}

impl Usage {
    fn of(proxy: &Proxy) -> Usage {
        let pid = proxy.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
        // After the command's `(name)`: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> u64 {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("/proc/{pid}/stat has no field {}: {stat}", i + 3))
        };
        Usage {
            rss_kb,
            cpu_ticks: ticks(11) + ticks(12),
        }
    }

    fn since(&self, before: &Usage) -> Used {
        Used {
            rss_growth_kb: self.rss_kb.saturating_sub(before.rss_kb),
            // USER_HZ is 100 on Linux.
            cpu: Duration::from_millis((self.cpu_ticks - before.cpu_ticks) * 10),
        }
    }
}

impl Used {
    fn assert_bounded(&self, plane: DataPlane, attack: &str, proxy: &Proxy) {
        assert!(
            self.rss_growth_kb < MAX_RSS_GROWTH_KB,
            "{plane:?} grew by {} MB during {attack} (at most {} MB)\n{}",
            self.rss_growth_kb / 1024,
            MAX_RSS_GROWTH_KB / 1024,
            proxy.log()
        );
        assert!(
            self.cpu < MAX_CPU,
            "{plane:?} spent {:?} of CPU during {attack} (at most {MAX_CPU:?})",
            self.cpu
        );
    }
}

impl std::fmt::Display for Used {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS +{} kB, CPU {:?}", self.rss_growth_kb, self.cpu)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits from `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field with a new name, no Huffman: `kind` 0x00 (without indexing, 4-bit
/// prefix) or 0x40 (with incremental indexing, 6-bit prefix).
fn literal(out: &mut Vec<u8>, kind: u8, prefix: u32, name: &[u8], value: &[u8]) {
    hpack_int(out, kind, prefix, 0);
    hpack_int(out, 0, 7, name.len());
    out.extend(name);
    hpack_int(out, 0, 7, value.len());
    out.extend(value);
}

/// A GET request's header block, every field a literal without indexing.
fn request_block(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "h2app:8080"),
    ] {
        literal(&mut out, 0x00, 4, name.as_bytes(), value.as_bytes());
    }
    out
}

/// What the attacker saw of the proxy's answers.
#[derive(Debug, Default, Clone)]
struct Seen {
    goaway: Option<u32>,
    eof: bool,
    resets: u64,
    headers: u64,
    bytes: u64,
}

impl Seen {
    fn closed(&self) -> bool {
        self.goaway.is_some() || self.eof
    }

    /// A stream reset, or the connection closed.
    fn refused(&self) -> bool {
        self.closed() || self.resets > 0
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answers: GOAWAY {:?}, EOF {}, {} RST_STREAM, {} HEADERS, {} bytes",
            self.goaway, self.eof, self.resets, self.headers, self.bytes
        )
    }
}

enum Sent {
    Written,
    Stalled,
    Closed,
}

/// A raw HTTP/2 client connection whose answers a task reads (or that never reads).
struct Attack {
    write: OwnedWriteHalf,
    reader: Option<(JoinHandle<()>, Arc<Mutex<Seen>>)>,
    /// The read half of a client that never reads, kept so the socket stays open.
    deaf: Option<OwnedReadHalf>,
}

impl Attack {
    /// Connects, sends the preface and SETTINGS (with `settings`), and reads every answer.
    async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Attack {
        let (read, write) = Self::open(addr, settings).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        Attack {
            write,
            reader: Some((tokio::spawn(read_frames(read, seen.clone())), seen)),
            deaf: None,
        }
    }

    /// Connects and sends the preface and SETTINGS; never reads.
    async fn connect_deaf(addr: SocketAddr) -> Attack {
        let (read, write) = Self::open(addr, &[]).await;
        Attack {
            write,
            reader: None,
            deaf: Some(read),
        }
    }

    async fn open(addr: SocketAddr, settings: &[(u16, u32)]) -> (OwnedReadHalf, OwnedWriteHalf) {
        // A small send buffer (no autotuning): what the attacker has written is close to what
        // the proxy has read.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(64 << 10).unwrap();
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let (read, mut write) = stream.into_split();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend(id.to_be_bytes());
            payload.extend(value.to_be_bytes());
        }
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        write.write_all(&hello).await.unwrap();
        (read, write)
    }

    /// Writes `bytes`; false once the connection is closed or the proxy takes none for 1 s.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(self.send_or_stall(bytes).await, Sent::Written)
    }

    async fn send_or_stall(&mut self, bytes: &[u8]) -> Sent {
        match tokio::time::timeout(Duration::from_secs(1), self.write.write_all(bytes)).await {
            Ok(Ok(())) => Sent::Written,
            Ok(Err(_)) => Sent::Closed,
            Err(_) => Sent::Stalled,
        }
    }

    /// What the proxy answered so far.
    fn seen(&self) -> Seen {
        let (_, seen) = self.reader.as_ref().expect("a connection that reads");
        seen.lock().unwrap().clone()
    }

    /// What the proxy answered, after `wait` more (or until it closed the connection).
    async fn finish(mut self, wait: Duration) -> Seen {
        let (reader, seen) = self.reader.take().expect("a connection that reads");
        if tokio::time::timeout(wait, reader).await.is_err() {
            // Still open: what was seen so far.
            let _ = self.write.shutdown().await;
        }
        seen.lock().unwrap().clone()
    }

    /// For a client that never read: whether the proxy closes the connection within 10 s (a
    /// read gets EOF or a reset after the ACKs it queued, which are drained meanwhile).
    async fn closed_within_10_s(&mut self) -> bool {
        let Some(read) = self.deaf.as_mut() else {
            return false;
        };
        let mut buf = vec![0u8; 1 << 16];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Reads frames until EOF or an error, counting what matters in `seen`.
async fn read_frames(mut read: OwnedReadHalf, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                seen.lock().unwrap().eof = true;
                return;
            }
            Ok(n) => n,
        };
        let mut seen = seen.lock().unwrap();
        seen.bytes += n as u64;
        buf.extend(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let payload = &buf[9..9 + len];
            match kind {
                GOAWAY if len >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                RST_STREAM => seen.resets += 1,
                HEADERS => seen.headers += 1,
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
}
