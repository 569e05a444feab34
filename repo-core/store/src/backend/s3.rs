//! Roots in an S3 bucket, through opendal's S3 service.
//!
//! A root is a prefix of a bucket, laid out like a local folder (`layout.rs`): the marker
//! object `<prefix>/cairn-repository` and one namespace per tenant, `<prefix>/<tenant>/...`.
//! Objects are read, listed and removed by the same code as local folders
//! ([`super::OpendalBackend`]); what is S3's own is here:
//!
//! - the operator: path-style requests to the location's endpoint, credentials and region
//!   from the environment (never from the location string), TLS through rustls with the
//!   `ring` provider;
//! - create-only writes: every `create` is a conditional put (`If-None-Match: *`), so two
//!   writers of one name cannot overwrite each other. A service that ignores the header
//!   would silently replace objects, so before the first write of a process the root checks
//!   that the service honours it ([`ConditionalCheck`]) and refuses to write when it does not;
//! - what S3's answers mean to callers ([`map_err`]): 403 is `PermissionDenied` with a hint
//!   about credentials, a 412 on a conditional put is `AlreadyExists`, a full quota (507 or
//!   a storage-full code) is `QuotaExceeded`, a missing bucket `NotFound`, other refusals
//!   (4xx) `Other`, and 5xx answers, rate limits, timeouts and network failures `Io`
//!   (transient: the retry layer retries them).

use ::opendal::{services, ErrorKind as OdKind, HttpTransporter, OperationContext, Operator};
use bytes::Bytes;
use opendal_http_transport_reqwest::ReqwestTransport;
use tokio::sync::OnceCell;

use super::layers::{self, BackendOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::location::S3Location;

/// The region used when the environment names none. Path-style requests to a self-hosted
/// service accept any region; AWS itself wants the bucket's.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The object that the conditional-write check puts, beside the marker. Its name starts
/// with a dot, so it is never a tenant name and no tenant namespace can reach it.
pub const PROBE: &str = ".cairn-conditional-write-check";

/// Everything needed to reach an S3 root.
#[derive(Clone)]
pub struct S3Settings {
    pub location: S3Location,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("location", &self.location)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// Settings from the usual AWS variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` (optional), and `AWS_REGION` or `AWS_DEFAULT_REGION` (default
    /// [`DEFAULT_REGION`]). Missing credentials are refused here, before any request.
    pub fn from_env(location: &S3Location) -> Result<S3Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(access_key_id), Some(secret_access_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::invalid(format!(
                "{location}: S3 credentials are missing; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )));
        };
        Ok(S3Settings {
            location: location.clone(),
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| DEFAULT_REGION.to_string()),
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// The operator of an S3 root, with `options`' layers stacked on it. Must be called inside
/// a tokio runtime (opendal's HTTP client runs on it).
pub(crate) fn operator(settings: &S3Settings, options: &BackendOptions) -> Result<Operator> {
    // The HTTP client is built without a TLS provider of its own: the process-wide default
    // must be set before it is made. `ring` is chosen because it builds quickly with no
    // C toolchain beyond cc (rustls marks it deprecated only for lacking post-quantum key
    // exchange). An error only means a provider was installed already (by an earlier root
    // or by the program), which serves as well.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let _ = provider.install_default();
    // Each root has its own client and connection pool, given to its operator alone.
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Other, "building the HTTP client for S3", e))?;
    let transport = HttpTransporter::new(ReqwestTransport::new(client));
    let location = &settings.location;
    // Path-style addressing is opendal's default (virtual hosts need an opt-in), which is
    // what a HOST:PORT endpoint needs. Configuration files and instance metadata are not
    // consulted: what reaches the service is what the environment said.
    let mut builder = services::S3::default()
        .endpoint(&location.endpoint)
        .bucket(&location.bucket)
        .root(&format!("/{}", location.prefix))
        .region(&settings.region)
        .access_key_id(&settings.access_key_id)
        .secret_access_key(&settings.secret_access_key)
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(token) = &settings.session_token {
        builder = builder.session_token(token);
    }
    let op = Operator::new(builder)
        .map_err(|e| map_err(format!("opening {location}"), e))?
        .with_context(OperationContext::new().with_http_transport(transport));
    Ok(layers::stack(op, options))
}

/// Whether the service honours `If-None-Match: *` on a put, checked once per root and
/// process before its first write. Only success is remembered: a check that failed (the
/// service was unreachable, or ignores the header) runs again before the next write.
#[derive(Debug, Default)]
pub(crate) struct ConditionalCheck {
    passed: OnceCell<()>,
}

impl ConditionalCheck {
    /// Succeeds once the service has shown that it refuses a conditional put of an existing
    /// name. The check puts [`PROBE`] conditionally: a 412 proves it at once (the object is
    /// there from an earlier check); a success means the object was new, and a second
    /// conditional put must then be refused. A service that accepts both ignores the header,
    /// and every `create` on it could overwrite another writer's object, so writing is
    /// refused. The probe is an empty object and is never removed, so the check needs no
    /// permission to delete.
    pub(crate) async fn ensure(&self, op: &Operator, description: &str) -> Result<()> {
        self.passed
            .get_or_try_init(|| async {
                for _attempt in 0..2 {
                    match op
                        .write_with(PROBE, Bytes::new())
                        .if_not_exists(true)
                        .await
                    {
                        Ok(_) => continue,
                        Err(e) if is_condition_failed(&e) => return Ok(()),
                        Err(e) => {
                            return Err(map_err(
                                format!("checking conditional writes on {description}"),
                                e,
                            ))
                        }
                    }
                }
                Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "{description}: the S3 service ignores conditional writes (If-None-Match: *), which Cairn needs to keep objects create-only; use a service that supports them"
                    ),
                ))
            })
            .await
            .map(|_| ())
    }
}

fn is_condition_failed(e: &::opendal::Error) -> bool {
    matches!(e.kind(), OdKind::ConditionNotMatch | OdKind::AlreadyExists)
}

/// The HTTP status of the answer behind an error, when there was one. opendal keeps it only
/// in the error's context, as the debug form of the response's parts (`status: 403`).
fn http_status(e: &::opendal::Error) -> Option<u16> {
    let text = e.to_string();
    let at = text.find("status: ")?;
    let digits = text.get(at + "status: ".len()..)?.get(..3)?;
    digits.parse().ok()
}

/// The `Code` of an S3 error document, when the answer had one (opendal keeps the parsed
/// document in the error's message as `S3Error { code: "...", message: "...", .. }`).
fn s3_field<'a>(message: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("{field}: \"");
    let start = message.find(&key)? + key.len();
    let rest = message.get(start..)?;
    let end = rest.find('"')?;
    rest.get(..end).filter(|v| !v.is_empty())
}

/// The last error in a chain of sources (e.g. "Connection refused (os error 111)").
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    // Chains are short; the bound keeps a cyclic one from looping.
    for _ in 0..16 {
        match current.source() {
            Some(next) => current = next,
            None => break,
        }
    }
    current.to_string()
}

/// Codes some services use for a full bucket or account quota.
const QUOTA_CODES: &[&str] = &[
    "QuotaExceeded",
    "XMinioStorageFull",
    "StorageFull",
    "InsufficientStorage",
    "XMinioAdminBucketQuotaExceeded",
];

/// What an S3 answer means to callers (see the module's documentation). The service's own
/// code and message are kept in the error's message; the full opendal error (request URI,
/// response headers) is logged at debug level instead of being shown.
pub(crate) fn map_err(what: impl std::fmt::Display, e: ::opendal::Error) -> Error {
    let status = http_status(&e);
    let code = s3_field(e.message(), "code").map(str::to_string);
    let detail = match (&code, s3_field(e.message(), "message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => match status {
            Some(s) => format!("HTTP {s}"),
            None => String::new(),
        },
    };
    let code = code.unwrap_or_default();
    let refusal = e.kind() == OdKind::PermissionDenied || status == Some(401);
    let (kind, message) = if is_condition_failed(&e) {
        (ErrorKind::AlreadyExists, format!("{what}: the name exists"))
    } else if code == "NoSuchBucket" {
        (
            ErrorKind::NotFound,
            format!("{what}: the bucket does not exist (create it first)"),
        )
    } else if refusal {
        (
            ErrorKind::PermissionDenied,
            format!(
                "{what}: the S3 service refused the request ({detail}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            ),
        )
    } else if status == Some(507) || QUOTA_CODES.contains(&code.as_str()) {
        (
            ErrorKind::QuotaExceeded,
            format!("{what}: the storage is full or its quota is used up ({detail})"),
        )
    } else if e.kind() == OdKind::Unexpected
        && !e.is_temporary()
        && status.is_some_and(|s| (400..500).contains(&s))
    {
        // A refusal opendal does not classify (a bad request, a method the service lacks):
        // the same request fails again.
        (
            ErrorKind::Other,
            format!("{what}: the S3 service refused the request ({detail})"),
        )
    } else if e.message().starts_with("send http request") {
        // No answer at all (refused, reset, a TLS failure): transient, and what the user
        // needs is the innermost cause, not the request's context.
        (
            ErrorKind::Io,
            format!(
                "{what}: the S3 service could not be reached ({})",
                innermost_cause(&e)
            ),
        )
    } else {
        return super::opendal::map_err(what, e);
    };
    tracing::debug!("{message}: {e}");
    Error::new(kind, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_documents_are_read() {
        let m = r#"S3Error { code: "InvalidAccessKeyId", message: "The key is unknown", resource: "", request_id: "" }"#;
        assert_eq!(s3_field(m, "code"), Some("InvalidAccessKeyId"));
        assert_eq!(s3_field(m, "message"), Some("The key is unknown"));
        assert_eq!(s3_field(m, "resource"), None);
        assert_eq!(s3_field("plain text", "code"), None);
    }

    #[test]
    fn answers_map_to_kinds() {
        let refused = ::opendal::Error::new(OdKind::PermissionDenied, "")
            .with_context("response", "Parts { status: 403, version: HTTP/1.1 }");
        let e = map_err("reading x", refused);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.message().contains("AWS_ACCESS_KEY_ID"), "{e}");
        let full = ::opendal::Error::new(OdKind::Unexpected, "")
            .with_context("response", "Parts { status: 507, version: HTTP/1.1 }");
        assert_eq!(map_err("w", full).kind(), ErrorKind::QuotaExceeded);
        let bad = ::opendal::Error::new(OdKind::Unexpected, "")
            .with_context("response", "Parts { status: 400, version: HTTP/1.1 }");
        assert_eq!(map_err("w", bad).kind(), ErrorKind::Other);
        let busy = ::opendal::Error::new(OdKind::Unexpected, "")
            .with_context("response", "Parts { status: 503, version: HTTP/1.1 }")
            .set_temporary();
        assert_eq!(map_err("w", busy).kind(), ErrorKind::Io);
        let no_bucket = ::opendal::Error::new(
            OdKind::ConfigInvalid,
            r#"S3Error { code: "NoSuchBucket", message: "", resource: "", request_id: "" }"#,
        );
        assert_eq!(map_err("w", no_bucket).kind(), ErrorKind::NotFound);
        let taken = ::opendal::Error::new(OdKind::ConditionNotMatch, "");
        assert_eq!(map_err("w", taken).kind(), ErrorKind::AlreadyExists);
        let timeout = ::opendal::Error::new(OdKind::Unexpected, "timeout").set_temporary();
        assert!(map_err("w", timeout).is_transient());
    }
}
