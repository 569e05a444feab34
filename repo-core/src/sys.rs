//! Small facts about the local system.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use nix::unistd::{Gid, Group, Uid, User};

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

pub fn username() -> String {
    user_name(nix::unistd::getuid().as_raw()).unwrap_or_else(|| nix::unistd::getuid().to_string())
}

type NameCache = Mutex<HashMap<u32, Option<String>>>;

/// Looks a name up once per id: each lookup reads the account databases, and a backup asks
/// for the owner of every entry it saves.
fn cached(
    cache: &'static OnceLock<NameCache>,
    id: u32,
    lookup: impl FnOnce(u32) -> Option<String>,
) -> Option<String> {
    let map = cache.get_or_init(Default::default);
    if let Some(hit) = map.lock().ok().and_then(|m| m.get(&id).cloned()) {
        return hit;
    }
    let name = lookup(id);
    if let Ok(mut m) = map.lock() {
        m.insert(id, name.clone());
    }
    name
}

pub fn user_name(uid: u32) -> Option<String> {
    static CACHE: OnceLock<NameCache> = OnceLock::new();
    cached(&CACHE, uid, |uid| {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

pub fn group_name(gid: u32) -> Option<String> {
    static CACHE: OnceLock<NameCache> = OnceLock::new();
    cached(&CACHE, gid, |gid| {
        Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    })
}

pub fn uid_of(name: &str) -> Option<u32> {
    User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

pub fn gid_of(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
