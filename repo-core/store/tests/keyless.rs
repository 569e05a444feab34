#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The dependency rule of the keyless layer: building cairn-store (as the server does, with
//! no features) never brings in crypto, compression, chunking, thread pools or the cache
//! database. Cargo enforces what a crate can call; this test keeps the list of what it
//! depends on honest.

use std::process::Command;

/// Crates that would let a holder of this layer decrypt, or that belong to the keyed engine.
const FORBIDDEN: &[&str] = &[
    "chacha20poly1305",
    "chacha20",
    "poly1305",
    "argon2",
    "zstd",
    "fastcdc",
    "rayon",
    "redb",
    "cairn-repo",
    "cairn-chunker",
];

#[test]
fn the_keyless_layer_builds_without_crypto_compression_chunking_or_cache() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args([
            "--format",
            "{p}",
            "--manifest-path",
            manifest,
            "-p",
            "cairn-store",
        ])
        .output()
        .map_err(|e| format!("running cargo tree: {e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"cairn-store"),
        "unexpected cargo tree output:\n{tree}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| names.contains(f)).collect();
    assert!(
        found.is_empty(),
        "cairn-store depends on {found:?}:\n{tree}"
    );
}
