//! One file per command. Each `run` returns the process exit code.

mod backup;
mod cat;
mod check;
mod diff;
mod dump;
mod find;
mod forget;
mod init;
mod key;
mod leases;
mod ls;
mod pg;
mod pg_drill;
mod pg_restore;
mod pg_status;
mod prune;
mod repair;
mod restore;
mod snapshots;
mod stats;
mod tag;
mod tenant;
pub mod wal;

use anyhow::Result;

use crate::args::Command;
use crate::context::Context;

pub fn run(ctx: &Context, cmd: Command) -> Result<i32> {
    match cmd {
        Command::Init(a) => init::run(ctx, a),
        Command::Tenant(a) => tenant::run(ctx, a),
        Command::Key(a) => key::run(ctx, a),
        Command::Backup(a) => backup::run(ctx, a),
        Command::Snapshots(a) => snapshots::run(ctx, a),
        Command::Ls(a) => ls::run(ctx, a),
        Command::Find(a) => find::run(ctx, a),
        Command::Diff(a) => diff::run(ctx, a),
        Command::Dump(a) => dump::run(ctx, a),
        Command::Restore(a) => restore::run(ctx, a),
        Command::Stats(a) => stats::run(ctx, a),
        Command::Cat(a) => cat::run(ctx, a),
        Command::Forget(a) => forget::run(ctx, a),
        Command::Prune(a) => prune::run(ctx, a),
        Command::Check(a) => check::run(ctx, a),
        Command::Repair(a) => repair::run(ctx, a),
        Command::Leases(a) => leases::run(ctx, a),
        Command::Tag(a) => tag::run(ctx, a),
        Command::Protect(a) => tag::protect(ctx, a, true),
        Command::Unprotect(a) => tag::protect(ctx, a, false),
        Command::Wal(a) => wal::run(ctx, a),
        Command::Pg(a) => pg::run(ctx, a),
        Command::Version => version(ctx),
    }
}

/// `cairn version`.
fn version(ctx: &Context) -> anyhow::Result<i32> {
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    if ctx.json() {
        crate::output::print_json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "format_version": cairn_repo::format::config::FORMAT_VERSION,
            "target": target,
        }))?;
    } else {
        println!(
            "cairn {} (repository format {}, {target})",
            env!("CARGO_PKG_VERSION"),
            cairn_repo::format::config::FORMAT_VERSION
        );
    }
    Ok(0)
}
