//! Incremental (Delta) ADS: responses carry only the resources that changed, and the names of
//! those removed, with a version per resource.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::control_plane;
use super::generated::{Generated, set_version};
use super::state::{Events, Protocol, TypeState};
use crate::TypeUrl;

/// What the client subscribed to, and has, for one type.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The version of each resource the client has, as far as the server knows: what it sent
    /// (ACKed or not: a NACKed resource is not resent until it changes), or what the client
    /// said it had when it reconnected.
    have: BTreeMap<String, String>,
    /// Subscribed names the server has no resource for, already told to the client as removed.
    told_absent: BTreeSet<String>,
}

/// One Delta stream's state.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<TypeUrl, TypeState>,
    subscriptions: BTreeMap<TypeUrl, Subscription>,
    /// The generation every started type was last brought up to date with.
    reconciled: Option<u64>,
}

impl Delta {
    /// The response that brings the client from what it has to what it should have, if any
    /// (always one when `force`: the client waits for an answer to its first request).
    fn diff(
        &mut self,
        ty: TypeUrl,
        generated: &Generated,
        force: bool,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DeltaDiscoveryResponse> {
        let state = self.types.entry(ty).or_default();
        let sub = self.subscriptions.entry(ty).or_default();
        let all = generated.get(ty);
        let wanted = |name: &str| sub.wildcard || sub.names.contains(name);
        let mut resources = Vec::new();
        for (name, encoded) in all.iter().filter(|(n, _)| wanted(n)) {
            if sub.have.get(name) != Some(&encoded.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: encoded.version.clone(),
                    resource: Some(encoded.resource.clone()),
                    ..Default::default()
                });
                sub.have.insert(name.clone(), encoded.version.clone());
            }
            // Also fills in what a reconnecting client already had.
            state.sent.insert(name.clone(), encoded.clone());
        }
        let mut removed: Vec<String> = sub
            .have
            .keys()
            .filter(|n| !wanted(n) || !all.contains_key(*n))
            .cloned()
            .collect();
        for name in &removed {
            sub.have.remove(name);
            state.sent.remove(name);
        }
        sub.told_absent
            .retain(|n| sub.names.contains(n) && !all.contains_key(n));
        // Named resources that do not exist: say so once, so the client need not wait for them.
        for name in &sub.names {
            if !all.contains_key(name) && sub.told_absent.insert(name.clone()) {
                removed.push(name.clone());
            }
        }
        respond(ty, state, sub, resources, removed, force, nonces, ev)
    }

    /// Like [`Delta::diff`] without `force`, for a generation whose only differences from the
    /// one this type was last brought up to date with are `changed`: looks at those names only.
    fn diff_changed(
        &mut self,
        ty: TypeUrl,
        generated: &Generated,
        changed: &BTreeSet<String>,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DeltaDiscoveryResponse> {
        let state = self.types.entry(ty).or_default();
        let sub = self.subscriptions.entry(ty).or_default();
        let all = generated.get(ty);
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for name in changed {
            let wanted = sub.wildcard || sub.names.contains(name);
            match all.get(name) {
                Some(encoded) => {
                    sub.told_absent.remove(name);
                    if !wanted {
                        continue;
                    }
                    if sub.have.get(name) != Some(&encoded.version) {
                        resources.push(Resource {
                            name: name.clone(),
                            version: encoded.version.clone(),
                            resource: Some(encoded.resource.clone()),
                            ..Default::default()
                        });
                        sub.have.insert(name.clone(), encoded.version.clone());
                    }
                    state.sent.insert(name.clone(), encoded.clone());
                }
                None => {
                    if sub.have.remove(name).is_some() {
                        state.sent.remove(name);
                        removed.push(name.clone());
                    }
                    if sub.names.contains(name) && sub.told_absent.insert(name.clone()) {
                        removed.push(name.clone());
                    }
                }
            }
        }
        respond(ty, state, sub, resources, removed, false, nonces, ev)
    }
}

/// Responses larger than this are split: a stream's gRPC encoder keeps a buffer as large as the
/// largest message it sent, for as long as the stream lives.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The responses with these changes, if any (always one when `force`): one, or several of at
/// most [`MAX_RESPONSE_BYTES`] of resources each, the removals in the last. The client merges
/// them (Delta responses are incremental); the last one's nonce is the one awaited.
#[allow(clippy::too_many_arguments)]
fn respond(
    ty: TypeUrl,
    state: &mut TypeState,
    sub: &Subscription,
    resources: Vec<Resource>,
    mut removed: Vec<String>,
    force: bool,
    nonces: &mut dyn FnMut() -> String,
    ev: &mut Events,
) -> Vec<DeltaDiscoveryResponse> {
    removed.sort();
    removed.dedup();
    if resources.is_empty() && removed.is_empty() && !force {
        return Vec::new();
    }
    let version = set_version(sub.have.iter());
    let mut chunks: Vec<Vec<Resource>> = vec![Vec::new()];
    let mut size = 0;
    for r in resources {
        let bytes = r.resource.as_ref().map_or(0, |a| a.value.len()) + r.name.len();
        if size + bytes > MAX_RESPONSE_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += bytes;
        chunks.last_mut().expect("one chunk at least").push(r);
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, resources)| {
            let nonce = nonces();
            state.sent(ty, nonce.clone(), version.clone(), ev);
            DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources,
                type_url: ty.as_str().to_string(),
                removed_resources: if i == last {
                    std::mem::take(&mut removed)
                } else {
                    Vec::new()
                },
                nonce,
                control_plane: Some(control_plane()),
                ..Default::default()
            }
        })
        .collect()
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn on_request(
        &mut self,
        ty: TypeUrl,
        req: DeltaDiscoveryRequest,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DeltaDiscoveryResponse> {
        let state = self.types.entry(ty).or_default();
        let first = !state.started;
        state.started = true;
        // A stale nonce's ACK or NACK is ignored, but its subscription changes still count.
        state.answer(ty, &req.response_nonce, req.error_detail.as_ref(), ev);
        let sub = self.subscriptions.entry(ty).or_default();
        let resubscribed =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        if !first && !resubscribed && self.reconciled == Some(generated.id()) {
            // A plain ACK or NACK: the type is up to date with this generation already.
            return Vec::new();
        }
        if first {
            sub.have = req.initial_resource_versions.into_iter().collect();
            // The legacy wildcard: Listeners and Clusters asked for with no names.
            sub.wildcard = req.resource_names_subscribe.is_empty()
                && matches!(ty, TypeUrl::Cluster | TypeUrl::Listener);
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
                continue;
            }
            if !first {
                // The client may have dropped it: answer with it even if it was sent before.
                sub.have.remove(&name);
                state.sent.remove(&name);
            }
            sub.told_absent.remove(&name);
            sub.names.insert(name);
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
                continue;
            }
            sub.names.remove(&name);
            sub.told_absent.remove(&name);
            if !sub.wildcard {
                sub.have.remove(&name);
                state.sent.remove(&name);
            }
        }
        let out = self.diff(ty, generated, first, nonces, ev);
        self.reconciled = Some(generated.id());
        out
    }

    fn on_generated(
        &mut self,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<DeltaDiscoveryResponse> {
        let started: Vec<TypeUrl> = TypeUrl::ALL
            .into_iter()
            .filter(|ty| self.types.get(ty).is_some_and(|t| t.started))
            .collect();
        let base = self.reconciled.replace(generated.id());
        if base == Some(generated.id()) {
            // The same generation again: every started type is up to date with it.
            return Vec::new();
        }
        started
            .into_iter()
            .flat_map(
                |ty| match base.and_then(|base| generated.changed_since(base, ty)) {
                    Some(changed) => self.diff_changed(ty, generated, changed, nonces, ev),
                    None => self.diff(ty, generated, false, nonces, ev),
                },
            )
            .collect()
    }

    fn types(&self) -> &BTreeMap<TypeUrl, TypeState> {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::XdsResources;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

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

    fn req(ty: TypeUrl, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.as_str().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn sends_only_changes() {
        let mut d = Delta::default();
        let mut n = 0;
        let mut nonces = move || {
            n += 1;
            n.to_string()
        };
        let mut ev = Events::default();
        let g1 = generated(&[("a", ""), ("b", ""), ("c", "")], &[]);
        let out = d.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], &[], ""),
            &g1,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(names(&out[0]), ["a", "b", "c"]);
        assert!(
            d.on_request(
                TypeUrl::Cluster,
                req(TypeUrl::Cluster, &[], &[], "1"),
                &g1,
                &mut nonces,
                &mut ev
            )
            .is_empty()
        );
        assert!(!d.awaiting());
        assert!(d.on_generated(&g1, &mut nonces, &mut ev).is_empty());

        let g2 = generated(&[("a", ""), ("b", "changed")], &[]);
        let out = d.on_generated(&g2, &mut nonces, &mut ev);
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(out[0].removed_resources, ["c"]);
        assert_eq!(d.types[&TypeUrl::Cluster].sent.len(), 2);
    }

    #[test]
    fn reconnect_named_and_unsubscribe() {
        let mut d = Delta::default();
        let mut n = 0;
        let mut nonces = move || {
            n += 1;
            n.to_string()
        };
        let mut ev = Events::default();
        let g = generated(&[("a", ""), ("b", "")], &["x", "y"]);
        let a = g.get(TypeUrl::Cluster)["a"].version.clone();
        let mut first = req(TypeUrl::Cluster, &[], &[], "");
        first.initial_resource_versions = [
            ("a".to_string(), a),
            ("b".to_string(), "old".to_string()),
            ("gone".to_string(), "1".to_string()),
        ]
        .into();
        let out = d.on_request(TypeUrl::Cluster, first, &g, &mut nonces, &mut ev);
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(out[0].removed_resources, ["gone"]);

        // Named: the missing one is reported removed once.
        let out = d.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &["x", "z"], &[], ""),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(names(&out[0]), ["x"]);
        assert_eq!(out[0].removed_resources, ["z"]);
        assert!(d.on_generated(&g, &mut nonces, &mut ev).is_empty());
        // Subscribing again to what it has: sent again (the client may have dropped it).
        let out = d.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &["x", "y"], &["z"], ""),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(names(&out[0]), ["x", "y"]);
        // Unsubscribed: no longer pushed.
        d.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &[], &["x"], ""),
            &g,
            &mut nonces,
            &mut ev,
        );
        let g2 = generated(&[("a", ""), ("b", "")], &[]);
        let out = d.on_generated(&g2, &mut nonces, &mut ev);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].removed_resources, ["y"]);
    }

    #[test]
    fn a_derived_generation_is_diffed_by_its_changed_names() {
        let mut nonces = {
            let mut n = 0;
            move || {
                n += 1;
                n.to_string()
            }
        };
        let mut ev = Events::default();
        let cla = |name: &str, weight: u32| ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![Default::default(); weight as usize],
            ..Default::default()
        };
        let mut res = XdsResources::default();
        for name in [
            "outbound|80||a.ns",
            "outbound|80||b.ns",
            "outbound|80|v1|b.ns",
        ] {
            res.endpoints.insert(name.to_string(), cla(name, 1));
        }
        let g1 = Generated::new(&res);
        let mut d = Delta::default();
        let names = [
            "outbound|80||a.ns",
            "outbound|80||b.ns",
            "outbound|80|v1|b.ns",
            "x",
        ];
        let out = d.on_request(
            TypeUrl::Endpoint,
            req(TypeUrl::Endpoint, &names, &[], ""),
            &g1,
            &mut nonces,
            &mut ev,
        );
        assert_eq!(out[0].resources.len(), 3);
        assert_eq!(out[0].removed_resources, ["x"]);

        // b changes: its plain set gets new endpoints, its subset goes away.
        let mut partial = XdsResources::default();
        partial
            .endpoints
            .insert("outbound|80||b.ns".into(), cla("outbound|80||b.ns", 2));
        let g2 = g1.with_hosts(&partial, &["b.ns".to_string()].into());
        let out = d.on_generated(&g2, &mut nonces, &mut ev);
        assert_eq!(names_of(&out[0]), ["outbound|80||b.ns"]);
        assert_eq!(out[0].removed_resources, ["outbound|80|v1|b.ns"]);
        // The same as a full diff from scratch would conclude.
        let sent: Vec<&String> = d.types[&TypeUrl::Endpoint].sent.keys().collect();
        assert_eq!(sent, ["outbound|80||a.ns", "outbound|80||b.ns"]);
        assert!(d.on_generated(&g2, &mut nonces, &mut ev).is_empty());
    }

    #[test]
    fn large_responses_are_split() {
        let mut nonces = {
            let mut n = 0;
            move || {
                n += 1;
                n.to_string()
            }
        };
        let mut ev = Events::default();
        let big = "x".repeat(MAX_RESPONSE_BYTES / 2 + 1);
        let g = generated(&[("a", &big), ("b", &big), ("c", &big), ("d", "")], &[]);
        let mut d = Delta::default();
        let mut first = req(TypeUrl::Cluster, &[], &[], "");
        first.initial_resource_versions = [("gone".to_string(), "1".to_string())].into();
        let out = d.on_request(TypeUrl::Cluster, first, &g, &mut nonces, &mut ev);
        let sizes: Vec<usize> = out.iter().map(|r| r.resources.len()).collect();
        assert_eq!(sizes, [1, 1, 2]);
        assert!(out[..2].iter().all(|r| r.removed_resources.is_empty()));
        assert_eq!(out[2].removed_resources, ["gone"]);
        // The last nonce is the one awaited: an earlier one's ACK is stale.
        assert!(
            d.on_request(
                TypeUrl::Cluster,
                req(TypeUrl::Cluster, &[], &[], &out[0].nonce),
                &g,
                &mut nonces,
                &mut ev
            )
            .is_empty()
        );
        assert!(d.awaiting());
        d.on_request(
            TypeUrl::Cluster,
            req(TypeUrl::Cluster, &[], &[], &out[2].nonce),
            &g,
            &mut nonces,
            &mut ev,
        );
        assert!(!d.awaiting());
    }

    fn names_of(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        names(r)
    }
}
