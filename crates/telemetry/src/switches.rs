//! Which of Istio's standard metrics a proxy reports, as the Telemetry API's metric overrides
//! (`disabled: true` for a metric and a mode) leave them.
//!
//! The control plane puts a listener's disabled metrics in the listener's metadata
//! ([`METADATA_KEY`], `{"disabled": ["REQUEST_COUNT", ...]}` with the Telemetry API's names): an
//! inbound listener's are the server side's (`reporter="destination"`), the others' the client
//! side's (`reporter="source"`). No metadata: every metric is on. Upstream Envoy ignores it (it
//! has no Istio metrics to switch).

use crate::labels::Reporter;

/// The listener metadata key ([`MetricSet`] under `disabled`).
pub const METADATA_KEY: &str = "istio.stats";

/// One of Istio's standard metrics, by the Telemetry API's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::TcpOpenedConnections,
        Metric::TcpClosedConnections,
        Metric::TcpSentBytes,
        Metric::TcpReceivedBytes,
        Metric::GrpcRequestMessages,
        Metric::GrpcResponseMessages,
    ];

    /// The Telemetry API's name (`REQUEST_COUNT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Metric::RequestCount => "REQUEST_COUNT",
            Metric::RequestDuration => "REQUEST_DURATION",
            Metric::RequestSize => "REQUEST_SIZE",
            Metric::ResponseSize => "RESPONSE_SIZE",
            Metric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            Metric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            Metric::TcpSentBytes => "TCP_SENT_BYTES",
            Metric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            Metric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            Metric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of metrics (the disabled ones of one side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricSet(u16);

impl MetricSet {
    pub const NONE: MetricSet = MetricSet(0);
    /// The four metrics of an HTTP or gRPC request.
    pub const HTTP: MetricSet = MetricSet(
        (1 << Metric::RequestCount as u16)
            | (1 << Metric::RequestDuration as u16)
            | (1 << Metric::RequestSize as u16)
            | (1 << Metric::ResponseSize as u16),
    );
    /// The four metrics of a TCP connection.
    pub const TCP: MetricSet = MetricSet(
        (1 << Metric::TcpOpenedConnections as u16)
            | (1 << Metric::TcpClosedConnections as u16)
            | (1 << Metric::TcpSentBytes as u16)
            | (1 << Metric::TcpReceivedBytes as u16),
    );

    pub fn contains(self, m: Metric) -> bool {
        self.0 & m.bit() != 0
    }

    /// Every metric of `other` is in the set.
    pub fn covers(self, other: MetricSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, m: Metric) {
        self.0 |= m.bit();
    }

    pub fn remove(&mut self, m: Metric) {
        self.0 &= !m.bit();
    }

    pub fn union(self, other: MetricSet) -> MetricSet {
        MetricSet(self.0 | other.0)
    }

    /// The metrics of the set that are not in `other`.
    pub fn difference(self, other: MetricSet) -> MetricSet {
        MetricSet(self.0 & !other.0)
    }

    /// The Telemetry API's names of the metrics in the set, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Metric::ALL
            .into_iter()
            .filter(move |m| self.contains(*m))
            .map(Metric::name)
    }

    /// From the Telemetry API's names; an unknown name is the error.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<MetricSet, String> {
        let mut set = MetricSet::NONE;
        for name in names {
            let m = Metric::from_name(name).ok_or_else(|| {
                format!(
                    "unknown metric {name:?}: expected one of {}",
                    Metric::ALL.map(Metric::name).join(", ")
                )
            })?;
            set.insert(m);
        }
        Ok(set)
    }
}

impl FromIterator<Metric> for MetricSet {
    fn from_iter<I: IntoIterator<Item = Metric>>(iter: I) -> MetricSet {
        let mut set = MetricSet::NONE;
        for m in iter {
            set.insert(m);
        }
        set
    }
}

/// The disabled metrics of both sides of a proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disabled {
    /// Client side (`reporter="source"`): outbound listeners and gateways.
    pub source: MetricSet,
    /// Server side (`reporter="destination"`): inbound listeners.
    pub destination: MetricSet,
}

impl Disabled {
    pub fn of(&self, reporter: Reporter) -> MetricSet {
        match reporter {
            Reporter::Source => self.source,
            Reporter::Destination => self.destination,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        let set = MetricSet::from_names(["REQUEST_COUNT", "TCP_SENT_BYTES"]).unwrap();
        assert!(set.contains(Metric::RequestCount) && set.contains(Metric::TcpSentBytes));
        assert!(!set.contains(Metric::RequestDuration));
        assert_eq!(
            set.names().collect::<Vec<_>>(),
            ["REQUEST_COUNT", "TCP_SENT_BYTES"]
        );
        let err = MetricSet::from_names(["REQUEST_COUNTS"]).unwrap_err();
        assert!(
            err.contains("\"REQUEST_COUNTS\"") && err.contains("REQUEST_DURATION"),
            "{err}"
        );
        let all: MetricSet = Metric::ALL.into_iter().collect();
        assert!(all.covers(MetricSet::HTTP) && all.covers(MetricSet::TCP));
        assert!(!set.covers(MetricSet::HTTP));
    }
}
