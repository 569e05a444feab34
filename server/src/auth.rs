//! HTTP Basic authentication against the users file.
//!
//! Verifying an argon2id hash costs tens of milliseconds of CPU and 19 MiB, so it runs on
//! the blocking pool, at most [`MAX_CONCURRENT_VERIFICATIONS`] at once (a flood of wrong
//! passwords queues instead of exhausting memory), and a successful verification is
//! remembered for [`CACHE_TTL`]: restic opens many connections and sends the credentials on
//! each request. The cache holds a keyed BLAKE3 hash of the password under a key drawn at
//! start, never the password itself, and is emptied whenever the users file is reloaded, so
//! a removed user or a changed password takes effect at once. Failures are never cached.
//! An unknown user costs the same verification as a known one, so timing does not tell
//! which names exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use cairn_store::{Error, ErrorKind, Result};
use tokio::sync::Semaphore;

use crate::users::{self, User, Users};

pub const CACHE_TTL: Duration = Duration::from_secs(60);
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 4;

/// The users and what has been verified of them recently.
#[derive(Debug)]
pub struct Authenticator {
    users: RwLock<Arc<Users>>,
    /// user name -> (keyed hash of the password that verified, when it expires)
    cache: Mutex<HashMap<String, ([u8; 32], Instant)>>,
    cache_key: [u8; 32],
    /// A valid hash to verify against when the user is unknown (same cost as a known one).
    decoy: String,
    verifications: Arc<Semaphore>,
}

/// Splits an `Authorization: Basic ...` header value into user and password.
pub fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(decoded.get(..colon)?).ok()?.to_string();
    let password = decoded.get(colon.checked_add(1)?..)?.to_vec();
    Some((user, password))
}

impl Authenticator {
    pub fn new(users: Users) -> Result<Authenticator> {
        let mut cache_key = [0u8; 32];
        cairn_store::id::fill_random(&mut cache_key)?;
        Ok(Authenticator {
            users: RwLock::new(Arc::new(users)),
            cache: Mutex::new(HashMap::new()),
            cache_key,
            decoy: users::hash_password(b"no such user")?,
            verifications: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
        })
    }

    /// Replaces the users (a reload) and forgets every cached verification.
    pub fn replace_users(&self, users: Users) {
        if let Ok(mut u) = self.users.write() {
            *u = Arc::new(users);
        }
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    pub fn user_count(&self) -> usize {
        self.users.read().map(|u| u.len()).unwrap_or(0)
    }

    /// The user whose name and password these are, or `None`.
    pub async fn authenticate(&self, name: &str, password: &[u8]) -> Result<Option<User>> {
        let users = self
            .users
            .read()
            .map(|u| Arc::clone(&u))
            .map_err(|_| Error::new(ErrorKind::Other, "users lock poisoned"))?;
        let user = users.get(name).cloned();
        let fingerprint = *blake3::keyed_hash(&self.cache_key, password).as_bytes();
        if user.is_some() && self.cached(name, &fingerprint) {
            return Ok(user);
        }
        let phc = user
            .as_ref()
            .map(|u| u.hash.clone())
            .unwrap_or_else(|| self.decoy.clone());
        let _permit = Arc::clone(&self.verifications)
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Other, "verification limiter closed"))?;
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || users::verify_password(&password, &phc))
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("password check failed: {e}")))?;
        match user {
            Some(user) if ok => {
                if let Ok(mut c) = self.cache.lock() {
                    let expiry = Instant::now().checked_add(CACHE_TTL);
                    if let Some(expiry) = expiry {
                        c.insert(name.to_string(), (fingerprint, expiry));
                    }
                }
                Ok(Some(user))
            }
            _ => Ok(None),
        }
    }

    fn cached(&self, name: &str, fingerprint: &[u8; 32]) -> bool {
        let Ok(mut c) = self.cache.lock() else {
            return false;
        };
        match c.get(name) {
            Some((f, expiry)) if *expiry > Instant::now() => {
                // Not constant time, but the value compared is a keyed hash the client
                // cannot compute, so timing reveals nothing usable.
                f == fingerprint
            }
            Some(_) => {
                c.remove(name);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn basic_headers() {
        // "alice:pa:ss" in base64: a password may contain colons.
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pa:ss")
        );
        assert_eq!(
            parse_basic(&h),
            Some(("alice".to_string(), b"pa:ss".to_vec()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice")
        );
        assert_eq!(parse_basic(&no_colon), None);
    }
}
