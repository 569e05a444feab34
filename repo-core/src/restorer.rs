//! Restore: writing a snapshot's tree back to a local folder.
//!
//! Strategy. Two streaming passes over the snapshot's trees (memory holds one tree per level
//! of depth). The first pass only looks: with `--overwrite never` it collects existing paths
//! whose content differs from the snapshot and, if there are any, fails before anything is
//! changed. The second pass writes in batches that span folders (a few thousand entries or
//! 128 MiB): entries are decided in order and queued; a batch's new files are written in
//! parallel (large files fetch their blobs in parallel windows and are written in aligned
//! 1 MiB pieces; small files are grouped, their blobs fetched with coalesced reads per pack
//! while one thread creates the group's files, and each written with one vectored write),
//! and then each entry is finished in order and the folders' metadata applied. A file that replaces an existing entry is written under a temporary
//! name and renamed into place when complete; a file where nothing exists (always so in a
//! folder this restore created) is created exclusively under its own name. Either way a file
//! that fails (a full disk, a damaged blob) is removed at once, so an error never leaves a
//! partial file behind; a restore killed outright can, and a rerun with `--overwrite
//! if-changed` replaces it. Runs of zeros become holes. Hard links within the snapshot are
//! restored as links. Owner, mode, extended attributes and times are applied after content,
//! through the open descriptor for new files, and a directory's times after its entries
//! (writing into a directory changes its mtime).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use rayon::prelude::*;

use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::{Node, NodeKind, Time};
use crate::id::{BlobKind, Id};
use crate::repository::Repository;
use crate::walk::Excludes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse to restore when an existing entry differs (default).
    #[default]
    Never,
    /// Replace existing entries whose content differs; leave identical ones.
    IfChanged,
    /// Replace every existing entry.
    Always,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only paths matching these patterns (and what is below them).
    pub include: Option<Excludes>,
    pub exclude: Excludes,
    pub overwrite: Overwrite,
    /// Remove entries in restored directories that are not in the snapshot.
    pub delete: bool,
    /// Read every restored file back and check it against the snapshot.
    pub verify: bool,
}

pub trait RestoreProgress: Sync {
    fn file(&self, _path: &Path) {}
    fn bytes(&self, _n: u64) {}
}

pub struct NoRestoreProgress;
impl RestoreProgress for NoRestoreProgress {}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes_written: u64,
    pub files_unchanged: u64,
    pub hardlinks: u64,
    pub deleted: u64,
    pub verified: u64,
}

/// How one entry of a directory is restored.
enum Action {
    /// Sequentially, through `restore_entry` (special files and hard links).
    Entry { target: PathBuf, node: Node },
    /// A file already present with the snapshot's content: only its metadata is applied.
    Unchanged { target: PathBuf, node: Node },
    /// A new file whose content and metadata are written in parallel to `tmp`, renamed to
    /// `target` when finished, or straight to `target` when nothing is there to replace
    /// (`tmp` is `None`; the file is created exclusively, so nothing can be clobbered).
    Write {
        target: PathBuf,
        tmp: Option<PathBuf>,
        node: Node,
    },
}

/// Restore work collected across folders and carried out together by [`Restorer::flush`].
/// Writing the files of many folders in one parallel phase keeps the cores busy, where a
/// phase per folder waits at the end of every folder. Nothing of a batch is on disk before
/// it is flushed, so dropping one (after an error) leaves nothing behind.
#[derive(Default)]
struct Batch {
    /// Entries in restore order: contents are written in one parallel phase, then each
    /// entry is finished in this order (renames, hard links, special files).
    actions: Vec<Action>,
    /// Folders whose entries are all in this or an earlier batch, children before parents:
    /// their metadata is applied after the entries, since writing into a folder changes its
    /// times.
    dirs: Vec<(PathBuf, Node)>,
    /// File content the actions will write.
    bytes: u64,
}

/// A batch is flushed once it holds this many entries or folders ...
const BATCH_ENTRIES: usize = 2048;
/// ... or this much file content.
const BATCH_BYTES: u64 = 128 << 20;

impl Batch {
    fn is_full(&self) -> bool {
        self.actions.len() >= BATCH_ENTRIES
            || self.dirs.len() >= BATCH_ENTRIES
            || self.bytes >= BATCH_BYTES
    }

    /// Removes the temporary files of writes that were not renamed into place.
    fn remove_temporaries(actions: &[Action]) {
        for a in actions {
            if let Action::Write { tmp: Some(tmp), .. } = a {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

struct Restorer<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    progress: &'a dyn RestoreProgress,
    summary: RestoreSummary,
    /// (device, inode) of multiply-linked files already restored -> where.
    links: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
    conflicts: Vec<String>,
    conflict_count: usize,
    batch: Batch,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

fn timespec(t: Time) -> TimeSpec {
    TimeSpec::new(t.0, t.1 as i64)
}

/// Who a restored entry belongs to: the owner's name when it exists here, else the number.
fn owner_ids(node: &Node) -> (u32, u32) {
    let uid = node
        .user
        .as_deref()
        .and_then(crate::sys::uid_of)
        .unwrap_or(node.uid);
    let gid = node
        .group
        .as_deref()
        .and_then(crate::sys::gid_of)
        .unwrap_or(node.gid);
    (uid, gid)
}

/// Some filesystems or namespaces refuse some extended attributes; the content is what
/// matters most, so a refusal is a warning, not an error.
fn warn_xattr(path: &Path, name: &[u8], e: &std::io::Error) {
    tracing::warn!(
        "{}: cannot set extended attribute {:?}: {e}",
        path.display(),
        String::from_utf8_lossy(name)
    );
}

fn tmp_name(dir: &Path) -> Result<PathBuf> {
    let id = Id::random()?;
    Ok(dir.join(format!(".cairn-restore-{}.tmp", &id.to_hex()[..16])))
}

impl<'a> Restorer<'a> {
    fn selected(&self, snap_path: &Path, ancestor_selected: bool) -> (bool, bool) {
        // (restore this entry, descend into it)
        if self.opts.exclude.excluded(snap_path) {
            return (false, false);
        }
        match &self.opts.include {
            None => (true, true),
            Some(inc) => {
                let hit = ancestor_selected || inc.excluded(snap_path);
                (hit, true)
            }
        }
    }

    /// Whether the existing entry at `target` already equals `node`.
    fn matches_existing(&self, target: &Path, node: &Node, meta: &fs::Metadata) -> Result<bool> {
        let ft = meta.file_type();
        Ok(match node.kind {
            NodeKind::Dir => ft.is_dir(),
            NodeKind::Symlink => {
                ft.is_symlink()
                    && fs::read_link(target)
                        .map(|t| Some(t.as_os_str().as_bytes().to_vec()) == node.link_target)
                        .unwrap_or(false)
            }
            NodeKind::File => {
                ft.is_file() && meta.size() == node.size && file_matches(self.repo, target, node)?
            }
            NodeKind::Fifo => ft.is_fifo(),
            NodeKind::Chardev => ft.is_char_device() && meta.rdev() == node.rdev,
            NodeKind::Blockdev => ft.is_block_device() && meta.rdev() == node.rdev,
            NodeKind::Socket => ft.is_socket(),
        })
    }

    fn check_pass(
        &mut self,
        tree: &Id,
        snap_dir: &Path,
        target_dir: &Path,
        ancestor_selected: bool,
    ) -> Result<()> {
        let t = self.repo.load_tree(tree)?;
        for node in &t.nodes {
            let name = OsStr::from_bytes(&node.name);
            let snap_path = snap_dir.join(name);
            let target = target_dir.join(name);
            let (restore, descend) = self.selected(&snap_path, ancestor_selected);
            if restore {
                if let Ok(meta) = fs::symlink_metadata(&target) {
                    let replaceable = !(meta.is_dir() && node.kind != NodeKind::Dir);
                    let same = self.matches_existing(&target, node, &meta)?;
                    if !same && (self.opts.overwrite == Overwrite::Never || !replaceable) {
                        self.conflict_count += 1;
                        if self.conflicts.len() < 10 {
                            self.conflicts.push(target.display().to_string());
                        }
                    }
                }
            }
            if descend && node.kind == NodeKind::Dir {
                if let Some(sub) = &node.subtree {
                    if fs::symlink_metadata(&target)
                        .map(|m| m.is_dir())
                        .unwrap_or(false)
                    {
                        self.check_pass(sub, &snap_path, &target, restore)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores the entries of one tree into `target_dir`. Returns whether anything was
    /// restored (so that unselected parent directories are only created when needed).
    fn restore_tree(
        &mut self,
        tree: &Id,
        snap_dir: &Path,
        target_dir: &Path,
        ancestor_selected: bool,
        whole_dir: bool,
        fresh: bool,
    ) -> Result<bool> {
        let t = self.repo.load_tree(tree)?;
        let mut any = false;
        // Entries other than directories first (so that a hard link in a subdirectory finds
        // its first path complete), decided in order and queued in the batch.
        let mut created_dir = false;
        for node in t.nodes.iter().filter(|n| n.kind != NodeKind::Dir) {
            let name = OsStr::from_bytes(&node.name);
            let (restore, _) = self.selected(&snap_dir.join(name), ancestor_selected);
            if !restore {
                continue;
            }
            if !created_dir {
                fs::create_dir_all(target_dir).map_err(|e| io_err(target_dir, e))?;
                created_dir = true;
            }
            let action = self.decide(target_dir.join(name), node, fresh)?;
            if let Action::Write { node, .. } = &action {
                self.batch.bytes += node.size;
            }
            self.batch.actions.push(action);
            any = true;
        }
        if self.batch.is_full() {
            self.flush()?;
        }
        for node in t.nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
            let name = OsStr::from_bytes(&node.name);
            let snap_path = snap_dir.join(name);
            let target = target_dir.join(name);
            let (restore, descend) = self.selected(&snap_path, ancestor_selected);
            if !descend {
                continue;
            }
            // Below a folder this restore created, nothing exists yet either.
            let created = if restore {
                self.ensure_dir(&target)?
            } else {
                fresh
            };
            let inner = match &node.subtree {
                Some(sub) => {
                    self.restore_tree(sub, &snap_path, &target, restore, restore, created)?
                }
                None => false,
            };
            if restore || inner {
                if !restore {
                    self.ensure_dir(&target)?;
                }
                self.batch.dirs.push((target, node.clone()));
                self.summary.dirs += 1;
                any = true;
                if self.batch.is_full() {
                    self.flush()?;
                }
            }
        }
        if whole_dir && self.opts.delete {
            // Pending entries of this folder may still sit under temporary names.
            self.flush()?;
            self.delete_extra(target_dir, &t.nodes)?;
        }
        Ok(any)
    }

    /// Carries out the batch: writes the new files' contents in parallel, finishes every
    /// entry in order, then applies the folders' metadata. On an error, files under
    /// temporary names are removed (failed files already removed themselves, see `NewFile`).
    fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let writes: Vec<(&PathBuf, &Node)> = batch
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Write { tmp, target, node } => Some((tmp.as_ref().unwrap_or(target), node)),
                _ => None,
            })
            .collect();
        let written = write_files(self.repo, &writes, self.is_root, self.progress);
        if let Some(e) = written.iter().find_map(|r| r.as_ref().err()) {
            let e = Error::new(e.kind(), e.to_string());
            Batch::remove_temporaries(&batch.actions);
            return Err(e);
        }
        self.summary.bytes_written += written
            .iter()
            .map(|r| r.as_ref().map(|n| *n).unwrap_or(0))
            .sum::<u64>();
        for (k, action) in batch.actions.iter().enumerate() {
            if let Err(e) = self.finish_action(action) {
                Batch::remove_temporaries(&batch.actions[k..]);
                return Err(e);
            }
        }
        for (dir, node) in &batch.dirs {
            self.apply_metadata(dir, node)?;
        }
        Ok(())
    }

    /// Makes `target` a directory; returns whether it was created (and so is empty).
    fn ensure_dir(&mut self, target: &Path) -> Result<bool> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => Ok(false),
            Ok(_) => {
                fs::remove_file(target).map_err(|e| io_err(target, e))?;
                fs::create_dir(target).map_err(|e| io_err(target, e))?;
                Ok(true)
            }
            Err(_) => {
                fs::create_dir_all(target).map_err(|e| io_err(target, e))?;
                Ok(true)
            }
        }
    }

    fn delete_extra(&mut self, dir: &Path, nodes: &[Node]) -> Result<()> {
        let keep: HashSet<&[u8]> = nodes.iter().map(|n| n.name.as_slice()).collect();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(_) => return Ok(()),
        };
        for entry in rd {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            if keep.contains(name.as_bytes()) {
                continue;
            }
            let p = entry.path();
            let r = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|e| io_err(&p, e))?;
            self.summary.deleted += 1;
        }
        Ok(())
    }

    fn restore_entry(&mut self, target: &Path, node: &Node) -> Result<()> {
        let existing = fs::symlink_metadata(target).ok();
        if let Some(meta) = &existing {
            if self.opts.overwrite != Overwrite::Always
                && self.matches_existing(target, node, meta)?
            {
                if node.kind == NodeKind::File {
                    self.summary.files_unchanged += 1;
                    self.remember_link(target, node);
                }
                return self.apply_metadata(target, node);
            }
        }
        // Hard links: a second path to an inode already restored becomes a link.
        if node.kind == NodeKind::File && node.links > 1 {
            if let Some(first) = self.links.get(&(node.device, node.inode)).cloned() {
                if existing.is_some() {
                    fs::remove_file(target).map_err(|e| io_err(target, e))?;
                }
                fs::hard_link(&first, target).map_err(|e| io_err(target, e))?;
                self.summary.hardlinks += 1;
                return Ok(());
            }
        }
        let dir = target
            .parent()
            .ok_or_else(|| Error::invalid("restore target has no parent"))?;
        let tmp = tmp_name(dir)?;
        let result = self.create_at(&tmp, node).and_then(|()| {
            // A regular file got its metadata through its descriptor in `create_at`.
            if node.kind != NodeKind::File {
                self.apply_metadata(&tmp, node)?;
            }
            fs::rename(&tmp, target).map_err(|e| io_err(target, e))
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        match node.kind {
            NodeKind::File => {
                self.summary.files += 1;
                self.remember_link(target, node);
                self.verify_file(target, node)?;
            }
            _ => self.summary.others += 1,
        }
        Ok(())
    }

    /// What restoring one non-directory entry takes. Identical existing entries are settled
    /// here; files that replace something get a temporary name. In a `fresh` directory (one
    /// this restore created) nothing can exist yet, so nothing is looked up.
    fn decide(&mut self, target: PathBuf, node: &Node, fresh: bool) -> Result<Action> {
        let node_owned = || node.clone();
        if node.kind != NodeKind::File {
            return Ok(Action::Entry {
                target,
                node: node_owned(),
            });
        }
        let existing = if fresh {
            None
        } else {
            fs::symlink_metadata(&target).ok()
        };
        if let Some(meta) = &existing {
            if self.opts.overwrite != Overwrite::Always
                && self.matches_existing(&target, node, meta)?
            {
                return Ok(Action::Unchanged {
                    target,
                    node: node_owned(),
                });
            }
        }
        if node.links > 1 && self.links.contains_key(&(node.device, node.inode)) {
            return Ok(Action::Entry {
                target,
                node: node_owned(),
            });
        }
        let tmp = match existing {
            None => None,
            Some(_) => {
                Some(tmp_name(target.parent().ok_or_else(|| {
                    Error::invalid("restore target has no parent")
                })?)?)
            }
        };
        self.remember_link(&target, node);
        Ok(Action::Write {
            target,
            tmp,
            node: node_owned(),
        })
    }

    /// With `--verify`, reads a restored file back and compares it with the snapshot.
    fn verify_file(&mut self, target: &Path, node: &Node) -> Result<()> {
        if self.opts.verify {
            if !file_matches(self.repo, target, node)? {
                return Err(Error::corrupt(format!(
                    "verification failed: {} does not match the snapshot",
                    target.display()
                )));
            }
            self.summary.verified += 1;
        }
        Ok(())
    }

    fn finish_action(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Entry { target, node } => self.restore_entry(target, node),
            Action::Unchanged { target, node } => {
                self.summary.files_unchanged += 1;
                self.remember_link(target, node);
                self.apply_metadata(target, node)
            }
            Action::Write { target, tmp, node } => {
                if let Some(tmp) = tmp {
                    fs::rename(tmp, target).map_err(|e| io_err(target, e))?;
                }
                self.summary.files += 1;
                self.verify_file(target, node)?;
                Ok(())
            }
        }
    }

    fn remember_link(&mut self, target: &Path, node: &Node) {
        if node.links > 1 {
            self.links
                .entry((node.device, node.inode))
                .or_insert_with(|| target.to_path_buf());
        }
    }

    fn create_at(&mut self, path: &Path, node: &Node) -> Result<()> {
        match node.kind {
            NodeKind::File => {
                self.summary.bytes_written += write_content(self.repo, path, node, self.progress)?
                    .finish(node, self.is_root)?;
                Ok(())
            }
            NodeKind::Symlink => {
                let t = node.link_target.as_deref().ok_or_else(|| {
                    Error::corrupt(format!("symlink {:?} has no target", node.name_lossy()))
                })?;
                std::os::unix::fs::symlink(OsStr::from_bytes(t), path).map_err(|e| io_err(path, e))
            }
            NodeKind::Fifo => nix::unistd::mkfifo(path, Mode::from_bits_truncate(node.mode))
                .map_err(|e| io_err(path, e.into())),
            NodeKind::Chardev | NodeKind::Blockdev | NodeKind::Socket => {
                let kind = match node.kind {
                    NodeKind::Chardev => SFlag::S_IFCHR,
                    NodeKind::Blockdev => SFlag::S_IFBLK,
                    _ => SFlag::S_IFSOCK,
                };
                nix::sys::stat::mknod(
                    path,
                    kind,
                    Mode::from_bits_truncate(node.mode),
                    node.rdev as nix::libc::dev_t,
                )
                .map_err(|e| io_err(path, e.into()))
            }
            NodeKind::Dir => Err(Error::invalid("directories are not created here")),
        }
    }

    fn apply_metadata(&self, path: &Path, node: &Node) -> Result<()> {
        let is_link = node.kind == NodeKind::Symlink;
        // Ownership: by name when the name exists here, else by number. Only root can give
        // files away; others keep their own ownership silently, as tar does.
        if self.is_root {
            let (uid, gid) = owner_ids(node);
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| io_err(path, e))?;
        }
        if !is_link {
            fs::set_permissions(path, fs::Permissions::from_mode(node.mode))
                .map_err(|e| io_err(path, e))?;
        }
        for x in &node.xattrs {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name), &x.value) {
                warn_xattr(path, &x.name, &e);
            }
        }
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &timespec(node.atime.unwrap_or(node.mtime)),
            &timespec(node.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(path, e.into()))
    }
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for fs::OpenOptions {
    /// Content is written before permissions are applied, so start owner-only.
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Files of at most this many blobs are "small": their blobs are fetched together with those
/// of the other small files of the folder, in coalesced reads.
const SMALL_FILE_BLOBS: usize = 4;
/// Plaintext held at once for a group of small files.
const SMALL_GROUP_BYTES: u64 = 32 << 20;
/// Two blobs of one pack are fetched by one read when the gap between them is at most this.
const COALESCE_GAP: u64 = 256 << 10;

/// Writes the contents of new files (to their temporary names). Large files stream their
/// blobs in parallel windows; small files are grouped, and the blobs of a group are read
/// with one ranged read per run of neighbouring blobs in a pack (files of one folder were
/// backed up one after another, so their blobs are usually adjacent), decrypted in parallel,
/// and then written. Returns the bytes written per file, in order.
fn write_files(
    repo: &Repository,
    files: &[(&PathBuf, &Node)],
    is_root: bool,
    progress: &dyn RestoreProgress,
) -> Vec<Result<u64>> {
    let mut results: Vec<Option<Result<u64>>> = (0..files.len()).map(|_| None).collect();
    let mut small: Vec<usize> = Vec::new();
    for (i, (_, node)) in files.iter().enumerate() {
        if node.content_lists.is_empty()
            && node.content.len() <= SMALL_FILE_BLOBS
            && node.size <= SMALL_GROUP_BYTES
        {
            small.push(i);
        }
    }
    // Large files: one at a time each, in parallel.
    let mut is_small = vec![false; files.len()];
    for &i in &small {
        is_small[i] = true;
    }
    let large: Vec<usize> = (0..files.len()).filter(|&i| !is_small[i]).collect();
    // Large files (each in parallel windows) and the groups of small files run side by
    // side, so that neither phase's tail leaves a core idle.
    let write_large = || -> Vec<(usize, Result<u64>)> {
        large
            .par_iter()
            .map(|&i| {
                let (path, node) = files[i];
                let written = write_content(repo, path, node, progress)
                    .and_then(|out| out.finish(node, is_root));
                (i, written)
            })
            .collect()
    };
    let write_small = || -> Vec<(usize, Result<u64>)> {
        let mut out = Vec::with_capacity(small.len());
        for group in small_groups(files, &small) {
            match write_small_group(repo, files, group, is_root, progress) {
                Ok(rs) => out.extend(group.iter().copied().zip(rs)),
                Err(e) => out.extend(
                    group
                        .iter()
                        .map(|&i| (i, Err(Error::new(e.kind(), e.to_string())))),
                ),
            }
        }
        out
    };
    let (large_results, small_results) = rayon::join(write_large, write_small);
    for (i, r) in large_results.into_iter().chain(small_results) {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Other, "file was not written"))))
        .collect()
}

/// Consecutive runs of `small` (indexes into `files`) holding about `SMALL_GROUP_BYTES`.
fn small_groups<'s>(files: &[(&PathBuf, &Node)], small: &'s [usize]) -> Vec<&'s [usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (k, &i) in small.iter().enumerate() {
        bytes += files[i].1.size;
        if bytes >= SMALL_GROUP_BYTES || k + 1 == small.len() {
            groups.push(&small[start..=k]);
            start = k + 1;
            bytes = 0;
        }
    }
    groups
}

/// A blob's id and plaintext.
type Plain = (Id, Vec<u8>);

fn write_small_group(
    repo: &Repository,
    files: &[(&PathBuf, &Node)],
    group: &[usize],
    is_root: bool,
    progress: &dyn RestoreProgress,
) -> Result<Vec<Result<u64>>> {
    // Every distinct blob of the group with where it is.
    let mut wanted: Vec<(crate::cache::BlobLocation, Id)> = Vec::new();
    let mut seen = HashSet::new();
    for &i in group {
        for id in &files[i].1.content {
            if seen.insert(*id) {
                let loc = repo.locate(id)?;
                wanted.push((loc, *id));
            }
        }
    }
    wanted.sort_by_key(|(l, _)| (l.pack, l.offset));
    // Runs of neighbouring blobs in one pack.
    let mut runs: Vec<Vec<(crate::cache::BlobLocation, Id)>> = Vec::new();
    for w in wanted {
        let joins = runs.last().and_then(|r| r.last()).is_some_and(|(last, _)| {
            last.pack == w.0.pack
                && w.0.offset >= last.offset + last.length as u64
                && w.0.offset - (last.offset + last.length as u64) <= COALESCE_GAP
        });
        if joins {
            if let Some(r) = runs.last_mut() {
                r.push(w);
            }
        } else {
            runs.push(vec![w]);
        }
    }
    // The group's files are created on one thread while the others fetch its blobs:
    // creating entries takes their folder's lock, so creating them in parallel only spins.
    let create_all = || -> Vec<Result<NewFile<'_>>> {
        group
            .iter()
            .map(|&i| NewFile::create(files[i].0, files[i].1.size))
            .collect()
    };
    let fetch_all = || -> Vec<Result<Vec<Plain>>> {
        runs.par_iter()
            .map(|run| {
                let (first, last) = (&run[0].0, &run[run.len() - 1].0);
                let start = first.offset;
                let len = last.offset + last.length as u64 - start;
                let bytes = repo
                    .store()
                    .read_range(
                        crate::backend::FileType::Pack,
                        &first.pack.to_hex(),
                        start,
                        len,
                    )
                    .map_err(|e| e.context(format!("pack {}", first.pack)))?;
                let mut bytes = crate::repository::writable(bytes);
                run.iter()
                    .map(|(loc, id)| {
                        let off = (loc.offset - start) as usize;
                        let sealed =
                            bytes
                                .get_mut(off..off + loc.length as usize)
                                .ok_or_else(|| {
                                    Error::corrupt(format!("pack {}: short read", loc.pack))
                                })?;
                        let plain = crate::format::blob::open_in_place(
                            repo.keys(),
                            BlobKind::Data,
                            id,
                            sealed,
                        )
                        .map_err(|e| e.context(format!("pack {}", loc.pack)))?;
                        Ok((*id, plain))
                    })
                    .collect()
            })
            .collect()
    };
    let (created, fetched) = rayon::join(create_all, fetch_all);
    let mut blobs: HashMap<Id, Vec<u8>> = HashMap::new();
    for f in fetched {
        blobs.extend(f?);
    }
    Ok(group
        .par_iter()
        .zip(created)
        .map(|(&i, out)| {
            let (path, node) = files[i];
            progress.file(path);
            let mut out = out?;
            let mut content = Vec::with_capacity(node.content.len());
            for id in &node.content {
                let data = blobs
                    .get(id)
                    .ok_or_else(|| Error::not_found(format!("blob {id} was not fetched")))?;
                content.push(data.as_slice());
            }
            out.append_all(&content)?;
            progress.bytes(out.len);
            out.finish(node, is_root)
        })
        .collect())
}

/// Blobs of one file fetched and decrypted in parallel before being written in order.
const FETCH_WINDOW: usize = 16;

/// Writes a file's content to `path` (a new file), fetching blobs in parallel windows and
/// turning all-zero blobs into holes; returns the file to be finished. The file is not
/// fsynced: a write error, including a full disk, is reported by `write` itself.
fn write_content<'p>(
    repo: &Repository,
    path: &'p Path,
    node: &Node,
    progress: &dyn RestoreProgress,
) -> Result<NewFile<'p>> {
    progress.file(path);
    let mut out = NewFile::create(path, node.size)?;
    let ids = repo.file_content(node)?;
    for window in ids.chunks(FETCH_WINDOW) {
        let blobs: Vec<Result<Vec<u8>>> = window
            .par_iter()
            .map(|id| repo.read_blob(BlobKind::Data, id))
            .collect();
        let blobs: Vec<Vec<u8>> = blobs
            .into_iter()
            .collect::<Result<_>>()
            .map_err(|e| e.context(path.display()))?;
        let slices: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
        out.append_all(&slices)?;
        progress.bytes(slices.iter().map(|b| b.len() as u64).sum());
    }
    Ok(out)
}

/// Files of at least this size are written in pieces of this size at offsets that are
/// multiples of it. Linux stores such writes in large page-cache folios: on the reference
/// machine writing 800 MB in aligned 1 MiB pieces takes 0.2 s of system time, in 64 KiB or
/// unaligned pieces 1.1-2.1 s (see docs/performance.md).
const STAGE: usize = 1 << 20;

/// A file being restored: created owner-only and new, filled blob by blob, with all-zero
/// blobs left as holes, then given its metadata through the open descriptor (no path
/// lookups, and safe to do in parallel).
struct NewFile<'p> {
    f: File,
    path: &'p Path,
    /// Content length so far, including `staged` bytes not yet written.
    len: u64,
    /// Whether the content ends in a hole, which only setting the length materialises.
    hole_at_end: bool,
    /// For files of at least `STAGE` bytes: content not yet written, which starts at file
    /// offset `len - staged.len()` and is written up to the next multiple of `STAGE`.
    staged: Option<Vec<u8>>,
    /// Set once complete; until then dropping the file removes it, so a failed or
    /// abandoned file never stays behind as a partial one.
    done: bool,
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(self.path);
        }
    }
}

impl<'p> NewFile<'p> {
    /// Creates the file; `size` (the snapshot's) decides whether writes are staged.
    fn create(path: &'p Path, size: u64) -> Result<Self> {
        let f = File::options()
            .write(true)
            .create_new(true)
            .mode_private()
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(NewFile {
            f,
            path,
            len: 0,
            hole_at_end: false,
            staged: (size >= STAGE as u64).then(|| Vec::with_capacity(2 * STAGE)),
            done: false,
        })
    }

    /// Appends one blob's plaintext.
    fn append(&mut self, data: &[u8]) -> Result<()> {
        if data.iter().all(|b| *b == 0) {
            return self.skip(data.len());
        }
        self.hole_at_end = false;
        self.len += data.len() as u64;
        let Some(staged) = &mut self.staged else {
            return self.f.write_all(data).map_err(|e| io_err(self.path, e));
        };
        staged.extend_from_slice(data);
        let start = self.len - staged.len() as u64;
        let boundary = (start / STAGE as u64 + 1) * STAGE as u64;
        if self.len >= boundary {
            let n = (boundary - start) as usize;
            self.f
                .write_all(&staged[..n])
                .map_err(|e| io_err(self.path, e))?;
            staged.drain(..n);
        }
        Ok(())
    }

    /// Appends the whole content of a small file at once: each run of non-zero blobs is
    /// one vectored write, all-zero blobs are holes.
    fn append_all(&mut self, blobs: &[&[u8]]) -> Result<()> {
        if self.staged.is_some() {
            return blobs.iter().try_for_each(|b| self.append(b));
        }
        let mut run: Vec<std::io::IoSlice> = Vec::with_capacity(blobs.len());
        for data in blobs {
            if data.iter().all(|b| *b == 0) {
                self.write_run(&mut run)?;
                self.skip(data.len())?;
            } else {
                run.push(std::io::IoSlice::new(data));
                self.len += data.len() as u64;
                self.hole_at_end = false;
            }
        }
        self.write_run(&mut run)
    }

    fn write_run(&mut self, run: &mut Vec<std::io::IoSlice>) -> Result<()> {
        let mut slices = &mut run[..];
        while !slices.is_empty() {
            let n = self
                .f
                .write_vectored(slices)
                .map_err(|e| io_err(self.path, e))?;
            if n == 0 {
                return Err(io_err(
                    self.path,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ));
            }
            std::io::IoSlice::advance_slices(&mut slices, n);
        }
        run.clear();
        Ok(())
    }

    /// Writes what is staged at its place, leaving the file offset at `len`.
    fn write_staged(&mut self) -> Result<()> {
        if let Some(staged) = &mut self.staged {
            if !staged.is_empty() {
                self.f.write_all(staged).map_err(|e| io_err(self.path, e))?;
                staged.clear();
            }
        }
        Ok(())
    }

    /// Leaves a hole of `n` bytes.
    fn skip(&mut self, n: usize) -> Result<()> {
        self.write_staged()?;
        self.f
            .seek(SeekFrom::Current(n as i64))
            .map_err(|e| io_err(self.path, e))?;
        self.len += n as u64;
        self.hole_at_end = true;
        Ok(())
    }

    /// Sets the length when the file ends in a hole, then owner (as root), mode, extended
    /// attributes and times, in that order (changing the owner clears set-id bits; the
    /// times come last because every other change touches them). Returns the length.
    fn finish(mut self, node: &Node, is_root: bool) -> Result<u64> {
        self.write_staged()?;
        let err = |e: std::io::Error| io_err(self.path, e);
        if self.hole_at_end {
            self.f.set_len(self.len).map_err(err)?;
        }
        if is_root {
            let (uid, gid) = owner_ids(node);
            std::os::unix::fs::fchown(&self.f, Some(uid), Some(gid)).map_err(err)?;
        }
        self.f
            .set_permissions(fs::Permissions::from_mode(node.mode))
            .map_err(err)?;
        for x in &node.xattrs {
            if let Err(e) = xattr::FileExt::set_xattr(&self.f, OsStr::from_bytes(&x.name), &x.value)
            {
                warn_xattr(self.path, &x.name, &e);
            }
        }
        nix::sys::stat::futimens(
            &self.f,
            &timespec(node.atime.unwrap_or(node.mtime)),
            &timespec(node.mtime),
        )
        .map_err(|e| err(e.into()))?;
        self.done = true;
        Ok(self.len)
    }
}

/// Whether the local file has exactly the snapshot's content: it is chunked with the
/// repository's chunker and the blob ids compared, so nothing but the local file is read.
pub fn file_matches(repo: &Repository, path: &Path, node: &Node) -> Result<bool> {
    let expected = repo.file_content(node)?;
    let chunker = repo.chunker()?;
    let keys = repo.keys();
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut s = cairn_chunker::StreamChunker::new(chunker);
    let mut got = Vec::with_capacity(expected.len());
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, e)),
        };
        total += n as u64;
        if total > node.size {
            return Ok(false);
        }
        s.push(&buf[..n], |c| got.push(keys.blob_id(c)));
        if got.len() > expected.len() || got.iter().zip(&expected).any(|(a, b)| a != b) {
            return Ok(false);
        }
    }
    s.finish(|c| got.push(keys.blob_id(c)));
    Ok(got == expected)
}

/// Restores the tree of snapshot `snapshot` below `target`.
pub fn restore(
    repo: &Repository,
    snapshot: &Id,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn RestoreProgress,
) -> Result<RestoreSummary> {
    repo.sync_index()?;
    let snap = repo.read_snapshot(snapshot)?;
    fs::create_dir_all(target).map_err(|e| io_err(target, e))?;
    let target_was_empty = fs::read_dir(target)
        .map_err(|e| io_err(target, e))?
        .next()
        .is_none();
    let mut r = Restorer {
        repo,
        opts,
        progress,
        summary: RestoreSummary::default(),
        links: HashMap::new(),
        is_root: crate::sys::is_root(),
        conflicts: Vec::new(),
        conflict_count: 0,
        batch: Batch::default(),
    };
    r.check_pass(&snap.tree, Path::new("/"), target, false)?;
    if r.conflict_count > 0 {
        let more = if r.conflict_count > r.conflicts.len() {
            format!(" and {} more", r.conflict_count - r.conflicts.len())
        } else {
            String::new()
        };
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} existing entries differ from the snapshot and were left untouched: {}{more}; nothing was restored (use --overwrite if-changed or always)",
                r.conflict_count,
                r.conflicts.join(", ")
            ),
        ));
    }
    r.restore_tree(
        &snap.tree,
        Path::new("/"),
        target,
        false,
        opts.include.is_none(),
        target_was_empty,
    )?;
    r.flush()?;
    Ok(r.summary)
}
