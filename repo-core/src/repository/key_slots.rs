//! Key slots of a tenant: listing, adding, and removing without ever leaving none.

use super::*;

impl Repository {
    // ---- key slots ----

    /// The key slots that can be read, oldest first. A damaged slot is left out with a warning
    /// naming it (it can still be removed by name); one removed meanwhile is skipped.
    pub fn key_slots(&self) -> Result<Vec<(String, KeySlot)>> {
        let mut out = Vec::new();
        for info in self.store.list(FileType::Key)? {
            let bytes = match self.store.read(FileType::Key, &info.name) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match KeySlot::parse(&info.name, &bytes) {
                Ok(slot) => out.push((info.name.clone(), slot)),
                Err(e) => tracing::warn!("key slot {} cannot be read: {e}", info.name),
            }
        }
        out.sort_by(|a, b| a.1.created.cmp(&b.1.created));
        Ok(out)
    }

    /// Adds a password for this tenant; returns the new slot's id.
    pub fn add_key(&self, master: &MasterKey, password: &[u8], kdf: KdfParams) -> Result<String> {
        let (_, bytes) =
            KeySlot::create(master, password, kdf, &sys::hostname(), &sys::username())?;
        let name = Id::of_bytes(&bytes).to_hex();
        self.store.put(FileType::Key, &name, Bytes::from(bytes))?;
        Ok(name)
    }

    /// Removes a key slot, refusing to remove the last usable one (the data would become
    /// unreadable to everyone without a key file). A damaged slot can always be removed.
    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        let names: Vec<String> = self
            .store
            .list(FileType::Key)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.starts_with(id_prefix))
            .collect();
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Error::not_found(format!(
                    "no key slot matches {id_prefix:?}"
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{id_prefix:?} matches {} key slots; give more digits",
                    names.len()
                )))
            }
        };
        let usable = self.key_slots()?;
        let target_usable = usable.iter().any(|(n, _)| *n == name);
        if target_usable && usable.len() <= 1 {
            return Err(Error::new(ErrorKind::Conflict, "refusing to remove the last usable key slot: add another password first (`cairn key add`)"));
        }
        // Another process may be removing another slot at this very moment, and both saw
        // "not the last". Each remover lists again after its removal, and one that then sees
        // no usable slot puts its own back: the last remover to list sees every removal, so
        // at least one usable slot always survives.
        let bytes = self.store.read(FileType::Key, &name)?;
        self.store.remove(FileType::Key, &name)?;
        if !target_usable || matches!(self.key_slots(), Ok(l) if !l.is_empty()) {
            return Ok(name);
        }
        self.store.put(FileType::Key, &name, bytes).map_err(|e| {
            e.context(format!(
                "key slot {name} was the last usable one after a concurrent removal and could not be put back"
            ))
        })?;
        Err(Error::new(
            ErrorKind::Conflict,
            format!("key slot {name} was not removed: another slot was removed at the same time and it is now the last usable one"),
        ))
    }

    /// The master key, re-derived from credentials (to wrap it again under a new password).
    pub fn master_key(&self, creds: &Credentials) -> Result<(MasterKey, Option<String>)> {
        let probe = self.keys.blob_id(b"cairn: is this the tenant's key?");
        credential_key(&self.store, creds, |k| {
            Keys::derive(k)
                .is_ok_and(|keys| keys.blob_id(b"cairn: is this the tenant's key?") == probe)
        })
    }
}
