//! The mount's inode numbers and what each names.
//!
//! An entry's number is a hash of its parent's number and its name, so that a folder listing
//! gives each entry the number a lookup of it will give, without remembering entries that
//! were only listed. Hard-linked files of one snapshot (a non-folder with a link count above
//! one) are numbered from their snapshot folder, device and original inode instead, so that
//! all their names show one inode, as they did on the source.
//!
//! The table holds only what the kernel has looked up and not yet forgotten: each lookup adds
//! one reference and the kernel's `forget` removes them, so memory follows the kernel's own
//! cache of entries, not the size of the snapshots. Two keys whose hashes collide are told
//! apart by the key each entry keeps; the second takes the next free number.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_repo::format::tree::{Node, NodeKind};
use cairn_repo::Id;

/// The kernel's number for the mount's top folder.
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Debug, Clone)]
pub enum What {
    /// A folder of the layout, by its path ("" is the top).
    Folder(Vec<u8>),
    /// A link of the layout (`latest`), with its target.
    Link(Vec<u8>),
    /// A snapshot's root folder.
    SnapshotRoot { tree: Id, time: (i64, u32) },
    /// An entry inside a snapshot; `root` is the number of its snapshot folder.
    Node { node: Arc<Node>, root: u64 },
}

/// What identifies an inode, for telling colliding hashes apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Child { parent: u64, name: Vec<u8> },
    HardLink { root: u64, device: u64, inode: u64 },
}

impl Key {
    /// The key of `name` in folder `parent`, given the node when it is inside a snapshot.
    pub fn of(parent: u64, name: &[u8], node: Option<(&Node, u64)>) -> Key {
        match node {
            Some((n, root)) if n.kind != NodeKind::Dir && n.links > 1 => Key::HardLink {
                root,
                device: n.device,
                inode: n.inode,
            },
            _ => Key::Child {
                parent,
                name: name.to_vec(),
            },
        }
    }

    /// The number this key hashes to (never 0 or [`ROOT`]).
    pub fn number(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish().max(ROOT + 1)
    }
}

#[derive(Debug)]
pub struct Inode {
    pub what: What,
    pub parent: u64,
    key: Key,
    lookups: u64,
}

#[derive(Default)]
pub struct Inodes {
    map: Mutex<HashMap<u64, Inode>>,
}

impl Inodes {
    pub fn new() -> Inodes {
        let inodes = Inodes::default();
        inodes.lock().insert(
            ROOT,
            Inode {
                what: What::Folder(Vec::new()),
                parent: ROOT,
                key: Key::Child {
                    parent: 0,
                    name: Vec::new(),
                },
                lookups: 1,
            },
        );
        inodes
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Inode>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `ino` is and its parent's number.
    pub fn get(&self, ino: u64) -> Option<(What, u64)> {
        self.lock().get(&ino).map(|i| (i.what.clone(), i.parent))
    }

    /// The number `key` has now: the one it was given, or the one it would be given.
    pub fn number_of(&self, key: &Key) -> u64 {
        let map = self.lock();
        let mut n = key.number();
        loop {
            match map.get(&n) {
                Some(i) if i.key != *key => n = n.wrapping_add(1).max(ROOT + 1),
                _ => return n,
            }
        }
    }

    /// Records a lookup of `key`: one more reference to its inode, which is created (or
    /// refreshed with `what`) as needed. Returns its number.
    pub fn looked_up(&self, key: Key, parent: u64, what: What) -> u64 {
        let mut map = self.lock();
        let mut n = key.number();
        loop {
            match map.get_mut(&n) {
                Some(i) if i.key == key => {
                    i.lookups += 1;
                    i.what = what;
                    return n;
                }
                Some(_) => n = n.wrapping_add(1).max(ROOT + 1),
                None => {
                    map.insert(
                        n,
                        Inode {
                            what,
                            parent,
                            key,
                            lookups: 1,
                        },
                    );
                    return n;
                }
            }
        }
    }

    /// The kernel dropped `count` references to `ino`; the inode goes when none is left
    /// (the top folder stays).
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let mut map = self.lock();
        if let Some(i) = map.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(count);
            if i.lookups == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Inodes held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_counted_and_forgotten_inodes_go() {
        let inodes = Inodes::new();
        let key = Key::of(ROOT, b"snapshots", None);
        let n = inodes.looked_up(key.clone(), ROOT, What::Folder(b"snapshots".to_vec()));
        assert_eq!(
            inodes.number_of(&key),
            n,
            "a listing gives the looked-up number"
        );
        assert_eq!(
            inodes.looked_up(key, ROOT, What::Folder(b"snapshots".to_vec())),
            n
        );
        inodes.forget(n, 1);
        assert!(inodes.get(n).is_some());
        inodes.forget(n, 1);
        assert!(inodes.get(n).is_none());
        assert_eq!(inodes.len(), 1, "the top folder stays");
    }

    #[test]
    fn colliding_numbers_are_told_apart_by_their_keys() {
        let inodes = Inodes::new();
        let a = Key::of(ROOT, b"a", None);
        let n = inodes.looked_up(a.clone(), ROOT, What::Link(b"x".to_vec()));
        // Another key already holding `a`'s number: `a` takes the next one.
        let taken = Inodes::new();
        taken.lock().insert(
            n,
            Inode {
                what: What::Link(b"y".to_vec()),
                parent: ROOT,
                key: Key::of(ROOT, b"b", None),
                lookups: 1,
            },
        );
        let m = taken.looked_up(a.clone(), ROOT, What::Link(b"x".to_vec()));
        assert_ne!(m, n);
        assert_eq!(taken.number_of(&a), m);
    }
}
