//! Retries with backoff for backends outside opendal (opendal roots get opendal's own retry
//! layer in [`super::layers`]). Only transient errors ([`crate::Error::is_transient`]) are
//! retried: a refusal, a full quota, a missing object or damaged bytes fail at once.
//!
//! Retrying `create` is safe: when an attempt stored the object but its answer was lost, the
//! next attempt fails with `AlreadyExists`, which [`super::Store`] turns into success (a
//! content-named object holds the same bytes; the config is read back and compared).
//! `remove` is idempotent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::layers::BackendOptions;
use super::{Backend, FileType, ObjectInfo};
use crate::error::Result;

/// A backend that retries the transient failures of another.
#[derive(Debug)]
pub struct RetryBackend {
    inner: Arc<dyn Backend>,
    retries: usize,
    min_delay: Duration,
    max_delay: Duration,
}

impl RetryBackend {
    pub fn new(inner: Arc<dyn Backend>, options: &BackendOptions) -> RetryBackend {
        RetryBackend {
            inner,
            retries: options.retries,
            min_delay: options.retry_min_delay,
            max_delay: options.retry_max_delay.max(options.retry_min_delay),
        }
    }

    async fn attempt<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delay = self.min_delay;
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    let pause = jittered(delay);
                    tracing::warn!(
                        "storage: {what} failed ({e}); retry {attempt} in {:.1}s",
                        pause.as_secs_f64()
                    );
                    tokio::time::sleep(pause).await;
                    delay = delay.saturating_mul(2).min(self.max_delay);
                }
                other => return other,
            }
        }
    }
}

/// Between half and all of `delay`, so that many clients failing together do not retry in
/// step.
fn jittered(delay: Duration) -> Duration {
    let mut b = [0u8; 2];
    let fraction = match crate::id::fill_random(&mut b) {
        Ok(()) => f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    delay.mul_f64(0.5 + 0.5 * fraction)
}

#[async_trait]
impl Backend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn create(&self, ft: FileType, name: &str, data: Bytes) -> Result<()> {
        self.attempt("create", || self.inner.create(ft, name, data.clone()))
            .await
    }

    async fn read(&self, ft: FileType, name: &str) -> Result<Bytes> {
        self.attempt("read", || self.inner.read(ft, name)).await
    }

    async fn read_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.attempt("read", || self.inner.read_range(ft, name, offset, len))
            .await
    }

    async fn stat(&self, ft: FileType, name: &str) -> Result<u64> {
        self.attempt("stat", || self.inner.stat(ft, name)).await
    }

    async fn list(&self, ft: FileType) -> Result<Vec<ObjectInfo>> {
        self.attempt("list", || self.inner.list(ft)).await
    }

    async fn remove(&self, ft: FileType, name: &str) -> Result<()> {
        self.attempt("remove", || self.inner.remove(ft, name)).await
    }

    async fn received_times(
        &self,
        ft: FileType,
    ) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        self.attempt("list", || self.inner.received_times(ft)).await
    }

    // The calling-thread paths are local and not retried; a decorator forwards them so the
    // backend beneath keeps its fast path.
    fn read_direct(&self, ft: FileType, name: &str) -> Option<Result<Bytes>> {
        self.inner.read_direct(ft, name)
    }

    fn read_range_direct(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Option<Result<Bytes>> {
        self.inner.read_range_direct(ft, name, offset, len)
    }

    fn stat_direct(&self, ft: FileType, name: &str) -> Option<Result<u64>> {
        self.inner.stat_direct(ft, name)
    }

    fn remove_stale_staging(&self, older_than: Duration) -> Result<u64> {
        self.inner.remove_stale_staging(older_than)
    }
}
