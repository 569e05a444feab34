//! Reading files for a backup: the files cache, small files read and sealed in parallel, large
//! ones as streams.
//!
//! A file is opened relative to its folder's descriptor, never through a symlink, and
//! `fstat` right after opening gives the size that is read: no more, whatever the file grows
//! to meanwhile (a sparse file that grows by hundreds of gigabytes while it is read costs
//! nothing). A file that holds more bytes or fewer than that when read is saved as read (the
//! node records the size saved) and named in a warning; it is not recorded in the files
//! cache, so the next backup reads it again.

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rayon::prelude::*;

use super::pipeline::{self, add_sealed, cut, fill, seal_chunk, Saved, Sealed};
use super::{Archiver, FILES_CACHE_BATCH, SMALL_FILE};
use crate::cache::FileRecord;
use crate::crypto::Keys;
use crate::error::Result;
use crate::format::tree::{Node, Tree};
use crate::id::Id;
use crate::progress::FileStatus;
use crate::walk::{open_file_at, set_stat, Stat};
use crate::writer::{Compression, Known};

/// A small file (below [`SMALL_FILE`]) waiting to be read and sealed on the pool with
/// others of its folder.
pub(super) struct FileJob {
    pub(super) name: CString,
    pub(super) node: Node,
    pub(super) stat: Stat,
    pub(super) start: FileStart,
}

/// What is known of a file about to be read.
pub(super) struct FileStart {
    /// Its key in the files cache: its absolute path.
    key: Vec<u8>,
    /// Whether the files cache knew it (a changed file rather than a new one).
    known: bool,
}

impl FileStart {
    fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.key))
    }
}

/// A file's content as read.
struct Content {
    ids: Vec<Id>,
    len: u64,
    /// The file as opened (`fstat` of the descriptor read).
    opened: Stat,
    /// It held more than `opened.size` bytes once those were read.
    grew: bool,
}

/// A small file read and sealed, or why not.
enum JobResult {
    Sealed {
        sealed: Sealed,
        len: u64,
        opened: Stat,
        grew: bool,
    },
    /// It had grown past the threshold when opened: it is read again as a stream.
    Grew,
    /// It could not be opened or read (a warning, not an error).
    Unreadable(std::io::Error),
}

/// Small files are read and sealed in parallel in groups of at most this many ...
pub(super) const JOB_FILES: usize = 256;
/// ... or this many bytes.
pub(super) const JOB_BYTES: u64 = 16 << 20;

/// Reads a small file whole and seals its chunks (on a pool thread).
fn read_and_seal(
    dir: BorrowedFd<'_>,
    name: &CStr,
    chunker: &cairn_chunker::Chunker,
    known: &Known,
    keys: &Keys,
    comp: &Compression,
) -> Result<JobResult> {
    let (data, opened, grew) = match read_small_at(dir, name) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(JobResult::Grew),
        Err(e) => return Ok(JobResult::Unreadable(e)),
    };
    let sealed = cut(chunker, &data, true)
        .into_iter()
        .map(|range| seal_chunk(known, keys, comp, &data[range]))
        .collect::<Result<Sealed>>()?;
    Ok(JobResult::Sealed {
        sealed,
        len: data.len() as u64,
        opened,
        grew,
    })
}

/// Opens a file for reading and checks that it is still a regular file; returns it with
/// its `fstat`.
fn open_regular(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<(std::fs::File, Stat)> {
    let f = open_file_at(dir, name)?;
    let st = Stat::of(&f)?;
    if !st.is_file() {
        return Err(std::io::Error::other(
            "is no longer a regular file; left out",
        ));
    }
    Ok((f, st))
}

/// Whether a file yields more bytes (read after the size it had when opened).
fn more_to_read(f: &mut dyn Read) -> std::io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        match f.read(&mut probe) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A small file's bytes up to the size it had when opened, its `fstat`, and whether it held
/// more; `None` if it had more than [`SMALL_FILE`] bytes when opened.
fn read_small_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> std::io::Result<Option<(Vec<u8>, Stat, bool)>> {
    let (mut f, opened) = open_regular(dir, name)?;
    if opened.size > SMALL_FILE {
        return Ok(None);
    }
    let mut data = vec![0u8; opened.size as usize];
    let mut eof = false;
    let n = fill(&mut f, &mut data, 0, &mut eof)?;
    data.truncate(n);
    let grew = !eof && more_to_read(&mut f)?;
    Ok(Some((data, opened, grew)))
}

impl Archiver<'_> {
    /// Whether a files-cache record still describes the file: same inode, size, mtime and
    /// ctime, and every blob it names still indexed (a prune may have removed some).
    fn reusable(&self, rec: &FileRecord, st: &Stat) -> Result<bool> {
        let seen = (rec.inode, rec.size, rec.mtime, rec.ctime);
        self.still_describes(seen, &rec.content, &rec.content_lists, st)
    }

    /// Whether the parent snapshot's node of a file the files cache does not know still
    /// describes it, by the same rule. (A files cache that is new, was removed, or lives
    /// where backups run in throwaway containers then still spares reading what did not
    /// change.)
    fn reusable_previous(&self, prev: &Node, st: &Stat) -> Result<bool> {
        let seen = (
            prev.inode,
            prev.size,
            (prev.mtime.0, prev.mtime.1),
            (prev.ctime.0, prev.ctime.1),
        );
        self.still_describes(seen, &prev.content, &prev.content_lists, st)
    }

    /// Whether a file seen as (inode, size, mtime, ctime) with this content is still so:
    /// the same four now, and every blob named still indexed (a prune may have removed some).
    fn still_describes(
        &self,
        seen: (u64, u64, (i64, u32), (i64, u32)),
        content: &[Id],
        content_lists: &[Id],
        st: &Stat,
    ) -> Result<bool> {
        let now = (
            st.ino,
            st.size,
            (st.mtime.0, st.mtime.1),
            (st.ctime.0, st.ctime.1),
        );
        if seen != now {
            return Ok(false);
        }
        for id in content.iter().chain(content_lists) {
            if !self.writer.contains(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Queues a file's files-cache record, writing the queue when it is full.
    fn record_file(&mut self, key: Vec<u8>, record: FileRecord) -> Result<()> {
        self.file_records.push((key, record));
        if self.file_records.len() >= FILES_CACHE_BATCH {
            self.flush_file_records()?;
        }
        Ok(())
    }

    /// Accounts for a file about to be saved. Returns the node with its content when the
    /// files cache, or else the parent snapshot's node of it (`previous`), shows it
    /// unchanged; otherwise what reading it needs.
    pub(super) fn begin_file(
        &mut self,
        path: &Path,
        mut node: Node,
        st: &Stat,
        previous: Option<&Node>,
    ) -> Result<std::result::Result<Node, (Node, FileStart)>> {
        let key = path.as_os_str().as_bytes().to_vec();
        self.summary.total_bytes += st.size;
        // One files-cache lookup decides both "unchanged" and "changed rather than new".
        let rec = match &self.reader {
            Some(r) => r.file(&key)?,
            None => None,
        };
        let known = rec.is_some() || previous.is_some();
        if let Some(rec) = rec {
            if self.reusable(&rec, st)? {
                node.content = rec.content;
                node.content_lists = rec.content_lists;
                self.summary.files_unmodified += 1;
                self.progress.bytes(st.size);
                self.progress.file_done(path, FileStatus::Unchanged);
                return Ok(Ok(node));
            }
        } else if let Some(prev) = previous.filter(|_| self.reader.is_some()) {
            if self.reusable_previous(prev, st)? {
                node.content = prev.content.clone();
                node.content_lists = prev.content_lists.clone();
                self.summary.files_unmodified += 1;
                self.progress.bytes(st.size);
                self.progress.file_done(path, FileStatus::Unchanged);
                // Recorded, so that the next backup finds it in the files cache.
                let record = FileRecord {
                    inode: st.ino,
                    mtime: (st.mtime.0, st.mtime.1),
                    ctime: (st.ctime.0, st.ctime.1),
                    size: st.size,
                    content: node.content.clone(),
                    content_lists: node.content_lists.clone(),
                };
                self.record_file(key, record)?;
                return Ok(Ok(node));
            }
        }
        self.progress.file(path);
        Ok(Err((node, FileStart { key, known })))
    }

    /// A file that could not be read is left out with a warning.
    fn unreadable(&mut self, path: &Path, st: &Stat, e: std::io::Error) {
        self.summary.total_bytes -= st.size;
        self.summary.files -= 1;
        self.warn(format!("{}: {e}", path.display()));
    }

    /// Reads the file `name` of `dir` as a stream on this thread and the pool (large
    /// files), up to the size it has when opened.
    pub(super) fn read_file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        node: Node,
        st: &Stat,
        start: FileStart,
    ) -> Result<Option<Node>> {
        let saved = open_regular(dir, name).and_then(|(mut f, opened)| {
            let mut limited = (&f).take(opened.size);
            let read = self.save_reader(&mut limited)?;
            let grew = match &read {
                Ok(saved) if saved.len == opened.size => more_to_read(&mut f)?,
                _ => false,
            };
            Ok(read.map(|Saved { ids, len }| Content {
                ids,
                len,
                opened,
                grew,
            }))
        });
        match saved {
            Ok(r) => self.end_file(node, st, start, r?).map(Some),
            Err(e) => {
                self.unreadable(start.path(), st, e);
                Ok(None)
            }
        }
    }

    /// Records a file's content once read: its size, content ids and files-cache record.
    /// `st` is what the folder's listing said of it, `content.opened` what the descriptor
    /// read said when opened; the node describes the latter.
    fn end_file(
        &mut self,
        mut node: Node,
        st: &Stat,
        start: FileStart,
        content: Content,
    ) -> Result<Node> {
        let Content {
            ids,
            len,
            opened,
            grew,
        } = content;
        self.summary.bytes_read += len;
        // The size recorded is the size read, so a file that grew or shrank while it was
        // read restores to exactly the bytes saved.
        self.summary.total_bytes = self.summary.total_bytes - st.size + len;
        set_stat(&mut node, &opened);
        node.size = len;
        pipeline::set_content(&mut self.writer, &mut node, ids)?;
        if start.known {
            self.summary.files_changed += 1;
            self.progress.file_done(start.path(), FileStatus::Changed);
        } else {
            self.summary.files_new += 1;
            self.progress.file_done(start.path(), FileStatus::New);
        }
        let changed = grew || len != opened.size;
        if grew {
            self.note(format!(
                "{}: grew while it was read; saved the {len} bytes it held when opened",
                start.path().display()
            ));
        } else if changed {
            self.note(format!(
                "{}: shrank while it was read; saved {len} of the {} bytes it held when opened",
                start.path().display(),
                opened.size
            ));
        }
        if self.reader.is_some() && !changed {
            let record = FileRecord {
                inode: opened.ino,
                mtime: (opened.mtime.0, opened.mtime.1),
                ctime: (opened.ctime.0, opened.ctime.1),
                size: len,
                content: node.content.clone(),
                content_lists: node.content_lists.clone(),
            };
            self.record_file(start.key, record)?;
        }
        Ok(node)
    }

    /// Reads and seals a folder's small files in parallel on the pool, then adds their
    /// blobs to the writer in order and puts their nodes in `tree`. Reading on several
    /// threads keeps a tree of many small files from being one thread's system calls.
    /// `dir` is the folder's descriptor; without one (the folder was moved away while the
    /// backup was below it) the files are left out with a warning.
    pub(super) fn run_jobs(
        &mut self,
        dir: Option<BorrowedFd<'_>>,
        folder: &Path,
        jobs: &mut Vec<FileJob>,
        tree: &mut Tree,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let known = self.writer.known();
        let keys = self.writer.keys().clone();
        let comp = self.writer.compression();
        let chunker = &self.chunker;
        let results: Vec<Result<JobResult>> = match dir {
            Some(dir) => jobs
                .par_iter()
                .map(|j| read_and_seal(dir, &j.name, chunker, &known, &keys, &comp))
                .collect(),
            None => jobs
                .iter()
                .map(|_| {
                    Ok(JobResult::Unreadable(std::io::Error::other(format!(
                        "its folder {} was moved while it was backed up",
                        folder.display()
                    ))))
                })
                .collect(),
        };
        for (job, result) in jobs.drain(..).zip(results) {
            let node = match result? {
                JobResult::Sealed {
                    sealed,
                    len,
                    opened,
                    grew,
                } => {
                    let mut ids = Vec::with_capacity(sealed.len());
                    add_sealed(&mut self.writer, sealed, &mut ids)?;
                    self.progress.bytes(len);
                    let content = Content {
                        ids,
                        len,
                        opened,
                        grew,
                    };
                    Some(self.end_file(job.node, &job.stat, job.start, content)?)
                }
                JobResult::Grew => match dir {
                    Some(dir) => self.read_file(dir, &job.name, job.node, &job.stat, job.start)?,
                    None => None,
                },
                JobResult::Unreadable(e) => {
                    self.unreadable(job.start.path(), &job.stat, e);
                    None
                }
            };
            if let Some(node) = node {
                tree.nodes.push(node);
            }
        }
        Ok(())
    }

    pub(super) fn flush_file_records(&mut self) -> Result<()> {
        let records = std::mem::take(&mut self.file_records);
        if self.opts.dry_run {
            // A dry run stored nothing, so the next backup must not trust its records.
            return Ok(());
        }
        self.repo.cache().put_files(&records)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::walk::DirHandle;

    /// A file queued as small but longer than `SMALL_FILE` when opened (it grew) is reported
    /// as such, so that it is read again as a stream, never cut short; one that grows after
    /// it is opened is read up to the size it had then, and the growth is reported.
    #[test]
    fn read_small_refuses_files_that_outgrew_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("at-limit"), vec![7u8; SMALL_FILE as usize]).unwrap();
        std::fs::write(dir.path().join("over"), vec![7u8; SMALL_FILE as usize + 1]).unwrap();
        let d = DirHandle::list(dir.path()).unwrap();
        let fd = d.fd().unwrap();
        let (data, opened, grew) = read_small_at(fd, c"at-limit").unwrap().unwrap();
        assert_eq!(
            (data.len(), opened.size, grew),
            (SMALL_FILE as usize, SMALL_FILE, false)
        );
        assert!(read_small_at(fd, c"over").unwrap().is_none());
        assert!(read_small_at(fd, c"missing").is_err());
    }

    /// A small file is read up to the size `fstat` gave when it was opened, and bytes past
    /// it are noticed: a procfs file says 0 bytes and yields more.
    #[test]
    fn small_files_are_read_up_to_their_size_when_opened() {
        let proc_self = DirHandle::list(Path::new("/proc/self")).unwrap();
        let (data, opened, grew) = read_small_at(proc_self.fd().unwrap(), c"status")
            .unwrap()
            .unwrap();
        assert_eq!((data.len(), opened.size, grew), (0, 0, true));
    }

    /// Opening a file never follows a symlink, and a name that is no longer a regular file
    /// (a FIFO swapped in) is refused without blocking.
    #[test]
    fn files_are_opened_without_following_symlinks_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let d = DirHandle::list(dir.path()).unwrap();
        let fd = d.fd().unwrap();
        assert!(read_small_at(fd, c"link").is_err());
        assert!(read_small_at(fd, c"fifo").is_err());
    }
}
