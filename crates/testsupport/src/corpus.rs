//! What the suite replays of fuzzing (fuzz/README.md): a target's corpus, and deterministic
//! byte-level mutations of it, so that `cargo test` runs every kept input and a few thousand
//! more without a fuzzer.

use std::path::PathBuf;

/// `fuzz/corpus/TARGET`: the seeds and every input fuzzing kept (crashers included), sorted.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("a corpus entry").path()).expect("a corpus file"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

/// `n` deterministic mutations of `seeds` from `seed` (the same every run): each one to three
/// byte flips, truncations, insertions of one of `tokens`, or splices of another seed's bytes.
pub fn mutations(seeds: &[Vec<u8>], n: usize, seed: u64, tokens: &[u8]) -> Vec<Vec<u8>> {
    let mut x = seed;
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
                    2 => m.insert(at, tokens[next(tokens.len())]),
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
