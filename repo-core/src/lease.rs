//! Leases: how running writers and prunes announce themselves, without any exclusive lock.
//!
//! A lease is a sealed object in `locks/` (AAD `cairn:lease`) saying who runs what and until
//! when. A holder refreshes it by writing a new lease and removing the previous one (objects
//! are immutable), every third of its time to live. A lease has ended when it is removed,
//! when its expiry has passed, or at once when it was taken on this host by a process that
//! no longer exists. Nothing ever needs a manual unlock.
//!
//! Writers take their lease before they read the index, so that a prune's mark phase, which
//! lists leases after writing its condemned record, sees every writer that might have read
//! the index before the record existed (docs/design.md, "Garbage collection").

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backend::{FileType, Store};
use crate::crypto::Keys;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{open_meta, seal_meta};
use crate::id::Id;
use crate::repository::Repository;
use crate::sys;

const AAD: &[u8] = b"cairn:lease";

/// Default time to live: long enough for a slow upload between refreshes, short enough that
/// a crashed writer on another host delays space reclamation by at most this much.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// `backup`, `prune`, ...
    pub kind: String,
    pub host: String,
    pub pid: u32,
    pub user: String,
    /// When the holder started (RFC 3339).
    pub started: String,
    /// When this lease ends unless refreshed (RFC 3339).
    pub expires: String,
    /// The same for every refresh of one holder's lease; names change on each refresh.
    pub holder: Id,
    /// Makes every lease object unique.
    pub nonce: Id,
}

impl Lease {
    pub fn expires_at(&self) -> Option<jiff::Timestamp> {
        self.expires.parse().ok()
    }

    /// Whether the lease still holds at `now`.
    pub fn is_live(&self, now: jiff::Timestamp) -> bool {
        match self.expires_at() {
            Some(e) if e > now => {}
            _ => return false,
        }
        if self.host == sys::hostname() {
            return process_exists(self.pid);
        }
        true
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        // EPERM: it exists but belongs to someone else.
        Err(_) => true,
    }
}

fn write_lease(store: &Store, keys: &Keys, lease: &Lease) -> Result<String> {
    let sealed = seal_meta(keys, AAD, lease)?;
    let name = Id::of_bytes(&sealed).to_hex();
    store.put(FileType::Lock, &name, Bytes::from(sealed))?;
    Ok(name)
}

/// Every lease in the repository with its object name. Unreadable lease objects are
/// reported as warnings and left out (they cannot be honoured, and they expire nowhere).
pub fn list(repo: &Repository) -> Result<Vec<(String, Lease)>> {
    let mut out = Vec::new();
    for info in repo.store().list(FileType::Lock)? {
        let bytes = match repo.store().read(FileType::Lock, &info.name) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // refreshed meanwhile
            Err(e) => return Err(e),
        };
        match open_meta::<Lease>(repo.keys(), AAD, &bytes, &format!("lease {}", info.name)) {
            Ok(l) => out.push((info.name, l)),
            Err(e) => tracing::warn!("ignoring lease: {e}"),
        }
    }
    out.sort_by(|a, b| a.1.started.cmp(&b.1.started));
    Ok(out)
}

/// The leases that hold now.
pub fn live(repo: &Repository) -> Result<Vec<(String, Lease)>> {
    let now = jiff::Timestamp::now();
    Ok(list(repo)?
        .into_iter()
        .filter(|(_, l)| l.is_live(now))
        .collect())
}

struct State {
    name: String,
    /// When the current lease object stops holding.
    valid_until: Instant,
}

/// A held lease, refreshed in the background and removed when dropped.
pub struct LeaseGuard {
    store: Store,
    state: Arc<Mutex<State>>,
    stop: std::sync::mpsc::Sender<()>,
    refresher: Option<JoinHandle<()>>,
    holder: Id,
}

impl LeaseGuard {
    /// Publishes a lease of `kind` and starts refreshing it.
    pub fn acquire(repo: &Repository, kind: &str) -> Result<LeaseGuard> {
        let ttl = repo.lease_ttl();
        let started = jiff::Timestamp::now();
        let kind = kind.to_string();
        let kind_for_lease = kind.clone();
        let holder = Id::random()?;
        let make = move |now: jiff::Timestamp| -> Result<Lease> {
            let expires = now
                .checked_add(
                    jiff::SignedDuration::try_from(ttl)
                        .map_err(|e| Error::invalid(format!("lease time: {e}")))?,
                )
                .map_err(|e| Error::invalid(format!("lease time: {e}")))?;
            Ok(Lease {
                kind: kind_for_lease.clone(),
                host: sys::hostname(),
                pid: std::process::id(),
                user: sys::username(),
                started: started.to_string(),
                expires: expires.to_string(),
                holder,
                nonce: Id::random()?,
            })
        };
        let store = repo.store().clone();
        let keys = repo.keys().clone();
        let name = write_lease(&store, &keys, &make(jiff::Timestamp::now())?)?;
        let state = Arc::new(Mutex::new(State {
            name,
            valid_until: Instant::now() + ttl,
        }));
        // The refresher waits on this channel: a message or the sender's drop stops it at
        // once, so releasing a lease never waits for a polling interval.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let refresher = {
            let (store, state) = (store.clone(), state.clone());
            std::thread::Builder::new()
                .name("cairn-lease".into())
                .spawn(move || {
                    let every = (ttl / 3).max(Duration::from_millis(200));
                    let mut last = Instant::now();
                    loop {
                        let wait = every.saturating_sub(last.elapsed());
                        match stopped.recv_timeout(wait) {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        last = Instant::now();
                        let refreshed = make(jiff::Timestamp::now())
                            .and_then(|l| write_lease(&store, &keys, &l));
                        match refreshed {
                            Ok(new_name) => {
                                let old = match state.lock() {
                                    Ok(mut s) => {
                                        s.valid_until = last + ttl;
                                        std::mem::replace(&mut s.name, new_name)
                                    }
                                    Err(_) => return,
                                };
                                let _ = store.remove(FileType::Lock, &old);
                            }
                            Err(e) => tracing::warn!("cannot refresh the {kind} lease: {e}"),
                        }
                    }
                })
                .ok()
        };
        Ok(LeaseGuard {
            store,
            state,
            stop,
            refresher,
            holder,
        })
    }

    pub fn holder(&self) -> Id {
        self.holder
    }

    /// The current lease object's name.
    pub fn name(&self) -> String {
        self.state
            .lock()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// Whether the lease has held without a gap so far. A writer whose lease lapsed (a
    /// machine that slept) must re-check condemned packs before it commits.
    pub fn held(&self) -> bool {
        self.state
            .lock()
            .map(|s| Instant::now() < s.valid_until)
            .unwrap_or(false)
    }

    /// Removes the lease (also done on drop).
    pub fn release(mut self) -> Result<()> {
        self.stop_refresher();
        let name = self.name();
        self.store.remove(FileType::Lock, &name)
    }

    fn stop_refresher(&mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.refresher.is_some() {
            self.stop_refresher();
            let name = self.name();
            let _ = self.store.remove(FileType::Lock, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lease(pid: u32, host: &str, expires_in: i64) -> Lease {
        let now = jiff::Timestamp::now();
        Lease {
            kind: "backup".into(),
            host: host.into(),
            pid,
            user: "u".into(),
            started: now.to_string(),
            expires: (now + jiff::SignedDuration::from_secs(expires_in)).to_string(),
            holder: Id::default(),
            nonce: Id::default(),
        }
    }

    #[test]
    fn liveness() {
        let now = jiff::Timestamp::now();
        assert!(lease(std::process::id(), &sys::hostname(), 60).is_live(now));
        assert!(
            !lease(std::process::id(), &sys::hostname(), -1).is_live(now),
            "expired"
        );
        // A process that has exited ends its lease at once on this host...
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!lease(pid, &sys::hostname(), 600).is_live(now));
        // ...but another host's pid means nothing here: only expiry ends it.
        assert!(lease(pid, "elsewhere", 600).is_live(now));
    }
}
