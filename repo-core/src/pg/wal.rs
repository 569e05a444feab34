//! WAL archiving: `push` (PostgreSQL's `archive_command`) and `fetch` (its
//! `restore_command`), each a short process.
//!
//! A push stores one WAL file as one snapshot of kind `wal` (docs/design.md, section 16):
//! its tree is `<timeline>/<log>/<segment name>` (`<timeline>/<name>` for a `.history`
//! file), its content is cut at fixed offsets into blobs of the config's chunker `max`, and
//! its manifest's `pg` field names the cluster, the timeline and the file. The push takes a
//! lease, reads no index (its writer deduplicates only against its own blobs), and returns
//! only when the pack, the index file and the snapshot are durable.
//!
//! The catalog of archived files is the set of `wal` snapshots. A name archived before with
//! the same bytes is success without a second upload; with other bytes it is refused and
//! never overwritten. A segment must carry the system identifier of the cluster the catalog
//! already archives.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rayon::prelude::*;

use super::header::{SegmentHeader, LONG_HEADER_LEN};
use super::names::WalFile;
use crate::archiver::pipeline::set_content;
use crate::archiver::stream::stream_node;
use crate::error::{Error, ErrorKind, Result};
use crate::format::blob;
use crate::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use crate::format::to_cbor;
use crate::format::tree::{Node, NodeKind, Time, Tree};
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::repository::Repository;
use crate::sys;
use crate::writer::BlobWriter;

/// The largest file a push accepts: PostgreSQL's largest segment size.
const MAX_WAL_FILE: u64 = 1 << 30;
/// Blobs sealed in parallel at a time (bounds the memory of a push to this many blobs).
const SEAL_BATCH: usize = 8;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The file is now in the repository, in this snapshot.
    Stored { snapshot: Id, bytes: u64 },
    /// The repository already held this name with the same bytes; nothing was written.
    AlreadyArchived { snapshot: Id },
}

/// The `wal` snapshots of a tenant: what has been archived.
pub struct Catalog {
    snapshots: Vec<(Id, Snapshot)>,
}

impl Catalog {
    /// The `wal` snapshots, oldest first.
    pub fn snapshots(&self) -> &[(Id, Snapshot)] {
        &self.snapshots
    }

    pub fn load(repo: &Repository) -> Result<Catalog> {
        let snapshots = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.kind == SnapshotKind::Wal && s.pg.is_some())
            .collect();
        Ok(Catalog { snapshots })
    }

    /// The system identifier of the cluster this tenant archives, if it archives one. Two
    /// identifiers in one tenant mean its catalog cannot be trusted; that is reported.
    pub fn system_id(&self) -> Result<Option<u64>> {
        let mut found: Option<u64> = None;
        for (id, s) in &self.snapshots {
            let Some(pg) = &s.pg else { continue };
            let sysid: u64 = pg.system_identifier.parse().map_err(|_| {
                Error::corrupt(format!(
                    "wal snapshot {id}: system identifier {:?} is not a number",
                    pg.system_identifier
                ))
            })?;
            match found {
                Some(f) if f != sysid => {
                    return Err(Error::corrupt(format!(
                        "the WAL archive holds two clusters ({f} and {sysid}, snapshot {id})"
                    )))
                }
                _ => found = Some(sysid),
            }
        }
        Ok(found)
    }

    /// The archived file of this name, with the snapshot that holds it (the newest, when
    /// several do).
    pub fn find(&self, repo: &Repository, file: &WalFile) -> Result<Option<(Id, Node)>> {
        let name = file.name();
        for (id, s) in self.snapshots.iter().rev() {
            let Some(pg) = &s.pg else { continue };
            let (Some(first), Some(last)) = (&pg.wal_first, &pg.wal_last) else {
                continue;
            };
            if name.as_str() < first.as_str() || name.as_str() > last.as_str() {
                continue;
            }
            if let Some(node) = lookup(repo, &s.tree, &tree_path(file))? {
                return Ok(Some((*id, node)));
            }
        }
        Ok(None)
    }
}

/// Where a WAL file sits in a `wal` snapshot's tree.
fn tree_path(file: &WalFile) -> Vec<String> {
    let name = file.name();
    let timeline = format!("{:08X}", file.timeline());
    match file {
        WalFile::History(_) => vec![timeline, name],
        _ => {
            let log = name.get(8..16).unwrap_or("00000000").to_string();
            vec![timeline, log, name]
        }
    }
}

/// The node at `path` below the tree `root`, if there is one.
fn lookup(repo: &Repository, root: &Id, path: &[String]) -> Result<Option<Node>> {
    let mut tree = repo.load_tree(root)?;
    for (i, part) in path.iter().enumerate() {
        let Some(node) = tree.nodes.into_iter().find(|n| n.name == part.as_bytes()) else {
            return Ok(None);
        };
        if i + 1 == path.len() {
            return Ok(Some(node));
        }
        match node.subtree {
            Some(sub) if node.kind == NodeKind::Dir => tree = repo.load_tree(&sub)?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The blob ids of a file cut at fixed offsets into pieces of `piece` bytes, and its size.
fn content_ids(repo: &Repository, f: &File, len: u64, piece: usize) -> Result<Vec<Id>> {
    let mut ids = Vec::new();
    let mut buf = vec![0u8; piece];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(piece as u64)).unwrap_or(piece);
        f.read_exact_at(&mut buf[..n], offset)
            .map_err(|e| Error::io("reading the WAL file", e))?;
        ids.push(repo.blob_id(&buf[..n]));
        offset += n as u64;
    }
    Ok(ids)
}

/// A short name for a content list, for messages.
fn content_digest(ids: &[Id]) -> String {
    let mut all = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        all.extend_from_slice(&id.0);
    }
    Id::of_bytes(&all).short()
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`; its file name is `%f`).
pub fn push(repo: &Repository, path: &Path) -> Result<Pushed> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{} names no WAL file", path.display())))?;
    let file = WalFile::parse(name)?;
    let f = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let len = meta.len();
    if len > MAX_WAL_FILE {
        return Err(Error::invalid(format!(
            "{name}: {len} bytes, more than a WAL file can hold"
        )));
    }
    let catalog = Catalog::load(repo)?;
    let cluster = catalog.system_id()?;
    let system_id = match &file {
        WalFile::Segment(_) | WalFile::Partial(_) => {
            let mut first = [0u8; LONG_HEADER_LEN];
            let n = read_up_to(&f, &mut first)?;
            let header = SegmentHeader::parse(&first[..n], name)?;
            header.check(name, len, cluster)?;
            Some(header.system_id)
        }
        WalFile::History(_) | WalFile::Backup(_) => cluster,
    };
    let piece = usize::try_from(repo.config().chunker.max)
        .map_err(|_| Error::corrupt("the chunker's maximum does not fit in memory"))?
        .max(1);

    if let Some((snapshot, node)) = catalog.find(repo, &file)? {
        let stored = repo.file_content(&node)?;
        let ours = content_ids(repo, &f, len, piece)?;
        if stored == ours && node.size == len {
            return Ok(Pushed::AlreadyArchived { snapshot });
        }
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{name} is already archived (snapshot {}) with other content: archived {} bytes, content {}; this file {len} bytes, content {}. \
                 The archived file is kept; two clusters or a restored copy may be archiving into one tenant",
                snapshot.short(),
                node.size,
                content_digest(&stored),
                content_digest(&ours)
            ),
        ));
    }

    let started = std::time::Instant::now();
    let lease = LeaseGuard::acquire(repo, "wal")?;
    let level = repo.config().compression;
    let mut writer = BlobWriter::unindexed(repo, level);
    let mut ids = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        // Read a batch of pieces, seal them in parallel, add them in order.
        let mut pieces = Vec::with_capacity(SEAL_BATCH);
        while pieces.len() < SEAL_BATCH && offset < len {
            let n = usize::try_from((len - offset).min(piece as u64)).unwrap_or(piece);
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            offset += n as u64;
            pieces.push(buf);
        }
        let keys = writer.keys().clone();
        let sealed: Vec<Result<blob::SealedBlob>> = pieces
            .par_iter()
            .map(|p| {
                let id = keys.blob_id(p);
                blob::seal(&keys, BlobKind::Data, id, p, level)
            })
            .collect();
        for s in sealed {
            let s = s?;
            ids.push(s.id);
            writer.add(s)?;
        }
    }
    // The file node and the folders above it.
    let mut node = stream_node(name, len);
    // The file's last write bounds the time of the newest record it holds: status and
    // restore use it to tell whether a moment is covered by the archive.
    node.mtime = Time(meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0));
    set_content(&mut writer, &mut node, ids)?;
    let path_in_tree = tree_path(&file);
    let mut child = node;
    for folder in path_in_tree.iter().rev().skip(1) {
        let tree = Tree { nodes: vec![child] };
        let id = writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?;
        child = dir_node(folder, id);
    }
    let root = writer.add_plain(BlobKind::Tree, &to_cbor(&Tree { nodes: vec![child] })?)?;
    let stats = writer.finish()?;

    let snapshot = wal_snapshot(
        repo,
        root,
        Summary {
            files: 1,
            dirs: path_in_tree.len().saturating_sub(1) as u64,
            files_new: 1,
            total_bytes: len,
            bytes_read: len,
            blobs_added: stats.blobs_added,
            bytes_added: stats.bytes_added,
            bytes_stored: stats.bytes_stored,
            duration_secs: started.elapsed().as_secs_f64(),
            ..Summary::default()
        },
        system_id,
        file.timeline(),
        (Some(name.to_string()), Some(name.to_string())),
    );
    if !lease.held() {
        // Nothing this push stored was deduplicated against the index, so a sweep could
        // only have removed its own packs, which it indexed before they could be marked.
        tracing::warn!("the push's lease lapsed while it ran");
    }
    let id = repo.save_snapshot(&snapshot)?;
    if let Err(e) = lease.release() {
        tracing::warn!("cannot remove the push's lease (it expires by itself): {e}");
    }
    // The file is durable: a failed merge costs only a longer listing until the next push.
    if catalog.snapshots.len() + 1 > super::consolidate::CONSOLIDATE_AT {
        if let Err(e) = super::consolidate::consolidate_if_due(repo) {
            tracing::warn!("merging the wal snapshots failed (the next push tries again): {e}");
        }
    }
    Ok(Pushed::Stored {
        snapshot: id,
        bytes: len,
    })
}

/// Reads up to `buf.len()` bytes from the start of `f`; returns how many it read.
fn read_up_to(f: &File, buf: &mut [u8]) -> Result<usize> {
    let mut r = f;
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the WAL file", e)),
        }
    }
    Ok(n)
}

/// A `wal` snapshot of the tree `root`, holding the files named `first..=last` (in name
/// order) of the cluster `system_id`.
pub(crate) fn wal_snapshot(
    repo: &Repository,
    root: Id,
    summary: Summary,
    system_id: Option<u64>,
    timeline: u32,
    (first, last): (Option<String>, Option<String>),
) -> Snapshot {
    Snapshot {
        version: 1,
        time: jiff::Timestamp::now().to_string(),
        host: sys::hostname(),
        user: sys::username(),
        tenant: repo.tenant().to_string(),
        kind: SnapshotKind::Wal,
        paths: Vec::new(),
        tags: Vec::new(),
        parent: None,
        tree: root,
        incomplete: false,
        summary,
        program_version: env!("CARGO_PKG_VERSION").to_string(),
        command: Vec::new(),
        pg: Some(PgInfo {
            system_identifier: system_id.map(|s| s.to_string()).unwrap_or_default(),
            timeline,
            start_lsn: None,
            stop_lsn: None,
            wal_first: first,
            wal_last: last,
            ..PgInfo::default()
        }),
        original: None,
    }
}

/// A folder of a `wal` snapshot's tree (a timeline or a log), owner-only.
pub(crate) fn dir_node(name: &str, subtree: Id) -> Node {
    Node {
        kind: NodeKind::Dir,
        mode: 0o700,
        size: 0,
        subtree: Some(subtree),
        ..stream_node(name, 0)
    }
}

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The whole file is at the destination, verified.
    Written { bytes: u64 },
    /// The repository answered and holds no file of this name.
    Absent,
}

/// Writes the archived WAL file `name` (PostgreSQL's `%f`) to `dest` (`%p`). The file is
/// written under a temporary name beside `dest` and renamed into place only when complete
/// and of the archived size, so PostgreSQL never sees a short file. Every blob is
/// authenticated and checked against its id on the way.
///
/// `Absent` is returned only when the catalog was read completely and holds no such name;
/// any failure to decide (storage, keys, damage) is an error, which the caller must not
/// report as absent.
pub fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<Fetched> {
    let file = WalFile::parse(name)?;
    let catalog = Catalog::load(repo)?;
    let Some((_, node)) = catalog.find(repo, &file)? else {
        return Ok(Fetched::Absent);
    };
    let ids = repo.file_content(&node)?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp_name = format!(
        ".{}.cairn-{}.tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal"),
        Id::random()?.short()
    );
    let tmp = match dir {
        Some(d) => d.join(&tmp_name),
        None => Path::new(&tmp_name).to_path_buf(),
    };
    let written = write_all_blobs(repo, &ids, &tmp);
    let written = match written {
        Ok(n) if n == node.size => Ok(n),
        Ok(n) => Err(Error::corrupt(format!(
            "{name}: the archive's content is {n} bytes, its record says {}",
            node.size
        ))),
        Err(e) => Err(e),
    };
    if let Err(e) = written.and_then(|n| {
        std::fs::rename(&tmp, dest)
            .map_err(|e| Error::io(format!("moving {name} into place at {}", dest.display()), e))
            .map(|()| n)
    }) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Fetched::Written { bytes: node.size })
}

/// Writes the blobs in order to a new file at `path`; returns the bytes written.
fn write_all_blobs(repo: &Repository, ids: &[Id], path: &Path) -> Result<u64> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut total = 0u64;
    for batch in ids.chunks(SEAL_BATCH) {
        let blobs: Vec<Result<Vec<u8>>> = batch
            .par_iter()
            .map(|id| repo.read_blob(BlobKind::Data, id))
            .collect();
        for b in blobs {
            let b = b?;
            out.write_all(&b)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            total += b.len() as u64;
        }
    }
    out.flush()
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(total)
}
