//! Arbitrary bytes as a sequence of requests (method, path and query, body, token or not) to
//! the control plane's API router, driven in process on a memory store.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_apiserver::fuzzing::api_request(data));
