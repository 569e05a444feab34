#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Throughput of the per-byte work of a backup (chunking, blob ids, compress + seal) and of
//! a restore's per-blob work on a database page (open: decrypt, decompress, check the id).

use cairn_chunker::{split, Chunker, Params};
use cairn_repo::crypto::{Keys, MasterKey};
use cairn_repo::format::blob;
use cairn_repo::BlobKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// SQL-dump-like text: compressible, with varying numbers.
fn sql(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "INSERT INTO orders VALUES ({i}, 'customer-{}', {}.{:02}, '2026-11-{:02}');\n",
                i * 7919 % 10007,
                i % 997,
                i % 100,
                1 + i % 28
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn benches(c: &mut Criterion) {
    let data = sql(32 << 20);
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    let chunker = Chunker::new(Params::DEFAULT, 42).unwrap();
    g.bench_function("fastcdc 64k avg", |b| {
        b.iter(|| split(&chunker, &data).len())
    });
    let keys = Keys::derive(&MasterKey::from_bytes([1; 32])).unwrap();
    g.bench_function("keyed blake3", |b| b.iter(|| keys.blob_id(&data)));
    let chunk = &data[..64 * 1024];
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    for level in [0, 1, 3] {
        g.bench_function(format!("compress+seal 64 KiB zstd {level}"), |b| {
            b.iter(|| {
                blob::seal(&keys, BlobKind::Data, keys.blob_id(chunk), chunk, level)
                    .unwrap()
                    .bytes
                    .len()
            })
        });
    }
    g.finish();

    // A restore opens one blob per 8 KiB page of a base backup: the fixed cost per blob
    // (cipher set-up, frame header, id hash) weighs as much as the bytes.
    let mut g = c.benchmark_group("page");
    let page = sql(8192);
    let id = keys.blob_id(&page);
    let sealed = blob::seal(&keys, BlobKind::Data, id, &page, 3).unwrap();
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function(
        format!("open 8 KiB page ({} B sealed)", sealed.bytes.len()),
        |b| {
            let mut work = sealed.bytes.clone();
            let mut out = vec![0u8; page.len()];
            b.iter(|| {
                work.copy_from_slice(&sealed.bytes);
                blob::open_in_place_into(
                    &keys,
                    BlobKind::Data,
                    &id,
                    &mut work,
                    &mut out,
                    &cairn_repo::format::dictionary::NoDictionaries,
                )
                .unwrap();
            })
        },
    );
    g.finish();
}

criterion_group!(primitives, benches);
criterion_main!(primitives);
