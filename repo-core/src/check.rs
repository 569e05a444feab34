//! Verification: does the repository hold what its snapshots need, and is it intact?
//!
//! Structure (always): key slots parse; every index file opens and matches its name; every
//! indexed pack exists with the size the index gives, and its header lists exactly the
//! entries the index gives; every snapshot opens, and every tree and blob it references is
//! in the index (a blob found only in a condemned pack is reported too: the next prune's
//! sweep keeps it). With `read_data`, the selected packs are read whole: their bytes must
//! hash to their name and every blob must decrypt and hash to its id.
//!
//! Problems are collected, not raised: one damaged object does not hide the others. Each
//! names the object and what is wrong with it.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::backend::FileType;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::NodeKind;
use crate::id::{BlobKind, Id};
use crate::keys::KeySlot;
use crate::mark::{overlay_of, IdSet, Locator};
use crate::progress::Progress;
use crate::repository::Repository;

/// Which packs `--read-data` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    All,
    /// Part `n` of `m` (1-based): over `m` runs with n = 1..m every pack is read once.
    Part(u32, u32),
    /// A random fraction (0..=1) of the packs.
    Fraction(f64),
    /// Random packs until this many bytes are read.
    Bytes(u64),
}

impl Subset {
    /// Parses `all`, `n/m`, `x%` or a size such as `500M` or `2G`.
    pub fn parse(s: &str) -> Result<Subset> {
        let bad = || {
            Error::invalid(format!(
                "read-data subset {s:?}: use n/m (e.g. 1/5), a percentage (10%) or a size (2G)"
            ))
        };
        let s = s.trim();
        if s == "all" {
            return Ok(Subset::All);
        }
        if let Some((n, m)) = s.split_once('/') {
            let (n, m): (u32, u32) = (
                n.trim().parse().map_err(|_| bad())?,
                m.trim().parse().map_err(|_| bad())?,
            );
            if m == 0 || n == 0 || n > m {
                return Err(bad());
            }
            return Ok(Subset::Part(n, m));
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            return Ok(Subset::Fraction(p / 100.0));
        }
        let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
            Some((i, _)) => {
                let mult: u64 = match s[i..]
                    .to_ascii_uppercase()
                    .trim_end_matches("IB")
                    .trim_end_matches('B')
                {
                    "" => 1,
                    "K" => 1 << 10,
                    "M" => 1 << 20,
                    "G" => 1 << 30,
                    "T" => 1 << 40,
                    _ => return Err(bad()),
                };
                (&s[..i], mult)
            }
            None => (s, 1),
        };
        let n: f64 = num.trim().parse().map_err(|_| bad())?;
        Ok(Subset::Bytes((n * mult as f64) as u64))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged object, e.g. `pack 3f2a...` or `snapshot 9c1d...`.
    pub object: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not damage (unindexed packs, pending condemned packs).
    pub notices: Vec<String>,
    pub snapshots: u64,
    pub index_files: u64,
    pub packs: u64,
    pub trees: u64,
    pub data_blobs: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
}

impl CheckReport {
    fn problem(&mut self, object: String, problem: impl Into<String>) {
        self.problems.push(Problem {
            object,
            problem: problem.into(),
        });
    }
}

pub fn check(
    repo: &Repository,
    read_data: Option<Subset>,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    for info in repo.store().list(FileType::Key)? {
        let bytes = match repo.store().read(FileType::Key, &info.name) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let fix = format!(
            "remove it with `cairn key remove {}`",
            &info.name[..12.min(info.name.len())]
        );
        match KeySlot::parse(&info.name, &bytes) {
            Err(e) => r.problem(format!("key {}", info.name), format!("{e} ({fix})")),
            // A slot no reader would try (planted, or made by something else).
            Ok(slot) => {
                if let Err(e) = slot.params.check() {
                    r.problem(format!("key {}", info.name), format!("{e} ({fix})"));
                }
            }
        }
    }

    // Index files, and the packs they list.
    let listed = repo.pack_sizes()?;
    r.packs = listed.len() as u64;
    let mut indexed: HashSet<Id> = HashSet::new();
    let mut condemned: HashSet<Id> = HashSet::new();
    let mut headers_checked: HashSet<Id> = HashSet::new();
    // Superseded index files wait for a sweep to delete them; only the files in force are
    // held to account for the packs they list.
    let mut files = Vec::new();
    let mut superseded: HashSet<Id> = HashSet::new();
    let index_ids = repo.index_file_ids()?;
    progress.phase("index", Some(index_ids.len() as u64), None);
    for id in index_ids {
        progress.item();
        r.index_files += 1;
        match repo.read_index_file(&id) {
            Ok(f) => {
                superseded.extend(f.supersedes.iter().copied());
                if let Some(c) = &f.condemned {
                    condemned.extend(c.packs.iter().copied());
                }
                files.push(id);
            }
            // Gone since listing: a concurrent prune replaced it (it writes the replacement first).
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => r.problem(
                format!("index {id}"),
                format!("{e} (run `cairn repair index`)"),
            ),
        }
    }
    progress.phase("pack headers", Some(r.packs), None);
    for id in files.into_iter().filter(|id| !superseded.contains(id)) {
        let f = match repo.read_index_file(&id) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                r.problem(
                    format!("index {id}"),
                    format!("{e} (run `cairn repair index`)"),
                );
                continue;
            }
        };
        for p in &f.packs {
            indexed.insert(p.id);
            let Some(size) = listed.get(&p.id) else {
                r.problem(
                    format!("pack {}", p.id),
                    format!("listed in index {id} but missing from the repository"),
                );
                continue;
            };
            if *size != p.size {
                r.problem(
                    format!("pack {}", p.id),
                    format!(
                        "is {size} bytes, index {id} says {} (truncated or replaced?)",
                        p.size
                    ),
                );
                continue;
            }
            if !headers_checked.insert(p.id) {
                continue;
            }
            progress.item();
            match repo.read_pack_header(&p.id) {
                Ok((_, entries)) => {
                    let mut a = entries.clone();
                    let mut b = p.blobs.clone();
                    a.sort_by_key(|e| (e.offset, e.id));
                    b.sort_by_key(|e| (e.offset, e.id));
                    if a != b {
                        r.problem(
                            format!("pack {}", p.id),
                            format!("header does not agree with index {id}"),
                        );
                    }
                }
                Err(e) => r.problem(format!("pack {}", p.id), e.to_string()),
            }
        }
    }
    for (pack, _) in listed
        .iter()
        .filter(|(p, _)| !indexed.contains(p) && !condemned.contains(p))
    {
        r.notices.push(format!("pack {pack} is in no index (left by an interrupted backup or being written now; prune removes it when unused)"));
    }
    if !condemned.is_empty() {
        r.notices.push(format!(
            "{} packs are condemned and wait for the next prune's sweep",
            condemned.len()
        ));
    }

    // Snapshots and everything they reference. Snapshots are listed before the index is
    // read: writers store index files before snapshots, so each listed snapshot is covered.
    let snapshot_names = repo.store().list(FileType::Snapshot)?;
    repo.sync_index()?;
    let overlay = overlay_of(repo, &condemned)?;
    let locator = Locator {
        repo,
        overlay: Some(&overlay),
    };
    let mut seen = IdSet::new()?;
    let mut data_seen = IdSet::new()?;
    progress.phase("snapshots", Some(snapshot_names.len() as u64), None);
    for info in snapshot_names {
        progress.item();
        r.snapshots += 1;
        let sid = Id::from_hex(&info.name)?;
        let snap = match repo.read_snapshot(&sid) {
            Ok(s) => s,
            // Forgotten since listing.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                r.snapshots -= 1;
                continue;
            }
            Err(e) => {
                r.problem(
                    format!("snapshot {sid}"),
                    format!("{e} (prune and forget refuse to run until it is restored from a copy or removed with `cairn repair snapshots --forget`)"),
                );
                continue;
            }
        };
        check_tree(
            &locator,
            &snap.tree,
            &sid,
            &condemned,
            &mut seen,
            &mut data_seen,
            &mut r,
        )?;
    }

    if let Some(subset) = read_data {
        read_packs(repo, &listed, &indexed, subset, progress, &mut r)?;
    }
    Ok(r)
}

/// Where a referenced blob is, as restore would find it: listed by the index (a blob in a
/// condemned pack is a notice: it is readable, and the next sweep keeps it), or not (a
/// problem). A miss in the cache is verified against the repository before it is reported
/// (`Repository::locate_verified`), so check never reports a cache's belief as damage.
fn locate_or_report(
    locator: &Locator,
    kind: BlobKind,
    id: &Id,
    snap: &Id,
    condemned: &HashSet<Id>,
    r: &mut CheckReport,
) -> Result<bool> {
    if let Some(loc) = locator.repo.locate_verified(id)? {
        if condemned.contains(&loc.pack) {
            r.notices.push(format!("snapshot {snap} uses {kind:?} blob {id} in condemned pack {} (readable; the next prune keeps it)", loc.pack));
        }
        return Ok(true);
    }
    let hint = if locator.repo.damaged_index_files().is_empty() {
        "run `cairn repair index` to index what the packs hold, then `cairn repair snapshots` if it is still missing"
    } else {
        "an index file cannot be read: run `cairn repair index`"
    };
    match locator.overlay.map(|o| o.lookup(id)).transpose()?.flatten() {
        Some(loc) => r.problem(
            format!("blob {id}"),
            format!("{kind:?} blob used by snapshot {snap} is only in condemned pack {}, which no index file lists ({hint})", loc.pack),
        ),
        None => r.problem(
            format!("blob {id}"),
            format!("{kind:?} blob used by snapshot {snap} is in no index ({hint})"),
        ),
    }
    Ok(false)
}

fn check_tree(
    locator: &Locator,
    root: &Id,
    snap: &Id,
    condemned: &HashSet<Id>,
    seen: &mut IdSet,
    data_seen: &mut IdSet,
    r: &mut CheckReport,
) -> Result<()> {
    let mut stack = vec![*root];
    while let Some(tree_id) = stack.pop() {
        if !seen.insert(tree_id)? {
            continue;
        }
        r.trees += 1;
        if !locate_or_report(locator, BlobKind::Tree, &tree_id, snap, condemned, r)? {
            continue;
        }
        // A tree that does not validate is reported like one that does not decode: no
        // reader walks it (`Tree::decode`), so neither does check.
        let tree = match locator.load_tree(&tree_id) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::Corrupt || e.kind() == ErrorKind::NotFound => {
                r.problem(format!("tree {tree_id}"), format!("(snapshot {snap}) {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        for node in &tree.nodes {
            match node.kind {
                NodeKind::Dir => match node.subtree {
                    Some(sub) => stack.push(sub),
                    None => r.problem(
                        format!("tree {tree_id}"),
                        format!("directory {:?} has no subtree", node.name_lossy()),
                    ),
                },
                NodeKind::File => {
                    let mut ids = node.content.clone();
                    for list in &node.content_lists {
                        if !locate_or_report(locator, BlobKind::Tree, list, snap, condemned, r)? {
                            continue;
                        }
                        match locator.load_content_list(list) {
                            Ok(l) => ids.extend(l.ids),
                            Err(e) => r.problem(format!("blob {list}"), e.to_string()),
                        }
                    }
                    for id in ids {
                        if data_seen.insert(id)? {
                            r.data_blobs += 1;
                            locate_or_report(locator, BlobKind::Data, &id, snap, condemned, r)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Orders packs pseudo-randomly (a fresh seed per run) for the random subsets.
fn shuffled(packs: &[Id]) -> Result<Vec<Id>> {
    let seed = Id::random()?;
    let mut v: Vec<(blake3::Hash, Id)> = packs
        .iter()
        .map(|p| (blake3::keyed_hash(&seed.0, &p.0), *p))
        .collect();
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Counts an item of the current phase done when dropped.
struct ItemDone<'a>(&'a dyn Progress);

impl Drop for ItemDone<'_> {
    fn drop(&mut self) {
        self.0.item();
    }
}

fn read_packs(
    repo: &Repository,
    listed: &HashMap<Id, u64>,
    indexed: &HashSet<Id>,
    subset: Subset,
    progress: &dyn Progress,
    r: &mut CheckReport,
) -> Result<()> {
    let mut packs: Vec<Id> = listed
        .keys()
        .filter(|p| indexed.contains(p))
        .copied()
        .collect();
    packs.sort();
    let selected: Vec<Id> = match subset {
        Subset::All => packs,
        Subset::Part(n, m) => packs
            .into_iter()
            .filter(|p| (u16::from_be_bytes([p.0[0], p.0[1]]) as u32) % m == n - 1)
            .collect(),
        Subset::Fraction(f) => {
            let k = ((packs.len() as f64) * f).ceil() as usize;
            shuffled(&packs)?.into_iter().take(k).collect()
        }
        Subset::Bytes(limit) => {
            let mut total = 0;
            shuffled(&packs)?
                .into_iter()
                .take_while(|p| {
                    let go = total < limit;
                    total += listed.get(p).copied().unwrap_or(0);
                    go
                })
                .collect()
        }
    };
    let total: u64 = selected
        .iter()
        .map(|p| listed.get(p).copied().unwrap_or(0))
        .sum();
    progress.phase("reading packs", Some(selected.len() as u64), Some(total));
    for pack in selected {
        // The pack is counted done when its blobs are checked too, whichever way it ends.
        let _done = ItemDone(progress);
        let bytes = match repo.read_pack(&pack) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // reported above
            Err(e) => return Err(e),
        };
        r.packs_read += 1;
        r.bytes_read += bytes.len();
        progress.bytes(bytes.len());
        if !bytes.matches_name() {
            r.problem(
                format!("pack {pack}"),
                "contents do not match its name (damaged)",
            );
        }
        let entries = match bytes.entries() {
            Ok(e) => e,
            Err(e) => {
                r.problem(format!("pack {pack}"), e.to_string());
                continue;
            }
        };
        for e in entries {
            if let Err(err) = bytes.open(&e) {
                r.problem(format!("pack {pack}"), format!("blob {}: {err}", e.id));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        assert_eq!(Subset::parse("1/5").ok(), Some(Subset::Part(1, 5)));
        assert_eq!(Subset::parse("10%").ok(), Some(Subset::Fraction(0.1)));
        assert_eq!(Subset::parse("2G").ok(), Some(Subset::Bytes(2 << 30)));
        assert_eq!(Subset::parse("500MiB").ok(), Some(Subset::Bytes(500 << 20)));
        for bad in ["0/5", "6/5", "x", "101%", "5Q"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
    }
}
