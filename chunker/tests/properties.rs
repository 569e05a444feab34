#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Property tests of the chunker invariants stated in the crate docs.

use cairn_chunker::{split, Chunker, Params, StreamChunker};
use proptest::prelude::*;

const SMALL: Params = Params {
    min: 256,
    avg: 1024,
    max: 4096,
};

/// Pseudo-random bytes from a seed, so inputs are large without proptest shrinking megabytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn chunker(seed: u64) -> Chunker {
    match Chunker::new(SMALL, seed) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn concatenation_equals_input_and_sizes_are_bounded(seed in any::<u64>(), len in 0usize..60_000) {
        let data = bytes(seed, len);
        let cuts = split(&chunker(7), &data);
        prop_assert_eq!(cuts.iter().sum::<usize>(), data.len());
        for (i, n) in cuts.iter().enumerate() {
            prop_assert!(*n <= SMALL.max);
            if i + 1 < cuts.len() {
                prop_assert!(*n >= SMALL.min, "chunk {} of {} is {} bytes", i, cuts.len(), n);
            } else {
                prop_assert!(*n >= 1);
            }
        }
    }

    #[test]
    fn pushing_in_pieces_gives_the_same_chunks(seed in any::<u64>(), len in 0usize..60_000, pieces in proptest::collection::vec(1usize..9000, 1..20)) {
        let data = bytes(seed, len);
        let c = chunker(3);
        let expected: Vec<Vec<u8>> = {
            let mut out = Vec::new();
            let mut start = 0;
            for n in split(&c, &data) { out.push(data[start..start + n].to_vec()); start += n; }
            out
        };
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut s = StreamChunker::new(c);
        let mut rest = &data[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = pieces[i % pieces.len()].min(rest.len());
            s.push(&rest[..n], |chunk| got.push(chunk.to_vec()));
            rest = &rest[n..];
            i += 1;
        }
        s.finish(|chunk| got.push(chunk.to_vec()));
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn deterministic(seed in any::<u64>(), tenant_seed in any::<u64>()) {
        let data = bytes(seed, 30_000);
        prop_assert_eq!(split(&chunker(tenant_seed), &data), split(&chunker(tenant_seed), &data));
    }

    #[test]
    fn cut_points_resynchronise_after_an_insertion(seed in any::<u64>(), at in 0usize..100_000, insert in proptest::collection::vec(any::<u8>(), 1..200)) {
        let data = bytes(seed, 200_000);
        let at = at.min(data.len());
        let mut changed = data[..at].to_vec();
        changed.extend_from_slice(&insert);
        changed.extend_from_slice(&data[at..]);
        let c = chunker(11);
        let ends = |d: &[u8]| -> Vec<usize> {
            split(&c, d).iter().scan(0, |acc, n| { *acc += n; Some(*acc) }).collect()
        };
        let before = ends(&data);
        let after: std::collections::HashSet<usize> =
            ends(&changed).into_iter().map(|e| e - insert.len()).collect();
        // Cut points well past the insertion are the same, shifted by its length.
        let tail: Vec<usize> = before.iter().copied().filter(|e| *e > at + 4 * SMALL.max).collect();
        let kept = tail.iter().filter(|e| after.contains(e)).count();
        prop_assert!(tail.is_empty() || kept * 10 >= tail.len() * 9, "only {} of {} cut points survived", kept, tail.len());
    }
}

#[test]
fn different_seeds_cut_differently() {
    let data = bytes(1, 200_000);
    assert_ne!(split(&chunker(1), &data), split(&chunker(2), &data));
}

#[test]
fn invalid_params_are_rejected() {
    let bad = Params {
        min: 10,
        avg: 5,
        max: 1,
    };
    assert!(Chunker::new(bad, 0).is_err());
}
