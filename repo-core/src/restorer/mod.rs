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
//! and then each entry is finished in order and the folders' metadata applied. A file that
//! replaces an existing entry is written under a temporary
//! name and renamed into place when complete; a file where nothing exists (always so in a
//! folder this restore created) is created exclusively under its own name. Either way a file
//! that fails (a full disk, a damaged blob) is removed at once, so an error never leaves a
//! partial file behind; a restore killed outright can, and a rerun with `--overwrite
//! if-changed` replaces it. Runs of zeros become holes. Hard links within the snapshot are
//! restored as links. Owner, mode, extended attributes and times are applied after content,
//! through the open descriptor for new files, and a directory's times after its entries
//! (writing into a directory changes its mtime).
//!
//! Every path below the target is reached through descriptors the restore opened itself,
//! never through a symlink (see [`dirs`]). Descriptors held at once are bounded whatever
//! the folder sizes and the depth: a batch refers to a bounded number of folders, a group
//! of small files is created and written a bounded number at a time (both sized from the
//! process's limit on open files), and only a window of the current path's folders is kept
//! open. Both passes keep their own stack of folders, so depth is bounded by memory, not by
//! the thread's stack, and both count the entries they meet against the snapshot's summary
//! (see [`crate::content::EntryBudget`]).

mod dirs;
mod entries;
mod fetch;
mod resume;
mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::time::TimeSpec;

use crate::content::EntryBudget;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::{Node, NodeKind, Time};
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::walk::Excludes;

use dirs::{DirFd, DirStack};
use entries::Batch;
pub use resume::MARKER;
pub use write::file_matches;

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
    /// Leave the in-progress marker when done: the caller has steps of its own after this
    /// restore and removes it with [`remove_marker`] once they are done too.
    pub keep_marker: bool,
}

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
    /// The target held an interrupted restore of this snapshot, which this one finished.
    pub resumed: bool,
}

/// How many descriptors a restore may hold at once, from the process's limit on open files
/// (a quarter of it for a group of small files, an eighth for the folders a batch refers
/// to; the rest is left to the window of open folders, the parallel large files and the
/// repository).
#[derive(Debug, Clone, Copy)]
struct Limits {
    group_files: usize,
    batch_dirs: usize,
}

impl Limits {
    fn from_rlimit() -> Self {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
            .min(1 << 16) as usize;
        Limits {
            group_files: (soft / 4).clamp(8, 1024),
            batch_dirs: (soft / 8).clamp(4, 1024),
        }
    }
}

struct Restorer<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    /// Finishing an interrupted restore of the same snapshot, which started at this time
    /// (see [`resume`]): entries with a ctime not older are its work.
    resuming: Option<(i64, i64)>,
    progress: &'a dyn Progress,
    summary: RestoreSummary,
    /// The target folder's path, as given.
    target: PathBuf,
    /// The target folder, opened once.
    root: Arc<DirFd>,
    /// (device, inode) of multiply-linked files already restored -> their path relative to
    /// the target.
    links: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
    conflicts: Vec<String>,
    conflict_count: usize,
    batch: Batch,
    limits: Limits,
    budget: EntryBudget,
    /// Decoding buffers reused by every batch.
    buffers: fetch::Buffers,
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
/// matters most, so a refusal is a warning, not an error. `path` is the entry's own path,
/// also when it is still written under a temporary name.
fn warn_xattr(path: &Path, name: &[u8], e: &std::io::Error) {
    tracing::warn!(
        "{}: cannot set extended attribute {:?}: {e}",
        path.display(),
        String::from_utf8_lossy(name)
    );
}

fn tmp_name() -> Result<Vec<u8>> {
    let id = Id::random()?;
    Ok(format!(".cairn-restore-{}.tmp", &id.to_hex()[..16]).into_bytes())
}

/// A folder of the snapshot being checked (first pass).
struct CheckLevel {
    nodes: std::vec::IntoIter<Node>,
    /// Whether the folder is restored itself (so its entries are, with `--include`).
    selected: bool,
}

/// A folder of the snapshot being restored (second pass).
struct Level {
    nodes: Vec<Node>,
    /// Index of the next entry to look at for subfolders.
    next: usize,
    /// The folder itself is restored (and so, with `--include`, everything below it).
    restore: bool,
    /// Every entry of the folder is restored (no `--include`): `--delete` applies.
    whole: bool,
    /// The folder was created by this restore, so nothing exists in it yet.
    fresh: bool,
    /// Something was restored in it.
    any: bool,
    /// The folder's node (`None` for the snapshot's root).
    node: Option<Node>,
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
                // A folder no pattern can reach below is not entered: restoring one file
                // of a large snapshot reads only the folders on its way.
                let hit = ancestor_selected || inc.excluded(snap_path);
                (hit, hit || inc.may_match_below(snap_path))
            }
        }
    }

    /// The first pass: collects existing entries that differ from the snapshot and may not
    /// be replaced. Only folders that exist are entered.
    fn check_pass(&mut self, tree: &Id, stack: &mut DirStack) -> Result<()> {
        let mut snap_path = PathBuf::from("/");
        let mut levels = vec![CheckLevel {
            nodes: self.repo.load_tree(tree)?.nodes.into_iter(),
            selected: false,
        }];
        while let Some(level) = levels.last_mut() {
            let Some(node) = level.nodes.next() else {
                levels.pop();
                if !levels.is_empty() {
                    stack.pop()?;
                    snap_path.pop();
                }
                continue;
            };
            let ancestor_selected = level.selected;
            self.budget.take()?;
            snap_path.push(OsStr::from_bytes(&node.name));
            let (restore, descend) = self.selected(&snap_path, ancestor_selected);
            let dir = stack.dir()?;
            let existing = entries::stat(&dir, &node.name)?;
            if restore {
                if let Some(st) = &existing {
                    let is_dir = entries::kind_of(st) == nix::sys::stat::SFlag::S_IFDIR;
                    let replaceable = !(is_dir && node.kind != NodeKind::Dir);
                    // Whether it is the same matters only where it could not be replaced;
                    // comparing a file reads it whole.
                    // Entries an interrupted run of this restore made are replaced whatever
                    // `--overwrite` says; older ones it never checked follow it.
                    let ours = self.made_by_interrupted_run(st);
                    let must_match =
                        (self.opts.overwrite == Overwrite::Never && !ours) || !replaceable;
                    if must_match && !self.matches_existing(&dir, &node.name, &node, st)? {
                        self.conflict_count += 1;
                        if self.conflicts.len() < 10 {
                            self.conflicts
                                .push(dir.child(&node.name).display().to_string());
                        }
                    }
                }
            }
            let existing_dir = existing
                .as_ref()
                .is_some_and(|st| entries::kind_of(st) == nix::sys::stat::SFlag::S_IFDIR);
            if let (true, NodeKind::Dir, Some(sub), true) =
                (descend, node.kind, &node.subtree, existing_dir)
            {
                let opened = dirs::open_dir(&dir, &node.name)?;
                let nodes = self.repo.load_tree(sub)?.nodes.into_iter();
                stack.push_open(&node.name, opened)?;
                levels.push(CheckLevel {
                    nodes,
                    selected: restore,
                });
                continue;
            }
            snap_path.pop();
        }
        Ok(())
    }

    /// Starts restoring a folder (`level`, whose entries are read from `tree`): its entries
    /// other than folders are decided in order and queued (before its subfolders, so that a
    /// hard link in a subfolder finds its first path complete). The folder is created only
    /// when something is restored in it.
    fn enter(
        &mut self,
        stack: &mut DirStack,
        snap_path: &mut PathBuf,
        tree: Option<&Id>,
        mut level: Level,
    ) -> Result<Level> {
        level.nodes = match tree {
            Some(t) => self.repo.load_tree(t)?.nodes,
            None => Vec::new(),
        };
        for entry in level.nodes.iter().filter(|n| n.kind != NodeKind::Dir) {
            self.budget.take()?;
            snap_path.push(OsStr::from_bytes(&entry.name));
            let (selected, _) = self.selected(snap_path, level.restore);
            snap_path.pop();
            if !selected {
                continue;
            }
            let dir = stack.dir()?;
            let action = self.decide(dir, &entry.name, entry, level.fresh)?;
            self.batch.push(action);
            level.any = true;
        }
        if self.batch.is_full(&self.limits) {
            self.flush()?;
        }
        Ok(level)
    }

    /// The second pass: restores the tree into the target, folder by folder in name
    /// order, depth first.
    fn restore_pass(
        &mut self,
        tree: &Id,
        stack: &mut DirStack,
        whole: bool,
        fresh: bool,
    ) -> Result<()> {
        let mut snap_path = PathBuf::from("/");
        let root = Level {
            nodes: Vec::new(),
            next: 0,
            restore: false,
            whole,
            fresh,
            any: false,
            node: None,
        };
        let root = self.enter(stack, &mut snap_path, Some(tree), root)?;
        let mut levels = vec![root];
        while let Some(level) = levels.last_mut() {
            let next = level.nodes[level.next..]
                .iter()
                .position(|n| n.kind == NodeKind::Dir)
                .map(|k| level.next + k);
            if let Some(i) = next {
                level.next = i + 1;
                let node = level.nodes[i].clone();
                let (ancestor_selected, parent_fresh) = (level.restore, level.fresh);
                self.budget.take()?;
                snap_path.push(OsStr::from_bytes(&node.name));
                let (restore, descend) = self.selected(&snap_path, ancestor_selected);
                if !descend {
                    snap_path.pop();
                    continue;
                }
                // Below a folder this restore created, nothing exists yet either.
                let created = if restore {
                    let parent = stack.dir()?;
                    let (dir, created) = dirs::ensure_dir(&parent, &node.name)?;
                    if self.resuming.is_some() && !created {
                        resume::remove_temporaries(&dir)?;
                    }
                    stack.push_open(&node.name, dir)?;
                    created
                } else {
                    stack.push_unopened(&node.name);
                    parent_fresh
                };
                let sub = node.subtree;
                let child = Level {
                    nodes: Vec::new(),
                    next: 0,
                    restore,
                    whole: restore,
                    fresh: created,
                    any: false,
                    node: Some(node),
                };
                let child = self.enter(stack, &mut snap_path, sub.as_ref(), child)?;
                levels.push(child);
                continue;
            }
            // Every entry of the folder is queued.
            let Some(done) = levels.pop() else { break };
            if done.whole && self.opts.delete {
                // Pending entries of this folder may still sit under temporary names.
                self.flush()?;
                let dir = stack.dir()?;
                self.delete_extra(&dir, &done.nodes)?;
            }
            let Some(parent) = levels.last_mut() else {
                break;
            };
            if let (true, Some(node)) = (done.restore || done.any, done.node) {
                let dir = stack.dir()?;
                self.batch.push_dir(dir, node);
                self.summary.dirs += 1;
                parent.any = true;
                if self.batch.is_full(&self.limits) {
                    self.flush()?;
                }
            }
            stack.pop()?;
            snap_path.pop();
        }
        Ok(())
    }
}

/// Restores the tree of snapshot `snapshot` below `target`.
///
/// An interrupted restore of the same snapshot into the same target is finished: entries
/// that differ are replaced and complete ones kept, whatever `opts.overwrite` says (see
/// [`resume`]).
pub fn restore(
    repo: &Repository,
    snapshot: &Id,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    repo.sync_index()?;
    let snap = repo.read_snapshot(snapshot)?;
    let target_dir = dirs::open_target(target)?;
    // A snapshot holding an entry of the marker's name at its top is restored without one.
    let marked = !repo
        .load_tree(&snap.tree)?
        .nodes
        .iter()
        .any(|n| n.name == resume::MARKER.as_bytes());
    let interrupted = if marked {
        resume::read(&target_dir)?
    } else {
        None
    };
    let selection = resume::selection(
        opts.include.as_ref().map_or(&[][..], |i| &i.patterns),
        &opts.exclude.patterns,
    );
    let resuming = interrupted
        .as_ref()
        .filter(|m| m.snapshot == *snapshot)
        .map(|m| m.since);
    let target_was_empty = std::fs::read_dir(target)
        .map_err(|e| io_err(target, e))?
        .next()
        .is_none();
    let mut stack = DirStack::new(target_dir)?;
    let mut r = Restorer {
        repo,
        opts,
        resuming,
        progress,
        summary: RestoreSummary::default(),
        target: target.to_path_buf(),
        root: stack.root()?,
        links: HashMap::new(),
        is_root: crate::sys::is_root(),
        conflicts: Vec::new(),
        conflict_count: 0,
        batch: Batch::default(),
        limits: Limits::from_rlimit(),
        budget: EntryBudget::for_snapshot(&snap),
        buffers: fetch::Buffers::default(),
    };
    r.check_pass(&snap.tree, &mut stack)?;
    if r.conflict_count > 0 {
        let more = if r.conflict_count > r.conflicts.len() {
            format!(" and {} more", r.conflict_count - r.conflicts.len())
        } else {
            String::new()
        };
        let other = match &interrupted {
            Some(other) if other.snapshot != *snapshot => format!(
                "; an interrupted restore of snapshot {} is in this folder, which restoring that snapshot again finishes",
                other.snapshot.short()
            ),
            _ => String::new(),
        };
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} existing entries differ from the snapshot and were left untouched: {}{more}; nothing was restored (use --overwrite if-changed or always){other}",
                r.conflict_count,
                r.conflicts.join(", ")
            ),
        ));
    }
    // From here on the target changes: a restore that stops before the end leaves the
    // marker, and running it again finishes it.
    // A rerun keeps the marker as it is: its time is when the interrupted run started.
    if marked && resuming.is_none() {
        resume::write(&r.root, snapshot, &selection)?;
    }
    if resuming.is_some() {
        resume::remove_temporaries(&r.root)?;
    }
    r.summary.resumed = resuming.is_some();
    r.budget = EntryBudget::for_snapshot(&snap);
    r.restore_pass(
        &snap.tree,
        &mut stack,
        opts.include.is_none(),
        target_was_empty,
    )?;
    r.flush()?;
    // Only a run that restored at least what the marker's run set out to restores it.
    let covers = match &interrupted {
        Some(m) if resuming.is_some() => selection.is_empty() || selection == m.selection,
        _ => true,
    };
    if marked && covers && !opts.keep_marker {
        resume::remove(&r.root)?;
    }
    Ok(r.summary)
}

/// The snapshot whose restore into `target` was interrupted, if any (its marker is there).
pub fn interrupted_restore(target: &Path) -> Result<Option<Id>> {
    match dirs::open_existing_target(target)? {
        Some(dir) => Ok(resume::read(&dir)?.map(|m| m.snapshot)),
        None => Ok(None),
    }
}

/// Removes the in-progress marker a restore with `keep_marker` left in `target`.
pub fn remove_marker(target: &Path) -> Result<()> {
    match dirs::open_existing_target(target)? {
        Some(dir) => resume::remove(&dir),
        None => Ok(()),
    }
}
