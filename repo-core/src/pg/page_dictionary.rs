//! The page dictionary of a cluster's base backups.
//!
//! Data files change a page at a time, so a base backup after the first stores mostly single
//! changed pages, each compressed on its own. A zstd dictionary trained on the cluster's own
//! pages roughly halves their size (payload format 2, see `format::dictionary`). The policy:
//!
//! - every base backup samples its relation pages (a bounded, evenly spaced sample of at
//!   most [`MAX_SAMPLES`] pages, whatever the cluster's size);
//! - a backup uses the dictionary recorded by the newest base backup in the tenant, and
//!   records it in turn, so the dictionary passes from backup to backup;
//! - it trains a new one at the end, for the backups after it, when there is none yet or the
//!   relation data has grown to [`RETRAIN_GROWTH`] times what the last was trained on (a
//!   dictionary trained right after `initdb` knows only the catalogs).
//!
//! Dictionaries are never collected, so retraining is bounded to keep them few: one per
//! fourfold growth of the cluster.

use std::io::Read;
use std::sync::Arc;

use crate::error::Result;
use crate::format::dictionary::{Dictionary, DictionarySource};
use crate::format::snapshot::SnapshotKind;
use crate::id::{BlobKind, Id};
use crate::repository::Repository;
use crate::writer::BlobWriter;

/// PostgreSQL's page size.
const PAGE: usize = 8192;
/// Pages kept for training: 16 MiB, a few hundred times the dictionary's size, as zstd
/// advises.
const MAX_SAMPLES: usize = 2048;
/// Fewer sampled pages than this train no dictionary (too little to learn from).
const MIN_SAMPLES: usize = 256;
/// A dictionary is trained again once the relation data is this many times what it was
/// trained on.
pub const RETRAIN_GROWTH: u64 = 4;

/// Whether a path in the tar stream is a relation's main fork (`base/<db>/<relfilenode>`,
/// `global/<relfilenode>`, with an optional `.<segment>`), whose pages are sampled.
pub(crate) fn is_relation(path: &[u8]) -> bool {
    let path = path.strip_prefix(b"./").unwrap_or(path);
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let file = match parts.as_slice() {
        [b"base", db, file] if all_digits(db) => file,
        [b"global", file] => file,
        _ => return false,
    };
    let mut pieces = file.splitn(2, |&b| b == b'.');
    let node = pieces.next().unwrap_or_default();
    all_digits(node) && pieces.next().is_none_or(all_digits)
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// An evenly spaced sample of the relation pages that pass through, in bounded memory:
/// every `stride`-th page is kept; when [`MAX_SAMPLES`] are kept, every other one is dropped
/// and the stride doubles.
#[derive(Debug)]
pub(crate) struct PageSampler {
    samples: Vec<u8>,
    stride: u64,
    seen: u64,
    fill: usize,
    page: Vec<u8>,
}

impl Default for PageSampler {
    fn default() -> Self {
        PageSampler {
            samples: Vec::new(),
            stride: 1,
            seen: 0,
            fill: 0,
            page: Vec::with_capacity(PAGE),
        }
    }
}

impl PageSampler {
    /// Starts a file: a page never spans two files.
    pub(crate) fn start_file(&mut self) {
        self.fill = 0;
        self.page.clear();
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (PAGE - self.fill).min(data.len());
            if self.seen.is_multiple_of(self.stride) {
                self.page.extend_from_slice(&data[..n]);
            }
            self.fill += n;
            data = &data[n..];
            if self.fill == PAGE {
                self.end_page();
            }
        }
    }

    fn end_page(&mut self) {
        if self.seen.is_multiple_of(self.stride) {
            self.samples.extend_from_slice(&self.page);
        }
        self.page.clear();
        self.fill = 0;
        self.seen += 1;
        if self.samples.len() >= MAX_SAMPLES * PAGE {
            // Keep the samples at even positions: pages 0, 2·stride, 4·stride, ...
            let kept: Vec<u8> = self
                .samples
                .chunks_exact(PAGE)
                .step_by(2)
                .flatten()
                .copied()
                .collect();
            self.samples = kept;
            self.stride = self.stride.saturating_mul(2);
        }
    }

    /// Relation bytes seen, in whole pages.
    pub(crate) fn relation_bytes(&self) -> u64 {
        self.seen.saturating_mul(PAGE as u64)
    }

    /// A dictionary trained on the sample, or `None` when it is too small to learn from or
    /// zstd finds nothing to learn.
    pub(crate) fn train(&self) -> Option<Vec<u8>> {
        let n = self.samples.len() / PAGE;
        if n < MIN_SAMPLES {
            return None;
        }
        // zstd tunes its training on the last quarter of the samples and learns from the
        // rest, so samples in file order would leave the last files (often a large table's
        // indexes) out of the dictionary: a changed index page then took 2,273 bytes against
        // 1,336 with the same samples shuffled. A fixed shuffle keeps training repeatable.
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..n).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let shuffled: Vec<u8> = order
            .iter()
            .flat_map(|&i| &self.samples[i * PAGE..(i + 1) * PAGE])
            .copied()
            .collect();
        match Dictionary::train(&shuffled, &vec![PAGE; n]) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::info!("no page dictionary: {e}");
                None
            }
        }
    }
}

/// Passes a relation file's content through, feeding the sampler.
pub(crate) struct Sampled<'s, R> {
    pub(crate) inner: R,
    pub(crate) sampler: Option<&'s mut PageSampler>,
}

impl<R: Read> Read for Sampled<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(s) = self.sampler.as_deref_mut() {
            s.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// The dictionary a base backup uses and records.
#[derive(Debug, Clone)]
pub(crate) struct InUse {
    pub(crate) dict: Arc<Dictionary>,
    /// The relation bytes it was trained on.
    pub(crate) basis: u64,
}

/// The dictionary recorded by the newest base backup of this tenant. One stored as another
/// kind of blob is passed over with a warning; one that cannot be read is an error.
pub(crate) fn current(repo: &Repository) -> Result<Option<InUse>> {
    let mut newest: Option<(String, Id, u64)> = None;
    for (_, s) in repo.snapshots()? {
        let Some(pg) = s.pg.as_ref() else { continue };
        let (Some(id), Some(basis)) = (pg.dictionary, pg.dictionary_basis) else {
            continue;
        };
        if s.kind == SnapshotKind::PgBasebackup
            && newest.as_ref().is_none_or(|(t, _, _)| s.time > *t)
        {
            newest = Some((s.time.clone(), id, basis));
        }
    }
    let Some((_, id, basis)) = newest else {
        return Ok(None);
    };
    // Only a blob stored as a dictionary is never collected: the same bytes stored first as
    // a data blob (a blob's id does not depend on its kind) go with the last snapshot that
    // uses them as content, and with them every page compressed with them.
    if let Some(loc) = repo.cache().lookup_readable(&id)? {
        if loc.kind != BlobKind::Dict {
            tracing::warn!(
                "the page dictionary {id} is stored as a {:?} blob, which prune may collect; not using it",
                loc.kind
            );
            return Ok(None);
        }
    }
    // A dictionary that cannot be read is damage, not a reason to go on: the pages this
    // backup finds unchanged are deduplicated against blobs compressed with it, and the
    // snapshot would not restore.
    let dict = repo.dictionary(&id).map_err(|e| {
        e.context(format!(
            "the page dictionary {id} of the last base backup cannot be read (run `cairn check --read-data`)"
        ))
    })?;
    Ok(Some(InUse { dict, basis }))
}

/// After the stream: trains and adds a new dictionary to `writer` when none is in use or the
/// relation data has grown [`RETRAIN_GROWTH`]-fold since; returns the one to record.
pub(crate) fn after_backup(
    repo: &Repository,
    writer: &mut BlobWriter,
    in_use: Option<InUse>,
    sampler: &PageSampler,
) -> Result<Option<(Id, u64)>> {
    let seen = sampler.relation_bytes();
    let due = match &in_use {
        None => true,
        Some(u) => seen >= u.basis.saturating_mul(RETRAIN_GROWTH),
    };
    if due {
        if let Some(bytes) = sampler.train() {
            // The writer takes a blob it already knows as stored, whatever its kind: bytes
            // already stored as data would never become a dictionary blob (see `current`).
            let id = writer.keys().blob_id(&bytes);
            match repo.cache().lookup_readable(&id)? {
                Some(loc) if loc.kind != BlobKind::Dict => {
                    tracing::warn!(
                        "the trained page dictionary {id} is already stored as a {:?} blob; not using it",
                        loc.kind
                    );
                }
                _ => {
                    let id = writer.add_plain(BlobKind::Dict, &bytes)?;
                    return Ok(Some((id, seen)));
                }
            }
        }
    }
    Ok(in_use.map(|u| (*u.dict.id(), u.basis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_from_the_rest() {
        for p in [
            &b"base/5/16396"[..],
            b"base/1/1259.3",
            b"global/1262",
            b"./base/5/2619",
        ] {
            assert!(is_relation(p), "{}", String::from_utf8_lossy(p));
        }
        for p in [
            &b"base/5/16396_fsm"[..],
            b"base/5/16396_vm",
            b"base/5/pg_filenode.map",
            b"global/pg_control",
            b"pg_wal/000000010000000000000001",
            b"base/x/1",
            b"base/5/1.",
            b"PG_VERSION",
        ] {
            assert!(!is_relation(p), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn the_sample_is_bounded_and_evenly_spaced() {
        let mut s = PageSampler::default();
        let pages = 10 * MAX_SAMPLES as u32;
        for i in 0..pages {
            s.start_file();
            let mut page = vec![0u8; PAGE];
            page[..4].copy_from_slice(&i.to_le_bytes());
            // In uneven pieces, as a pipe gives them.
            for piece in page.chunks(3000) {
                s.feed(piece);
            }
        }
        assert_eq!(s.relation_bytes(), u64::from(pages) * PAGE as u64);
        let n = s.samples.len() / PAGE;
        assert!((MAX_SAMPLES / 2..=MAX_SAMPLES).contains(&n), "{n}");
        let firsts: Vec<u32> = s
            .samples
            .chunks_exact(PAGE)
            .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
            .collect();
        let step = firsts[1] - firsts[0];
        assert!(firsts.windows(2).all(|w| w[1] - w[0] == step), "{firsts:?}");
        assert_eq!(u64::from(step), s.stride);
    }

    #[test]
    fn a_partial_page_at_a_file_end_is_not_sampled() {
        let mut s = PageSampler::default();
        s.start_file();
        s.feed(&[1u8; 100]);
        s.start_file();
        s.feed(&[2u8; PAGE]);
        assert_eq!(s.samples, vec![2u8; PAGE]);
        assert_eq!(s.relation_bytes(), PAGE as u64);
    }
}
