//! Where a repository is, as the user writes it (`CAIRN_REPOSITORY`, `--repo`).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a repository is. Local folders and memory for now; the same string grows `s3:` and
/// `rest:` forms, each opening to a [`crate::backend::Root`] through [`crate::backend::open`].
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    /// An in-memory repository, for tests and benchmarks (`memory:`).
    Memory,
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s == "memory:" {
            return Ok(Location::Memory);
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::invalid("empty repository location"));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme:?} is not supported (use a local path)"
            )));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}
