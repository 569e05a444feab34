//! `wal fetch` (PostgreSQL's `restore_command`): writing an archived WAL file out whole and
//! verified, and telling "absent" apart from "cannot tell".

use std::path::Path;

use rayon::prelude::*;

use super::names::WalFile;
use super::wal::{Catalog, SEAL_BATCH};
use crate::error::{Error, Result};
use crate::format::tree::Node;
use crate::id::{BlobKind, Id};
use crate::repository::Repository;

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
    write_node(repo, &node, name, dest).map(|bytes| Fetched::Written { bytes })
}

/// Writes the archived file `node` (named `name`) to `dest`, under a temporary name beside
/// it renamed into place only when complete and of the archived size; returns its size.
pub fn write_node(repo: &Repository, node: &Node, name: &str, dest: &Path) -> Result<u64> {
    let ids = repo.file_content(node)?;
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
    Ok(node.size)
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
