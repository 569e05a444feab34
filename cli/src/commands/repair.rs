//! `cairn repair index|snapshots`.

use anyhow::Result;
use cairn_repo::repair::{repair_index, repair_snapshots};

use crate::args::RepairCommand;
use crate::context::Context;
use crate::output::{outln, print_json};

pub fn run(ctx: &Context, cmd: RepairCommand) -> Result<i32> {
    let repo = ctx.open()?;
    match cmd {
        RepairCommand::Index => {
            let r = repair_index(&repo)?;
            if ctx.json() {
                print_json(&r)?;
            } else {
                for (pack, why) in &r.damaged_packs {
                    eprintln!("warning: pack {pack} left out: {why}");
                }
                if !ctx.quiet() {
                    outln!(
                        "indexed {} blobs in {} packs: {} index files written, {} removed",
                        r.blobs,
                        r.packs_indexed,
                        r.index_files_written,
                        r.index_files_removed
                    );
                }
            }
        }
        RepairCommand::Snapshots { forget, dry_run } => {
            let r = repair_snapshots(&repo, forget, dry_run)?;
            if ctx.json() {
                print_json(&r)?;
            } else if !ctx.quiet() {
                for s in &r {
                    if s.unreadable {
                        let verb = if forget && !dry_run {
                            "was removed"
                        } else {
                            "can only be removed (`cairn repair snapshots --forget`)"
                        };
                        outln!("snapshot {} cannot be read and {verb}:", s.original.short());
                        for p in &s.lost {
                            outln!("  {p}");
                        }
                        continue;
                    }
                    match &s.repaired {
                        Some(new) => outln!(
                            "snapshot {} repaired as {}; lost:",
                            s.original.short(),
                            new.short()
                        ),
                        None => outln!(
                            "snapshot {} would be repaired; it would lose:",
                            s.original.short()
                        ),
                    }
                    for p in &s.lost {
                        outln!("  {p}");
                    }
                }
                outln!(
                    "{} snapshots {}",
                    r.len(),
                    if dry_run { "need repair" } else { "repaired" }
                );
            }
        }
    }
    Ok(0)
}
