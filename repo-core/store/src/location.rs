//! Where a repository is, as the user writes it (`CAIRN_REPOSITORY`, `--repo`).

use std::path::PathBuf;

use crate::backend::rest::RestTarget;
use crate::error::{Error, Result};

/// Where a repository is: a local folder, memory, a REST server, or an S3 bucket and
/// prefix. Each opens to a [`crate::backend::Root`] through [`crate::backend::open`].
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    /// An in-memory repository, for tests and benchmarks (`memory:`).
    Memory,
    /// A server speaking restic's REST protocol v2 (`rest:http(s)://...`).
    Rest(RestTarget),
    /// A prefix in an S3 bucket (`s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`), reached with
    /// path-style requests. Credentials and region come from the environment, never from the
    /// location string.
    S3(S3Location),
}

/// The parts of an `s3:` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Scheme, host and port, without a trailing slash (`http://127.0.0.1:9000`).
    pub endpoint: String,
    pub bucket: String,
    /// The folder inside the bucket that holds the repository, without leading or trailing
    /// slashes; empty for the bucket's top.
    pub prefix: String,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s == "memory:" {
            return Ok(Location::Memory);
        }
        if let Some(url) = s.strip_prefix("rest:") {
            return Ok(Location::Rest(RestTarget::parse(url)?));
        }
        if let Some(rest) = s.strip_prefix("s3:") {
            return S3Location::parse(rest).map(Location::S3);
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::invalid("empty repository location"));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme:?} is not supported (use a local path, rest:http(s)://HOST[:PORT]/ or s3:http(s)://HOST/BUCKET/PREFIX)"
            )));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }
}

impl S3Location {
    /// Parses what follows `s3:`: `http(s)://HOST[:PORT]/BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<S3Location> {
        let usage = "write an S3 location as s3:https://HOST[:PORT]/BUCKET[/PREFIX]";
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::invalid(format!("S3 location {url:?}: {usage}")))?;
        if scheme != "http" && scheme != "https" {
            return Err(Error::invalid(format!(
                "S3 location {url:?}: the scheme must be http or https ({usage})"
            )));
        }
        if rest.contains(['?', '#']) {
            return Err(Error::invalid(format!(
                "S3 location {url:?}: no query or fragment is allowed ({usage})"
            )));
        }
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.contains('@') {
            return Err(Error::invalid(format!(
                "S3 location {url:?}: credentials do not belong in the location; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )));
        }
        if host.is_empty() {
            return Err(Error::invalid(format!(
                "S3 location {url:?}: the host is missing ({usage})"
            )));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let bucket = parts.next().ok_or_else(|| {
            Error::invalid(format!(
                "S3 location {url:?}: the bucket is missing ({usage})"
            ))
        })?;
        let segments: Vec<&str> = parts.collect();
        if segments.iter().any(|p| *p == "." || *p == "..") {
            return Err(Error::invalid(format!(
                "S3 location {url:?}: the prefix may not contain \".\" or \"..\""
            )));
        }
        Ok(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: segments.join("/"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn s3(s: &str) -> S3Location {
        match Location::parse(s) {
            Ok(Location::S3(l)) => l,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn s3_locations() {
        let l = s3("s3:http://127.0.0.1:9000/bucket/repo/one");
        assert_eq!(l.endpoint, "http://127.0.0.1:9000");
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.prefix, "repo/one");
        assert_eq!(l.to_string(), "s3:http://127.0.0.1:9000/bucket/repo/one");
        let l = s3("s3:https://s3.example.com/bucket/");
        assert_eq!(l.endpoint, "https://s3.example.com");
        assert_eq!(l.prefix, "");
        assert_eq!(l.to_string(), "s3:https://s3.example.com/bucket");
        assert_eq!(s3("s3:https://h//b//p//").prefix, "p");
    }

    #[test]
    fn bad_s3_locations_are_refused() {
        for bad in [
            "s3:",
            "s3:http://host",
            "s3:http://host/",
            "s3:ftp://host/bucket",
            "s3:host/bucket",
            "s3:http:///bucket",
            "s3:http://key:secret@host/bucket",
            "s3:http://host/bucket/../x",
            "s3:http://host/bucket?x=1",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
        let e = Location::parse("s3:http://host:9000/").unwrap_err();
        assert!(e.message().contains("bucket is missing"), "{e}");
    }
}
