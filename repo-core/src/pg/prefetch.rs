//! Prefetching WAL for a recovery: the segments after the one PostgreSQL last asked for,
//! fetched from the repository into the spool (`pg/spool.rs`) before PostgreSQL asks.
//!
//! One prefetcher runs per spool (it holds the spool's lock; another one started meanwhile
//! returns at once). It follows the spool's `wanted` note, which every `wal fetch` updates:
//! it keeps the next segments after the wanted one (same timeline) in the spool, within a
//! count and a byte bound, and removes the ones below it (PostgreSQL moved past them). It
//! stops when they are all there, at the first name the archive does not hold (the end of
//! the archive: it never records an absence, which only the repository may answer) or at
//! the first error. It writes only into the spool, never into the data directory.

use super::fetch::write_node;
use super::names::{Segment, WalFile};
use super::spool::Spool;
use super::wal::Catalog;
use crate::error::Result;
use crate::repository::Repository;

/// How much a prefetcher keeps in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchLimits {
    /// Segments after the wanted one (0: none).
    pub files: usize,
    /// Bytes at most in the spool's prefetched files.
    pub bytes: u64,
}

/// What a prefetcher did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefetched {
    /// Another prefetcher holds the spool.
    pub busy: bool,
    /// The files it fetched.
    pub files: Vec<String>,
}

/// The segment `name` names, for segments of `seg_size` bytes, when it is a plain segment.
fn segment_of(name: &str, seg_size: u64) -> Option<(Segment, u32)> {
    let size = u32::try_from(seg_size).ok()?;
    match WalFile::parse(name) {
        Ok(WalFile::Segment(_)) => Segment::parse(name, size).ok().map(|s| (s, size)),
        _ => None,
    }
}

/// Fills the spool with the segments after the wanted one (see the module's comment).
pub fn prefetch(repo: &Repository, spool: &Spool, limits: PrefetchLimits) -> Result<Prefetched> {
    let Some(_lock) = spool.try_lock_prefetch()? else {
        return Ok(Prefetched {
            busy: true,
            files: Vec::new(),
        });
    };
    let mut done = Prefetched::default();
    if limits.files == 0 {
        return Ok(done);
    }
    let catalog = Catalog::load(repo)?;
    while let Some((wanted, seg_size)) = spool.wanted() {
        let Some((from, size)) = segment_of(&wanted, seg_size) else {
            break;
        };
        // Keep what lies after the wanted segment on its timeline, up to the bound.
        let limit = from.number.saturating_add(limits.files as u64);
        spool.clean_fetched(|name| {
            segment_of(name, seg_size).is_some_and(|(s, _)| {
                s.timeline == from.timeline && s.number > from.number && s.number <= limit
            })
        });
        let held = spool.fetched();
        let mut bytes: u64 = held.iter().map(|(_, b)| *b).sum();
        let next = (1..=limits.files as u64)
            .filter_map(|k| {
                Segment::from_number(from.timeline, from.number.checked_add(k)?, size).ok()
            })
            .map(|s| s.name(size))
            .find(|n| !spool.has_fetched(n));
        let Some(next) = next else { break };
        let file = WalFile::parse(&next)?;
        let Some((_, node)) = catalog.find(repo, &file)? else {
            // The end of the archive (or a timeline switch): nothing to say about it here.
            break;
        };
        bytes = bytes.saturating_add(node.size);
        if bytes > limits.bytes {
            break;
        }
        spool.store_fetched(&next, |tmp| write_node(repo, &node, &next, tmp))?;
        done.files.push(next);
    }
    Ok(done)
}
