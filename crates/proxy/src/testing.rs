//! The endpoint pick as the data path makes it, for tests outside this crate (the allocation
//! test in `tests/alloc.rs`). Not an API: it may change with the balancer.

use std::sync::Arc;

use crate::config::{Cluster, Config};
use crate::upstream::{self, Balancer, Picked, Upstreams};

/// One cluster, published as the proxy publishes a config (its balancer built).
pub struct Picker {
    _upstreams: Upstreams,
    balancer: Arc<Balancer>,
}

/// An endpoint picked; counts as in flight until dropped.
pub struct Pick(Picked);

impl Pick {
    /// The endpoint's `IP:port`.
    pub fn authority(&self) -> &str {
        self.0.authority()
    }
}

impl Picker {
    pub fn new(cluster: Cluster) -> Picker {
        let upstreams = Upstreams::default();
        let stats = crate::stats::Stats::default();
        let mut config = Config::default();
        let name = cluster.name.clone();
        config.clusters.insert(name.clone(), Arc::new(cluster));
        upstreams.prepare(&mut config, &Config::default(), &stats);
        let balancer = upstream::balancer(&config.clusters[&name])
            .expect("a published cluster has its balancer")
            .clone();
        Picker {
            _upstreams: upstreams,
            balancer,
        }
    }

    /// Picks an endpoint as a request would (`avoid`: a retry's previous endpoint; `hash`: the
    /// request's hash, for ring hash and Maglev).
    pub fn pick(&self, avoid: Option<&Pick>, hash: Option<u64>) -> Option<Pick> {
        self.balancer
            .pick(avoid.map(|p| &**p.0.host()), "", hash)
            .map(Pick)
    }

    /// Tells outlier detection that an attempt on the picked endpoint failed to connect.
    pub fn report_failure(&self, pick: &Pick) {
        self.balancer
            .report(&pick.0, crate::balance::outlier::Observed::LocalFailure);
    }
}
