//! What the server does to a tenant's objects, over cairn-store's [`Backend`]: the same
//! trait the Cairn client stores through, so any storage a `Location` names (a local
//! folder, S3) serves unchanged.
//!
//! Invariants the routes rely on:
//! - an upload is checked against its name before anything is stored, and stored with the
//!   backend's create-only, atomic `create`: an object is either absent or complete under its
//!   final name, durable once the upload is answered 200, and never replaced;
//! - a read of a range never returns bytes outside the object (ranges are resolved against
//!   the object's size first, see [`crate::range`]).

use std::sync::Arc;

use bytes::Bytes;
use cairn_store::backend::{Backend, ObjectInfo};
use cairn_store::layout::FileType;
use cairn_store::{Error, ErrorKind, Result};

use crate::range::Plan;
use crate::verify::NameHash;

/// Which hashes an upload's name may be made with. Every accepted name is the hash of the
/// body by one of them, so the server can always tell a damaged or mislabelled upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePolicy {
    /// BLAKE3 (Cairn clients) or SHA-256 (restic clients).
    Either,
    /// Only this hash.
    Only(NameHash),
}

/// Checks that `body` is the object `name` of type `ft` (config is named by role and not
/// checked). Hashing runs on the blocking pool: a 128 MiB pack takes a noticeable time.
pub async fn check_upload(policy: NamePolicy, ft: FileType, name: &str, body: Bytes) -> Result<()> {
    if ft == FileType::Config {
        return Ok(());
    }
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let hashes: &[NameHash] = match &policy {
            NamePolicy::Either => &[NameHash::Blake3, NameHash::Sha256],
            NamePolicy::Only(h) => std::slice::from_ref(h),
        };
        let mut last = None;
        for hash in hashes {
            match crate::verify::check_upload(*hash, ft, &name, &body) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("no name hash configured")))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Other, format!("upload check failed: {e}")))?
}

/// Stores a checked upload. An existing name is `AlreadyExists`, also when it is found only
/// by the create itself (a concurrent upload of the same name won).
pub async fn store(
    backend: &Arc<dyn Backend>,
    policy: NamePolicy,
    ft: FileType,
    name: &str,
    body: Bytes,
) -> Result<()> {
    // A cheap look first: an existing object is refused without hashing the body.
    match backend.stat(ft, name).await {
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{}/{name} exists", ft.dir()),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    check_upload(policy, ft, name, body.clone()).await?;
    backend.create(ft, name, body).await
}

/// The bytes a GET sends, with the object's size, following `plan`.
pub async fn read(
    backend: &Arc<dyn Backend>,
    ft: FileType,
    name: &str,
    range: Option<&str>,
) -> Result<(Plan, u64, Bytes)> {
    let size = backend.stat(ft, name).await?;
    let plan = crate::range::plan(range, size);
    let bytes = match plan {
        Plan::Whole => backend.read(ft, name).await?,
        Plan::Part { offset, len } => backend.read_range(ft, name, offset, len).await?,
        Plan::Unsatisfiable => Bytes::new(),
    };
    Ok((plan, size, bytes))
}

/// Every complete object of a type.
pub async fn list(backend: &Arc<dyn Backend>, ft: FileType) -> Result<Vec<ObjectInfo>> {
    backend.list(ft).await
}
