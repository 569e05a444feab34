//! A watchdog for `pg_basebackup`: once data has started to flow, a stream that then sends
//! nothing for a whole limit is given up on and the program killed.
//!
//! With `-X none`, PostgreSQL ends a base backup only after `archive_command` has archived
//! its last WAL segment, and waits for that as long as it takes (warning every minute). A
//! broken `archive_command` would therefore hold a nightly base backup forever. The limit
//! counts from the last byte received, never from the start: the checkpoint that begins a
//! backup (a spread one can take minutes) sends nothing, and is not a stall.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(200);

/// A reader that notes when it last gave bytes.
pub(crate) struct Watched<R> {
    inner: R,
    start: Instant,
    /// Milliseconds after `start` of the last read that gave bytes; 0 before the first.
    last: Arc<AtomicU64>,
}

impl<R> Watched<R> {
    pub(crate) fn new(inner: R, start: Instant, last: Arc<AtomicU64>) -> Self {
        Watched { inner, start, last }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms.max(1), Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Kills process `pid` when the watched stream has sent nothing for `limit` after its
/// first bytes. Must be finished before the process is reaped, so that the pid it may
/// signal is still the program's.
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(
        pid: u32,
        start: Instant,
        last: Arc<AtomicU64>,
        limit: Option<Duration>,
    ) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let Some(limit) = limit else {
            return Watchdog {
                stop,
                fired,
                thread: None,
            };
        };
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let (s, f) = (stop.clone(), fired.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let seen = last.load(Ordering::Relaxed);
                let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                if seen > 0 && now.saturating_sub(seen) > limit_ms {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    f.store(true, Ordering::Relaxed);
                    return;
                }
            }
        });
        Watchdog {
            stop,
            fired,
            thread: Some(thread),
        }
    }

    /// Stops watching; whether the program was killed for a stall.
    pub(crate) fn finish(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.fired.load(Ordering::Relaxed)
    }
}
