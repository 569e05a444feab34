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
