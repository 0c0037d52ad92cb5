//! Outlier detection (Envoy's `outlier_detection`, the consecutive-error detectors): per
//! endpoint of a cluster, consecutive 5xx, consecutive gateway failures (502, 503, 504 and
//! locally originated failures) and, with `split_external_local_origin_errors`, consecutive
//! local-origin failures. Reaching a threshold ejects the endpoint at once, with the
//! detector's `enforcing_*` chance and within `max_ejection_percent` (one endpoint can always be
//! ejected); it stays out for `base_ejection_time` times the number of times it was ejected
//! (at most `max_ejection_time`), and that multiplier drops by one for every `interval` the
//! endpoint then stays in.
//!
//! The state is checked lazily when the balancer asks, instead of on an `interval` timer: an
//! endpoint comes back as soon as its time is up (Envoy waits for the next tick).
//! Success-rate and failure-percentage ejection are not implemented.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::OutlierDetection;

/// How an attempt on an endpoint ended, as the detectors see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The endpoint answered with this status.
    Status(u16),
    /// Connect failure, reset or timeout (Envoy's locally originated errors); without
    /// `split_external_local_origin_errors` these count as 503 (a gateway error).
    LocalFailure,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// When it was ejected, while it is.
    ejected_at: Option<Instant>,
    /// Ejections so far, the multiplier of the base ejection time.
    ejections: u32,
    /// From when the multiplier's next decrement is counted (the uneject time, then each
    /// decrement).
    since: Option<Instant>,
}

impl Host {
    fn ejection_time(&self, od: &OutlierDetection) -> Duration {
        od.base_ejection_time
            .saturating_mul(self.ejections.max(1))
            .min(od.max_ejection_time.max(od.base_ejection_time))
    }

    /// Unejects when the time is up and lowers the multiplier for whole intervals served since.
    fn settle(&mut self, od: &OutlierDetection, now: Instant) {
        if let Some(at) = self.ejected_at {
            let until = at + self.ejection_time(od);
            if now < until {
                return;
            }
            self.ejected_at = None;
            self.since = Some(until);
        }
        if let Some(since) = self.since
            && self.ejections > 0
            && !od.interval.is_zero()
        {
            let passed = (now.saturating_duration_since(since).as_nanos() / od.interval.as_nanos())
                .min(u128::from(u32::MAX)) as u32;
            if passed > 0 {
                self.ejections = self.ejections.saturating_sub(passed);
                self.since = Some(since + od.interval * passed);
            }
        }
    }
}

/// The detectors' state for one cluster, by endpoint (`host:port`).
#[derive(Debug, Default)]
pub(crate) struct ClusterOutliers {
    hosts: Mutex<HashMap<String, Host>>,
}

/// Why an endpoint was ejected (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

impl ClusterOutliers {
    /// The endpoints among `endpoints` that are ejected now (state of endpoints no longer in
    /// the cluster is dropped).
    pub(crate) fn ejected(
        &self,
        od: &OutlierDetection,
        endpoints: &[String],
        now: Instant,
    ) -> HashSet<String> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.len() > endpoints.len() {
            let current: HashSet<&String> = endpoints.iter().collect();
            hosts.retain(|k, _| current.contains(k));
        }
        let mut out = HashSet::new();
        for (name, h) in hosts.iter_mut() {
            h.settle(od, now);
            if h.ejected_at.is_some() {
                out.insert(name.clone());
            }
        }
        out
    }

    /// Records an attempt's result; returns the detector that ejected the endpoint, if one did.
    pub(crate) fn report(
        &self,
        od: &OutlierDetection,
        endpoint: &str,
        endpoints: usize,
        result: Observed,
        now: Instant,
    ) -> Option<Detector> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let h = hosts.entry(endpoint.to_string()).or_default();
        h.settle(od, now);
        let status = match result {
            Observed::Status(s) => {
                if od.split_external_local_origin_errors {
                    // The connection worked: the local-origin streak ends.
                    h.consecutive_local = 0;
                }
                s
            }
            Observed::LocalFailure if od.split_external_local_origin_errors => {
                h.consecutive_local += 1;
                if h.consecutive_local == od.consecutive_local_origin_failure {
                    h.consecutive_local = 0;
                    return self.eject(
                        &mut hosts,
                        endpoint,
                        endpoints,
                        od,
                        od.enforcing_consecutive_local_origin_failure,
                        Detector::ConsecutiveLocalOriginFailure,
                        now,
                    );
                }
                return None;
            }
            Observed::LocalFailure => 503,
        };
        if !(500..600).contains(&status) {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return None;
        }
        let mut fired = None;
        if matches!(status, 502..=504) {
            h.consecutive_gateway += 1;
            if h.consecutive_gateway == od.consecutive_gateway_failure {
                fired = Some((
                    od.enforcing_consecutive_gateway_failure,
                    Detector::ConsecutiveGatewayFailure,
                ));
            }
        } else {
            h.consecutive_gateway = 0;
        }
        h.consecutive_5xx += 1;
        if h.consecutive_5xx == od.consecutive_5xx {
            // Envoy runs the gateway detector first; an ejection by it stands.
            let five = (od.enforcing_consecutive_5xx, Detector::Consecutive5xx);
            fired = match fired {
                Some((e, d)) if roll(e) => Some((100, d)),
                _ => Some(five),
            };
        }
        let (enforcing, detector) = fired?;
        self.eject(
            &mut hosts, endpoint, endpoints, od, enforcing, detector, now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn eject(
        &self,
        hosts: &mut HashMap<String, Host>,
        endpoint: &str,
        endpoints: usize,
        od: &OutlierDetection,
        enforcing: u32,
        detector: Detector,
        now: Instant,
    ) -> Option<Detector> {
        let active = hosts.values().filter(|h| h.ejected_at.is_some()).count();
        let h = hosts.get_mut(endpoint)?;
        if h.ejected_at.is_some() {
            return None;
        }
        // The detector's streak starts again whether or not it ejects, as in Envoy: a further
        // run of errors is detected again.
        match detector {
            Detector::Consecutive5xx => h.consecutive_5xx = 0,
            Detector::ConsecutiveGatewayFailure => h.consecutive_gateway = 0,
            Detector::ConsecutiveLocalOriginFailure => h.consecutive_local = 0,
        }
        if !roll(enforcing) {
            return None;
        }
        let share = 100.0 * (active + 1) as f64 / endpoints.max(1) as f64;
        if active > 0 && share > f64::from(od.max_ejection_percent) {
            return None;
        }
        h.ejections = h.ejections.saturating_add(1);
        h.ejected_at = Some(now);
        h.since = None;
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        h.consecutive_local = 0;
        Some(detector)
    }
}

fn roll(percent: u32) -> bool {
    percent >= 100 || fastrand::u32(0..100) < percent
}

/// Outlier state of every cluster, by cluster name.
#[derive(Debug, Default)]
pub(crate) struct Outliers {
    clusters: RwLock<HashMap<String, Arc<ClusterOutliers>>>,
}

impl Outliers {
    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterOutliers> {
        crate::shared_entry(&self.clusters, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(consecutive_5xx: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            ..Default::default()
        }
    }

    fn eps(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn consecutive_5xx_ejects_for_base_times_ejections() {
        let (o, c, e) = (od(3), ClusterOutliers::default(), eps(3));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(c.report(&o, &e[0], 3, Observed::Status(500), t0), None);
        }
        // A success in between starts the count again.
        c.report(&o, &e[0], 3, Observed::Status(200), t0);
        for _ in 0..2 {
            c.report(&o, &e[0], 3, Observed::Status(500), t0);
        }
        assert!(c.ejected(&o, &e, t0).is_empty());
        assert_eq!(
            c.report(&o, &e[0], 3, Observed::Status(500), t0),
            Some(Detector::Consecutive5xx)
        );
        assert_eq!(c.ejected(&o, &e, t0 + Duration::from_secs(29)).len(), 1);
        let back = t0 + Duration::from_secs(30);
        assert!(c.ejected(&o, &e, back).is_empty());
        // Ejected again at once: twice the base time.
        for _ in 0..3 {
            c.report(&o, &e[0], 3, Observed::Status(503), back);
        }
        assert_eq!(c.ejected(&o, &e, back + Duration::from_secs(59)).len(), 1);
        assert!(c.ejected(&o, &e, back + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn the_multiplier_drops_for_each_interval_served() {
        let (o, c, e) = (od(1), ClusterOutliers::default(), eps(2));
        let t0 = Instant::now();
        c.report(&o, &e[0], 2, Observed::Status(500), t0);
        let back = t0 + Duration::from_secs(30);
        assert!(c.ejected(&o, &e, back).is_empty());
        // One interval in, the multiplier is back to 0: the next ejection is base time again.
        let later = back + Duration::from_secs(2);
        assert!(c.ejected(&o, &e, later).is_empty());
        c.report(&o, &e[0], 2, Observed::Status(500), later);
        assert!(
            c.ejected(&o, &e, later + Duration::from_secs(30))
                .is_empty()
        );
    }

    #[test]
    fn gateway_failures_need_their_enforcing_and_local_failures_count_as_503() {
        let mut o = od(100);
        o.consecutive_gateway_failure = 2;
        let (c, e) = (ClusterOutliers::default(), eps(2));
        let t0 = Instant::now();
        // enforcing_consecutive_gateway_failure defaults to 0: detected, not ejected.
        c.report(&o, &e[0], 2, Observed::LocalFailure, t0);
        assert_eq!(c.report(&o, &e[0], 2, Observed::Status(502), t0), None);
        o.enforcing_consecutive_gateway_failure = 100;
        c.report(&o, &e[1], 2, Observed::LocalFailure, t0);
        assert_eq!(
            c.report(&o, &e[1], 2, Observed::Status(504), t0),
            Some(Detector::ConsecutiveGatewayFailure)
        );
        // A 500 is not a gateway error: it ends the gateway streak.
        let c = ClusterOutliers::default();
        c.report(&o, &e[0], 2, Observed::Status(503), t0);
        c.report(&o, &e[0], 2, Observed::Status(500), t0);
        assert_eq!(c.report(&o, &e[0], 2, Observed::Status(503), t0), None);
    }

    #[test]
    fn max_ejection_percent_holds_but_one_can_always_go() {
        let mut o = od(1);
        o.max_ejection_percent = 10;
        let (c, e) = (ClusterOutliers::default(), eps(3));
        let t0 = Instant::now();
        for ep in &e {
            c.report(&o, ep, 3, Observed::Status(500), t0);
        }
        assert_eq!(c.ejected(&o, &e, t0).len(), 1);
        o.max_ejection_percent = 67;
        for ep in &e {
            c.report(&o, ep, 3, Observed::Status(500), t0);
        }
        assert_eq!(c.ejected(&o, &e, t0).len(), 2);
    }

    #[test]
    fn split_local_origin_failures_have_their_own_count() {
        let mut o = od(2);
        o.split_external_local_origin_errors = true;
        o.consecutive_local_origin_failure = 2;
        let (c, e) = (ClusterOutliers::default(), eps(2));
        let t0 = Instant::now();
        c.report(&o, &e[0], 2, Observed::LocalFailure, t0);
        // A response (even a 5xx) means the connection worked.
        c.report(&o, &e[0], 2, Observed::Status(500), t0);
        assert_eq!(c.report(&o, &e[0], 2, Observed::LocalFailure, t0), None);
        assert_eq!(
            c.report(&o, &e[0], 2, Observed::LocalFailure, t0),
            Some(Detector::ConsecutiveLocalOriginFailure)
        );
    }
}
