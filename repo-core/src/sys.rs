//! Small facts about the local system.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use nix::unistd::{Gid, Group, Uid, User};

pub use crate::id::fill_random;

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

pub fn username() -> String {
    user_name(nix::unistd::getuid().as_raw()).unwrap_or_else(|| nix::unistd::getuid().to_string())
}

type Memo<K, V> = Mutex<HashMap<K, Option<V>>>;

/// Looks a key up once: each lookup reads the account databases, and a backup asks for the
/// owner of every entry it saves, a restore for the id of every owner name it applies.
fn cached<K, Q, V>(
    cache: &'static OnceLock<Memo<K, V>>,
    key: &Q,
    lookup: impl FnOnce(&Q) -> Option<V>,
) -> Option<V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    let map = cache.get_or_init(Default::default);
    if let Some(hit) = map.lock().ok().and_then(|m| m.get(key).cloned()) {
        return hit;
    }
    let value = lookup(key);
    if let Ok(mut m) = map.lock() {
        m.insert(key.to_owned(), value.clone());
    }
    value
}

pub fn user_name(uid: u32) -> Option<String> {
    static CACHE: OnceLock<Memo<u32, String>> = OnceLock::new();
    cached(&CACHE, &uid, |uid| {
        User::from_uid(Uid::from_raw(*uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

pub fn group_name(gid: u32) -> Option<String> {
    static CACHE: OnceLock<Memo<u32, String>> = OnceLock::new();
    cached(&CACHE, &gid, |gid| {
        Group::from_gid(Gid::from_raw(*gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    })
}

pub fn uid_of(name: &str) -> Option<u32> {
    static CACHE: OnceLock<Memo<String, u32>> = OnceLock::new();
    cached(&CACHE, name, |name| {
        User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
    })
}

pub fn gid_of(name: &str) -> Option<u32> {
    static CACHE: OnceLock<Memo<String, u32>> = OnceLock::new();
    cached(&CACHE, name, |name| {
        Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What identifies a running process beyond its pid: the kernel it runs on (boot id), the
/// pid namespace its pid belongs to, and its start time (which tells a reused pid apart).
/// Each part is `None` where it cannot be read (no `/proc`), and a lease then never ends
/// before its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub boot_id: Option<String>,
    pub pid_namespace: Option<String>,
    pub start_ticks: Option<u64>,
}

/// This process's identity, read once.
pub fn process_identity() -> &'static ProcessIdentity {
    static ME: OnceLock<ProcessIdentity> = OnceLock::new();
    ME.get_or_init(|| ProcessIdentity {
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        pid_namespace: std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        start_ticks: process_start_ticks(std::process::id()),
    })
}

/// When process `pid` (of this pid namespace) started, in clock ticks after boot: field 22
/// of `/proc/<pid>/stat`, counted after the command name, which may hold spaces and ')'.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); the start time is field 22.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this pid exists in this pid namespace. Only "no such process"
/// counts as absent: a process of another user answers EPERM and exists.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Asks the kernel to start writing `len` bytes of `f` from `offset` to storage now, without
/// waiting (Linux's `sync_file_range` with `SYNC_FILE_RANGE_WRITE`; `len` 0 means to the
/// end). It makes nothing durable: a caller that needs durability still syncs. A restore
/// uses it so that the disk works while later files are decrypted, and the final flush
/// finds little left to write. Best effort: a failure only loses the head start.
pub fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range reads no memory of ours; the descriptor stays open for the
    // call because `f` is borrowed across it.
    #[allow(unsafe_code)]
    let _ =
        unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}
