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

/// The crates a package depends on (normal edges, default features), by name.
fn dependencies(package: &str) -> Vec<String> {
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
            package,
        ])
        .output()
        .unwrap_or_else(|e| panic!("running cargo tree: {e}"));
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        names.iter().any(|n| n == package),
        "unexpected cargo tree output:\n{tree}"
    );
    names
}

fn assert_keyless(package: &str, allowed: &[&str]) {
    let names = dependencies(package);
    let found: Vec<&&str> = FORBIDDEN
        .iter()
        .filter(|f| !allowed.contains(f) && names.iter().any(|n| n == *f))
        .collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}: {names:?}"
    );
}

#[test]
fn the_keyless_layer_builds_without_crypto_compression_chunking_or_cache() {
    assert_keyless("cairn-store", &[]);
}

#[test]
fn the_server_builds_on_the_keyless_layer_alone() {
    // argon2 hashes the passwords of the server's own users (HTTP Basic auth); it is not
    // the repository's key schedule, whose cipher (chacha20's XChaCha20 key derivation)
    // stays out. rayon
    // (argon2's "parallel" feature, which only the repository asks for) stays out too.
    assert_keyless("cairn-server", &["argon2"]);
}

/// The check itself: cairn-repo does depend on what the rule keeps out, so a rule that
/// passes on it would be a rule that checks nothing.
#[test]
fn the_check_sees_the_keyed_engine() {
    let names = dependencies("cairn-repo");
    for keyed in [
        "chacha20",
        "argon2",
        "zstd",
        "redb",
        "rayon",
        "cairn-chunker",
    ] {
        assert!(names.iter().any(|n| n == keyed), "{keyed} not found");
    }
}
