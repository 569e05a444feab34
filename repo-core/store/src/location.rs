//! Where a repository is, as the user writes it (`CAIRN_REPOSITORY`, `--repo`).

use std::path::PathBuf;

use crate::backend::rest::RestTarget;
use crate::error::{Error, Result};

/// Where a repository is, each kind opening to a [`crate::backend::Root`] through
/// [`crate::backend::open`].
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    /// An in-memory repository, for tests and benchmarks (`memory:`).
    Memory,
    /// A server speaking restic's REST protocol v2 (`rest:http(s)://...`).
    Rest(RestTarget),
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s == "memory:" {
            return Ok(Location::Memory);
        }
        if let Some(url) = s.strip_prefix("rest:") {
            return Ok(Location::Rest(RestTarget::parse(url)?));
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::invalid("empty repository location"));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme:?} is not supported (use a local path or rest:URL)"
            )));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}
