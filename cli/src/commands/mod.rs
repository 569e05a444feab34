//! One file per command. Each `run` returns the process exit code.

mod backup;
mod cat;
mod diff;
mod dump;
mod find;
mod init;
mod key;
mod ls;
mod restore;
mod snapshots;
mod stats;
mod tenant;

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
    }
}
