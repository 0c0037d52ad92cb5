//! Just enough of PEM, base64 and X.509 to tell whether a Secret holds a certificate that is
//! valid now (Istio's `ValidateCertificate`): its validity period, read from the DER.

use std::time::{SystemTime, UNIX_EPOCH};

/// Why a certificate is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM block")]
    NoPem,
    #[error("the PEM block is not valid base64")]
    Base64,
    #[error("the certificate cannot be parsed")]
    Der,
    #[error("the certificate is expired or not yet valid")]
    Expired,
}

/// Decodes standard base64 (whitespace ignored, padding optional).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            c if c.is_ascii_whitespace() => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Checks the first PEM block of `pem` is a certificate valid at `now` (seconds since 1970).
pub fn validate_pem(pem: &str, now: i64) -> Result<(), CertError> {
    let begin = pem.find("-----BEGIN ").ok_or(CertError::NoPem)?;
    let rest = &pem[begin..];
    let body_start = rest.find('\n').ok_or(CertError::NoPem)? + 1;
    let end = rest.find("-----END ").ok_or(CertError::NoPem)?;
    if end < body_start {
        return Err(CertError::NoPem);
    }
    let der = base64_decode(&rest[body_start..end]).ok_or(CertError::Base64)?;
    let (not_before, not_after) = validity(&der).ok_or(CertError::Der)?;
    if now < not_before || now > not_after {
        return Err(CertError::Expired);
    }
    Ok(())
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One DER element: (tag, content, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len0, mut b) = b.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &x in &b[..n] {
            l = (l << 8) | usize::from(x);
        }
        b = &b[n..];
        l
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// `(notBefore, notAfter)` of a DER certificate.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        rest = tlv(rest)?.2; // the serial number
    }
    let rest = tlv(rest)?.2; // the signature algorithm
    let rest = tlv(rest)?.2; // the issuer
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((time(t1, v1)?, time(t2, v2)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as seconds since 1970.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (m, d, hh, mm, ss) = (n(0..2)?, n(2..4)?, n(4..6)?, n(6..8)?, n(8..10)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_times() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8").unwrap(), b"hello");
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x18, b"20230314061541Z"), Some(1_678_774_541));
        assert_eq!(validate_pem("hush hush", 0), Err(CertError::NoPem));
    }
}
