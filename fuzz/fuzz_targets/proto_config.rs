//! Arbitrary bytes as an Envoy Listener, Cluster, RouteConfiguration or ClusterLoadAssignment
//! (the first byte picks which), decoded with prost and converted to strait-proxy's config; or
//! a whole Delta response of that type through the xDS client's own path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_proxy::fuzzing::proto_config(data));
