//! `cairn wal push` and `cairn wal fetch`: PostgreSQL's archive_command and restore_command.
//!
//! Exit codes follow what PostgreSQL does with them (docs/postgresql.md):
//! - push: 0 only when the file is durable in the repository; every failure is 1, never a
//!   code above 125 and never a signal, which would restart PostgreSQL's archiver and hide
//!   the failure;
//! - fetch: 0 when the whole file was written; 1 when the repository answered and holds no
//!   such file (PostgreSQL probes for files that do not exist, and 1 ends a recovery at the
//!   end of the archive); when it cannot tell (storage, keys, damage), 128, which stops a
//!   targeted recovery with an error instead of ending it early and silently losing every
//!   later commit. In standby mode (`standby.signal` in the data directory, the working
//!   directory of restore_command) it is 1, since a standby asks again.

use anyhow::Result;

use cairn_repo::pg::wal::{self, Fetched, Pushed};

use crate::args::WalCommand;
use crate::context::Context;

/// restore_command could not tell whether the file exists.
pub const EXIT_FETCH_UNKNOWN: i32 = 128;

pub fn run(ctx: &Context, cmd: WalCommand) -> Result<i32> {
    match cmd {
        WalCommand::Push { path } => Ok(push(ctx, &path)),
        WalCommand::Fetch { name, dest } => Ok(fetch(ctx, &name, &dest)),
        WalCommand::List { timeline } => super::pg_status::list(ctx, timeline),
        WalCommand::Verify => super::pg_status::status(ctx),
    }
}

fn push(ctx: &Context, path: &std::path::Path) -> i32 {
    let result = ctx
        .open()
        .and_then(|repo| wal::push(&repo, path).map_err(anyhow::Error::from));
    match result {
        Ok(Pushed::Stored { snapshot, bytes }) => {
            tracing::info!(
                "archived {} ({bytes} bytes) in snapshot {}",
                path.display(),
                snapshot.short()
            );
            0
        }
        Ok(Pushed::AlreadyArchived { snapshot }) => {
            tracing::info!(
                "{} was archived before with the same content (snapshot {})",
                path.display(),
                snapshot.short()
            );
            0
        }
        Err(e) => {
            eprintln!(
                "error: cairn wal push {}: {}",
                path.display(),
                crate::error_text(&e)
            );
            1
        }
    }
}

fn fetch(ctx: &Context, name: &str, dest: &std::path::Path) -> i32 {
    let result = ctx
        .open()
        .and_then(|repo| wal::fetch(&repo, name, dest).map_err(anyhow::Error::from));
    match result {
        Ok(Fetched::Written { bytes }) => {
            tracing::info!("restored {name} ({bytes} bytes)");
            0
        }
        Ok(Fetched::Absent) => {
            tracing::info!("{name} is not in the archive");
            1
        }
        Err(e) => {
            let standby = std::path::Path::new("standby.signal").exists();
            eprintln!(
                "error: cairn wal fetch {name}: {} ({})",
                crate::error_text(&e),
                if standby {
                    "standby mode: PostgreSQL asks again"
                } else {
                    "recovery stops here rather than end before the archive does"
                }
            );
            if standby {
                1
            } else {
                EXIT_FETCH_UNKNOWN
            }
        }
    }
}
