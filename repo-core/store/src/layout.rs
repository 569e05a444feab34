//! The one place that knows where objects live. Backends, the CLI and (later) the server
//! all go through [`path`]; nothing else formats an object path.
//!
//! ```text
//! <root>/cairn-repository            plain marker: this is a Cairn repository root
//! <root>/<tenant>/config             encrypted tenant config (the only object named by role)
//! <root>/<tenant>/keys/<id>          key slots
//! <root>/<tenant>/data/<xx>/<id>     packs, fanned out by the first two hex digits
//! <root>/<tenant>/index/<id>         index files
//! <root>/<tenant>/snapshots/<id>     snapshot manifests
//! <root>/<tenant>/locks/<id>         writer leases
//! ```

use crate::error::{Error, Result};

pub const MARKER: &str = "cairn-repository";
/// Where the fs backend stages uploads before renaming them into place.
pub const TMP_DIR: &str = "tmp";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
}

impl FileType {
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Key,
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
        FileType::Lock,
    ];

    /// The directory (or, for config, file) name inside a tenant namespace.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Key => "keys",
            FileType::Pack => "data",
            FileType::Index => "index",
            FileType::Snapshot => "snapshots",
            FileType::Lock => "locks",
        }
    }
}

/// Tenant names become path components and URL segments, so they are restricted.
pub fn validate_tenant(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != TMP_DIR
        && name != MARKER
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid tenant name {name:?}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit (and not {TMP_DIR:?} or {MARKER:?})"
        )))
    }
}

/// Object names are 64 lowercase hex digits (config has the fixed name "config").
pub fn validate_name(ft: FileType, name: &str) -> Result<()> {
    let ok = match ft {
        FileType::Config => name == "config",
        _ => name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {} object name {name:?}",
            ft.dir()
        )))
    }
}

/// The path of an object relative to the tenant namespace.
pub fn path(ft: FileType, name: &str) -> String {
    match ft {
        FileType::Config => "config".to_string(),
        FileType::Pack => format!("data/{}/{}", &name[..2.min(name.len())], name),
        _ => format!("{}/{}", ft.dir(), name),
    }
}

/// The directory whose (recursive) listing holds every object of a type.
pub fn list_dir(ft: FileType) -> String {
    format!("{}/", ft.dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_fan_out() {
        let n = "ab".repeat(32);
        assert_eq!(path(FileType::Pack, &n), format!("data/ab/{n}"));
        assert_eq!(path(FileType::Snapshot, &n), format!("snapshots/{n}"));
    }

    #[test]
    fn tenant_names() {
        assert!(validate_tenant("acme-1").is_ok());
        for bad in ["", "../x", "a/b", "-x", "tmp", "cairn-repository", "é"] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }
}
