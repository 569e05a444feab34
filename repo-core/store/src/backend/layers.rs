//! The one place where cross-cutting layers are stacked on a root's storage: retries with
//! backoff, a limit on operations in flight, timeouts and logging. Roots over opendal get
//! opendal's own layers here; backends outside opendal (the REST client) are wrapped in
//! [`super::retry::RetryBackend`] with the same [`BackendOptions`].
//!
//! Order matters, innermost first: the concurrency limit (each attempt holds a permit, none
//! is held while sleeping between attempts), the timeouts (a stalled attempt ends as a
//! temporary error), the retries (which retry only temporary errors, including timeouts),
//! then logging (each operation at trace level, failures at debug; each retry is logged as
//! a warning by the retry layer).

use std::time::Duration;

use ::opendal::layers::{
    ConcurrentLimitLayer, LoggingInterceptor, LoggingLayer, RetryEvent, RetryInterceptor,
    RetryLayer, TimeoutLayer,
};
use ::opendal::raw::{Operation, ServiceInfo};
use ::opendal::Operator;

use crate::location::Location;

/// How a root's storage is reached. [`BackendOptions::for_location`] gives the defaults for
/// each kind of location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// Attempts after the first for an operation that failed transiently (0: none).
    pub retries: usize,
    /// The pause before the first retry; each further pause doubles, with jitter.
    pub retry_min_delay: Duration,
    /// The longest pause between attempts.
    pub retry_max_delay: Duration,
    /// The longest an operation other than a transfer (stat, list, delete) may take.
    pub timeout: Option<Duration>,
    /// The longest one step of a transfer (a read or write of part of an object) may stall.
    pub io_timeout: Option<Duration>,
    /// Operations in flight at once, over all tenants of the root.
    pub concurrency: Option<usize>,
}

impl BackendOptions {
    /// Defaults by kind of location. A local folder and memory get none of the layers but
    /// logging: the OS already retries interrupted calls, a slow disk is not a failure, and
    /// opendal calls a full disk "temporary", so retrying it would only delay the report.
    /// Remote locations (S3, REST) retry with backoff and bound every call.
    pub fn for_location(location: &Location) -> BackendOptions {
        match location {
            Location::Local(_) | Location::Memory => BackendOptions::none(),
            Location::Rest(_) | Location::S3(_) => BackendOptions::remote(),
        }
    }

    /// Defaults for a remote root: up to 5 retries of a transient failure, pausing 0.2 s
    /// then doubling up to 5 s (about 10 s in all before giving up); a control operation
    /// (stat, list page, delete) may take 60 s, and a transfer may stall 120 s between
    /// steps (a 16 MiB pack is one step on S3); 16 operations in flight, which keeps a
    /// backup's uploads and a restore's range reads busy without opening hundreds of
    /// connections.
    pub fn remote() -> BackendOptions {
        BackendOptions {
            retries: 5,
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(60)),
            io_timeout: Some(Duration::from_secs(120)),
            concurrency: Some(16),
        }
    }

    /// No retries, limits or timeouts (logging only).
    pub fn none() -> BackendOptions {
        BackendOptions {
            retries: 0,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            timeout: None,
            io_timeout: None,
            concurrency: None,
        }
    }
}

/// Stacks the layers `options` asks for on an operator.
pub fn stack(op: Operator, options: &BackendOptions) -> Operator {
    let mut op = op;
    if let Some(permits) = options.concurrency {
        op = op.layer(ConcurrentLimitLayer::new(permits.max(1)));
    }
    if options.timeout.is_some() || options.io_timeout.is_some() {
        let mut t = TimeoutLayer::new();
        if let Some(d) = options.timeout {
            t = t.with_timeout(d);
        }
        if let Some(d) = options.io_timeout {
            t = t.with_io_timeout(d);
        }
        op = op.layer(t);
    }
    if options.retries > 0 {
        op = op.layer(
            RetryLayer::new()
                .with_max_times(options.retries)
                .with_min_delay(options.retry_min_delay)
                .with_max_delay(options.retry_max_delay)
                .with_jitter()
                .with_notify(LogRetry),
        );
    }
    op.layer(LoggingLayer::new(TraceOperations))
}

/// Logs each retry as a warning: a user watching a slow backup sees why it is slow.
struct LogRetry;

impl RetryInterceptor for LogRetry {
    fn intercept(&self, event: RetryEvent<'_>) {
        tracing::warn!(
            "storage: {} failed ({}); retry {} in {:.1}s",
            event.op,
            event.err,
            event.attempt,
            event.retry_after.as_secs_f64()
        );
    }
}

/// Logs every storage operation at trace level and every failed one at debug level
/// (`CAIRN_LOG=cairn_store=trace`). Failures are not warnings: a missing object is often the
/// expected answer, and the caller reports the failures that matter.
#[derive(Debug, Clone, Copy)]
struct TraceOperations;

impl LoggingInterceptor for TraceOperations {
    fn log(
        &self,
        info: &ServiceInfo,
        operation: Operation,
        context: &[(&str, &str)],
        message: &str,
        err: Option<&::opendal::Error>,
    ) {
        let wanted = match err {
            Some(_) => tracing::enabled!(tracing::Level::DEBUG),
            None => tracing::enabled!(tracing::Level::TRACE),
        };
        if !wanted {
            return;
        }
        let context: Vec<String> = context.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match err {
            Some(err) => tracing::debug!(
                "storage {}: {operation} {} {message}: {err}",
                info.scheme(),
                context.join(" ")
            ),
            None => tracing::trace!(
                "storage {}: {operation} {} {message}",
                info.scheme(),
                context.join(" ")
            ),
        }
    }
}
