//! What a writer checks before it commits a snapshot.
//!
//! Garbage collection never deletes what a running writer may need, as long as the writer's
//! lease is honoured (docs/design.md, "Leases and garbage collection"). A writer does not
//! take that on trust. It notes the index files present when it started; at commit it looks
//! again, and when its lease lapsed or any of those files has gone (a sweep ran while it
//! worked), it walks everything its snapshot references before committing:
//!
//! - a blob listed by an index file in force, in a pack that exists, is fine;
//! - a blob found only in a condemned pack is copied (still sealed, after authentication)
//!   into a new pack and indexed, so the sweep may delete the old pack;
//! - anything else (a tree or blob that is gone, a pack that was deleted) fails the backup,
//!   which commits nothing.
//!
//! A writer whose data was swept therefore fails loudly instead of committing a snapshot that
//! does not restore.

use std::collections::HashSet;

use crate::error::{Error, ErrorKind, Result};
use crate::format::blob::SealedBlob;
use crate::id::Id;
use crate::mark::{overlay_of, walk_blobs, IdSet, Locator};
use crate::repository::Repository;
use crate::writer::BlobWriter;

/// The index files a writer saw when it started.
pub struct IndexWatch {
    started_with: HashSet<Id>,
}

impl IndexWatch {
    /// Notes the index files present now. Call it right after taking the lease, syncing the
    /// index and requiring it intact: the cache then records exactly the listed files, so no
    /// second listing is needed.
    pub fn start(repo: &Repository) -> Result<IndexWatch> {
        Ok(IndexWatch {
            started_with: repo.cache().ingested_index_files()?,
        })
    }

    /// Whether garbage collection removed index files since the writer started: a sweep
    /// (or a repair) ran while it worked.
    pub fn swept_since(&self, repo: &Repository) -> Result<bool> {
        let now: HashSet<Id> = repo.index_file_ids()?.into_iter().collect();
        Ok(self.started_with.iter().any(|id| !now.contains(id)))
    }
}

/// Makes sure everything reachable from `root` is stored and will stay (module docs).
/// Returns how many blobs were copied out of condemned packs.
pub fn ensure_complete(repo: &Repository, root: &Id, level: i32) -> Result<u64> {
    let swept = |what: String| {
        Error::new(
            ErrorKind::Conflict,
            format!("{what}: garbage collection removed data this backup needs while it ran; nothing was committed: run the backup again"),
        )
    };
    repo.sync_index()?;
    repo.require_intact_index()?;
    let overlay = overlay_of(repo, &repo.cache().condemned_packs()?)?;
    let locator = Locator {
        repo,
        overlay: Some(&overlay),
    };
    // A new writer checks each pack it finds a blob in for existence, once.
    let mut writer = BlobWriter::new(repo, level);
    let mut copied = 0u64;
    let mut seen = IdSet::new()?;
    walk_blobs(&locator, root, &mut seen, &mut |kind, id| {
        if writer.contains(id)? {
            return Ok(());
        }
        let Some(loc) = overlay.lookup(id)? else {
            return Err(swept(format!("{kind:?} blob {id} is gone")));
        };
        let sealed = repo
            .read_sealed_blob_at(kind, id, &loc)
            .map_err(|e| swept(format!("{kind:?} blob {id}: {e}")))?;
        // Sealed as the kind it is stored as, which may differ from the kind referenced
        // (a data chunk and a tree with the same bytes share one blob).
        writer.add(SealedBlob {
            kind: loc.kind,
            id: *id,
            raw_length: loc.raw_length,
            bytes: sealed,
        })?;
        copied += 1;
        Ok(())
    })
    .map_err(|e| match e.kind() {
        ErrorKind::Conflict => e,
        ErrorKind::NotFound | ErrorKind::Corrupt => swept(e.to_string()),
        _ => e,
    })?;
    writer.finish()?;
    Ok(copied)
}
