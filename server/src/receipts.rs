//! Receipts: when the server received each snapshot object, by the server's clock.
//!
//! A snapshot says when it was taken, but that time is the client's. The server appends one
//! JSON line per stored snapshot to the receipts file (`--receipts`): its tenant, name, size,
//! the user who sent it and the server's time of receipt, so an operator can tell a
//! snapshot that was uploaded late or backdated. The file lives beside the server, not in
//! the tenants' storage (no tenant can read or change it); each line is written with one
//! append and fsynced before the upload is answered.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cairn_store::{Error, Result};

#[derive(Debug)]
pub struct Receipts {
    path: PathBuf,
    /// Serialises appends, so lines never interleave.
    lock: Arc<Mutex<()>>,
}

impl Receipts {
    /// Opens (creating when missing, mode 0600) the receipts file, to fail at start rather
    /// than on the first snapshot.
    pub fn open(path: PathBuf) -> Result<Receipts> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening receipts file {}", path.display()), e))?;
        Ok(Receipts {
            path,
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// Appends the receipt of one snapshot object (on the blocking pool).
    pub async fn record(
        &self,
        tenant: &str,
        name: &str,
        size: u64,
        user: Option<&str>,
    ) -> Result<()> {
        let line = serde_json::json!({
            "received": jiff::Timestamp::now().to_string(),
            "tenant": tenant,
            "snapshot": name,
            "size": size,
            "user": user,
        })
        .to_string();
        let path = self.path.clone();
        let lock = Arc::clone(&self.lock);
        tokio::task::spawn_blocking(move || {
            let _serial = lock.lock();
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| Error::new(cairn_store::ErrorKind::Other, format!("receipt: {e}")))?
        .map_err(|e| Error::io(format!("writing receipts file {}", self.path.display()), e))
    }
}
