//! The folder a mount goes on: checked before mounting, and cleaned up when a mount of ours
//! was left behind by a process that was killed.
//!
//! A killed mount process leaves its mount in place with nobody answering it: every use of
//! the folder fails with "Transport endpoint is not connected" (ENOTCONN). The next mount of
//! the same folder detaches such a mount when the system's mount table lists it as ours (a
//! FUSE file system whose source is `cairn:<repository id>`), then mounts as usual. Anything else mounted there, or a
//! folder that is not empty, is refused.

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// The subtype our mounts ask for (`fuse.cairn` where the kernel shows it).
pub const SUBTYPE: &str = "cairn";
/// The start of our mounts' source in the mount table.
pub const SOURCE_PREFIX: &str = "cairn:";

/// A mount of the mount table: where, and whether it is one of ours.
struct Mounted {
    point: PathBuf,
    ours: bool,
    fs_type: String,
}

/// The mounts of `/proc/self/mountinfo`.
fn mounts() -> Vec<Mounted> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mountinfo(&text)
}

/// Whether a mount table entry is one of our mounts: a FUSE file system of type `fuse` (as
/// the kernel lists a mount made without a subtype helper) or `fuse.cairn`, whose source is
/// `cairn:...`. Another FUSE file system's source may start alike (sshfs of a host named
/// `cairn`: `fuse.sshfs`, `cairn:/srv`), and is not ours to detach.
fn is_ours(fs_type: &str, source: &str) -> bool {
    let fuse_type = fs_type == "fuse" || fs_type.strip_prefix("fuse.") == Some(SUBTYPE);
    fuse_type && source.starts_with(SOURCE_PREFIX)
}

fn parse_mountinfo(text: &str) -> Vec<Mounted> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(dash + 1)?;
            let source = fields.get(dash + 2).copied().unwrap_or_default();
            Some(Mounted {
                point: PathBuf::from(unescape(point)),
                ours: is_ours(fs_type, source),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// The mount table writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The folder's absolute path, without following the folder itself (a dead mount cannot be
/// looked at).
fn absolute(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} cannot be mounted on", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| anyhow!("mount point {}: {e}", path.display()))?;
    Ok(parent.join(name))
}

/// Detaches the mount at `path` (lazily: files still open in it keep it until closed).
pub fn detach(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => return Ok(()),
        Err(nix::errno::Errno::EPERM) => {}
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
    // Not root: through the set-uid helper.
    for helper in ["fusermount3", "fusermount"] {
        if let Ok(status) = std::process::Command::new(helper)
            .args(["-u", "-z"])
            .arg(path)
            .status()
        {
            if status.success() {
                return Ok(());
            }
        }
    }
    bail!(
        "{} could not be unmounted: run `fusermount3 -u -z {}`",
        path.display(),
        path.display()
    )
}

/// Checks `path` for mounting and returns it absolute: an empty folder, or one with a dead
/// mount of ours on it (which is detached first).
pub fn prepare(path: &Path) -> Result<PathBuf> {
    let path = absolute(path)?;
    if let Some(m) = mounts().into_iter().find(|m| m.point == path) {
        // Attributes may still be cached by the kernel; listing always asks the file system.
        let dead = matches!(std::fs::read_dir(&path),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        match (dead, m.ours) {
            (true, true) => {
                detach(&path)?;
                eprintln!(
                    "{}: removed a mount left by a cairn mount that did not end cleanly",
                    path.display()
                );
            }
            (true, false) => bail!(
                "{} is a mount point that does not answer (not connected): unmount it with `fusermount3 -u -z {}`",
                path.display(),
                path.display()
            ),
            (false, true) => bail!(
                "{} is already a mount point: a cairn mount is running there",
                path.display()
            ),
            (false, false) => bail!(
                "{} is already a mount point ({})",
                path.display(),
                m.fs_type
            ),
        }
    }
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == IoKind::NotFound => bail!(
            "mount point {} does not exist: create an empty folder there",
            path.display()
        ),
        Err(e) => bail!("mount point {}: {e}", path.display()),
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a folder", path.display()),
        Ok(_) => {}
    }
    let mut entries =
        std::fs::read_dir(&path).map_err(|e| anyhow!("mount point {}: {e}", path.display()))?;
    if entries.next().is_some() {
        bail!(
            "mount point {} is not empty: mount on an empty folder",
            path.display()
        );
    }
    Ok(path)
}

/// Fails with what to install or enable when FUSE cannot be used here.
pub fn require_fuse() -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "FUSE is not available: /dev/fuse is missing (load the module with `modprobe fuse`; \
             in a container, pass the device with `--device /dev/fuse`)"
        );
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    if !on_path("fusermount3") && !on_path("fusermount") {
        bail!(
            "FUSE is not available: fusermount3 is not installed (Debian and Ubuntu: \
             `apt install fuse3`), and only root can mount without it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_fuse_mounts_count_as_ours() {
        let table = "46 27 0:40 / /mnt/a ro,nosuid - fuse cairn:1dca9de9aedc ro,user_id=0\n\
                     47 27 0:41 / /mnt/b rw - fuse.sshfs cairn:/srv rw,user_id=0\n\
                     48 27 0:42 / /mnt/c ro - fuse.cairn cairn:5b0393a5812e ro\n\
                     49 27 0:43 / /mnt/d rw - fuseblk cairn:x rw\n";
        let ours: Vec<(String, bool)> = parse_mountinfo(table)
            .into_iter()
            .map(|m| (m.point.display().to_string(), m.ours))
            .collect();
        assert_eq!(
            ours,
            [
                ("/mnt/a".to_string(), true),
                ("/mnt/b".to_string(), false),
                ("/mnt/c".to_string(), true),
                ("/mnt/d".to_string(), false),
            ]
        );
    }

    #[test]
    fn mount_table_escapes_are_read() {
        assert_eq!(unescape(r"/mnt/a\040b\134c"), "/mnt/a b\\c");
        assert_eq!(unescape(r"/mnt/x\04"), r"/mnt/x\04");
    }
}
