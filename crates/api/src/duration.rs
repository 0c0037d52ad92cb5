//! Istio duration strings.
//!
//! Istio reads durations the way Go's `time.ParseDuration` does (`"5s"`, `"0.5s"`, `"100ms"`,
//! `"1h30m"`), which includes protobuf-JSON's `"1.5s"`. The original text is kept so a resource
//! reads back exactly as it was written.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A signed duration, as written in a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    nanos: i128,
    text: String,
}

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: {reason} (write it like \"5s\", \"0.5s\", \"100ms\" or \"1h30m\")"
)]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl Duration {
    /// Reads a Go-style duration string.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError {
            text: text.to_string(),
            reason,
        };
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        if rest.is_empty() {
            return Err(err("empty"));
        }
        if rest == "0" {
            return Ok(Self {
                nanos: 0,
                text: text.to_string(),
            });
        }
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let scale: i128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3600 * 1_000_000_000,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            let (int_part, frac_part) = match num.split_once('.') {
                Some((i, f)) => (i, f),
                None => (num, ""),
            };
            if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
                return Err(err("malformed number"));
            }
            let int: i128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("number too large"))?
            };
            let mut frac_nanos: i128 = 0;
            let mut div: i128 = 1;
            for c in frac_part.chars().take(18) {
                frac_nanos = frac_nanos * 10 + i128::from(c as u8 - b'0');
                div *= 10;
            }
            total = int
                .checked_mul(scale)
                .and_then(|v| v.checked_add(frac_nanos * scale / div))
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too large"))?;
            if total > i128::from(i64::MAX) {
                return Err(err("too large"));
            }
            rest = after;
        }
        Ok(Self {
            nanos: if negative { -total } else { total },
            text: text.to_string(),
        })
    }

    /// A duration from a number of nanoseconds, written in seconds.
    pub fn from_nanos(nanos: i128) -> Self {
        let text = if nanos % 1_000_000_000 == 0 {
            format!("{}s", nanos / 1_000_000_000)
        } else {
            format!("{}s", nanos as f64 / 1e9)
        };
        Self { nanos, text }
    }

    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    pub fn as_millis_f64(&self) -> f64 {
        self.nanos as f64 / 1e6
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The duration as a std duration; negative durations become zero.
    pub fn to_std(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(u64::try_from(self.nanos.max(0)).unwrap_or(u64::MAX))
    }

    /// The text the duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> f64 {
        Duration::parse(s).unwrap().as_millis_f64()
    }

    #[test]
    fn reads_go_and_proto_json_forms() {
        assert_eq!(ms("5s"), 5000.0);
        assert_eq!(ms("0.5s"), 500.0);
        assert_eq!(ms(".5s"), 500.0);
        assert_eq!(ms("100ms"), 100.0);
        assert_eq!(ms("1h30m"), 5_400_000.0);
        assert_eq!(ms("1m0.5s"), 60_500.0);
        assert_eq!(ms("250us"), 0.25);
        assert_eq!(ms("0"), 0.0);
        assert_eq!(ms("-1s"), -1000.0);
        assert_eq!(Duration::parse("1.5s").unwrap().to_string(), "1.5s");
    }

    #[test]
    fn refuses_malformed() {
        for bad in ["", "5", "s", "5x", "1..5s", "abc", "5 s", "-", "1.2.3s"] {
            let e = Duration::parse(bad).unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
        assert!(Duration::parse("99999999999h").is_err());
    }
}
