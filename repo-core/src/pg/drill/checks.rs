//! Watching the drill's server: waiting for the end of recovery, reading where it ended,
//! and running the checks.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::server::{interrupted, Ran, Server};
use super::{round, CheckResult, DrillOptions, DrillReport, Recovered, DEFAULT_CHECK};
use crate::error::{Error, ErrorKind, Result};

/// The database the drill connects to for its own queries: it exists in every cluster.
const ADMIN_DB: &str = "template1";
/// How often the wait for the end of recovery asks the server.
const RECOVERY_POLL: Duration = Duration::from_millis(250);

/// Waits until the server has left recovery (promoted). Fails when it exits first (recovery
/// failed: the log says why), at the timeout, or on an interruption.
pub(super) fn wait_for_promotion(
    server: &mut Server,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<()> {
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
pub(super) fn recovered(
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
pub(super) fn run_checks(
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
    if databases.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "no database allows connections: nothing to check",
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_recovery_is_explained_by_the_last_fetch_error_and_fatal_line() {
        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\n\
            error: cairn wal fetch 000000010000000000000004: damaged (recovery stops here)\n\
            FATAL:  could not restore file \"000000010000000000000004\" from archive\n\
            LOG:  database system is shut down\n";
        let why = why_failed(log);
        assert!(
            why.starts_with(": error: cairn wal fetch 000000010000000000000004"),
            "{why}"
        );
        assert!(
            why.ends_with("could not restore file \"000000010000000000000004\" from archive"),
            "{why}"
        );
        assert_eq!(why_failed("LOG:  all fine\n"), "");
    }
}
