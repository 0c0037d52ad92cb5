//! Trace context headers: W3C `traceparent` (and `tracestate`, passed on as it is), B3's
//! `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`/`x-b3-flags` and its single `b3` header.
//! Parsing never fails loudly: a malformed header is as good as none, as in Envoy.

/// A trace context a request came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Incoming {
    /// The trace and the caller's span, when the headers name them.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// W3C `traceparent`: `00-TRACEID(32 hex)-SPANID(16 hex)-FLAGS(2 hex)`. Higher versions are
/// read by their first four fields, as the specification asks; all-zero ids are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = hex_bytes(trace)?;
    let span_id: [u8; 8] = hex_bytes(span)?;
    let [flags]: [u8; 1] = hex_bytes(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        parent: Some(Parent { trace_id, span_id }),
        sampled: Some(flags & 1 == 1),
    })
}

/// B3's multiple headers: the trace id (16 or 32 hex), the span id, `x-b3-sampled` (`1`,
/// `true`, `0`, `false`) and `x-b3-flags: 1` (debug, which means sampled).
pub fn parse_b3(
    trace_id: Option<&[u8]>,
    span_id: Option<&[u8]>,
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<Incoming> {
    let sampled = if flags.is_some_and(|f| f == b"1") {
        Some(true)
    } else {
        sampled.and_then(b3_sampled)
    };
    let parent = match (trace_id, span_id) {
        (Some(t), Some(s)) => Some(Parent {
            trace_id: b3_trace_id(std::str::from_utf8(t).ok()?.trim())?,
            span_id: hex_bytes(std::str::from_utf8(s).ok()?.trim())?,
        }),
        _ => None,
    };
    (parent.is_some() || sampled.is_some()).then_some(Incoming { parent, sampled })
}

/// B3's single header: `TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`, or only the decision
/// (`0`, `1`, `d`).
pub fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return b3_sampled(first.as_bytes()).map(|s| Incoming {
            parent: None,
            sampled: Some(s),
        });
    };
    let parent = Parent {
        trace_id: b3_trace_id(first)?,
        span_id: hex_bytes(span)?,
    };
    let sampled = parts.next().and_then(|s| b3_sampled(s.as_bytes()));
    Some(Incoming {
        parent: Some(parent),
        sampled,
    })
}

fn b3_sampled(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" | b"d" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// A 64-bit B3 trace id is the low half of a 128-bit one.
fn b3_trace_id(text: &str) -> Option<[u8; 16]> {
    match text.len() {
        32 => hex_bytes(text),
        16 => {
            let low: [u8; 8] = hex_bytes(text)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
    .filter(|id| *id != [0; 16])
}

/// Exactly `N` bytes of lowercase or uppercase hex.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A `traceparent` value naming `span_id` as the parent of the next hop.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex(trace_id),
        hex(span_id),
        if sampled { "01" } else { "00" }
    )
}

/// A single `b3` value.
pub fn b3_single(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "{}-{}-{}",
        hex(trace_id),
        hex(span_id),
        if sampled { "1" } else { "0" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let i = parse_traceparent(v).unwrap();
        assert_eq!(i.sampled, Some(true));
        let p = i.parent.unwrap();
        assert_eq!(
            traceparent(&p.trace_id, &p.span_id, true).as_bytes(),
            v.as_slice()
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version: its first four fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn b3_in_both_forms() {
        let i = parse_b3(
            Some(b"463ac35c9f6413ad"),
            Some(b"a2fb4a1d1a96d312"),
            Some(b"1"),
            None,
        )
        .unwrap();
        let p = i.parent.unwrap();
        assert_eq!(hex(&p.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(i.sampled, Some(true));
        let s = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
        )
        .unwrap();
        assert_eq!(s.sampled, Some(false));
        assert_eq!(hex(&s.parent.unwrap().span_id), "e457b5a2e4d86bd1");
        assert_eq!(
            parse_b3_single(b"d"),
            Some(Incoming {
                parent: None,
                sampled: Some(true)
            })
        );
        assert_eq!(
            parse_b3(None, None, Some(b"0"), Some(b"1"))
                .unwrap()
                .sampled,
            Some(true)
        );
        assert_eq!(parse_b3(None, None, None, None), None);
    }
}
