//! `cairn pg drill`: a restore test (docs/postgresql.md). The library does the work; this
//! file turns arguments into options and prints the report. Exit 0 when everything passed,
//! 1 when anything failed (the report says what).

use std::time::Duration;

use anyhow::{bail, Result};

use cairn_repo::pg::drill::{self, DrillOptions, DrillReport};

use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::pg_args::DrillArgs;
use crate::progress_bar::Bar;
use crate::EXIT_FAILURE;

pub fn run(ctx: &Context, args: DrillArgs) -> Result<i32> {
    // First, before any other thread exists: Ctrl-C and SIGTERM must reach the drill's
    // cleanup, not end the process with a server running.
    let stop = drill::stop_on_signals()?;
    let target = super::pg_restore::target(&args.target)?;
    let timeline = args.target_timeline.trim().to_string();
    cairn_repo::pg::archive_check::target_timeline(&timeline)?;
    let mut settings = Vec::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s:?}: give NAME=VALUE");
        };
        settings.push((k.trim().to_string(), v.to_string()));
    }
    if args.check_sql.iter().any(|s| s.trim().is_empty()) {
        bail!("--check-sql needs SQL");
    }
    let repo = ctx.open()?;
    let snapshot = match &args.snapshot {
        Some(s) => Some(repo.find_snapshot(s)?.0),
        None => None,
    };
    let opts = DrillOptions {
        target,
        snapshot,
        timeline,
        command: super::pg_restore::fetch_command(ctx, repo.tenant())?,
        scratch: args.scratch,
        keep: args.keep,
        port: args.port,
        pg_bin: args.pg_bin,
        timeout: Duration::from_secs(args.timeout),
        checks: args.check_sql,
        databases: args.database,
        user: args.pguser,
        settings,
    };
    let bar = Bar::new(!ctx.quiet(), None);
    let report = drill::drill(&repo, &opts, &bar, &stop);
    bar.finish();
    let report = report?;
    if ctx.json() {
        print_json(&report)?;
    } else if !ctx.quiet() {
        print_text(&report)?;
    }
    if let Some(e) = &report.error {
        eprintln!("error: drill failed: {e}");
        if let (Some(tail), false) = (&report.log_tail, ctx.json()) {
            eprintln!("the server's log ended with:\n{tail}");
        }
    } else if !report.passed {
        let failed = report.checks.iter().filter(|c| !c.passed).count();
        eprintln!(
            "error: drill failed: {failed} of {} checks failed",
            report.checks.len()
        );
    }
    Ok(if report.passed { 0 } else { EXIT_FAILURE })
}

fn print_text(r: &DrillReport) -> Result<()> {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    match (&r.snapshot, &r.base) {
        (Some(id), Some(base)) => outln!(
            "drill of base backup {} (stopped at {}, {}) to {}: {verdict}",
            id.short(),
            base.stop_lsn.as_deref().unwrap_or("?"),
            base.stop_time.as_deref().unwrap_or("?"),
            r.target
        ),
        _ => outln!("drill to {}: {verdict}", r.target),
    }
    let t = &r.timings;
    if let Some(x) = &r.restored {
        outln!(
            "restore   {:>9.1} s  {} in {} files; the archive holds WAL {} .. {} ({} segments)",
            t.restore_secs,
            human_bytes(x.bytes),
            x.files,
            x.wal_first,
            x.wal_last,
            x.wal_segments
        );
    }
    if r.restored.is_some() {
        let wal = r
            .recovered
            .as_ref()
            .map(|v| format!("  {} WAL files restored", v.wal_files_restored))
            .unwrap_or_default();
        outln!("recovery  {:>9.1} s{wal}", t.recovery_secs);
    }
    if !r.checks.is_empty() {
        let ok = r.checks.iter().filter(|c| c.passed).count();
        outln!(
            "checks    {:>9.1} s  {ok} of {} passed",
            t.checks_secs,
            r.checks.len()
        );
    }
    outln!(
        "total     {:>9.1} s{}",
        t.total_secs,
        if r.passed {
            "  (recovery time objective)"
        } else {
            ""
        }
    );
    if let Some(v) = &r.recovered {
        outln!(
            "recovered to LSN {}, last transaction at {}, now on timeline {}",
            v.replay_lsn.as_deref().unwrap_or("?"),
            v.last_transaction_time
                .as_deref()
                .unwrap_or("(none replayed)"),
            v.timeline.map_or("?".to_string(), |t| t.to_string())
        );
    }
    for c in &r.checks {
        match &c.error {
            None => outln!("  ok      {}: {}  -> {}", c.database, c.sql, c.output),
            Some(e) => outln!("  FAILED  {}: {}  -> {e}", c.database, c.sql),
        }
    }
    if r.kept {
        outln!(
            "kept {} (data directory {}/data, log {}/postgres.log; the server is stopped)",
            r.scratch.display(),
            r.scratch.display(),
            r.scratch.display()
        );
    }
    Ok(())
}
