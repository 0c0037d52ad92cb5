//! Envoy's `envoy.filters.http.local_ratelimit` (the control plane emits it for Strait's
//! `LocalRateLimit`): the connection manager's filter and a route's `typed_per_filter_config`,
//! each with its own token bucket, built once with the config and shared by every request.
//!
//! The bucket refills as Envoy's has since 1.31 (its timer-less token bucket): `tokens_per_fill`
//! tokens spread evenly over each `fill_interval`, never more than `max_tokens`; it starts full.
//! It is one atomic (the time at which it was, or will be, empty), taken with a compare-and-swap:
//! no lock, no allocation per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as Pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    self as http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use hyper::header::{HeaderName, HeaderValue};
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::invalid::{At, Refusal, Segment, refuse_if};
use super::proto::{decode, duration, per_million};

pub const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
pub const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// One local_ratelimit config: the filter's own, or a route's.
#[derive(Debug, Serialize)]
pub struct LocalRateLimit {
    /// `None`: the filter is not enabled (`filter_enabled` 0%, Envoy's default), requests pass.
    pub bucket: Option<TokenBucket>,
    /// `filter_enforced` 100%: a request without a token is answered; 0%: it passes.
    pub enforced: bool,
    /// The answer's status (`status`; 429 when unset or below 400, as Envoy).
    pub status: u16,
    /// `response_headers_to_add`: name, value, append (else overwrite).
    #[serde(serialize_with = "ser_headers")]
    pub response_headers: Vec<(HeaderName, HeaderValue, bool)>,
}

impl PartialEq for LocalRateLimit {
    /// Same config (the buckets' fill levels are state, not config).
    fn eq(&self, other: &Self) -> bool {
        self.bucket.as_ref().map(TokenBucket::config)
            == other.bucket.as_ref().map(TokenBucket::config)
            && self.enforced == other.enforced
            && self.status == other.status
            && self.response_headers == other.response_headers
    }
}

fn ser_headers<S: Serializer>(
    v: &[(HeaderName, HeaderValue, bool)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, val, append)| (n.as_str(), val.to_str().unwrap_or("?"), append)),
    )
}

impl LocalRateLimit {
    /// Takes a token for a request: `false` when the request is to be answered with
    /// [`LocalRateLimit::status`] instead (enabled, enforced, and the bucket empty).
    pub fn allows(&self) -> bool {
        match &self.bucket {
            Some(b) => b.try_take() || !self.enforced,
            None => true,
        }
    }
}

/// Converts a local_ratelimit config; `per_route`: a route's, which must have a bucket (as
/// Envoy requires).
pub(crate) fn convert(any: &Any, per_route: bool) -> Result<Arc<LocalRateLimit>, Refusal> {
    let pb: Pb = decode(any, LOCAL_RATELIMIT_TYPE)?;
    refuse_if(!pb.descriptors.is_empty(), "descriptors")?;
    refuse_if(!pb.rate_limits.is_empty(), "rate_limits")?;
    refuse_if(pb.stage != 0, "stage")?;
    refuse_if(
        pb.local_rate_limit_per_downstream_connection,
        "local_rate_limit_per_downstream_connection",
    )?;
    refuse_if(
        pb.local_cluster_rate_limit.is_some(),
        "local_cluster_rate_limit",
    )?;
    refuse_if(
        !pb.request_headers_to_add_when_not_enforced.is_empty(),
        "request_headers_to_add_when_not_enforced",
    )?;
    refuse_if(
        pb.enable_x_ratelimit_headers != 0,
        "enable_x_ratelimit_headers",
    )?;
    refuse_if(pb.vh_rate_limits != 0, "vh_rate_limits")?;
    refuse_if(
        pb.rate_limited_as_resource_exhausted,
        "rate_limited_as_resource_exhausted",
    )?;
    refuse_if(
        pb.max_dynamic_descriptors.is_some(),
        "max_dynamic_descriptors",
    )?;
    refuse_if(pb.enable_retry_after_header, "enable_retry_after_header")?;
    // `always_consume_default_token_bucket` only matters with descriptors (refused above).
    let enabled = all_or_none(pb.filter_enabled.as_ref()).under("filter_enabled")?;
    let enforced = all_or_none(pb.filter_enforced.as_ref()).under("filter_enforced")?;
    let bucket = match &pb.token_bucket {
        Some(tb) => {
            let fill = tb
                .fill_interval
                .as_ref()
                .map(duration)
                .ok_or_else(|| Refusal::missing("fill_interval").under("token_bucket"))?;
            if fill < Duration::from_millis(50) {
                return Err(Refusal::bad_value(
                    "fill_interval",
                    format!("{fill:?}"),
                    "at least 50ms (as Envoy requires)",
                )
                .under("token_bucket"));
            }
            if tb.max_tokens == 0 {
                return Err(Refusal::bad_value("max_tokens", 0, "at least 1").under("token_bucket"));
            }
            let per_fill = tb.tokens_per_fill.as_ref().map_or(1, |v| v.value);
            if per_fill == 0 {
                return Err(
                    Refusal::bad_value("tokens_per_fill", 0, "at least 1").under("token_bucket")
                );
            }
            Some(TokenBucket::new(tb.max_tokens, per_fill, fill))
        }
        None if per_route => return Err(Refusal::missing("token_bucket")),
        None => None,
    };
    let status = pb
        .status
        .as_ref()
        .map_or(429, |s| u16::try_from(s.code).unwrap_or(429));
    let status = if (400..=599).contains(&status) {
        status
    } else {
        429
    };
    let response_headers = pb
        .response_headers_to_add
        .iter()
        .enumerate()
        .map(|(i, h)| super::route::header_option(h).index(i))
        .collect::<Result<_, _>>()
        .under("response_headers_to_add")?;
    Ok(Arc::new(LocalRateLimit {
        bucket: if enabled { bucket } else { None },
        enforced,
        status,
        response_headers,
    }))
}

/// The connection manager's local_ratelimit filter, if any: at most one, and after the
/// authentication and authorization filters (only CORS, fault and the router may follow it),
/// since strait-proxy runs it once the route is chosen.
pub(crate) fn hcm_filter(
    filters: &[http_connection_manager::HttpFilter],
) -> Result<Option<Arc<LocalRateLimit>>, Refusal> {
    const MAY_FOLLOW: [&str; 3] = [
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
    ];
    let mut found = None;
    for (i, f) in filters.iter().enumerate() {
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url == LOCAL_RATELIMIT_TYPE {
            if found.is_some() {
                return Err(Refusal::rule(
                    "",
                    "a second local_ratelimit filter: strait-proxy runs one",
                )
                .at(Segment::Index(i)));
            }
            found = Some(
                convert(any, false).map_err(|r| r.under("typed_config").at(Segment::Index(i)))?,
            );
        } else if found.is_some() && !MAY_FOLLOW.contains(&any.type_url.as_str()) {
            return Err(Refusal::rule(
                "",
                "comes after local_ratelimit: strait-proxy runs local_ratelimit once the route \
                 is chosen, after the other filters (only CORS, fault and the router may follow it)",
            )
            .at(Segment::Index(i)));
        }
    }
    Ok(found)
}

/// A runtime fraction that is all requests (`true`) or none (`false`, also when absent);
/// strait-proxy has no runtime, so `runtime_key` is not read.
fn all_or_none(f: Option<&RuntimeFractionalPercent>) -> Result<bool, Refusal> {
    let Some(f) = f else { return Ok(false) };
    match per_million(f.default_value.as_ref()) {
        0 => Ok(false),
        1_000_000 => Ok(true),
        share => Err(Refusal::bad_value(
            "default_value",
            format!("{} %", f64::from(share) / 10_000.0),
            "0% or 100% (strait-proxy enables or enforces for all requests or none)",
        )),
    }
}

/// A token bucket that refills continuously, capped at `max_tokens`, and starts full.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    /// How long one token takes to come back, in nanoseconds (at least 1).
    nanos_per_token: i64,
    origin: Instant,
    /// The time (nanoseconds since `origin`; negative before it) at which the bucket is empty:
    /// at `now` it holds `(now - empty_at) / nanos_per_token` tokens, at most `max_tokens`.
    empty_at: AtomicI64,
}

impl Serialize for TokenBucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (max_tokens, tokens_per_fill, fill) = self.config();
        #[derive(Serialize)]
        struct Config {
            max_tokens: u32,
            tokens_per_fill: u32,
            fill_interval: String,
        }
        Config {
            max_tokens,
            tokens_per_fill,
            fill_interval: super::secs::text(&fill),
        }
        .serialize(s)
    }
}

impl TokenBucket {
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> TokenBucket {
        let per_token = fill_interval.as_nanos() / u128::from(tokens_per_fill.max(1));
        let nanos_per_token = i64::try_from(per_token).unwrap_or(i64::MAX).max(1);
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            nanos_per_token,
            origin: Instant::now(),
            empty_at: AtomicI64::new(-Self::span(max_tokens, nanos_per_token)),
        }
    }

    fn config(&self) -> (u32, u32, Duration) {
        (self.max_tokens, self.tokens_per_fill, self.fill_interval)
    }

    /// How long `tokens` take to come back.
    fn span(tokens: u32, nanos_per_token: i64) -> i64 {
        i64::from(tokens).saturating_mul(nanos_per_token)
    }

    fn now(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        let now = self.now();
        // A bucket that has been full for a while holds max_tokens, no more.
        let full_since = now.saturating_sub(Self::span(self.max_tokens, self.nanos_per_token));
        let mut current = self.empty_at.load(Ordering::Relaxed);
        loop {
            let next = current.max(full_since).saturating_add(self.nanos_per_token);
            if next > now {
                return false;
            }
            match self.empty_at.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// The whole tokens in the bucket now.
    pub fn tokens(&self) -> u32 {
        let now = self.now();
        let held = (now - self.empty_at.load(Ordering::Relaxed)) / self.nanos_per_token;
        u32::try_from(held.clamp(0, i64::from(self.max_tokens))).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_full_and_refills_over_the_interval_up_to_max() {
        let b = TokenBucket::new(4, 2, Duration::from_secs(1));
        assert_eq!(b.tokens(), 4);
        assert_eq!((0..6).filter(|_| b.try_take()).count(), 4, "full: 4 tokens");
        assert!(!b.try_take());
        // Two tokens per second, spread: one every 500 ms.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!b.try_take(), "not yet half an interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.try_take(), "one token after 500 ms");
        assert!(!b.try_take());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.tokens(), 2, "tokens_per_fill per fill_interval");
        // A long pause fills it to max_tokens and no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.tokens(), 4);
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 4);
    }

    #[test]
    fn many_takers_at_once_get_exactly_the_tokens() {
        // A full bucket of 1000 that refills one token an hour: the threads race for exactly
        // the 1000 it holds, however slowly this machine runs them.
        let b = Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.try_take()).count())
            })
            .collect();
        let taken: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 1000);
    }

    #[test]
    fn a_config_is_refused_at_its_field() {
        use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket as PbBucket};
        use envoy_types::util::pack_any;
        let half = RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
            runtime_key: String::new(),
        };
        let pb = Pb {
            token_bucket: Some(PbBucket {
                max_tokens: 1,
                tokens_per_fill: None,
                fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            }),
            filter_enabled: Some(half),
            ..Default::default()
        };
        let e = convert(&pack_any(pb.clone()), false).unwrap_err();
        assert_eq!(e.path().to_string(), "filter_enabled.default_value");
        let e = convert(
            &pack_any(Pb {
                token_bucket: None,
                ..Default::default()
            }),
            true,
        )
        .unwrap_err();
        assert_eq!(e.path().to_string(), "token_bucket");
        let off = convert(
            &pack_any(Pb {
                filter_enabled: None,
                ..pb
            }),
            false,
        )
        .unwrap();
        assert!(off.bucket.is_none(), "not enabled: no bucket");
        assert!(off.allows());
    }
}
