//! Trees: one blob per directory, listing its entries sorted by name (raw bytes, since Linux
//! names need not be UTF-8). The encoding is deterministic, so an unchanged directory yields
//! the same tree blob and is stored once.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::from_cbor;
use crate::id::Id;

/// Content ids of a file with more than this many chunks are spilled into separate
/// content-list blobs, keeping each tree blob small.
pub const INLINE_CONTENT_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
    Socket,
}

/// Seconds and nanoseconds since the Unix epoch (seconds may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Time(pub i64, pub u32);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mtime: Time,
    /// Not recorded by the archiver: reading a file changes it, so recording it would make
    /// every backup that reads a file store new trees. Restore uses mtime when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<Time>,
    pub ctime: Time,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub device: u64,
    #[serde(default)]
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub link_target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Data blob ids of a file, in order (when not spilled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Tree blobs holding the content ids of a large file, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_lists: Vec<Id>,
    /// The tree blob of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Node {
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// A spilled list of content ids (stored as a tree-kind blob).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContentList {
    pub ids: Vec<Id>,
}

impl ContentList {
    /// Decodes the plaintext of the content list blob `id`.
    pub fn decode(plain: &[u8], id: &Id) -> Result<ContentList> {
        from_cbor(plain, &format!("content list {id}"))
    }
}

impl Tree {
    /// Decodes the plaintext of the tree blob `id` and validates it (see [`Tree::validate`]).
    /// Every tree read from a repository is decoded here, so no reader walks a tree that a
    /// writer could not have made: a name that is unsafe, unsorted or repeated is `Corrupt`
    /// wherever the tree is read (restore, check, prune's mark, repair, `cat`).
    pub fn decode(plain: &[u8], id: &Id) -> Result<Tree> {
        let what = format!("tree {id}");
        let tree: Tree = from_cbor(plain, &what)?;
        tree.validate().map_err(|e| e.context(what))?;
        Ok(tree)
    }

    /// Sorts by name and rejects duplicate or unsafe names, so every tree is canonical and
    /// restore can never be led outside its target by a crafted name.
    pub fn canonicalize(&mut self) -> Result<()> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty()
                || n.name == b"."
                || n.name == b".."
                || n.name.contains(&b'/')
                || n.name.contains(&0)
            {
                return Err(Error::corrupt(format!(
                    "tree holds an unsafe name {:?}",
                    n.name_lossy()
                )));
            }
            if i > 0 && self.nodes[i - 1].name >= n.name {
                return Err(Error::corrupt(format!(
                    "tree is not sorted or repeats {:?}",
                    n.name_lossy()
                )));
            }
        }
        Ok(())
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}
