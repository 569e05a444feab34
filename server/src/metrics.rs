//! Counters for `GET /metrics`, in Prometheus' text format.
//!
//! Per tenant and object type: objects and bytes read, written and deleted; per answer
//! class: refused requests (401, 403); per tenant with a quota: bytes in use and the limit.
//! Labels are tenant names, which the users file bounds (with `--no-auth` anyone may name
//! tenants, and anyone may do anything).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use cairn_store::layout::FileType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Read,
    Write,
    Delete,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Read => "read",
            Event::Write => "write",
            Event::Delete => "delete",
        }
    }
}

/// (tenant, type folder, event) -> (objects, bytes)
type ObjectCounters = BTreeMap<(String, &'static str, Event), (u64, u64)>;

#[derive(Debug, Default)]
pub struct Metrics {
    objects: Mutex<ObjectCounters>,
    refused: Mutex<BTreeMap<u16, u64>>,
    /// Per tenant, when the newest snapshot object was received (seconds since the Unix
    /// epoch): read from storage at start, then set by every snapshot upload.
    newest_snapshot: Mutex<BTreeMap<String, u64>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Metrics {
    /// Counts one object read, written or deleted, with its bytes.
    pub fn object(&self, tenant: &str, ft: FileType, event: Event, bytes: u64) {
        if let Ok(mut m) = self.objects.lock() {
            let e = m.entry((tenant.to_string(), ft.dir(), event)).or_default();
            e.0 = e.0.saturating_add(1);
            e.1 = e.1.saturating_add(bytes);
        }
        if ft == FileType::Snapshot && event == Event::Write {
            self.snapshot_received(tenant, now_secs());
        }
    }

    /// Records that a snapshot of `tenant` was received at `at` (the newest one counts).
    pub fn snapshot_received(&self, tenant: &str, at: u64) {
        if let Ok(mut m) = self.newest_snapshot.lock() {
            let e = m.entry(tenant.to_string()).or_default();
            *e = (*e).max(at);
        }
    }

    /// Counts a request refused with `status`.
    pub fn refused(&self, status: u16) {
        if let Ok(mut m) = self.refused.lock() {
            let e = m.entry(status).or_default();
            *e = e.saturating_add(1);
        }
    }

    /// The text exposition; `quotas` are `(tenant, used, limit)`.
    pub fn render(&self, quotas: &[(String, u64, u64)]) -> String {
        let mut out = String::new();
        if let Ok(m) = self.objects.lock() {
            for event in [Event::Read, Event::Write, Event::Delete] {
                let name = event.name();
                let _ = writeln!(
                    out,
                    "# HELP cairn_server_objects_{name}_total Objects {name} by tenant and type.\n# TYPE cairn_server_objects_{name}_total counter"
                );
                for ((tenant, ty, _), (n, _)) in m.iter().filter(|(k, _)| k.2 == event) {
                    let _ = writeln!(
                        out,
                        "cairn_server_objects_{name}_total{{tenant=\"{tenant}\",type=\"{ty}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "# HELP cairn_server_bytes_{name}_total Bytes {name} by tenant and type.\n# TYPE cairn_server_bytes_{name}_total counter"
                );
                for ((tenant, ty, _), (_, b)) in m.iter().filter(|(k, _)| k.2 == event) {
                    let _ = writeln!(
                        out,
                        "cairn_server_bytes_{name}_total{{tenant=\"{tenant}\",type=\"{ty}\"}} {b}"
                    );
                }
            }
        }
        if let Ok(m) = self.refused.lock() {
            let _ = writeln!(
                out,
                "# HELP cairn_server_requests_refused_total Requests refused, by status.\n# TYPE cairn_server_requests_refused_total counter"
            );
            for (status, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "cairn_server_requests_refused_total{{status=\"{status}\"}} {n}"
                );
            }
        }
        if let Ok(m) = self.newest_snapshot.lock() {
            let _ = writeln!(
                out,
                "# HELP cairn_server_newest_snapshot_received_seconds When the tenant's newest snapshot was received, by the server's clock (Unix time).\n# TYPE cairn_server_newest_snapshot_received_seconds gauge"
            );
            for (tenant, at) in m.iter() {
                let _ = writeln!(
                    out,
                    "cairn_server_newest_snapshot_received_seconds{{tenant=\"{tenant}\"}} {at}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cairn_server_quota_used_bytes Bytes a tenant with a quota holds.\n# TYPE cairn_server_quota_used_bytes gauge"
        );
        for (tenant, used, _) in quotas {
            let _ = writeln!(
                out,
                "cairn_server_quota_used_bytes{{tenant=\"{tenant}\"}} {used}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_server_quota_limit_bytes A tenant's quota.\n# TYPE cairn_server_quota_limit_bytes gauge"
        );
        for (tenant, _, limit) in quotas {
            let _ = writeln!(
                out,
                "cairn_server_quota_limit_bytes{{tenant=\"{tenant}\"}} {limit}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.object("acme", FileType::Pack, Event::Write, 100);
        m.object("acme", FileType::Pack, Event::Write, 50);
        m.object("acme", FileType::Lock, Event::Delete, 0);
        m.refused(403);
        let text = m.render(&[("acme".into(), 150, 1000)]);
        for line in [
            "cairn_server_objects_write_total{tenant=\"acme\",type=\"data\"} 2",
            "cairn_server_bytes_write_total{tenant=\"acme\",type=\"data\"} 150",
            "cairn_server_objects_delete_total{tenant=\"acme\",type=\"locks\"} 1",
            "cairn_server_requests_refused_total{status=\"403\"} 1",
            "cairn_server_quota_used_bytes{tenant=\"acme\"} 150",
            "cairn_server_quota_limit_bytes{tenant=\"acme\"} 1000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
