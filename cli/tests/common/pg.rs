//! A real PostgreSQL 15 cluster per test, for WAL archiving, base backup and point-in-time
//! restore tests.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (as in CI) every
//! PostgreSQL program runs as the `postgres` user, and whatever it must read or write (the
//! cluster's folder, an archive folder, a repository, a key file) is handed to that user
//! with [`give_to_postgres`] / [`copy_for_postgres`]. Not as root, everything runs as the
//! current user and those helpers do nothing.
//!
//! Every wait has a deadline, every program run has a timeout, and dropping a [`Cluster`]
//! stops its server (immediate mode, then SIGKILL), so a failing test leaves no server behind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// Where the PostgreSQL 15 programs are: `$CAIRN_PG_BINDIR` when set, else Debian's place.
pub fn pg_bindir() -> PathBuf {
    std::env::var_os("CAIRN_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The path of one PostgreSQL program (`initdb`, `pg_ctl`, `psql`, `pgbench`, ...).
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bindir().join(name)
}

pub struct Pg;

impl Pg {
    /// Whether PostgreSQL 15 is installed (and, as root, the `postgres` user exists).
    pub fn available() -> bool {
        let programs = [
            "initdb",
            "pg_ctl",
            "postgres",
            "psql",
            "pgbench",
            "pg_controldata",
        ];
        if !programs.iter().all(|p| is_executable(&pg_bin(p))) {
            return false;
        }
        if is_root() && postgres_user().is_none() {
            return false;
        }
        let Ok(out) = Command::new(pg_bin("postgres")).arg("--version").output() else {
            return false;
        };
        String::from_utf8_lossy(&out.stdout).contains("PostgreSQL) 15")
    }

    /// `Some(Pg)` when PostgreSQL 15 can be used. Otherwise a failure under CI (`CI` set),
    /// and elsewhere a line on stderr and `None`, for the test to return early:
    ///
    /// ```ignore
    /// let Some(_pg) = Pg::require() else { return };
    /// ```
    pub fn require() -> Option<Pg> {
        if Pg::available() {
            return Some(Pg);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL 15 is required under CI (looked in {}; scripts/test installs it)",
            pg_bindir().display()
        );
        eprintln!(
            "skipped: PostgreSQL 15 not found in {} (scripts/test installs it)",
            pg_bindir().display()
        );
        None
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> Option<(u32, u32)> {
    let u = User::from_name("postgres").ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// The uid and gid PostgreSQL runs as: `postgres` when we are root, else ourselves.
pub fn pg_ids() -> (u32, u32) {
    if is_root() {
        postgres_user().expect("no postgres user")
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }
}

/// Makes `cmd` run as the PostgreSQL user (when root; the supplementary groups are dropped).
pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let (uid, gid) = pg_ids();
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Hands `path` (recursively) to the PostgreSQL user, keeping modes, and makes its parent
/// folders traversable (adds o+x where missing, e.g. on a 0700 temporary folder). Does
/// nothing when not root.
pub fn give_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = pg_ids();
    chown_tree(path, uid, gid);
    make_reachable(path);
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// Adds o+x to every ancestor of `path` not owned by the PostgreSQL user that lacks it, so
/// that user can reach `path`. (Its own folders, like a data folder, which must stay 0700,
/// are left alone.)
fn make_reachable(path: &Path) {
    let (uid, _) = pg_ids();
    let abs = std::path::absolute(path).unwrap();
    for dir in abs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.uid() != uid && mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .unwrap_or_else(|e| panic!("chmod o+x {}: {e}", dir.display()));
        }
    }
}

/// Copies `src` to `dst` with `mode` (e.g. 0o600 for a key file) and owned by the PostgreSQL
/// user, so an `archive_command` / `restore_command` can use it. Returns `dst`.
pub fn copy_for_postgres(src: &Path, dst: &Path, mode: u32) -> PathBuf {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).unwrap();
    if is_root() {
        let (uid, gid) = pg_ids();
        std::os::unix::fs::chown(dst, Some(uid), Some(gid)).unwrap();
        make_reachable(dst);
    }
    dst.to_path_buf()
}

/// A folder owned by the PostgreSQL user (under /tmp), e.g. for a plain archive.
pub fn postgres_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("cairn-pg")
        .tempdir_in("/tmp")
        .unwrap();
    give_to_postgres(d.path());
    d
}

/// Whether the PostgreSQL user can execute `path`.
pub fn postgres_can_execute(path: &Path) -> bool {
    let mut c = Command::new("test");
    c.arg("-x").arg(path).current_dir("/");
    as_postgres(&mut c);
    c.status().is_ok_and(|s| s.success())
}

/// The `cairn` binary under test, as a path the PostgreSQL user can execute: the built
/// binary itself when reachable, else a copy in `dir`.
pub fn cairn_for_postgres(dir: &Path) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_cairn"));
    if postgres_can_execute(&built) {
        return built;
    }
    copy_for_postgres(&built, &dir.join("cairn"), 0o755)
}

/// Runs `cmd` to completion, killing it after `timeout`. Panics if it cannot start or
/// times out; the caller judges the exit status.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

/// Checks `f` every 100 ms until it gives `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on 127.0.0.1 (bound then released). With the default
/// `listen_addresses = ''` the port only names the socket in the cluster's own folder, so a
/// race with another process taking it cannot matter.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A setting value quoted for postgresql.conf.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// How [`Cluster::init`] sets up a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// `archive_command` (may contain `%p` / `%f`); archiving is on whether or not it is
    /// set (with none, PostgreSQL keeps the WAL until one is set).
    pub archive_command: Option<String>,
    /// `archive_timeout` in seconds.
    pub archive_timeout: Option<u32>,
    pub fsync: bool,
    /// `initdb --wal-segsize` in MiB (PostgreSQL's default is 16).
    pub wal_segsize_mb: Option<u32>,
    pub max_wal_senders: u32,
    pub shared_buffers: String,
    /// Also listen on 127.0.0.1 (otherwise only on the unix socket).
    pub tcp: bool,
    /// More `name = value` settings (values are quoted here).
    pub settings: Vec<(String, String)>,
    /// Environment of the server, hence of `archive_command` / `restore_command`, on top
    /// of PATH, LC_ALL=C and TZ=UTC.
    pub env: Vec<(OsString, OsString)>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            archive_command: None,
            archive_timeout: None,
            fsync: true,
            wal_segsize_mb: None,
            max_wal_senders: 10,
            shared_buffers: "16MB".into(),
            tcp: false,
            settings: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl ClusterOpts {
    /// Defaults with this `archive_command`.
    pub fn archiving(command: &str) -> ClusterOpts {
        ClusterOpts {
            archive_command: Some(command.into()),
            ..ClusterOpts::default()
        }
    }

    pub fn env(mut self, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        self.env.extend(vars);
        self
    }

    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// How [`Cluster::from_restored`] starts a restored data folder.
#[derive(Clone, Debug, Default)]
pub struct RestoredOpts {
    /// Writes `recovery.signal` (archive recovery) with this `restore_command`.
    pub restore_command: Option<String>,
    /// e.g. `("recovery_target_time", "2024-...")`, `("recovery_target_name", "before")`,
    /// `("recovery_target_lsn", "0/3000060")`; with any, `recovery_target_action` is
    /// `promote` unless given here.
    pub targets: Vec<(String, String)>,
    /// More settings (e.g. `archive_mode = off`, or a new `archive_command`).
    pub settings: Vec<(String, String)>,
    pub tcp: bool,
    pub env: Vec<(OsString, OsString)>,
}

/// `pg_stat_archiver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
}

/// How long [`Cluster::pgbench`] runs.
#[derive(Clone, Copy, Debug)]
pub enum Bench {
    Seconds(u32),
    /// Transactions per client.
    Transactions(u32),
}

/// One PostgreSQL cluster: its data folder, its own socket folder and port, its log.
pub struct Cluster {
    /// The cluster's folder (holds `data` for [`Cluster::init`], and `postgres.log`).
    pub dir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    socket: tempfile::TempDir,
    pub log: PathBuf,
    env: Vec<(OsString, OsString)>,
    running: bool,
}

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const SQL_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// `initdb` into `dir/data` (UTF8, C locale, data checksums, trust authentication,
    /// superuser `postgres`), with `opts`' settings in postgresql.conf and this cluster's
    /// socket folder and port in postgresql.auto.conf. Not started. `dir` is created if
    /// needed and handed to the PostgreSQL user.
    pub fn init(dir: &Path, opts: &ClusterOpts) -> Cluster {
        std::fs::create_dir_all(dir).unwrap();
        give_to_postgres(dir);
        let data = dir.join("data");
        let c = Cluster::new(dir, &data, opts.env.clone());

        let mut cmd = c.command("initdb");
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "--data-checksums", "--no-instructions"]);
        if let Some(mb) = opts.wal_segsize_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        if !opts.fsync {
            cmd.arg("--no-sync");
        }
        let out = run_timeout(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut conf = vec![
            ("wal_level".to_string(), "replica".to_string()),
            ("archive_mode".into(), "on".into()),
            (
                "archive_command".into(),
                opts.archive_command.clone().unwrap_or_default(),
            ),
            ("max_wal_senders".into(), opts.max_wal_senders.to_string()),
            ("shared_buffers".into(), opts.shared_buffers.clone()),
            ("fsync".into(), if opts.fsync { "on" } else { "off" }.into()),
            ("timezone".into(), "UTC".into()),
            ("log_timezone".into(), "UTC".into()),
            ("logging_collector".into(), "off".into()),
        ];
        if let Some(t) = opts.archive_timeout {
            conf.push(("archive_timeout".into(), t.to_string()));
        }
        conf.extend(opts.settings.iter().cloned());
        c.append_conf("postgresql.conf", &conf);
        c.write_local_settings(opts.tcp);
        c
    }

    /// A data folder produced by a restore (base backup plus WAL), made startable on its
    /// own socket folder and port: the connection settings in postgresql.auto.conf are
    /// replaced, `postmaster.pid` / `postmaster.opts` left by the backup removed, and with a
    /// `restore_command` a `recovery.signal` is written. The folder is handed to the
    /// PostgreSQL user (ownership only: modes are kept, so a restore that got them wrong
    /// still fails to start). Not started: call [`Cluster::start`] then
    /// [`Cluster::wait_recovery_end`], or [`Cluster::start_recovered`].
    pub fn from_restored(data: &Path, opts: &RestoredOpts) -> Cluster {
        let dir = data.parent().unwrap().to_path_buf();
        give_to_postgres(data);
        let mut c = Cluster::new(&dir, data, opts.env.clone());
        c.log = dir.join(format!(
            "{}.log",
            data.file_name().unwrap().to_string_lossy()
        ));
        for stale in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        let mut conf: Vec<(String, String)> = Vec::new();
        if let Some(rc) = &opts.restore_command {
            conf.push(("restore_command".into(), rc.clone()));
            std::fs::write(data.join("recovery.signal"), "").unwrap();
            give_to_postgres(&data.join("recovery.signal"));
        }
        conf.extend(opts.targets.iter().cloned());
        if !opts.targets.is_empty()
            && !opts
                .targets
                .iter()
                .any(|(k, _)| k == "recovery_target_action")
        {
            conf.push(("recovery_target_action".into(), "promote".into()));
        }
        conf.extend(opts.settings.iter().cloned());
        c.write_local_settings(opts.tcp);
        c.append_conf("postgresql.auto.conf", &conf);
        c
    }

    fn new(dir: &Path, data: &Path, env: Vec<(OsString, OsString)>) -> Cluster {
        // A short folder of its own for the socket: a unix socket path is limited to 107
        // bytes, which a test's folder may exceed.
        let socket = tempfile::Builder::new()
            .prefix("pgs")
            .tempdir_in("/tmp")
            .unwrap();
        give_to_postgres(socket.path());
        Cluster {
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
            port: free_port(),
            socket,
            log: dir.join("postgres.log"),
            env,
            running: false,
        }
    }

    pub fn socket_dir(&self) -> &Path {
        self.socket.path()
    }

    /// A libpq connection string for this cluster (for `pg_basebackup -d`, say).
    pub fn connstr(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket.path().display(),
            self.port
        )
    }

    /// Environment for libpq programs run against this cluster (PGHOST, PGPORT, PGUSER).
    pub fn libpq_env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PGHOST".into(), self.socket.path().into()),
            ("PGPORT".into(), self.port.to_string().into()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// Sets the server's environment for the next start (then restart to apply).
    pub fn set_env(&mut self, vars: impl IntoIterator<Item = (OsString, OsString)>) {
        for (k, v) in vars {
            self.env.retain(|(old, _)| *old != k);
            self.env.push((k, v));
        }
    }

    /// A PostgreSQL program, as the PostgreSQL user, with a clean environment (PATH,
    /// LC_ALL=C, TZ=UTC, the libpq variables, then the cluster's own), run in the
    /// cluster's folder.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(pg_bin(program));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .envs(self.libpq_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir);
        as_postgres(&mut c);
        c
    }

    fn append_conf(&self, file: &str, settings: &[(String, String)]) {
        use std::io::Write;
        let path = self.data.join(file);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        writeln!(f, "\n# cairn test harness").unwrap();
        for (k, v) in settings {
            writeln!(f, "{k} = {}", quote(v)).unwrap();
        }
        drop(f);
        give_to_postgres(&path);
    }

    /// Rewrites postgresql.auto.conf's connection settings for this cluster.
    fn write_local_settings(&self, tcp: bool) {
        let path = self.data.join("postgresql.auto.conf");
        let keys = ["port", "unix_socket_directories", "listen_addresses"];
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = old
            .lines()
            .filter(|l| {
                let name = l.split('=').next().unwrap_or("").trim();
                !keys.contains(&name)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
        self.append_conf(
            "postgresql.auto.conf",
            &[
                ("port".into(), self.port.to_string()),
                (
                    "unix_socket_directories".into(),
                    self.socket.path().display().to_string(),
                ),
                (
                    "listen_addresses".into(),
                    if tcp { "127.0.0.1" } else { "" }.into(),
                ),
            ],
        );
    }

    /// The last `lines` lines of the server log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the server and waits (bounded) until it accepts connections; Err carries
    /// pg_ctl's output and the log's tail.
    pub fn try_start(&mut self) -> Result<(), String> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string()]);
        let out = run_timeout_to_file(cmd, START_TIMEOUT + Duration::from_secs(10));
        // Even a failed start may have left a postmaster (e.g. still in recovery).
        self.running = true;
        if out.0.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}\nlog:\n{}",
                out.1,
                self.log_tail(30)
            ))
        }
    }

    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str, timeout: Duration) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data).args([
            "-m",
            mode,
            "-w",
            "-t",
            &timeout.as_secs().to_string(),
        ]);
        let out = run_timeout(cmd, timeout + Duration::from_secs(10));
        out.status.success()
    }

    /// Fast shutdown (a clean checkpoint), waiting until the server is gone.
    pub fn stop(&mut self) {
        assert!(
            self.pg_ctl_stop("fast", STOP_TIMEOUT),
            "pg_ctl stop failed:\n{}",
            self.log_tail(30)
        );
        self.running = false;
    }

    /// Immediate shutdown: no checkpoint, crash recovery at the next start.
    pub fn stop_immediate(&mut self) {
        assert!(
            self.pg_ctl_stop("immediate", STOP_TIMEOUT),
            "pg_ctl stop -m immediate failed:\n{}",
            self.log_tail(30)
        );
        self.running = false;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// The postmaster's pid, from postmaster.pid while it exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// The postmaster and all its descendants (backends, checkpointer, archiver, a running
    /// archive_command, ...) now alive.
    pub fn pids(&self) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid() else {
            return Vec::new();
        };
        let mut procs = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Some((state, ppid)) = proc_stat(pid) {
                if state != 'Z' {
                    procs.push((pid, ppid));
                }
            }
        }
        let mut out = Vec::new();
        if procs.iter().any(|&(p, _)| p == pm) {
            out.push(pm);
        }
        let mut i = 0;
        while i < out.len() {
            let parent = out[i];
            out.extend(
                procs
                    .iter()
                    .filter(|&&(_, pp)| pp == parent)
                    .map(|&(p, _)| p),
            );
            i += 1;
        }
        out.sort();
        out
    }

    /// Loses the server: SIGKILL to the postmaster and all its children at once (no
    /// shutdown of any kind), then waits until they are gone. The next start runs crash
    /// recovery.
    pub fn kill(&mut self) {
        assert!(
            self.kill_all(STOP_TIMEOUT),
            "killed postgres still running after {STOP_TIMEOUT:?}"
        );
    }

    /// SIGKILL to the postmaster and its children; whether all were gone in time.
    fn kill_all(&mut self, timeout: Duration) -> bool {
        let pids = self.pids();
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let deadline = Instant::now() + timeout;
        while pids.iter().any(|&p| alive(p)) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for &p in &pids {
            // Reaps it if it is ours (it is not, normally: pg_ctl's child is).
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(p),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        // The dead postmaster may stay a zombie (where PID 1 does not reap orphans), and
        // PostgreSQL takes a zombie's pid in postmaster.pid for a live server. Once the
        // server is dead its lock files are stale, as after a machine crash: remove them.
        if self.postmaster_pid().is_some_and(|p| !alive(p)) {
            let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
            let sock = self.socket.path().join(format!(".s.PGSQL.{}", self.port));
            let lock = self
                .socket
                .path()
                .join(format!(".s.PGSQL.{}.lock", self.port));
            let _ = std::fs::remove_file(lock);
            let _ = std::fs::remove_file(sock);
        }
        self.running = false;
        true
    }

    /// Whether the postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(alive)
    }

    /// Runs SQL through psql (tuples only, unaligned, stop on error); Err is psql's stderr.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        let out = run_timeout(cmd, SQL_TIMEOUT);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL and returns its output (rows on lines, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    /// Runs SQL for its effect.
    pub fn exec(&self, sql: &str) {
        self.psql(sql);
    }

    /// `pgbench -i -s scale` (quietly).
    pub fn pgbench_init(&self, scale: u32) {
        let mut cmd = self.command("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string()]);
        let out = run_timeout(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the pgbench workload with `clients` clients; returns its report.
    pub fn pgbench(&self, run: Bench, clients: u32) -> String {
        let mut cmd = self.command("pgbench");
        cmd.args(["-n", "-c", &clients.to_string(), "-j", "1"]);
        let timeout = match run {
            Bench::Seconds(s) => {
                cmd.args(["-T", &s.to_string()]);
                Duration::from_secs(u64::from(s) + 60)
            }
            Bench::Transactions(t) => {
                cmd.args(["-t", &t.to_string()]);
                Duration::from_secs(120)
            }
        };
        let out = run_timeout(cmd, timeout);
        assert!(
            out.status.success(),
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_current_wal_lsn()`, e.g. `0/3000148`.
    pub fn current_lsn(&self) -> String {
        self.psql("select pg_current_wal_lsn()")
    }

    /// `pg_switch_wal()`: ends the current segment (so it gets archived); returns the
    /// switch LSN. The segment to wait for is `walfile_name(that LSN)`.
    pub fn switch_wal(&self) -> String {
        self.psql("select pg_switch_wal()")
    }

    /// The WAL file name holding `lsn` on the current timeline (`pg_walfile_name`).
    pub fn walfile_name(&self, lsn: &str) -> String {
        self.psql(&format!("select pg_walfile_name({}::pg_lsn)", quote(lsn)))
    }

    /// `pg_create_restore_point(name)`; returns its LSN.
    pub fn create_restore_point(&self, name: &str) -> String {
        self.psql(&format!("select pg_create_restore_point({})", quote(name)))
    }

    /// The server's clock (`clock_timestamp()`, UTC), usable as `recovery_target_time`.
    pub fn now(&self) -> String {
        self.psql("select clock_timestamp()::text")
    }

    /// The cluster's system identifier, from `pg_controldata` (works stopped or running).
    pub fn system_identifier(&self) -> u64 {
        let out = self.controldata();
        let line = out
            .lines()
            .find(|l| l.starts_with("Database system identifier:"))
            .unwrap_or_else(|| panic!("no system identifier in:\n{out}"));
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    }

    /// `pg_controldata`'s report.
    pub fn controldata(&self) -> String {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(&self.data);
        let out = run_timeout(cmd, SQL_TIMEOUT);
        assert!(
            out.status.success(),
            "pg_controldata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The timeline the server runs on.
    pub fn timeline(&self) -> u32 {
        self.psql("select timeline_id from pg_control_checkpoint()")
            .parse()
            .unwrap()
    }

    pub fn archiver_stats(&self) -> ArchiverStats {
        let row = self.psql(
            "select archived_count, coalesce(last_archived_wal, ''), \
             coalesce(last_archived_time::text, ''), failed_count, \
             coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') \
             from pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f.len(), 6, "pg_stat_archiver: {row:?}");
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ArchiverStats {
            archived_count: f[0].parse().unwrap(),
            last_archived_wal: opt(f[1]),
            last_archived_time: opt(f[2]),
            failed_count: f[3].parse().unwrap(),
            last_failed_wal: opt(f[4]),
            last_failed_time: opt(f[5]),
        }
    }

    /// Whether WAL file `segment` has been archived: its `.done` mark in
    /// pg_wal/archive_status, or `last_archived_wal` at or past it (the mark goes once the
    /// segment is recycled).
    pub fn is_archived(&self, segment: &str) -> bool {
        let status = self.data.join("pg_wal/archive_status");
        if status.join(format!("{segment}.done")).exists() {
            return true;
        }
        let stats = self.archiver_stats();
        stats
            .last_archived_wal
            .is_some_and(|last| last.len() == 24 && segment.len() == 24 && last.as_str() >= segment)
    }

    /// Waits until `target` — a WAL file name, or an LSN (`X/Y`, meaning the segment that
    /// holds it) — is archived. Panics after `timeout` with the archiver's statistics and
    /// the log's tail (where a failing archive_command reports).
    pub fn wait_archived(&self, target: &str, timeout: Duration) -> ArchiverStats {
        let segment = if target.contains('/') {
            self.walfile_name(target)
        } else {
            target.to_string()
        };
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_archived(&segment) {
                return self.archiver_stats();
            }
            if Instant::now() >= deadline {
                panic!(
                    "{segment} not archived within {timeout:?}: {:?}\n{}",
                    self.archiver_stats(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Switches WAL and waits until the finished segment is archived; returns its name.
    pub fn switch_and_archive(&self, timeout: Duration) -> String {
        let lsn = self.switch_wal();
        let segment = self.walfile_name(&lsn);
        self.wait_archived(&segment, timeout);
        segment
    }

    /// Waits until archiving has failed at least `failures` times in all.
    pub fn wait_archive_failures(&self, failures: i64, timeout: Duration) -> ArchiverStats {
        wait_for("archive_command failures", timeout, || {
            let s = self.archiver_stats();
            (s.failed_count >= failures).then_some(s)
        })
    }

    /// `pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> bool {
        self.psql("select pg_is_in_recovery()") == "t"
    }

    /// Waits until recovery has ended (the server accepts writes). Panics after `timeout`,
    /// or if the server exits (e.g. recovery failed), with the log's tail.
    pub fn wait_recovery_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_psql("select pg_is_in_recovery()") {
                Ok(r) if r == "f" => return,
                _ if !self.is_running() => {
                    panic!("server exited during recovery:\n{}", self.log_tail(40))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                panic!(
                    "recovery did not end within {timeout:?}:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a restored cluster and waits until its recovery has ended.
    pub fn start_recovered(&mut self, timeout: Duration) {
        self.start();
        self.wait_recovery_end(timeout);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running && !self.is_running() {
            return;
        }
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pg_ctl_stop("immediate", Duration::from_secs(10))
        }))
        .unwrap_or(false);
        if !stopped || self.is_running() {
            let _ = self.kill_all(Duration::from_secs(10));
        }
    }
}

/// (state, ppid) of a process, from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is alive (a zombie is not: PID 1 in a container may never reap it).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Runs `cmd` with its output going to a temporary file rather than a pipe (so that no
/// server process that might inherit it can keep us waiting), killing it after `timeout`.
/// Returns the exit status and the output.
fn run_timeout_to_file(mut cmd: Command, timeout: Duration) -> (std::process::ExitStatus, String) {
    let what = format!("{cmd:?}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.reopen().unwrap())
        .stderr(file.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, std::fs::read_to_string(file.path()).unwrap_or_default());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The size of a file (for checks on archived WAL).
pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .size()
}
