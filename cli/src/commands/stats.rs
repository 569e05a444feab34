//! `cairn stats`: how much is stored and how well deduplication and compression work.

use anyhow::Result;
use serde_json::json;

use crate::args::StatsArgs;
use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub fn run(ctx: &Context, _args: StatsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let snaps = repo.snapshots()?;
    let logical: u64 = snaps.iter().map(|(_, s)| s.summary.total_bytes).sum();
    let totals = repo.blob_totals()?;
    let packs = repo.pack_stats()?;
    let stored = packs.bytes;
    let v = json!({
        "snapshots": snaps.len(),
        "logical_bytes": logical,
        "unique_bytes": totals.raw_bytes,
        "stored_blob_bytes": totals.stored_bytes,
        "stored_bytes": stored,
        "blobs": totals.blobs,
        "data_blobs": totals.data_blobs,
        "tree_blobs": totals.blobs - totals.data_blobs,
        "packs": packs.packs,
        "dedup_ratio": ratio(logical, totals.raw_bytes),
        "compression_ratio": ratio(totals.raw_bytes, totals.stored_bytes),
        "total_ratio": ratio(logical, stored),
    });
    if ctx.json() {
        print_json(&v)?;
        return Ok(0);
    }
    outln!("Snapshots:          {}", snaps.len());
    outln!(
        "Logical size:       {}  (all files of all snapshots)",
        human_bytes(logical)
    );
    outln!(
        "Unique data:        {}  in {} blobs",
        human_bytes(totals.raw_bytes),
        totals.blobs
    );
    outln!(
        "Stored size:        {}  in {} packs",
        human_bytes(stored),
        packs.packs
    );
    outln!(
        "Deduplication:      {:.2}x",
        ratio(logical, totals.raw_bytes)
    );
    outln!(
        "Compression:        {:.2}x",
        ratio(totals.raw_bytes, totals.stored_bytes)
    );
    outln!("Overall:            {:.2}x", ratio(logical, stored));
    Ok(0)
}
