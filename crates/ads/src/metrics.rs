//! The control plane's xDS metrics, and the push-latency tracker: from a store write to the
//! last ACK (or NACK) of the push it caused, by every proxy that got one.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use strait_xds_core::TypeUrl;

/// Upper bounds of the push-latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pushes: [AtomicU64; 5],
    nacks: [AtomicU64; 5],
    generations: AtomicU64,
    connected: AtomicI64,
    latency: Mutex<Histogram>,
    round: Mutex<Option<Round>>,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Not cumulative: `counts[i]` is the observations in `(BUCKETS[i-1], BUCKETS[i]]`, the last
    /// one those above every bound.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// The push of one revision, waiting for the proxies' answers.
#[derive(Debug)]
struct Round {
    revision: u64,
    written_at: SystemTime,
    /// Connections that have not both handled this revision and had every push answered.
    waiting: HashSet<u64>,
    /// Some connection got a push for it.
    pushed: bool,
}

fn slot(ty: TypeUrl) -> usize {
    match ty {
        TypeUrl::Cluster => 0,
        TypeUrl::Endpoint => 1,
        TypeUrl::Listener => 2,
        TypeUrl::Route => 3,
        TypeUrl::Secret => 4,
    }
}

impl Metrics {
    pub fn pushed(&self, ty: TypeUrl) {
        self.pushes[slot(ty)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn nacked(&self, ty: TypeUrl) {
        self.nacks[slot(ty)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn generated(&self) {
        self.generations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connected(&self, delta: i64) {
        self.connected.fetch_add(delta, Ordering::Relaxed);
    }

    /// A revision is being pushed to these connections; an older round still waiting is
    /// superseded: its answers count for this one.
    pub fn start_round(&self, revision: u64, written_at: SystemTime, conns: HashSet<u64>) {
        let mut round = self.round.lock().expect("metrics lock");
        // Pushes of the superseded round still count: they are answered in this one.
        let pushed = round.as_ref().is_some_and(|r| r.pushed);
        *round = Some(Round {
            revision,
            written_at,
            waiting: conns,
            pushed,
        });
        self.finish_if_done(&mut round);
    }

    /// A connection has handled `revision`: it `pushed` something, and `awaiting` answers.
    pub fn handled(&self, conn: u64, revision: u64, pushed: bool, awaiting: bool) {
        let mut round = self.round.lock().expect("metrics lock");
        if let Some(r) = round.as_mut().filter(|r| r.revision == revision) {
            if r.waiting.contains(&conn) && (pushed || awaiting) {
                r.pushed = true;
            }
            if !awaiting {
                r.waiting.remove(&conn);
            }
        }
        self.finish_if_done(&mut round);
    }

    /// A connection whose latest handled revision is `revision` has all its pushes answered.
    pub fn answered(&self, conn: u64, revision: u64) {
        let mut round = self.round.lock().expect("metrics lock");
        if let Some(r) = round.as_mut().filter(|r| r.revision == revision) {
            r.waiting.remove(&conn);
        }
        self.finish_if_done(&mut round);
    }

    /// A connection closed: nobody waits for it any more.
    pub fn gone(&self, conn: u64) {
        let mut round = self.round.lock().expect("metrics lock");
        if let Some(r) = round.as_mut() {
            r.waiting.remove(&conn);
        }
        self.finish_if_done(&mut round);
    }

    fn finish_if_done(&self, round: &mut Option<Round>) {
        let Some(r) = round.as_ref().filter(|r| r.waiting.is_empty()) else {
            return;
        };
        if r.pushed {
            let elapsed = SystemTime::now()
                .duration_since(r.written_at)
                .unwrap_or(Duration::ZERO);
            tracing::debug!(revision = r.revision, latency = ?elapsed, "push answered by every proxy");
            self.observe(elapsed);
        }
        *round = None;
    }

    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut h = self.latency.lock().expect("metrics lock");
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.counts[i] += 1;
        h.sum += secs;
        h.count += 1;
    }

    /// Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let h = self.latency.lock().expect("metrics lock");
        out.push_str(
            "# HELP strait_xds_push_latency_seconds Time from a config store write to the last ACK or NACK of the push it caused, across every proxy that got it.\n\
             # TYPE strait_xds_push_latency_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "strait_xds_push_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "strait_xds_push_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
             strait_xds_push_latency_seconds_sum {}\n\
             strait_xds_push_latency_seconds_count {}",
            h.count, h.sum, h.count
        );
        drop(h);
        for (name, help, values) in [
            (
                "strait_xds_pushes_total",
                "xDS responses sent to proxies, by type.",
                &self.pushes,
            ),
            (
                "strait_xds_nacks_total",
                "xDS responses proxies rejected (NACK), by type.",
                &self.nacks,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ty in TypeUrl::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{type=\"{}\"}} {}",
                    ty.short().to_ascii_lowercase(),
                    values[slot(ty)].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP strait_xds_generations_total Times a proxy's resources were generated.\n\
             # TYPE strait_xds_generations_total counter\n\
             strait_xds_generations_total {}\n\
             # HELP strait_xds_connected_proxies Proxies connected over ADS.\n\
             # TYPE strait_xds_connected_proxies gauge\n\
             strait_xds_connected_proxies {}",
            self.generations.load(Ordering::Relaxed),
            self.connected.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics) -> u64 {
        m.latency.lock().unwrap().count
    }

    #[test]
    fn latency_waits_for_every_pushed_proxy() {
        let m = Metrics::default();
        let t = SystemTime::now();
        m.start_round(1, t, [1, 2, 3].into());
        m.handled(1, 1, true, true);
        m.handled(2, 1, false, false); // nothing changed for it
        m.handled(3, 1, true, true);
        m.answered(1, 1);
        assert_eq!(count(&m), 0);
        m.answered(3, 0); // an answer to an older revision's push
        assert_eq!(count(&m), 0);
        m.gone(3);
        assert_eq!(count(&m), 1);

        // Superseded: attributed to the newest.
        m.start_round(2, t, [1].into());
        m.handled(1, 2, true, true);
        m.start_round(3, t, [1].into());
        m.answered(1, 2); // answered before it handled revision 3
        assert_eq!(count(&m), 1);
        m.handled(1, 3, false, false);
        assert_eq!(count(&m), 2);

        // Nobody pushed: nothing observed.
        m.start_round(4, t, [1].into());
        m.handled(1, 4, false, false);
        m.start_round(5, t, HashSet::new());
        assert_eq!(count(&m), 2);
        let text = m.text();
        assert!(
            text.contains("strait_xds_push_latency_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("strait_xds_push_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("strait_xds_pushes_total{type=\"cds\"} 0"));
    }
}
