//! The HTTP face of the server: one handler that parses the raw path ([`crate::path`]),
//! authenticates, decides access ([`crate::access`]) and only then touches storage
//! ([`crate::storage`]). The order is the invariant: nothing reaches a `Backend` before the
//! request is known to name a valid object of the caller's own tenant with an operation its
//! access allows. A caller never learns anything of another tenant: every request for one
//! answers 403 whether it exists or not.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::layout::FileType;
use cairn_store::{Error, ErrorKind};

use crate::access::{Access, Op};
use crate::metrics::Event;
use crate::path::{Route, Target};
use crate::range::Plan;
use crate::server::AppState;
use crate::{auth, listing, storage};

/// Who is asking: a user of the users file, or anyone when authentication is off.
enum Caller {
    User(crate::users::User),
    Anyone,
}

impl Caller {
    fn may(&self, tenant: &str, op: Op) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(u) => u.tenant.as_deref() == Some(tenant) && u.access.allows(op),
        }
    }

    fn reaches(&self, tenant: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(u) => u.tenant.as_deref() == Some(tenant),
        }
    }
}

/// The authenticated user's name, carried with the request for receipts.
#[derive(Debug, Clone)]
struct UserName(String);

fn status(code: StatusCode, text: &str) -> Response {
    (code, format!("{text}\n")).into_response()
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn unauthorized() -> Response {
    let mut r = status(StatusCode::UNAUTHORIZED, "unauthorized");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cairn-server\""),
    );
    r
}

/// The answer for a storage error. Details of server-side failures go to the log, not to
/// the client (they name storage paths).
fn error_response(e: &Error) -> Response {
    match e.kind() {
        ErrorKind::NotFound => status(StatusCode::NOT_FOUND, "not found"),
        ErrorKind::AlreadyExists => status(StatusCode::FORBIDDEN, "object exists"),
        ErrorKind::InvalidInput => status(StatusCode::BAD_REQUEST, e.message()),
        ErrorKind::QuotaExceeded => status(StatusCode::INSUFFICIENT_STORAGE, "storage full"),
        ErrorKind::Corrupt => status(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable"),
        _ => {
            tracing::error!("storage: {e}");
            status(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let response = route(&state, req).await;
    let code = response.status().as_u16();
    if matches!(code, 401 | 403) {
        state.metrics.refused(code);
    }
    response
}

async fn route(state: &Arc<AppState>, req: Request) -> Response {
    let route = crate::path::parse(req.uri().path());
    if route == Some(Route::Health) {
        return health(state, req.method()).await;
    }
    let caller = match &state.auth {
        None => Caller::Anyone,
        Some(authenticator) => {
            let Some((name, password)) =
                header_str(req.headers(), header::AUTHORIZATION).and_then(auth::parse_basic)
            else {
                return unauthorized();
            };
            match authenticator.authenticate(&name, &password).await {
                Ok(Some(user)) => Caller::User(user),
                Ok(None) => {
                    tracing::info!("refused credentials of user {name:?}");
                    return unauthorized();
                }
                Err(e) => return error_response(&e),
            }
        }
    };
    let (tenant, target) = match route {
        None | Some(Route::Health) => return status(StatusCode::NOT_FOUND, "not found"),
        Some(Route::Metrics) => {
            let allowed = match &caller {
                Caller::Anyone => true,
                Caller::User(u) => u.access == Access::Metrics,
            };
            if !allowed {
                return status(StatusCode::FORBIDDEN, "forbidden");
            }
            if req.method() != Method::GET {
                return not_allowed("GET");
            }
            let body = state.metrics.render(&state.quotas.all_usage());
            return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response();
        }
        Some(Route::Tenant { tenant, target }) => (tenant, target),
    };
    if !caller.reaches(&tenant) {
        return status(StatusCode::FORBIDDEN, "forbidden");
    }
    let mut req = req;
    if let Caller::User(u) = &caller {
        req.extensions_mut().insert(UserName(u.name.clone()));
    }
    let method = req.method().clone();
    let op = match operation(&method, &target) {
        Ok(op) => op,
        Err(allow) => return not_allowed(allow),
    };
    if !caller.may(&tenant, op) {
        return status(StatusCode::FORBIDDEN, "forbidden");
    }
    let backend = match state.root.tenant(&tenant) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    match target {
        Target::Namespace => {
            // The namespace's folders appear with its first objects; creating it only
            // checks the request, so it is idempotent as the protocol requires.
            if req.uri().query() == Some("create=true") {
                status(StatusCode::OK, "created")
            } else {
                status(StatusCode::BAD_REQUEST, "expected ?create=true")
            }
        }
        Target::List(ft) => {
            let v2 = listing::wants_v2(header_str(req.headers(), header::ACCEPT));
            match storage::list(&backend, ft).await {
                Ok(objects) => {
                    let received = if v2 && ft == FileType::Snapshot {
                        received_times(&backend).await
                    } else {
                        Default::default()
                    };
                    let (body, content_type) = listing::render(objects, v2, &received);
                    ([(header::CONTENT_TYPE, content_type)], body).into_response()
                }
                Err(e) => error_response(&e),
            }
        }
        Target::Config => {
            object(
                state,
                &tenant,
                &backend,
                method,
                FileType::Config,
                "config",
                req,
            )
            .await
        }
        Target::Object(ft, name) => object(state, &tenant, &backend, method, ft, &name, req).await,
    }
}

/// The operation a method on a target is, or the methods the target allows.
fn operation(method: &Method, target: &Target) -> Result<Op, &'static str> {
    match target {
        Target::Namespace => match *method {
            Method::POST => Ok(Op::Create),
            _ => Err("POST"),
        },
        Target::List(_) => match *method {
            Method::GET => Ok(Op::Read),
            _ => Err("GET"),
        },
        Target::Config | Target::Object(..) => {
            let ft = match target {
                Target::Object(ft, _) => *ft,
                _ => FileType::Config,
            };
            match *method {
                Method::GET | Method::HEAD => Ok(Op::Read),
                Method::POST => Ok(Op::Create),
                Method::DELETE => Ok(Op::Delete(ft)),
                _ => Err("GET, HEAD, POST, DELETE"),
            }
        }
    }
}

async fn object(
    state: &AppState,
    tenant: &str,
    backend: &Arc<dyn cairn_store::backend::Backend>,
    method: Method,
    ft: FileType,
    name: &str,
    req: Request,
) -> Response {
    match method {
        Method::HEAD => match backend.stat(ft, name).await {
            Ok(size) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::empty())
                .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "internal error")),
            Err(e) => error_response(&e),
        },
        Method::GET => {
            let range = header_str(req.headers(), header::RANGE);
            match storage::read(backend, ft, name, range).await {
                Ok((plan, size, bytes)) => {
                    let n = bytes.len() as u64;
                    state.metrics.object(tenant, ft, Event::Read, n);
                    ranged_response(plan, size, bytes)
                }
                Err(e) => error_response(&e),
            }
        }
        Method::POST => upload(state, tenant, backend, ft, name, req).await,
        Method::DELETE => match state.quotas.remove(tenant, backend, ft, name).await {
            Ok(()) => {
                state.metrics.object(tenant, ft, Event::Delete, 0);
                status(StatusCode::OK, "removed")
            }
            Err(e) => error_response(&e),
        },
        _ => not_allowed("GET, HEAD, POST, DELETE"),
    }
}

fn ranged_response(plan: Plan, size: u64, bytes: bytes::Bytes) -> Response {
    let builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let built = match plan {
        Plan::Whole => builder.status(StatusCode::OK).body(Body::from(bytes)),
        Plan::Part { offset, len } => {
            // offset + len <= size was established by `range::plan`; len >= 1.
            let last = offset.saturating_add(len).saturating_sub(1);
            builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {offset}-{last}/{size}"),
                )
                .body(Body::from(bytes))
        }
        Plan::Unsatisfiable => builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{size}"))
            .body(Body::empty()),
    };
    built.unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// A create-only upload: the length is reserved in the tenant's quota, the body is read
/// whole (bounded by the declared length and the server's limit), checked against its name,
/// then stored atomically; the reservation is kept only if it was stored.
async fn upload(
    state: &AppState,
    tenant: &str,
    backend: &Arc<dyn cairn_store::backend::Backend>,
    ft: FileType,
    name: &str,
    req: Request,
) -> Response {
    let user = req.extensions().get::<UserName>().map(|u| u.0.clone());
    let declared = header_str(req.headers(), header::CONTENT_LENGTH).map(str::parse::<u64>);
    let length = match declared {
        Some(Ok(n)) => n,
        _ => return status(StatusCode::LENGTH_REQUIRED, "Content-Length required"),
    };
    if length > state.max_object_size {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "object too large");
    }
    let Ok(limit) = usize::try_from(length) else {
        return status(StatusCode::PAYLOAD_TOO_LARGE, "object too large");
    };
    // Reserved before the body is read: a tenant over its quota stores nothing.
    let reservation = match state.quotas.reserve(tenant, length) {
        Ok(r) => r,
        // A name that exists is refused as such (403) even on a full tenant: the client
        // learns its object is stored.
        Err(e) => match backend.stat(ft, name).await {
            Ok(_) => return status(StatusCode::FORBIDDEN, "object exists"),
            Err(_) => return error_response(&e),
        },
    };
    // Held until the body is stored or refused. length <= max_object_size <= the budget,
    // so the permits always exist.
    let kib = u32::try_from(length.div_ceil(1024)).unwrap_or(u32::MAX);
    let Ok(_memory) = Arc::clone(&state.upload_budget)
        .acquire_many_owned(kib)
        .await
    else {
        return status(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let body = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => return status(StatusCode::BAD_REQUEST, "incomplete upload"),
    };
    if body.len() as u64 != length {
        return status(StatusCode::BAD_REQUEST, "incomplete upload");
    }
    match storage::store(backend, state.policy, ft, name, body).await {
        Ok(()) => {
            reservation.keep();
            state.metrics.object(tenant, ft, Event::Write, length);
            if let (FileType::Snapshot, Some(receipts)) = (ft, &state.receipts) {
                // The snapshot is stored: a lost receipt is reported, not turned into a
                // failed upload the client would retry against an existing name.
                if let Err(e) = receipts.record(tenant, name, length, user.as_deref()).await {
                    tracing::error!("snapshot {tenant}/{name} stored without a receipt: {e}");
                }
            }
            status(StatusCode::OK, "stored")
        }
        Err(e) => error_response(&e),
    }
}

async fn health(state: &AppState, method: &Method) -> Response {
    if *method != Method::GET && *method != Method::HEAD {
        return not_allowed("GET, HEAD");
    }
    match state.root.has_marker().await {
        Ok(_) => status(StatusCode::OK, "ok"),
        Err(e) => {
            tracing::error!("health check: {e}");
            status(StatusCode::SERVICE_UNAVAILABLE, "storage unreachable")
        }
    }
}

/// When the storage received each snapshot object, in seconds since the Unix epoch; empty
/// when the storage keeps no such time or cannot say (the listing then goes without).
async fn received_times(
    backend: &std::sync::Arc<dyn cairn_store::backend::Backend>,
) -> std::collections::HashMap<String, u64> {
    match backend.received_times(FileType::Snapshot).await {
        Ok(Some(times)) => times
            .into_iter()
            .filter_map(|(name, at)| {
                at.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| (name, d.as_secs()))
            })
            .collect(),
        Ok(None) => Default::default(),
        Err(e) => {
            tracing::warn!("receive times of snapshots: {e}");
            Default::default()
        }
    }
}
