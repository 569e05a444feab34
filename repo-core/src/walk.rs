//! What the archiver needs from the filesystem: exclusion rules (`excludes.rs`), turning `fstatat` results
//! into tree nodes, and reaching entries relative to descriptors of open folders
//! (`openat`, `fstatat`, `readlinkat`, never following a symlink), so that neither a path's
//! length nor a symlink swapped in mid-walk decides what is read.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, Mode, OFlags};

pub use crate::excludes::Excludes;

use crate::format::tree::{Node, NodeKind, Time, Xattr};
use crate::sys;

fn time(secs: i64, nsec: i64) -> Time {
    Time(secs, nsec.clamp(0, 999_999_999) as u32)
}

/// What `fstatat` or `fstat` says about an entry, as much as a node records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`, file type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub mtime: Time,
    pub ctime: Time,
}

impl Stat {
    // The widths of `struct stat`'s fields differ between architectures, so some of these
    // casts are no-ops on one and widenings on another.
    #[allow(clippy::unnecessary_cast)]
    fn from_raw(st: &rustix::fs::Stat) -> Stat {
        Stat {
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: u64::try_from(st.st_size).unwrap_or(0),
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            mtime: time(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }

    /// `fstatat(dir, name)` without following a symlink.
    pub fn at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<Stat> {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(Stat::from_raw(&st))
    }

    /// `fstat` of an open descriptor.
    pub fn of(fd: impl AsFd) -> std::io::Result<Stat> {
        Ok(Stat::from_raw(&rustix::fs::fstat(fd)?))
    }

    pub fn kind(&self) -> NodeKind {
        match self.mode & S_IFMT {
            S_IFDIR => NodeKind::Dir,
            S_IFLNK => NodeKind::Symlink,
            S_IFIFO => NodeKind::Fifo,
            S_IFCHR => NodeKind::Chardev,
            S_IFBLK => NodeKind::Blockdev,
            S_IFSOCK => NodeKind::Socket,
            _ => NodeKind::File,
        }
    }

    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// Whether both describe the same file system object.
    pub fn same_object(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// Builds a node from `fstatat` results (content, subtree and link target are filled by the
/// caller).
pub fn node_from_stat(name: &[u8], st: &Stat, xattrs: Vec<Xattr>) -> Node {
    let mut node = Node {
        name: name.to_vec(),
        kind: st.kind(),
        mode: 0,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Time(0, 0),
        atime: None,
        ctime: Time(0, 0),
        size: 0,
        inode: 0,
        device: 0,
        links: 0,
        rdev: 0,
        link_target: None,
        xattrs,
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    };
    set_stat(&mut node, st);
    node
}

/// Sets everything a node takes from `stat` (a file's node is refreshed from the `fstat` of
/// the descriptor its content is read through).
pub fn set_stat(node: &mut Node, st: &Stat) {
    node.mode = st.mode & 0o7777;
    if node.uid != st.uid || node.user.is_none() {
        node.user = sys::user_name(st.uid);
    }
    if node.gid != st.gid || node.group.is_none() {
        node.group = sys::group_name(st.gid);
    }
    node.uid = st.uid;
    node.gid = st.gid;
    node.mtime = st.mtime;
    node.ctime = st.ctime;
    node.size = if node.kind == NodeKind::File {
        st.size
    } else {
        0
    };
    node.inode = st.ino;
    node.device = st.dev;
    node.links = st.nlink;
    node.rdev = if matches!(node.kind, NodeKind::Chardev | NodeKind::Blockdev) {
        st.rdev
    } else {
        0
    };
}

/// Whether `/proc/self/fd/N/name` reaches entries of open folders here.
fn proc_fd() -> bool {
    static PROC: OnceLock<bool> = OnceLock::new();
    *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// The extended attributes of the entry `name` of the open folder `dir` (`.` for the
/// folder itself), sorted by name, read through `/proc/self/fd` without following a symlink
/// (through the absolute path `path` where there is no `/proc`). Those that cannot be read
/// are skipped. Only files, folders and symlinks have any.
pub fn read_xattrs(kind: NodeKind, dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> Vec<Xattr> {
    if !matches!(kind, NodeKind::File | NodeKind::Dir | NodeKind::Symlink) {
        return Vec::new();
    }
    // There is no `llistxattrat`: the folder's descriptor is named through /proc, which
    // keeps the lookup relative to it, whatever the depth.
    let via_proc;
    let at: &Path = if proc_fd() {
        let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.to_bytes());
        via_proc = PathBuf::from(OsString::from_vec(p));
        &via_proc
    } else {
        path
    };
    let mut xattrs = Vec::new();
    if let Ok(names) = xattr::list(at) {
        for n in names {
            if let Ok(Some(value)) = xattr::get(at, &n) {
                xattrs.push(Xattr {
                    name: n.as_bytes().to_vec(),
                    value,
                });
            }
        }
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    xattrs
}

/// An open folder: a descriptor to list it (`list`, `list_at`), or only to reach its
/// entries and `fstat` it (`pass`, `pass_at`, an `O_PATH` descriptor, which needs no read
/// permission on the folder).
pub struct DirHandle(rustix::fs::Dir);

impl DirHandle {
    /// Opens the folder `name` of `dir` to list it; a symlink is refused (`ELOOP` or
    /// `ENOTDIR`), never followed.
    pub fn list_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<DirHandle> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        DirHandle::from_fd(rustix::fs::openat(dir, name, flags, Mode::empty())?)
    }

    /// Opens the folder `name` of `dir` to reach its entries, following a symlink only if
    /// `follow`.
    pub fn pass_at(dir: BorrowedFd<'_>, name: &CStr, follow: bool) -> std::io::Result<DirHandle> {
        let mut flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        DirHandle::from_fd(rustix::fs::openat(dir, name, flags, Mode::empty())?)
    }

    /// Opens a folder by path to list it (the root of a walk).
    pub fn list(path: &Path) -> std::io::Result<DirHandle> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        DirHandle::from_fd(rustix::fs::open(path, flags, Mode::empty())?)
    }

    /// Opens a folder by path to reach its entries (the root of a walk).
    pub fn pass(path: &Path) -> std::io::Result<DirHandle> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        DirHandle::from_fd(rustix::fs::open(path, flags, Mode::empty())?)
    }

    fn from_fd(fd: OwnedFd) -> std::io::Result<DirHandle> {
        Ok(DirHandle(rustix::fs::Dir::new(fd)?))
    }

    pub fn fd(&self) -> std::io::Result<BorrowedFd<'_>> {
        Ok(self.0.fd()?)
    }

    /// The folder's entry names (without `.` and `..`) in byte order, and the error that
    /// ended the listing early, if one did.
    pub fn names(&mut self) -> (Vec<CString>, Option<std::io::Error>) {
        let mut names = Vec::new();
        let mut error = None;
        while let Some(entry) = self.0.read() {
            match entry {
                Ok(e) => {
                    let n = e.file_name().to_bytes();
                    if n != b"." && n != b".." {
                        names.push(e.file_name().to_owned());
                    }
                }
                Err(e) => {
                    error = Some(e.into());
                    break;
                }
            }
        }
        names.sort_unstable_by(|a, b| a.to_bytes().cmp(b.to_bytes()));
        (names, error)
    }
}

/// Opens the file `name` of `dir` for reading, never through a symlink, and without
/// blocking should it have become a FIFO (the caller checks what it opened with `fstat`).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// The target of the symlink `name` of `dir`.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// Whether the open folder `fd` is left out whole by `excludes`: it holds one of the
/// `--exclude-if-present` markers, or it is a cache folder and caches are excluded.
pub fn folder_left_out(excludes: &Excludes, fd: BorrowedFd<'_>) -> bool {
    for marker in &excludes.if_present {
        if let Ok(m) = CString::new(marker.as_slice()) {
            if Stat::at(fd, &m).is_ok() {
                return true;
            }
        }
    }
    excludes.caches && is_cache_folder(fd)
}

/// Whether the open folder `fd` holds a `CACHEDIR.TAG` file starting with the signature of
/// the Cache Directory Tagging Specification (read without following a symlink).
fn is_cache_folder(fd: BorrowedFd<'_>) -> bool {
    use std::io::Read;
    let Ok(mut f) = open_file_at(fd, c"CACHEDIR.TAG") else {
        return false;
    };
    let want = crate::excludes::CACHEDIR_SIGNATURE;
    let mut head = vec![0u8; want.len()];
    f.read_exact(&mut head).is_ok() && head == want
}
