//! What each access level may do. The whole policy is [`Access::allows`]: every request is
//! reduced to one [`Op`] before it touches storage, and a user reaches only its own tenant
//! (checked in `auth.rs`).

use std::fmt;

use cairn_store::layout::FileType;
use cairn_store::{Error, Result};

/// A user's access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and list the tenant's objects: restore, check, `restic --no-lock snapshots`.
    Read,
    /// Read and create, and remove locks only: backups, but nothing can be deleted. restic
    /// and Cairn both keep their locks (Cairn's leases) in `locks`, and both must remove
    /// their own at the end of an operation.
    Append,
    /// Everything in the tenant, including deletes (forget, prune).
    Full,
    /// `GET /metrics` only; no tenant.
    Metrics,
}

/// What a request does, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// HEAD, GET and listings.
    Read,
    /// Create the namespace, the config or an object (never an overwrite).
    Create,
    /// Remove an object or the config of this type.
    Delete(FileType),
    /// Read the server's metrics.
    Metrics,
}

impl Access {
    pub fn parse(s: &str) -> Result<Access> {
        match s {
            "read" => Ok(Access::Read),
            "append" => Ok(Access::Append),
            "full" => Ok(Access::Full),
            "metrics" => Ok(Access::Metrics),
            other => Err(Error::invalid(format!(
                "unknown access {other:?} (use read, append, full or metrics)"
            ))),
        }
    }

    pub fn allows(self, op: Op) -> bool {
        match (self, op) {
            (Access::Metrics, op) => op == Op::Metrics,
            (_, Op::Metrics) => false,
            (_, Op::Read) => true,
            (Access::Read, _) => false,
            (Access::Append, Op::Create) => true,
            (Access::Append, Op::Delete(ft)) => ft == FileType::Lock,
            (Access::Full, _) => true,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Append => "append",
            Access::Full => "full",
            Access::Metrics => "metrics",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix() {
        use Access::*;
        for ft in FileType::ALL {
            let d = Op::Delete(ft);
            assert!(!Read.allows(d));
            assert_eq!(Append.allows(d), ft == FileType::Lock, "{ft:?}");
            assert!(Full.allows(d));
            assert!(!Metrics.allows(d));
        }
        for a in [Read, Append, Full] {
            assert!(a.allows(Op::Read));
            assert!(!a.allows(Op::Metrics));
        }
        assert!(!Read.allows(Op::Create));
        assert!(Append.allows(Op::Create) && Full.allows(Op::Create));
        assert!(Metrics.allows(Op::Metrics));
        assert!(!Metrics.allows(Op::Read) && !Metrics.allows(Op::Create));
        for s in ["read", "append", "full", "metrics"] {
            assert_eq!(Access::parse(s).map(|a| a.to_string()).ok(), Some(s.into()));
        }
        assert!(Access::parse("admin").is_err());
    }
}
