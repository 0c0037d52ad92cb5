//! What Envoy's `tls_inspector` listener filter learns from a connection's first bytes, without
//! consuming them: whether it is TLS (`transport_protocol` `tls`, else `raw_buffer`), and from a
//! TLS ClientHello the server name (SNI) and the application protocols offered (ALPN), which
//! filter chains match on.

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS ClientHello.
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
    /// Not TLS.
    Plaintext,
    /// A TLS record has started but the ClientHello is not whole yet: read more.
    NeedMore,
}

/// The most of a ClientHello worth waiting for (Envoy's tls_inspector reads up to 64 KiB; a
/// ClientHello is rarely over 2 KiB).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Reads `buf`, the bytes received so far.
pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    // A handshake record: content type 22, version 3.x.
    if buf[0] != 0x16 || (buf.len() > 1 && buf[1] != 0x03) {
        return Sniffed::Plaintext;
    }
    // The handshake message may span records: collect record payloads.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + 5) else {
            return Sniffed::NeedMore;
        };
        if header[0] != 0x16 || header[1] != 0x03 {
            return Sniffed::Plaintext;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(payload) = buf.get(at + 5..at + 5 + len) else {
            // Part of this record.
            handshake.extend_from_slice(&buf[(at + 5).min(buf.len())..]);
            if handshake_complete(&handshake).is_some() {
                break;
            }
            return if buf.len() >= MAX_CLIENT_HELLO {
                Sniffed::Plaintext
            } else {
                Sniffed::NeedMore
            };
        };
        handshake.extend_from_slice(payload);
        at += 5 + len;
        if handshake_complete(&handshake).is_some() {
            break;
        }
    }
    match parse_client_hello(&handshake) {
        Some((server_name, alpn)) => Sniffed::Tls { server_name, alpn },
        // A handshake record that is not a ClientHello we can read: TLS all the same.
        None => Sniffed::Tls {
            server_name: None,
            alpn: Vec::new(),
        },
    }
}

/// The length of the first handshake message, when all of it is in `handshake`.
fn handshake_complete(handshake: &[u8]) -> Option<usize> {
    let header = handshake.get(..4)?;
    let len =
        (usize::from(header[1]) << 16) | (usize::from(header[2]) << 8) | usize::from(header[3]);
    (handshake.len() >= 4 + len).then_some(len)
}

/// A cursor over bytes that fails softly on truncation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// SNI and ALPN of a ClientHello handshake message.
fn parse_client_hello(msg: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None;
    }
    let len = (r.u8()? << 16) | r.u16()?;
    let mut r = Reader(r.take(len)?);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // compression_methods
    let mut server_name = None;
    let mut alpn = Vec::new();
    let Some(extensions) = r.vec16() else {
        return Some((None, alpn));
    };
    let mut exts = Reader(extensions);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match ty {
            0x0000 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && server_name.is_none() {
                        server_name = std::str::from_utf8(name)
                            .ok()
                            .map(|s| s.to_ascii_lowercase());
                    }
                }
            }
            0x0010 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let p = list.vec8()?;
                    alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some((server_name, alpn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, with SNI and ALPN.
    fn client_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        use std::sync::Arc;
        let mut roots = rustls::RootCertStore::empty();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        roots.add(cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let hello = client_hello(
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
            &["istio-http/1.1", "istio", "http/1.1"],
        );
        assert_eq!(
            sniff(&hello),
            Sniffed::Tls {
                server_name: Some("outbound_.9080_.v1_.reviews.default.svc.cluster.local".into()),
                alpn: vec!["istio-http/1.1".into(), "istio".into(), "http/1.1".into()],
            }
        );
        // Every prefix is either "more" or the same answer; never a wrong one.
        for n in 0..hello.len() {
            assert_eq!(sniff(&hello[..n]), Sniffed::NeedMore, "prefix of {n} bytes");
        }
    }

    #[test]
    fn plaintext_is_told_from_the_first_bytes() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Plaintext);
        assert_eq!(sniff(b"\x16\x01"), Sniffed::Plaintext);
        assert_eq!(sniff(b"PRI * HTTP/2.0"), Sniffed::Plaintext);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        assert_eq!(sniff(b"\x16"), Sniffed::NeedMore);
    }

    #[test]
    fn garbage_in_a_handshake_record_does_not_panic() {
        for seed in 0u8..=255 {
            let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
            bytes.extend((0..60).map(|i| seed.wrapping_mul(31).wrapping_add(i)));
            let _ = sniff(&bytes);
        }
    }
}
