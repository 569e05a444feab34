//! The users file: who may connect, to which tenant, with which access.
//!
//! One user per line, `NAME:ACCESS:TENANT:HASH`, where `HASH` is an argon2id PHC string
//! (`$argon2id$v=19$m=...`) and `TENANT` is empty for `metrics` users. Lines starting with
//! `#` and blank lines are ignored. The file never holds a password, only its hash; still, a
//! hash can be attacked offline, so the file must be readable by its owner alone: the server
//! refuses a file that group or others can read, and writes it with mode 0600, atomically
//! (a new file beside it, fsynced, renamed over it), so a reader never sees half a file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use cairn_store::{layout, Error, ErrorKind, Result};

use crate::access::Access;

/// Argon2id cost for user passwords: 19 MiB, 2 passes, 1 lane (the OWASP minimum for
/// argon2id). A server verifies a hash on every connection that is not cached, for many
/// users at once; the repository's 64 MiB / 3 passes (about 0.4 s) would let a handful of
/// clients with wrong passwords occupy every core. This costs about a tenth of that and
/// still makes an offline guess expensive.
pub const HASH_MEMORY_KIB: u32 = 19 * 1024;
pub const HASH_PASSES: u32 = 2;

/// One user of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub access: Access,
    /// The one tenant the user reaches; `None` for `metrics` users.
    pub tenant: Option<String>,
    /// argon2id PHC string.
    pub hash: String,
}

/// The users of a server, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
}

/// User names appear in the file (so no `:`) and in logs: keep them plain.
pub fn validate_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid user name {name:?}: use 1-64 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

/// The argon2id hasher with the server's cost.
fn hasher() -> Result<Argon2<'static>> {
    let params = Params::new(HASH_MEMORY_KIB, HASH_PASSES, 1, None)
        .map_err(|e| Error::invalid(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String> {
    let hash = hasher()?
        .hash_password(password)
        .map_err(|e| Error::new(ErrorKind::Other, format!("hashing the password: {e}")))?;
    Ok(hash.to_string())
}

/// Whether `password` matches a PHC string. A malformed hash matches nothing. Slow on
/// purpose (tens of milliseconds): never call it on an async thread.
pub fn verify_password(password: &[u8], phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    // The parameters come from the PHC string; only argon2id strings are accepted.
    if !phc.starts_with("$argon2id$") {
        return false;
    }
    Argon2::default().verify_password(password, phc).is_ok()
}

impl Users {
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds a user; a name that exists is refused (remove it first).
    pub fn add(&mut self, user: User) -> Result<()> {
        validate_user(&user)?;
        if self.get(&user.name).is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("user {:?} exists (remove it first)", user.name),
            ));
        }
        self.users.push(user);
        Ok(())
    }

    /// Removes a user; a missing one is `NotFound`.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(Error::not_found(format!("no user {name:?}")));
        }
        Ok(())
    }

    /// Parses the file's text. Any bad line refuses the whole file: a server that silently
    /// dropped a user would deny them for no visible reason, and one that guessed could grant
    /// too much.
    pub fn parse(text: &str) -> Result<Users> {
        let mut users = Users::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = n.saturating_add(1);
            let mut fields = line.splitn(4, ':');
            let (Some(name), Some(access), Some(tenant), Some(hash)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(Error::invalid(format!(
                    "users file line {lineno}: expected NAME:ACCESS:TENANT:HASH"
                )));
            };
            let user = User {
                name: name.to_string(),
                access: Access::parse(access).map_err(|e| e.context(format!("line {lineno}")))?,
                tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
                hash: hash.to_string(),
            };
            users
                .add(user)
                .map_err(|e| e.context(format!("users file line {lineno}")))?;
        }
        Ok(users)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::from("# cairn-server users: NAME:ACCESS:TENANT:ARGON2ID-HASH\n");
        for u in &self.users {
            let tenant = u.tenant.as_deref().unwrap_or("");
            out.push_str(&format!("{}:{}:{}:{}\n", u.name, u.access, tenant, u.hash));
        }
        out
    }

    /// Reads the users file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Users> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading users file {}", path.display()), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "users file {} is accessible by group or others (mode {:o}); run chmod 600 on it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading users file {}", path.display()), e))?;
        Users::parse(&text).map_err(|e| e.context(path.display()))
    }

    /// Reads the users file, or no users when it does not exist yet (for `user add`).
    pub fn load_or_empty(path: &Path) -> Result<Users> {
        match Users::load(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Users::default()),
            other => other,
        }
    }

    /// Writes the file atomically with mode 0600: a new file in the same folder, fsynced,
    /// renamed over the old one, then the folder fsynced so the rename survives a crash.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} is not a file path", path.display())))?;
        let mut suffix = [0u8; 8];
        cairn_store::id::fill_random(&mut suffix)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            file_name.to_string_lossy(),
            hex::encode(suffix)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing users file {}", path.display()), e)
        })
    }
}

fn validate_user(user: &User) -> Result<()> {
    validate_user_name(&user.name)?;
    match (&user.access, &user.tenant) {
        (Access::Metrics, None) => {}
        (Access::Metrics, Some(_)) => {
            return Err(Error::invalid(format!(
                "user {:?}: metrics access has no tenant",
                user.name
            )))
        }
        (_, None) => {
            return Err(Error::invalid(format!(
                "user {:?}: {} access needs a tenant",
                user.name, user.access
            )))
        }
        (_, Some(t)) => layout::validate_tenant(t)?,
    }
    if !user.hash.starts_with("$argon2id$") || user.hash.contains(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "user {:?}: the hash is not an argon2id PHC string",
            user.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user(name: &str, access: Access, tenant: Option<&str>) -> User {
        User {
            name: name.into(),
            access,
            tenant: tenant.map(str::to_string),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let mut users = Users::default();
        users
            .add(user("alice", Access::Full, Some("acme")))
            .unwrap();
        users.add(user("prom", Access::Metrics, None)).unwrap();
        assert_eq!(Users::parse(&users.to_text()).unwrap(), users);
        assert_eq!(
            users
                .add(user("alice", Access::Read, Some("x")))
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        assert!(users.add(user("bob", Access::Read, None)).is_err());
        assert!(users.add(user("bob", Access::Metrics, Some("x"))).is_err());
        assert!(users.add(user("b:b", Access::Read, Some("x"))).is_err());
        assert!(users.add(user("bob", Access::Read, Some("../x"))).is_err());
        assert!(Users::parse("alice:full:acme").is_err());
        assert!(Users::parse("alice:root:acme:$argon2id$x").is_err());
        users.remove("alice").unwrap();
        assert_eq!(
            users.remove("alice").unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn hashes_verify_and_files_are_private() {
        let phc = hash_password(b"s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(b"s3cret", &phc));
        assert!(!verify_password(b"s3cret!", &phc));
        assert!(!verify_password(b"s3cret", "garbage"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut users = Users::default();
        let mut u = user("alice", Access::Append, Some("acme"));
        u.hash = phc;
        users.add(u).unwrap();
        users.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Users::load(&path).unwrap(), users);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            Users::load(&path).unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
    }
}
