//! `cairn pg basebackup` and `cairn pg restore` (docs/postgresql.md).

use anyhow::Result;
use serde_json::json;

use cairn_repo::archiver::BackupOptions;
use cairn_repo::pg::basebackup::{self, BasebackupOptions};

use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::pg_args::{BasebackupArgs, Checkpoint, PgCommand};
use crate::progress_bar::Bar;
use crate::EXIT_INCOMPLETE;

pub fn run(ctx: &Context, cmd: PgCommand) -> Result<i32> {
    match cmd {
        PgCommand::Basebackup(a) => base(ctx, a),
        PgCommand::Restore(a) => super::pg_restore::run(ctx, a),
        PgCommand::Status => super::pg_status::status(ctx),
        PgCommand::Drill(a) => super::pg_drill::run(ctx, a),
    }
}

fn base(ctx: &Context, args: BasebackupArgs) -> Result<i32> {
    let mut connection = Vec::new();
    if let Some(h) = &args.pghost {
        connection.extend(["-h".to_string(), h.clone()]);
    }
    if let Some(p) = args.pgport {
        connection.extend(["-p".to_string(), p.to_string()]);
    }
    if let Some(u) = &args.pguser {
        connection.extend(["-U".to_string(), u.clone()]);
    }
    if let Some(d) = &args.dbname {
        connection.extend(["-d".to_string(), d.clone()]);
    }
    let opts = BasebackupOptions {
        program: args.pg_bin.as_ref().map(|d| d.join("pg_basebackup")),
        connection,
        fast_checkpoint: args.checkpoint == Checkpoint::Fast,
        stall_timeout: (args.stall_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.stall_timeout)),
    };
    let backup = BackupOptions {
        tags: args
            .tag
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        use_files_cache: false,
        ..BackupOptions::default()
    };
    let repo = ctx.open()?;
    let bar = Bar::new(!ctx.quiet(), None);
    let done = basebackup::basebackup(&repo, &opts, &backup, &bar);
    bar.finish();
    let done = done?;
    let r = &done.result;
    let s = &r.snapshot.summary;
    let pg = r.snapshot.pg.clone().unwrap_or_default();
    if ctx.json() {
        print_json(&json!({
            "snapshot": r.id,
            "time": r.snapshot.time,
            "incomplete": r.snapshot.incomplete,
            "missing_wal": done.missing_wal,
            "pg": pg,
            "summary": s,
        }))?;
    } else if !ctx.quiet() {
        outln!(
            "Cluster:     {} timeline {}, WAL {} .. {}",
            pg.system_identifier,
            pg.timeline,
            pg.start_lsn.as_deref().unwrap_or("?"),
            pg.stop_lsn.as_deref().unwrap_or("?")
        );
        outln!(
            "Processed:   {} in {} files, {:.2}s",
            human_bytes(s.total_bytes),
            s.files,
            s.duration_secs
        );
        outln!(
            "Added:       {} ({} stored)",
            human_bytes(s.bytes_added),
            human_bytes(s.bytes_stored)
        );
        if r.snapshot.incomplete {
            outln!(
                "base backup {} saved INCOMPLETE: the archive lacks WAL it needs ({}); it will never be restored. Is archive_command `cairn wal push %p` to this repository and tenant?",
                r.id.short(),
                done.missing_wal.join(", ")
            );
        } else {
            outln!("base backup {} saved", r.id.short());
        }
    }
    Ok(if r.snapshot.incomplete {
        EXIT_INCOMPLETE
    } else {
        0
    })
}
