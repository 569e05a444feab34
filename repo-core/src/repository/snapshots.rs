//! Listing, verifying, resolving and committing snapshots.

use super::*;

/// How far a snapshot listing trusts the manifests in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotRead {
    /// A manifest in the cache is used without reading its object again.
    Cached,
    /// Every object is read and checked against its name.
    Verified,
}

/// A snapshot listing: the readable snapshots, oldest first, and those that cannot be read.
#[derive(Debug, Default)]
pub struct SnapshotList {
    pub snapshots: Vec<(Id, Snapshot)>,
    pub unreadable: Vec<(Id, Error)>,
    /// Listed, but removed before they could be read.
    pub vanished: Vec<Id>,
}

impl Repository {
    // ---- snapshots ----

    /// When the storage received each snapshot object, by its own clock (see
    /// [`crate::backend::Backend::received_times`]); `None` when the storage keeps no such
    /// time.
    pub fn snapshot_received_times(
        &self,
    ) -> Result<Option<std::collections::HashMap<Id, std::time::SystemTime>>> {
        let Some(times) = self.store.received_times(FileType::Snapshot)? else {
            return Ok(None);
        };
        let mut out = std::collections::HashMap::with_capacity(times.len());
        for (name, at) in times {
            if let Ok(id) = Id::from_hex(&name) {
                out.insert(id, at);
            }
        }
        Ok(Some(out))
    }

    /// Every readable snapshot, oldest first, trusting manifests already in the cache. An
    /// unreadable snapshot is reported as a warning and left out; use
    /// [`Repository::list_snapshots`] to act on it, and [`Repository::snapshots_for_gc`]
    /// before deleting anything.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let list = self.list_snapshots(SnapshotRead::Cached)?;
        for (id, e) in &list.unreadable {
            tracing::warn!("skipping unreadable snapshot {id}: {e}");
        }
        Ok(list.snapshots)
    }

    /// Lists the snapshots. Each listed object is read unless its manifest is cached and
    /// `how` is [`SnapshotRead::Cached`]; [`SnapshotRead::Verified`] reads every object and
    /// checks its bytes against its name, so that a damaged object is found even when the
    /// cache holds a good copy of its manifest. A snapshot removed while the listing runs (a
    /// concurrent `forget`) is left out without a word; one that cannot be read is returned
    /// in `unreadable` and dropped from the cache.
    pub fn list_snapshots(&self, how: SnapshotRead) -> Result<SnapshotList> {
        let listed: Vec<Id> = self
            .store
            .list(FileType::Snapshot)?
            .into_iter()
            .map(|o| Id::from_hex(&o.name))
            .collect::<Result<_>>()?;
        let listed_set: HashSet<Id> = listed.iter().copied().collect();
        let cached: HashMap<Id, Snapshot> = match self.cache.cached_snapshots() {
            Ok(c) => c.into_iter().collect(),
            Err(e) if e.kind() == ErrorKind::Cache => {
                tracing::warn!("{e}");
                HashMap::new()
            }
            Err(e) => return Err(e),
        };
        let gone: Vec<Id> = cached
            .keys()
            .filter(|id| !listed_set.contains(id))
            .copied()
            .collect();
        enum Outcome {
            Cached(Id),
            Fetched(Id, Box<Snapshot>),
            Vanished(Id),
            Unreadable(Id, Error),
        }
        let outcomes: Vec<Outcome> = listed
            .par_iter()
            .map(|id| {
                let read = match (cached.contains_key(id), how) {
                    (true, SnapshotRead::Cached) => return Ok(Outcome::Cached(*id)),
                    (true, SnapshotRead::Verified) => self
                        .verify_object(FileType::Snapshot, id, "snapshot")
                        .map(|()| None),
                    (false, _) => self.read_snapshot(id).map(Some),
                };
                match read {
                    Ok(None) => Ok(Outcome::Cached(*id)),
                    Ok(Some(s)) => Ok(Outcome::Fetched(*id, Box::new(s))),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Outcome::Vanished(*id)),
                    Err(e) if e.kind() == ErrorKind::Corrupt => Ok(Outcome::Unreadable(*id, e)),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<_>>()?;
        let mut out = SnapshotList::default();
        let mut fetched = Vec::new();
        let mut drop_from_cache = gone;
        for o in outcomes {
            match o {
                Outcome::Cached(id) => {
                    if let Some(s) = cached.get(&id) {
                        out.snapshots.push((id, s.clone()));
                    }
                }
                Outcome::Fetched(id, s) => {
                    fetched.push((id, (*s).clone()));
                    out.snapshots.push((id, *s));
                }
                Outcome::Vanished(id) => {
                    drop_from_cache.push(id);
                    out.vanished.push(id);
                }
                Outcome::Unreadable(id, e) => {
                    drop_from_cache.push(id);
                    out.unreadable.push((id, e));
                }
            }
        }
        if !drop_from_cache.is_empty() || !fetched.is_empty() {
            if let Err(e) = self.cache.update_snapshots(&fetched, &drop_from_cache) {
                tracing::warn!("{e}");
            }
        }
        out.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        out.unreadable.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The snapshots that garbage collection and retention may act on, every object read
    /// and verified. While any snapshot cannot be read they refuse, since the data only that
    /// snapshot uses would look unused and be freed; with `drop_unreadable` the unreadable
    /// snapshot objects are removed first (the user has said they are to be dropped).
    ///
    /// A snapshot removed while being listed may have been replaced by one this listing
    /// missed: a tag edit, WAL retention and a merge each write the new snapshot before they
    /// remove the old one. The listing is repeated until no listed snapshot vanishes, so that
    /// of every such chain one snapshot is read; otherwise what it uses would look unused.
    pub fn snapshots_for_gc(&self, drop_unreadable: bool) -> Result<Vec<(Id, Snapshot)>> {
        const ATTEMPTS: usize = 10;
        let mut list = self.list_snapshots(SnapshotRead::Verified)?;
        let mut attempts = 1;
        while !list.vanished.is_empty() {
            if attempts >= ATTEMPTS {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("snapshots kept being removed while they were listed ({attempts} times); run again"),
                ));
            }
            attempts += 1;
            list = self.list_snapshots(SnapshotRead::Verified)?;
        }
        if list.unreadable.is_empty() {
            return Ok(list.snapshots);
        }
        if !drop_unreadable {
            let names: Vec<String> = list
                .unreadable
                .iter()
                .map(|(id, e)| format!("{}: {e}", id.short()))
                .collect();
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{} snapshot(s) cannot be read, and the data only they use would be freed: {}. Restore the object from a copy if you have one; otherwise run `cairn repair snapshots --forget` to remove unreadable snapshots, or pass --drop-unreadable to drop them now",
                    list.unreadable.len(),
                    names.join("; ")
                ),
            ));
        }
        for (id, e) in &list.unreadable {
            tracing::warn!("dropping unreadable snapshot {id} ({e})");
            self.store.remove(FileType::Snapshot, &id.to_hex())?;
        }
        Ok(list.snapshots)
    }

    /// Reads an object and checks that its bytes hash to its name.
    fn verify_object(&self, ft: FileType, id: &Id, what: &str) -> Result<()> {
        let bytes = self.store.read(ft, &id.to_hex())?;
        if Id::of_bytes(&bytes) != *id {
            return Err(Error::corrupt(format!(
                "{what} {id}: contents do not match its name"
            )));
        }
        Ok(())
    }

    pub fn read_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.read_sealed(FileType::Snapshot, format::snapshot::AAD, id, "snapshot")
    }

    /// Resolves `latest` or a unique hex prefix of a snapshot id. The chosen snapshot's object
    /// is read again and checked, so a damaged snapshot is reported as such even when the
    /// cache holds its manifest; a prefix that names an unreadable snapshot says why.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let list = self.list_snapshots(SnapshotRead::Cached)?;
        let chosen = if spec == "latest" {
            for (id, e) in &list.unreadable {
                tracing::warn!(
                    "snapshot {id} cannot be read ({e}); `latest` is the newest of the others"
                );
            }
            // Archived WAL is not what a user means by the latest backup.
            list.snapshots
                .iter()
                .rev()
                .find(|(_, s)| s.kind != crate::format::snapshot::SnapshotKind::Wal)
                .map(|(id, _)| *id)
                .ok_or_else(|| Error::not_found("the repository has no snapshots"))?
        } else {
            if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid(format!(
                    "{spec:?} is not a snapshot id (hex digits) or `latest`"
                )));
            }
            let spec = spec.to_ascii_lowercase();
            let matches: Vec<Id> = list
                .snapshots
                .iter()
                .map(|(id, _)| *id)
                .chain(list.unreadable.iter().map(|(id, _)| *id))
                .filter(|id| id.to_hex().starts_with(&spec))
                .collect();
            match matches.as_slice() {
                [] => return Err(Error::not_found(format!("no snapshot matches {spec:?}"))),
                [one] => *one,
                _ => {
                    return Err(Error::invalid(format!(
                        "{spec:?} matches {} snapshots ({}); give more digits",
                        matches.len(),
                        matches
                            .iter()
                            .take(5)
                            .map(|id| id.short())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        };
        match self.read_snapshot(&chosen) {
            Ok(s) => Ok((chosen, s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(format!(
                "snapshot {chosen} was removed (by a concurrent forget?)"
            ))),
            Err(e) => {
                let _ = self.cache.update_snapshots(&[], &[chosen]);
                Err(e.context("the snapshot cannot be read (run `cairn check`)"))
            }
        }
    }

    /// Commits a snapshot: the last write of any backup.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let sealed = seal_meta(&self.keys, format::snapshot::AAD, snap)?;
        let id = Id::of_bytes(&sealed);
        // Named by the hash of its bytes: an existing object of that name is this snapshot
        // (a retried upload whose first attempt was stored).
        self.store
            .put(FileType::Snapshot, &id.to_hex(), Bytes::from(sealed))?;
        self.cache.update_snapshots(&[(id, snap.clone())], &[])?;
        Ok(id)
    }
}
