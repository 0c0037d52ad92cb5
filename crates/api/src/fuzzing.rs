//! The entry point of the `config_parse` fuzz target (`fuzz/`, built by cargo fuzz with
//! `--cfg fuzzing`), and its corpus replay in every `cargo test`. Not part of the library
//! otherwise (`cfg(any(fuzzing, test))` in lib.rs).

use serde_json::Value;

use crate::parse::{Outcome, parse_bytes, parse_value};

/// Arbitrary bytes as a YAML or JSON input, as `strait apply -f` and `strait validate` read it:
/// parsing and validation must not panic, and every resource reads the same from the JSON the
/// CLI sends to the API (its `raw` object, through JSON text) as from the input.
pub fn config_parse(data: &[u8]) {
    for doc in parse_bytes("fuzz.yaml", data) {
        match &doc.outcome {
            Outcome::Resource(r) => {
                let report = r.validate();
                let _ = report.errors.iter().chain(&report.warnings).count();
                let text = serde_json::to_vec(&r.raw).expect("a JSON value serializes");
                let value: Value = serde_json::from_slice(&text).expect("its own JSON parses");
                let again = parse_value(doc.source.clone(), value);
                match &again.outcome {
                    Outcome::Resource(r2) => {
                        assert_eq!(r2.kind, r.kind, "the kind changed through JSON");
                        assert_eq!(r2.spec, r.spec, "the spec changed through JSON");
                        assert_eq!(
                            r2.validate().errors.len(),
                            report.errors.len(),
                            "validation differs through JSON"
                        );
                    }
                    other => panic!("a resource no longer parses through JSON: {other:?}"),
                }
            }
            Outcome::Invalid(e) => {
                let _ = e.to_issue();
            }
            Outcome::Unsupported(_) => {}
        }
    }
}

#[cfg(test)]
mod corpus {
    use strait_testsupport::corpus::{corpus, mutations};

    use super::config_parse;

    #[test]
    fn config_parse_survives_its_corpus_and_mutations() {
        let seeds = corpus("config_parse");
        for input in seeds.iter().chain(&mutations(
            &seeds,
            3000,
            0x5354_5241_4954,
            b"{}[]:- \n\"\'#&*!|>",
        )) {
            config_parse(input);
        }
    }
}
