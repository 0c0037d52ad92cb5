//! Arbitrary bytes as a YAML or JSON input (`strait apply -f`), parsed into strait-api's types,
//! validated, and read again from the JSON the CLI sends to the API.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_api::fuzzing::config_parse(data));
