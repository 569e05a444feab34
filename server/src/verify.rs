//! What the server checks of an upload before storing it: that the body hashes to the name.
//!
//! Object names are the hash of the stored bytes (docs/design.md, sections 2 and 16), so a
//! server without keys can still refuse a damaged or mislabelled upload. Cairn tenants name
//! objects by BLAKE3; tenants written by the restic client name them by SHA-256. `config` is
//! named by its role and is not checked. A refused upload stores nothing.

use cairn_store::layout::{self, FileType};
use cairn_store::{Error, Result};
use sha2::Digest;

/// The hash a tenant's object names are made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameHash {
    /// Cairn clients: BLAKE3 of the stored bytes.
    Blake3,
    /// restic clients: SHA-256 of the stored bytes.
    Sha256,
}

impl NameHash {
    /// The name an object with these bytes must have, as 64 lowercase hex digits.
    pub fn name_of(self, body: &[u8]) -> String {
        match self {
            NameHash::Blake3 => blake3::hash(body).to_hex().to_string(),
            NameHash::Sha256 => hex::encode(sha2::Sha256::digest(body)),
        }
    }

    /// Parses a tenant setting: `blake3` or `sha256`.
    pub fn parse(s: &str) -> Result<NameHash> {
        match s {
            "blake3" => Ok(NameHash::Blake3),
            "sha256" => Ok(NameHash::Sha256),
            other => Err(Error::invalid(format!(
                "unknown object name hash {other:?} (use blake3 or sha256)"
            ))),
        }
    }
}

/// Checks an upload of `body` as object `name` of type `ft`: the name must be a valid object
/// name and, except for `config`, the hash of the body. The error is `InvalidInput` (the
/// server answers 400) and names both hashes.
pub fn check_upload(hash: NameHash, ft: FileType, name: &str, body: &[u8]) -> Result<()> {
    layout::validate_name(ft, name)?;
    if ft == FileType::Config {
        return Ok(());
    }
    let actual = hash.name_of(body);
    if actual != name {
        return Err(Error::invalid(format!(
            "upload {}/{name} refused: its {} bytes hash to {actual}",
            ft.dir(),
            body.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_store::ErrorKind;

    #[test]
    fn a_body_is_accepted_only_under_its_own_name() {
        let body = b"sealed pack bytes";
        for hash in [NameHash::Blake3, NameHash::Sha256] {
            let name = hash.name_of(body);
            check_upload(hash, FileType::Pack, &name, body).unwrap();
            let e = check_upload(hash, FileType::Pack, &name, b"other bytes").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&hash.name_of(b"other bytes")), "{e}");
        }
        // A name made with the other hash is refused: a tenant's setting decides.
        let blake = NameHash::Blake3.name_of(body);
        assert!(check_upload(NameHash::Sha256, FileType::Snapshot, &blake, body).is_err());
    }

    #[test]
    fn known_answers() {
        assert_eq!(
            NameHash::Sha256.name_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            NameHash::Blake3.name_of(b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn config_is_named_by_role_and_bad_names_are_refused() {
        check_upload(NameHash::Blake3, FileType::Config, "config", b"anything").unwrap();
        for bad in ["../x", "ABC", "", "config"] {
            assert!(check_upload(NameHash::Blake3, FileType::Index, bad, b"x").is_err());
        }
        assert!(NameHash::parse("md5").is_err());
        assert_eq!(NameHash::parse("sha256").unwrap(), NameHash::Sha256);
    }
}
