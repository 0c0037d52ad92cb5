//! State-of-the-world ADS: every response carries the full set of a type's resources the client
//! subscribed to.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::control_plane;
use super::generated::{Generated, Resources, set_version};
use super::state::{Answer, Events, Protocol, TypeState};
use strait_xds_core::TypeUrl;

/// Which resources of a type the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    /// All of them.
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    /// The subscription after a request, following the xDS rules for SotW wildcards: Listeners
    /// and Clusters are always sent whole; for other types, an empty list on the first request
    /// (the legacy wildcard) or a `*` anywhere subscribes to all, and an empty list later keeps a
    /// wildcard subscription (Envoy resends it) but empties a named one.
    fn after(ty: TypeUrl, first: bool, names: &[String], old: Option<&Subscription>) -> Self {
        if matches!(ty, TypeUrl::Cluster | TypeUrl::Listener)
            || names.iter().any(|n| n == "*")
            || (names.is_empty() && (first || old == Some(&Subscription::Wildcard)))
        {
            Subscription::Wildcard
        } else {
            Subscription::Names(names.iter().cloned().collect())
        }
    }

    fn filter(&self, all: &Resources) -> Resources {
        match self {
            Subscription::Wildcard => all.clone(),
            Subscription::Names(names) => names
                .iter()
                .filter_map(|n| all.get_key_value(n))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
        }
    }
}

/// One SotW stream's state.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    types: BTreeMap<TypeUrl, TypeState>,
    subscriptions: BTreeMap<TypeUrl, Subscription>,
}

impl Sotw {
    fn respond(
        &mut self,
        ty: TypeUrl,
        resources: Resources,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> DiscoveryResponse {
        let version = set_version(resources.iter().map(|(n, r)| (n, &r.version)));
        let nonce = nonces();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: resources.values().map(|r| r.resource.clone()).collect(),
            type_url: ty.as_str().to_string(),
            nonce: nonce.clone(),
            control_plane: Some(control_plane()),
            ..Default::default()
        };
        let state = self.types.entry(ty).or_default();
        state.sent = resources
            .values()
            .map(|encoded| (encoded.name.clone(), encoded.clone()))
            .collect();
        state.sent(ty, nonce, version, ev);
        response
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Pending = DiscoveryResponse;

    fn node(req: &DiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn materialize(pending: DiscoveryResponse) -> DiscoveryResponse {
        pending
    }

    fn on_request(
        &mut self,
        ty: TypeUrl,
        req: DiscoveryRequest,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DiscoveryResponse> {
        let state = self.types.entry(ty).or_default();
        let first = !state.started;
        state.started = true;
        if let Answer::Stale = state.answer(ty, &req.response_nonce, req.error_detail.as_ref(), ev)
        {
            return Vec::new();
        }
        let old = self.subscriptions.get(&ty);
        let subscription = Subscription::after(ty, first, &req.resource_names, old);
        let changed = old != Some(&subscription);
        let resources = subscription.filter(generated.get(ty));
        self.subscriptions.insert(ty, subscription);
        if first || changed {
            vec![self.respond(ty, resources, nonces, ev)]
        } else {
            Vec::new()
        }
    }

    fn on_generated(
        &mut self,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for ty in TypeUrl::ALL {
            let (Some(state), Some(subscription)) =
                (self.types.get(&ty), self.subscriptions.get(&ty))
            else {
                continue;
            };
            let resources = subscription.filter(generated.get(ty));
            let version = set_version(resources.iter().map(|(n, r)| (n, &r.version)));
            // Compared with what was sent last, ACKed or not: a NACKed set is not sent again
            // until the config changes.
            if version != state.sent_version {
                out.push(self.respond(ty, resources, nonces, ev));
            }
        }
        out
    }

    fn types(&self) -> &BTreeMap<TypeUrl, TypeState> {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::rpc;
    use strait_xds_core::XdsResources;

    fn generated(clusters: &[(&str, &str)], endpoints: &[&str]) -> Generated {
        let mut res = XdsResources::default();
        for (name, stat) in clusters {
            res.clusters.insert(
                name.to_string(),
                Cluster {
                    name: name.to_string(),
                    alt_stat_name: stat.to_string(),
                    ..Default::default()
                },
            );
        }
        for name in endpoints {
            res.endpoints.insert(
                name.to_string(),
                ClusterLoadAssignment {
                    cluster_name: name.to_string(),
                    ..Default::default()
                },
            );
        }
        Generated::new(&res)
    }

    fn req(ty: TypeUrl, names: &[&str], nonce: &str, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: error.map(|m| rpc::Status {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            n.to_string()
        }
    }

    #[test]
    fn ack_nack_stale_and_pushes() {
        let mut s = Sotw::default();
        let mut nonces = counter();
        let mut ev = Events::default();
        let g1 = generated(&[("a", ""), ("b", "")], &[]);
        let out = s.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], "", None),
            &g1,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resources.len(), 2);
        assert_eq!(out[0].nonce, "1");
        let v1 = out[0].version_info.clone();
        assert!(s.awaiting());

        // ACK: synced, nothing sent.
        let out = s.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], "1", None),
            &g1,
            &mut nonces,
            &mut ev,
        );
        assert!(out.is_empty());
        assert!(!s.awaiting());
        assert_eq!(s.types[&TypeUrl::Cluster].acked_version, v1);

        // Same content regenerated: no push.
        assert!(s.on_generated(&g1, &mut nonces, &mut ev).is_empty());

        // Changed content: a push with a new version and nonce.
        let g2 = generated(&[("a", "changed"), ("b", "")], &[]);
        let out = s.on_generated(&g2, &mut nonces, &mut ev);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0].version_info, v1);
        assert_eq!(out[0].nonce, "2");

        // A stale nonce is ignored, even with an error.
        let out = s.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], "1", Some("old")),
            &g2,
            &mut nonces,
            &mut ev,
        );
        assert!(out.is_empty());
        assert!(ev.nacks.is_empty());
        assert!(s.awaiting());

        // NACK: recorded, acked version stays, the rejected set is not resent.
        s.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], "2", Some("bad cluster")),
            &g2,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(
            ev.nacks,
            vec![(TypeUrl::Cluster, "bad cluster".to_string())]
        );
        let status = s.types[&TypeUrl::Cluster].status();
        assert_eq!(
            status.state,
            super::super::SyncState::Nack {
                reason: "bad cluster".into()
            }
        );
        assert_eq!(status.acked_version, v1);
        assert!(s.on_generated(&g2, &mut nonces, &mut ev).is_empty());
        // Back to the good config: sent again.
        assert_eq!(s.on_generated(&g1, &mut nonces, &mut ev).len(), 1);
    }

    #[test]
    fn named_and_wildcard_subscriptions() {
        let mut s = Sotw::default();
        let mut nonces = counter();
        let mut ev = Events::default();
        let g = generated(&[], &["x", "y", "z"]);
        let out = s.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &["x", "nope"], "", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 1);
        // The subscription grows in the ACK: answered with the new set.
        let out = s.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &["x", "y"], "1", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 2);
        // An empty list after named ones unsubscribes all.
        let out = s.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &[], "2", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 0);

        // An empty first request is a wildcard, and stays one.
        let mut s = Sotw::default();
        let out = s.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &[], "", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 3);
        let n = out[0].nonce.clone();
        assert!(
            s.on_request(
                TypeUrl::Endpoint,
                req(TypeUrl::Endpoint, &[], &n, None),
                &g,
                &mut nonces,
                &mut ev
            )
            .is_empty()
        );
        // So is `*`, with or without names.
        let mut s = Sotw::default();
        let out = s.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &["x", "*"], "", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 3);
        // Pushes keep CDS before EDS.
        let g2 = generated(&[("c", "")], &["x"]);
        s.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &["ignored"], "", None),
            &g,
            &mut nonces,
            &mut ev,
        );
        let out = s.on_generated(&g2, &mut nonces, &mut ev);
        let types: Vec<_> = out.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            types,
            [TypeUrl::Cluster.as_str(), TypeUrl::Endpoint.as_str()]
        );
    }
}
