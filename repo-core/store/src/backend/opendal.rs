//! Roots and tenant namespaces over opendal operators: the local file system, memory and S3
//! (whose own parts are in [`super::s3`]). The operator is built once per root, with the
//! cross-cutting layers stacked on it by [`super::layers`].

use std::sync::Arc;

use ::opendal::{services, ErrorKind as OdKind, Operator};
use async_trait::async_trait;
use bytes::Bytes;

use super::layers::{self, BackendOptions};
use super::s3::{self, S3Settings};
use super::{Backend, FileType, ObjectInfo, Root};
use crate::error::{Error, ErrorKind, Result};
use crate::layout;

/// What an opendal error means to callers: not found, taken, refused, full, or transient.
/// opendal reports a full disk as "unexpected" (and even as temporary), so the OS error
/// beneath an error decides first. What the storage cannot do or how it is set up is
/// permanent (`Other`). Everything else (a timeout, a rate limit, a 5xx, a reset
/// connection) is transient, and stays so after the retry layer gave up on it: a later run
/// may still succeed.
pub(crate) fn map_err(what: impl std::fmt::Display, e: ::opendal::Error) -> Error {
    let kind = match e.kind() {
        OdKind::NotFound => ErrorKind::NotFound,
        OdKind::AlreadyExists | OdKind::ConditionNotMatch => ErrorKind::AlreadyExists,
        OdKind::RangeNotSatisfied => ErrorKind::Corrupt,
        OdKind::PermissionDenied => ErrorKind::PermissionDenied,
        // What the storage cannot do, or how it is set up: the same call fails again.
        OdKind::Unsupported
        | OdKind::ConfigInvalid
        | OdKind::IsADirectory
        | OdKind::NotADirectory
        | OdKind::IsSameFile => ErrorKind::Other,
        _ => match crate::error::io_kind_in_chain(&e) {
            Some(os) => match crate::error::kind_of_io(os) {
                ErrorKind::NotFound | ErrorKind::AlreadyExists => ErrorKind::Io,
                other => other,
            },
            None => ErrorKind::Io,
        },
    };
    Error::with_source(kind, what.to_string(), e)
}

/// A repository root over an opendal operator: the marker object and one namespace per
/// tenant. On a local folder it also owns the staging folder `<root>/tmp`, which no tenant
/// namespace can name.
#[derive(Debug, Clone)]
pub struct OpendalRoot {
    op: Operator,
    description: String,
    /// The folder, for a local root (reads are done directly, see `read_range_direct`).
    local: Option<std::path::PathBuf>,
    /// For an S3 root: the check that the service honours conditional writes, shared by
    /// its tenants. Its presence also selects S3's meaning of errors ([`s3::map_err`]).
    s3: Option<Arc<s3::ConditionalCheck>>,
}

impl OpendalRoot {
    /// A local folder. Uploads are staged in `<root>/tmp` and renamed into place after an
    /// fsync, so a partial upload is never visible under its final name. The folder need not
    /// exist yet; it is created by the first write.
    pub fn local(path: &std::path::Path, options: &BackendOptions) -> Result<Self> {
        let root = std::path::absolute(path)
            .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
        let root_str = root.to_str().ok_or_else(|| {
            Error::invalid(format!("repository path {} is not UTF-8", root.display()))
        })?;
        let tmp = root.join(layout::TMP_DIR);
        let tmp_str = tmp.to_string_lossy().to_string();
        // opendal canonicalises the staging folder when it is built, so it must exist then;
        // it is only created when the root itself exists (init creates the root first).
        let builder = if root.is_dir() {
            std::fs::create_dir_all(&tmp)
                .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
            services::Fs::default()
                .root(root_str)
                .atomic_write_dir(&tmp_str)
        } else {
            services::Fs::default().root(root_str)
        };
        let op = Operator::new(builder)
            .map_err(|e| map_err(format!("opening {}", root.display()), e))?;
        let op = layers::stack(op, options);
        Ok(OpendalRoot {
            op,
            description: root.display().to_string(),
            local: Some(root),
            s3: None,
        })
    }

    /// An in-memory root, for tests and benchmarks. Objects live as long as the value.
    pub fn memory(options: &BackendOptions) -> Result<Self> {
        let op = Operator::new(services::Memory::default())
            .map_err(|e| map_err("opening memory store", e))?;
        let op = layers::stack(op, options);
        Ok(OpendalRoot {
            op,
            description: "memory".to_string(),
            local: None,
            s3: None,
        })
    }

    /// A prefix of an S3 bucket. Must be called inside a tokio runtime. Nothing is sent
    /// until the first operation; the bucket must exist by then.
    pub fn s3(settings: &S3Settings, options: &BackendOptions) -> Result<Self> {
        Ok(OpendalRoot {
            op: s3::operator(settings, options)?,
            description: settings.location.to_string(),
            local: None,
            s3: Some(Arc::new(s3::ConditionalCheck::default())),
        })
    }

    fn err(&self, what: impl std::fmt::Display, e: ::opendal::Error) -> Error {
        match self.s3 {
            Some(_) => s3::map_err(what, e),
            None => map_err(what, e),
        }
    }
}

#[async_trait]
impl Root for OpendalRoot {
    fn description(&self) -> String {
        self.description.clone()
    }

    async fn has_marker(&self) -> Result<bool> {
        self.op.exists(layout::MARKER).await.map_err(|e| {
            self.err(
                format!("looking for a repository at {}", self.description),
                e,
            )
        })
    }

    async fn write_marker(&self, contents: Bytes) -> Result<()> {
        let what = format!("creating repository at {}", self.description);
        let Some(check) = &self.s3 else {
            return self
                .op
                .write(layout::MARKER, contents)
                .await
                .map(|_| ())
                .map_err(|e| map_err(what, e));
        };
        // On S3 the marker is the first object a new repository gets, so the service's
        // conditional writes are checked here, before anything is stored. The marker is
        // created only if absent: a marker found in its place was written by another `init`
        // that won the race, and the repository exists either way.
        check.ensure(&self.op, &self.description).await?;
        match self
            .op
            .write_with(layout::MARKER, contents)
            .if_not_exists(true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match s3::map_err(what, e) {
                e if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Tenant namespaces: top-level folders that hold a config.
    async fn tenants(&self) -> Result<Vec<String>> {
        let entries = self
            .op
            .list("")
            .await
            .map_err(|e| self.err(format!("listing {}", self.description), e))?;
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.name().trim_end_matches('/');
            if entry.metadata().is_dir() && layout::validate_tenant(name).is_ok() {
                let config = format!("{name}/config");
                if self
                    .op
                    .exists(&config)
                    .await
                    .map_err(|e| self.err("listing tenants", e))?
                {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn tenant(&self, tenant: &str) -> Result<Arc<dyn Backend>> {
        layout::validate_tenant(tenant)?;
        Ok(Arc::new(OpendalBackend {
            op: self.op.clone(),
            prefix: format!("{tenant}/"),
            description: format!("{} (tenant {tenant})", self.description),
            local: self.local.clone(),
            s3: self.s3.clone(),
        }))
    }
}

/// One tenant namespace over an opendal operator.
#[derive(Debug, Clone)]
pub struct OpendalBackend {
    op: Operator,
    prefix: String,
    description: String,
    /// The root folder when it is local (object paths include the tenant prefix).
    local: Option<std::path::PathBuf>,
    /// The root's conditional-write check, for an S3 root.
    s3: Option<Arc<s3::ConditionalCheck>>,
}

impl OpendalBackend {
    fn path(&self, ft: FileType, name: &str) -> Result<String> {
        layout::validate_name(ft, name)?;
        Ok(format!("{}{}", self.prefix, layout::path(ft, name)))
    }

    fn err(&self, what: impl std::fmt::Display, e: ::opendal::Error) -> Error {
        match self.s3 {
            Some(_) => s3::map_err(what, e),
            None => map_err(what, e),
        }
    }
}

#[async_trait]
impl Backend for OpendalBackend {
    fn location(&self) -> String {
        self.description.clone()
    }

    fn remove_stale_staging(&self, older_than: std::time::Duration) -> Result<u64> {
        let Some(root) = &self.local else {
            return Ok(0);
        };
        let tmp = root.join(layout::TMP_DIR);
        let entries = match std::fs::read_dir(&tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("listing {}", tmp.display()), e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= older_than);
            if meta.is_file() && stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn create(&self, ft: FileType, name: &str, data: Bytes) -> Result<()> {
        let path = self.path(ft, name)?;
        if let Some(check) = &self.s3 {
            // Create-only rests on the service honouring the condition below.
            check.ensure(&self.op, &self.description).await?;
        }
        self.op
            .write_with(&path, data)
            .if_not_exists(true)
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("writing {path}"), e))
    }

    async fn read(&self, ft: FileType, name: &str) -> Result<Bytes> {
        let path = self.path(ft, name)?;
        self.op
            .read(&path)
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| self.err(format!("reading {path}"), e))
    }

    fn read_direct(&self, ft: FileType, name: &str) -> Option<Result<Bytes>> {
        let root = self.local.as_ref()?;
        Some(self.path(ft, name).and_then(|path| {
            std::fs::read(root.join(&path))
                .map(Bytes::from)
                .map_err(|e| Error::io(format!("reading {path}"), e))
        }))
    }

    fn stat_direct(&self, ft: FileType, name: &str) -> Option<Result<u64>> {
        let root = self.local.as_ref()?;
        Some(self.path(ft, name).and_then(|path| {
            std::fs::metadata(root.join(&path))
                .map(|m| m.len())
                .map_err(|e| Error::io(format!("stat {path}"), e))
        }))
    }

    fn read_range_direct(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Option<Result<Bytes>> {
        let root = self.local.as_ref()?;
        Some(
            self.path(ft, name)
                .and_then(|path| read_local_range(&root.join(&path), &path, offset, len)),
        )
    }

    async fn read_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        let path = self.path(ft, name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::invalid("read range overflows"))?;
        let truncated = || {
            Error::corrupt(format!(
                "{path} is truncated: it ends before {offset}+{len}"
            ))
        };
        let buf = match self.op.read_with(&path).range(offset..end).await {
            Ok(buf) => buf,
            Err(e) if e.kind() == OdKind::RangeNotSatisfied => return Err(truncated()),
            // A range that starts inside the object but ends past it is answered by HTTP
            // services with the part that exists, which opendal reports as an unexpected
            // short read. The object's size tells that case from a real failure.
            Err(e) if e.kind() == OdKind::Unexpected && !e.is_temporary() => {
                return match self.op.stat(&path).await {
                    Ok(meta) if meta.content_length() < end => Err(truncated()),
                    _ => Err(self.err(format!("reading {path} at {offset}+{len}"), e)),
                };
            }
            Err(e) => return Err(self.err(format!("reading {path} at {offset}+{len}"), e)),
        };
        if buf.len() as u64 != len {
            return Err(Error::corrupt(format!(
                "{path} is truncated: wanted {len} bytes at offset {offset}, got {}",
                buf.len()
            )));
        }
        Ok(buf.to_bytes())
    }

    async fn stat(&self, ft: FileType, name: &str) -> Result<u64> {
        let path = self.path(ft, name)?;
        self.op
            .stat(&path)
            .await
            .map(|m| m.content_length())
            .map_err(|e| self.err(format!("stat {path}"), e))
    }

    /// Each object's modification time (a local file's mtime, an S3 object's
    /// `Last-Modified`), one stat per object: meant for snapshots, which are few.
    async fn received_times(
        &self,
        ft: FileType,
    ) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        let mut out = Vec::new();
        for object in self.list(ft).await? {
            let path = self.path(ft, &object.name)?;
            let meta = match self.op.stat(&path).await {
                Ok(m) => m,
                // Removed since it was listed.
                Err(e) if e.kind() == OdKind::NotFound => continue,
                Err(e) => return Err(map_err(format!("stat {path}"), e)),
            };
            match meta.last_modified() {
                Some(t) => out.push((object.name, t.into())),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    async fn list(&self, ft: FileType) -> Result<Vec<ObjectInfo>> {
        if ft == FileType::Config {
            let size = match self.stat(ft, "config").await {
                Ok(size) => size,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            return Ok(vec![ObjectInfo {
                name: "config".into(),
                size,
            }]);
        }
        let dir = format!("{}{}", self.prefix, layout::list_dir(ft));
        let entries = match self.op.list_with(&dir).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == OdKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(format!("listing {dir}"), e)),
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if !entry.metadata().is_file() {
                continue;
            }
            let name = entry.name();
            if layout::validate_name(ft, name).is_err() {
                continue;
            }
            out.push(ObjectInfo {
                name: name.to_string(),
                size: entry.metadata().content_length(),
            });
        }
        Ok(out)
    }

    async fn remove(&self, ft: FileType, name: &str) -> Result<()> {
        let path = self.path(ft, name)?;
        match self.op.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == OdKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("removing {path}"), e)),
        }
    }
}

/// One positioned read of a local object, with the same errors as the opendal path: a
/// missing object is `NotFound`, a range past its end `Corrupt` ("truncated").
fn read_local_range(file: &std::path::Path, shown: &str, offset: u64, len: u64) -> Result<Bytes> {
    use std::os::unix::fs::FileExt;
    offset
        .checked_add(len)
        .ok_or_else(|| Error::invalid("read range overflows"))?;
    let len = usize::try_from(len).map_err(|_| Error::invalid("read range too large"))?;
    let f = std::fs::File::open(file).map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt(format!(
                "{shown} is truncated: it ends before {offset}+{len}"
            ))
        } else {
            Error::io(format!("reading {shown} at {offset}+{len}"), e)
        }
    })?;
    Ok(Bytes::from(buf))
}
