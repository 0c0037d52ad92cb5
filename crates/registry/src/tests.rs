//! The registry built from Istio YAML.

use std::net::IpAddr;
use std::sync::Arc;

use strait_api::parse::Outcome;
use strait_api::{Resource, parse_bytes};

use crate::{Origin, Protocol, Registry, Resolution, VipTable, Visibility};

fn resources(yaml: &str) -> Vec<Resource> {
    parse_bytes("test.yaml", yaml.as_bytes())
        .into_iter()
        .map(|p| match p.outcome {
            Outcome::Resource(r) => *r,
            other => panic!("document {} did not parse: {other:?}", p.source.index),
        })
        .collect()
}

fn build(yaml: &str) -> (Registry, VipTable) {
    let mut vips = VipTable::default();
    let reg = Registry::build(&resources(yaml), &mut vips, "cluster.local");
    (reg, vips)
}

const BOOKINFO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {app: ratings}
  ports:
  - {name: http-api, port: 9080, targetPort: 9081}
  - {name: grpc, port: 9090, appProtocol: grpc}
  - {name: metrics, port: 15020}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: details
  namespace: default
  annotations: {networking.istio.io/exportTo: "., istio-system"}
spec:
  ports:
  - {name: http, port: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 127.0.0.12, labels: {app: reviews, version: v2}, ports: {http: 19080}, locality: us/east/a, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3, namespace: default}
spec: {address: 127.0.0.10, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-other-ns, namespace: other}
spec: {address: 127.0.0.99, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: default}
spec: {address: 127.0.0.21, labels: {app: ratings, version: v1}, ports: {grpc: 7070}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-v1, namespace: default}
spec: {address: 127.0.0.31, labels: {app: details}}
"#;

#[test]
fn bookinfo_services_ports_and_endpoints() {
    let (reg, vips) = build(BOOKINFO);
    let hosts: Vec<&str> = reg.services.keys().map(String::as_str).collect();
    assert_eq!(
        hosts,
        [
            "details.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    let reviews = &reg.services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.namespace, "default");
    assert_eq!(
        reviews.origin,
        Origin::KubernetesService {
            name: "reviews".into()
        }
    );
    assert_eq!(reviews.resolution, Resolution::Static);
    assert_eq!(reviews.visibility, Visibility::Public);
    assert_eq!(
        reviews.addresses,
        [vips.get("reviews.default.svc.cluster.local").unwrap()]
    );
    assert_eq!(reviews.port(9080).unwrap().protocol, Protocol::Http);

    // Endpoints: only the same namespace, sorted by address; WorkloadEntry ports map wins.
    let eps = reg.endpoints("reviews.default.svc.cluster.local", 9080);
    let got: Vec<(&str, u16, &str, u32)> = eps
        .iter()
        .map(|e| {
            (
                e.address.as_str(),
                e.port,
                e.labels["version"].as_str(),
                e.weight,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("127.0.0.10", 9080, "v3", 1),
            ("127.0.0.11", 9080, "v1", 1),
            ("127.0.0.12", 19080, "v2", 3)
        ]
    );
    assert_eq!(eps[0].service_account, "default");
    assert_eq!(eps[1].service_account, "bookinfo-reviews");
    assert_eq!(eps[2].locality, "us/east/a");
    assert_eq!(eps[2].workload.as_deref(), Some("reviews-v2"));
    assert_eq!(eps[2].namespace, "default");

    // Protocols from names and appProtocol; UDP ports are left out; targetPort is used.
    let ratings = &reg.services["ratings.default.svc.cluster.local"];
    let ports: Vec<(u16, Protocol)> = ratings
        .ports
        .iter()
        .map(|p| (p.number, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (9080, Protocol::Http),
            (9090, Protocol::Grpc),
            (15020, Protocol::Unknown)
        ]
    );
    let port_of = |port| reg.endpoints("ratings.default.svc.cluster.local", port)[0].port;
    assert_eq!(port_of(9080), 9081);
    assert_eq!(port_of(9090), 7070);
    assert_eq!(port_of(15020), 15020);

    // No selector: no endpoints. exportTo from the annotation.
    let details = &reg.services["details.default.svc.cluster.local"];
    assert!(reg.endpoints(&details.hostname, 9080).is_empty());
    assert_eq!(
        details.visibility,
        Visibility::Namespaces(vec!["default".into(), "istio-system".into()])
    );
    assert!(details.visible_from("istio-system"));
    assert!(!details.visible_from("other"));

    // Every service has its own VIP.
    let mut ips: Vec<IpAddr> = reg
        .services
        .values()
        .flat_map(|s| s.addresses.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3);
}

#[test]
fn short_names_resolve_in_the_referrers_namespace() {
    let (reg, _) = build(BOOKINFO);
    let s = reg.resolve("reviews", "default", "cluster.local").unwrap();
    assert_eq!(s.hostname, "reviews.default.svc.cluster.local");
    assert!(reg.resolve("reviews", "other", "cluster.local").is_none());
    assert!(
        reg.resolve(
            "reviews.default.svc.cluster.local",
            "other",
            "cluster.local"
        )
        .is_some()
    );
}

#[test]
fn vips_survive_a_restart() {
    let mut vips = VipTable::default();
    let first = Registry::build(&resources(BOOKINFO), &mut vips, "cluster.local");
    let saved = vips.to_json();
    let mut restored = VipTable::from_json(&saved).unwrap();
    // Built again from the same config in reverse order, with the restored table.
    let mut reversed = resources(BOOKINFO);
    reversed.reverse();
    let second = Registry::build(&reversed, &mut restored, "cluster.local");
    assert_eq!(first, second);
    assert_eq!(restored, vips);
}

const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-static, namespace: egress}
spec:
  hosts: [api.example.com]
  addresses: [192.0.2.10, 10.10.0.0/16]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  endpoints:
  - {address: 192.0.2.2, ports: {https: 8443}, labels: {version: b}, locality: eu/west, weight: 5, serviceAccount: api}
  - {address: 192.0.2.1}
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-dns, namespace: egress}
spec:
  hosts: [httpbin.org, www.httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: egress}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports:
  - {number: 443, name: tls, protocol: TLS}
  exportTo: ["~"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: vm}
spec:
  hosts: [mysql.vm.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 3306, name: mysql, protocol: MYSQL}
  workloadSelector: {labels: {app: mysql}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: mysql-1, namespace: vm}
spec: {address: 10.1.0.2, labels: {app: mysql}, ports: {mysql: 3307}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: mysql-elsewhere, namespace: default}
spec: {address: 10.1.0.3, labels: {app: mysql}}
"#;

#[test]
fn service_entries() {
    let (reg, vips) = build(ENTRIES);

    let api = &reg.services["api.example.com"];
    assert_eq!(api.namespace, "egress");
    assert_eq!(
        api.origin,
        Origin::ServiceEntry {
            name: "external-static".into()
        }
    );
    assert_eq!(api.addresses, ["192.0.2.10".parse::<IpAddr>().unwrap()]);
    assert!(api.mesh_external);
    assert_eq!(api.resolution, Resolution::Static);
    assert_eq!(api.visibility, Visibility::Private);
    assert_eq!(api.port(443).unwrap().protocol, Protocol::Https);
    let eps = reg.endpoints("api.example.com", 443);
    let got: Vec<(&str, u16, u32)> = eps
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.weight))
        .collect();
    assert_eq!(got, [("192.0.2.1", 443, 1), ("192.0.2.2", 8443, 5)]);
    assert_eq!(eps[1].locality, "eu/west");
    assert_eq!(eps[1].service_account, "api");
    assert_eq!(eps[1].workload, None);
    let ports: Vec<u16> = reg
        .endpoints("api.example.com", 80)
        .iter()
        .map(|e| e.port)
        .collect();
    assert_eq!(ports, [8080, 8080]);
    assert_eq!(
        vips.get("api.example.com"),
        None,
        "explicit addresses need no VIP"
    );

    // DNS without endpoints: the host is the endpoint; one service per host, each with a VIP.
    for host in ["httpbin.org", "www.httpbin.org"] {
        let s = &reg.services[host];
        assert_eq!(s.resolution, Resolution::Dns);
        assert_eq!(s.addresses, [vips.get(host).unwrap()]);
        let eps = reg.endpoints(host, 80);
        assert_eq!(eps.len(), 1);
        assert_eq!((eps[0].address.as_str(), eps[0].port), (host, 80));
    }

    // NONE: passthrough, no endpoints, no VIP; `~` is visible to nobody.
    let wiki = &reg.services["*.wikipedia.org"];
    assert_eq!(wiki.resolution, Resolution::Passthrough);
    assert!(wiki.addresses.is_empty());
    assert!(reg.endpoints("*.wikipedia.org", 443).is_empty());
    assert_eq!(wiki.visibility, Visibility::Namespaces(vec![]));
    assert!(!wiki.visible_from("egress"));

    // workloadSelector: WorkloadEntries of the entry's namespace only, with their port map.
    let mysql = &reg.services["mysql.vm.internal"];
    assert!(!mysql.mesh_external);
    assert_eq!(mysql.port(3306).unwrap().protocol, Protocol::Mysql);
    let eps = reg.endpoints("mysql.vm.internal", 3306);
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].address.as_str(), eps[0].port), ("10.1.0.2", 3307));
    assert_eq!(eps[0].workload.as_deref(), Some("mysql-1"));
}

#[test]
fn first_definition_of_a_host_wins() {
    let yaml = format!(
        "{BOOKINFO}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: DNS
  ports: [{number: 1, name: tcp, protocol: TCP}]
"#
    );
    let (reg, _) = build(&yaml);
    let s = &reg.services["reviews.default.svc.cluster.local"];
    assert!(matches!(s.origin, Origin::KubernetesService { .. }));
    assert!(reg.endpoints(&s.hostname, 1).is_empty());
}

#[test]
fn port_name_protocols_follow_istio() {
    let p = |name, app| Protocol::from_port_name(name, app);
    assert_eq!(p("http", None), Protocol::Http);
    assert_eq!(p("http-web", None), Protocol::Http);
    assert_eq!(p("HTTP2-x", None), Protocol::Http2);
    assert_eq!(p("grpc-web-x", None), Protocol::GrpcWeb);
    assert_eq!(p("grpc", None), Protocol::Grpc);
    assert_eq!(p("tcp-db", None), Protocol::Tcp);
    assert_eq!(p("mongo", None), Protocol::Mongo);
    assert_eq!(p("redis-1", None), Protocol::Redis);
    assert_eq!(p("web", None), Protocol::Unknown);
    assert_eq!(p("", None), Protocol::Unknown);
    assert_eq!(p("web", Some("http")), Protocol::Http);
    assert_eq!(p("http", Some("kubernetes.io/h2c")), Protocol::Http2);
    assert_eq!(p("x", Some("kubernetes.io/wss")), Protocol::Https);
}

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec:
  selector: {app: a}
  ports: [{name: http, port: 80}, {name: tcp, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec:
  selector: {app: b}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b-vm, namespace: default}
spec:
  hosts: [b.vm.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b-again, namespace: default}
spec:
  hosts: [b.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 80, protocol: HTTP}]
  workloadSelector: {labels: {app: c}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a-1, namespace: default}
spec: {address: 10.0.0.1, labels: {app: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b-1, namespace: default}
spec: {address: 10.0.0.2, labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a-other, namespace: other}
spec: {address: 10.0.0.3, labels: {app: a}}
"#;

const WE_HEADER: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n";

/// `WORKLOADS` with the WorkloadEntry `name` replaced by `spec` (removed when `None`), and the
/// (namespace, labels) of the entry before and after.
fn change_workload(before: &[Resource], name: &str, ns: &str, spec: Option<&str>) -> Vec<Resource> {
    let mut after: Vec<Resource> = before
        .iter()
        .filter(|r| !(r.kind == strait_api::Kind::WorkloadEntry && r.name() == name))
        .cloned()
        .collect();
    if let Some(spec) = spec {
        let yaml =
            format!("{WE_HEADER}metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n");
        after.extend(resources(&yaml));
    }
    after
}

#[test]
fn an_update_for_some_workloads_equals_a_full_build() {
    let before = resources(WORKLOADS);
    let mut vips = VipTable::default();
    let reg = Registry::build(&before, &mut vips, "cluster.local");
    let labels = |rs: &[Resource],
                  name: &str|
     -> Vec<(String, std::collections::BTreeMap<String, String>)> {
        rs.iter()
            .filter(|r| r.kind == strait_api::Kind::WorkloadEntry && r.name() == name)
            .filter_map(|r| match &r.spec {
                strait_api::Spec::WorkloadEntry(w) => Some((
                    r.metadata.namespace.clone().unwrap_or_default(),
                    w.labels.clone(),
                )),
                _ => None,
            })
            .collect()
    };
    let cases: [(&str, &str, Option<&str>, &[&str]); 6] = [
        // A weight: only a's lists.
        (
            "a-1",
            "default",
            Some("{address: 10.0.0.1, labels: {app: a}, weight: 5}"),
            &["a.default.svc.cluster.local"],
        ),
        // Moved from b to a: a, b and the ServiceEntry selecting b.
        (
            "b-1",
            "default",
            Some("{address: 10.0.0.2, labels: {app: a}}"),
            &[
                "a.default.svc.cluster.local",
                "b.default.svc.cluster.local",
                "b.vm.internal",
            ],
        ),
        // Removed.
        ("a-1", "default", None, &["a.default.svc.cluster.local"]),
        // Added, selected by the ServiceEntry whose host the Service b won: only b's own.
        (
            "c-1",
            "default",
            Some("{address: 10.0.0.9, labels: {app: c}}"),
            &[],
        ),
        // Added in another namespace: nothing selects it.
        (
            "b-2",
            "other",
            Some("{address: 10.0.0.8, labels: {app: b}}"),
            &[],
        ),
        // Selected by nothing.
        (
            "x-1",
            "default",
            Some("{address: 10.0.0.7, labels: {app: x}}"),
            &[],
        ),
    ];
    for (name, ns, spec, hosts) in cases {
        let after = change_workload(&before, name, ns, spec);
        let mut changed = labels(&before, name);
        changed.extend(labels(&after, name));
        let changed: Vec<(&str, &std::collections::BTreeMap<String, String>)> =
            changed.iter().map(|(n, l)| (n.as_str(), l)).collect();
        let (updated, got_hosts) = reg.with_workloads(&after, &changed, &mut vips, "cluster.local");
        let mut full_vips = vips.clone();
        let full = Registry::build(&after, &mut full_vips, "cluster.local");
        assert_eq!(updated, full, "{name} -> {spec:?}");
        assert_eq!(got_hosts, hosts, "{name} -> {spec:?}");
        // Unchanged lists are shared, not copied.
        let key = ("b.vm.internal".to_string(), 80);
        if !hosts.contains(&"b.vm.internal") {
            assert!(Arc::ptr_eq(&reg.endpoints[&key], &updated.endpoints[&key]));
        }
    }
}
