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

impl KdfParams {
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
            [m, t, p] => Ok(KdfParams {
                memory_kib: num(m)?,
                iterations: num(t)?,
                parallelism: num(p)?,
            }),
            _ => Err(Error::invalid(format!(
                "KDF parameters {s:?}: expected MEMORY_KIB,ITERATIONS,PARALLELISM"
            ))),
        }
    }

    pub(crate) fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
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
        let mut salt = [0u8; 32];
        crypto::fill_random(&mut salt)?;
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

    /// The master key, if `password` is this slot's password.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<MasterKey> {
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::corrupt("key slot salt is not hex"))?;
        let wrapped =
            hex::decode(&self.wrapped).map_err(|_| Error::corrupt("key slot key is not hex"))?;
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
