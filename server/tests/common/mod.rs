//! What the server's integration tests share: the built binary on 127.0.0.1:0, a raw HTTP/1.1
//! client (raw so that paths reach the server exactly as written, with no client-side
//! normalisation of `..` or percent escapes), and users made with `cairn-server user add`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use sha2::Digest;

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn-server");

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub storage: PathBuf,
}

impl Server {
    /// Starts `cairn-server serve` on 127.0.0.1:0 with `extra` arguments and waits for its
    /// address line.
    pub fn start(storage: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--storage"])
            .arg(storage)
            .args(extra)
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting cairn-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the address line");
        let addr = line
            .trim()
            .strip_prefix("cairn-server listening on http://")
            .or_else(|| {
                line.trim()
                    .strip_prefix("cairn-server listening on https://")
            })
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            addr,
            storage: storage.to_path_buf(),
        }
    }

    /// A sender of uploads to `addr` usable from other threads: the status, or `None` when
    /// the server did not answer.
    pub fn req_to(addr: &str) -> impl Fn(&str, &str, &[u8]) -> Option<u16> + Send + 'static {
        let addr = addr.to_string();
        move |method, path, body| {
            Req {
                addr: addr.clone(),
                method: method.to_string(),
                path: path.to_string(),
                headers: Vec::new(),
                body: body.to_vec(),
                content_length: true,
            }
            .try_send()
            .map(|r| r.status)
        }
    }

    /// Waits (at most 10 s) for the server to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    pub fn req(&self, method: &str, path: &str) -> Req {
        Req {
            addr: self.addr.clone(),
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            content_length: true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request, built up and then sent on its own connection.
#[derive(Clone)]
pub struct Req {
    addr: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: bool,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Req {
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn auth(self, user: &str, password: &str) -> Req {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }

    pub fn body(mut self, body: &[u8]) -> Req {
        self.body = body.to_vec();
        self
    }

    pub fn without_content_length(mut self) -> Req {
        self.content_length = false;
        self
    }

    /// Sends the request; `None` when the connection failed (the server is gone).
    pub fn try_send(&self) -> Option<Resp> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.path, self.addr
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.content_length && (self.method == "POST" || !self.body.is_empty()) {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        s.write_all(&bytes).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        parse_response(&raw, self.method == "HEAD")
    }

    pub fn send(&self) -> Resp {
        self.try_send()
            .unwrap_or_else(|| panic!("{} {}: no answer", self.method, self.path))
    }

    /// Sends a request whose path holds raw bytes that are not UTF-8.
    pub fn send_raw_path(addr: &str, method: &str, path: &[u8], extra: &str) -> Resp {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut bytes = format!("{method} ").into_bytes();
        bytes.extend_from_slice(path);
        bytes.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
        );
        s.write_all(&bytes).expect("write");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw, method == "HEAD").expect("an answer")
    }
}

fn parse_response(raw: &[u8], head: bool) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body)?;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).ok()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
    None
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

pub fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// Adds a user with `cairn-server user add`, the password read from a file.
pub fn add_user(users: &Path, name: &str, access: &str, tenant: Option<&str>, password: &str) {
    let pw = users.with_extension(format!("{name}.pw"));
    std::fs::write(&pw, format!("{password}\n")).expect("password file");
    let mut cmd = Command::new(BIN);
    cmd.args(["user", "add", name, "--access", access, "--users"])
        .arg(users)
        .arg("--password-file")
        .arg(&pw);
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.output().expect("user add");
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&pw).expect("remove password file");
}

/// A program the tests need: `None` (the test is skipped, loudly) when it is missing, except
/// under CI, where a missing program fails the test.
pub fn need_program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required under CI (scripts/test installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}
