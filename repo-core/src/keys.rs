//! Key slots (password-wrapped master keys) and unwrapped key files.
//!
//! A key slot is a small JSON object under `keys/`: Argon2id parameters and salt, and the
//! master key sealed with the key Argon2id derives from the password. It is not encrypted as a
//! whole (it has to be readable before any key is known) and reveals nothing but the KDF
//! parameters. Several slots may wrap the same master key; each one is a password.
//!
//! A key file holds a master key in the clear, for automation. It must be readable only by its
//! owner (mode 0600 or stricter); a looser file is refused rather than used.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

pub(crate) const SLOT_AAD: &[u8] = b"cairn:keyslot";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: the second recommended setting of RFC 9106. The lanes are
    /// computed in parallel, so unlocking takes about half as long on two cores as one lane
    /// would, for the same memory and work. Existing key slots keep the parameters they were
    /// created with.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

/// The most memory an Argon2id slot may ask of a reader (2 GiB). A slot asking more is
/// skipped unread: slots are plain JSON that anyone with storage access can plant.
pub const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;
/// The most passes a slot may ask for.
pub const MAX_ITERATIONS: u32 = 64;
/// The most lanes a slot may ask for.
pub const MAX_PARALLELISM: u32 = 64;
/// The most work (memory in KiB times passes) a slot may ask for: 2 GiB with 8 passes, or
/// 256 MiB with 64. The default (64 MiB, 3 passes) asks for 1.2% of it.
pub const MAX_WORK: u64 = 16 * 1024 * 1024;

impl KdfParams {
    /// Checks the parameters against the bounds every reader applies ([`MAX_MEMORY_KIB`],
    /// [`MAX_ITERATIONS`], [`MAX_PARALLELISM`], [`MAX_WORK`] and Argon2's own minimums).
    /// New slots are held to the same bounds, so a reader never refuses a slot a writer made.
    pub fn check(&self) -> Result<()> {
        let KdfParams {
            memory_kib: m,
            iterations: t,
            parallelism: p,
        } = *self;
        let why = if m > MAX_MEMORY_KIB {
            format!("memory of {m} KiB is above the {MAX_MEMORY_KIB} KiB (2 GiB) a reader accepts")
        } else if !(1..=MAX_ITERATIONS).contains(&t) {
            format!("{t} iterations is outside 1..={MAX_ITERATIONS}")
        } else if !(1..=MAX_PARALLELISM).contains(&p) {
            format!("parallelism {p} is outside 1..={MAX_PARALLELISM}")
        } else if u64::from(m) < 8 * u64::from(p) {
            format!("memory of {m} KiB is below Argon2's 8 KiB per lane ({p} lanes)")
        } else if self.work() > MAX_WORK {
            format!(
                "memory of {m} KiB times {t} iterations is above the {MAX_WORK} a reader accepts"
            )
        } else {
            return Ok(());
        };
        Err(Error::invalid(format!("Argon2id parameters: {why}")))
    }

    /// Memory in KiB times passes: what unlocking with these parameters costs.
    pub fn work(&self) -> u64 {
        u64::from(self.memory_kib) * u64::from(self.iterations)
    }

    /// Parses `MEMORY_KIB,ITERATIONS,PARALLELISM`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let num = |p: &str| -> Result<u32> {
            p.parse().map_err(|_| {
                Error::invalid(format!(
                    "KDF parameters {s:?}: expected MEMORY_KIB,ITERATIONS,PARALLELISM"
                ))
            })
        };
        match parts.as_slice() {
            [m, t, p] => {
                let params = KdfParams {
                    memory_kib: num(m)?,
                    iterations: num(t)?,
                    parallelism: num(p)?,
                };
                params.check()?;
                Ok(params)
            }
            _ => Err(Error::invalid(format!(
                "KDF parameters {s:?}: expected MEMORY_KIB,ITERATIONS,PARALLELISM"
            ))),
        }
    }

    pub(crate) fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        self.check()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::invalid(format!("Argon2id parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(password, salt, &mut out)
            .map_err(|e| Error::invalid(format!("Argon2id: {e}")))?;
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub created: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    /// hex of nonce || sealed master key
    pub wrapped: String,
}

impl KeySlot {
    /// Wraps `master` under `password`; returns the slot and its stored bytes.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        params: KdfParams,
        hostname: &str,
        username: &str,
    ) -> Result<(KeySlot, Vec<u8>)> {
        params.check()?;
        let mut salt = [0u8; 32];
        crate::sys::fill_random(&mut salt)?;
        let kek = params.derive(password, &salt)?;
        let wrapped = crypto::seal_with(kek, SLOT_AAD, &master.0)?;
        let slot = KeySlot {
            version: 1,
            created: jiff::Timestamp::now().to_string(),
            hostname: hostname.to_string(),
            username: username.to_string(),
            kdf: "argon2id".to_string(),
            params,
            salt: hex::encode(salt),
            wrapped: hex::encode(wrapped),
        };
        let bytes = serde_json::to_vec_pretty(&slot)
            .map_err(|e| Error::new(ErrorKind::Other, format!("encoding key slot: {e}")))?;
        Ok((slot, bytes))
    }

    pub fn parse(name: &str, bytes: &[u8]) -> Result<KeySlot> {
        if Id::of_bytes(bytes).to_hex() != name {
            return Err(Error::corrupt(format!(
                "key slot {name}: contents do not match its name"
            )));
        }
        let slot: KeySlot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("key slot {name}: {e}")))?;
        if slot.version != 1 || slot.kdf != "argon2id" {
            return Err(Error::corrupt(format!(
                "key slot {name}: unsupported version {} / kdf {}",
                slot.version, slot.kdf
            )));
        }
        Ok(slot)
    }

    /// The salt and the sealed key, checked before any Argon2id work: hex, a salt of 8 to
    /// 64 bytes, a sealed 32-byte key, and parameters within the reader's bounds.
    pub fn prepare(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot salt is not hex"))?;
        let wrapped =
            hex::decode(&self.wrapped).map_err(|_| Error::corrupt("key slot key is not hex"))?;
        if !(8..=64).contains(&salt.len()) {
            return Err(Error::corrupt(format!(
                "key slot salt of {} bytes (expected 8 to 64)",
                salt.len()
            )));
        }
        if wrapped.len() != crypto::OVERHEAD + 32 {
            return Err(Error::corrupt(format!(
                "key slot holds a sealed key of {} bytes (expected {})",
                wrapped.len(),
                crypto::OVERHEAD + 32
            )));
        }
        self.params.check()?;
        Ok((salt, wrapped))
    }

    /// The master key, if `password` is this slot's password.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<MasterKey> {
        let (salt, wrapped) = self.prepare()?;
        let kek = self.params.derive(password, &salt)?;
        let key = crypto::open_with(kek, SLOT_AAD, &wrapped)
            .map_err(|_| Error::new(ErrorKind::WrongPassword, "wrong password"))?;
        let arr: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt("key slot holds a key of the wrong length"))?;
        Ok(MasterKey(arr))
    }
}

/// A slot that was not used to unlock, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotTrouble {
    /// It cannot be read or decoded.
    Damaged(String),
    /// Its KDF parameters are outside what a reader accepts; it was not tried.
    Skipped(String),
    /// It opens with the password, but its key is not this tenant's.
    Foreign,
}

/// The outcome of [`unlock_with_password`].
#[derive(Debug)]
pub struct Unlocked {
    pub master: MasterKey,
    /// The slot that opened.
    pub slot: String,
    /// Slots that were passed over on the way, by name.
    pub troubles: Vec<(String, SlotTrouble)>,
}

/// Finds the slot that `password` opens among `slots` (name and stored bytes).
///
/// Slots are plain JSON that anyone with storage access can plant, so: a slot whose
/// parameters are out of bounds ([`KdfParams::check`]) is skipped untried; the rest are tried
/// cheapest first (by [`KdfParams::work`], then name), so a costly planted slot is only
/// reached when no genuine one opens; and a key a slot yields is used only when `is_ours`
/// accepts it (the tenant's config opens with it), so a slot copied in from another tenant
/// is passed over. Every slot passed over is warned about, naming it and saying why.
///
/// Errors: `WrongPassword` only when every slot was tried and none opens with the password;
/// `Corrupt` naming the slots when some could not be tried (damaged or skipped) or opened
/// with a key that is not this tenant's, since then the password may well be right.
pub fn unlock_with_password(
    location: &str,
    slots: Vec<(String, Vec<u8>)>,
    password: &[u8],
    mut is_ours: impl FnMut(&MasterKey) -> bool,
) -> Result<Unlocked> {
    if slots.is_empty() {
        return Err(Error::new(
            ErrorKind::WrongPassword,
            format!("{location} has no passwords: it is opened with its key file (--key-file); `cairn key add`, run with the key file, adds a password"),
        ));
    }
    let mut troubles = Vec::new();
    let mut candidates = Vec::new();
    for (name, bytes) in slots {
        let slot = match KeySlot::parse(&name, &bytes) {
            Ok(s) => s,
            Err(e) => {
                let why = without_name(&name, &e);
                tracing::warn!("key slot {name} is damaged and was not tried: {why}");
                troubles.push((name, SlotTrouble::Damaged(why)));
                continue;
            }
        };
        if let Err(e) = slot.params.check() {
            tracing::warn!("key slot {name} was skipped: {e}");
            troubles.push((name, SlotTrouble::Skipped(e.to_string())));
            continue;
        }
        candidates.push((slot.params.work(), name, slot));
    }
    candidates.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for (_, name, slot) in candidates {
        match slot.unwrap_key(password) {
            Ok(master) if is_ours(&master) => {
                return Ok(Unlocked {
                    master,
                    slot: name,
                    troubles,
                })
            }
            Ok(_) => {
                tracing::warn!("key slot {name} opens with this password but holds the key of another tenant or repository");
                troubles.push((name, SlotTrouble::Foreign));
            }
            Err(e) if e.kind() == ErrorKind::WrongPassword => {}
            Err(e) => {
                tracing::warn!("key slot {name} is damaged: {e}");
                troubles.push((name, SlotTrouble::Damaged(e.to_string())));
            }
        }
    }
    if troubles.is_empty() {
        return Err(Error::new(
            ErrorKind::WrongPassword,
            format!("wrong password: no key slot of {location} opens with it"),
        ));
    }
    let foreign: Vec<&str> = troubles
        .iter()
        .filter(|(_, t)| *t == SlotTrouble::Foreign)
        .map(|(n, _)| n.as_str())
        .collect();
    if !foreign.is_empty() {
        return Err(Error::corrupt(format!(
            "key slot {} of {location} opens with this password, but its key does not open this tenant's config: the slot belongs to another tenant or repository (copied in?), or the config is damaged; remove such a slot with `cairn key remove`",
            foreign.join(", ")
        )));
    }
    let list: Vec<String> = troubles
        .iter()
        .map(|(n, t)| match t {
            SlotTrouble::Damaged(why) => format!("{n} is damaged ({why})"),
            SlotTrouble::Skipped(why) => format!("{n} was skipped ({why})"),
            SlotTrouble::Foreign => format!("{n} belongs to another tenant"),
        })
        .collect();
    Err(Error::corrupt(format!(
        "no key slot of {location} opens with this password, and some could not be tried: {}. The password is wrong, or its slot is one of these; unlock with a key file or another password and remove such slots with `cairn key remove`",
        list.join("; ")
    )))
}

/// An error's text without the leading "key slot NAME: " that [`KeySlot::parse`] gives it,
/// so that a message naming the slot does not name it twice.
fn without_name(name: &str, e: &Error) -> String {
    let text = e.to_string();
    match text.strip_prefix(&format!("key slot {name}: ")) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    cairn_key_file: u32,
    tenant: String,
    master_key: String,
}

/// Writes a new key file readable only by its owner. Refuses to replace an existing file.
pub fn write_key_file(path: &Path, tenant: &str, master: &MasterKey) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
    }
    let body = serde_json::to_vec_pretty(&KeyFile {
        cairn_key_file: 1,
        tenant: tenant.to_string(),
        master_key: master.to_hex(),
    })
    .map_err(|e| Error::new(ErrorKind::Other, format!("encoding key file: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating key file {}", path.display()), e))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
}

/// Reads a key file, refusing one that others can read. Returns its tenant and key.
pub fn read_key_file(path: &Path) -> Result<(String, MasterKey)> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("key file {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "key file {} has mode {mode:04o}: it must be readable only by its owner (chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
    let kf: KeyFile = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("{} is not a Cairn key file: {e}", path.display())))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&kf.master_key, &mut key).map_err(|_| {
        Error::invalid(format!(
            "{}: master_key is not 64 hex digits",
            path.display()
        ))
    })?;
    Ok((kf.tenant, MasterKey(key)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn slot_round_trip_and_wrong_password() {
        let master = MasterKey::generate().unwrap();
        let (_, bytes) = KeySlot::create(&master, b"pw", FAST, "h", "u").unwrap();
        let name = Id::of_bytes(&bytes).to_hex();
        let slot = KeySlot::parse(&name, &bytes).unwrap();
        assert_eq!(slot.unwrap_key(b"pw").unwrap().0, master.0);
        assert_eq!(
            slot.unwrap_key(b"nope").unwrap_err().kind(),
            ErrorKind::WrongPassword
        );
        assert_eq!(
            KeySlot::parse(&"0".repeat(64), &bytes).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
    }

    /// Slots with several lanes (the default has four, computed in parallel) unwrap with
    /// their password only, and the same parameters always derive the same key.
    #[test]
    fn parallel_lanes_derive_a_stable_key() {
        let lanes = KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 4,
        };
        assert_eq!(KdfParams::default().parallelism, 4);
        let salt = [3u8; 32];
        assert_eq!(
            lanes.derive(b"pw", &salt).unwrap(),
            lanes.derive(b"pw", &salt).unwrap()
        );
        assert_ne!(
            lanes.derive(b"pw", &salt).unwrap(),
            FAST.derive(b"pw", &salt).unwrap()
        );
        let master = MasterKey::generate().unwrap();
        let (_, bytes) = KeySlot::create(&master, b"pw", lanes, "h", "u").unwrap();
        let slot = KeySlot::parse(&Id::of_bytes(&bytes).to_hex(), &bytes).unwrap();
        assert_eq!(slot.unwrap_key(b"pw").unwrap().0, master.0);
        assert_eq!(
            slot.unwrap_key(b"nope").unwrap_err().kind(),
            ErrorKind::WrongPassword
        );
    }

    #[test]
    fn key_file_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let master = MasterKey::generate().unwrap();
        write_key_file(&p, "default", &master).unwrap();
        let (tenant, k) = read_key_file(&p).unwrap();
        assert_eq!((tenant.as_str(), k.0), ("default", master.0));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read_key_file(&p).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(
            write_key_file(&p, "default", &master).is_err(),
            "never overwrites"
        );
    }
}
