//! The control plane's REST API, as far as the benchmark needs it: create the Services and
//! WorkloadEntries, change one WorkloadEntry, read `/metrics`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The namespace everything is created in.
pub const NAMESPACE: &str = "default";
/// The service port every generated Service has (named `http`).
pub const SERVICE_PORT: u16 = 9080;

const SERVICES: &str = "/api/v1/namespaces/default/services";
const WORKLOAD_ENTRIES: &str = "/apis/networking.istio.io/v1/namespaces/default/workloadentries";

/// A client of one control plane's API.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// The name of the `i`th generated Service.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// The name of the `j`th WorkloadEntry of the `i`th Service.
pub fn entry_name(i: usize, j: usize) -> String {
    format!("svc-{i}-{j}")
}

/// A unique address for endpoint `j` of service `i` in 127.1.0.0/16 and up: never connected to.
pub fn entry_address(i: usize, j: usize, per_service: usize) -> String {
    let n = i * per_service + j + 1;
    format!("127.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256)
}

impl Api {
    /// `base` is `http://HOST:PORT`; the token is read from `token_file` (DATA_DIR/token).
    pub fn new(base: &str, token_file: &Path) -> Result<Api> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the API token from {}", token_file.display()))?
            .trim()
            .to_string();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Api {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let mut response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            _ => bail!("unsupported request {method} {path}"),
        }
        .with_context(|| format!("{method} {url}"))?;
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        if !(200..300).contains(&code) {
            bail!("{method} {url}: HTTP {code}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("the answer to {method} {url}"))
    }

    /// The control plane's Prometheus text (no token needed, but it does not hurt).
    pub fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.base);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        Ok(response.body_mut().read_to_string()?)
    }

    /// Creates `services` Services (selector `app: svc-I`, port 9080 named http) and
    /// `per_service` WorkloadEntries for each, with `parallel` writers. Returns the seconds taken.
    pub fn seed(&self, services: usize, per_service: usize, parallel: usize) -> Result<f64> {
        let start = Instant::now();
        let total = services * (1 + per_service);
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..parallel.max(1))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= total {
                                return Ok(());
                            }
                            // Each service first, then its entries.
                            let (i, j) = (n / (1 + per_service), n % (1 + per_service));
                            if j == 0 {
                                self.send("POST", SERVICES, Some(&service(i)))?;
                            } else {
                                let entry = entry(i, j - 1, per_service);
                                self.send("POST", WORKLOAD_ENTRIES, Some(&entry))?;
                            }
                            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if d.is_multiple_of(1000) || d == total {
                                eprintln!(
                                    "seed: {d}/{total} resources written ({:.1} s)",
                                    start.elapsed().as_secs_f64()
                                );
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("a seed writer panicked")?;
            }
            Ok(())
        })?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Sets the weight of one WorkloadEntry (read, change, replace at its resourceVersion).
    pub fn set_weight(&self, name: &str, weight: u32) -> Result<()> {
        let path = format!("{WORKLOAD_ENTRIES}/{name}");
        let mut entry = self.send("GET", &path, None)?;
        entry["spec"]["weight"] = json!(weight);
        self.send("PUT", &path, Some(&entry))?;
        Ok(())
    }
}

fn service(i: usize) -> Value {
    let name = service_name(i);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": SERVICE_PORT}],
        },
    })
}

fn entry(i: usize, j: usize, per_service: usize) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": entry_name(i, j), "namespace": NAMESPACE},
        "spec": {
            "address": entry_address(i, j, per_service),
            "labels": {"app": service_name(i), "version": "v1"},
            "weight": 1,
        },
    })
}

/// A Prometheus histogram as read from text: cumulative counts by upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Reads histogram `name` from Prometheus text; `None` if it is not there.
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let mut h = Histogram::default();
        let mut seen = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(rest) = key.strip_prefix(&format!("{name}_bucket{{le=\"")) {
                let bound = rest.trim_end_matches("\"}");
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                };
                h.buckets.push((bound, value.parse().ok()?));
                seen = true;
            } else if key == format!("{name}_sum") {
                h.sum = value.parse().ok()?;
            } else if key == format!("{name}_count") {
                h.count = value.parse().ok()?;
            }
        }
        seen.then_some(h)
    }

    /// The observations of `self` that `before` had not seen yet.
    pub fn since(&self, before: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(b, c)| {
                let old = before
                    .buckets
                    .iter()
                    .find(|(ob, _)| ob == b)
                    .map_or(0, |(_, c)| *c);
                (*b, c.saturating_sub(old))
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The upper bound of the bucket holding quantile `q` (Prometheus-style, no interpolation).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(b, _)| *b)
    }

    /// The buckets as JSON, with the quantiles.
    pub fn to_json(&self) -> Value {
        let bound = |v: Option<f64>| match v {
            Some(b) if b.is_finite() => json!(b),
            Some(_) => json!("+Inf"),
            None => Value::Null,
        };
        json!({
            "count": self.count,
            "sum_s": self.sum,
            "mean_s": (self.count > 0).then(|| self.sum / self.count as f64),
            "p50_le_s": bound(self.quantile_bound(0.5)),
            "p99_le_s": bound(self.quantile_bound(0.99)),
            "buckets": self.buckets.iter().map(|(b, c)| {
                json!([if b.is_finite() { json!(b) } else { json!("+Inf") }, c])
            }).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_loopback() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            for j in 0..10 {
                let a: std::net::Ipv4Addr = entry_address(i, j, 10).parse().unwrap();
                assert!(a.is_loopback() && a != std::net::Ipv4Addr::LOCALHOST, "{a}");
                assert!(seen.insert(a), "{a} twice");
            }
        }
    }

    #[test]
    fn reads_a_histogram_and_its_quantiles() {
        let text = "# TYPE x histogram\n\
            x_bucket{le=\"0.01\"} 1\nx_bucket{le=\"0.1\"} 90\nx_bucket{le=\"1\"} 100\n\
            x_bucket{le=\"+Inf\"} 100\nx_sum 5.5\nx_count 100\nother 3\n";
        let h = Histogram::parse(text, "x").unwrap();
        assert_eq!(h.count, 100);
        assert_eq!(h.quantile_bound(0.5), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(1.0));
        let before = Histogram::parse(&text.replace(" 90\n", " 1\n"), "x").unwrap();
        let d = h.since(&before);
        assert_eq!(d.buckets[1], (0.1, 89));
        assert!(Histogram::parse(text, "y").is_none());
    }
}
