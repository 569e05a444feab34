//! `cairn restore SNAPSHOT --target DIR`.

use anyhow::Result;
use cairn_repo::restorer::{restore, Overwrite, RestoreOptions};
use cairn_repo::walk::Excludes;
use serde_json::json;

use crate::args::{OverwriteArg, RestoreArgs};
use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::progress_bar::Bar;

pub fn run(ctx: &Context, args: RestoreArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (id, snap, sub) = super::snapshots::resolve(&repo, &args.snapshot, &args.filter)?;
    if sub.is_some() {
        anyhow::bail!(
            "restore takes no SNAPSHOT:PATH; use --include PATH to restore part of a snapshot"
        );
    }
    let opts = RestoreOptions {
        include: if args.include.is_empty() {
            None
        } else {
            Some(Excludes::new(&args.include, &[])?)
        },
        exclude: Excludes::new(&args.exclude, &[])?,
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::Always => Overwrite::Always,
        },
        delete: args.delete,
        verify: args.verify,
        keep_marker: false,
    };
    let total = if opts.include.is_none() {
        Some(snap.summary.total_bytes)
    } else {
        None
    };
    let bar = Bar::new(!ctx.quiet(), total);
    let result = restore(&repo, &id, &args.target, &opts, &bar);
    bar.finish();
    let s = result?;
    if ctx.json() {
        print_json(&json!({
            "snapshot": id,
            "target": args.target,
            "files": s.files,
            "dirs": s.dirs,
            "others": s.others,
            "hardlinks": s.hardlinks,
            "files_unchanged": s.files_unchanged,
            "bytes_written": s.bytes_written,
            "deleted": s.deleted,
            "verified": s.verified,
            "resumed": s.resumed,
        }))?;
    } else if !ctx.quiet() {
        outln!(
            "{} snapshot {} to {}: {} files ({}), {} dirs, {} other, {} hard links, {} unchanged{}{}",
            if s.resumed { "finished the interrupted restore of" } else { "restored" },
            id.short(),
            args.target.display(),
            s.files,
            human_bytes(s.bytes_written),
            s.dirs,
            s.others,
            s.hardlinks,
            s.files_unchanged,
            if args.delete { format!(", {} deleted", s.deleted) } else { String::new() },
            if args.verify { format!(", {} verified", s.verified) } else { String::new() },
        );
    }
    Ok(0)
}
