//! Helpers every conversion shares: typed configs (`Any`), socket addresses, durations and
//! fractions. They sit below `listener`, `route` and `cluster`, which import them and not each
//! other's helpers.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::Any;

use super::invalid::Refusal;

/// Decodes an `Any` of the expected type URL; a refusal without a path (the caller knows the
/// field).
pub(crate) fn decode<M: prost::Message + Default>(
    any: &Any,
    type_url: &'static str,
) -> Result<M, Refusal> {
    if any.type_url != type_url {
        return Err(Refusal::wrong_type(&any.type_url, type_url));
    }
    M::decode(any.value.as_slice()).map_err(Refusal::undecodable)
}

/// A TCP socket address (`field` names it in refusals).
pub(crate) fn socket_addr(
    address: Option<&Address>,
    field: &'static str,
) -> Result<SocketAddr, Refusal> {
    let Some(address::Address::SocketAddress(sa)) = address.and_then(|a| a.address.as_ref()) else {
        return Err(Refusal::unsupported_value(
            field,
            "other than a socket address (pipes, internal listeners)",
        ));
    };
    let at = |r: Refusal| r.under(field);
    if sa.protocol != socket_address::Protocol::Tcp as i32 {
        return Err(at(Refusal::unsupported_value("protocol", "UDP")));
    }
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(at(Refusal::unsupported("named_port")));
    };
    let ip = sa.address.parse().map_err(|_| {
        at(Refusal::bad_value(
            "address",
            format!("{:?}", sa.address),
            "an IP address",
        ))
    })?;
    let port = u16::try_from(port).map_err(|_| {
        at(Refusal::bad_value(
            "port_value",
            port,
            "a port (at most 65535)",
        ))
    })?;
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// A fraction as parts per million (absent: all).
pub(crate) fn per_million(p: Option<&FractionalPercent>) -> u32 {
    let Some(p) = p else { return 1_000_000 };
    let scale = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::Hundred) => 10_000,
        Ok(fractional_percent::DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}
