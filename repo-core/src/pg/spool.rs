//! The WAL spool: a private folder, outside PostgreSQL's data directory, where `wal push`
//! and `wal fetch` keep what lets a later call answer without opening the repository.
//!
//! * `push/<name>`: a record that `<name>` is durable in the repository (written only after
//!   the snapshot holding it was saved), with its size and the BLAKE3 of its bytes. A later
//!   push of that name succeeds at once when the file's bytes hash to the record; any other
//!   outcome (no record, a record that cannot be read, other bytes) goes the normal way
//!   through the repository, which decides.
//! * `fetch/<name>` and `fetch/<name>.b3`: a WAL file fetched ahead of PostgreSQL's request,
//!   verified against the repository on the way in, and the size and BLAKE3 recorded when it
//!   was written. A later fetch of that name hands it over when its bytes still hash to the
//!   record. The spool only ever answers "here it is": "absent" comes from the repository.
//!
//! Trust: the folder is created owner-only (0700) and used only when it is owned by this
//! user and writable by nobody else. Whoever can write it can already write the data
//! directory's WAL (they are the same user), so the records add no new way in; the digests
//! guard against damage and mix-ups (a file replaced after it was recorded), not against
//! that user. Every file is written under a temporary name and renamed into place, so a
//! crash leaves either a whole record or none; a torn one fails to parse and is ignored.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::header::{SegmentHeader, LONG_HEADER_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

const PUSH: &str = "push";
const FETCH: &str = "fetch";
/// The last name a fetch asked for (in the spool's folder, beside `push` and `fetch`).
const WANTED: &str = "wanted";
/// Held by the one prefetcher of this spool.
const LOCK: &str = "prefetch.lock";
/// A record's first line; anything else is not a record.
const MAGIC: &str = "cairn-wal-spool 1";
/// Records are a few lines; a larger file is not one.
const MAX_RECORD: u64 = 1024;
/// Push records whose name PostgreSQL never asked for (it was archived by someone else, or
/// the cluster is gone) are removed after this long.
pub const PUSH_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many push records are kept; the oldest go first.
pub const MAX_PUSH_RECORDS: usize = 1024;
/// Prefetched files not asked for within this long are removed.
pub const FETCH_TTL: Duration = Duration::from_secs(3600);
/// Temporary files older than this belong to a process that died.
const TEMP_TTL: Duration = Duration::from_secs(600);

/// What the spool knows of one WAL file: its name, size and BLAKE3, and (for a push) the
/// snapshot that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub size: u64,
    pub digest: [u8; 32],
    pub snapshot: Option<Id>,
}

impl Record {
    /// The record's text; `archive` (the key of the repository and tenant it was written
    /// for) is its last line when given.
    fn encode(&self, archive: Option<&str>) -> String {
        let mut s = format!(
            "{MAGIC}\nname {}\nsize {}\nblake3 {}\n",
            self.name,
            self.size,
            hex::encode(self.digest)
        );
        if let Some(id) = &self.snapshot {
            s.push_str(&format!("snapshot {}\n", id.to_hex()));
        }
        if let Some(key) = archive {
            s.push_str(&format!("archive {key}\n"));
        }
        s
    }

    /// The record in `text` and the archive key it names, or `None` when it is not a
    /// whole, well-formed record.
    fn decode(text: &str) -> Option<Keyed> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |key: &str| -> Option<String> {
            let line = lines.next()?;
            line.strip_prefix(key)?
                .strip_prefix(' ')
                .map(str::to_string)
        };
        let name = field("name")?;
        let size = field("size")?.parse().ok()?;
        let digest: [u8; 32] = hex::decode(field("blake3")?).ok()?.try_into().ok()?;
        // The snapshot and archive lines are optional, in this order; a snapshot must be
        // an id, an archive key is not empty.
        let mut next = lines.next();
        let mut snapshot = None;
        if let Some(hex) = next.and_then(|l| l.strip_prefix("snapshot ")) {
            snapshot = Some(Id::from_hex(hex).ok()?);
            next = lines.next();
        }
        let mut archive = None;
        if let Some(key) = next.and_then(|l| l.strip_prefix("archive ")) {
            archive = Some(key.to_string()).filter(|k| !k.is_empty());
            archive.as_ref()?;
            next = lines.next();
        }
        if next.is_some() || !text.ends_with('\n') {
            return None;
        }
        Some((
            Record {
                name,
                size,
                digest,
                snapshot,
            },
            archive,
        ))
    }
}

/// The size and BLAKE3 of the file at `path`.
pub fn digest_file(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        hasher.update(&buf[..n]);
        size = size.saturating_add(n as u64);
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

/// What a push record says of a file about to be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushCheck {
    /// The record names this file's bytes: it is durable in the repository.
    Archived(Record),
    /// No record for this name.
    NoRecord,
    /// A record exists but could not be read or is not well formed.
    Damaged,
    /// A record exists for other bytes.
    Differs,
    /// A record exists, written for another repository or tenant sharing this spool folder:
    /// it says nothing of this archive.
    OtherArchive,
}

/// A spool folder (see the module's comment).
///
/// A spool knows the archive (repository location and tenant) it is used for, when it was
/// given with [`Spool::for_archive`]: every record it writes names that archive, and it
/// trusts only records naming it. A folder given by the user (`--spool`, `CAIRN_WAL_SPOOL`)
/// may be shared by the pushes to two repositories of one cluster; a record that one of them
/// holds a segment must never answer for the other.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    archive: Option<String>,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool {
            dir: dir.into(),
            archive: None,
        }
    }

    /// This spool, used for the archive whose [`Spool::archive_key`] is `key`.
    pub fn for_archive(mut self, key: String) -> Spool {
        self.archive = Some(key);
        self
    }

    /// The key of a repository location and tenant: it names the archive in records.
    pub fn archive_key(location: &str, tenant: &str) -> String {
        let mut key = Vec::new();
        for part in ["cairn wal spool", location, tenant] {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        Id::of_bytes(&key).to_hex()
    }

    /// The default spool of a repository location and tenant, in the cache folder: one
    /// folder per (location, tenant), so two archives never share records.
    pub fn default_dir(cache_dir: &Path, location: &str, tenant: &str) -> PathBuf {
        cache_dir
            .join("wal-spool")
            .join(&Self::archive_key(location, tenant)[..32])
    }

    /// The record in the file at `path`, as [`read_record`] reads it, when it was written
    /// for this spool's archive; a record of another archive is `Some(Err(()))`.
    fn read_own(&self, path: &Path) -> Result<Option<std::result::Result<Option<Record>, ()>>> {
        Ok(read_record(path)?.map(|parsed| match parsed {
            None => Ok(None),
            Some((record, archive)) if archive == self.archive => Ok(Some(record)),
            Some(_) => Err(()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sub-folder `which`, created owner-only when missing, and refused when another
    /// user owns it or can write it.
    fn sub(&self, which: &str) -> Result<PathBuf> {
        let path = self.dir.join(which);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(format!("creating the spool {}", path.display()), e))?;
        for p in [&self.dir, &path] {
            let meta = std::fs::metadata(p)
                .map_err(|e| Error::io(format!("reading the spool {}", p.display()), e))?;
            if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
                return Err(Error::new(
                    crate::error::ErrorKind::PermissionDenied,
                    format!(
                        "the spool {} is not private to this user (owner {}, mode {:o}); it is not used",
                        p.display(),
                        meta.uid(),
                        meta.mode() & 0o7777
                    ),
                ));
            }
        }
        Ok(path)
    }

    // ---- push records ----

    /// Records that `record.name` is durable in the repository. Call only after the
    /// snapshot holding it was saved.
    pub fn record_pushed(&self, record: &Record) -> Result<()> {
        let dir = self.sub(PUSH)?;
        write_new(
            &dir,
            &record.name,
            record.encode(self.archive.as_deref()).as_bytes(),
        )
    }

    /// Whether the file at `path` (named `name`) is recorded as archived with these bytes.
    pub fn check_pushed(&self, name: &str, path: &Path) -> Result<PushCheck> {
        let dir = self.sub(PUSH)?;
        let Some(record) = self.read_own(&dir.join(name))? else {
            return Ok(PushCheck::NoRecord);
        };
        let Ok(record) = record else {
            return Ok(PushCheck::OtherArchive);
        };
        let Some(record) = record.filter(|r| r.name == name) else {
            return Ok(PushCheck::Damaged);
        };
        let (size, digest) = digest_file(path)?;
        if size == record.size && digest == record.digest {
            Ok(PushCheck::Archived(record))
        } else {
            Ok(PushCheck::Differs)
        }
    }

    /// Whether a push record exists for `name` (whatever it says).
    pub fn has_push_record(&self, name: &str) -> bool {
        self.dir.join(PUSH).join(name).exists()
    }

    /// Removes the push record of `name`: PostgreSQL was told it is archived.
    pub fn forget_pushed(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(PUSH).join(name));
    }

    /// Removes push records older than [`PUSH_RECORD_TTL`] and, past [`MAX_PUSH_RECORDS`],
    /// the oldest; and dead temporary files.
    pub fn clean_pushed(&self) {
        let Ok(dir) = self.sub(PUSH) else { return };
        let mut records = entries(&dir);
        records.retain(|(path, name, age)| {
            let stale = if name.starts_with('.') {
                *age > TEMP_TTL
            } else {
                *age > PUSH_RECORD_TTL
            };
            if stale {
                let _ = std::fs::remove_file(path);
            }
            !stale && !name.starts_with('.')
        });
        if records.len() > MAX_PUSH_RECORDS {
            records.sort_by_key(|r| std::cmp::Reverse(r.2));
            let excess = records.len() - MAX_PUSH_RECORDS;
            for (path, _, _) in records.iter().take(excess) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    // ---- prefetched files ----

    /// Moves the prefetched file `name` to `dest` when it is whole and its bytes hash to its
    /// record; returns its size. `None` (nothing at `dest`) when there is no such file or it
    /// does not match, in which case the spool's copy is removed. The file is first moved
    /// (renamed, or copied across file systems) to a temporary name beside `dest`, then
    /// hashed there and renamed into place only when it matches, so `dest` never holds a
    /// short or unverified file, and what is checked is what PostgreSQL reads.
    ///
    /// With `cluster`, the file must also be a segment of that cluster (its page header's
    /// system identifier): a spool left by the recovery of another cluster archived under
    /// the same repository and tenant is then never served.
    pub fn take_fetched(
        &self,
        name: &str,
        dest: &Path,
        cluster: Option<u64>,
    ) -> Result<Option<u64>> {
        let dir = self.sub(FETCH)?;
        let data = dir.join(name);
        let record = match self.read_own(&dir.join(format!("{name}.b3")))? {
            // The prefetcher records a file before it renames it into place, so a file
            // without a record is not whole (or not there).
            None => return Ok(None),
            Some(Ok(Some(r))) if r.name == name => r,
            Some(Err(())) => {
                tracing::warn!("the spool's copy of {name} was fetched from another repository or tenant; fetching from the repository");
                self.drop_fetched(name);
                return Ok(None);
            }
            Some(_) => {
                tracing::warn!(
                    "the spool's record of {name} is damaged; fetching from the repository"
                );
                self.drop_fetched(name);
                return Ok(None);
            }
        };
        let tmp = temp_beside(dest)?;
        let moved = match std::fs::rename(&data, &tmp) {
            Ok(()) => digest_file(&tmp),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => File::open(&data)
                .map_err(|e| Error::io(format!("opening {}", data.display()), e))
                .and_then(|mut src| copy_hashing(&mut src, &tmp, record.size)),
            Err(e) => return Err(Error::io(format!("moving {}", data.display()), e)),
        };
        self.drop_fetched(name);
        match moved {
            Ok((size, digest)) if size == record.size && digest == record.digest => {
                if let Some(expected) = cluster.filter(|id| !of_cluster(&tmp, name, *id)) {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!("the spool's copy of {name} is not a segment of cluster {expected}; fetching from the repository");
                    return Ok(None);
                }
                if let Err(e) = std::fs::rename(&tmp, dest) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Error::io(
                        format!("moving {name} into place at {}", dest.display()),
                        e,
                    ));
                }
                Ok(Some(size))
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!("the spool's copy of {name} does not match its record; fetching from the repository");
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Whether the prefetcher is writing `name` into the spool now (its temporary file is
    /// there).
    pub fn in_flight(&self, name: &str) -> bool {
        let prefix = format!(".{name}.");
        entries(&self.dir.join(FETCH))
            .iter()
            .any(|(_, n, age)| n.starts_with(&prefix) && n.ends_with(".tmp") && *age < TEMP_TTL)
    }

    /// Whether a whole prefetched file `name` is in the spool.
    pub fn has_fetched(&self, name: &str) -> bool {
        self.dir.join(FETCH).join(name).exists()
    }

    /// Stores a prefetched file: `write` writes it to the path it is given (a temporary
    /// name in the spool) and returns its size; it is then hashed, recorded, and renamed
    /// into place.
    pub fn store_fetched(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<u64>,
    ) -> Result<u64> {
        let dir = self.sub(FETCH)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", Id::random()?.short()));
        let result = write(&tmp).and_then(|written| {
            let (size, digest) = digest_file(&tmp)?;
            if size != written {
                return Err(Error::corrupt(format!(
                    "{name}: wrote {written} bytes to the spool, read back {size}"
                )));
            }
            let record = Record {
                name: name.to_string(),
                size,
                digest,
                snapshot: None,
            };
            write_new(
                &dir,
                &format!("{name}.b3"),
                record.encode(self.archive.as_deref()).as_bytes(),
            )?;
            std::fs::rename(&tmp, dir.join(name))
                .map_err(|e| Error::io(format!("renaming {} into place", tmp.display()), e))?;
            Ok(size)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn drop_fetched(&self, name: &str) {
        let dir = self.dir.join(FETCH);
        let _ = std::fs::remove_file(dir.join(name));
        let _ = std::fs::remove_file(dir.join(format!("{name}.b3")));
    }

    /// The prefetched files (names and sizes) in the spool.
    pub fn fetched(&self) -> Vec<(String, u64)> {
        let dir = self.dir.join(FETCH);
        entries(&dir)
            .into_iter()
            .filter(|(_, n, _)| !n.starts_with('.') && !n.ends_with(".b3"))
            .map(|(p, n, _)| (n, std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)))
            .collect()
    }

    /// Removes prefetched files older than [`FETCH_TTL`], those `keep` rejects, and
    /// temporary files (call only while holding the prefetch lock: only its holder writes
    /// them).
    pub fn clean_fetched(&self, keep: impl Fn(&str) -> bool) {
        let Ok(dir) = self.sub(FETCH) else { return };
        for (path, name, age) in entries(&dir) {
            if name.starts_with('.') {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let base = name.strip_suffix(".b3").unwrap_or(&name);
            if age > FETCH_TTL || !keep(base) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Notes the last name PostgreSQL asked for and the size of WAL files, for the
    /// prefetcher.
    pub fn set_wanted(&self, name: &str, size: u64) -> Result<()> {
        self.sub(FETCH)?;
        write_new(&self.dir, WANTED, format!("{name} {size}\n").as_bytes())
    }

    /// The last name asked for and the size of its file.
    pub fn wanted(&self) -> Option<(String, u64)> {
        let text = std::fs::read_to_string(self.dir.join(WANTED)).ok()?;
        let (name, size) = text.trim_end().split_once(' ')?;
        Some((name.to_string(), size.parse().ok()?))
    }

    /// The prefetch lock, when no other process holds it. Released when the file is
    /// dropped (or its process ends).
    pub fn try_lock_prefetch(&self) -> Result<Option<File>> {
        self.sub(FETCH)?;
        let path = self.dir.join(LOCK);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
    }
}

/// Whether the file at `path` starts with the page header of a segment `name` of the
/// cluster `system_id`.
fn of_cluster(path: &Path, name: &str, system_id: u64) -> bool {
    let mut first = [0u8; LONG_HEADER_LEN];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut first));
    read.is_ok() && SegmentHeader::parse(&first, name).is_ok_and(|h| h.system_id == system_id)
}

/// A record and the archive key it names.
type Keyed = (Record, Option<String>);

/// `Ok(None)` when there is no file at `path`; `Ok(Some(None))` when there is one that is
/// not a record; else the record and the archive key it names.
fn read_record(path: &Path) -> Result<Option<Option<Keyed>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Ok(Some(None)),
    };
    let mut text = String::new();
    if f.take(MAX_RECORD).read_to_string(&mut text).is_err() {
        return Ok(Some(None));
    }
    Ok(Some(Record::decode(&text)))
}

/// Writes `bytes` as `dir/name`, replacing it, through a temporary file and a rename.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", Id::random()?.short()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, dir.join(name))
            .map_err(|e| Error::io(format!("renaming {} into place", tmp.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new temporary path beside `dest`.
fn temp_beside(dest: &Path) -> Result<PathBuf> {
    let name = format!(
        ".{}.cairn-{}.tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal"),
        Id::random()?.short()
    );
    Ok(match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    })
}

/// Copies `src` to a new file `dest`, reading at most `limit + 1` bytes; returns the bytes
/// copied and their BLAKE3.
fn copy_hashing(src: &mut File, dest: &Path, limit: u64) -> Result<(u64, [u8; 32])> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut limited = src.take(limit.saturating_add(1));
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the spool", e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        size = size.saturating_add(n as u64);
    }
    Ok((size, *hasher.finalize().as_bytes()))
}

/// The files in `dir`: path, name and age (zero when unknown).
fn entries(dir: &Path) -> Vec<(PathBuf, String, Duration)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let meta = e.metadata().ok()?;
            if !meta.is_file() {
                return None;
            }
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            Some((e.path(), name, age))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_reject_damage() {
        let r = Record {
            name: "000000010000000000000003".into(),
            size: 16 << 20,
            digest: [7; 32],
            snapshot: Some(Id([9; 32])),
        };
        let text = r.encode(None);
        assert_eq!(Record::decode(&text), Some((r.clone(), None)));
        assert_eq!(Record::decode(&text[..text.len() - 3]), None);
        assert_eq!(Record::decode(&text.replace("blake3 07", "blake3 0")), None);
        assert_eq!(Record::decode(""), None);
        let keyed = r.encode(Some("abc"));
        assert_eq!(
            Record::decode(&keyed),
            Some((r.clone(), Some("abc".to_string())))
        );
        assert_eq!(
            Record::decode(&keyed.replace("archive abc", "archive ")),
            None
        );
        let no_snapshot = Record {
            snapshot: None,
            ..r
        };
        assert_eq!(
            Record::decode(&no_snapshot.encode(Some("k"))),
            Some((no_snapshot.clone(), Some("k".to_string())))
        );
        assert_eq!(
            Record::decode(&no_snapshot.encode(None)),
            Some((no_snapshot, None))
        );
    }

    #[test]
    fn a_record_answers_only_for_the_archive_it_was_written_for() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("spool");
        let a = Spool::new(&dir).for_archive(Spool::archive_key("/repo/a", "db"));
        let b = Spool::new(&dir).for_archive(Spool::archive_key("/repo/b", "db"));
        let other_tenant = Spool::new(&dir).for_archive(Spool::archive_key("/repo/a", "db2"));
        let name = "000000010000000000000005";
        let file = d.path().join(name);
        std::fs::write(&file, b"segment bytes").unwrap();
        let (size, digest) = digest_file(&file).unwrap();
        let rec = Record {
            name: name.into(),
            size,
            digest,
            snapshot: None,
        };
        b.record_pushed(&rec).unwrap();
        assert_eq!(
            a.check_pushed(name, &file).unwrap(),
            PushCheck::OtherArchive
        );
        assert_eq!(
            b.check_pushed(name, &file).unwrap(),
            PushCheck::Archived(rec.clone())
        );
        // A record without an archive (an older spool) answers for none.
        Spool::new(&dir).record_pushed(&rec).unwrap();
        assert_eq!(
            a.check_pushed(name, &file).unwrap(),
            PushCheck::OtherArchive
        );

        // Prefetched files likewise.
        a.store_fetched(name, |p| {
            std::fs::write(p, b"wal bytes").unwrap();
            Ok(9)
        })
        .unwrap();
        let dest = d.path().join("RECOVERYXLOG");
        assert_eq!(other_tenant.take_fetched(name, &dest, None).unwrap(), None);
        assert!(!dest.exists());
        assert!(!a.has_fetched(name), "another archive's copy is removed");
        a.store_fetched(name, |p| {
            std::fs::write(p, b"wal bytes").unwrap();
            Ok(9)
        })
        .unwrap();
        assert_eq!(a.take_fetched(name, &dest, None).unwrap(), Some(9));
    }

    #[test]
    fn a_pushed_record_matches_only_its_bytes() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::new(d.path().join("spool"));
        let file = d.path().join("000000010000000000000003");
        std::fs::write(&file, b"segment bytes").unwrap();
        let (size, digest) = digest_file(&file).unwrap();
        let name = "000000010000000000000003";
        assert_eq!(
            spool.check_pushed(name, &file).unwrap(),
            PushCheck::NoRecord
        );
        let rec = Record {
            name: name.into(),
            size,
            digest,
            snapshot: None,
        };
        spool.record_pushed(&rec).unwrap();
        assert_eq!(
            spool.check_pushed(name, &file).unwrap(),
            PushCheck::Archived(rec)
        );
        std::fs::write(&file, b"segment bytez").unwrap();
        assert_eq!(spool.check_pushed(name, &file).unwrap(), PushCheck::Differs);
        std::fs::write(spool.dir().join(PUSH).join(name), b"garbage").unwrap();
        assert_eq!(spool.check_pushed(name, &file).unwrap(), PushCheck::Damaged);
        spool.forget_pushed(name);
        assert!(!spool.has_push_record(name));
    }

    #[test]
    fn a_prefetched_file_is_served_only_when_it_matches() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::new(d.path().join("spool"));
        let name = "000000010000000000000004";
        let store = |bytes: &'static [u8]| {
            spool
                .store_fetched(name, |p| {
                    std::fs::write(p, bytes).unwrap();
                    Ok(bytes.len() as u64)
                })
                .unwrap();
        };
        let dest = d.path().join("RECOVERYXLOG");
        assert_eq!(spool.take_fetched(name, &dest, None).unwrap(), None);
        store(b"wal bytes");
        assert!(spool.has_fetched(name));
        assert_eq!(spool.take_fetched(name, &dest, None).unwrap(), Some(9));
        assert_eq!(std::fs::read(&dest).unwrap(), b"wal bytes");
        assert!(!spool.has_fetched(name));
        store(b"wal bytes");
        std::fs::write(spool.dir().join(FETCH).join(name), b"wal bytez").unwrap();
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(spool.take_fetched(name, &dest, None).unwrap(), None);
        assert!(!dest.exists());
        assert!(!spool.has_fetched(name));
        let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the spool folder is left");
    }
}
