//! Arguments of `cairn pg ...`: base backups, point-in-time restores and drills.

use std::path::PathBuf;

use clap::{ArgAction, Args, Subcommand, ValueEnum};

#[derive(Subcommand, Debug)]
pub enum PgCommand {
    /// Take a base backup with pg_basebackup and store it as a `pg-basebackup` snapshot.
    /// Connects with libpq's settings (PGHOST, PGPORT, PGUSER, ...) or -h/-p/-U/-d. WAL
    /// comes from the archive: set archive_command to `cairn wal push %p` first. Exits 0
    /// when the backup is complete, 3 when it was saved incomplete (WAL missing from the
    /// archive), 1 on failure
    #[command(after_help = crate::examples::PG_BASEBACKUP)]
    Basebackup(BasebackupArgs),
    /// Restore a base backup into an empty data directory, set up to replay archived WAL to
    /// a target: a plain `pg_ctl start` then recovers and (by default) promotes
    #[command(after_help = crate::examples::PG_RESTORE)]
    Restore(RestoreArgs),
    /// The archive's state: base backups, timelines, gaps and the windows of time a restore
    /// can reach. Exits 1 when a complete base backup cannot be made consistent or the
    /// newest WAL of a timeline is cut off by a gap
    Status,
    /// Test a restore: restore a base backup into a scratch folder, let a private
    /// PostgreSQL replay the archived WAL and promote, run checks in its databases, report
    /// the timings (the total is the recovery time objective), then stop the server and
    /// remove the folder. Never writes to the repository. Exits 0 when everything passed,
    /// 1 when anything failed
    #[command(after_help = crate::examples::PG_DRILL)]
    Drill(DrillArgs),
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct BasebackupArgs {
    /// The database server's host or socket folder (as pg_basebackup -h)
    #[arg(short = 'h', long = "pghost")]
    pub pghost: Option<String>,
    /// The database server's port (as pg_basebackup -p)
    #[arg(short = 'p', long = "pgport")]
    pub pgport: Option<u16>,
    /// The user to connect as; it needs the REPLICATION attribute (as pg_basebackup -U)
    #[arg(short = 'U', long = "pguser")]
    pub pguser: Option<String>,
    /// A connection string (as pg_basebackup -d)
    #[arg(short = 'd', long = "dbname")]
    pub dbname: Option<String>,
    /// The checkpoint that starts the backup: `fast` (at once) or `spread` (gentle on a
    /// busy server, may take minutes)
    #[arg(long, value_enum, default_value_t = Checkpoint::Fast)]
    pub checkpoint: Checkpoint,
    /// The folder holding PostgreSQL's programs (pg_basebackup); the PATH when not given
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Give up when pg_basebackup sends nothing for this many seconds once data has
    /// started (PostgreSQL waits for archive_command to archive the backup's last WAL
    /// segment; a broken one would hold the backup forever); 0 waits
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub stall_timeout: u64,
    /// Add tags to the snapshot (repeatable, or comma separated)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    Fast,
    Spread,
}

/// What to recover to. At most one may be given; the default is `--latest`.
#[derive(Args, Debug, Clone, Default)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// Recover to this time: ISO 8601 (`2026-12-01T21:39:22.5Z`, `2026-12-01 21:39:22+01`)
    /// or PostgreSQL's own format
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover to this WAL position (`0/3000060`)
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id (its commit included)
    #[arg(long)]
    pub target_xid: Option<String>,
    /// Recover to this restore point (created with pg_create_restore_point)
    #[arg(long)]
    pub target_name: Option<String>,
    /// Recover only until the base backup is consistent
    #[arg(long)]
    pub immediate: bool,
    /// Recover to the end of the archive (the default)
    #[arg(long)]
    pub latest: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAction {
    #[default]
    Promote,
    Pause,
    Shutdown,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The data directory to restore into: created, or empty
    #[arg(long)]
    pub pgdata: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Restore this base backup instead of choosing one (an id or unique prefix)
    #[arg(long)]
    pub snapshot: Option<String>,
    /// What PostgreSQL does when it reaches the target
    #[arg(long, value_enum, default_value_t = TargetAction::Promote)]
    pub target_action: TargetAction,
    /// The timeline to recover along: a number, `current` (the base backup's) or `latest`
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// Stop just before the target instead of just after it (time, LSN and xid targets)
    #[arg(long)]
    pub target_exclusive: bool,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Restore this base backup instead of choosing one (an id or unique prefix)
    #[arg(long)]
    pub snapshot: Option<String>,
    /// The timeline to recover along: a number, `current` (the base backup's) or `latest`
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// The scratch folder (created, or empty; all of it is removed at the end)
    /// [default: a new folder in $TMPDIR]
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Leave the scratch folder (data directory, log) in place and print where it is
    #[arg(long)]
    pub keep: bool,
    /// The private server's port (it listens only on a socket in the scratch folder)
    /// [default: a free port]
    #[arg(long)]
    pub port: Option<u16>,
    /// The folder holding PostgreSQL's programs (postgres, psql); the PATH when not given
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Seconds recovery may take, and each check
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// SQL run in each database after recovery; passes when psql exits 0 (repeatable)
    /// [default: select count(*) from pg_class]
    #[arg(long = "check-sql", value_name = "SQL")]
    pub check_sql: Vec<String>,
    /// Run the checks only in this database (repeatable) [default: every database that
    /// allows connections]
    #[arg(long, value_name = "NAME")]
    pub database: Vec<String>,
    /// The role psql connects as [default: the name of the cluster's OS user]
    #[arg(long)]
    pub pguser: Option<String>,
    /// A server setting for the drill, e.g. `shared_buffers=1GB` (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}
