//! What the archiver needs from the filesystem: exclusion rules and turning `lstat` results
//! into tree nodes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind, Time, Xattr};
use crate::sys;

/// Exclusion rules. A pattern with a `/` is matched against the whole absolute path; one
/// without is matched against the entry's name at any depth (`*.tmp`, `node_modules`).
/// `**` crosses directories.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    by_path: Option<GlobSet>,
    by_name: Option<GlobSet>,
    /// A directory containing an entry of one of these names is left out.
    pub if_present: Vec<Vec<u8>>,
}

impl Excludes {
    pub fn new(patterns: &[String], if_present: &[String]) -> Result<Self> {
        let mut by_path = GlobSetBuilder::new();
        let mut by_name = GlobSetBuilder::new();
        let (mut np, mut nn) = (0, 0);
        for p in patterns {
            let p = p.trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let trimmed = p.trim_end_matches('/');
            let glob = Glob::new(trimmed)
                .map_err(|e| Error::invalid(format!("exclude pattern {p:?}: {e}")))?;
            if trimmed.contains('/') {
                by_path.add(glob);
                np += 1;
            } else {
                by_name.add(glob);
                nn += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>> {
            if n == 0 {
                return Ok(None);
            }
            b.build()
                .map(Some)
                .map_err(|e| Error::invalid(format!("exclude patterns: {e}")))
        };
        Ok(Excludes {
            by_path: build(by_path, np)?,
            by_name: build(by_name, nn)?,
            if_present: if_present.iter().map(|s| s.as_bytes().to_vec()).collect(),
        })
    }

    /// Reads patterns from a file: one per line, `#` starts a comment line.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading exclude file {}", path.display()), e))?;
        Ok(text
            .lines()
            .map(str::to_string)
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect())
    }

    pub fn excluded(&self, path: &Path) -> bool {
        if let Some(set) = &self.by_path {
            if set.is_match(path) {
                return true;
            }
        }
        if let (Some(set), Some(name)) = (&self.by_name, path.file_name()) {
            if set.is_match(Path::new(name)) {
                return true;
            }
        }
        false
    }
}

fn time(secs: i64, nsec: i64) -> Time {
    Time(secs, nsec.clamp(0, 999_999_999) as u32)
}

/// Builds a node from `lstat` metadata (content, subtree and link target are filled by the
/// caller). Extended attributes that cannot be read are skipped.
pub fn node_from_metadata(name: &[u8], path: &Path, meta: &std::fs::Metadata) -> Node {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    };
    let mut xattrs = Vec::new();
    if matches!(kind, NodeKind::File | NodeKind::Dir | NodeKind::Symlink) {
        if let Ok(names) = xattr::list(path) {
            for n in names {
                if let Ok(Some(value)) = xattr::get(path, &n) {
                    xattrs.push(Xattr {
                        name: n.as_bytes().to_vec(),
                        value,
                    });
                }
            }
        }
        xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: sys::user_name(meta.uid()),
        group: sys::group_name(meta.gid()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        atime: None,
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        size: if kind == NodeKind::File {
            meta.size()
        } else {
            0
        },
        inode: meta.ino(),
        device: meta.dev(),
        links: meta.nlink(),
        rdev: if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
            meta.rdev()
        } else {
            0
        },
        link_target: None,
        xattrs,
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    }
}

pub fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exclude_rules() {
        let ex = Excludes::new(
            &[
                "*.tmp".into(),
                "/data/cache/**".into(),
                "node_modules".into(),
            ],
            &[],
        )
        .unwrap();
        assert!(ex.excluded(Path::new("/a/b/x.tmp")));
        assert!(ex.excluded(Path::new("/data/cache/x/y")));
        assert!(ex.excluded(Path::new("/src/node_modules")));
        assert!(!ex.excluded(Path::new("/data/keep/x")));
        assert!(!ex.excluded(Path::new("/a/tmp")));
    }
}
