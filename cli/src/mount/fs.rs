//! The mount's file system: the layout's folders above the snapshots, and each snapshot's
//! entries exactly as they were backed up, read-only.
//!
//! - Folders of the layout and the snapshot folders in them live one second in the kernel's
//!   cache and the snapshot list is read again when one is used after `refresh` has passed,
//!   so new snapshots appear and forgotten ones go without a remount. Entries inside
//!   snapshots never change and live an hour; file content stays in the page cache between
//!   opens.
//! - Reads go through one [`BlobCache`] with read-ahead ([`FileReader`]). A read that cannot
//!   be served (a blob damaged, or deleted by a prune after its snapshot was forgotten)
//!   fails with EIO and the reason is logged; it never returns other bytes.
//! - Nothing takes a lock or lease: backups and prunes run as usual while mounted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_repo::blob_cache::BlobCache;
use cairn_repo::file_reader::FileReader;
use cairn_repo::format::snapshot::Snapshot;
use cairn_repo::format::tree::{Node, NodeKind, Time};
use cairn_repo::{Id, Repository};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::inodes::{Inodes, Key, What};
use super::layout::{join, Entry, Layout};
use super::trees::{Folder, Trees, TREE_CACHE_BYTES};

/// How long the kernel keeps the layout's entries and attributes (snapshot folders included).
const FOLDER_TTL: Duration = Duration::from_secs(1);
/// How long it keeps the entries and attributes inside a snapshot (they never change).
const SNAPSHOT_TTL: Duration = Duration::from_secs(3600);
/// Plaintext of decrypted blobs kept for reads.
pub const BLOB_CACHE_BYTES: usize = 128 << 20;
/// Read-ahead the kernel may do on its own, in bytes.
const KERNEL_READ_AHEAD: u32 = 1 << 20;

/// Lists the snapshots the mount shows (the caller's filter applied).
pub type Lister = Box<dyn Fn(&Repository) -> cairn_repo::Result<Vec<(Id, Snapshot)>> + Send + Sync>;

pub struct MountFs {
    repo: Arc<Repository>,
    lister: Lister,
    layout: RwLock<Arc<Layout>>,
    listed_at: Mutex<Instant>,
    refresh: Duration,
    inodes: Inodes,
    trees: Arc<Trees>,
    blobs: Arc<BlobCache>,
    /// Open handles -> their file's reader.
    files: Mutex<HashMap<u64, Arc<FileReader>>>,
    /// Inode -> the reader its open handles share, so that opening a file again does not
    /// look its blobs up again (a large file has many).
    readers: Mutex<HashMap<u64, std::sync::Weak<FileReader>>>,
    /// Open folder handles -> what their listing reads (see `listing`).
    listings: Mutex<HashMap<u64, Listing>>,
    next_handle: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

/// A repository error as the errno a reader gets; the reason is logged.
fn errno(what: &str, e: &cairn_repo::Error) -> Errno {
    tracing::warn!("{what}: {e}");
    Errno::EIO
}

fn system_time(t: Time) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.1));
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.0 as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + nanos
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Chardev => FileType::CharDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
    }
}

/// A node's attributes as it was backed up.
fn node_attr(ino: u64, n: &Node) -> FileAttr {
    let size = match n.kind {
        NodeKind::File => n.size,
        NodeKind::Symlink => n.link_target.as_ref().map_or(0, |t| t.len() as u64),
        _ => 0,
    };
    let mtime = system_time(n.mtime);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.atime.map_or(mtime, system_time),
        mtime,
        ctime: system_time(n.ctime),
        crtime: mtime,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: u32::try_from(n.links.max(1)).unwrap_or(u32::MAX),
        uid: n.uid,
        gid: n.gid,
        rdev: n.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl MountFs {
    pub fn new(
        repo: Arc<Repository>,
        lister: Lister,
        refresh: Duration,
    ) -> cairn_repo::Result<MountFs> {
        let layout = Layout::build(&lister(&repo)?);
        Ok(MountFs {
            repo,
            lister,
            layout: RwLock::new(Arc::new(layout)),
            listed_at: Mutex::new(Instant::now()),
            refresh,
            inodes: Inodes::new(),
            trees: Arc::new(Trees::new(TREE_CACHE_BYTES)),
            blobs: BlobCache::new(BLOB_CACHE_BYTES),
            files: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            started: SystemTime::now(),
        })
    }

    /// Snapshots shown now.
    pub fn snapshot_count(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The layout, listed again first when `refresh` has passed since the last listing. One
    /// caller lists; the others go on with the layout they have. A listing that fails keeps
    /// the old layout (and is tried again after `refresh`).
    fn layout(&self) -> Arc<Layout> {
        let due = match self.listed_at.try_lock() {
            Ok(mut at) if at.elapsed() >= self.refresh => {
                *at = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            match (self.lister)(&self.repo) {
                Ok(list) => {
                    let layout = Arc::new(Layout::build(&list));
                    *self.layout.write().unwrap_or_else(|p| p.into_inner()) = layout;
                }
                Err(e) => tracing::warn!("listing the snapshots again failed: {e}"),
            }
        }
        self.current()
    }

    fn folder_attr(&self, ino: u64, layout: &Layout) -> FileAttr {
        let t = if layout.newest == (0, 0) {
            self.started
        } else {
            system_time(Time(layout.newest.0, layout.newest.1))
        };
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, ino: u64, what: &What) -> (FileAttr, Duration) {
        match what {
            What::Folder(_) => (self.folder_attr(ino, &self.layout()), FOLDER_TTL),
            What::Link(target) => {
                let mut a = self.folder_attr(ino, &self.current());
                a.kind = FileType::Symlink;
                a.perm = 0o777;
                a.nlink = 1;
                a.size = target.len() as u64;
                (a, FOLDER_TTL)
            }
            What::SnapshotRoot { time, .. } => {
                let mut a = self.folder_attr(ino, &self.current());
                let t = system_time(Time(time.0, time.1));
                (a.atime, a.mtime, a.ctime, a.crtime) = (t, t, t, t);
                // Its name is an entry of a layout folder, which goes when the snapshot is
                // forgotten (or is renamed when another snapshot of the same second comes):
                // the kernel keeps it only as long as the layout's other entries.
                (a, FOLDER_TTL)
            }
            What::Node { node, .. } => (node_attr(ino, node), SNAPSHOT_TTL),
        }
    }

    /// The tree a folder inode lists: a snapshot root's or a folder node's.
    fn tree_of(&self, what: &What) -> Option<Id> {
        match what {
            What::SnapshotRoot { tree, .. } => Some(*tree),
            What::Node { node, .. } if node.kind == NodeKind::Dir => node.subtree,
            _ => None,
        }
    }

    /// The number of a snapshot's root folder for the entries below `ino`.
    fn root_of(ino: u64, what: &What) -> u64 {
        match what {
            What::Node { root, .. } => *root,
            _ => ino,
        }
    }

    fn lookup_in(&self, parent: u64, name: &[u8]) -> Result<(u64, What), Errno> {
        let (what, _) = self.inodes.get(parent).ok_or(Errno::ENOENT)?;
        if let What::Folder(path) = &what {
            let layout = self.layout();
            let entry = layout.child(path, name).ok_or(Errno::ENOENT)?;
            let child = folder_child(&layout, path, name, entry).ok_or(Errno::ENOENT)?;
            let ino = self
                .inodes
                .looked_up(folder_key(parent, name, entry), parent, child.clone());
            return Ok((ino, child));
        }
        let tree_id = self.tree_of(&what).ok_or(Errno::ENOTDIR)?;
        let tree = self.tree(&tree_id)?;
        let node = tree.find(name).ok_or(Errno::ENOENT)?;
        let root = Self::root_of(parent, &what);
        let key = Key::of(parent, name, Some((node, root)));
        let child = What::Node {
            node: Arc::clone(node),
            root,
        };
        let ino = self.inodes.looked_up(key, parent, child.clone());
        Ok((ino, child))
    }

    /// A folder's tree; on its first use, its subfolders are read ahead.
    fn tree(&self, id: &Id) -> Result<Arc<Folder>, Errno> {
        let (tree, first_use) = self
            .trees
            .open(&self.repo, id)
            .map_err(|e| errno("reading a folder", &e))?;
        if first_use {
            self.trees.read_ahead(&self.repo, &tree);
        }
        Ok(tree)
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn node_of(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        match self.inodes.get(ino) {
            Some((What::Node { node, .. }, _)) => Ok(node),
            Some(_) => Err(Errno::ENODATA),
            None => Err(Errno::ENOENT),
        }
    }
}

/// What a folder listing reads its entries from.
#[derive(Clone)]
enum Listing {
    Folder { path: Vec<u8>, layout: Arc<Layout> },
    Tree { tree: Arc<Folder>, root: u64 },
}

/// One entry of a listing.
struct Listed {
    name: Vec<u8>,
    kind: FileType,
    key: Key,
    what: What,
}

/// What a listing gives at a position: `.` or `..`, or an entry.
enum Slot {
    Dot(&'static str),
    Entry(Listed),
}

impl MountFs {
    /// The listing of folder `ino` (opened as `fh`) from `offset`, and its parent's number.
    fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<(Listing, u64), Errno> {
        let (what, parent) = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        // A folder is listed from what its handle took at the start, however many calls the
        // listing takes: one layout (names must not shift between pages), and one decoded
        // tree (a large folder is not decoded again for each page, nor pushed out of the
        // cache by another). A listing from the start (the first, or one after a
        // `rewinddir`) takes them anew, so that a handle kept open sees new snapshots.
        if offset != 0 {
            let held = self
                .listings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&fh)
                .cloned();
            if let Some(listing) = held {
                return Ok((listing, parent));
            }
        }
        // Read (when due) before the lock is taken: both may read the repository.
        let listing = match what {
            What::Folder(path) => Listing::Folder {
                path,
                layout: self.layout(),
            },
            _ => {
                let tree_id = self.tree_of(&what).ok_or(Errno::ENOTDIR)?;
                Listing::Tree {
                    tree: self.tree(&tree_id)?,
                    root: Self::root_of(ino, &what),
                }
            }
        };
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, listing.clone());
        Ok((listing, parent))
    }

    /// Calls `add(position, number, slot)` for folder `ino` from `offset` (positions count
    /// from 0: `.`, `..`, then the entries) until it says the reply is full or the folder
    /// ends. `number` is the inode of `.` or `..` (unused for entries).
    fn each_entry(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, Slot) -> bool,
    ) -> Result<(), Errno> {
        let (listing, parent) = self.listing(ino, fh, offset)?;
        let mut i = offset;
        loop {
            let slot = match i {
                0 => (ino, Slot::Dot(".")),
                1 => (parent, Slot::Dot("..")),
                _ => match self.listed(ino, &listing, i - 2) {
                    Some(entry) => (0, Slot::Entry(entry)),
                    None => return Ok(()),
                },
            };
            if add(i, slot.0, slot.1) {
                return Ok(());
            }
            i += 1;
        }
    }

    /// Entry `i` of a listing of folder `ino`.
    fn listed(&self, ino: u64, listing: &Listing, i: u64) -> Option<Listed> {
        let i = usize::try_from(i).ok()?;
        match listing {
            Listing::Folder { path, layout } => {
                let (name, entry) = layout.folder(path)?.get(i)?;
                let what = folder_child(layout, path, name, entry)?;
                let kind = match entry {
                    Entry::Link(_) => FileType::Symlink,
                    _ => FileType::Directory,
                };
                Some(Listed {
                    name: name.clone(),
                    kind,
                    key: folder_key(ino, name, entry),
                    what,
                })
            }
            Listing::Tree { tree, root } => {
                let node = tree.nodes.get(i)?;
                Some(Listed {
                    name: node.name.clone(),
                    kind: file_type(node.kind),
                    key: Key::of(ino, &node.name, Some((node, *root))),
                    what: What::Node {
                        node: Arc::clone(node),
                        root: *root,
                    },
                })
            }
        }
    }
}

/// The key of entry `name` of a layout folder. It includes what the name shows, so that a
/// name showing something else is a new inode: the kernel caches link targets by inode
/// (`latest` pointing somewhere new), and keeps what it looked up below a snapshot folder
/// for [`SNAPSHOT_TTL`] (a time name taken over by another snapshot of the same second
/// when the first is forgotten).
fn folder_key(parent: u64, name: &[u8], entry: &Entry) -> Key {
    let mut named = name.to_vec();
    match entry {
        Entry::Link(target) => {
            named.push(0);
            named.extend_from_slice(target);
        }
        Entry::Snapshot(id) => {
            named.push(0);
            named.extend_from_slice(id.to_hex().as_bytes());
        }
        Entry::Dir => {}
    }
    Key::of(parent, &named, None)
}

/// What the entry `name` of layout folder `path` is.
fn folder_child(layout: &Layout, path: &[u8], name: &[u8], entry: &Entry) -> Option<What> {
    Some(match entry {
        Entry::Dir => What::Folder(join(path, name)),
        Entry::Link(target) => What::Link(target.clone()),
        Entry::Snapshot(id) => {
            let facts = layout.snapshot(id)?;
            What::SnapshotRoot {
                tree: facts.tree,
                time: facts.time,
            }
        }
    })
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(KERNEL_READ_AHEAD) {
            let _ = config.set_max_readahead(nearest);
        }
        // Listings carry attributes, so a walk does not ask for each entry again (the
        // kernel decides when a listing is worth it); link targets may be cached (a link
        // whose target changes is a new inode); lookups in one folder may run at once.
        // Each on its own: a kernel without one still gets the others.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_in(parent.0, name.as_bytes()) {
            Ok((ino, what)) => {
                let (attr, ttl) = self.attr(ino, &what);
                reply.entry(&ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inodes.get(ino.0) {
            Some((what, _)) => {
                let (attr, ttl) = self.attr(ino.0, &what);
                reply.attr(&ttl, &attr);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(ino.0) {
            Some((What::Link(target), _)) => reply.data(&target),
            Some((What::Node { node, .. }, _)) => match &node.link_target {
                Some(t) if node.kind == NodeKind::Symlink => reply.data(t),
                _ => reply.error(Errno::EINVAL),
            },
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let node = match self.inodes.get(ino.0) {
            Some((What::Node { node, .. }, _)) if node.kind == NodeKind::File => node,
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let shared = self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino.0)
            .and_then(std::sync::Weak::upgrade);
        let reader = match shared {
            Some(reader) => reader,
            None => match FileReader::open(&self.repo, &node) {
                Ok(reader) => {
                    let reader = Arc::new(reader);
                    self.readers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(ino.0, Arc::downgrade(&reader));
                    reader
                }
                Err(e) => return reply.error(errno(&format!("opening {}", node.name_lossy()), &e)),
            },
        };
        let fh = self.handle();
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, reader);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let reader = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(reader) = reader else {
            return reply.error(Errno::EBADF);
        };
        match reader.read_at(&self.repo, &self.blobs, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("reading a file", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let reader = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        // The last handle of the file: its reader goes.
        if reader.is_some_and(|r| Arc::strong_count(&r) == 1) {
            let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            if readers.get(&ino.0).is_some_and(|w| w.strong_count() <= 1) {
                readers.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A folder's listing keeps what it reads under this handle (see `listing`).
        let fh = self.handle();
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.each_entry(ino.0, fh.0, offset, |i, n, entry| match entry {
            Slot::Dot(name) => reply.add(INodeNo(n), i + 1, FileType::Directory, name),
            Slot::Entry(e) => {
                let n = self.inodes.number_of(&e.key);
                reply.add(INodeNo(n), i + 1, e.kind, OsStr::from_bytes(&e.name))
            }
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// A listing with each entry's attributes: each entry listed counts as a lookup (the
    /// kernel will forget it), except `.` and `..`.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.each_entry(ino.0, fh.0, offset, |i, n, entry| match entry {
            Slot::Dot(name) => {
                let what = self.inodes.get(n).map(|(w, _)| w);
                let what = what.unwrap_or(What::Folder(Vec::new()));
                let (attr, ttl) = self.attr(n, &what);
                reply.add(INodeNo(n), i + 1, name, &ttl, &attr, Generation(0))
            }
            Slot::Entry(e) => {
                let n = self.inodes.looked_up(e.key, ino.0, e.what.clone());
                let (attr, ttl) = self.attr(n, &e.what);
                let name = OsStr::from_bytes(&e.name);
                let full = reply.add(INodeNo(n), i + 1, name, &ttl, &attr, Generation(0));
                if full {
                    // Not sent: not a lookup.
                    self.inodes.forget(n, 1);
                }
                full
            }
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, self.inodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let node = match self.node_of(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let Some(x) = node.xattrs.iter().find(|x| x.name == name.as_bytes()) else {
            return reply.error(Errno::ENODATA);
        };
        if size == 0 {
            reply.size(x.value.len() as u32);
        } else if x.value.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&x.value);
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names: Vec<u8> = match self.node_of(ino.0) {
            Ok(node) => node
                .xattrs
                .iter()
                .flat_map(|x| x.name.iter().copied().chain([0]))
                .collect(),
            Err(e) if e == Errno::ENODATA => Vec::new(),
            Err(e) => return reply.error(e),
        };
        if size == 0 {
            reply.size(names.len() as u32);
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }
}
