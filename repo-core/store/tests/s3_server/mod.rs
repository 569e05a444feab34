//! A real S3-compatible server on loopback for tests: `s3s-fs`, one process per test, on a
//! free port, serving a temporary folder (a bucket is a subfolder). It is killed when the
//! value is dropped.
//!
//! A missing `s3s-fs` fails the test with how to install it: the S3 tests are never skipped
//! silently (`scripts/test` installs it).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "cairn-test-access";
pub const SECRET_KEY: &str = "cairn-test-secret";
pub const BUCKET: &str = "bucket";

const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --features binary --locked";

pub struct S3Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The `s3s-fs` program: on PATH, else in cargo's bin folder.
fn program() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    let in_cargo = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"))
        .filter(|p| p.is_file());
    match on_path.or(in_cargo) {
        Some(p) => p,
        None if std::env::var_os("CI").is_some() => {
            panic!("CI: s3s-fs is missing; scripts/test installs it with `{INSTALL}`")
        }
        None => panic!(
            "the S3 tests need s3s-fs, a local S3-compatible server; install it with `{INSTALL}` (scripts/test does)"
        ),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl S3Server {
    /// Starts a server with one empty bucket, [`BUCKET`], and waits (at most 20 s) until it
    /// accepts connections. A port taken between choosing and binding makes the server exit;
    /// another port is tried then.
    pub fn start() -> S3Server {
        let program = program();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&program)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return S3Server { child, port, dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start on loopback");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The repository location of `prefix` in [`BUCKET`], as a user writes it.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3:{}/{BUCKET}/{prefix}", self.endpoint())
    }

    /// The folder that holds the objects of `prefix` (s3s-fs keeps each object as a file).
    pub fn folder(&self, prefix: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(prefix)
    }

    /// The data folder: a subfolder made here is a new bucket.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
