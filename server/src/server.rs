//! Running the server: opening storage and users, listening, reloading users on SIGHUP and
//! stopping cleanly on SIGTERM or SIGINT (requests in flight finish first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::backend::{self, BackendOptions, Root};
use cairn_store::{Error, ErrorKind, Location, Result};

use crate::auth::Authenticator;
use crate::quota::Quotas;
use crate::storage::NamePolicy;
use crate::tls::{Tls, TlsFiles};
use crate::users::Users;

/// What `cairn-server serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A cairn-store location string (`/srv/cairn`, later `s3:...`).
    pub storage: String,
    pub listen: String,
    /// The users file; `None` only together with `no_auth`.
    pub users: Option<PathBuf>,
    pub no_auth: bool,
    pub max_object_size: u64,
    pub policy: NamePolicy,
    /// `(tenant, bytes)` for each tenant with a quota.
    pub quotas: Vec<(String, u64)>,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<TlsFiles>,
    /// Append a receipt of each stored snapshot to this file.
    pub receipts: Option<PathBuf>,
    /// Bytes of upload bodies held in memory at once, over all requests.
    pub max_upload_memory: u64,
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    pub root: Arc<dyn Root>,
    /// `None` when authentication is off (`--no-auth`).
    pub auth: Option<Arc<Authenticator>>,
    pub policy: NamePolicy,
    pub max_object_size: u64,
    pub quotas: Quotas,
    pub metrics: crate::metrics::Metrics,
    pub receipts: Option<crate::receipts::Receipts>,
    /// Upload bodies in memory, in KiB: an upload takes its length before reading its body
    /// and waits while others hold the budget, so many large uploads queue instead of
    /// exhausting memory.
    pub upload_budget: Arc<tokio::sync::Semaphore>,
}

/// A server ready to accept connections.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    users_file: Option<PathBuf>,
    tls: Option<Tls>,
}

impl Server {
    /// Opens storage and users and binds the address. Refuses to run without users unless
    /// authentication is explicitly off: an open server by accident is worse than none.
    pub async fn bind(opts: &ServeOptions) -> Result<Server> {
        let auth = match (&opts.users, opts.no_auth) {
            (Some(_), true) => {
                return Err(Error::invalid("--users and --no-auth exclude each other"))
            }
            (None, false) => {
                return Err(Error::invalid(
                    "no --users file given; pass --no-auth to serve without authentication",
                ))
            }
            (None, true) => None,
            (Some(path), false) => {
                let users = Users::load(path)?;
                if users.is_empty() {
                    tracing::warn!(
                        "{} holds no users: every request is refused",
                        path.display()
                    );
                }
                Some(Arc::new(Authenticator::new(users)?))
            }
        };
        let location = Location::parse(&opts.storage)?;
        if let Location::Local(path) = &location {
            // The folder must exist when the root is opened, or uploads would not be staged
            // (and could be seen half-written).
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        let root = backend::open(&location, &BackendOptions::for_location(&location))?;
        root.has_marker()
            .await
            .map_err(|e| e.context(format!("storage {} is not reachable", root.description())))?;
        if opts.max_upload_memory < opts.max_object_size {
            return Err(Error::invalid(
                "--max-upload-memory must be at least --max-object-size",
            ));
        }
        let budget_kib = usize::try_from(opts.max_upload_memory / 1024)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let quotas = Quotas::load(&root, opts.quotas.clone()).await?;
        let metrics = crate::metrics::Metrics::default();
        seed_newest_snapshots(&root, &metrics).await;
        let tls = opts.tls.clone().map(Tls::load).transpose()?;
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|e| Error::io(format!("listening on {}", opts.listen), e))?;
        Ok(Server {
            listener,
            state: Arc::new(AppState {
                root,
                auth,
                policy: opts.policy,
                max_object_size: opts.max_object_size,
                quotas,
                metrics,
                upload_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
                receipts: opts
                    .receipts
                    .clone()
                    .map(crate::receipts::Receipts::open)
                    .transpose()?,
            }),
            users_file: opts.users.clone(),
            tls,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading the listening address", e))
    }

    /// Whether connections are served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes; then requests in flight finish.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let auth = self
            .state
            .auth
            .as_ref()
            .zip(self.users_file.as_ref())
            .map(|(a, p)| (Arc::clone(a), p.clone()));
        spawn_reloader(auth, self.tls.clone())?;
        spawn_staging_sweeper(Arc::clone(&self.state.root));
        let app = axum::Router::new()
            .fallback(crate::routes::handle)
            .with_state(self.state);
        match self.tls {
            None => axum::serve(self.listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| Error::io("serving", e)),
            Some(tls) => {
                let listener = self
                    .listener
                    .into_std()
                    .map_err(|e| Error::io("preparing the listener", e))?;
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    stopper.graceful_shutdown(None);
                });
                axum_server::from_tcp_rustls(listener, tls.config)
                    .map_err(|e| Error::io("preparing the listener", e))?
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await
                    .map_err(|e| Error::io("serving", e))
            }
        }
    }
}

/// Reloads the users file and the TLS certificate on SIGHUP. What cannot be read (or a
/// users file that became readable by others) keeps what is in force and logs why.
fn spawn_reloader(users: Option<(Arc<Authenticator>, PathBuf)>, tls: Option<Tls>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups =
        signal(SignalKind::hangup()).map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some((auth, path)) = &users {
                match Users::load(path) {
                    Ok(loaded) => {
                        let n = loaded.len();
                        auth.replace_users(loaded);
                        tracing::info!("reloaded {n} users from {}", path.display());
                    }
                    Err(e) => {
                        tracing::error!("users not reloaded, the old ones stay in force: {e}")
                    }
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("reloaded the TLS certificate"),
                    Err(e) => tracing::error!("TLS certificate not reloaded: {e}"),
                }
            }
        }
    });
    Ok(())
}

/// How old a staged upload must be before it is taken for the leftover of a killed upload.
/// Far longer than any upload takes, so a live upload (of this server or of a Cairn client
/// writing to the same folder) is never removed.
pub const STALE_STAGING: Duration = Duration::from_secs(3600);

/// Removes, at start and then hourly, staged uploads that a killed process left behind.
/// They were never visible under an object name; this only gives their space back. Staging
/// belongs to the root, so any tenant's backend reaches it.
fn spawn_staging_sweeper(root: Arc<dyn Root>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STALE_STAGING);
        loop {
            tick.tick().await;
            let tenants = match root.tenants().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("staging sweep: {e}");
                    continue;
                }
            };
            let Some(backend) = tenants.first().and_then(|t| root.tenant(t).ok()) else {
                continue;
            };
            match tokio::task::spawn_blocking(move || backend.remove_stale_staging(STALE_STAGING))
                .await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!("removed {n} stale staged uploads"),
                Ok(Err(e)) => tracing::warn!("staging sweep: {e}"),
                Err(e) => tracing::warn!("staging sweep: {e}"),
            }
        }
    });
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Parses a size: bytes, or a number with K, M, G, T (powers of 1024, optionally followed by
/// `iB` or `B`), e.g. `500G`, `4MiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::invalid(format!("invalid size {s:?}")))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(Error::invalid(format!("invalid size unit in {s:?}"))),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("size {s:?} is too large")))
}

/// Reads, per tenant, when its newest snapshot object was received, for
/// `cairn_server_newest_snapshot_received_seconds`. Best effort: a tenant that cannot be read
/// is logged and left out until its next snapshot arrives.
async fn seed_newest_snapshots(
    root: &Arc<dyn cairn_store::backend::Root>,
    metrics: &crate::metrics::Metrics,
) {
    let tenants = match root.tenants().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("listing tenants for the snapshot metrics: {e}");
            return;
        }
    };
    for tenant in tenants {
        let times = match root.tenant(&tenant) {
            Ok(b) => {
                b.received_times(cairn_store::backend::FileType::Snapshot)
                    .await
            }
            Err(e) => Err(e),
        };
        match times {
            Ok(Some(times)) => {
                for (_, at) in times {
                    if let Ok(d) = at.duration_since(std::time::UNIX_EPOCH) {
                        metrics.snapshot_received(&tenant, d.as_secs());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("receive times of tenant {tenant}'s snapshots: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("500G").unwrap(), 500 << 30);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert!(parse_size("").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
