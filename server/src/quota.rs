//! Per-tenant quotas: the bytes a tenant may hold, counted over every object and its config.
//!
//! The figure in use is computed from storage when the server starts (a listing of every
//! type), so it survives restarts and cannot drift from what is stored across them. While
//! running, an upload reserves its length before it is stored and keeps the reservation only
//! when the create succeeds; a delete gives back the size the object had. Deletes of one
//! tenant are serialised, so two deletes of the same object cannot both give its size back.
//! An upload that would pass the quota is refused (507) before anything is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_store::backend::{Backend, Root};
use cairn_store::layout::FileType;
use cairn_store::{Error, ErrorKind, Result};

/// The quotas of a server and what each tenant uses.
#[derive(Debug, Default)]
pub struct Quotas {
    limits: HashMap<String, u64>,
    used: Mutex<HashMap<String, u64>>,
    /// One lock per tenant with a quota, held across a delete's stat and remove.
    delete_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// Bytes reserved for an upload in progress; given back when dropped unless kept.
#[derive(Debug)]
pub struct Reservation<'a> {
    quotas: &'a Quotas,
    tenant: String,
    bytes: u64,
    kept: bool,
}

impl Reservation<'_> {
    /// The upload was stored: the bytes stay counted.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.quotas.release(&self.tenant, self.bytes);
        }
    }
}

/// Parses `TENANT=SIZE`.
pub fn parse_quota(s: &str) -> Result<(String, u64)> {
    let (tenant, size) = s
        .split_once('=')
        .ok_or_else(|| Error::invalid(format!("quota {s:?}: expected TENANT=SIZE")))?;
    cairn_store::layout::validate_tenant(tenant)?;
    Ok((tenant.to_string(), crate::server::parse_size(size)?))
}

/// Every byte a tenant holds: all objects of every type and its config.
async fn bytes_held(backend: &Arc<dyn Backend>) -> Result<u64> {
    let mut total: u64 = 0;
    for ft in FileType::ALL {
        for o in backend.list(ft).await? {
            total = total.saturating_add(o.size);
        }
    }
    Ok(total)
}

impl Quotas {
    /// The quotas given, with each tenant's use read from storage.
    pub async fn load(root: &Arc<dyn Root>, limits: Vec<(String, u64)>) -> Result<Quotas> {
        let mut used = HashMap::new();
        let mut delete_locks = HashMap::new();
        let mut map = HashMap::new();
        for (tenant, limit) in limits {
            let held = bytes_held(&root.tenant(&tenant)?).await?;
            tracing::info!("tenant {tenant}: {held} of {limit} bytes in use");
            used.insert(tenant.clone(), held);
            delete_locks.insert(tenant.clone(), Arc::new(tokio::sync::Mutex::new(())));
            map.insert(tenant, limit);
        }
        Ok(Quotas {
            limits: map,
            used: Mutex::new(used),
            delete_locks,
        })
    }

    pub fn has_quota(&self, tenant: &str) -> bool {
        self.limits.contains_key(tenant)
    }

    /// Reserves `bytes` for an upload to `tenant`; `QuotaExceeded` when they do not fit.
    /// Tenants without a quota always get a (counting-free) reservation.
    pub fn reserve(&self, tenant: &str, bytes: u64) -> Result<Reservation<'_>> {
        let mut reservation = Reservation {
            quotas: self,
            tenant: tenant.to_string(),
            bytes: 0,
            kept: false,
        };
        let Some(limit) = self.limits.get(tenant) else {
            return Ok(reservation);
        };
        let mut used = self
            .used
            .lock()
            .map_err(|_| Error::new(ErrorKind::Other, "quota lock poisoned"))?;
        let now = used.get(tenant).copied().unwrap_or(0);
        match now.checked_add(bytes) {
            Some(after) if after <= *limit => {
                used.insert(tenant.to_string(), after);
                reservation.bytes = bytes;
                Ok(reservation)
            }
            _ => Err(Error::new(
                ErrorKind::QuotaExceeded,
                format!("tenant {tenant}: quota of {limit} bytes reached ({now} in use)"),
            )),
        }
    }

    fn release(&self, tenant: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Ok(mut used) = self.used.lock() {
            if let Some(u) = used.get_mut(tenant) {
                *u = u.saturating_sub(bytes);
            }
        }
    }

    /// Removes an object, giving its size back to the tenant's quota.
    pub async fn remove(
        &self,
        tenant: &str,
        backend: &Arc<dyn Backend>,
        ft: FileType,
        name: &str,
    ) -> Result<()> {
        let Some(lock) = self.delete_locks.get(tenant) else {
            return backend.remove(ft, name).await;
        };
        let _serial = lock.lock().await;
        let size = match backend.stat(ft, name).await {
            Ok(size) => size,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        backend.remove(ft, name).await?;
        self.release(tenant, size);
        Ok(())
    }

    /// `(tenant, used, limit)` for every tenant with a quota, sorted by tenant.
    pub fn all_usage(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = self
            .limits
            .keys()
            .filter_map(|t| self.usage(t).map(|(u, l)| (t.clone(), u, l)))
            .collect();
        out.sort();
        out
    }

    /// Bytes in use by a tenant with a quota, and its limit.
    pub fn usage(&self, tenant: &str) -> Option<(u64, u64)> {
        let limit = *self.limits.get(tenant)?;
        let used = self.used.lock().ok()?.get(tenant).copied().unwrap_or(0);
        Some((used, limit))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reservations() {
        let q = Quotas {
            limits: HashMap::from([("t".to_string(), 10)]),
            used: Mutex::new(HashMap::from([("t".to_string(), 4)])),
            delete_locks: HashMap::new(),
        };
        let r = q.reserve("t", 5).unwrap();
        assert_eq!(q.usage("t"), Some((9, 10)));
        assert_eq!(
            q.reserve("t", 2).unwrap_err().kind(),
            ErrorKind::QuotaExceeded
        );
        drop(r);
        assert_eq!(q.usage("t"), Some((4, 10)));
        q.reserve("t", 6).unwrap().keep();
        assert_eq!(q.usage("t"), Some((10, 10)));
        assert!(q.reserve("t", u64::MAX).is_err());
        q.reserve("other", u64::MAX).unwrap().keep();
        assert_eq!(q.usage("other"), None);
        assert_eq!(parse_quota("t=4KiB").unwrap(), ("t".to_string(), 4096));
        assert!(parse_quota("../t=4").is_err());
        assert!(parse_quota("t").is_err());
    }
}
