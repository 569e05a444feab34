//! `cairn prune`: free the space of data no snapshot uses.

use anyhow::Result;
use cairn_repo::check::Subset;
use cairn_repo::prune::{prune, PruneOptions, PruneReport};

use crate::args::{PruneArgs, PruneOpts};
use crate::context::Context;
use crate::output::human_time;
use crate::output::{human_bytes, outln, print_json};
use crate::progress_bar::Bar;

pub fn options(o: &PruneOpts, dry_run: bool) -> Result<PruneOptions> {
    let max_unused = match o.max_unused.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => o.max_unused.trim().parse::<f64>(),
    };
    let max_unused = match max_unused {
        Ok(v) if v >= 0.0 => v,
        _ => crate::bail_usage!(
            "--max-unused: expected a percentage (5%) or a fraction (0.05), got {:?}",
            o.max_unused
        ),
    };
    let max_repack_bytes = match &o.max_repack_size {
        None => None,
        Some(s) => match Subset::parse(s) {
            Ok(Subset::Bytes(b)) => Some(b),
            _ => crate::bail_usage!("--max-repack-size: expected a size such as 10G, got {s:?}"),
        },
    };
    Ok(PruneOptions {
        max_unused,
        max_repack_bytes,
        dry_run,
        drop_unreadable: o.drop_unreadable,
    })
}

pub fn report(ctx: &Context, r: &PruneReport) -> Result<()> {
    if ctx.json() {
        return print_json(r);
    }
    if ctx.quiet() {
        return Ok(());
    }
    let p = &r.plan;
    outln!(
        "{} snapshots use {} blobs in {} packs ({})",
        p.snapshots,
        p.used_blobs,
        p.packs,
        human_bytes(p.pack_bytes)
    );
    if r.dry_run {
        outln!(
            "would delete {} unused packs ({})",
            p.delete_packs.len(),
            human_bytes(p.delete_bytes)
        );
        outln!(
            "would delete {} packs in no index ({})",
            p.unindexed_packs.len(),
            human_bytes(p.unindexed_bytes)
        );
        outln!(
            "would repack {} packs ({}, freeing {})",
            p.repack_packs.len(),
            human_bytes(p.repack_bytes),
            human_bytes(p.repack_unused_bytes)
        );
        outln!(
            "would free about {}; {} unused would stay in kept packs",
            human_bytes(p.bytes_to_free()),
            human_bytes(p.unused_bytes_kept)
        );
        return Ok(());
    }
    outln!(
        "condemned {} unused packs ({}) and {} packs in no index ({}); repacked {} packs ({}) into {} new ({})",
        p.delete_packs.len(),
        human_bytes(p.delete_bytes),
        p.unindexed_packs.len(),
        human_bytes(p.unindexed_bytes),
        p.repack_packs.len(),
        human_bytes(p.repack_bytes),
        r.repacked_into_packs,
        human_bytes(r.repacked_into_bytes)
    );
    let s = &r.swept;
    if s.records > 0 {
        outln!(
            "swept: {} packs deleted ({}), {} rescued, {} index files removed",
            s.packs_deleted,
            human_bytes(s.bytes_freed),
            s.packs_rescued,
            s.index_files_deleted
        );
    }
    if let (Some(before), Some(after)) = (r.pack_bytes_before, r.pack_bytes_after) {
        // The repository's own figure, in the units of the plan: net of what repacking wrote.
        if after <= before {
            outln!(
                "freed {}: the packs take {} (were {}); {} unused stays in kept packs",
                human_bytes(before - after),
                human_bytes(after),
                human_bytes(before),
                human_bytes(p.unused_bytes_kept)
            );
        } else {
            outln!(
                "the packs take {} (were {}: writers running beside this prune added more than it freed)",
                human_bytes(after),
                human_bytes(before)
            );
        }
    }
    if let Some(rec) = &r.pending_record {
        outln!(
            "the sweep of record {} waits for {} running writers:",
            rec.short(),
            r.waiting_for.len()
        );
        for l in &r.waiting_for {
            outln!(
                "  {} on {} (pid {}), since {}",
                l.kind,
                l.host,
                l.pid,
                human_time(&l.started)
            );
        }
        outln!(
            "run prune again after they finish to free about {}",
            human_bytes(p.bytes_to_free())
        );
    }
    Ok(())
}

pub fn run(ctx: &Context, args: PruneArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let opts = options(&args.opts, args.dry_run)?;
    // Its phases: marking, repacking N of M, deleting N of M (a dry run only marks).
    let bar = Bar::phases(!ctx.quiet());
    let r = prune(&repo, &opts, &bar);
    bar.finish();
    let r = r?;
    report(ctx, &r)?;
    Ok(0)
}
