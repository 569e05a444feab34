//! The progress layer of every command: one [`Bar`], the [`Progress`] of backup, restore,
//! check and prune. Events only add to counters (they come from many threads and must
//! return at once); a ticker thread renders them about five times a second as one line on
//! standard error when it is a terminal, and, for `backup --json`, writes a status line on
//! standard output about once a second, as restic does. A command with neither starts no
//! thread. The line is cleared at the end, before the command prints its result, so the
//! ticker is the only writer of standard output while it runs.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_repo::progress::{FileStatus, PackEvent, Progress};
use cairn_repo::Id;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::output::{human_bytes, write_line};

/// How often the terminal line is redrawn.
const TICK: Duration = Duration::from_millis(200);
/// How often `backup --json` writes a status line, at most.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How many files being read a status line lists, at most.
const CURRENT_FILES: usize = 8;

/// What a command's line shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A backup of files: totals from its walk ahead.
    Files,
    /// A backup of a stream: no totals, bytes and rate.
    Stream,
    /// Bytes against a total known at the start, if any (restore).
    Bytes(Option<u64>),
    /// Phases with counts of items and bytes (check, prune).
    Phases,
}

#[derive(Default)]
struct Phase {
    name: String,
    items: Option<u64>,
    bytes: Option<u64>,
    started: Option<Instant>,
}

/// The counters the events add to, and what the ticker reads.
struct State {
    kind: Kind,
    started: Instant,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    errors: AtomicU64,
    items_done: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    /// The walk ahead has reported at least once, and has finished.
    has_totals: AtomicBool,
    totals_done: AtomicBool,
    phase: Mutex<Phase>,
    /// Files being read, oldest first.
    current: Mutex<VecDeque<PathBuf>>,
}

/// A command's progress: a line on standard error when it is a terminal, status lines on
/// standard output for `backup --json`, nothing otherwise. Warnings are printed either way.
pub struct Bar {
    bar: Option<ProgressBar>,
    json_status: bool,
    state: Arc<State>,
    ticker: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    finished: AtomicBool,
    /// Print a line per file a backup is done with (`-vv`), as restic does.
    file_lines: bool,
}

impl Bar {
    /// Bytes, against `total` when it is known (restore, and the other commands that only
    /// count bytes); shown when `enabled` and standard error is a terminal.
    pub fn new(enabled: bool, total: Option<u64>) -> Bar {
        Bar::start(Kind::Bytes(total), enabled, false)
    }

    /// A backup: files and bytes done of the totals of a walk ahead (a stream's bytes and
    /// rate when `stream`), on a terminal when `enabled`; status lines on standard output
    /// when `json_status`.
    pub fn backup(enabled: bool, json_status: bool, stream: bool) -> Bar {
        let kind = if stream { Kind::Stream } else { Kind::Files };
        Bar::start(kind, enabled && !json_status, json_status)
    }

    /// The phases of a check or a prune, with their counts.
    pub fn phases(enabled: bool) -> Bar {
        Bar::start(Kind::Phases, enabled, false)
    }

    fn start(kind: Kind, enabled: bool, json_status: bool) -> Bar {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{wide_msg}") {
                bar.set_style(style);
            }
            bar
        });
        let state = Arc::new(State {
            kind,
            started: Instant::now(),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            items_done: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            has_totals: AtomicBool::new(false),
            totals_done: AtomicBool::new(false),
            phase: Mutex::new(Phase::default()),
            current: Mutex::new(VecDeque::new()),
        });
        let mut ticker = None;
        if bar.is_some() || json_status {
            let (tx, rx) = mpsc::channel::<()>();
            let (b, s) = (bar.clone(), state.clone());
            // Without the thread nothing is shown, and nothing else is lost.
            if let Ok(h) = std::thread::Builder::new()
                .name("cairn-progress".into())
                .spawn(move || tick(&rx, b.as_ref(), &s, json_status))
            {
                ticker = Some((tx, h));
            }
        }
        Bar {
            bar,
            json_status,
            state,
            ticker: Mutex::new(ticker),
            finished: AtomicBool::new(false),
            file_lines: false,
        }
    }

    /// Prints a line per file a backup is done with, on standard output: `new`, `modified`
    /// or `unchanged` and the path (`-vv`).
    pub fn with_file_lines(mut self, on: bool) -> Bar {
        self.file_lines = on;
        self
    }

    /// Stops the ticker and clears the line: call it before printing the result.
    pub fn finish(&self) {
        if self.finished.swap(true, Relaxed) {
            return;
        }
        let ticker = self
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((tx, handle)) = ticker {
            drop(tx);
            let _ = handle.join();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Whether anything shows the progress.
    fn shown(&self) -> bool {
        self.bar.is_some() || self.json_status
    }

    /// Whether the files being read are shown (a backup of files).
    fn shows_files(&self) -> bool {
        self.state.kind == Kind::Files && self.shown()
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for Bar {
    fn file(&self, path: &Path) {
        if !self.shows_files() {
            return;
        }
        let mut current = self
            .state
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.len() >= CURRENT_FILES {
            current.pop_front();
        }
        current.push_back(path.to_path_buf());
    }
    fn bytes(&self, n: u64) {
        self.state.bytes_done.fetch_add(n, Relaxed);
    }
    fn file_done(&self, path: &Path, status: FileStatus) {
        self.state.files_done.fetch_add(1, Relaxed);
        if self.shows_files() && status != FileStatus::Unchanged {
            let mut current = self
                .state
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = current.iter().position(|p| p == path) {
                current.remove(i);
            }
        }
        if !self.file_lines {
            return;
        }
        let word = match status {
            FileStatus::New => "new",
            FileStatus::Changed => "modified",
            FileStatus::Unchanged => "unchanged",
        };
        // Progress cannot fail the backup: a closed stdout only loses these lines (the
        // summary that follows reports it).
        let line = || {
            let _ = write_line(format_args!("{word:<10} {}", path.display()));
        };
        match &self.bar {
            Some(b) => b.suspend(line),
            None => line(),
        }
    }
    fn warn(&self, message: &str) {
        self.state.errors.fetch_add(1, Relaxed);
        self.println(&format!("warning: {message}"));
    }
    fn pack(&self, _pack: &Id, _event: PackEvent) {
        self.item();
    }
    fn phase(&self, name: &str, items: Option<u64>, bytes: Option<u64>) {
        let mut p = self
            .state
            .phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *p = Phase {
            name: name.to_string(),
            items,
            bytes,
            started: Some(Instant::now()),
        };
        self.state.items_done.store(0, Relaxed);
        self.state.bytes_done.store(0, Relaxed);
        drop(p);
        // Drawn at once: a phase shorter than a tick is still seen.
        if let Some(b) = &self.bar {
            b.set_message(self.state.line());
        }
    }
    fn item(&self) {
        self.state.items_done.fetch_add(1, Relaxed);
    }
    fn wants_totals(&self) -> bool {
        self.shows_files()
    }
    fn total(&self, files: u64, bytes: u64, done: bool) {
        self.state.total_files.store(files, Relaxed);
        self.state.total_bytes.store(bytes, Relaxed);
        self.state.has_totals.store(true, Relaxed);
        if done {
            self.state.totals_done.store(true, Relaxed);
        }
    }
}

/// The ticker: redraws the line every [`TICK`] and writes a status line every
/// [`STATUS_EVERY`], until the sender goes away.
fn tick(rx: &mpsc::Receiver<()>, bar: Option<&ProgressBar>, state: &State, json_status: bool) {
    let mut last_status = Instant::now();
    loop {
        match rx.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(b) = bar {
            b.set_message(state.line());
        }
        if json_status && last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            let mut line = state.status().to_string();
            line.push('\n');
            // One write of a whole line under the lock: never torn or interleaved. A closed
            // output only loses status lines; the summary reports it.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
    }
}

/// Seconds as `m:ss`, or `h:mm:ss` from an hour.
fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// A bar of `width` characters, `fraction` full.
fn gauge(fraction: f64, width: usize) -> String {
    let full = ((fraction.clamp(0.0, 1.0) * width as f64) as usize).min(width);
    let mut s = "=".repeat(full);
    if full < width {
        s.push('>');
        s.push_str(&" ".repeat(width - full - 1));
    }
    format!("[{s}]")
}

/// The seconds left to do `total` bytes when `done` took `elapsed`, at the same rate.
fn remaining(done: u64, total: u64, elapsed: Duration) -> Option<u64> {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs < 1.0 {
        return None;
    }
    let rate = done as f64 / secs;
    Some((total.saturating_sub(done) as f64 / rate).ceil() as u64)
}

fn fraction(done: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).min(1.0)
    }
}

impl State {
    /// Seconds left of a backup of files: once its walk ahead is done.
    fn backup_remaining(&self) -> Option<u64> {
        if !self.totals_done.load(Relaxed) {
            return None;
        }
        remaining(
            self.bytes_done.load(Relaxed),
            self.total_bytes.load(Relaxed),
            self.started.elapsed(),
        )
    }

    /// The terminal line.
    fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let mut line = format!("[{}]", clock(elapsed.as_secs()));
        let done = self.bytes_done.load(Relaxed);
        let rate = || human_bytes((done as f64 / elapsed.as_secs_f64().max(0.001)) as u64);
        match self.kind {
            Kind::Files => {
                let (files, total_files) = (
                    self.files_done.load(Relaxed),
                    self.total_files.load(Relaxed),
                );
                let total = self.total_bytes.load(Relaxed);
                // Totals still growing while the walk ahead runs: marked with `+`.
                let more = if self.totals_done.load(Relaxed) {
                    ""
                } else {
                    "+"
                };
                let f = fraction(done, total);
                // No gauge: the line fits 80 columns up to its ETA.
                line += &format!(
                    " {:5.1}% {files}/{total_files}{more} files {}/{}{more}",
                    f * 100.0,
                    human_bytes(done),
                    human_bytes(total),
                );
                let errors = self.errors.load(Relaxed);
                line += &format!(" {errors} errors");
                if let Some(s) = self.backup_remaining() {
                    line += &format!(" ETA {}", clock(s));
                }
                let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(p) = current.back() {
                    line += &format!(" {}", p.display());
                }
            }
            Kind::Stream => {
                line += &format!(
                    " {} {}/s {} errors",
                    human_bytes(done),
                    rate(),
                    self.errors.load(Relaxed)
                );
            }
            Kind::Bytes(Some(total)) => {
                let f = fraction(done, total);
                line += &format!(
                    " {:5.1}% {} {}/{} {}/s",
                    f * 100.0,
                    gauge(f, 10),
                    human_bytes(done),
                    human_bytes(total),
                    rate()
                );
                if let Some(s) = remaining(done, total, elapsed) {
                    line += &format!(" ETA {}", clock(s));
                }
            }
            Kind::Bytes(None) => {
                line += &format!(" {} {}/s", human_bytes(done), rate());
            }
            Kind::Phases => {
                let p = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
                let items = self.items_done.load(Relaxed);
                line += &format!(" {}", p.name);
                match p.items {
                    Some(n) => line += &format!(" {items} of {n}"),
                    None if items > 0 => line += &format!(" {items}"),
                    None => {}
                }
                if let Some(total) = p.bytes.filter(|t| *t > 0) {
                    let f = fraction(done, total);
                    line += &format!(
                        ", {:5.1}% {} {}/{}",
                        f * 100.0,
                        gauge(f, 10),
                        human_bytes(done),
                        human_bytes(total)
                    );
                    let took = p.started.map(|s| s.elapsed()).unwrap_or_default();
                    if let Some(s) = remaining(done, total, took) {
                        line += &format!(" ETA {}", clock(s));
                    }
                }
            }
        }
        line
    }

    /// A status line of `backup --json`, shaped as restic's.
    fn status(&self) -> Value {
        let mut m = Map::new();
        m.insert("message_type".into(), json!("status"));
        m.insert(
            "seconds_elapsed".into(),
            json!(self.started.elapsed().as_secs()),
        );
        let done = self.bytes_done.load(Relaxed);
        if self.kind == Kind::Files {
            if let Some(s) = self.backup_remaining() {
                m.insert("seconds_remaining".into(), json!(s));
            }
            let total = self.total_bytes.load(Relaxed);
            if self.has_totals.load(Relaxed) {
                m.insert("percent_done".into(), json!(fraction(done, total)));
                m.insert("total_files".into(), json!(self.total_files.load(Relaxed)));
                m.insert("total_bytes".into(), json!(total));
            }
        }
        m.insert("files_done".into(), json!(self.files_done.load(Relaxed)));
        m.insert("bytes_done".into(), json!(done));
        m.insert("error_count".into(), json!(self.errors.load(Relaxed)));
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        m.insert(
            "current_files".into(),
            current.iter().map(|p| json!(p.to_string_lossy())).collect(),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_and_gauges() {
        assert_eq!(clock(5), "0:05");
        assert_eq!(clock(3725), "1:02:05");
        assert_eq!(gauge(0.5, 4), "[==> ]");
        assert_eq!(gauge(1.0, 4), "[====]");
        assert_eq!(remaining(10, 30, Duration::from_secs(2)), Some(4));
        assert_eq!(remaining(0, 30, Duration::from_secs(2)), None);
    }
}
