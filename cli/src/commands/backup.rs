//! `cairn backup`: files and directories, standard input, or a command's output.

use anyhow::{bail, Context as _, Result};
use cairn_repo::archiver::{
    backup_command, backup_paths, backup_stream, BackupOptions, BackupResult,
};
use cairn_repo::walk::Excludes;
use serde_json::json;

use crate::args::BackupArgs;
use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::progress_bar::Bar;
use crate::EXIT_INCOMPLETE;

/// `auto` and `fastest` (zstd 1: on 64 KiB chunks of SQL dumps both faster and smaller than
/// level 3, see docs/performance.md), `default` (zstd's own default, 3), `off` (0), `max` (19),
/// or a level 1-22.
pub fn parse_compression(s: &str) -> Result<i32> {
    Ok(match s {
        "auto" | "fastest" => 1,
        "default" => 3,
        "off" | "none" => 0,
        "max" => 19,
        n => match n.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => l,
            _ => crate::bail_usage!("--compression: expected auto, off, fastest, default, max or a zstd level 1-22, got {s:?}"),
        },
    })
}

/// Accepts "YYYY-MM-DD HH:MM:SS" (local time) or an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    let dt: jiff::civil::DateTime = s
        .parse()
        .with_context(|| format!("--time {s:?}: expected \"YYYY-MM-DD HH:MM:SS\" or RFC 3339"))?;
    Ok(dt.to_zoned(jiff::tz::TimeZone::system())?.timestamp())
}

/// The paths a `--files-from` file lists: one per line, skipping empty lines and `#`
/// comments; with `raw`, separated by NUL bytes and taken verbatim.
fn listed_paths(file: &std::path::Path, raw: bool) -> Result<Vec<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let entries: Vec<&[u8]> = if raw {
        bytes.split(|b| *b == 0).filter(|e| !e.is_empty()).collect()
    } else {
        bytes
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.trim_ascii().is_empty() && !l.trim_ascii_start().starts_with(b"#"))
            .collect()
    };
    Ok(entries
        .into_iter()
        .map(|e| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(e)))
        .collect())
}

pub fn run(ctx: &Context, args: BackupArgs) -> Result<i32> {
    let mut patterns = args.exclude.clone();
    for f in &args.exclude_file {
        patterns.extend(Excludes::read_file(f)?);
    }
    let mut excludes =
        Excludes::with_case_insensitive(&patterns, &args.iexclude, &args.exclude_if_present)?;
    excludes.caches = args.exclude_caches;
    excludes.larger_than = match &args.exclude_larger_than {
        None => None,
        Some(s) => match cairn_repo::check::Subset::parse(s) {
            Ok(cairn_repo::check::Subset::Bytes(b)) => Some(b),
            _ => crate::bail_usage!(
                "--exclude-larger-than: expected a size such as 500M or 2G, got {s:?}"
            ),
        },
    };
    let mut paths = args.paths.clone();
    for f in &args.files_from {
        paths.extend(listed_paths(f, false)?);
    }
    for f in &args.files_from_raw {
        paths.extend(listed_paths(f, true)?);
    }
    let mut opts = BackupOptions {
        excludes,
        one_file_system: args.one_file_system,
        tags: args
            .tag
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        host: args.host.clone().unwrap_or_else(cairn_repo::sys::hostname),
        time: match args.time.as_deref().map(parse_time).transpose() {
            Ok(t) => t,
            Err(e) => crate::bail_usage!("{e}"),
        },
        compression: args
            .compression
            .as_deref()
            .map(parse_compression)
            .transpose()?,
        use_files_cache: !args.force,
        parent: None,
        dry_run: args.dry_run,
    };
    let stream_mode = args.stdin || args.stdin_from_command;
    if stream_mode && !paths.is_empty() {
        bail!("paths cannot be combined with --stdin or --stdin-from-command");
    }
    if args.stdin_from_command && args.command.is_empty() {
        bail!("--stdin-from-command needs a command after `--`");
    }
    if !args.stdin_from_command && !args.command.is_empty() {
        bail!("a command after `--` needs --stdin-from-command");
    }
    if !stream_mode && paths.is_empty() {
        bail!("nothing to back up: give paths, --stdin or --stdin-from-command");
    }
    // A dry run never creates the default repository: there would be nothing to compare with.
    let repo = if args.dry_run {
        ctx.open()?
    } else {
        ctx.open_or_create_default()?
    };
    if let Some(spec) = &args.parent {
        let filter = crate::args::SnapshotFilter::default();
        let (id, _, sub) = super::snapshots::resolve(&repo, spec, &filter)?;
        if sub.is_some() {
            crate::bail_usage!("--parent takes a snapshot, not SNAPSHOT:PATH");
        }
        opts.parent = Some(id);
    }
    // The repository and the cache are never backed up (a backup of a home folder holds
    // both by default): every run would store the packs of the runs before it again.
    if let (cairn_repo::Location::Local(path), _) = ctx.location()? {
        opts.excludes.leave_out(&path);
    }
    if let Some(cache) = ctx.open_options().cache_dir {
        opts.excludes.leave_out(&cache);
    }
    let verbose = if ctx.quiet() || ctx.json() {
        0
    } else {
        ctx.global.verbose
    };
    if verbose >= 1 {
        eprintln!("repository {}", repo.description());
    }
    // Status lines on standard output with `--json` (as restic's), never a bar then.
    let bar = Bar::backup(!ctx.quiet(), ctx.json(), stream_mode).with_file_lines(verbose >= 2);
    let name = args
        .stdin_filename
        .clone()
        .unwrap_or_else(|| "stdin".to_string());
    let result = if args.stdin {
        backup_stream(&repo, &mut std::io::stdin(), &name, &opts, &bar)
    } else if args.stdin_from_command {
        backup_command(&repo, &args.command, &name, &opts, &bar)
    } else {
        backup_paths(&repo, &paths, &opts, &bar)
    };
    bar.finish();
    let result = result?;
    if verbose >= 1 {
        let s = &result.snapshot.summary;
        match &result.snapshot.parent {
            Some(p) => eprintln!(
                "parent snapshot {}: {} files unchanged since, reused without reading them",
                p.short(),
                s.files_unmodified
            ),
            None => eprintln!("no parent snapshot for these paths on this host: every file read"),
        }
    }
    report(ctx, &result, args.dry_run)?;
    Ok(if result.snapshot.incomplete {
        EXIT_INCOMPLETE
    } else {
        0
    })
}

fn report(ctx: &Context, r: &BackupResult, dry_run: bool) -> Result<()> {
    let s = &r.snapshot.summary;
    // A dry run saved no snapshot: it has no id.
    let id = (!dry_run).then_some(r.id);
    if ctx.json() {
        // `message_type` and `snapshot_id` as restic's summary has them, so that scripts
        // written for `restic backup --json` find the new snapshot's id.
        return print_json(&json!({
            "message_type": "summary",
            "dry_run": dry_run,
            "snapshot_id": id,
            "snapshot": id,
            "parent": r.snapshot.parent,
            "time": r.snapshot.time,
            "incomplete": r.snapshot.incomplete,
            "summary": s,
            "warnings": r.warnings,
        }));
    }
    if ctx.quiet() {
        return Ok(());
    }
    outln!(
        "Files:       {} new, {} changed, {} unmodified",
        s.files_new,
        s.files_changed,
        s.files_unmodified
    );
    outln!("Dirs:        {}", s.dirs);
    outln!(
        "Processed:   {} in {:.2}s ({} read)",
        human_bytes(s.total_bytes),
        s.duration_secs,
        human_bytes(s.bytes_read)
    );
    outln!(
        "Added:       {} ({} stored, {} blobs)",
        human_bytes(s.bytes_added),
        human_bytes(s.bytes_stored),
        s.blobs_added
    );
    if dry_run {
        outln!(
            "dry run: nothing was stored; a backup would add {} ({} stored){}",
            human_bytes(s.bytes_added),
            human_bytes(s.bytes_stored),
            if r.snapshot.incomplete {
                format!(", and {} entries could not be read", s.errors)
            } else {
                String::new()
            }
        );
    } else if r.snapshot.incomplete {
        outln!(
            "snapshot {} saved, but INCOMPLETE: {} entries could not be read",
            r.id.short(),
            s.errors
        );
    } else {
        outln!("snapshot {} saved", r.id.short());
    }
    Ok(())
}
