//! A real `cairn mount` for the mount tests: started as a child process, waited for in the
//! mount table, and unmounted (or killed and cleaned up) when dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Env;

/// Whether real FUSE mounts can be tested: as root, with /dev/fuse and fusermount3. Under CI
/// a missing piece is a failure (scripts/test installs fuse3).
pub fn fuse_available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let device = Path::new("/dev/fuse").exists();
    let helper = std::process::Command::new("fusermount3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && device && helper {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the mount tests need root, /dev/fuse and fusermount3 under CI (root {root}, /dev/fuse {device}, fusermount3 {helper})"
    );
    false
}

/// Whether `point` is listed in the mount table.
pub fn is_mounted(point: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = point.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Polls `done` every 50 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

pub struct Mounted {
    pub point: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mounted {
    /// Runs `cairn mount POINT ARGS...` against `env`'s repository and waits for the mount.
    pub fn start(env: &Env, point: &Path, args: &[&str]) -> Mounted {
        Mounted::start_with(env.cmd_vars(), env.dir.path(), point, args)
    }

    /// Runs `cairn mount POINT ARGS...` with the environment `vars` (repository and
    /// credentials), its output in `logs`, and waits for the mount.
    pub fn start_with(
        vars: Vec<(OsString, OsString)>,
        logs: &Path,
        point: &Path,
        args: &[&str],
    ) -> Mounted {
        // A dead mount may be there already (the mount is to clean it up).
        let _ = std::fs::create_dir(point);
        let log = logs.join(format!(
            "mount-{}.log",
            point.file_name().unwrap().to_string_lossy()
        ));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env_clear()
            .envs(vars)
            .arg("mount")
            .arg(point)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted {
            point: point.to_path_buf(),
            log,
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(60), || {
            if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("cairn mount exited early ({status}): {}", m.stderr());
            }
            // Its own line, not the mount table: a dead mount of the same folder is listed
            // there, and its entries may still be in the kernel's cache.
            m.stderr().contains(" mounted on ") && is_mounted(point)
        });
        assert!(up, "the mount did not come up: {}", m.stderr());
        m
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits up to 30 s for the mount process to end; its exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the mount process");
        let mut status = None;
        let ended = wait_until(Duration::from_secs(30), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if !ended {
            let _ = child.kill();
            panic!("the mount process did not end: {}", self.stderr());
        }
        status.unwrap()
    }

    /// Unmounts with `fusermount3 -u`, as a user would from outside, and expects the mount
    /// process to end with exit code 0.
    pub fn unmount_from_outside(&mut self) {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.point)
            .status()
            .unwrap();
        assert!(st.success(), "fusermount3 -u {}", self.point.display());
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.stderr());
    }

    /// Sends `signal` to the mount process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Kills the mount process with SIGKILL, leaving its mount behind.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the mount process");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let ended = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !ended {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.point) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.point)
                .status();
        }
    }
}
