//! Where a password comes from: a file's first line, a command's first line of output, the
//! environment or a terminal prompt. Every source refuses an empty password with an error that
//! says so (an empty password is a misconfiguration, not a wrong password), and a password
//! command is given a bounded time.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// How long a password command may run when nothing else is configured.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A password command's output is drained whatever its size, but only this much is kept.
const MAX_COMMAND_OUTPUT: usize = 64 * 1024;

fn first_line(bytes: &[u8]) -> Vec<u8> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

fn nonempty(pw: Vec<u8>, source: impl FnOnce() -> String) -> Result<Vec<u8>> {
    if pw.is_empty() {
        bail!("empty password: {}", source());
    }
    Ok(pw)
}

/// The first line of a password file.
pub fn from_file(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    nonempty(first_line(&bytes), || {
        format!("the first line of {} is empty", path.display())
    })
}

/// The password from `CAIRN_PASSWORD`, if set.
pub fn from_env() -> Result<Option<Vec<u8>>> {
    let Some(pw) = std::env::var_os("CAIRN_PASSWORD") else {
        return Ok(None);
    };
    let pw = std::os::unix::ffi::OsStrExt::as_bytes(pw.as_os_str()).to_vec();
    nonempty(pw, || "CAIRN_PASSWORD is set but empty".to_string()).map(Some)
}

/// A password typed on the terminal.
pub fn prompt(prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    let pw = rpassword::prompt_password(prompt)?;
    if pw.is_empty() {
        bail!("empty password: nothing was typed");
    }
    if confirm {
        let again = rpassword::prompt_password("Enter the password again: ")?;
        if again != pw {
            bail!("the passwords do not match");
        }
    }
    Ok(pw.into_bytes())
}

/// Runs `sh -c cmd` and takes the first line of what it prints as the password.
///
/// Contract: the command prints the password and exits 0, within `timeout`. Its standard
/// output is read on another thread while it runs, so a command that prints much cannot block
/// on a full pipe. A command that exits non-zero is refused even when it printed something. A
/// command still running at the bound is killed and the run fails, even when it has printed a
/// password already: a command that does not exit is broken, and waiting for it would hang
/// cairn (processes it started in the background are not waited for and not killed). Standard
/// input is closed; standard error is the terminal's, so the command may talk to the user
/// there (or on /dev/tty).
pub fn from_command(cmd: &str, timeout: Duration) -> Result<Vec<u8>> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running password command {cmd:?}"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("password command {cmd:?}: no output pipe"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        let result = loop {
            match stdout.read(&mut buf) {
                Ok(0) => break Ok(kept),
                Ok(n) => {
                    let room = MAX_COMMAND_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let _ = tx.send(result);
    });
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for password command {cmd:?}"))?
        {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "password command {cmd:?} did not exit within {} s and was stopped; a password command must print the password and exit (the bound is set with --password-command-timeout or CAIRN_PASSWORD_COMMAND_TIMEOUT)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("password command {cmd:?} failed ({status})");
    }
    // The reader sees the end of the output once the command and everything it started have
    // closed it; a moment after the exit is allowed even at the bound.
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let output = match rx.recv_timeout(grace) {
        Ok(r) => r.with_context(|| format!("reading the output of password command {cmd:?}"))?,
        Err(_) => bail!(
            "password command {cmd:?} exited, but a process it started keeps its output open; a password command must not leave processes holding its output"
        ),
    };
    nonempty(first_line(&output), || {
        format!("password command {cmd:?} printed nothing on its first line")
    })
}
