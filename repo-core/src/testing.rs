//! Test support shared by the library's and the CLI's tests (feature `testing`): random file
//! trees and an exact comparison of two trees, metadata included.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// A small deterministic generator (xorshift), so a failing seed reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> 24) as u8).collect()
    }
}

fn set_times(path: &Path, secs: i64, nsec: i64) -> Result<(), String> {
    let t = TimeSpec::new(secs, nsec);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("utimensat {}: {e}", path.display()))
}

fn err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Fills `dir` with a random tree: nested folders, empty, small, chunked and sparse files,
/// symlinks, hard links, FIFOs, non-UTF-8 names, odd modes, nanosecond times, and `user.`
/// extended attributes where the filesystem allows them.
pub fn random_tree(dir: &Path, seed: u64, max_entries: usize) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let mut dirs = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    let xattrs_ok = xattr::set(dir, "user.cairn-probe", b"1").is_ok();
    if xattrs_ok {
        let _ = xattr::remove(dir, "user.cairn-probe");
    }
    let n = 1 + rng.below(max_entries as u64) as usize;
    for i in 0..n {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let mut name = format!("e{i}-{}", rng.below(1000)).into_bytes();
        if rng.below(8) == 0 {
            name.push(0xff); // not UTF-8
        }
        if rng.below(10) == 0 {
            name.extend_from_slice(" spaced é".as_bytes());
        }
        let path = parent.join(OsStr::from_bytes(&name));
        match rng.below(10) {
            0 | 1 => {
                fs::create_dir(&path).map_err(|e| err(&path, e))?;
                dirs.push(path.clone());
            }
            2 => {
                let target = format!("../target-{}", rng.below(100));
                std::os::unix::fs::symlink(&target, &path).map_err(|e| err(&path, e))?;
            }
            3 if !files.is_empty() => {
                let f: &std::path::PathBuf = &files[rng.below(files.len() as u64) as usize];
                fs::hard_link(f, &path).map_err(|e| err(&path, e))?;
                continue;
            }
            4 => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o640))
                .map_err(|e| format!("mkfifo: {e}"))?,
            5 => {
                // sparse: a hole, some data, a hole at the end
                let f = fs::File::create(&path).map_err(|e| err(&path, e))?;
                let size = 2_000_000 + rng.below(3_000_000);
                f.set_len(size).map_err(|e| err(&path, e))?;
                use std::io::{Seek, SeekFrom, Write};
                let mut f = f;
                f.seek(SeekFrom::Start(size / 3))
                    .map_err(|e| err(&path, e))?;
                f.write_all(&rng.bytes(10_000)).map_err(|e| err(&path, e))?;
                files.push(path.clone());
            }
            _ => {
                let len = match rng.below(6) {
                    0 => 0,
                    1 => rng.below(100) as usize,
                    2 => 300_000 + rng.below(700_000) as usize,
                    _ => rng.below(20_000) as usize,
                };
                let data = if rng.below(2) == 0 {
                    rng.bytes(len)
                } else {
                    (0..len)
                        .map(|j| b"INSERT INTO t VALUES (42);\n"[j % 27])
                        .collect()
                };
                fs::write(&path, data).map_err(|e| err(&path, e))?;
                files.push(path.clone());
            }
        }
        let meta = fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        if !meta.file_type().is_symlink() {
            let mode = [0o644, 0o600, 0o755, 0o4755, 0o1777, 0o400][rng.below(6) as usize];
            let mode = if meta.is_dir() { mode | 0o700 } else { mode };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| err(&path, e))?;
            if xattrs_ok && (meta.is_file() || meta.is_dir()) && rng.below(4) == 0 {
                let len = 1 + rng.below(40) as usize;
                xattr::set(&path, "user.note", &rng.bytes(len)).map_err(|e| err(&path, e))?;
            }
            if crate::sys::is_root() && rng.below(3) == 0 {
                let id = 1000 + rng.below(5) as u32;
                std::os::unix::fs::lchown(&path, Some(id), Some(id)).map_err(|e| err(&path, e))?;
            }
        }
        set_times(
            &path,
            1_600_000_000 + rng.below(100_000_000) as i64,
            rng.below(1_000_000_000) as i64,
        )?;
    }
    // Directory times last: creating entries changed them.
    for d in dirs.iter().rev() {
        set_times(
            d,
            1_500_000_000 + rng.below(1_000_000) as i64,
            rng.below(1_000_000_000) as i64,
        )?;
    }
    Ok(())
}

/// Compares two trees: names, types, content, modes, owners, mtimes (ns), symlink targets,
/// extended attributes, and which files are hard links of each other. Returns the first
/// difference.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let mut links_a: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut links_b: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    compare_dir(a, b, b"", &mut links_a, &mut links_b)?;
    let mut ga: Vec<Vec<Vec<u8>>> = links_a.into_values().filter(|v| v.len() > 1).collect();
    let mut gb: Vec<Vec<Vec<u8>>> = links_b.into_values().filter(|v| v.len() > 1).collect();
    for g in ga.iter_mut().chain(gb.iter_mut()) {
        g.sort();
    }
    ga.sort();
    gb.sort();
    if ga != gb {
        return Err(format!("hard link groups differ: {ga:?} vs {gb:?}"));
    }
    Ok(())
}

type Links = HashMap<u64, Vec<Vec<u8>>>;

fn compare_dir(
    a: &Path,
    b: &Path,
    rel: &[u8],
    la: &mut Links,
    lb: &mut Links,
) -> Result<(), String> {
    let names = |p: &Path| -> Result<Vec<Vec<u8>>, String> {
        let mut v: Vec<Vec<u8>> = fs::read_dir(p)
            .map_err(|e| err(p, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .collect();
        v.sort();
        Ok(v)
    };
    let (na, nb) = (names(a)?, names(b)?);
    if na != nb {
        return Err(format!(
            "{}: entries differ: {:?} vs {:?}",
            String::from_utf8_lossy(rel),
            na.iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>(),
            nb.iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    for n in na {
        let (pa, pb) = (a.join(OsStr::from_bytes(&n)), b.join(OsStr::from_bytes(&n)));
        let mut r = rel.to_vec();
        r.push(b'/');
        r.extend_from_slice(&n);
        let show = String::from_utf8_lossy(&r).into_owned();
        let (ma, mb) = (
            fs::symlink_metadata(&pa).map_err(|e| err(&pa, e))?,
            fs::symlink_metadata(&pb).map_err(|e| err(&pb, e))?,
        );
        if ma.file_type() != mb.file_type() {
            return Err(format!("{show}: type differs"));
        }
        if !ma.file_type().is_symlink() && ma.mode() != mb.mode() {
            return Err(format!("{show}: mode {:o} vs {:o}", ma.mode(), mb.mode()));
        }
        if crate::sys::is_root() && (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            return Err(format!(
                "{show}: owner {}:{} vs {}:{}",
                ma.uid(),
                ma.gid(),
                mb.uid(),
                mb.gid()
            ));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            return Err(format!(
                "{show}: mtime {}.{} vs {}.{}",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        if !ma.file_type().is_symlink() {
            let xa: Vec<_> = xattr::list(&pa)
                .map(|l| {
                    l.map(|k| (k.clone(), xattr::get(&pa, &k).ok().flatten()))
                        .collect()
                })
                .unwrap_or_default();
            let xb: Vec<_> = xattr::list(&pb)
                .map(|l| {
                    l.map(|k| (k.clone(), xattr::get(&pb, &k).ok().flatten()))
                        .collect()
                })
                .unwrap_or_default();
            let (mut xa, mut xb) = (xa, xb);
            xa.sort();
            xb.sort();
            if xa != xb {
                return Err(format!("{show}: xattrs differ"));
            }
        }
        if ma.rdev() != mb.rdev() {
            return Err(format!(
                "{show}: device number {} vs {}",
                ma.rdev(),
                mb.rdev()
            ));
        }
        if ma.is_dir() {
            compare_dir(&pa, &pb, &r, la, lb)?;
        } else if ma.file_type().is_symlink() {
            if fs::read_link(&pa).ok() != fs::read_link(&pb).ok() {
                return Err(format!("{show}: symlink target differs"));
            }
        } else if ma.is_file() {
            if ma.len() != mb.len() {
                return Err(format!("{show}: size {} vs {}", ma.len(), mb.len()));
            }
            if fs::read(&pa).map_err(|e| err(&pa, e))? != fs::read(&pb).map_err(|e| err(&pb, e))? {
                return Err(format!("{show}: content differs"));
            }
            la.entry(ma.ino()).or_default().push(r.clone());
            lb.entry(mb.ino()).or_default().push(r.clone());
        }
    }
    Ok(())
}

/// A backend that behaves like a process killed at its Nth mutation: the Nth write or
/// delete, and every operation after it, fails. Reads before that point work.
#[derive(Debug)]
pub struct CrashingBackend {
    inner: std::sync::Arc<dyn crate::backend::Backend>,
    crash_at: u64,
    mutations: std::sync::atomic::AtomicU64,
    crashed: std::sync::atomic::AtomicBool,
}

impl CrashingBackend {
    pub fn new(inner: std::sync::Arc<dyn crate::backend::Backend>, crash_at: u64) -> Self {
        CrashingBackend {
            inner,
            crash_at,
            mutations: Default::default(),
            crashed: Default::default(),
        }
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self, mutation: bool) -> crate::Result<()> {
        use std::sync::atomic::Ordering;
        if self.crashed.load(Ordering::SeqCst) {
            return Err(crate::Error::new(crate::ErrorKind::Io, "simulated crash"));
        }
        if mutation && self.mutations.fetch_add(1, Ordering::SeqCst) + 1 >= self.crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(crate::Error::new(crate::ErrorKind::Io, "simulated crash"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::backend::Backend for CrashingBackend {
    fn location(&self) -> String {
        format!("crashing({})", self.inner.location())
    }
    async fn create(
        &self,
        ft: crate::backend::FileType,
        name: &str,
        data: bytes::Bytes,
    ) -> crate::Result<()> {
        self.check(true)?;
        self.inner.create(ft, name, data).await
    }
    async fn read(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<bytes::Bytes> {
        self.check(false)?;
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: crate::backend::FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> crate::Result<bytes::Bytes> {
        self.check(false)?;
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<u64> {
        self.check(false)?;
        self.inner.stat(ft, name).await
    }
    async fn list(
        &self,
        ft: crate::backend::FileType,
    ) -> crate::Result<Vec<crate::backend::ObjectInfo>> {
        self.check(false)?;
        self.inner.list(ft).await
    }
    async fn remove(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<()> {
        self.check(true)?;
        self.inner.remove(ft, name).await
    }
}

/// Copies a folder tree (to reset a repository between crash runs).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| err(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| err(&src, e))?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(|e| err(&src, e))?;
        }
    }
    Ok(())
}

/// Makes `depth` folders named `name`, each inside the previous one, below `dir`, and
/// writes `bottom` as the file `bottom` of the innermost. Every step is relative to the
/// previous folder's descriptor (two open at a time), so the depth is not limited by
/// `PATH_MAX`. Remove such a tree with [`remove_nested`].
pub fn nested_folders(dir: &Path, name: &str, depth: usize, bottom: &[u8]) -> Result<(), String> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut current = open(dir, dir_flags, Mode::empty()).map_err(|e| err(dir, e.into()))?;
    for level in 0..depth {
        let at = |e: nix::Error| format!("level {level} below {}: {e}", dir.display());
        mkdirat(&current, name, Mode::from_bits_truncate(0o755)).map_err(at)?;
        current = openat(&current, name, dir_flags, Mode::empty()).map_err(at)?;
    }
    let file = openat(
        &current,
        "bottom",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| err(dir, e.into()))?;
    std::io::Write::write_all(&mut fs::File::from(file), bottom).map_err(|e| err(dir, e))
}

/// Removes a tree of any depth (`rm -rf`, which walks without `PATH_MAX` limits or
/// recursion; `std::fs::remove_dir_all` recurses, with a descriptor per level).
pub fn remove_nested(path: &Path) -> Result<(), String> {
    let status = std::process::Command::new("rm")
        .arg("-rf")
        .arg(path)
        .status()
        .map_err(|e| err(path, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rm -rf {}: {status}", path.display()))
    }
}

/// A backend on which a writer can publish one lease but never refresh it, as if its
/// machine slept through the lease's time to live.
#[derive(Debug)]
pub struct NoLeaseRefresh {
    inner: std::sync::Arc<dyn crate::backend::Backend>,
    leases: std::sync::atomic::AtomicU64,
}

impl NoLeaseRefresh {
    pub fn new(inner: std::sync::Arc<dyn crate::backend::Backend>) -> Self {
        NoLeaseRefresh {
            inner,
            leases: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl crate::backend::Backend for NoLeaseRefresh {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(
        &self,
        ft: crate::backend::FileType,
        name: &str,
        data: bytes::Bytes,
    ) -> crate::Result<()> {
        if ft == crate::backend::FileType::Lock
            && self
                .leases
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                > 0
        {
            return Err(crate::Error::new(
                crate::ErrorKind::Io,
                "simulated: the machine is asleep",
            ));
        }
        self.inner.create(ft, name, data).await
    }
    async fn read(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<bytes::Bytes> {
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: crate::backend::FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> crate::Result<bytes::Bytes> {
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<u64> {
        self.inner.stat(ft, name).await
    }
    async fn list(
        &self,
        ft: crate::backend::FileType,
    ) -> crate::Result<Vec<crate::backend::ObjectInfo>> {
        self.inner.list(ft).await
    }
    async fn remove(&self, ft: crate::backend::FileType, name: &str) -> crate::Result<()> {
        self.inner.remove(ft, name).await
    }
}
