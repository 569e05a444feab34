//! The stream pipeline: any reader turned into chunks, and the chunks into sealed blobs in a
//! [`BlobWriter`], with reading, cutting, sealing and packing overlapped.
//!
//! This is the one way bytes of unknown length become content: large files, standard input,
//! a command's output, and (to come) WAL segments and base backups all enter through
//! [`save_reader`]. Small files skip the stream and use [`cut`] and [`seal_chunk`] directly
//! on the pool (see `files`), so that both paths cut and seal alike and deduplicate against
//! each other.
//!
//! Memory is bounded by the batch size: one batch being filled, one queued, one being sealed
//! and one handed back for reuse at most, about 4 MiB each (at least two maximal chunks).

use std::io::Read;
use std::sync::mpsc::{sync_channel, TryRecvError};

use rayon::prelude::*;

use crate::crypto::Keys;
use crate::error::Result;
use crate::format::blob::SealedBlob;
use crate::format::to_cbor;
use crate::format::tree::{ContentList, Node, INLINE_CONTENT_MAX};
use crate::id::{BlobKind, Id};
use crate::progress::Progress;
use crate::writer::{BlobWriter, Compression, Known};

/// Content ids per spilled content-list blob.
const CONTENT_LIST_LEN: usize = 8192;

/// Fills `buf` from `filled` on until it is full or the reader ends.
pub(super) fn fill(
    r: &mut dyn Read,
    buf: &mut [u8],
    mut filled: usize,
    eof: &mut bool,
) -> std::io::Result<usize> {
    while !*eof && filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => *eof = true,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The chunks that can be decided in `buf` (all of it at the end of the input).
pub(super) fn cut(
    chunker: &cairn_chunker::Chunker,
    buf: &[u8],
    eof: bool,
) -> Vec<std::ops::Range<usize>> {
    let mut cuts = Vec::new();
    let mut start = 0;
    while let Some(n) = chunker.next_cut(&buf[start..], eof) {
        cuts.push(start..start + n);
        start += n;
    }
    cuts
}

/// A chunk's id, and the sealed blob when the repository did not have it yet.
pub(super) type Sealed = Vec<(Id, Option<SealedBlob>)>;

/// Hashes, looks up, compresses and seals chunks in parallel on the rayon pool.
fn seal_chunks(known: &Known, keys: &Keys, comp: &Compression, chunks: &[&[u8]]) -> Result<Sealed> {
    chunks
        .par_iter()
        .map(|data| seal_chunk(known, keys, comp, data))
        .collect()
}

/// A chunk's id, and the chunk sealed unless the repository or writer already has it.
pub(super) fn seal_chunk(
    known: &Known,
    keys: &Keys,
    comp: &Compression,
    data: &[u8],
) -> Result<(Id, Option<SealedBlob>)> {
    let id = keys.blob_id(data);
    if known.contains(&id)? {
        return Ok((id, None));
    }
    Ok((id, Some(comp.seal(keys, id, data)?)))
}

/// Adds sealed chunks to the writer in order; appends every chunk's id to `ids`.
pub(super) fn add_sealed(writer: &mut BlobWriter, sealed: Sealed, ids: &mut Vec<Id>) -> Result<()> {
    for (id, blob) in sealed {
        ids.push(id);
        if let Some(b) = blob {
            writer.add(b)?;
        }
    }
    Ok(())
}

/// Adds a sealed batch (and its plaintext length) to the writer; returns that length.
fn add_batch(
    writer: &mut BlobWriter,
    batch: Option<(Sealed, usize)>,
    ids: &mut Vec<Id>,
    progress: &dyn Progress,
) -> Result<u64> {
    let Some((sealed, n)) = batch else {
        return Ok(0);
    };
    add_sealed(writer, sealed, ids)?;
    progress.bytes(n as u64);
    Ok(n as u64)
}

/// A stream's content as stored: its chunks' ids in order and its length in bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Saved {
    pub(crate) ids: Vec<Id>,
    pub(crate) len: u64,
}

/// Reads `r` to its end and stores its content through `writer`, cut by `chunker`.
///
/// Reading and cutting run on a thread of their own, so that both overlap with compressing
/// and sealing the previous batch on the rayon pool, which in turn overlaps with adding the
/// batch before to the pack. `progress` hears of the bytes of each batch once it is stored.
///
/// The two layers of the result keep apart whose fault a failure is: the outer error is the
/// source's (it could not be read: for a file, a warning and the file left out), the inner
/// one the repository's (the backup fails). Either way, blobs already added stay in the
/// writer; nothing references them until a snapshot does.
pub(crate) fn save_reader(
    writer: &mut BlobWriter,
    chunker: &cairn_chunker::Chunker,
    r: &mut (dyn Read + Send),
    progress: &dyn Progress,
) -> std::io::Result<Result<Saved>> {
    let chunker = chunker.clone();
    // Two maximal chunks at least, so that every batch but the last decides a chunk.
    let cap = (4 << 20).max(2 * chunker.params().max);
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<std::io::Result<(Vec<u8>, Vec<std::ops::Range<usize>>)>>(1);
        // Batches come back once sealed and are reused: a fresh buffer per batch costs a
        // page fault per 4 KiB.
        let (recycle, recycled) = sync_channel::<Vec<u8>>(2);
        scope.spawn(move || {
            let mut buf = vec![0u8; cap];
            let mut filled = 0;
            let mut eof = false;
            loop {
                filled = match fill(r, &mut buf, filled, &mut eof) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let cuts = cut(&chunker, &buf[..filled], eof);
                let used: usize = cuts.iter().map(|c| c.len()).sum();
                let mut next = recycled.try_recv().unwrap_or_else(|_| vec![0u8; cap]);
                next[..filled - used].copy_from_slice(&buf[used..filled]);
                let batch = std::mem::replace(&mut buf, next);
                filled -= used;
                if tx.send(Ok((batch, cuts))).is_err() {
                    return; // the consumer stopped on an error
                }
                if eof && filled == 0 {
                    return;
                }
            }
        });
        // Two stages overlap on the pool: while batch N is sealed, batch N-1's blobs are
        // added to the pack (a copy, and a wait whenever the upload queue is full). Done in
        // turn, the pool would idle during every add.
        let known = writer.known();
        let keys = writer.keys().clone();
        let comp = writer.compression();
        let mut ids = Vec::new();
        let mut total = 0u64;
        let mut sealed_before: Option<(Sealed, usize)> = None;
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // The input stalls (a dump waiting on a lock, a slow pipe): store what
                    // is sealed now rather than holding it until more arrives.
                    match add_batch(writer, sealed_before.take(), &mut ids, progress) {
                        Ok(n) => total += n,
                        Err(e) => return Ok(Err(e)),
                    }
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
            };
            let (batch, cuts) = msg?;
            let slices: Vec<&[u8]> = cuts.iter().map(|r| &batch[r.clone()]).collect();
            let before = sealed_before.take();
            let (sealed, added) = rayon::join(
                || seal_chunks(&known, &keys, &comp, &slices),
                || add_batch(writer, before, &mut ids, progress),
            );
            let sealed = match (sealed, added) {
                (Ok(s), Ok(n)) => {
                    total += n;
                    s
                }
                (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
            };
            let n: usize = cuts.iter().map(|c| c.len()).sum();
            sealed_before = Some((sealed, n));
            drop(slices);
            let _ = recycle.try_send(batch);
        }
        match add_batch(writer, sealed_before, &mut ids, progress) {
            Ok(n) => total += n,
            Err(e) => return Ok(Err(e)),
        }
        Ok(Ok(Saved { ids, len: total }))
    })
}

/// Stores the content ids on the node, spilling long lists into content-list blobs (tree
/// blobs of [`CONTENT_LIST_LEN`] ids each) so that no tree grows with a file's size.
pub(crate) fn set_content(writer: &mut BlobWriter, node: &mut Node, ids: Vec<Id>) -> Result<()> {
    if ids.len() <= INLINE_CONTENT_MAX {
        node.content = ids;
        return Ok(());
    }
    for part in ids.chunks(CONTENT_LIST_LEN) {
        let list = to_cbor(&ContentList { ids: part.to_vec() })?;
        node.content_lists
            .push(writer.add_plain(BlobKind::Tree, &list)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::format::config::ChunkerConfig;
    use crate::location::Location;
    use crate::progress::NoProgress;
    use crate::repository::{Credentials, InitOptions, OpenOptions, Repository};
    use crate::testing::Rng;

    /// A reader that yields at most `step` bytes a call, is interrupted every third call, and
    /// fails once `fail_at` bytes have been read.
    struct Trickle<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
        calls: u64,
        fail_at: Option<usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(std::io::Error::other("the source failed"));
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[derive(Default)]
    struct Bytes(AtomicU64);
    impl Progress for Bytes {
        fn bytes(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn repository(dir: &std::path::Path) -> Repository {
        let location = Location::Local(dir.join("repo"));
        let credentials = Credentials::Key(crate::crypto::MasterKey::generate().unwrap());
        let opts = InitOptions {
            chunker: ChunkerConfig {
                min: 4096,
                avg: 16384,
                max: 65536,
            },
            ..Default::default()
        };
        let open = OpenOptions {
            cache_dir: Some(dir.join("cache")),
            ..Default::default()
        };
        Repository::init(&location, "default", &credentials, &opts, &open).unwrap();
        Repository::open(&location, "default", &credentials, &open).unwrap()
    }

    /// Batches never change where chunks are cut: a stream read in dribbles across several
    /// batches gives the chunks of its bytes cut whole, and progress hears of every byte.
    /// A source that fails is the outer error, not the repository's.
    #[test]
    fn a_stream_is_cut_as_if_whole_and_a_failing_source_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let chunker = repo.chunker().unwrap();
        let data = Rng::new(7).bytes(9_000_000 + 12_345);
        let want: Vec<Id> = cut(&chunker, &data, true)
            .into_iter()
            .map(|r| repo.keys().blob_id(&data[r]))
            .collect();

        let mut writer = BlobWriter::new(&repo, 1);
        let mut r = Trickle {
            data: &data,
            pos: 0,
            step: 100_003,
            calls: 0,
            fail_at: None,
        };
        let seen = Bytes::default();
        let saved = save_reader(&mut writer, &chunker, &mut r, &seen)
            .unwrap()
            .unwrap();
        assert_eq!(saved.len, data.len() as u64);
        assert_eq!(saved.ids, want);
        assert_eq!(seen.0.load(Ordering::Relaxed), saved.len);

        let mut r = Trickle {
            data: &data,
            pos: 0,
            step: 100_003,
            calls: 0,
            fail_at: Some(5_000_000),
        };
        let failed = save_reader(&mut writer, &chunker, &mut r, &NoProgress);
        assert!(failed.is_err(), "a failing source is the outer error");
        writer.finish().unwrap();
    }
}
