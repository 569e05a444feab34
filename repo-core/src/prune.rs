//! Garbage collection: removing what no snapshot needs, without ever blocking a backup.
//!
//! Prune works in two phases (docs/design.md, "Garbage collection"):
//!
//! **Mark.** Mark every blob reachable from the snapshots (in an on-disk set). Packs with no
//! used blob, and packs no index lists (left by interrupted backups, or being written by a
//! running one), are condemned. Partly used packs are repacked, most wasteful first, until the
//! unused share is within `max_unused`: their used blobs are verified and copied, still
//! sealed, into new packs, and the packs are condemned. A compacted index is written, whose
//! last file supersedes every index file it merged. Then a condemned record is written (an
//! index-type object naming the packs and superseded index files), and with it the holders of
//! the leases that are live. From then on readers leave condemned packs out of the index, so
//! no writer deduplicates against them.
//!
//! **Sweep.** When no lease that was live at the mark (and no lease started before it) is
//! live any more, the sweep marks again against the current snapshots. A condemned pack
//! holding a blob that some snapshot now uses and that exists nowhere else is rescued (a
//! new index file lists it); the others are deleted, then the superseded index files, then
//! the record. Every step is idempotent: an interrupted prune is simply run again.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::backend::FileType;
use crate::error::{Error, ErrorKind, Result};
use crate::format::blob::SealedBlob;
use crate::format::index::{Condemned, IndexFile, IndexPack};
use crate::id::{BlobKind, Id};
use crate::lease::{self, Lease, LeaseGuard};
use crate::mark::{mark, overlay_of, IdSet, Locator};
use crate::packer::{store_pack, Packer};
use crate::progress::{PackEvent, Progress};
use crate::repository::{IndexFileWriter, Repository};

/// Leases that started up to this long after a mark are still waited for, to allow for
/// clocks that disagree between hosts.
pub const CLOCK_MARGIN_SECS: i64 = 60;

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused bytes tolerated in kept packs, as a fraction of used bytes.
    pub max_unused: f64,
    /// Upper bound on the bytes of packs read for repacking in one run.
    pub max_repack_bytes: Option<u64>,
    pub dry_run: bool,
    /// Remove snapshots that cannot be read instead of refusing to run (their data, unless
    /// another snapshot uses it, is then freed).
    pub drop_unreadable: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            max_repack_bytes: None,
            dry_run: false,
            drop_unreadable: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub used_blobs: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub delete_packs: Vec<Id>,
    pub delete_bytes: u64,
    pub unindexed_packs: Vec<Id>,
    pub unindexed_bytes: u64,
    pub repack_packs: Vec<Id>,
    pub repack_bytes: u64,
    /// Unused bytes inside the repacked packs (what repacking frees).
    pub repack_unused_bytes: u64,
    /// Unused bytes left in kept packs.
    pub unused_bytes_kept: u64,
    pub index_files: usize,
}

impl PrunePlan {
    pub fn bytes_to_free(&self) -> u64 {
        self.delete_bytes + self.unindexed_bytes + self.repack_unused_bytes
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub records: u64,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    pub packs_rescued: u64,
    pub index_files_deleted: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub plan: PrunePlan,
    /// The condemned record this run wrote, if it still waits for a sweep.
    pub pending_record: Option<Id>,
    pub swept: SweepReport,
    /// Leases the pending sweep waits for.
    pub waiting_for: Vec<Lease>,
    /// New packs this run's repack wrote, and their bytes.
    pub repacked_into_packs: u64,
    pub repacked_into_bytes: u64,
    /// The stored bytes of all packs when this run started and when it ended (not measured
    /// in a dry run). What a backup running beside adds shows in the second figure too.
    pub pack_bytes_before: Option<u64>,
    pub pack_bytes_after: Option<u64>,
}

#[derive(Default, Clone, Copy)]
struct PackStat {
    kind: Option<BlobKind>,
    blobs: u64,
    bytes: u64,
    used_blobs: u64,
    used_bytes: u64,
}

/// What the index files say about each other.
struct Structure {
    all: Vec<Id>,
    superseded: HashSet<Id>,
    records: Vec<(Id, Condemned)>,
}

fn structure(repo: &Repository) -> Result<Structure> {
    let all = repo.index_file_ids()?;
    let mut superseded = HashSet::new();
    let mut records = Vec::new();
    for id in &all {
        let f = repo.read_index_file(id).map_err(|e| {
            if e.kind() == ErrorKind::Corrupt {
                e.context("prune cannot run while an index file is damaged (run `cairn check`, then `cairn repair index`)")
            } else {
                e
            }
        })?;
        superseded.extend(f.supersedes);
        if let Some(c) = f.condemned {
            records.push((*id, c));
        }
    }
    Ok(Structure {
        all,
        superseded,
        records,
    })
}

/// Reads the index (after the caller listed the snapshots whose `roots` are given) and marks
/// what they use. Blobs in packs that waiting records condemn are found through an overlay.
/// Returns the index structure, the condemned packs, and the used blobs.
fn mark_current(repo: &Repository, roots: &[Id]) -> Result<(Structure, HashSet<Id>, IdSet)> {
    repo.sync_index()?;
    let st = structure(repo)?;
    let pending: HashSet<Id> = st
        .records
        .iter()
        .flat_map(|(_, c)| c.packs.iter().copied())
        .collect();
    let overlay = overlay_of(repo, &pending)?;
    let used = mark(
        &Locator {
            repo,
            overlay: Some(&overlay),
        },
        roots,
    )?;
    Ok((st, pending, used))
}

/// Live leases other than `own` that a record's sweep must wait for.
fn blocking(repo: &Repository, record: &Condemned, own: &Id) -> Result<Vec<Lease>> {
    let marked: Option<jiff::Timestamp> = record.time.parse().ok();
    let holders: HashSet<String> = record.leases.iter().cloned().collect();
    Ok(lease::live(repo)?
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.holder != *own)
        .filter(|l| {
            let started_before = match (marked, l.started.parse::<jiff::Timestamp>()) {
                (Some(m), Ok(s)) => s.as_second() <= m.as_second() + CLOCK_MARGIN_SECS,
                _ => true,
            };
            holders.contains(&l.holder.to_hex()) || started_before
        })
        .collect())
}

/// Runs a prune: sweeps what is ready, marks, and sweeps again if nothing blocks.
/// `progress` hears of each pack repacked (with its bytes read) and each pack deleted.
pub fn prune(
    repo: &Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    if !opts.dry_run {
        repo.require_deletes(FileType::Pack, "prune")?;
    }
    // A dry run writes nothing, not even a lease, so it works on a read-only repository.
    let guard = if opts.dry_run {
        None
    } else {
        Some(LeaseGuard::acquire(repo, "prune")?)
    };
    let own = match &guard {
        Some(g) => g.holder(),
        None => Id::random()?,
    };
    if let Some((_, other)) = lease::live(repo)?
        .into_iter()
        .find(|(_, l)| l.kind == "prune" && l.holder != own)
    {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("another prune is running (host {}, pid {}, since {}); run prune again when it has finished", other.host, other.pid, other.started),
        ));
    }
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !opts.dry_run {
        report.pack_bytes_before = Some(pack_total(repo)?);
        remove_stale_staging(repo);
        sweep_ready(repo, &own, opts, &mut report.swept, progress)?;
    }
    // Snapshots first, index second: a writer stores its index files before its snapshot,
    // so every snapshot listed here has its index files in the index read after.
    let snapshots = repo.snapshots_for_gc(opts.drop_unreadable && !opts.dry_run)?;
    let roots: Vec<Id> = snapshots.iter().map(|(_, s)| s.tree).collect();
    progress.phase("marking", None, None);
    let (st, pending, used) = mark_current(repo, &roots)?;

    let mut stats: HashMap<Id, PackStat> = HashMap::new();
    repo.cache().for_each_blob(&mut |id, loc| {
        let s = stats.entry(loc.pack).or_default();
        s.kind = Some(loc.kind);
        s.blobs += 1;
        s.bytes += loc.length as u64;
        if is_used(&used, loc.kind, &id)? {
            s.used_blobs += 1;
            s.used_bytes += loc.length as u64;
        }
        Ok(())
    })?;
    let listed = repo.pack_sizes()?;

    let mut plan = PrunePlan {
        snapshots: snapshots.len(),
        used_blobs: used.len(),
        ..Default::default()
    };
    let mut partial: Vec<(Id, u64, u64)> = Vec::new(); // pack, size, unused bytes
    let mut used_bytes = 0u64;
    for (pack, s) in &stats {
        let Some(size) = listed.get(pack) else {
            tracing::warn!(
                "pack {pack} is in the index but missing from the repository (see `cairn check`)"
            );
            continue;
        };
        plan.packs += 1;
        plan.pack_bytes += size;
        used_bytes += s.used_bytes;
        if s.used_blobs == 0 {
            plan.delete_packs.push(*pack);
            plan.delete_bytes += size;
        } else if s.used_blobs < s.blobs {
            partial.push((*pack, *size, s.bytes - s.used_bytes));
        }
    }
    for (pack, size) in &listed {
        if !stats.contains_key(pack) && !pending.contains(pack) {
            plan.unindexed_packs.push(*pack);
            plan.unindexed_bytes += size;
        }
    }
    // Repack the most wasteful packs first until the rest is within the tolerance.
    partial.sort_by(|a, b| {
        (b.2 as f64 / b.1.max(1) as f64).total_cmp(&(a.2 as f64 / a.1.max(1) as f64))
    });
    let mut unused: u64 = partial.iter().map(|p| p.2).sum();
    let allowed = (opts.max_unused.max(0.0) * used_bytes as f64) as u64;
    for (pack, size, waste) in &partial {
        let within_budget = opts
            .max_repack_bytes
            .is_none_or(|m| plan.repack_bytes + size <= m);
        if unused > allowed && within_budget {
            plan.repack_packs.push(*pack);
            plan.repack_bytes += size;
            plan.repack_unused_bytes += waste;
            unused -= waste;
        }
    }
    plan.unused_bytes_kept = unused;
    // Every index file but the records is replaced: the compacted index carries the entries
    // of the effective ones, and also supersedes the already superseded ones, because
    // deleting a superseding file while the files it superseded remain would bring them
    // back into force.
    let replaced: Vec<Id> = st
        .all
        .iter()
        .copied()
        .filter(|id| !st.records.iter().any(|(r, _)| r == id))
        .collect();
    let inputs: Vec<Id> = replaced
        .iter()
        .copied()
        .filter(|id| !st.superseded.contains(id))
        .collect();
    plan.index_files = inputs.len();
    for v in [
        &mut plan.delete_packs,
        &mut plan.unindexed_packs,
        &mut plan.repack_packs,
    ] {
        v.sort();
    }
    report.plan = plan;
    let nothing = report.plan.delete_packs.is_empty()
        && report.plan.unindexed_packs.is_empty()
        && report.plan.repack_packs.is_empty();
    if opts.dry_run || (nothing && inputs.len() <= 1) {
        report_pending(repo, &own, &mut report)?;
        if !opts.dry_run {
            report.pack_bytes_after = Some(pack_total(repo)?);
        }
        drop(guard);
        return Ok(report);
    }
    let Some(guard) = guard else {
        return Err(Error::new(ErrorKind::Other, "prune without a lease"));
    };

    let condemn: HashSet<Id> = report
        .plan
        .delete_packs
        .iter()
        .chain(&report.plan.unindexed_packs)
        .chain(&report.plan.repack_packs)
        .copied()
        .collect();
    progress.phase(
        "repacking",
        Some(report.plan.repack_packs.len() as u64),
        Some(report.plan.repack_bytes),
    );
    let new_packs = repack(repo, &report.plan.repack_packs, &used, &condemn, progress)?;
    progress.phase("writing the index", None, None);
    report.repacked_into_packs = new_packs.len() as u64;
    report.repacked_into_bytes = new_packs.iter().map(|p| p.size).sum();
    let excluded: HashSet<Id> = condemn.union(&pending).copied().collect();
    let mut waiting: Vec<Id> = pending.difference(&condemn).copied().collect();
    waiting.sort();
    write_compacted_index(repo, &inputs, &replaced, new_packs, &excluded, &waiting)?;

    let holders: Vec<String> = lease::live(repo)?
        .into_iter()
        .filter(|(_, l)| l.holder != own)
        .map(|(_, l)| l.holder.to_hex())
        .collect();
    let mut record_packs: Vec<Id> = condemn.into_iter().collect();
    record_packs.sort();
    let record = Condemned {
        time: jiff::Timestamp::now().to_string(),
        packs: record_packs,
        index_files: replaced,
        leases: holders,
    };
    let record_id = repo.save_index(&IndexFile {
        version: 1,
        condemned: Some(record.clone()),
        ..Default::default()
    })?;
    repo.sync_index()?;

    if blocking(repo, &record, &own)?.is_empty() {
        sweep_one(repo, &record_id, &record, opts, &mut report.swept, progress)?;
    }
    report_pending(repo, &own, &mut report)?;
    report.pack_bytes_after = Some(pack_total(repo)?);
    guard.release()?;
    Ok(report)
}

/// The stored bytes of every pack, from one listing.
fn pack_total(repo: &Repository) -> Result<u64> {
    Ok(repo.pack_sizes()?.values().sum())
}

/// Fills in the newest record still waiting for a sweep, and the leases it waits for.
fn report_pending(repo: &Repository, own: &Id, report: &mut PruneReport) -> Result<()> {
    for (id, record) in structure(repo)?.records {
        let waiting = blocking(repo, &record, own)?;
        if !waiting.is_empty() {
            report.pending_record = Some(id);
            for l in waiting {
                if !report.waiting_for.iter().any(|w| w.holder == l.holder) {
                    report.waiting_for.push(l);
                }
            }
        }
    }
    Ok(())
}

/// Sweeps every condemned record whose writers have all ended.
pub fn sweep_ready(
    repo: &Repository,
    own: &Id,
    opts: &PruneOptions,
    report: &mut SweepReport,
    progress: &dyn Progress,
) -> Result<()> {
    let st = structure(repo)?;
    for (id, record) in &st.records {
        if blocking(repo, record, own)?.is_empty() {
            sweep_one(repo, id, record, opts, report, progress)?;
        }
    }
    Ok(())
}

fn sweep_one(
    repo: &Repository,
    record_id: &Id,
    record: &Condemned,
    opts: &PruneOptions,
    report: &mut SweepReport,
    progress: &dyn Progress,
) -> Result<()> {
    // Snapshots before the index, as in the mark; an unreadable one stops the sweep as it
    // stops the mark.
    let roots: Vec<Id> = repo
        .snapshots_for_gc(opts.drop_unreadable)?
        .iter()
        .map(|(_, s)| s.tree)
        .collect();
    progress.phase("marking", None, None);
    let (st, _, used) = mark_current(repo, &roots)?;
    // Decide first, write second: rescue index files, then replacements for index files that
    // list doomed packs, and only then delete anything.
    let mut doomed: Vec<(Id, u64)> = Vec::new();
    for pack in &record.packs {
        let (size, entries) = match repo.read_pack_header(pack) {
            Ok(h) => h,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                // A damaged condemned pack cannot be rescued from; it goes.
                tracing::warn!("deleting damaged condemned pack: {e}");
                doomed.push((*pack, 0));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut needed = false;
        for e in &entries {
            if is_used(&used, e.kind, &e.id)? && repo.lookup(&e.id)?.is_none() {
                needed = true;
                break;
            }
        }
        if needed {
            repo.save_index(&IndexFile {
                version: 1,
                packs: vec![IndexPack {
                    id: *pack,
                    size,
                    blobs: entries,
                }],
                ..Default::default()
            })?;
            report.packs_rescued += 1;
        } else {
            doomed.push((*pack, size));
        }
    }
    // An index file still in force may list a doomed pack: a writer that uploaded it before
    // the mark and indexed it after, then failed before its snapshot. Such files are replaced
    // by copies without the doomed packs, so no reader is ever sent to a deleted pack.
    let doomed_set: HashSet<Id> = doomed.iter().map(|(p, _)| *p).collect();
    let replaced_by_record: HashSet<Id> = record.index_files.iter().copied().collect();
    let mut rewritten = Vec::new();
    for id in &st.all {
        if st.superseded.contains(id)
            || replaced_by_record.contains(id)
            || st.records.iter().any(|(r, _)| r == id)
        {
            continue;
        }
        let f = repo.read_index_file(id)?;
        if f.packs.iter().any(|p| doomed_set.contains(&p.id)) {
            let mut supersedes = f.supersedes.clone();
            supersedes.push(*id);
            let packs = f
                .packs
                .into_iter()
                .filter(|p| !doomed_set.contains(&p.id))
                .collect();
            repo.save_index(&IndexFile {
                version: 1,
                packs,
                supersedes,
                condemned: None,
            })?;
            rewritten.push(*id);
        }
    }
    progress.phase("deleting", Some(doomed.len() as u64), None);
    for (pack, size) in &doomed {
        repo.store().remove(FileType::Pack, &pack.to_hex())?;
        report.packs_deleted += 1;
        report.bytes_freed += size;
        progress.pack(pack, PackEvent::Deleted { bytes: *size });
    }
    for f in &rewritten {
        repo.store().remove(FileType::Index, &f.to_hex())?;
        report.index_files_deleted += 1;
    }
    for f in &record.index_files {
        repo.store().remove(FileType::Index, &f.to_hex())?;
        report.index_files_deleted += 1;
    }
    repo.store().remove(FileType::Index, &record_id.to_hex())?;
    report.records += 1;
    repo.sync_index()
}

/// Staging files older than this in a local repository's `tmp/` were left by a writer that
/// failed or was killed (an upload stages a file and renames it within seconds).
pub const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Removes staging files that a failed upload left behind (best effort: a prune that cannot
/// clean them still runs).
fn remove_stale_staging(repo: &Repository) {
    match repo.remove_stale_staging(STALE_STAGING) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} staging files left by failed uploads"),
        Err(e) => tracing::warn!("cannot clean the staging folder: {e}"),
    }
}

/// Whether a blob is kept: marked used by a snapshot, or a dictionary. Dictionaries are
/// never collected, because the blobs compressed with them name them and no snapshot does
/// (see `format::dictionary`); there is one per PostgreSQL cluster, 64 KiB at most.
fn is_used(used: &IdSet, kind: BlobKind, id: &Id) -> Result<bool> {
    Ok(kind == BlobKind::Dict || used.contains(id)?)
}

/// Copies the used blobs of `packs` into new packs, filled by the writers' policy
/// (`crate::packer`), and stores them; returns their index entries. Nothing is indexed here:
/// the caller lists the new packs in the compacted index, written after they are stored.
fn repack(
    repo: &Repository,
    packs: &[Id],
    used: &IdSet,
    condemned: &HashSet<Id>,
    progress: &dyn Progress,
) -> Result<Vec<IndexPack>> {
    let mut out = Vec::new();
    let mut copied = IdSet::new()?;
    let mut packer = Packer::new(repo.keys().clone(), repo.config().pack_size);
    for pack in packs {
        let bytes = repo.read_pack(pack)?;
        if !bytes.matches_name() {
            return Err(Error::corrupt(format!("pack {pack}: contents do not match its name; run `cairn check --read-data` before pruning")));
        }
        for e in bytes.entries()? {
            if !is_used(used, e.kind, &e.id)? || copied.contains(&e.id)? {
                continue;
            }
            // Already stored in a pack that stays: no copy needed.
            if let Some(loc) = repo.lookup(&e.id)? {
                if !condemned.contains(&loc.pack) {
                    continue;
                }
            }
            bytes.open(&e).map_err(|err| {
                err.context(format!(
                    "pack {pack}: repacking refused, run `cairn check --read-data`"
                ))
            })?;
            copied.insert(e.id)?;
            let full = packer.add(&SealedBlob {
                kind: e.kind,
                id: e.id,
                raw_length: e.raw_length,
                bytes: bytes.sealed(&e)?.to_vec(),
            })?;
            if full {
                if let Some(p) = packer.flush(e.kind)? {
                    out.push(store_pack(repo.store(), p)?.0);
                }
            }
        }
        let size = bytes.len();
        progress.bytes(size);
        progress.pack(pack, PackEvent::Repacked { bytes: size });
    }
    for p in packer.flush_all()? {
        out.push(store_pack(repo.store(), p)?.0);
    }
    Ok(out)
}

/// Writes the packs of `inputs` (minus `excluded`) and `extra` as new index files, then the
/// packs of `waiting` as their headers list them; the last file supersedes every file of
/// `replaced`, so until it exists the inputs stay in force.
///
/// `waiting` are the packs that earlier records, still waiting for their sweep, condemn.
/// They stay listed because the files that listed them are among `replaced`, which this
/// prune's sweep deletes, and that sweep may run before theirs (a lease that held them back
/// can end meanwhile): unlisted, a pack that a snapshot committed since their mark uses could
/// not be read until their sweep rescued it. The records still name them, so no writer
/// deduplicates against them. They come last, so that the sweep that deletes them rewrites
/// few files.
fn write_compacted_index(
    repo: &Repository,
    inputs: &[Id],
    replaced: &[Id],
    extra: Vec<IndexPack>,
    excluded: &HashSet<Id>,
    waiting: &[Id],
) -> Result<()> {
    let mut out = IndexFileWriter::new(repo);
    for p in extra {
        out.push(p)?;
    }
    for id in inputs {
        for p in repo.read_index_file(id)?.packs {
            if !excluded.contains(&p.id) {
                out.push(p)?;
            }
        }
    }
    for pack in waiting {
        match repo.read_pack_header(pack) {
            Ok((size, blobs)) => out.push(IndexPack {
                id: *pack,
                size,
                blobs,
            })?,
            // Swept meanwhile: nothing left to list.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            // Its sweep deletes it; nothing could be read from it anyway.
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!("condemned pack {pack} is damaged: {e}");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    out.finish(replaced.to_vec())?;
    Ok(())
}
