//! `cairn pg drill`: the restore test run on a schedule. A base backup is restored into a
//! scratch folder, a private PostgreSQL replays the archived WAL and is promoted, checks run
//! in its databases, and the report says what was recovered and how long each step took
//! (their sum is the recovery time objective, RTO). Then the server is stopped and the
//! folder removed.
//!
//! Invariants:
//! - The drill never writes to the repository: the restore reads, and the server's
//!   restore_command is `wal fetch`. Its server archives nothing (`archive_mode = off`): a
//!   promoted drill that archived would put a new timeline into the archive, and the next
//!   restore to `latest` would follow it.
//! - The server reaches nothing outside the scratch folder: no TCP (`listen_addresses`
//!   empty), its own socket folder, authentication and port, no replication connection,
//!   no external pid file, no archive cleanup or end-of-recovery command. These are `-c`
//!   options, which win over every configuration file restored with the backup.
//! - Every wait is bounded (`timeout`), and the server and the scratch folder are gone when
//!   [`drill`] returns, on success, failure or interruption alike (unless `keep`).

mod checks;
mod scratch;
mod server;
mod setup;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::checks::{recovered, run_checks, wait_for_promotion};
use self::scratch::{blocked_for, Scratch};
use self::server::{interrupted, Server, Setup};
use self::setup::{free_port, major_version, prepare_data, programs, run_as, settings};
use super::archive_check::describe;
use super::restore::{self, PgRestoreOptions};
use super::target::{Action, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::PgInfo;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::Repository;

/// The check run in every database when none is given.
pub const DEFAULT_CHECK: &str = "select count(*) from pg_class";
/// Lines of the server's log kept in a failed drill's report.
const LOG_TAIL_LINES: usize = 30;
/// A unix socket path is at most this long (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    pub target: Target,
    /// Restore this base backup instead of choosing one.
    pub snapshot: Option<Id>,
    /// `recovery_target_timeline`.
    pub timeline: String,
    /// The program and global options restore_command runs (`wal fetch %f %p` is added).
    pub command: Vec<String>,
    /// The scratch folder (missing or empty); a new temporary folder when not given.
    pub scratch: Option<PathBuf>,
    /// Leave the scratch folder (stopped server, data, log) in place.
    pub keep: bool,
    /// The server's port (names its socket only); a free one when not given.
    pub port: Option<u16>,
    /// The folder of PostgreSQL's programs; the PATH (then the usual versioned folders)
    /// when not given.
    pub pg_bin: Option<PathBuf>,
    /// Bound of the recovery, and of each check.
    pub timeout: Duration,
    /// SQL checks; [`DEFAULT_CHECK`] when empty. A check passes when psql exits 0.
    pub checks: Vec<String>,
    /// The databases checks run in; every database that allows connections when empty.
    pub databases: Vec<String>,
    /// The role psql connects as; libpq's default (the OS user's name) when not given.
    pub user: Option<String>,
    /// More server settings, applied after the drill's own.
    pub settings: Vec<(String, String)>,
}

/// One check in one database.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub database: String,
    pub sql: String,
    pub passed: bool,
    pub secs: f64,
    /// The first line of what it printed.
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What was restored.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub files: u64,
    pub bytes: u64,
    /// The WAL the archive holds for this recovery (from the base backup's start).
    pub wal_first: String,
    pub wal_last: String,
    pub wal_segments: u64,
}

/// Where recovery ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovered {
    /// The last WAL record replayed (`pg_last_wal_replay_lsn()`, which keeps its value
    /// after promotion).
    pub replay_lsn: Option<String>,
    /// The commit time of the last transaction replayed, UTC.
    pub last_transaction_time: Option<String>,
    /// The timeline the promoted server runs on.
    pub timeline: Option<u32>,
    pub current_lsn: Option<String>,
    /// WAL files restore_command delivered.
    pub wal_files_restored: u64,
    /// The server's own lines about how recovery ended.
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub restore_secs: f64,
    /// From starting the server until it was promoted.
    pub recovery_secs: f64,
    pub checks_secs: f64,
    /// From the start of the drill until the checks ended: the recovery time objective.
    pub total_secs: f64,
}

/// The outcome of a drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Restored, recovered, and every check passed.
    pub passed: bool,
    /// Why it did not pass, when a step failed (a failed check is in `checks`).
    pub error: Option<String>,
    pub snapshot: Option<Id>,
    pub base: Option<PgInfo>,
    pub target: String,
    pub restored: Option<Restored>,
    pub recovered: Option<Recovered>,
    pub checks: Vec<CheckResult>,
    pub timings: Timings,
    pub scratch: PathBuf,
    /// Whether the scratch folder was left in place.
    pub kept: bool,
    pub port: u16,
    /// The end of the server's log, when something failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Makes SIGINT, SIGTERM and SIGHUP set the returned flag instead of ending the process, so
/// a drill interrupted by them stops its server and removes its folder. Call it before
/// any other thread starts: the signals are blocked in this thread and in the threads it
/// starts afterwards, and one thread waits for them. (Child processes start with no
/// signal blocked.)
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().map_err(|e| {
        Error::io(
            "blocking signals",
            std::io::Error::from_raw_os_error(e as i32),
        )
    })?;
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    std::thread::Builder::new()
        .name("drill-signals".into())
        .spawn(move || {
            while set.wait().is_ok() {
                seen.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|e| Error::io("starting the signal thread", e))?;
    Ok(flag)
}

/// Runs a drill. Errors only when it cannot begin (no scratch folder, invalid options);
/// every later failure is in the report, with the server stopped and the folder removed.
pub fn drill(
    repo: &Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<DrillReport> {
    let started = Instant::now();
    for (name, _) in &opts.settings {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(&b))
        {
            return Err(Error::invalid(format!("{name:?} is not a setting's name")));
        }
    }
    let port = match opts.port {
        Some(p) => p,
        None => free_port()?,
    };
    let mut scratch = Scratch::create(opts.scratch.as_deref(), opts.keep)?;
    let mut report = DrillReport {
        passed: false,
        error: None,
        snapshot: None,
        base: None,
        target: describe(&opts.target),
        restored: None,
        recovered: None,
        checks: Vec::new(),
        timings: Timings::default(),
        scratch: scratch.path().to_path_buf(),
        kept: false,
        port,
        log_tail: None,
    };
    let outcome = run(repo, opts, progress, stop, &scratch, &mut report, started);
    if let Err(e) = outcome {
        report.error = Some(e.to_string());
    }
    report.timings.total_secs = round(if report.error.is_none() {
        report.timings.total_secs
    } else {
        started.elapsed().as_secs_f64()
    });
    match scratch.finish() {
        Ok(kept) => report.kept = kept,
        Err(e) => {
            report.error.get_or_insert_with(|| e.to_string());
        }
    }
    report.passed = report.error.is_none()
        && !report.checks.is_empty()
        && report.checks.iter().all(|c| c.passed);
    Ok(report)
}

/// The drill's steps; the server is stopped when this returns (its guard).
fn run(
    repo: &Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
    stop: &AtomicBool,
    scratch: &Scratch,
    report: &mut DrillReport,
    started: Instant,
) -> Result<()> {
    // Checked before the restore, which may take long, rather than after it.
    let socket = scratch.socket_dir();
    let socket_file = socket.join(format!(".s.PGSQL.{}", report.port));
    if socket_file.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "the server's socket {} would be longer than {MAX_SOCKET_PATH} bytes: give a shorter --scratch",
            socket_file.display()
        )));
    }
    let data = scratch.data();
    let ropts = PgRestoreOptions {
        target: opts.target.clone(),
        snapshot: opts.snapshot,
        action: Action::Promote,
        timeline: opts.timeline.clone(),
        exclusive: false,
        command: opts.command.clone(),
    };
    let done = restore_stoppable(repo, &data, &ropts, progress, stop)?;
    report.snapshot = Some(done.snapshot);
    report.base = Some(done.base.clone());
    report.restored = Some(Restored {
        files: done.files,
        bytes: done.bytes,
        wal_first: done.wal.first.clone(),
        wal_last: done.wal.last.clone(),
        wal_segments: done.wal.segments,
    });
    report.timings.restore_secs = round(done.duration_secs);

    let run_as = run_as(&data)?;
    let (hba, ident) = scratch.prepare_for(run_as.ids)?;
    if let Some((uid, gid)) = run_as.ids {
        for (p, bits, what) in [
            (scratch.path().to_path_buf(), 0o1, "the scratch folder"),
            (
                opts.command.first().map(PathBuf::from).unwrap_or_default(),
                0o5,
                "cairn itself, which restore_command runs",
            ),
        ] {
            if let Some(b) = blocked_for(&p, uid, gid, bits) {
                progress.warn(&format!(
                    "the cluster's owner (uid {uid}) may not reach {what} ({}): {} is not open to it",
                    p.display(),
                    b.display()
                ));
            }
        }
    }
    prepare_data(&data, run_as.ids)?;
    let version = major_version(&data);
    let setup = Setup {
        programs: programs(opts.pg_bin.as_deref(), version),
        run_as,
        data: data.clone(),
        settings: settings(
            opts,
            &socket,
            &scratch.path().join("postgres.pid"),
            report.port,
            &hba,
            &ident,
            version,
        ),
        socket_dir: socket,
        port: report.port,
        user: opts.user.clone(),
        log: scratch.log(),
    };
    let log = setup.log.clone();
    let recovery_start = Instant::now();
    let mut server = Server::start(setup)?;
    let waited = wait_for_promotion(&mut server, opts.timeout, stop);
    report.timings.recovery_secs = round(recovery_start.elapsed().as_secs_f64());
    if let Err(e) = waited {
        report.log_tail = Some(server.log_tail(LOG_TAIL_LINES));
        return Err(e);
    }
    report.recovered = Some(recovered(&server, &log, opts.timeout, stop)?);

    let checks_start = Instant::now();
    let result = run_checks(&server, opts, stop, report);
    report.timings.checks_secs = round(checks_start.elapsed().as_secs_f64());
    report.timings.total_secs = started.elapsed().as_secs_f64();
    if result.is_err() || report.checks.iter().any(|c| !c.passed) {
        report.log_tail = Some(server.log_tail(LOG_TAIL_LINES));
    }
    result?;
    server.stop()
}

/// The restore, on a thread of its own so that an interruption need not wait for it: the
/// data directory is then removed under it, which makes its next write fail at once.
fn restore_stoppable(
    repo: &Repository,
    data: &Path,
    ropts: &PgRestoreOptions,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> Result<restore::PgRestored> {
    std::thread::scope(|s| {
        let worker = s.spawn(|| restore::restore(repo, data, ropts, progress));
        while !worker.is_finished() {
            if stop.load(Ordering::SeqCst) {
                let _ = std::fs::remove_dir_all(data);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = worker
            .join()
            .map_err(|_| Error::new(ErrorKind::Other, "the restore stopped unexpectedly"))?;
        if stop.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        done
    })
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}
