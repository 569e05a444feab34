//! `cairn find PATTERN`: where a file is, in which snapshots.

use std::io::Write;

use anyhow::Result;
use cairn_repo::content::{walk, EntryBudget};
use cairn_repo::walk::Excludes;
use serde_json::json;

use crate::args::FindArgs;
use crate::commands::snapshots::matches;
use crate::context::Context;
use crate::output::human_node_time;
use crate::output::node_json;

pub fn run(ctx: &Context, args: FindArgs) -> Result<i32> {
    let repo = ctx.open()?;
    // The same matcher as exclusion: names at any depth, or whole paths when it has a '/'.
    let matcher = Excludes::new(std::slice::from_ref(&args.pattern), &[])?;
    let snaps = if args.snapshots.is_empty() {
        repo.snapshots()?
            .into_iter()
            .filter(|(_, s)| matches(&args.filter, s))
            .collect()
    } else {
        args.snapshots
            .iter()
            .map(|s| repo.find_snapshot(s))
            .collect::<cairn_repo::Result<Vec<_>>>()?
    };
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut found = 0u64;
    let mut with_matches = 0usize;
    for (id, snap) in snaps.iter().rev() {
        let mut lines = Vec::new();
        let mut budget = EntryBudget::for_snapshot(snap);
        walk(&repo, &snap.tree, b"", &mut budget, &mut |path, node| {
            if matcher.excluded(std::path::Path::new(std::ffi::OsStr::new(
                &*String::from_utf8_lossy(path),
            ))) {
                lines.push(if ctx.json() {
                    let mut v = node_json(Some(path), node);
                    v["snapshot"] = json!(id);
                    serde_json::to_string(&v).unwrap_or_default()
                } else {
                    format!(
                        "{}  {}  {:>12}  {}",
                        id.short(),
                        human_node_time(node.mtime),
                        node.size,
                        String::from_utf8_lossy(path)
                    )
                });
            }
            Ok(true)
        })?;
        found += lines.len() as u64;
        with_matches += usize::from(!lines.is_empty());
        for l in lines {
            writeln!(out, "{l}")?;
        }
    }
    // The count belongs to the results (restic prints its headers there too); scripts that
    // want only the matches use --json, which has no such line.
    if !ctx.quiet() && !ctx.json() {
        writeln!(
            out,
            "{found} {} in {with_matches} of {} {} searched",
            if found == 1 { "match" } else { "matches" },
            snaps.len(),
            if snaps.len() == 1 {
                "snapshot"
            } else {
                "snapshots"
            }
        )?;
    }
    out.flush()?;
    Ok(0)
}
