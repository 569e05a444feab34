//! The Cairn team server: restic's REST backend protocol v2 over cairn-store's `Root`, for
//! many tenants, each user reaching one tenant with one access level. It never holds a key:
//! it cannot read what it stores, only check that each upload is the object its name says it
//! is ([`verify`]). docs/server.md describes running it.
//!
//! - [`path`]: request paths, parsed strictly into what they name;
//! - [`routes`]: the handler: parse, authenticate, authorize, then storage;
//! - [`access`]: what each access level may do;
//! - [`auth`], [`users`]: Basic authentication and the users file;
//! - [`storage`], [`range`], [`listing`]: the object operations over a `Backend`;
//! - [`quota`]: per-tenant quotas; [`metrics`]: counters for `GET /metrics`;
//! - [`receipts`]: the server's time of receipt of each snapshot;
//! - [`server`]: binding, serving, signals; [`tls`]: HTTPS with rustls.
//!
//! Errors are cairn-store's one error type; its kind decides the HTTP status.

pub mod access;
pub mod auth;
pub mod listing;
pub mod metrics;
pub mod path;
pub mod quota;
pub mod range;
pub mod receipts;
pub mod routes;
pub mod server;
pub mod storage;
pub mod tls;
pub mod users;
pub mod verify;
