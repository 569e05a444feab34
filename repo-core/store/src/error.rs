//! The one error type of the library.
//!
//! Policy: every fallible function returns [`Result`]. An [`Error`] carries a [`ErrorKind`]
//! that callers match on (the CLI maps kinds to exit codes), a human context naming the
//! object or path involved, and the underlying source when there is one. Library code never
//! panics on bad input: corrupt objects, wrong keys and I/O failures are all errors.

use std::fmt;

/// What went wrong, coarse enough to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An object, snapshot, tenant or path does not exist.
    NotFound,
    /// A create-only write found the name taken.
    AlreadyExists,
    /// No key slot opens with the given password, or a key file belongs to another tenant.
    WrongPassword,
    /// Stored bytes fail authentication, decoding or a consistency check.
    Corrupt,
    /// The location holds no Cairn repository.
    NotARepository,
    /// A user-supplied argument is malformed or matches several things.
    InvalidInput,
    /// Writing would destroy data the user did not ask to replace.
    Conflict,
    /// A child command (e.g. `pg_dump`) failed.
    Command,
    /// Local or backend I/O failed in a way that may succeed when retried (a network or
    /// device error, a timeout, a rate limit).
    Io,
    /// The storage refused the operation: no permission, a read-only folder or file system,
    /// or credentials that do not allow it. Retrying does not help.
    PermissionDenied,
    /// The storage is full or the quota is used up. Retrying helps only once space is freed.
    QuotaExceeded,
    /// The local cache is damaged or unusable. It is derived data: the repository is not
    /// affected, and the cache is rebuilt from it.
    Cache,
    /// Anything else, e.g. an unexpected backend response.
    Other,
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with more context, keeping kind and source.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// An I/O error on a local path; the kind follows the OS error.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        Error::with_source(kind_of_io(err.kind()), what.to_string(), err)
    }

    /// Whether retrying the same operation may succeed (kind [`ErrorKind::Io`]): retry
    /// layers retry these and nothing else.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Io
    }
}

/// The kind of error an OS error is.
pub fn kind_of_io(kind: std::io::ErrorKind) -> ErrorKind {
    use std::io::ErrorKind as Os;
    match kind {
        Os::NotFound => ErrorKind::NotFound,
        Os::AlreadyExists => ErrorKind::AlreadyExists,
        Os::PermissionDenied | Os::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
        Os::StorageFull | Os::QuotaExceeded | Os::FileTooLarge => ErrorKind::QuotaExceeded,
        _ => ErrorKind::Io,
    }
}

/// The OS error kind found first in an error's chain of sources, if any.
pub fn io_kind_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Chains are short; the bound keeps a cyclic one from looping.
    for _ in 0..16 {
        let err = current?;
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Adds context to errors of any result whose error converts into [`Error`].
pub trait ResultExt<T> {
    fn ctx(self, context: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn ctx(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
}

#[cfg(feature = "redb")]
impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        let kind = match &e {
            redb::Error::Corrupted(_) | redb::Error::LockPoisoned(_) => ErrorKind::Cache,
            _ => ErrorKind::Io,
        };
        Error::with_source(kind, "cache database", e)
    }
}

#[cfg(feature = "redb")]
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}
#[cfg(feature = "redb")]
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
