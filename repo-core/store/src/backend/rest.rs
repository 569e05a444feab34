//! The REST client: tenant namespaces on a server that speaks restic's REST protocol v2
//! (`cairn-server`, or any other), reached as `rest:http(s)://[USER:PASS@]HOST[:PORT]/[PATH/]`.
//!
//! A tenant `T` is the repository at `<url>T/`; its objects are `<url>T/config` and
//! `<url>T/<type>/<name>` with the same type folders as a local root (the server fans packs
//! out into `data/<xx>/` itself). What each answer means (docs/design.md, sections 11 and 16):
//!
//! - `200`/`206` success; a ranged read must return exactly the bytes asked for, or the
//!   range is `Corrupt` ("truncated"), never a short read.
//! - `404` is `NotFound`; a `DELETE` that finds nothing is success (removal is idempotent), and
//!   a listing of a type folder the server does not have is an empty list.
//! - `403` on a create means the name is taken or the credential may not write: a `HEAD`
//!   tells the two apart (`AlreadyExists`, which callers treat as success for content-named
//!   objects, or `PermissionDenied`). Any other `403`, and `401`, are `PermissionDenied`.
//! - `507` is `QuotaExceeded`; `416` is `Corrupt`; `408`, `429`, `5xx` and transport errors
//!   (refused or reset connections, timeouts) are transient (`Io`) and retried by
//!   [`super::RetryBackend`]; anything else is `Other`.
//!
//! The server is the repository: there is no marker object to read or write over REST, and a
//! server does not list its tenants.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{header, Method, StatusCode};
use serde::Deserialize;

use super::layers::BackendOptions;
use super::{Backend, FileType, ObjectInfo, RetryBackend, Root};
use crate::error::{Error, ErrorKind, Result};
use crate::layout;

/// The media type of restic's v2 listings (name and size of each object).
pub const V2: &str = "application/vnd.x.restic.rest.v2";

/// Where a REST server is and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct RestTarget {
    /// `http(s)://host[:port]/path/`, always ending in `/`, without credentials.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of a certificate authority to trust besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RestTarget {
    // The password never reaches a log line or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestTarget")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl RestTarget {
    /// Parses `http(s)://[USER:PASS@]HOST[:PORT]/[PATH/]` (the part after `rest:`).
    /// Credentials in the URL are percent-decoded; a missing trailing `/` is added.
    pub fn parse(s: &str) -> Result<RestTarget> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            Error::invalid(format!(
                "REST location {s:?} needs a URL such as rest:https://host:8000/"
            ))
        })?;
        if scheme != "http" && scheme != "https" {
            return Err(Error::invalid(format!(
                "REST location scheme {scheme:?} is not http or https"
            )));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(Error::invalid(format!("REST location {s:?} names no host")));
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (Some(percent_decode(name)?), Some(percent_decode(pass)?)),
                None => (Some(percent_decode(u)?), None),
            },
        };
        let mut path = path.to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(RestTarget {
            url: format!("{scheme}://{host}{path}"),
            username,
            password,
            ca_file: None,
        })
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::invalid("bad percent escape in the REST URL's credentials")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid("the REST URL's credentials are not UTF-8"))
}

/// A REST server as a repository root.
#[derive(Debug, Clone)]
pub struct RestRoot {
    target: RestTarget,
    client: reqwest::Client,
    options: BackendOptions,
}

impl RestRoot {
    pub fn new(target: &RestTarget, options: &BackendOptions) -> Result<RestRoot> {
        // reqwest is built without a default crypto provider; rustls' ring provider is
        // installed for the process (a second install is refused, which is fine). ring lacks
        // the post-quantum key exchange of aws-lc-rs (hence the deprecation), but builds in a
        // fraction of the time and needs no C toolchain beyond a compiler.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30));
        if let Some(t) = options.io_timeout {
            builder = builder.read_timeout(t);
        }
        if let Some(path) = &target.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::io(format!("reading the CA file {}", path.display()), e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::invalid(format!("{} holds no PEM certificate: {e}", path.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::new(ErrorKind::Other, format!("setting up HTTP: {e}")))?;
        Ok(RestRoot {
            target: target.clone(),
            client,
            options: options.clone(),
        })
    }
}

#[async_trait]
impl Root for RestRoot {
    fn description(&self) -> String {
        format!("rest:{}", self.target.url)
    }

    /// The server is the repository: there is no marker to read.
    async fn has_marker(&self) -> Result<bool> {
        Ok(true)
    }

    async fn write_marker(&self, _contents: Bytes) -> Result<()> {
        Ok(())
    }

    /// A REST server does not list its tenants (each credential sees its own).
    async fn tenants(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn tenant(&self, name: &str) -> Result<Arc<dyn Backend>> {
        layout::validate_tenant(name)?;
        let inner = RestBackend {
            client: self.client.clone(),
            base: format!("{}{name}/", self.target.url),
            username: self.target.username.clone(),
            password: self.target.password.clone(),
        };
        Ok(Arc::new(RetryBackend::new(Arc::new(inner), &self.options)))
    }
}

/// One tenant namespace on a REST server.
#[derive(Clone)]
pub struct RestBackend {
    client: reqwest::Client,
    /// `<server url><tenant>/`.
    base: String,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for RestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestBackend")
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Deserialize)]
struct Listed {
    name: String,
    size: u64,
    /// When the server received the object, in seconds since the Unix epoch (a field
    /// `cairn-server` adds to v2 listings; other servers leave it out and restic ignores it).
    #[serde(default)]
    received: Option<u64>,
}

impl RestBackend {
    /// The object's URL. Names are checked first, so that no name can leave its folder
    /// (a URL library would resolve `..`).
    fn url(&self, ft: FileType, name: &str) -> Result<String> {
        layout::validate_name(ft, name)?;
        Ok(match ft {
            FileType::Config => format!("{}config", self.base),
            _ => format!("{}{}/{name}", self.base, ft.dir()),
        })
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url).header(header::ACCEPT, V2);
        match &self.username {
            Some(u) => r.basic_auth(u, self.password.as_deref()),
            None => r,
        }
    }

    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        r.send().await.map_err(|e| {
            // A certificate the client does not trust fails the same way every time.
            if let Some(tls) = tls_error(&e) {
                return Error::new(
                    ErrorKind::Other,
                    format!(
                        "{what} on {}: TLS: {tls} (a server with a certificate from a private CA needs --tls-ca or CAIRN_TLS_CA)",
                        self.base
                    ),
                );
            }
            let kind = if e.is_builder() {
                ErrorKind::Other
            } else {
                ErrorKind::Io
            };
            Error::with_source(kind, format!("{what} on {}", self.base), e)
        })
    }

    /// Creates the namespace on the server (restic's `POST <repo>/?create=true`), which
    /// servers answer with 200 whether or not it existed.
    async fn create_namespace(&self) -> Result<()> {
        let url = format!("{}?create=true", self.base);
        let resp = self
            .send("creating the repository", self.request(Method::POST, &url))
            .await?;
        expect_ok(resp.status(), "creating the repository", &self.base)
    }

    async fn exists(&self, ft: FileType, name: &str) -> Result<bool> {
        match self.stat(ft, name).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The TLS error beneath a transport error, if it is one.
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An I/O error carrying another error hides it from `source()`.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The error an unsuccessful status means (module docs).
fn status_error(status: StatusCode, what: &str, url: &str) -> Error {
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        416 => ErrorKind::Corrupt,
        507 => ErrorKind::QuotaExceeded,
        408 | 429 => ErrorKind::Io,
        s if s >= 500 => ErrorKind::Io,
        _ => ErrorKind::Other,
    };
    let why = match status.as_u16() {
        401 => " (the server refused the credentials: check the user name and password)",
        403 => " (the credential may not do this: an append-only or read-only user?)",
        507 => " (the tenant's quota on the server is used up)",
        _ => "",
    };
    Error::new(
        kind,
        format!("{what} {url}: the server answered {status}{why}"),
    )
}

fn expect_ok(status: StatusCode, what: &str, url: &str) -> Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(status_error(status, what, url))
    }
}

fn content_length(resp: &reqwest::Response, url: &str) -> Result<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!("the server gave no size for {url}"),
            )
        })
}

#[async_trait]
impl Backend for RestBackend {
    fn location(&self) -> String {
        format!("rest:{}", self.base)
    }

    async fn create(&self, ft: FileType, name: &str, data: Bytes) -> Result<()> {
        if ft == FileType::Config {
            self.create_namespace().await?;
        }
        let url = self.url(ft, name)?;
        let resp = self
            .send(
                "uploading",
                self.request(Method::POST, &url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    // Also for an empty body, which HTTP clients may send without one:
                    // servers refuse uploads of unknown length.
                    .header(header::CONTENT_LENGTH, data.len())
                    .body(data),
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::FORBIDDEN && self.exists(ft, name).await? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{url} exists already"),
            ));
        }
        expect_ok(status, "uploading", &url)
    }

    async fn read(&self, ft: FileType, name: &str) -> Result<Bytes> {
        let url = self.url(ft, name)?;
        let resp = self
            .send("reading", self.request(Method::GET, &url))
            .await?;
        expect_ok(resp.status(), "reading", &url)?;
        resp.bytes()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading {url}"), e))
    }

    async fn read_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        let url = self.url(ft, name)?;
        if len == 0 {
            // A zero-length range cannot be written as an HTTP range; the object must only
            // be long enough.
            let size = self.stat(ft, name).await?;
            return if offset <= size {
                Ok(Bytes::new())
            } else {
                Err(Error::corrupt(format!(
                    "{url} is truncated: {size} bytes, read at {offset}"
                )))
            };
        }
        let last = offset
            .checked_add(len - 1)
            .ok_or_else(|| Error::invalid("range past the largest offset"))?;
        let resp = self
            .send(
                "reading",
                self.request(Method::GET, &url)
                    .header(header::RANGE, format!("bytes={offset}-{last}")),
            )
            .await?;
        let status = resp.status();
        expect_ok(status, "reading", &url)?;
        let whole = status == StatusCode::OK;
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("reading {url}"), e))?;
        // A server that ignores the range sends the whole object.
        let body = if whole {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = usize::try_from(last).ok().and_then(|l| l.checked_add(1));
            match end {
                Some(end) if end <= body.len() => body.slice(start..end),
                _ => Bytes::new(),
            }
        } else {
            body
        };
        if body.len() as u64 != len {
            return Err(Error::corrupt(format!(
                "{url} is truncated: asked for {len} bytes at {offset}, got {}",
                body.len()
            )));
        }
        Ok(body)
    }

    async fn stat(&self, ft: FileType, name: &str) -> Result<u64> {
        let url = self.url(ft, name)?;
        let resp = self
            .send("looking up", self.request(Method::HEAD, &url))
            .await?;
        expect_ok(resp.status(), "looking up", &url)?;
        content_length(&resp, &url)
    }

    async fn list(&self, ft: FileType) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .list_v2(ft)
            .await?
            .into_iter()
            .map(|l| ObjectInfo {
                name: l.name,
                size: l.size,
            })
            .collect())
    }

    async fn received_times(
        &self,
        ft: FileType,
    ) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        let mut out = Vec::new();
        for l in self.list_v2(ft).await? {
            let Some(secs) = l.received else {
                return Ok(None);
            };
            let at = std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .ok_or_else(|| Error::new(ErrorKind::Other, "a receive time out of range"))?;
            out.push((l.name, at));
        }
        Ok(Some(out))
    }

    async fn remove(&self, ft: FileType, name: &str) -> Result<()> {
        let url = self.url(ft, name)?;
        let resp = self
            .send("removing", self.request(Method::DELETE, &url))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(()),
            s => expect_ok(s, "removing", &url),
        }
    }
}

impl RestBackend {
    /// The objects of a type as the server's v2 listing gives them.
    async fn list_v2(&self, ft: FileType) -> Result<Vec<Listed>> {
        if ft == FileType::Config {
            return Ok(match self.stat(ft, "config").await {
                Ok(size) => vec![Listed {
                    name: "config".to_string(),
                    size,
                    received: None,
                }],
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            });
        }
        let url = format!("{}{}/", self.base, ft.dir());
        let resp = self
            .send("listing", self.request(Method::GET, &url))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        expect_ok(resp.status(), "listing", &url)?;
        let v2 = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            == Some(V2);
        if !v2 {
            return Err(Error::new(
                ErrorKind::Other,
                format!("{url}: the server does not list objects with their sizes (REST protocol v2 is needed)"),
            ));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("listing {url}"), e))?;
        let listed: Vec<Listed> = serde_json::from_slice(&body)
            .map_err(|e| Error::new(ErrorKind::Other, format!("{url}: unreadable listing: {e}")))?;
        Ok(listed
            .into_iter()
            .filter(|l| crate::id::Id::from_hex(&l.name).is_ok())
            .collect())
    }
}
