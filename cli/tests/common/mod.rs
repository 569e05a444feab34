//! Helpers for the CLI tests: an isolated home, cache and repository per test, and the
//! real `cairn` binary run with a clean environment.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

pub mod mount;
pub mod pg;
pub mod pg_archive;
pub mod profiles;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("password"), "correct horse\n").unwrap();
        Env { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// The environment of [`Env::bare`]: an isolated home and temporary folder, and fast
    /// password hashing.
    pub fn bare_vars(&self) -> Vec<(OsString, OsString)> {
        let p = |rel: &str| self.path(rel).into_os_string();
        vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
            ("HOME".into(), p("home")),
            ("XDG_CACHE_HOME".into(), p("home/.cache")),
            ("XDG_DATA_HOME".into(), p("home/.local/share")),
            ("XDG_CONFIG_HOME".into(), p("home/.config")),
            ("TZ".into(), "UTC".into()),
            ("TMPDIR".into(), p("tmp")),
            ("CAIRN_KDF_PARAMS".into(), "1024,1,1".into()),
            // Never the machine's /etc/cairn/config.toml.
            ("CAIRN_SYSTEM_CONFIG".into(), p("etc/cairn/config.toml")),
        ]
    }

    /// The environment of [`Env::cmd`]: [`Env::bare_vars`] plus this test's repository and
    /// password file. Also what a PostgreSQL `archive_command` running `cairn` needs.
    pub fn cmd_vars(&self) -> Vec<(OsString, OsString)> {
        let mut v = self.bare_vars();
        v.push(("CAIRN_REPOSITORY".into(), self.repo().into_os_string()));
        v.push((
            "CAIRN_PASSWORD_FILE".into(),
            self.path("password").into_os_string(),
        ));
        v
    }

    /// `cairn` with nothing configured but an isolated home and temporary folder, and fast
    /// password hashing.
    pub fn bare(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_clear().envs(self.bare_vars());
        c
    }

    /// `cairn` against this test's repository with its password.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_clear().envs(self.cmd_vars());
        c
    }

    pub fn init(&self) {
        self.cmd().arg("init").assert().success();
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with `--json` and expects success; returns the document printed, or the last
    /// line (`backup --json` writes status lines before its summary when it takes over a
    /// second).
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        last_json(self.ok(&a).as_bytes())
    }

    /// Runs and expects failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?}: stdout {} stderr {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        self.json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// A small source tree: a few files, a subfolder, a symlink.
    pub fn source(&self) -> PathBuf {
        let src = self.path("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
        std::fs::write(src.join("b.log"), "beta\n").unwrap();
        std::fs::write(src.join("sub/c.txt"), vec![b'c'; 200_000]).unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
        src
    }
}

/// The JSON document of `out`, or of its last line when it has several (see [`Env::json`]).
pub fn last_json(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(&text).unwrap_or_else(|_| {
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {text}"))
    })
}

/// Where a backed-up absolute path lands below a restore target.
pub fn restored(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

/// Every pack file of the repository's default tenant.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(repo.join("default/data")).unwrap() {
        for p in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(p.unwrap().path());
        }
    }
    out.sort();
    out
}

/// A tmpfs mounted for the life of the value (root only); unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m") at `dir`. Returns None when not root; in CI that
    /// is a failure, since CI runs as root and must exercise real mounts.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run as root to test real mounts"
            );
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cairn-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
