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

mod scratch;
mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::scratch::{blocked_for, write_new, Scratch};
use self::server::{interrupted, Programs, Ran, RunAs, Server, Setup};
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
/// The database the drill connects to for its own queries: it exists in every cluster.
const ADMIN_DB: &str = "template1";
/// How often the wait for the end of recovery asks the server.
const RECOVERY_POLL: Duration = Duration::from_millis(250);
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

    let socket = scratch.socket_dir();
    let socket_file = socket.join(format!(".s.PGSQL.{}", report.port));
    if socket_file.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "the server's socket {} would be longer than {MAX_SOCKET_PATH} bytes: give a shorter --scratch",
            socket_file.display()
        )));
    }
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

/// Who runs the server: the owner of the restored files when we are root (PostgreSQL
/// refuses root), with that user's home; ourselves otherwise.
fn run_as(data: &Path) -> Result<RunAs> {
    if !crate::sys::is_root() {
        return Ok(RunAs {
            ids: None,
            env: Vec::new(),
        });
    }
    let meta = std::fs::metadata(data.join("PG_VERSION"))
        .map_err(|e| Error::io(format!("reading {}/PG_VERSION", data.display()), e))?;
    let (uid, gid) = (
        std::os::unix::fs::MetadataExt::uid(&meta),
        std::os::unix::fs::MetadataExt::gid(&meta),
    );
    if uid == 0 {
        return Err(Error::invalid(
            "the restored files belong to root, and PostgreSQL does not run as root: restore a base backup of a cluster run by another user, or run the drill as that user",
        ));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let mut env: Vec<(String, Option<String>)> = [
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
    ]
    .iter()
    .map(|k| (k.to_string(), None))
    .collect();
    if let Some(u) = user {
        env.push(("HOME".into(), Some(u.dir.display().to_string())));
        env.push(("USER".into(), Some(u.name.clone())));
        env.push(("LOGNAME".into(), Some(u.name)));
    }
    Ok(RunAs {
        ids: Some((uid, gid)),
        env,
    })
}

/// Makes the restored data directory startable here: an empty `postgresql.conf` when the
/// backup had none (where it lives outside the data directory, as on Debian), and no
/// `standby.signal` (a standby would never promote).
fn prepare_data(data: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        write_new(
            &conf,
            "# cairn pg drill: the base backup held no postgresql.conf\n",
        )?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&conf, Some(uid), Some(gid)).map_err(|e| {
                Error::io(
                    format!("giving {} to the cluster's owner", conf.display()),
                    e,
                )
            })?;
        }
    }
    match std::fs::remove_file(data.join("standby.signal")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
            format!("removing {}/standby.signal", data.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// PostgreSQL's major version of the data directory (`PG_VERSION`).
fn major_version(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The given folder; else the PATH when it has `postgres`; else the usual folder of this
/// major version (Debian's, then the PGDG RPMs').
fn programs(given: Option<&Path>, version: Option<u32>) -> Programs {
    if let Some(d) = given {
        return Programs {
            dir: Some(d.to_path_buf()),
        };
    }
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("postgres").is_file()));
    let usual = version.into_iter().flat_map(|v| {
        [
            PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
            PathBuf::from(format!("/usr/pgsql-{v}/bin")),
        ]
    });
    Programs {
        dir: if in_path {
            None
        } else {
            usual.into_iter().find(|d| d.join("postgres").is_file())
        },
    }
}

/// The server's `-c` options: see the module's invariants.
fn settings(
    opts: &DrillOptions,
    socket: &Path,
    pid_file: &Path,
    port: u16,
    hba: &Path,
    ident: &Path,
    version: Option<u32>,
) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = [
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket.display().to_string()),
        ("unix_socket_group", String::new()),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", hba.display().to_string()),
        ("ident_file", ident.display().to_string()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("external_pid_file", pid_file.display().to_string()),
        ("hot_standby", "on".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("lc_messages", "C".into()),
        ("cluster_name", "cairn-drill".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if version.is_none_or(|v| v >= 15) {
        s.push(("archive_library".into(), String::new()));
    }
    s.extend(opts.settings.iter().cloned());
    s
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Waits until the server has left recovery (promoted). Fails when it exits first (recovery
/// failed: the log says why), at the timeout, or on an interruption.
fn wait_for_promotion(server: &mut Server, timeout: Duration, stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(interrupted());
        }
        if let Some(status) = server.exited()? {
            return Err(Error::new(
                ErrorKind::Command,
                format!(
                    "PostgreSQL stopped during recovery ({status}){}",
                    why_failed(&server.log_tail(200))
                ),
            ));
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "recovery did not end within {} s (--timeout){}",
                    timeout.as_secs(),
                    why_failed(&server.log_tail(200))
                ),
            ));
        }
        let ask = deadline.min(Instant::now() + Duration::from_secs(30));
        let r = server.psql(ADMIN_DB, "select pg_is_in_recovery()", ask, stop)?;
        if r.success() && r.stdout.trim() == "f" {
            return Ok(());
        }
        std::thread::sleep(RECOVERY_POLL);
    }
}

/// The log lines that say why recovery failed: the last failed fetch and the last FATAL or
/// PANIC line.
fn why_failed(log: &str) -> String {
    let mut parts = Vec::new();
    if let Some(l) = log
        .lines()
        .rev()
        .find(|l| l.contains("error: cairn wal fetch"))
    {
        parts.push(l.trim().to_string());
    }
    if let Some(l) = log
        .lines()
        .rev()
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
    {
        parts.push(l.trim().to_string());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// Where recovery ended, from the promoted server and its log.
fn recovered(
    server: &Server,
    log: &Path,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Recovered> {
    let sql = "select coalesce(pg_last_wal_replay_lsn()::text, ''), \
        coalesce(to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', \
        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ''), \
        pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()";
    let r = server.psql(ADMIN_DB, sql, Instant::now() + timeout, stop)?;
    let mut out = Recovered::default();
    if r.success() {
        let f: Vec<&str> = r.stdout.trim().split('|').collect();
        let text = |i: usize| f.get(i).map(|s| s.to_string()).filter(|s| !s.is_empty());
        out.replay_lsn = text(0);
        out.last_transaction_time = text(1);
        out.timeline = text(2).and_then(|w| u32::from_str_radix(w.get(..8)?, 16).ok());
        out.current_lsn = text(3);
    }
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    const ENDING: [&str; 6] = [
        "consistent recovery state reached",
        "recovery stopping",
        "redo done at",
        "last completed transaction was at log time",
        "selected new timeline ID",
        "archive recovery complete",
    ];
    for line in text.lines() {
        if line.contains("restored log file") {
            out.wal_files_restored += 1;
        }
        if ENDING.iter().any(|k| line.contains(k)) {
            let msg = line.rsplit_once("LOG:").map_or(line, |(_, m)| m);
            out.log.push(msg.trim().to_string());
        }
    }
    Ok(out)
}

/// Runs every check in every chosen database, recording each result.
fn run_checks(
    server: &Server,
    opts: &DrillOptions,
    stop: &AtomicBool,
    report: &mut DrillReport,
) -> Result<()> {
    let databases = if opts.databases.is_empty() {
        let sql = "select datname from pg_database where datallowconn order by datname";
        let r = server.psql(ADMIN_DB, sql, Instant::now() + opts.timeout, stop)?;
        if !r.success() {
            return Err(Error::new(
                ErrorKind::Command,
                format!("listing the databases: {}", failure(&r)),
            ));
        }
        r.stdout
            .lines()
            .map(str::to_string)
            .filter(|d| !d.is_empty())
            .collect()
    } else {
        opts.databases.clone()
    };
    let default = [DEFAULT_CHECK.to_string()];
    let checks: &[String] = if opts.checks.is_empty() {
        &default
    } else {
        &opts.checks
    };
    for db in &databases {
        for sql in checks {
            let t = Instant::now();
            let r = server.psql(db, sql, Instant::now() + opts.timeout, stop)?;
            report.checks.push(CheckResult {
                database: db.clone(),
                sql: sql.clone(),
                passed: r.success(),
                secs: round(t.elapsed().as_secs_f64()),
                output: r
                    .stdout
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
                error: (!r.success()).then(|| failure(&r)),
            });
        }
    }
    Ok(())
}

/// What a failed psql run said.
fn failure(r: &Ran) -> String {
    let err = r.stderr.trim();
    match r.status {
        None => "did not finish in time (--timeout)".into(),
        Some(st) if err.is_empty() => format!("psql {st}"),
        Some(_) => err.lines().take(5).collect::<Vec<_>>().join(" "),
    }
}
