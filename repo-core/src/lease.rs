//! Leases: how running writers and prunes announce themselves, without any exclusive lock.
//!
//! A lease is a sealed object in `locks/` (AAD `cairn:lease`) saying who runs what and until
//! when. A holder refreshes it by writing a new lease and removing the previous one (objects
//! are immutable), every third of its time to live. A lease has ended when it is removed,
//! when its expiry has passed, or at once when it provably names a process of this kernel
//! and pid namespace that no longer runs (boot id, pid namespace and process start time all
//! recorded and matching; a host name or a bare pid proves nothing). Nothing ever needs a
//! manual unlock.
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

/// The leases this process holds, so that an interrupted process can remove them on its way
/// out ([`remove_held_leases`]) instead of leaving them to expire.
type Held = Vec<(Id, Store, Arc<Mutex<State>>)>;
static HELD: Mutex<Held> = Mutex::new(Vec::new());

/// Removes every lease this process holds from storage, for a process that is about to
/// exit because it was interrupted (the guards' own drops will not run). Best effort: a
/// lease that cannot be removed expires by itself.
pub fn remove_held_leases() {
    let held: Vec<(Store, String)> = match HELD.lock() {
        Ok(h) => h
            .iter()
            .filter_map(|(_, store, state)| {
                state.lock().ok().map(|s| (store.clone(), s.name.clone()))
            })
            .collect(),
        Err(_) => return,
    };
    for (store, name) in held {
        let _ = store.remove(FileType::Lock, &name);
    }
}

fn forget_held(holder: &Id) {
    if let Ok(mut h) = HELD.lock() {
        h.retain(|(id, _, _)| id != holder);
    }
}

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
    /// The holder's kernel (`/proc/sys/kernel/random/boot_id`). Absent in leases written
    /// before it was recorded, which then end only by expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The holder's pid namespace (`/proc/self/ns/pid`): a pid means nothing outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    /// The holder's start time in clock ticks after boot, which tells a reused pid apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

impl Lease {
    pub fn expires_at(&self) -> Option<jiff::Timestamp> {
        self.expires.parse().ok()
    }

    /// Whether the lease still holds at `now`: until its expiry, unless it provably names a
    /// process that has ended (see [`Lease::holder_has_ended`]).
    pub fn is_live(&self, now: jiff::Timestamp) -> bool {
        match self.expires_at() {
            Some(e) if e > now => !self.holder_has_ended(),
            _ => false,
        }
    }

    /// Whether the holder is known to have ended before its expiry. Only a lease taken in
    /// this very kernel (same boot id) and pid namespace, whose pid now names no process or
    /// a process that started at another time, qualifies. A host name proves nothing
    /// (containers and cloned machines share them), nor does a pid from another namespace,
    /// so every other lease, and every lease that lacks these facts, holds until it expires.
    pub fn holder_has_ended(&self) -> bool {
        let me = sys::process_identity();
        let same_kernel = self.boot_id.is_some() && self.boot_id == me.boot_id;
        let same_namespace = self.pid_namespace.is_some() && self.pid_namespace == me.pid_namespace;
        if self.host != sys::hostname() || !same_kernel || !same_namespace {
            return false;
        }
        if !sys::process_exists(self.pid) {
            return true;
        }
        match (self.pid_start, sys::process_start_ticks(self.pid)) {
            (Some(recorded), Some(now)) => recorded != now,
            // Exists, and it cannot be told apart: it may be the holder.
            _ => false,
        }
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
///
/// A refresh writes the new lease object before it removes the old one, so a listed object
/// that is gone when read may have been replaced by one the listing missed: then the leases
/// are listed again, until a listing reads every object it names. Otherwise a running
/// writer could look ended, and a sweep it holds back could run.
pub fn list(repo: &Repository) -> Result<Vec<(String, Lease)>> {
    const ATTEMPTS: usize = 10;
    for _ in 0..ATTEMPTS {
        if let Some(out) = list_once(repo)? {
            return Ok(out);
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("leases kept being replaced while they were listed ({ATTEMPTS} times); run again"),
    ))
}

/// One listing of the leases, or `None` when a listed object vanished before it was read.
fn list_once(repo: &Repository) -> Result<Option<Vec<(String, Lease)>>> {
    let mut out = Vec::new();
    for info in repo.store().list(FileType::Lock)? {
        let bytes = match repo.store().read(FileType::Lock, &info.name) {
            Ok(b) => b,
            // Released, or refreshed into an object this listing may have missed.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match open_meta::<Lease>(repo.keys(), AAD, &bytes, &format!("lease {}", info.name)) {
            Ok(l) => out.push((info.name, l)),
            Err(e) => tracing::warn!("ignoring lease: {e}"),
        }
    }
    out.sort_by(|a, b| a.1.started.cmp(&b.1.started));
    Ok(Some(out))
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
    /// The expiry written in the current lease object, which is what other processes judge
    /// by (on the wall clock, which also runs while the machine sleeps).
    expires: Option<jiff::Timestamp>,
    /// Whether a refresh came only after the lease had expired: the lease did not hold
    /// without a gap, even if it holds again.
    lapsed: bool,
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
        let me = sys::process_identity();
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
                boot_id: me.boot_id.clone(),
                pid_namespace: me.pid_namespace.clone(),
                pid_start: me.start_ticks,
            })
        };
        let store = repo.store().clone();
        let keys = repo.keys().clone();
        let first = make(jiff::Timestamp::now())?;
        let name = write_lease(&store, &keys, &first)?;
        let state = Arc::new(Mutex::new(State {
            name,
            valid_until: Instant::now() + ttl,
            expires: first.expires_at(),
            lapsed: false,
        }));
        if let Ok(mut h) = HELD.lock() {
            h.push((holder, store.clone(), state.clone()));
        }
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
                        let refreshed = make(jiff::Timestamp::now()).and_then(|l| {
                            write_lease(&store, &keys, &l).map(|n| (n, l.expires_at()))
                        });
                        match refreshed {
                            Ok((new_name, expires)) => {
                                let old = match state.lock() {
                                    Ok(mut s) => {
                                        // In place only after the previous one expired: a
                                        // sweep may have run in between.
                                        if Instant::now() >= s.valid_until
                                            || s.expires.is_none_or(|e| jiff::Timestamp::now() >= e)
                                        {
                                            s.lapsed = true;
                                        }
                                        s.valid_until = last + ttl;
                                        s.expires = expires;
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
    /// machine that slept) must re-check condemned packs before it commits, also when a
    /// later refresh made the lease hold again. Judged on the monotonic clock and on the
    /// wall clock the lease's expiry is written in (the monotonic clock stops while the
    /// machine sleeps; other processes judge by the wall clock).
    pub fn held(&self) -> bool {
        self.state
            .lock()
            .map(|s| {
                !s.lapsed
                    && Instant::now() < s.valid_until
                    && s.expires.is_some_and(|e| jiff::Timestamp::now() < e)
            })
            .unwrap_or(false)
    }

    /// Removes the lease (also done on drop).
    pub fn release(mut self) -> Result<()> {
        self.stop_refresher();
        forget_held(&self.holder);
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
            forget_held(&self.holder);
            let name = self.name();
            let _ = self.store.remove(FileType::Lock, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A lease as this process would write it, for `pid`.
    fn lease(pid: u32, expires_in: i64) -> Lease {
        let now = jiff::Timestamp::now();
        let me = sys::process_identity();
        Lease {
            kind: "backup".into(),
            host: sys::hostname(),
            pid,
            user: "u".into(),
            started: now.to_string(),
            expires: (now + jiff::SignedDuration::from_secs(expires_in)).to_string(),
            holder: Id::default(),
            nonce: Id::default(),
            boot_id: me.boot_id.clone(),
            pid_namespace: me.pid_namespace.clone(),
            pid_start: sys::process_start_ticks(pid),
        }
    }

    fn exited_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_lease_holds_until_expiry_and_ends_early_only_for_a_provably_gone_local_process() {
        let now = jiff::Timestamp::now();
        assert!(lease(std::process::id(), 60).is_live(now));
        assert!(!lease(std::process::id(), -1).is_live(now), "expired");
        // A process of this kernel and pid namespace that has exited ends its lease at once.
        let gone = exited_pid();
        assert!(!lease(gone, 600).is_live(now));
        // A live pid whose start time differs is a reused pid: the holder has ended.
        let mut reused = lease(std::process::id(), 600);
        reused.pid_start = reused.pid_start.map(|t| t + 1);
        assert!(!reused.is_live(now));
    }

    /// A backup in a container that shares the host name (another pid namespace), on a
    /// cloned machine (another boot id), or holding a lease written without these facts,
    /// must never be judged ended because its pid is absent here.
    #[test]
    fn a_pid_from_another_namespace_or_machine_never_ends_a_lease() {
        let now = jiff::Timestamp::now();
        let gone = exited_pid();
        let mut other_namespace = lease(gone, 600);
        other_namespace.pid_namespace = Some("pid:[1]".into());
        assert!(other_namespace.is_live(now));
        let mut other_kernel = lease(gone, 600);
        other_kernel.boot_id = Some("00000000-0000-0000-0000-000000000000".into());
        assert!(other_kernel.is_live(now));
        let mut old_format = lease(gone, 600);
        old_format.boot_id = None;
        old_format.pid_namespace = None;
        old_format.pid_start = None;
        assert!(old_format.is_live(now));
        let mut other_host = lease(gone, 600);
        other_host.host = "elsewhere".into();
        assert!(other_host.is_live(now));
    }
}
