#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Lookups in the local index (the redb cache) when it holds 10 million blobs, and the cost
//! of ingesting them. The cache is built once under `$CAIRN_BENCH_DIR` (default: the system
//! temporary folder) and reused by later runs; `CAIRN_BENCH_BLOBS` changes its size.

use std::path::PathBuf;
use std::time::Instant;

use cairn_repo::cache::{BlobLocation, Cache};
use cairn_repo::{BlobKind, Id};
use criterion::{criterion_group, criterion_main, Criterion};

/// Blobs per synthetic index file, as a backup writes them.
const PER_FILE: u64 = 50_000;

/// The id of blob number `n`: deterministic, spread like hashes are.
fn id_of(n: u64) -> Id {
    Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

fn location(n: u64) -> BlobLocation {
    BlobLocation {
        kind: BlobKind::Data,
        pack: id_of(n / 4000 + (1 << 40)),
        offset: (n % 4000) * 4096,
        length: 4096,
        raw_length: 16384,
    }
}

fn cache(blobs: u64) -> Cache {
    let dir = std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("cairn-bench-index-{blobs}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.redb");
    let done = dir.join("complete");
    if done.exists() {
        return Cache::open(&path).unwrap();
    }
    let _ = std::fs::remove_file(&path);
    let cache = Cache::open(&path).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while n < blobs {
        let end = (n + PER_FILE).min(blobs);
        let entries: Vec<(Id, BlobLocation)> = (n..end).map(|i| (id_of(i), location(i))).collect();
        cache.ingest(&[(id_of(u64::MAX - n), entries)]).unwrap();
        n = end;
    }
    cache.flush().unwrap();
    eprintln!(
        "ingested {blobs} blobs in {:.1} s ({:.0} blobs/s); cache file {} MB",
        started.elapsed().as_secs_f64(),
        blobs as f64 / started.elapsed().as_secs_f64(),
        std::fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0)
    );
    std::fs::write(done, b"").unwrap();
    cache
}

fn benches(c: &mut Criterion) {
    let blobs: u64 = std::env::var("CAIRN_BENCH_BLOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let cache = cache(blobs);
    let mut g = c.benchmark_group(format!("index of {blobs} blobs"));
    let mut k = 0u64;
    g.bench_function("lookup, present", |b| {
        b.iter(|| {
            k = (k + 7_919_993) % blobs;
            cache.lookup(&id_of(k)).unwrap().is_some()
        })
    });
    g.bench_function("lookup, absent", |b| {
        b.iter(|| {
            k += 1;
            cache.lookup(&id_of(u64::MAX / 2 + k)).unwrap().is_none()
        })
    });
    let reader = cache.reader().unwrap();
    g.bench_function("lookup in one read transaction, present", |b| {
        b.iter(|| {
            k = (k + 7_919_993) % blobs;
            reader.lookup(&id_of(k)).unwrap().is_some()
        })
    });
    g.finish();
}

criterion_group!(index, benches);
criterion_main!(index);
