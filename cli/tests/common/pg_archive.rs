//! A Cairn repository that a test cluster archives into: everything (the repository, its
//! key file, a copy of `cairn`, home, cache) in one folder owned by the PostgreSQL user, and
//! every `cairn` run as that user, as archive_command and restore_command are.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::pg::{
    as_postgres, cairn_for_postgres, give_to_postgres, postgres_tempdir, run_timeout, Cluster,
};

const RUN: Duration = Duration::from_secs(300);

pub struct PgArchive {
    pub dir: tempfile::TempDir,
    /// The `cairn` the PostgreSQL user runs.
    pub cairn: PathBuf,
}

impl PgArchive {
    /// A new folder with a repository initialised with a key file.
    pub fn new() -> PgArchive {
        let dir = postgres_tempdir();
        for d in ["home", "tmp", "cache"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let cairn = cairn_for_postgres(dir.path());
        give_to_postgres(dir.path());
        let a = PgArchive { dir, cairn };
        let out = a.run(&["init"]);
        assert!(
            out.status.success(),
            "cairn init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn key(&self) -> PathBuf {
        self.path("repo.key")
    }

    /// An isolated home, temporary folder and cache, fast password hashing, UTC.
    pub fn base_vars(&self) -> Vec<(OsString, OsString)> {
        let p = |rel: &str| self.path(rel).into_os_string();
        vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
            ("HOME".into(), p("home")),
            ("XDG_CACHE_HOME".into(), p("home/.cache")),
            ("XDG_CONFIG_HOME".into(), p("home/.config")),
            ("TMPDIR".into(), p("tmp")),
            ("TZ".into(), "UTC".into()),
            ("CAIRN_KDF_PARAMS".into(), "1024,1,1".into()),
            ("CAIRN_CACHE_DIR".into(), p("cache")),
        ]
    }

    /// `cairn -r REPO --key-file KEY` as a command line for postgresql.conf.
    pub fn cairn_line(&self) -> String {
        format!(
            "{} -r {} --key-file {}",
            self.cairn.display(),
            self.repo().display(),
            self.key().display()
        )
    }

    pub fn archive_command(&self) -> String {
        format!("{} wal push %p", self.cairn_line())
    }

    /// `cairn` against this repository, as the test's own user, in this folder.
    pub fn cmd_as_caller(&self) -> Command {
        let mut c = Command::new(&self.cairn);
        c.env_clear()
            .envs(self.base_vars())
            .env("CAIRN_REPOSITORY", self.repo())
            .env("CAIRN_KEY_FILE", self.key())
            .current_dir(self.dir.path());
        c
    }

    /// `cairn` against this repository, as the PostgreSQL user, in this folder.
    pub fn cmd(&self) -> Command {
        let mut c = self.cmd_as_caller();
        as_postgres(&mut c);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_timeout(c, RUN)
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {}: exit {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn pg basebackup` of `pg` (fast checkpoint), with `--json`; its output parsed.
    pub fn basebackup(&self, pg: &Cluster) -> serde_json::Value {
        let port = pg.port.to_string();
        let host = pg.socket_dir().display().to_string();
        let out = self.ok(&[
            "--json",
            "pg",
            "basebackup",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
        ]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `cairn pg restore --pgdata DIR ARGS...`; the data folder is handed to PostgreSQL's
    /// user first (its parent must be reachable).
    pub fn restore(&self, pgdata: &Path, args: &[&str]) -> Output {
        let mut all = vec!["pg", "restore", "--pgdata"];
        let dir = pgdata.display().to_string();
        all.push(&dir);
        all.extend_from_slice(args);
        self.run(&all)
    }
}
