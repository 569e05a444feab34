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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::header::{SegmentHeader, LONG_HEADER_LEN};
use super::names::WalFile;
use crate::archiver::pipeline::set_content;
use crate::archiver::stream::stream_node;
use crate::commit::ensure_complete;
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

pub use super::fetch::{fetch, Fetched};

/// The largest file a push accepts: PostgreSQL's largest segment size.
const MAX_WAL_FILE: u64 = 1 << 30;
/// Blobs sealed in parallel at a time (bounds the memory of a push to this many blobs).
pub(crate) const SEAL_BATCH: usize = 8;

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

/// A WAL file pushed ahead of PostgreSQL's request, in the same commit as the one it asked
/// for: its name, size and BLAKE3, and the snapshot that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedAhead {
    pub name: String,
    pub size: u64,
    pub digest: [u8; 32],
    pub snapshot: Id,
}

/// What a push with push-ahead did: the file asked for, and the further files stored with
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub pushed: Pushed,
    pub ahead: Vec<PushedAhead>,
}

/// A WAL file opened and checked, ready to be stored.
struct Prepared {
    file: WalFile,
    name: String,
    path: PathBuf,
    f: File,
    len: u64,
    mtime: Time,
    system_id: Option<u64>,
}

/// Opens the WAL file at `path` and checks it: its name, its size, and (for a segment) its
/// long page header against the name and the cluster `cluster` the tenant archives.
fn prepare(path: &Path, cluster: Option<u64>) -> Result<Prepared> {
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
    Ok(Prepared {
        file,
        name: name.to_string(),
        path: path.to_path_buf(),
        f,
        len,
        // The file's last write bounds the time of the newest record it holds: status and
        // restore use it to tell whether a moment is covered by the archive.
        mtime: Time(meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0)),
        system_id,
    })
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`; its file name is `%f`).
pub fn push(repo: &Repository, path: &Path) -> Result<Pushed> {
    push_with_ahead(repo, path, &[]).map(|r| r.pushed)
}

/// Archives the WAL file at `path`, and with it, in the same pack, index file and snapshot,
/// the further segments `ahead` (see [`super::push_ahead::ready_after`]). The result is
/// `Ok` only when `path` is durable. A file of `ahead` that cannot be stored (unreadable, a
/// bad header, already archived, another timeline) is left out and never fails the push:
/// PostgreSQL will ask for it by itself, and it is pushed then. `PushReport::ahead` lists
/// the files that were stored, once they are durable.
pub fn push_with_ahead(repo: &Repository, path: &Path, ahead: &[PathBuf]) -> Result<PushReport> {
    match push_batch(repo, path, ahead) {
        // The extra files may be what failed (a full disk takes the larger commit first):
        // the answer for `path` is the one it gets alone.
        Err(e) if !ahead.is_empty() && e.kind() != ErrorKind::Conflict => {
            tracing::info!(
                "pushing ahead failed ({e}); pushing {} alone",
                path.display()
            );
            push_batch(repo, path, &[])
        }
        result => result,
    }
}

fn push_batch(repo: &Repository, path: &Path, ahead: &[PathBuf]) -> Result<PushReport> {
    let catalog = Catalog::load(repo)?;
    let cluster = catalog.system_id()?;
    let main = prepare(path, cluster)?;
    let piece = usize::try_from(repo.config().chunker.max)
        .map_err(|_| Error::corrupt("the chunker's maximum does not fit in memory"))?
        .max(1);

    if let Some((snapshot, node)) = catalog.find(repo, &main.file)? {
        let stored = repo.file_content(&node)?;
        let ours = content_ids(repo, &main.f, main.len, piece)?;
        if stored == ours && node.size == main.len {
            return Ok(PushReport {
                pushed: Pushed::AlreadyArchived { snapshot },
                ahead: Vec::new(),
            });
        }
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} is already archived (snapshot {}) with other content: archived {} bytes, content {}; this file {} bytes, content {}. \
                 The archived file is kept; two clusters or a restored copy may be archiving into one tenant",
                main.name,
                snapshot.short(),
                node.size,
                content_digest(&stored),
                main.len,
                content_digest(&ours)
            ),
        ));
    }
    // Push-ahead takes only plain segments of the same timeline after a plain segment:
    // one snapshot holds one timeline, and its name range then spans only segments.
    let extras: Vec<Prepared> = match &main.file {
        WalFile::Segment(_) => ahead
            .iter()
            .filter_map(|p| prepare_ahead(repo, &catalog, &main, p))
            .collect(),
        _ => Vec::new(),
    };

    let started = std::time::Instant::now();
    let lease = LeaseGuard::acquire(repo, "wal")?;
    let level = repo.config().compression;
    let mut writer = BlobWriter::unindexed(repo, level);
    let mut stored: Vec<(Prepared, Node, Option<[u8; 32]>)> = Vec::new();
    let (main_len, system_id, timeline) = (main.len, main.system_id, main.file.timeline());
    let node = store_file(&mut writer, &main, piece, None)?;
    stored.push((main, node, None));
    for extra in extras {
        let mut hasher = blake3::Hasher::new();
        match store_file(&mut writer, &extra, piece, Some(&mut hasher)) {
            Ok(node) => {
                let digest = *hasher.finalize().as_bytes();
                stored.push((extra, node, Some(digest)));
            }
            // Its blobs may sit in a pack no snapshot refers to; a prune frees them.
            Err(e) => tracing::info!("not pushing {} ahead: {e}", extra.name),
        }
    }
    let (root, dirs) = build_tree(
        &mut writer,
        stored
            .iter()
            .map(|(p, n, _)| (&p.file, n.clone()))
            .collect(),
    )?;
    let stats = writer.finish()?;

    let total: u64 = stored.iter().map(|(p, _, _)| p.len).sum();
    let first = stored.iter().map(|(p, _, _)| p.name.clone()).min();
    let last = stored.iter().map(|(p, _, _)| p.name.clone()).max();
    let snapshot = wal_snapshot(
        repo,
        root,
        Summary {
            files: stored.len() as u64,
            dirs,
            files_new: stored.len() as u64,
            total_bytes: total,
            bytes_read: total,
            blobs_added: stats.blobs_added,
            bytes_added: stats.bytes_added,
            bytes_stored: stats.bytes_stored,
            duration_secs: started.elapsed().as_secs_f64(),
            ..Summary::default()
        },
        system_id,
        timeline,
        (first, last),
    );
    if !lease.held() {
        // Until the snapshot exists, nothing uses what this push stored, so a prune that
        // marked meanwhile condemned its packs, and with the lease lapsed its sweep need not
        // wait: copy out of condemned packs, or fail and commit nothing (commit.rs).
        tracing::warn!("the push's lease lapsed while it ran");
        let copied = ensure_complete(repo, &root, level)?;
        if copied > 0 {
            tracing::info!("copied {copied} blobs out of packs a prune had condemned");
        }
    }
    let id = repo.save_snapshot(&snapshot)?;
    if let Err(e) = lease.release() {
        tracing::warn!("cannot remove the push's lease (it expires by itself): {e}");
    }
    // The files are durable: a failed merge costs only a longer listing until the next push.
    if catalog.snapshots.len() + 1 > super::consolidate::CONSOLIDATE_AT {
        if let Err(e) = super::consolidate::consolidate_if_due(repo) {
            tracing::warn!("merging the wal snapshots failed (the next push tries again): {e}");
        }
    }
    let ahead = stored
        .iter()
        .filter_map(|(p, _, digest)| {
            digest.map(|digest| PushedAhead {
                name: p.name.clone(),
                size: p.len,
                digest,
                snapshot: id,
            })
        })
        .collect();
    Ok(PushReport {
        pushed: Pushed::Stored {
            snapshot: id,
            bytes: main_len,
        },
        ahead,
    })
}

/// The file at `path` prepared to be pushed ahead of `main`, or `None` (logged) when it
/// must be left for PostgreSQL to ask for: not a plain segment after `main` on its
/// timeline, unreadable, a bad header, or a name the catalog already holds (a push of it
/// must compare contents, which PostgreSQL's own call will do).
fn prepare_ahead(
    repo: &Repository,
    catalog: &Catalog,
    main: &Prepared,
    path: &Path,
) -> Option<Prepared> {
    let skip = |why: String| {
        tracing::info!("not pushing {} ahead: {why}", path.display());
        None
    };
    let p = match prepare(path, main.system_id) {
        Ok(p) => p,
        Err(e) => return skip(e.to_string()),
    };
    if !matches!(p.file, WalFile::Segment(_))
        || p.file.timeline() != main.file.timeline()
        || p.name <= main.name
    {
        return skip("not a later segment of the same timeline".into());
    }
    match catalog.find(repo, &p.file) {
        Ok(None) => Some(p),
        Ok(Some(_)) => skip("already archived".into()),
        Err(e) => skip(e.to_string()),
    }
}

/// Stores the content of `p` through `writer` (cut at fixed offsets into pieces of
/// `piece` bytes, sealed in parallel), feeding its bytes to `hasher` in order; returns its
/// file node.
fn store_file(
    writer: &mut BlobWriter,
    p: &Prepared,
    piece: usize,
    mut hasher: Option<&mut blake3::Hasher>,
) -> Result<Node> {
    let level = writer.level();
    let mut ids = Vec::new();
    let mut offset = 0u64;
    while offset < p.len {
        // Read a batch of pieces, seal them in parallel, add them in order.
        let mut pieces = Vec::with_capacity(SEAL_BATCH);
        while pieces.len() < SEAL_BATCH && offset < p.len {
            let n = usize::try_from((p.len - offset).min(piece as u64)).unwrap_or(piece);
            let mut buf = vec![0u8; n];
            p.f.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io(format!("reading {}", p.path.display()), e))?;
            offset += n as u64;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&buf);
            }
            pieces.push(buf);
        }
        let keys = writer.keys().clone();
        let sealed: Vec<Result<blob::SealedBlob>> = pieces
            .par_iter()
            .map(|b| {
                let id = keys.blob_id(b);
                blob::seal(&keys, BlobKind::Data, id, b, level)
            })
            .collect();
        for s in sealed {
            let s = s?;
            ids.push(s.id);
            writer.add(s)?;
        }
    }
    let mut node = stream_node(&p.name, p.len);
    node.mtime = p.mtime;
    set_content(writer, &mut node, ids)?;
    Ok(node)
}

/// Writes the folders of a `wal` snapshot holding `files` (`<timeline>/<log>/<name>`,
/// `<timeline>/<name>` for a `.history` file); returns the root tree and the folder count.
fn build_tree(writer: &mut BlobWriter, files: Vec<(&WalFile, Node)>) -> Result<(Id, u64)> {
    // Timeline folder -> (log folder -> files, files directly in the timeline folder).
    type Folder = (BTreeMap<String, Vec<Node>>, Vec<Node>);
    let mut timelines: BTreeMap<String, Folder> = BTreeMap::new();
    for (file, node) in files {
        let mut path = tree_path(file);
        path.pop();
        let timeline = path.first().cloned().unwrap_or_default();
        let entry = timelines.entry(timeline).or_default();
        match path.get(1) {
            Some(log) => entry.0.entry(log.clone()).or_default().push(node),
            None => entry.1.push(node),
        }
    }
    let mut dirs = 0u64;
    let mut root_nodes = Vec::new();
    for (timeline, (logs, mut nodes)) in timelines {
        for (log, files) in logs {
            let mut tree = Tree { nodes: files };
            tree.canonicalize()?;
            let id = writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?;
            nodes.push(dir_node(&log, id));
            dirs += 1;
        }
        let mut tree = Tree { nodes };
        tree.canonicalize()?;
        let id = writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?;
        root_nodes.push(dir_node(&timeline, id));
        dirs += 1;
    }
    let root = writer.add_plain(BlobKind::Tree, &to_cbor(&Tree { nodes: root_nodes })?)?;
    Ok((root, dirs))
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
