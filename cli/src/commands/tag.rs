//! `cairn tag`, `cairn protect`, `cairn unprotect`: edit snapshot tags (by writing new
//! snapshots that replace the old ones).

use anyhow::Result;
use cairn_repo::retention::HOLD_TAG;
use cairn_repo::snapshot_edit::{retag, TagEdit};
use serde_json::json;

use crate::args::{SnapshotIds, TagArgs};
use crate::context::Context;
use crate::output::{outln, print_json};

fn edit(ctx: &Context, specs: &[String], e: &TagEdit) -> Result<i32> {
    let repo = ctx.open()?;
    let ids = specs
        .iter()
        .map(|s| repo.find_snapshot(s).map(|(id, _)| id))
        .collect::<cairn_repo::Result<Vec<_>>>()?;
    let changed = retag(&repo, &ids, e)?;
    if ctx.json() {
        print_json(
            &changed
                .iter()
                .map(|(old, new)| json!({"old": old, "new": new}))
                .collect::<Vec<_>>(),
        )?;
    } else if !ctx.quiet() {
        for (old, new) in &changed {
            outln!("snapshot {} is now {}", old.short(), new.short());
        }
        outln!("{} snapshots changed", changed.len());
    }
    Ok(0)
}

pub fn run(ctx: &Context, a: TagArgs) -> Result<i32> {
    let set = if a.set.is_empty() {
        None
    } else {
        Some(a.set.iter().filter(|t| !t.is_empty()).cloned().collect())
    };
    edit(
        ctx,
        &a.snapshots,
        &TagEdit {
            add: a.add,
            remove: a.remove,
            set,
        },
    )
}

pub fn protect(ctx: &Context, a: SnapshotIds, on: bool) -> Result<i32> {
    let e = if on {
        TagEdit {
            add: vec![HOLD_TAG.into()],
            ..Default::default()
        }
    } else {
        TagEdit {
            remove: vec![HOLD_TAG.into()],
            ..Default::default()
        }
    };
    edit(ctx, &a.snapshots, &e)
}
