//! Arbitrary bytes as a downstream HTTP/1 request stream, through strait-proxy's request checks
//! (httparse underneath), fed whole and in two pieces.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_proxy::fuzzing::h1_head(data));
