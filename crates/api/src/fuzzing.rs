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
    use std::path::PathBuf;

    use super::config_parse;

    /// `fuzz/corpus/config_parse`: seeds and every input fuzzing kept (crashers included).
    fn corpus() -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_parse");
        let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
            .map(|e| std::fs::read(e.expect("a corpus entry").path()).expect("a corpus file"))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{} is empty", dir.display());
        inputs
    }

    /// Deterministic byte-level mutations (flips, truncations, splices) of the seeds.
    fn mutations(seeds: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
        let mut x: u64 = 0x5354_5241_4954;
        let mut next = move |bound: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % bound.max(1) as u64) as usize
        };
        (0..n)
            .map(|_| {
                let mut m = seeds[next(seeds.len())].clone();
                for _ in 0..1 + next(3) {
                    if m.is_empty() {
                        break;
                    }
                    let at = next(m.len());
                    match next(4) {
                        0 => m[at] = next(256) as u8,
                        1 => m.truncate(at),
                        2 => m.insert(at, b"{}[]:- \n\"'#&*!|>"[next(16)]),
                        _ => {
                            let other = &seeds[next(seeds.len())];
                            let from = next(other.len());
                            m.splice(at..at, other[from..].iter().copied().take(40));
                        }
                    }
                }
                m
            })
            .collect()
    }

    #[test]
    fn config_parse_survives_its_corpus_and_mutations() {
        let seeds = corpus();
        for input in seeds.iter().chain(&mutations(&seeds, 3000)) {
            config_parse(input);
        }
    }
}
