//! The drill's private PostgreSQL server: `postgres` started directly (not through pg_ctl),
//! as our child in a process group of its own, so the drill knows its pid, sees at once when
//! it exits, and alone decides when it stops (a Ctrl-C on the terminal reaches the drill,
//! which then stops the server itself). psql runs are bounded and can be interrupted.
//!
//! Invariant: a [`Server`] that was started is stopped when it is dropped (immediate
//! shutdown, then SIGKILL to the postmaster and every process it had started), so no
//! early return or error leaves a server running.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, ErrorKind, Result};

/// How long an immediate shutdown may take before the processes are killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(50);

/// Who runs PostgreSQL and psql, and in which environment.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    /// Set when we are root: the owner of the restored files (PostgreSQL refuses root).
    pub ids: Option<(u32, u32)>,
    /// Environment changes: the owner's HOME, USER and LOGNAME (root's XDG folders removed).
    pub env: Vec<(String, Option<String>)>,
}

impl RunAs {
    pub fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            // Rust drops the supplementary groups when the uid changes.
            cmd.uid(uid).gid(gid);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
    }
}

/// Where PostgreSQL's programs are.
#[derive(Debug, Clone)]
pub(super) struct Programs {
    pub dir: Option<PathBuf>,
}

impl Programs {
    /// `name` in the chosen folder, or the bare name (looked up in the PATH).
    pub fn path(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// The output of one bounded program run.
#[derive(Debug, Clone)]
pub(super) struct Ran {
    /// `None` when it was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

pub(super) fn interrupted() -> Error {
    Error::new(ErrorKind::Other, "interrupted by a signal")
}

/// Runs `cmd` with its output captured, killing it at `deadline` (then `status` is None).
/// Returns an interruption error (after killing it) when `stop` is set meanwhile.
pub(super) fn run_bounded(mut cmd: Command, deadline: Instant, stop: &AtomicBool) -> Result<Ran> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting {what}"), e))?;
    // Readers drain the pipes while we wait, so a large output cannot block the child.
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| Error::io(format!("waiting for {what}"), e))?
        {
            break Some(st);
        }
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop.load(Ordering::SeqCst) {
                return Err(interrupted());
            }
            break None;
        }
        std::thread::sleep(POLL);
    };
    let collect = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Ran {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Quotes a libpq connection-string value.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What a private server is started with.
pub(super) struct Setup {
    pub programs: Programs,
    pub run_as: RunAs,
    pub data: PathBuf,
    /// `-c` options, which win over every configuration file.
    pub settings: Vec<(String, String)>,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// The role psql connects as (libpq's default when not given).
    pub user: Option<String>,
    pub log: PathBuf,
}

/// A running private server.
pub(super) struct Server {
    child: Option<Child>,
    setup: Setup,
}

impl Server {
    /// Starts `postgres -D data` with the setup's settings, its output appended to the log.
    pub fn start(setup: Setup) -> Result<Server> {
        let log = &setup.log;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let file2 = file
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let program = setup.programs.path("postgres");
        let mut cmd = Command::new(&program);
        cmd.arg("-D").arg(&setup.data);
        for (k, v) in &setup.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .current_dir(&setup.data)
            .process_group(0);
        setup.run_as.apply(&mut cmd);
        let child = cmd.spawn().map_err(|e| {
            Error::io(
                format!(
                    "starting {} (give the folder of PostgreSQL's programs with --pg-bin)",
                    program.display()
                ),
                e,
            )
        })?;
        Ok(Server {
            child: Some(child),
            setup,
        })
    }

    /// The postmaster's exit status once it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => c
                .try_wait()
                .map_err(|e| Error::io("waiting for postgres", e)),
            None => Ok(None),
        }
    }

    /// Runs `sql` in `database` with psql (no psqlrc, tuples only, unaligned, stop at the
    /// first error), bounded by `deadline`.
    pub fn psql(
        &self,
        database: &str,
        sql: &str,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Ran> {
        let mut conn = format!(
            "host={} port={} dbname={} connect_timeout=10 application_name=cairn-drill",
            conn_value(&self.setup.socket_dir.display().to_string()),
            self.setup.port,
            conn_value(database)
        );
        if let Some(u) = &self.setup.user {
            conn.push_str(&format!(" user={}", conn_value(u)));
        }
        let mut cmd = Command::new(self.setup.programs.path("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(conn)
            .arg("-c")
            .arg(sql)
            .current_dir(&self.setup.socket_dir);
        self.setup.run_as.apply(&mut cmd);
        run_bounded(cmd, deadline, stop)
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.setup.log, lines)
    }

    /// Immediate shutdown (SIGQUIT to the postmaster), bounded; then SIGKILL to whatever of
    /// the server is left. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        // The processes the postmaster started (backends, the startup process and the
        // restore_command it runs): an immediate shutdown does not wait for a command's
        // grandchildren, so they are killed below if they outlive it.
        let family = descendants(pid);
        if child.try_wait().ok().flatten().is_none() {
            let _ = kill(pid_of(pid), Signal::SIGQUIT);
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        let mut killed = false;
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            killed = true;
        }
        let _ = child.wait();
        for (p, started) in family.into_iter().chain(descendants(pid)) {
            if crate::sys::process_start_ticks(p) == Some(started) {
                let _ = kill(pid_of(p), Signal::SIGKILL);
            }
        }
        if killed {
            return Err(Error::new(
                ErrorKind::Other,
                format!("postgres did not stop within {STOP_GRACE:?} and was killed"),
            ));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping the drill's server: {e}");
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// The living descendants of `root` with their start times (to tell a reused pid apart).
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut procs: Vec<(u32, u32)> = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            procs.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    found
        .into_iter()
        .skip(1)
        .filter_map(|p| crate::sys::process_start_ticks(p).map(|t| (p, t)))
        .collect()
}

/// The parent of a living (not zombie) process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub(super) fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
