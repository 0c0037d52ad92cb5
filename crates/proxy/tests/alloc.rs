//! Nothing is allocated per endpoint per request: a pick from a 5,000-endpoint cluster makes no
//! more allocations than a pick from a one-endpoint cluster, for every balancing policy, on a
//! first try and on a retry (previous-host avoidance), with outlier detection on, and while it
//! has an endpoint ejected. Counted by a global allocator that counts this thread's
//! allocations.
//!
//! The counting allocator is the one `unsafe` piece of this crate's tests: a `GlobalAlloc`
//! cannot be written without it; it only forwards to the system allocator.

#![deny(rust_2018_idioms)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use strait_proxy::config::{Cluster, Endpoint, LbPolicy, OutlierDetection};
use strait_proxy::testing::Picker;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// thread-local `Cell` with a const initializer and no destructor, so counting never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A static cluster of `n` endpoints (10.x.y.z:9080) balanced by `lb`.
fn cluster(lb: LbPolicy, n: usize, outlier_detection: bool) -> Cluster {
    let pb = cl::Cluster {
        name: format!("c{n}"),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ep::ClusterLoadAssignment {
            cluster_name: format!("c{n}"),
            endpoints: vec![ep::LocalityLbEndpoints {
                lb_endpoints: vec![ep::LbEndpoint {
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address: "10.0.0.1".into(),
                                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                        9080,
                                    )),
                                    ..Default::default()
                                })),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut c = Cluster::try_from(&pb).expect("the test cluster converts");
    c.lb = lb;
    c.endpoints = (0..n)
        .map(|i| {
            Endpoint::new(
                format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                9080,
            )
        })
        .collect();
    if outlier_detection {
        c.outlier_detection = Some(OutlierDetection {
            consecutive_local_origin_failure: 1,
            consecutive_5xx: 1,
            max_ejection_percent: 100,
            ..Default::default()
        });
    }
    c
}

const PICKS: u64 = 1000;

/// Allocations per pick, over `PICKS` first tries and as many retries, after a warm-up.
fn per_pick(picker: &Picker) -> (f64, f64) {
    let hashes: Vec<u64> = (0..PICKS)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    // Warm up: whatever is made once (a healthy-endpoint list after an ejection) is made now.
    for h in &hashes[..10] {
        let first = picker.pick(None, Some(*h)).expect("a pick");
        drop(picker.pick(Some(&first), Some(*h)));
    }
    let before = allocations();
    for h in &hashes {
        drop(picker.pick(None, Some(*h)).expect("a pick"));
    }
    let first = (allocations() - before) as f64 / PICKS as f64;
    let previous = picker.pick(None, None).expect("a pick");
    let before = allocations();
    for h in &hashes {
        drop(picker.pick(Some(&previous), Some(*h)).expect("a pick"));
    }
    let retry = (allocations() - before) as f64 / PICKS as f64;
    (first, retry)
}

#[test]
fn allocations_per_pick_do_not_grow_with_the_endpoint_count() {
    // The counter counts (or every assertion below would hold for nothing).
    let before = allocations();
    let made = std::hint::black_box(vec![0u8; 64]);
    assert_eq!(allocations(), before + 1);
    drop(made);
    let policies = [
        LbPolicy::RoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::Random,
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
        },
        LbPolicy::Maglev { table_size: 65537 },
    ];
    let mut report = Vec::new();
    for lb in policies {
        for od in [false, true] {
            // With outlier detection: also with one endpoint ejected (of the large cluster;
            // in the one-endpoint cluster ejecting it would leave none).
            for eject in [false, true] {
                if eject && !od {
                    continue;
                }
                let small = Picker::new(cluster(lb, 1, od));
                let large = Picker::new(cluster(lb, 5000, od));
                if eject {
                    let p = large.pick(None, None).expect("a pick");
                    large.report_failure(&p);
                    let ejected = p.authority().to_string();
                    drop(p);
                    assert!(
                        (0..200).all(|_| large.pick(None, None).unwrap().authority() != ejected),
                        "{lb:?}: the ejected endpoint {ejected} is still picked"
                    );
                }
                let (small_first, small_retry) = per_pick(&small);
                let (large_first, large_retry) = per_pick(&large);
                report.push(format!(
                    "{lb:?} od={od} ejected={eject}: 1 endpoint {small_first}/{small_retry}, 5000 endpoints {large_first}/{large_retry} allocations per pick (first try/retry)"
                ));
                assert!(
                    large_first <= small_first && large_retry <= small_retry,
                    "allocations per pick grow with the endpoint count:\n{}",
                    report.join("\n")
                );
                // And there are none: a pick is a few atomics over what the config holds.
                assert_eq!(
                    (large_first, large_retry),
                    (0.0, 0.0),
                    "{}",
                    report.join("\n")
                );
            }
        }
    }
    println!("{}", report.join("\n"));
}
