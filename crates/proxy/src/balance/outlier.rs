//! Outlier detection (Envoy's `outlier_detection`, the consecutive-error detectors): per
//! endpoint of a cluster, consecutive 5xx, consecutive gateway failures (502, 503, 504 and
//! locally originated failures) and, with `split_external_local_origin_errors`, consecutive
//! local-origin failures. Reaching a threshold ejects the endpoint at once, with the
//! detector's `enforcing_*` chance and within `max_ejection_percent` (one endpoint can always be
//! ejected); it stays out for `base_ejection_time` times the number of times it was ejected
//! (at most `max_ejection_time`), and that multiplier drops by one for every `interval` the
//! endpoint then stays in.
//!
//! The state is checked lazily when the balancer picks, instead of on an `interval` timer: an
//! endpoint comes back as soon as its time is up (Envoy waits for the next tick). The state of
//! an endpoint lives as long as it stays in its cluster; the cluster keeps only counts.
//! Success-rate and failure-percentage ejection are not implemented.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// One endpoint's detector state. It lives as long as the endpoint stays in its cluster, across
/// config generations.
#[derive(Debug, Default)]
pub(crate) struct HostOutlier(Mutex<Host>);

impl HostOutlier {
    /// Whether the endpoint was ejected when its cluster last settled (see
    /// [`ClusterOutliers::settle`]), which the balancer does before it uses this.
    pub(crate) fn is_ejected(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ejected_at
            .is_some()
    }

    /// Whether the endpoint is out at `now`, changing nothing (for the admin page).
    pub(crate) fn is_ejected_at(&self, od: &OutlierDetection, now: Instant) -> bool {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.ejected_at
            .is_some_and(|at| now < at + h.ejection_time(od))
    }
}

/// Why an endpoint was ejected (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

/// A cluster's side of outlier detection: how many of its endpoints are out, when the next one
/// is due back, and an epoch that changes whenever the set of ejected endpoints does, so that
/// the balancer rebuilds its list of healthy endpoints only then. With nothing ejected a pick
/// reads one atomic.
#[derive(Debug)]
pub(crate) struct ClusterOutliers {
    /// Held while an endpoint is ejected or the cluster settles (lock order: this, then a
    /// host's).
    changes: Mutex<()>,
    ejected: AtomicUsize,
    epoch: AtomicU64,
    /// When the next ejected endpoint is due back, in nanoseconds since `base` (`u64::MAX`:
    /// none is out).
    next_due: AtomicU64,
    base: Instant,
}

impl Default for ClusterOutliers {
    fn default() -> ClusterOutliers {
        ClusterOutliers {
            changes: Mutex::new(()),
            ejected: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            next_due: AtomicU64::new(u64::MAX),
            base: Instant::now(),
        }
    }
}

impl ClusterOutliers {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64
    }

    /// Whether any endpoint is out (as of the last ejection or settling).
    pub(crate) fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire) > 0
    }

    /// Changes whenever the set of ejected endpoints does.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Brings back the endpoints among `hosts` (the cluster's) whose time is up and counts those
    /// still out: only when one is due, or always with `force` (after the endpoints changed).
    pub(crate) fn settle<'a>(
        &self,
        od: &OutlierDetection,
        hosts: impl IntoIterator<Item = &'a HostOutlier>,
        now: Instant,
        force: bool,
    ) {
        let due = |o: &Self| force || o.nanos(now) >= o.next_due.load(Ordering::Acquire);
        if !due(self) {
            return;
        }
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if !due(self) {
            // Another thread settled meanwhile.
            return;
        }
        let (mut out, mut next) = (0, u64::MAX);
        for host in hosts {
            let mut h = host.0.lock().unwrap_or_else(|e| e.into_inner());
            h.settle(od, now);
            if let Some(at) = h.ejected_at {
                out += 1;
                next = next.min(self.nanos(at + h.ejection_time(od)));
            }
        }
        self.ejected.store(out, Ordering::Release);
        self.next_due.store(next, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Records how an attempt on `host`, one of the cluster's `endpoints`, ended; returns the
    /// detector that ejected it, if one did.
    pub(crate) fn report(
        &self,
        od: &OutlierDetection,
        host: &HostOutlier,
        endpoints: usize,
        result: Observed,
        now: Instant,
    ) -> Option<Detector> {
        let detector = {
            let mut h = host.0.lock().unwrap_or_else(|e| e.into_inner());
            h.settle(od, now);
            let (enforcing, detector) = h.observe(od, result)?;
            if h.ejected_at.is_some() {
                return None;
            }
            // The detector's streak starts again whether or not it ejects, as in Envoy: a
            // further run of errors is detected again.
            match detector {
                Detector::Consecutive5xx => h.consecutive_5xx = 0,
                Detector::ConsecutiveGatewayFailure => h.consecutive_gateway = 0,
                Detector::ConsecutiveLocalOriginFailure => h.consecutive_local = 0,
            }
            if !roll(enforcing) {
                return None;
            }
            detector
        };
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut h = host.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.ejected_at.is_some() {
            return None;
        }
        let active = self.ejected.load(Ordering::Acquire);
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
        let back = self.nanos(now + h.ejection_time(od));
        self.ejected.fetch_add(1, Ordering::AcqRel);
        self.next_due.fetch_min(back, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Some(detector)
    }
}

impl Host {
    /// Counts a result; returns the detector that fired (with its enforcing percentage), if any.
    fn observe(&mut self, od: &OutlierDetection, result: Observed) -> Option<(u32, Detector)> {
        let status = match result {
            Observed::Status(s) => {
                if od.split_external_local_origin_errors {
                    // The connection worked: the local-origin streak ends.
                    self.consecutive_local = 0;
                }
                s
            }
            Observed::LocalFailure if od.split_external_local_origin_errors => {
                self.consecutive_local += 1;
                if self.consecutive_local == od.consecutive_local_origin_failure {
                    self.consecutive_local = 0;
                    return Some((
                        od.enforcing_consecutive_local_origin_failure,
                        Detector::ConsecutiveLocalOriginFailure,
                    ));
                }
                return None;
            }
            Observed::LocalFailure => 503,
        };
        if !(500..600).contains(&status) {
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
            return None;
        }
        let mut fired = None;
        if matches!(status, 502..=504) {
            self.consecutive_gateway += 1;
            if self.consecutive_gateway == od.consecutive_gateway_failure {
                fired = Some((
                    od.enforcing_consecutive_gateway_failure,
                    Detector::ConsecutiveGatewayFailure,
                ));
            }
        } else {
            self.consecutive_gateway = 0;
        }
        self.consecutive_5xx += 1;
        if self.consecutive_5xx == od.consecutive_5xx {
            // Envoy runs the gateway detector first; an ejection by it stands.
            let five = (od.enforcing_consecutive_5xx, Detector::Consecutive5xx);
            fired = match fired {
                Some((e, d)) if roll(e) => Some((100, d)),
                _ => Some(five),
            };
        }
        fired
    }
}

fn roll(percent: u32) -> bool {
    percent >= 100 || fastrand::u32(0..100) < percent
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

    /// A cluster's outlier state and its endpoints, by index.
    struct Fixture {
        cluster: ClusterOutliers,
        hosts: Vec<HostOutlier>,
    }

    impl Fixture {
        fn report(
            &self,
            od: &OutlierDetection,
            i: &usize,
            endpoints: usize,
            r: Observed,
            now: Instant,
        ) -> Option<Detector> {
            self.cluster.report(od, &self.hosts[*i], endpoints, r, now)
        }

        /// The endpoints out at `now`.
        fn ejected(&self, od: &OutlierDetection, _: &[usize], now: Instant) -> Vec<usize> {
            self.cluster.settle(od, &self.hosts, now, false);
            let out: Vec<usize> = (0..self.hosts.len())
                .filter(|i| self.hosts[*i].is_ejected())
                .collect();
            assert_eq!(self.cluster.any_ejected(), !out.is_empty());
            out
        }
    }

    fn fixture(n: usize) -> Fixture {
        Fixture {
            cluster: ClusterOutliers::default(),
            hosts: (0..n).map(|_| HostOutlier::default()).collect(),
        }
    }

    fn eps(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    #[test]
    fn consecutive_5xx_ejects_for_base_times_ejections() {
        let (o, c, e) = (od(3), fixture(3), eps(3));
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
        let (o, c, e) = (od(1), fixture(2), eps(2));
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
        let (c, e) = (fixture(2), eps(2));
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
        let c = fixture(2);
        c.report(&o, &e[0], 2, Observed::Status(503), t0);
        c.report(&o, &e[0], 2, Observed::Status(500), t0);
        assert_eq!(c.report(&o, &e[0], 2, Observed::Status(503), t0), None);
    }

    #[test]
    fn max_ejection_percent_holds_but_one_can_always_go() {
        let mut o = od(1);
        o.max_ejection_percent = 10;
        let (c, e) = (fixture(3), eps(3));
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
        let (c, e) = (fixture(2), eps(2));
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
