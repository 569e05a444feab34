//! The walk ahead of a backup: counts the files and bytes the backup will save, so that its
//! progress has totals (a percentage and an estimate of the time left), as restic does.
//!
//! It runs on a thread of its own beside the backup, only when the progress shows totals
//! ([`Progress::wants_totals`]), and walks the same roots with the same rules as the tree
//! walk: the same folder states, descriptors and reopening (`tree_walk`), the same excludes,
//! markers, size limit and `--one-file-system`. It holds counts only: memory is one listing
//! per level of depth, as for the backup's own walk. It reads no content and no extended
//! attributes, and it stops at the next entry when the backup ends first. What it cannot
//! reach it skips: the backup reports it.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use super::tree_walk::{
    as_path, held, push, reopen_parent, set_entry_path, Entries, Frame, Next, Trie,
};
use super::BackupOptions;
use crate::format::tree::NodeKind;
use crate::progress::Progress;
use crate::walk::{folder_left_out, DirHandle, Stat};

/// Totals are reported after this many entries (and at the end).
const REPORT_EVERY: u32 = 64;

struct Counter<'p> {
    files: u64,
    bytes: u64,
    since_report: u32,
    progress: &'p dyn Progress,
}

impl Counter<'_> {
    fn file(&mut self, size: u64) {
        self.files += 1;
        self.bytes += size;
    }

    fn entry(&mut self) {
        self.since_report += 1;
        if self.since_report >= REPORT_EVERY {
            self.since_report = 0;
            self.progress.total(self.files, self.bytes, false);
        }
    }
}

/// Counts what a backup of `trie` with `opts` saves, reporting the totals to `progress`
/// as it goes, until done or until `stop` is set. The last report of a walk that got to the
/// end has `done` set.
pub(super) fn scan(trie: &Trie, opts: &BackupOptions, progress: &dyn Progress, stop: &AtomicBool) {
    let mut count = Counter {
        files: 0,
        bytes: 0,
        since_report: 0,
        progress,
    };
    if walk(trie, opts, &mut count, stop).is_some() {
        progress.total(count.files, count.bytes, true);
    }
}

/// The walk; `None` when it was stopped or could not start.
fn walk(
    trie: &Trie,
    opts: &BackupOptions,
    count: &mut Counter<'_>,
    stop: &AtomicBool,
) -> Option<()> {
    let slash = std::path::Path::new("/");
    let mut root = if trie.whole {
        DirHandle::list(slash)
    } else {
        DirHandle::pass(slash)
    }
    .ok()?;
    let st = Stat::of(root.fd().ok()?).ok()?;
    let entries = if trie.whole {
        Entries::Listed(root.names().0.into_iter())
    } else {
        Entries::Roots(trie.children.iter())
    };
    let mut frame = Frame::new(None, root, st, 1);
    frame.entries = entries;
    frame.followed = !trie.whole;
    frame.root_dev = trie.whole.then_some(st.dev);
    let mut stack = vec![frame];
    let mut path = b"/".to_vec();
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let top = stack.last_mut()?;
        match top.entries.next() {
            Some(Ok(Next::Entry(name))) => {
                set_entry_path(&mut path, top.path_len, name.to_bytes());
                count_entry(&mut stack, &path, &name, opts, count);
                count.entry();
            }
            Some(Ok(Next::Between(name, child))) => {
                set_entry_path(&mut path, top.path_len, name.to_bytes());
                let Some(dir) = held(&top.dir).ok().and_then(|d| d.fd().ok()) else {
                    continue;
                };
                let Ok((st, d)) =
                    DirHandle::pass_at(dir, &name, true).and_then(|d| Ok((Stat::of(d.fd()?)?, d)))
                else {
                    continue;
                };
                let mut frame = Frame::new(None, d, st, path.len());
                frame.entries = Entries::Roots(child.children.iter());
                frame.followed = true;
                push(&mut stack, frame);
            }
            Some(Err(_)) => {}
            None => {
                let done = stack.pop()?;
                if stack.is_empty() {
                    return Some(());
                }
                if stack.last().is_some_and(|p| p.dir.is_none()) {
                    // A folder moved meanwhile is counted no further, as the backup saves
                    // no more of it.
                    let _ = reopen_parent(&mut stack, &path, done.dir.as_ref());
                }
            }
        }
    }
}

/// Counts the entry `name` of the innermost folder (whose path is `path`), entering it when
/// it is a folder the backup enters.
fn count_entry(
    stack: &mut Vec<Frame<'_>>,
    path: &[u8],
    name: &CString,
    opts: &BackupOptions,
    count: &mut Counter<'_>,
) {
    if opts.excludes.excluded(as_path(path)) {
        return;
    }
    let Some(top) = stack.last() else {
        return;
    };
    let Some(dir) = held(&top.dir).ok().and_then(|d| d.fd().ok()) else {
        return;
    };
    let Ok(st) = Stat::at(dir, name) else {
        return;
    };
    match st.kind() {
        NodeKind::File if opts.excludes.larger_than.is_none_or(|l| st.size <= l) => {
            count.file(st.size);
        }
        NodeKind::Dir => {
            let Ok(mut d) = DirHandle::list_at(dir, name) else {
                return;
            };
            if d.fd().is_ok_and(|fd| folder_left_out(&opts.excludes, fd)) {
                return;
            }
            let root_dev = top.root_dev.unwrap_or(st.dev);
            if opts.one_file_system && st.dev != root_dev {
                return;
            }
            let names = d.names().0;
            let mut frame = Frame::new(None, d, st, path.len());
            frame.entries = Entries::Listed(names.into_iter());
            frame.root_dev = Some(root_dev);
            push(stack, frame);
        }
        _ => {}
    }
}
