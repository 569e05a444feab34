//! The mount's folders above the snapshots, built from one snapshot listing:
//!
//! ```text
//! snapshots/<time>/            every snapshot (WAL snapshots aside), and `latest`
//! ids/<short id>/
//! hosts/<host>/<time>/         and `latest` in each host's folder
//! tags/<tag>/<time>/           and `latest` in each tag's folder
//! pg-basebackups/<time>/       PostgreSQL base backups, and `latest`
//! dumps/<time>/                standard input and command output (`pg_dump`), and `latest`
//! ```
//!
//! `<time>` is the snapshot's time in UTC to the second (`2026-12-07T15:51:22Z`), so names
//! sort in time order. Snapshots of one folder that share a second are named with their full
//! time (nanoseconds), and any still alike get `-<id>`: names are unique and do not depend
//! on the order of the listing. `latest` is a relative link to the newest entry of its
//! folder. Host and tag names become one path component (see [`component`]): different
//! names stay different folders.
//!
//! A layout is immutable; the file system swaps in a new one when it lists the snapshots
//! again.

use std::collections::{BTreeMap, HashMap};

use cairn_repo::format::snapshot::{Snapshot, SnapshotKind};
use cairn_repo::Id;

/// What a name in a layout folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    /// A symbolic link with this target (`latest`).
    Link(Vec<u8>),
    /// A snapshot's root folder.
    Snapshot(Id),
}

/// One snapshot's facts that its root folder shows.
#[derive(Debug, Clone)]
pub struct SnapshotFacts {
    pub tree: Id,
    /// Seconds and nanoseconds since the epoch.
    pub time: (i64, u32),
}

#[derive(Debug, Default)]
pub struct Layout {
    /// Folder path (components joined with `/`, "" for the top) -> its entries, sorted by
    /// name.
    folders: HashMap<Vec<u8>, Vec<(Vec<u8>, Entry)>>,
    snapshots: HashMap<Id, SnapshotFacts>,
    /// The newest snapshot's time, for the folders' own times.
    pub newest: (i64, u32),
}

/// The folders below the top, in the order they are listed.
const TOP: [&str; 6] = [
    "dumps",
    "hosts",
    "ids",
    "pg-basebackups",
    "snapshots",
    "tags",
];

impl Layout {
    /// Builds the layout of `snapshots` (already filtered by the caller).
    pub fn build(snapshots: &[(Id, Snapshot)]) -> Layout {
        let shown: Vec<&(Id, Snapshot)> = snapshots
            .iter()
            .filter(|(_, s)| s.kind != SnapshotKind::Wal)
            .collect();
        let mut layout = Layout::default();
        let mut groups: BTreeMap<Vec<u8>, Vec<&(Id, Snapshot)>> = BTreeMap::new();
        for top in TOP {
            groups.insert(top.as_bytes().to_vec(), Vec::new());
        }
        for item in &shown {
            let (id, s) = item;
            let time = time_of(s);
            layout
                .snapshots
                .insert(*id, SnapshotFacts { tree: s.tree, time });
            layout.newest = layout.newest.max(time);
            groups.entry(b"snapshots".to_vec()).or_default().push(item);
            groups
                .entry(join(b"hosts", &component(&s.host)))
                .or_default()
                .push(item);
            for tag in &s.tags {
                groups
                    .entry(join(b"tags", &component(tag)))
                    .or_default()
                    .push(item);
            }
            match s.kind {
                SnapshotKind::PgBasebackup => groups
                    .entry(b"pg-basebackups".to_vec())
                    .or_default()
                    .push(item),
                SnapshotKind::Stdin | SnapshotKind::Command => {
                    groups.entry(b"dumps".to_vec()).or_default().push(item)
                }
                SnapshotKind::Files | SnapshotKind::Wal => {}
            }
        }
        let mut top: Vec<(Vec<u8>, Entry)> = TOP
            .iter()
            .map(|t| (t.as_bytes().to_vec(), Entry::Dir))
            .collect();
        top.sort_by(|a, b| a.0.cmp(&b.0));
        layout.folders.insert(Vec::new(), top);
        for (path, members) in groups {
            if let Some(slash) = path.iter().position(|b| *b == b'/') {
                let (parent, name) = (path[..slash].to_vec(), path[slash + 1..].to_vec());
                layout
                    .folders
                    .entry(parent)
                    .or_default()
                    .push((name, Entry::Dir));
            }
            layout.folders.insert(path, time_folder(&members));
        }
        layout.folders.insert(b"ids".to_vec(), id_folder(&shown));
        for entries in layout.folders.values_mut() {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|a, b| a.0 == b.0);
        }
        layout
    }

    /// The entries of the folder at `path`, sorted by name; `None` when there is none.
    pub fn folder(&self, path: &[u8]) -> Option<&[(Vec<u8>, Entry)]> {
        self.folders.get(path).map(Vec::as_slice)
    }

    /// The entry `name` of the folder at `path`.
    pub fn child(&self, path: &[u8], name: &[u8]) -> Option<&Entry> {
        let entries = self.folders.get(path)?;
        entries
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| &entries[i].1)
    }

    pub fn snapshot(&self, id: &Id) -> Option<&SnapshotFacts> {
        self.snapshots.get(id)
    }

    /// Snapshots shown.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }
}

/// `parent/name`, or `name` at the top.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = parent.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Longest host or tag folder name (the kernel's limit is 255 bytes).
const MAX_COMPONENT: usize = 200;

/// A host or tag name as one path component (module docs): `/`, NUL and `%` are written as
/// `%2F`, `%00` and `%25`, so that different names stay different; an empty name, `.` and
/// `..` get a leading `_`; a name longer than [`MAX_COMPONENT`] bytes is cut and
/// ends with `~` and a hash of the whole name.
fn component(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'/' => out.extend_from_slice(b"%2F"),
            0 => out.extend_from_slice(b"%00"),
            b'%' => out.extend_from_slice(b"%25"),
            _ => out.push(b),
        }
    }
    if out.is_empty() || out == b"." || out == b".." {
        out.insert(0, b'_');
    }
    if out.len() > MAX_COMPONENT {
        let hash = name_hash(name.as_bytes());
        // Cut on a character boundary of the (UTF-8) name.
        let mut cut = MAX_COMPONENT - hash.len() - 1;
        while cut > 0 && (out[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
        out.push(b'~');
        out.extend_from_slice(hash.as_bytes());
    }
    out
}

/// 16 hex digits naming `bytes`.
fn name_hash(bytes: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}", h.finish())
}

fn time_of(s: &Snapshot) -> (i64, u32) {
    s.timestamp()
        .map(|t| (t.as_second(), t.subsec_nanosecond().max(0) as u32))
        .unwrap_or((0, 0))
}

/// A snapshot's name in a time folder: to the second, or with nanoseconds.
fn time_name(s: &Snapshot, precise: bool) -> Vec<u8> {
    let Some(t) = s.timestamp() else {
        return component(&s.time);
    };
    let format = if precise {
        "%Y-%m-%dT%H:%M:%S%.9fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    t.strftime(format).to_string().into_bytes()
}

/// A folder of snapshots named by time, with `latest` (module docs).
fn time_folder(members: &[&(Id, Snapshot)]) -> Vec<(Vec<u8>, Entry)> {
    let mut by_second: BTreeMap<Vec<u8>, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for m in members {
        by_second.entry(time_name(&m.1, false)).or_default().push(m);
    }
    let mut named: BTreeMap<Vec<u8>, Vec<Id>> = BTreeMap::new();
    for (name, group) in by_second {
        if group.len() == 1 {
            named.entry(name).or_default().push(group[0].0);
            continue;
        }
        for (id, s) in group {
            named.entry(time_name(s, true)).or_default().push(*id);
        }
    }
    let mut entries = Vec::new();
    for (name, ids) in named {
        if ids.len() == 1 {
            entries.push((name, Entry::Snapshot(ids[0])));
            continue;
        }
        for id in ids {
            let mut n = name.clone();
            n.push(b'-');
            n.extend_from_slice(id.to_hex().as_bytes());
            entries.push((n, Entry::Snapshot(id)));
        }
    }
    // The newest: the latest time, then the greatest id (as snapshot listings order them).
    let newest = members
        .iter()
        .max_by(|a, b| time_of(&a.1).cmp(&time_of(&b.1)).then(a.0.cmp(&b.0)))
        .map(|m| m.0);
    if let Some(newest) = newest {
        if let Some((name, _)) = entries.iter().find(|(_, e)| *e == Entry::Snapshot(newest)) {
            let target = name.clone();
            entries.push((b"latest".to_vec(), Entry::Link(target)));
        }
    }
    entries
}

/// `ids/`: each snapshot by its short id, or by its full id when two share the short one.
fn id_folder(shown: &[&(Id, Snapshot)]) -> Vec<(Vec<u8>, Entry)> {
    let mut by_short: BTreeMap<String, Vec<Id>> = BTreeMap::new();
    for (id, _) in shown {
        by_short.entry(id.short()).or_default().push(*id);
    }
    let mut entries = Vec::new();
    for (short, ids) in by_short {
        if ids.len() == 1 {
            entries.push((short.into_bytes(), Entry::Snapshot(ids[0])));
        } else {
            for id in ids {
                entries.push((id.to_hex().into_bytes(), Entry::Snapshot(id)));
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str, tags: &[&str], kind: SnapshotKind) -> Snapshot {
        Snapshot {
            version: 1,
            time: time.into(),
            host: host.into(),
            user: "u".into(),
            tenant: "default".into(),
            kind,
            paths: vec!["/srv".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            tree: Id([9; 32]),
            summary: Default::default(),
            program_version: "test".into(),
            incomplete: false,
            command: Vec::new(),
            pg: None,
            original: None,
        }
    }

    fn names(l: &Layout, path: &str) -> Vec<String> {
        l.folder(path.as_bytes())
            .unwrap_or_default()
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn folders_by_time_host_tag_and_kind_with_latest_links() {
        let list = vec![
            (
                Id([1; 32]),
                snap(
                    "2026-12-01T10:00:00.5Z",
                    "web/1",
                    &["daily"],
                    SnapshotKind::Files,
                ),
            ),
            (
                Id([2; 32]),
                snap(
                    "2026-12-02T10:00:00Z",
                    "db",
                    &[],
                    SnapshotKind::PgBasebackup,
                ),
            ),
            (
                Id([3; 32]),
                snap(
                    "2026-12-03T10:00:00Z",
                    "db",
                    &["daily"],
                    SnapshotKind::Command,
                ),
            ),
            (
                Id([4; 32]),
                snap("2026-12-04T10:00:00Z", "db", &[], SnapshotKind::Wal),
            ),
        ];
        let l = Layout::build(&list);
        assert_eq!(names(&l, ""), TOP);
        assert_eq!(
            names(&l, "snapshots"),
            [
                "2026-12-01T10:00:00Z",
                "2026-12-02T10:00:00Z",
                "2026-12-03T10:00:00Z",
                "latest"
            ]
        );
        assert_eq!(
            l.child(b"snapshots", b"latest"),
            Some(&Entry::Link(b"2026-12-03T10:00:00Z".to_vec()))
        );
        assert_eq!(names(&l, "hosts"), ["db", "web%2F1"]);
        assert_eq!(names(&l, "tags/daily").len(), 3);
        assert_eq!(
            names(&l, "pg-basebackups"),
            ["2026-12-02T10:00:00Z", "latest"]
        );
        assert_eq!(names(&l, "dumps"), ["2026-12-03T10:00:00Z", "latest"]);
        assert_eq!(names(&l, "ids"), ["01010101", "02020202", "03030303"]);
        assert_eq!(l.len(), 3, "WAL snapshots are not shown");
        assert!(l.child(b"ids", b"04040404").is_none());
    }

    #[test]
    fn host_and_tag_names_stay_distinct_and_within_the_name_limit() {
        assert_eq!(component("web/1"), b"web%2F1");
        assert_ne!(component("web/1"), component("web_1"));
        assert_ne!(component("a%2Fb"), component("a/b"));
        assert_eq!(component(""), b"_");
        assert_eq!(component(".."), b"_..");
        let long = "é".repeat(300);
        let c = component(&long);
        assert!(c.len() <= MAX_COMPONENT);
        assert!(std::str::from_utf8(&c).is_ok());
        assert_ne!(c, component(&"é".repeat(301)));
    }

    #[test]
    fn snapshots_of_one_second_get_unique_names_whatever_the_order() {
        let a = (
            Id([1; 32]),
            snap("2026-12-01T10:00:00.1Z", "h", &[], SnapshotKind::Files),
        );
        let b = (
            Id([2; 32]),
            snap("2026-12-01T10:00:00.2Z", "h", &[], SnapshotKind::Files),
        );
        let c = (
            Id([3; 32]),
            snap("2026-12-01T10:00:00.2Z", "h", &[], SnapshotKind::Files),
        );
        let one = Layout::build(&[a.clone(), b.clone(), c.clone()]);
        let two = Layout::build(&[c, b, a]);
        let expected = [
            "2026-12-01T10:00:00.100000000Z".to_string(),
            format!("2026-12-01T10:00:00.200000000Z-{}", Id([2; 32]).to_hex()),
            format!("2026-12-01T10:00:00.200000000Z-{}", Id([3; 32]).to_hex()),
            "latest".to_string(),
        ];
        assert_eq!(names(&one, "snapshots"), expected);
        assert_eq!(names(&two, "snapshots"), expected);
        assert_eq!(
            one.child(b"snapshots", b"latest"),
            Some(&Entry::Link(expected[2].clone().into_bytes()))
        );
    }
}
