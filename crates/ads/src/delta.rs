//! Incremental (Delta) ADS: responses carry only the resources that changed, and the names of
//! those removed, with a version per resource.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::control_plane;
use super::generated::{Encoded, Generated, entry_hash};
use super::state::{Events, Protocol, TypeState};
use strait_xds_core::TypeUrl;

/// What the client subscribed to for one type. What it has is the type's
/// [`TypeState::sent`]: what the server sent (ACKed or not: a NACKed resource is not resent
/// until it changes), or, after a reconnect, what the client said it had and the server has too.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Subscribed names the server has no resource for, already told to the client as removed.
    told_absent: BTreeSet<String>,
    /// The version of what the client has: the wrapping sum of [`entry_hash`] over
    /// [`TypeState::sent`], kept as entries come and go (equal sets, equal version).
    version: u64,
}

impl Subscription {
    /// Records that the client has `encoded` as `name`.
    fn have(
        &mut self,
        sent: &mut BTreeMap<Arc<str>, Arc<Encoded>>,
        name: &str,
        encoded: &Arc<Encoded>,
    ) {
        let add = |v: &mut u64| *v = v.wrapping_add(entry_hash(name, &encoded.version));
        match sent.get_mut(name) {
            Some(old) if old.version == encoded.version => *old = encoded.clone(),
            Some(old) => {
                self.version = self.version.wrapping_sub(entry_hash(name, &old.version));
                add(&mut self.version);
                *old = encoded.clone();
            }
            None => {
                add(&mut self.version);
                sent.insert(encoded.name.clone(), encoded.clone());
            }
        }
    }

    /// Records that the client no longer has `name`; whether it had it.
    fn drop_have(&mut self, sent: &mut BTreeMap<Arc<str>, Arc<Encoded>>, name: &str) -> bool {
        match sent.remove(name) {
            Some(old) => {
                self.version = self.version.wrapping_sub(entry_hash(name, &old.version));
                true
            }
            None => false,
        }
    }
}

/// One Delta stream's state.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<TypeUrl, TypeState>,
    subscriptions: BTreeMap<TypeUrl, Subscription>,
    /// The generation every started type was last brought up to date with.
    reconciled: Option<u64>,
}

/// A response to send, its resources still shared with the generation: they are copied into
/// the message only when the stream is ready to send it ([`Delta::materialize`]), so a stream
/// waiting on a slow client holds pointers, not copies.
#[derive(Debug)]
pub(crate) struct Pending {
    response: DeltaDiscoveryResponse,
    resources: Vec<Arc<Encoded>>,
}

impl Delta {
    /// The response that brings the client from what it has to what it should have, if any
    /// (always one when `force`: the client waits for an answer to its first request).
    /// `initial`: on a stream's first request of the type, the versions the client says it has.
    fn diff(
        &mut self,
        ty: TypeUrl,
        generated: &Generated,
        initial: Option<HashMap<String, String>>,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Pending> {
        let force = initial.is_some();
        let state = self.types.entry(ty).or_default();
        let sub = self.subscriptions.entry(ty).or_default();
        let all = generated.get(ty);
        let wanted = |sub: &Subscription, name: &str| sub.wildcard || sub.names.contains(name);
        let mut removed: Vec<String> = Vec::new();
        match &initial {
            // What the client had that it should no longer have.
            Some(initial) => removed.extend(
                initial
                    .keys()
                    .filter(|n| !wanted(sub, n) || !all.contains_key(*n))
                    .cloned(),
            ),
            None => {
                let gone: Vec<String> = state
                    .sent
                    .keys()
                    .filter(|n| !wanted(sub, n) || !all.contains_key(&***n))
                    .map(|n| n.to_string())
                    .collect();
                for name in &gone {
                    sub.drop_have(&mut state.sent, name);
                }
                removed = gone;
            }
        }
        let mut resources = Vec::new();
        for (name, encoded) in all {
            if !wanted(sub, name) {
                continue;
            }
            let has = match &initial {
                Some(initial) => initial.get(name),
                None => state.sent.get(name.as_str()).map(|e| &e.version),
            };
            if has != Some(&encoded.version) {
                resources.push(encoded.clone());
            }
            // Also fills in what a reconnecting client already had.
            sub.have(&mut state.sent, name, encoded);
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

    /// Like [`Delta::diff`] without `initial`, for a generation whose only differences from the
    /// one this type was last brought up to date with are `changed`: looks at those names only.
    fn diff_changed(
        &mut self,
        ty: TypeUrl,
        generated: &Generated,
        changed: &BTreeSet<String>,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Pending> {
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
                    if state.sent.get(name.as_str()).map(|e| &e.version) != Some(&encoded.version) {
                        resources.push(encoded.clone());
                    }
                    sub.have(&mut state.sent, name, encoded);
                }
                None => {
                    if sub.drop_have(&mut state.sent, name) {
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
/// largest message it sent, for as long as the stream lives, and a stream's queued responses
/// are held until the client reads them.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The responses with these changes, if any (always one when `force`): one, or several of at
/// most [`MAX_RESPONSE_BYTES`] of resources each, the removals in the last. The client merges
/// them (Delta responses are incremental); the last one's nonce is the one awaited.
#[expect(clippy::too_many_arguments)]
fn respond(
    ty: TypeUrl,
    state: &mut TypeState,
    sub: &Subscription,
    resources: Vec<Arc<Encoded>>,
    mut removed: Vec<String>,
    force: bool,
    nonces: &mut dyn FnMut() -> String,
    ev: &mut Events,
) -> Vec<Pending> {
    removed.sort();
    removed.dedup();
    if resources.is_empty() && removed.is_empty() && !force {
        return Vec::new();
    }
    let version = format!("{:016x}", sub.version);
    let mut chunks: Vec<Vec<Arc<Encoded>>> = vec![Vec::new()];
    let mut size = 0;
    for r in resources {
        let bytes = r.resource.value.len() + r.name.len();
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
            Pending {
                response: DeltaDiscoveryResponse {
                    system_version_info: version.clone(),
                    type_url: ty.as_str().to_string(),
                    removed_resources: if i == last {
                        std::mem::take(&mut removed)
                    } else {
                        Vec::new()
                    },
                    nonce,
                    control_plane: Some(control_plane()),
                    ..Default::default()
                },
                resources,
            }
        })
        .collect()
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Pending = Pending;

    fn node(
        req: &DeltaDiscoveryRequest,
    ) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn materialize(pending: Pending) -> DeltaDiscoveryResponse {
        let mut response = pending.response;
        response.resources = pending
            .resources
            .into_iter()
            .map(|encoded| Resource {
                name: encoded.name.to_string(),
                version: encoded.version.clone(),
                resource: Some(encoded.resource.clone()),
                ..Default::default()
            })
            .collect();
        response
    }

    fn on_request(
        &mut self,
        ty: TypeUrl,
        req: DeltaDiscoveryRequest,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Pending> {
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
                sub.drop_have(&mut state.sent, &name);
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
                sub.drop_have(&mut state.sent, &name);
            }
        }
        let initial = first.then_some(req.initial_resource_versions);
        let out = self.diff(ty, generated, initial, nonces, ev);
        self.reconciled = Some(generated.id());
        out
    }

    fn on_generated(
        &mut self,
        generated: &Generated,
        nonces: &mut dyn FnMut() -> String,
        ev: &mut Events,
    ) -> Vec<Pending> {
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
                    None => self.diff(ty, generated, None, nonces, ev),
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
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
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

    fn req(ty: TypeUrl, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.as_str().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    trait Built {
        fn built(self) -> Vec<DeltaDiscoveryResponse>;
    }

    impl Built for Vec<Pending> {
        fn built(self) -> Vec<DeltaDiscoveryResponse> {
            self.into_iter().map(Delta::materialize).collect()
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
        let out = d
            .on_request(
                TypeUrl::Cluster,
                req(TypeUrl::Cluster, &[], &[], ""),
                &g1,
                &mut nonces,
                &mut ev,
            )
            .built();
        assert_eq!(names(&out[0]), ["a", "b", "c"]);
        let g1_version = out[0].system_version_info.clone();
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
        let out = d.on_generated(&g2, &mut nonces, &mut ev).built();
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(out[0].removed_resources, ["c"]);
        assert_eq!(d.types[&TypeUrl::Cluster].sent.len(), 2);
        // The set's version, kept incrementally, is the one a new stream computes for it.
        let mut fresh = Delta::default();
        let whole = fresh
            .on_request(
                TypeUrl::Cluster,
                req(TypeUrl::Cluster, &[], &[], ""),
                &g2,
                &mut nonces,
                &mut ev,
            )
            .built();
        assert_eq!(whole[0].system_version_info, out[0].system_version_info);
        assert_ne!(whole[0].system_version_info, g1_version);
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
        let out = d
            .on_request(TypeUrl::Cluster, first, &g, &mut nonces, &mut ev)
            .built();
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(out[0].removed_resources, ["gone"]);

        // Named: the missing one is reported removed once.
        let out = d
            .on_request(
                TypeUrl::Endpoint,
                req(TypeUrl::Endpoint, &["x", "z"], &[], ""),
                &g,
                &mut nonces,
                &mut ev,
            )
            .built();
        assert_eq!(names(&out[0]), ["x"]);
        assert_eq!(out[0].removed_resources, ["z"]);
        assert!(d.on_generated(&g, &mut nonces, &mut ev).is_empty());
        // Subscribing again to what it has: sent again (the client may have dropped it).
        let out = d
            .on_request(
                TypeUrl::Endpoint,
                req(TypeUrl::Endpoint, &["x", "y"], &["z"], ""),
                &g,
                &mut nonces,
                &mut ev,
            )
            .built();
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
        let out = d.on_generated(&g2, &mut nonces, &mut ev).built();
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
        let out = d
            .on_request(
                TypeUrl::Endpoint,
                req(TypeUrl::Endpoint, &names, &[], ""),
                &g1,
                &mut nonces,
                &mut ev,
            )
            .built();
        assert_eq!(out[0].resources.len(), 3);
        assert_eq!(out[0].removed_resources, ["x"]);

        // b changes: its plain set gets new endpoints, its subset goes away.
        let mut partial = XdsResources::default();
        partial
            .endpoints
            .insert("outbound|80||b.ns".into(), cla("outbound|80||b.ns", 2));
        let g2 = g1.with_hosts(&partial, &["b.ns".to_string()].into());
        let out = d.on_generated(&g2, &mut nonces, &mut ev).built();
        assert_eq!(names_of(&out[0]), ["outbound|80||b.ns"]);
        assert_eq!(out[0].removed_resources, ["outbound|80|v1|b.ns"]);
        // The same as a full diff from scratch would conclude.
        let sent: Vec<&str> = d.types[&TypeUrl::Endpoint]
            .sent
            .keys()
            .map(|k| &**k)
            .collect();
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
        let out = d
            .on_request(TypeUrl::Cluster, first, &g, &mut nonces, &mut ev)
            .built();
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
