//! Stream sources: standard input (or any reader) and a command's standard output
//! (`--stdin-from-command`, pg_dump-style), each saved as a snapshot of one file.
//!
//! A command's snapshot is committed only if the command exits with status 0: a dump that
//! failed halfway must not look like a good backup. The check runs after the stream has
//! ended and before the snapshot is written, so a failure commits nothing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::pipeline::{self, Saved};
use super::{Archiver, BackupOptions, BackupResult, SnapshotMeta};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::SnapshotKind;
use crate::format::tree::{Node, NodeKind, Time, Tree};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::sys;

/// The node of a stream saved as one file: owned by the user running the backup, readable
/// by them only, timed now.
pub(crate) fn stream_node(name: &str, size: u64) -> Node {
    let now = jiff::Timestamp::now();
    let t = Time(now.as_second(), now.subsec_nanosecond().max(0) as u32);
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        user: Some(sys::username()),
        group: sys::group_name(nix::unistd::getgid().as_raw()),
        mtime: t,
        atime: None,
        ctime: t,
        size,
        inode: 0,
        device: 0,
        links: 1,
        rdev: 0,
        link_target: None,
        xattrs: Vec::new(),
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    }
}

fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::invalid(format!(
            "stdin file name {name:?} must be a plain file name"
        )));
    }
    Ok(())
}

impl Archiver<'_> {
    /// The node of a stream saved as one file named `name` (from [`Archiver::save_reader`]):
    /// its content ids stored on it (spilled into content lists when long), and counted in
    /// the summary as a new file read whole. Several streams can make one tree this way.
    pub(crate) fn stream_file(&mut self, name: &str, saved: Saved) -> Result<Node> {
        validate_stream_name(name)?;
        let node = stream_node(name, saved.len);
        self.file_with_content(node, saved)
    }

    /// `node` (a file whose metadata the caller knows) with the content `saved` stored on
    /// it, counted in the summary as a new file read whole. Its size is the content's.
    pub(crate) fn file_with_content(&mut self, mut node: Node, saved: Saved) -> Result<Node> {
        let Saved { ids, len } = saved;
        node.size = len;
        pipeline::set_content(&mut self.writer, &mut node, ids)?;
        self.summary.files += 1;
        self.summary.files_new += 1;
        self.summary.total_bytes += len;
        self.summary.bytes_read += len;
        Ok(node)
    }

    /// Counts an entry that has no content (a folder, or a symlink and the like).
    pub(crate) fn count_entry(&mut self, kind: crate::format::tree::NodeKind) {
        match kind {
            crate::format::tree::NodeKind::Dir => self.summary.dirs += 1,
            crate::format::tree::NodeKind::File => self.summary.files += 1,
            _ => self.summary.others += 1,
        }
    }
}

/// A stream to back up as one file.
struct Stream<'a> {
    reader: &'a mut (dyn Read + Send),
    name: &'a str,
    kind: SnapshotKind,
    command: Vec<String>,
}

/// Backs up a stream as one file named `name`. `before_commit` runs after the stream ended
/// and before the snapshot is written; an error from it means no snapshot.
fn backup_reader(
    repo: &Repository,
    stream: Stream<'_>,
    opts: &BackupOptions,
    progress: &dyn Progress,
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<BackupResult> {
    let Stream {
        reader,
        name,
        kind,
        command,
    } = stream;
    let started = Instant::now();
    validate_stream_name(name)?;
    let mut a = Archiver::new(repo, opts, progress)?;
    let saved = a.save_reader(reader).map_err(|e| {
        Error::io(
            format!(
                "reading {}",
                if command.is_empty() {
                    "standard input".to_string()
                } else {
                    format!("the output of `{}`", command.join(" "))
                }
            ),
            e,
        )
    })??;
    before_commit()?;
    let node = a.stream_file(name, saved)?;
    let root = a.save_tree(Tree { nodes: vec![node] })?;
    let meta = SnapshotMeta {
        kind,
        paths: vec![format!("/{name}")],
        command,
        pg: None,
        incomplete: false,
    };
    a.commit(meta, root, started)
}

/// Backs up standard input (or any reader) as one file.
pub fn backup_stream(
    repo: &Repository,
    reader: &mut (dyn Read + Send),
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let stream = Stream {
        reader,
        name,
        kind: SnapshotKind::Stdin,
        command: Vec::new(),
    };
    backup_reader(repo, stream, opts, progress, &mut || Ok(()))
}

/// Runs a command and backs up its standard output as one file. The snapshot is written
/// only if the command exits with status 0; otherwise the error names the exit status and
/// nothing is committed. The command's standard error passes through.
pub fn backup_command(
    repo: &Repository,
    argv: &[String],
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::invalid("no command given after --"))?;
    validate_stream_name(name)?;
    let shown = argv.join(" ");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::with_source(ErrorKind::Command, format!("cannot start `{shown}`"), e)
        })?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Command, "no stdout pipe"))?;
    let mut wait = || -> Result<()> {
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for `{shown}`"), e))?;
        if status.success() {
            Ok(())
        } else {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".to_string(),
            };
            Err(Error::new(
                ErrorKind::Command,
                format!("command `{shown}` {how}; no snapshot was saved"),
            ))
        }
    };
    let stream = Stream {
        reader: &mut stdout,
        name,
        kind: SnapshotKind::Command,
        command: argv.to_vec(),
    };
    let result = backup_reader(repo, stream, opts, progress, &mut wait);
    if result.is_err() {
        // Do not leave the child blocked on a full pipe.
        drop(stdout);
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}
