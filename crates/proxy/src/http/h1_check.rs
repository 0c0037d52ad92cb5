//! The HTTP/1 request checks strait-proxy makes before hyper sees a byte: a scanner that follows
//! the request stream (heads, then bodies by their framing) and refuses what Envoy refuses and
//! hyper would accept or answer without saying why:
//!
//! - `Content-Length` together with `Transfer-Encoding` (hyper drops the length and reads chunks;
//!   Envoy answers 400, as request smuggling defences want);
//! - `Content-Length` values that differ or are not numbers;
//! - a `Transfer-Encoding` other than `chunked` (501), or any on HTTP/1.0;
//! - a head over the size limit or with more headers than the limit (431);
//! - header names and values with bytes HTTP does not allow (NUL, bare CR, ...), per httparse;
//! - a chunk size that is not hexadecimal, chunk data not followed by CRLF.
//!
//! A head is held back until it is complete and checked; body bytes pass through as they come.
//! Each refusal says whether it came in a head (the proxy answers it itself) or in a body (the
//! request already went to hyper, whose body read then fails).

use std::fmt;

/// The HTTP/2 connection preface: a connection that starts with it is not HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// The limits a head is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line and headers together, in bytes (Envoy's `max_request_headers_kb`, 60 KiB).
    pub max_bytes: usize,
    /// Headers in one head (Envoy's `max_headers_count`, 100).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_bytes: 60 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a request was refused: the status to answer, Envoy's response code details and a one-line
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for the refusal (`http1.codec_error`, ...).
    pub details: &'static str,
    pub reason: String,
    /// The refusal came in a request body (the head already went on).
    pub in_body: bool,
    /// The request line of the refused head, when it parsed that far: method and path.
    pub request_line: Option<(String, String)>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refusal {}

fn refuse(status: u16, details: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        details,
        reason: reason.into(),
        in_body: false,
        request_line: None,
    }
}

fn body_error(reason: impl Into<String>) -> Refusal {
    Refusal {
        in_body: true,
        ..refuse(400, "http1.codec_error", reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The connection's first bytes: HTTP/1 or the HTTP/2 preface.
    Start,
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk, so many bytes so far.
    Trailers(usize),
    /// Not HTTP/1 (the HTTP/2 preface): everything passes.
    Passthrough,
    Refused,
}

/// Follows one connection's request stream.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    limits: HeadLimits,
    /// Bytes read but not yet passed on: an incomplete head or line.
    held: Vec<u8>,
}

/// What a head says about the body after it.
enum Framing {
    None,
    /// No body, and an upgrade asked for (`Connection: upgrade` with `Upgrade`): what follows may
    /// be another protocol, passed on unchecked. The connection manager closes the connection
    /// when the upgrade does not happen, so no HTTP/1 request follows unchecked.
    Upgrade,
    Length(u64),
    Chunked,
}

impl Scanner {
    /// A scanner for a new connection; `h2_preface`: a connection may also be HTTP/2 with prior
    /// knowledge (a listener with codec AUTO).
    pub fn new(limits: HeadLimits, h2_preface: bool) -> Scanner {
        Scanner {
            state: if h2_preface {
                State::Start
            } else {
                State::Head
            },
            limits,
            held: Vec::new(),
        }
    }

    /// Whether a request head has begun and is not complete yet (for the header-read timeout).
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head | State::Start) && !self.held.is_empty()
    }

    /// Feeds bytes read from the client; appends those that may go on to `out`. After a refusal
    /// nothing more goes on.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        match self.state {
            State::Passthrough => {
                out.extend_from_slice(input);
                return Ok(());
            }
            State::Refused => return Err(refuse(400, "http1.codec_error", "already refused")),
            // Body bytes need no holding: pass them straight on.
            State::Body(left) | State::ChunkData(left) if self.held.is_empty() => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                out.extend_from_slice(&input[..n]);
                self.advance_data(n as u64);
                self.held.extend_from_slice(&input[n..]);
            }
            _ => self.held.extend_from_slice(input),
        }
        let r = self.run(out);
        if r.is_err() {
            self.state = State::Refused;
            self.held.clear();
        }
        r
    }

    fn advance_data(&mut self, n: u64) {
        self.state = match self.state {
            State::Body(left) if left == n => State::Head,
            State::Body(left) => State::Body(left - n),
            State::ChunkData(left) if left == n => State::ChunkEnd,
            State::ChunkData(left) => State::ChunkData(left - n),
            s => s,
        };
    }

    /// Moves the first `n` held bytes to `out`.
    fn pass(&mut self, n: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held[..n]);
        self.held.drain(..n);
    }

    fn run(&mut self, out: &mut Vec<u8>) -> Result<(), Refusal> {
        while !self.held.is_empty() {
            match self.state {
                State::Passthrough => {
                    let n = self.held.len();
                    self.pass(n, out);
                }
                State::Refused => unreachable!("a refused scanner is not run"),
                State::Start => {
                    let n = self.held.len().min(H2_PREFACE.len());
                    if self.held[..n] != H2_PREFACE[..n] {
                        self.state = State::Head;
                    } else if n == H2_PREFACE.len() {
                        self.state = State::Passthrough;
                    } else {
                        return Ok(());
                    }
                }
                State::Head => match self.head()? {
                    None => return Ok(()),
                    Some((len, framing)) => {
                        self.pass(len, out);
                        self.state = match framing {
                            Framing::Upgrade => State::Passthrough,
                            Framing::None | Framing::Length(0) => State::Head,
                            Framing::Length(n) => State::Body(n),
                            Framing::Chunked => State::ChunkSize,
                        };
                    }
                },
                State::Body(left) | State::ChunkData(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    self.pass(n, out);
                    self.advance_data(n as u64);
                }
                State::ChunkSize => {
                    let Some(line) = self.line()? else {
                        return Ok(());
                    };
                    let size = chunk_size(&self.held[..line.content])?;
                    self.pass(line.total, out);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    let n = self.held.len().min(2);
                    if self.held[..n] != b"\r\n"[..n] {
                        return Err(body_error("chunk data is not followed by CRLF"));
                    }
                    if n < 2 {
                        return Ok(());
                    }
                    self.pass(2, out);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = self.line()? else {
                        return Ok(());
                    };
                    let seen = seen + line.total;
                    if seen > self.limits.max_bytes {
                        return Err(body_error("the trailers are over the header size limit"));
                    }
                    let last = line.content == 0;
                    self.pass(line.total, out);
                    self.state = if last {
                        State::Head
                    } else {
                        State::Trailers(seen)
                    };
                }
            }
        }
        Ok(())
    }

    /// One CRLF-terminated line at the start of the held bytes, if complete.
    fn line(&self) -> Result<Option<Line>, Refusal> {
        let Some(lf) = self.held.iter().position(|&b| b == b'\n') else {
            if self.held.len() > MAX_LINE {
                return Err(body_error("a chunk-size or trailer line is too long"));
            }
            return Ok(None);
        };
        if lf > MAX_LINE {
            return Err(body_error("a chunk-size or trailer line is too long"));
        }
        if lf == 0 || self.held[lf - 1] != b'\r' {
            return Err(body_error(
                "a chunk-size or trailer line does not end in CRLF",
            ));
        }
        Ok(Some(Line {
            content: lf - 1,
            total: lf + 1,
        }))
    }

    /// Parses and checks the head at the start of the held bytes: its length and the body's
    /// framing, `None` while incomplete.
    fn head(&self) -> Result<Option<(usize, Framing)>, Refusal> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&self.held);
        let line = || {
            req.method
                .zip(req.path)
                .map(|(m, p)| (m.to_string(), p.to_string()))
        };
        let too_large = || {
            refuse(
                431,
                "http1.headers_too_large",
                format!(
                    "the request headers are over the limit of {} bytes",
                    self.limits.max_bytes
                ),
            )
        };
        let len = match parsed {
            Ok(httparse::Status::Partial) if self.held.len() > self.limits.max_bytes => {
                return Err(Refusal {
                    request_line: line(),
                    ..too_large()
                });
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(len)) if len > self.limits.max_bytes => {
                return Err(Refusal {
                    request_line: line(),
                    ..too_large()
                });
            }
            Ok(httparse::Status::Complete(len)) => len,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refuse(
                    431,
                    "http1.too_many_headers",
                    format!(
                        "the request has more than {} headers",
                        self.limits.max_headers
                    ),
                ));
            }
            Err(e) => {
                return Err(refuse(
                    400,
                    "http1.codec_error",
                    format!("the request head is malformed: {e}"),
                ));
            }
        };
        framing(&req).map(|f| Some((len, f))).map_err(|r| Refusal {
            request_line: line(),
            ..r
        })
    }
}

struct Line {
    /// Bytes before the CRLF.
    content: usize,
    /// Bytes with the CRLF.
    total: usize,
}

/// The body's framing by the head's `Content-Length` and `Transfer-Encoding`, as Envoy checks
/// them.
fn framing(req: &httparse::Request<'_, '_>) -> Result<Framing, Refusal> {
    let mut length: Option<u64> = None;
    let mut encodings: Vec<String> = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for item in h.value.split(|&b| b == b',') {
                let item = item.trim_ascii();
                let n = std::str::from_utf8(item)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        refuse(
                            400,
                            "http1.codec_error",
                            format!(
                                "Content-Length {:?} is not a number",
                                String::from_utf8_lossy(h.value)
                            ),
                        )
                    })?;
                match length {
                    Some(prev) if prev != n => {
                        return Err(refuse(
                            400,
                            "http1.codec_error",
                            format!("two different Content-Length values: {prev} and {n}"),
                        ));
                    }
                    _ => length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings.extend(
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty()),
            );
        }
    }
    let has_te = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if !has_te {
        let upgrade = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection")
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        }) && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        return Ok(match length {
            None | Some(0) if upgrade => Framing::Upgrade,
            None => Framing::None,
            Some(n) => Framing::Length(n),
        });
    }
    if req.version == Some(0) {
        return Err(refuse(
            400,
            "http1.codec_error",
            "HTTP/1.0 requests cannot have a Transfer-Encoding",
        ));
    }
    if encodings != ["chunked"] {
        return Err(refuse(
            501,
            "http1.invalid_transfer_encoding",
            format!(
                "Transfer-Encoding {:?} is not supported (only chunked)",
                encodings.join(", ")
            ),
        ));
    }
    if length.is_some() {
        return Err(refuse(
            400,
            "http1.content_length_and_chunked_not_allowed",
            "Content-Length and Transfer-Encoding: chunked together are not allowed",
        ));
    }
    Ok(Framing::Chunked)
}

/// A chunk-size line: hexadecimal digits, then optional `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    let digits = line
        .iter()
        .position(|&b| b == b';')
        .map_or(line, |i| &line[..i])
        .trim_ascii_end();
    let bad = || {
        body_error(format!(
            "chunk size {:?} is not a hexadecimal number",
            String::from_utf8_lossy(&line[..line.len().min(32)])
        ))
    };
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8]) -> (Vec<u8>, Result<(), Refusal>) {
        let mut s = Scanner::new(HeadLimits::default(), true);
        let mut out = Vec::new();
        let r = s.feed(input, &mut out);
        (out, r)
    }

    /// The same bytes one at a time give the same result.
    fn scan_bytewise(input: &[u8]) -> (Vec<u8>, Result<(), Refusal>) {
        let mut s = Scanner::new(HeadLimits::default(), true);
        let mut out = Vec::new();
        for b in input {
            if let Err(e) = s.feed(std::slice::from_ref(b), &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    fn refused(input: &[u8]) -> Refusal {
        let (out, r) = scan(input);
        let (out1, r1) = scan_bytewise(input);
        assert_eq!(
            r,
            r1,
            "bytewise differs for {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(out, out1);
        r.expect_err("refused")
    }

    #[test]
    fn good_requests_pass_whole() {
        let reqs: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00garbage",
        ];
        for r in reqs {
            assert_eq!(scan(r), (r.to_vec(), Ok(())));
            assert_eq!(scan_bytewise(r), (r.to_vec(), Ok(())));
        }
    }

    #[test]
    fn bytes_after_an_upgrade_request_pass_unchecked() {
        let ws: &[u8] = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\x00\r\n\r\n";
        assert_eq!(scan(ws), (ws.to_vec(), Ok(())));
        assert_eq!(scan_bytewise(ws), (ws.to_vec(), Ok(())));
        // Without `Connection: upgrade` it is no upgrade: what follows is checked as HTTP/1.
        let not = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(not).status, 400);
    }

    #[test]
    fn an_incomplete_head_is_held_back() {
        let (out, r) = scan(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(out.is_empty() && r.is_ok());
        let mut s = Scanner::new(HeadLimits::default(), true);
        let mut out = Vec::new();
        s.feed(b"GET / HT", &mut out).unwrap();
        assert!(s.in_head() && out.is_empty());
        s.feed(b"TP/1.1\r\n\r\n", &mut out).unwrap();
        assert!(!s.in_head());
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let r = refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(
            (r.status, r.details),
            (400, "http1.content_length_and_chunked_not_allowed")
        );
        assert_eq!(r.request_line, Some(("POST".into(), "/".into())));
        let r = refused(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(r.status, 400);
        let r = refused(b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n");
        assert_eq!(r.status, 400);
        let r = refused(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n");
        assert_eq!(r.status, 400);
        let r = refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            (r.status, r.details),
            (501, "http1.invalid_transfer_encoding")
        );
        let r = refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.status, 400);
        assert!(!r.in_body);
    }

    #[test]
    fn bad_chunks_are_refused_in_the_body() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"5\nhello",
        ] {
            let input = [head.as_slice(), body].concat();
            let r = refused(&input);
            assert!(r.in_body, "{body:?}");
            assert_eq!(r.status, 400);
        }
    }

    #[test]
    fn bad_bytes_and_limits() {
        for input in [
            &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX(A): a\r\n\r\n",
        ] {
            assert_eq!(
                refused(input).status,
                400,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many).details, "http1.too_many_headers");
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(61 * 1024));
        let r = refused(big.as_bytes());
        assert_eq!((r.status, r.details), (431, "http1.headers_too_large"));
    }
}
