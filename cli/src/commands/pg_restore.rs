//! `cairn pg restore`: a base backup into an empty data directory, with the recovery
//! settings that replay archived WAL to the target (docs/postgresql.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use cairn_repo::pg::archive_check::describe;
use cairn_repo::pg::names::Lsn;
use cairn_repo::pg::restore::{self as pgrestore, PgRestoreOptions};
use cairn_repo::pg::target::{parse_time, Action, Target};

use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::pg_args::{RestoreArgs, TargetAction, TargetArgs};
use crate::progress_bar::Bar;

pub fn run(ctx: &Context, args: RestoreArgs) -> Result<i32> {
    let target = target(&args.target)?;
    let timeline = args.target_timeline.trim().to_string();
    cairn_repo::pg::archive_check::target_timeline(&timeline)?;
    let repo = ctx.open()?;
    let snapshot = match &args.snapshot {
        Some(s) => Some(repo.find_snapshot(s)?.0),
        None => None,
    };
    let opts = PgRestoreOptions {
        target,
        snapshot,
        action: match args.target_action {
            TargetAction::Promote => Action::Promote,
            TargetAction::Pause => Action::Pause,
            TargetAction::Shutdown => Action::Shutdown,
        },
        timeline,
        exclusive: args.target_exclusive,
        command: fetch_command(ctx, repo.tenant())?,
    };
    let bar = Bar::new(!ctx.quiet(), None);
    let done = pgrestore::restore(&repo, &args.pgdata, &opts, &bar);
    bar.finish();
    let done = done?;
    if ctx.json() {
        print_json(&json!({
            "snapshot": done.snapshot,
            "pgdata": args.pgdata,
            "base": done.base,
            "target": describe(&opts.target),
            "wal_first": done.wal.first,
            "wal_last": done.wal.last,
            "wal_segments": done.wal.segments,
            "files": done.files,
            "bytes": done.bytes,
            "duration_secs": done.duration_secs,
        }))?;
    } else if !ctx.quiet() {
        outln!(
            "restored base backup {} ({} files, {}) into {} in {:.1}s",
            done.snapshot.short(),
            done.files,
            human_bytes(done.bytes),
            args.pgdata.display(),
            done.duration_secs
        );
        outln!(
            "the archive holds WAL {} .. {} ({} segments) for recovery to {}",
            done.wal.first,
            done.wal.last,
            done.wal.segments,
            describe(&opts.target)
        );
        match (remote_credentials(&ctx.location()?.0), &ctx.global.profile) {
            (Some(vars), None) => outln!(
                "restore_command reads {vars} from PostgreSQL's environment, as archive_command does: \
                 the server must be started with them"
            ),
            (Some(vars), Some(profile)) => outln!(
                "restore_command reads {vars} from profile {profile} of the configuration file or \
                 from PostgreSQL's environment: the PostgreSQL user must be able to read the file"
            ),
            (None, _) => {}
        }
        outln!(
            "start it with: pg_ctl -D {} start   (it replays the WAL, then {})",
            args.pgdata.display(),
            match opts.action {
                Action::Promote => "opens for writes",
                Action::Pause => "pauses: check, then SELECT pg_wal_replay_resume()",
                Action::Shutdown => "shuts down",
            }
        );
    }
    Ok(0)
}

/// The environment variables this process took credentials for a remote repository from,
/// which restore_command (run by PostgreSQL, with the server's environment) needs as well.
/// They are not written into the data directory: a base backup of the restored cluster would
/// carry them.
fn remote_credentials(location: &cairn_repo::location::Location) -> Option<&'static str> {
    use cairn_repo::location::Location;
    let set = |v: &str| std::env::var_os(v).is_some();
    match location {
        Location::S3(_) if set("AWS_ACCESS_KEY_ID") => {
            Some("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        }
        Location::Rest(_) if set("CAIRN_REST_USERNAME") || set("CAIRN_REST_PASSWORD") => {
            Some("CAIRN_REST_USERNAME and CAIRN_REST_PASSWORD")
        }
        _ => None,
    }
}

/// The target the options name; `--latest` when none.
pub fn target(t: &TargetArgs) -> Result<Target> {
    Ok(if let Some(s) = &t.target_time {
        Target::Time(parse_time(s)?)
    } else if let Some(s) = &t.target_lsn {
        Target::Lsn(Lsn::parse(s)?)
    } else if let Some(s) = &t.target_xid {
        Target::Xid(
            s.trim()
                .parse()
                .with_context(|| format!("--target-xid {s:?} is not a transaction id"))?,
        )
    } else if let Some(s) = &t.target_name {
        if s.is_empty() {
            bail!("--target-name needs a restore point's name");
        }
        Target::Name(s.clone())
    } else if t.immediate {
        Target::Immediate
    } else {
        Target::Latest
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// This program and the global options that let restore_command reach the same repository
/// and tenant without asking for anything: PostgreSQL runs it with no terminal.
pub fn fetch_command(ctx: &Context, tenant: &str) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let mut cmd = vec![exe.display().to_string()];
    // The profile too: credentials it holds (a server's password) reach restore_command
    // only through it.
    if let Some(config) = &ctx.global.config {
        cmd.extend([
            "--config".to_string(),
            absolute(config)?.display().to_string(),
        ]);
    }
    if let Some(profile) = &ctx.global.profile {
        cmd.extend(["--profile".to_string(), profile.clone()]);
    }
    let (location, default) = ctx.location()?;
    match (&ctx.global.repo, &ctx.global.repository_file, &default) {
        (_, _, Some(d)) => cmd.extend(["-r".to_string(), absolute(&d.repo)?.display().to_string()]),
        (None, Some(f), None) => cmd.extend([
            "--repository-file".to_string(),
            absolute(f)?.display().to_string(),
        ]),
        (Some(r), _, None) => {
            let repo = match location {
                cairn_repo::location::Location::Local(p) => absolute(&p)?.display().to_string(),
                _ => r.clone(),
            };
            cmd.extend(["-r".to_string(), repo]);
        }
        (None, None, None) => bail!("no repository"),
    }
    cmd.extend(["--tenant".to_string(), tenant.to_string()]);
    if let Some(ca) = &ctx.global.tls_ca {
        cmd.extend(["--tls-ca".to_string(), absolute(ca)?.display().to_string()]);
    }
    let key_file = ctx.global.key_file.clone().or_else(|| {
        default
            .as_ref()
            .map(|d| d.key_file.clone())
            .filter(|p| p.exists())
    });
    if let Some(k) = key_file {
        cmd.extend([
            "--key-file".to_string(),
            absolute(&k)?.display().to_string(),
        ]);
    } else if let Some(f) = &ctx.global.password_file {
        cmd.extend([
            "--password-file".to_string(),
            absolute(f)?.display().to_string(),
        ]);
    } else if let Some(c) = &ctx.global.password_command {
        cmd.extend(["--password-command".to_string(), c.clone()]);
    } else {
        bail!("PostgreSQL's restore_command cannot ask for a password: give --key-file (see `cairn key`), --password-file or --password-command");
    }
    Ok(cmd)
}
