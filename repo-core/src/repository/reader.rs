//! The one path from stored pack bytes to a blob's verified plaintext. Restore, check, mark,
//! prune's repack, repair and a writer's commit-time recheck all read blobs through here.
//!
//! Every read follows the same rule: what the index (or a pack header) claims about a blob is
//! bounded before anything is read or allocated for it; the sealed bytes are read (one blob
//! by range, a run of neighbouring blobs of one pack by one range, or a whole pack); each blob
//! is authenticated with its kind and id, decompressed within the repository's bound for its
//! kind, and its plaintext hashed and compared with its id. Offsets and lengths that come
//! from storage are only combined with checked arithmetic.

use super::*;
use crate::format::dictionary::{Dictionary, DictionarySource, NoDictionaries};
use crate::format::pack::{entry_bytes, parse_header, HeaderRead, PackEntry};

/// Dictionaries kept in memory by one process.
const DICTIONARIES_KEPT: usize = 8;

/// Neighbouring blobs of one pack, fetched with one ranged read (see [`coalesce`]). The
/// blobs are in offset order and do not overlap.
#[derive(Debug, Clone)]
pub struct BlobRun {
    pack: Id,
    blobs: Vec<(Id, BlobLocation)>,
}

impl BlobRun {
    pub fn pack(&self) -> &Id {
        &self.pack
    }

    /// The blobs of the run with where they are, in offset order.
    pub fn blobs(&self) -> &[(Id, BlobLocation)] {
        &self.blobs
    }

    /// The plaintext bytes the run's blobs claim together, `None` when the sum overflows.
    pub fn plain_len(&self) -> Option<u64> {
        self.blobs.iter().try_fold(0u64, |sum, (_, loc)| {
            sum.checked_add(u64::from(loc.raw_length))
        })
    }

    /// The byte range of the pack the run covers, `None` when a claimed end overflows.
    fn range(&self) -> Option<(u64, u64)> {
        let start = self.blobs.first()?.1.offset;
        let end = self.blobs.iter().try_fold(start, |end, (_, loc)| {
            Some(end.max(loc.offset.checked_add(u64::from(loc.length))?))
        })?;
        Some((start, end))
    }
}

/// Groups located blobs into runs that one ranged read each can fetch: sorted by pack and
/// offset, a blob joins the run before it when it is in the same pack, starts at or after the
/// end of the run's last blob, and the gap between them is at most `gap` bytes (reading a
/// small gap costs less than a second request).
pub fn coalesce(mut blobs: Vec<(Id, BlobLocation)>, gap: u64) -> Vec<BlobRun> {
    blobs.sort_by_key(|(_, l)| (l.pack, l.offset));
    let mut runs: Vec<BlobRun> = Vec::new();
    for (id, loc) in blobs {
        let joins = runs
            .last()
            .and_then(|r| r.blobs.last())
            .and_then(|(_, last)| {
                let end = last.offset.checked_add(u64::from(last.length))?;
                let after = loc.offset.checked_sub(end)?;
                Some(last.pack == loc.pack && after <= gap)
            })
            .unwrap_or(false);
        match runs.last_mut() {
            Some(run) if joins => run.blobs.push((id, loc)),
            _ => runs.push(BlobRun {
                pack: loc.pack,
                blobs: vec![(id, loc)],
            }),
        }
    }
    runs
}

/// Cuts the bytes a run covers (read from the run's first blob on) into each blob's sealed
/// bytes. The run's blobs are in offset order and do not overlap: `coalesce` joins a blob
/// only at or after the end of the one before.
fn cut_run<'r, 'b>(
    run: &'r BlobRun,
    bytes: &'b mut [u8],
) -> Result<Vec<(&'r Id, &'r BlobLocation, &'b mut [u8])>> {
    let pack = run.pack;
    let short = || Error::corrupt(format!("pack {pack}: short read"));
    let overflow = || Error::corrupt(format!("pack {pack}: a blob's claimed end overflows"));
    let mut pieces = Vec::with_capacity(run.blobs.len());
    let mut rest = bytes;
    let mut at = run.blobs.first().map_or(0, |(_, loc)| loc.offset);
    for (id, loc) in &run.blobs {
        let skip = loc
            .offset
            .checked_sub(at)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(short)?;
        let (_, tail) = rest.split_at_mut_checked(skip).ok_or_else(short)?;
        let (sealed, tail) = tail
            .split_at_mut_checked(loc.length as usize)
            .ok_or_else(short)?;
        pieces.push((id, loc, sealed));
        rest = tail;
        at = loc
            .offset
            .checked_add(u64::from(loc.length))
            .ok_or_else(overflow)?;
    }
    Ok(pieces)
}

impl Repository {
    /// The most plaintext a blob of `kind` may hold in this repository: the chunker's
    /// maximum for data, [`format::MAX_TREE_BLOB`] for trees.
    pub fn max_blob(&self, kind: BlobKind) -> u64 {
        match kind {
            BlobKind::Data => u64::from(self.config.chunker.max).min(format::MAX_DATA_BLOB),
            BlobKind::Tree => format::MAX_TREE_BLOB,
            BlobKind::Dict => format::MAX_DICT_BLOB,
        }
    }

    /// The most plaintext a read of a `wanted` blob stored as `stored` may give: the bound of
    /// each kind.
    ///
    /// A blob's id is the keyed hash of its plaintext alone, so a data chunk and a tree with
    /// the same bytes have the same id and are stored once, as whichever came first (a file
    /// may hold the bytes of a tree: the 8 bytes of an empty folder's tree are enough). A
    /// read therefore accepts a blob stored as the other kind: it is opened as what it was
    /// sealed as (the index's kind, which is authenticated), and its plaintext is still
    /// checked against the id, so it is exactly the content asked for.
    fn read_bound(&self, wanted: BlobKind, stored: BlobKind) -> u64 {
        self.max_blob(wanted).min(self.max_blob(stored))
    }

    /// Refuses a location claiming more than the blob asked for may hold in this
    /// repository, before anything is read or allocated for it.
    fn check_claim(&self, kind: BlobKind, id: &Id, loc: &BlobLocation) -> Result<()> {
        let max = self.read_bound(kind, loc.kind);
        if u64::from(loc.raw_length) > max || u64::from(loc.length) > format::max_sealed(max) {
            return Err(Error::corrupt(format!(
                "blob {id} in pack {} claims {} bytes ({} stored), more than a {kind:?} blob of this repository may hold ({max})",
                loc.pack, loc.raw_length, loc.length
            )));
        }
        Ok(())
    }

    /// Opens sealed bytes of a `wanted` blob in place, as the kind it is stored as (the
    /// buffer is left holding the compressed payload), and returns its verified plaintext.
    fn open_sealed(
        &self,
        wanted: BlobKind,
        id: &Id,
        loc: &BlobLocation,
        sealed: &mut [u8],
    ) -> Result<Vec<u8>> {
        let max = self.read_bound(wanted, loc.kind);
        blob::open_in_place_bounded(&self.keys, loc.kind, id, sealed, max, self)
            .map_err(|e| e.context(format!("pack {}", loc.pack)))
    }

    /// The sealed bytes of one blob, read by range once its location's claims are checked.
    fn read_claimed(&self, kind: BlobKind, id: &Id, loc: &BlobLocation) -> Result<Bytes> {
        self.check_claim(kind, id, loc)?;
        self.store
            .read_range(
                FileType::Pack,
                &loc.pack.to_hex(),
                loc.offset,
                u64::from(loc.length),
            )
            .map_err(|e| e.context(format!("pack {} (blob {id})", loc.pack)))
    }

    /// Reads a blob at a known location (one ranged read).
    pub fn read_blob_at(&self, kind: BlobKind, id: &Id, loc: &BlobLocation) -> Result<Vec<u8>> {
        let mut sealed = writable(self.read_claimed(kind, id, loc)?);
        self.open_sealed(kind, id, loc, &mut sealed)
    }

    /// The sealed bytes of a blob at a known location, once they have been checked to open
    /// to its plaintext: for copying a blob, still sealed, into a new pack. They are sealed
    /// as `loc.kind`, which is the kind to index the copy under.
    pub fn read_sealed_blob_at(
        &self,
        kind: BlobKind,
        id: &Id,
        loc: &BlobLocation,
    ) -> Result<Vec<u8>> {
        let sealed = self.read_claimed(kind, id, loc)?;
        blob::open_bounded(
            &self.keys,
            loc.kind,
            id,
            &sealed,
            self.read_bound(kind, loc.kind),
            self,
        )
        .map_err(|e| e.context(format!("pack {}", loc.pack)))?;
        Ok(sealed.to_vec())
    }

    /// Reads the blobs of a run with one ranged read and opens each in place, returning
    /// their plaintexts in the run's order. The blobs are wanted as `kind` (see
    /// [`Repository::read_bound`] for blobs stored as the other kind).
    pub fn read_run(&self, kind: BlobKind, run: &BlobRun) -> Result<Vec<(Id, Vec<u8>)>> {
        let mut bytes = self.read_run_bytes(kind, run)?;
        let pieces = cut_run(run, &mut bytes)?;
        pieces
            .into_par_iter()
            .map(|(id, loc, sealed)| Ok((*id, self.open_sealed(kind, id, loc, sealed)?)))
            .collect()
    }

    /// Like [`Repository::read_run`], decoding the blobs into `out` one after another in the
    /// run's order, each taking the plaintext length its location claims
    /// ([`BlobRun::plain_len`] is `out`'s length). Nothing is allocated per blob, which is
    /// what a restore of many small blobs spends its time on otherwise. A blob whose
    /// plaintext has another length is corrupt; after an error `out` holds nothing
    /// trustworthy.
    pub fn read_run_into(&self, kind: BlobKind, run: &BlobRun, out: &mut [u8]) -> Result<()> {
        if run.plain_len() != Some(out.len() as u64) {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "pack {}: a run's blobs do not fill the {} bytes given for them",
                    run.pack,
                    out.len()
                ),
            ));
        }
        let mut bytes = self.read_run_bytes(kind, run)?;
        let pieces = cut_run(run, &mut bytes)?;
        let mut slots = Vec::with_capacity(pieces.len());
        let mut rest = out;
        for (id, loc, sealed) in pieces {
            // `plain_len` summed these lengths to `out`'s length, so each split succeeds.
            let (slot, tail) = rest
                .split_at_mut_checked(loc.raw_length as usize)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Other,
                        format!("pack {}: a run is longer than its buffer", run.pack),
                    )
                })?;
            slots.push((id, loc, sealed, slot));
            rest = tail;
        }
        slots
            .into_par_iter()
            .try_for_each(|(id, loc, sealed, slot)| {
                let max = self.read_bound(kind, loc.kind);
                if slot.len() as u64 > max {
                    return Err(Error::corrupt(format!(
                        "blob {id} claims {} bytes, more than the {max} it may hold",
                        slot.len()
                    )));
                }
                blob::open_in_place_into(&self.keys, loc.kind, id, sealed, slot, self)
                    .map_err(|e| e.context(format!("pack {}", loc.pack)))
            })
    }

    /// Refuses a run any of whose blobs claims more than a blob asked for as `kind` may hold
    /// in this repository; a caller that allocates for a run's plaintext checks this first.
    pub fn check_run(&self, kind: BlobKind, run: &BlobRun) -> Result<()> {
        for (id, loc) in &run.blobs {
            self.check_claim(kind, id, loc)?;
        }
        Ok(())
    }

    /// The sealed bytes a run covers, read with one ranged read once every blob's claims
    /// are checked.
    fn read_run_bytes(&self, kind: BlobKind, run: &BlobRun) -> Result<bytes::BytesMut> {
        self.check_run(kind, run)?;
        let pack = run.pack;
        let overflow = || Error::corrupt(format!("pack {pack}: a blob's claimed end overflows"));
        let (start, end) = run.range().ok_or_else(overflow)?;
        let len = end.checked_sub(start).ok_or_else(overflow)?;
        let bytes = self
            .store
            .read_range(FileType::Pack, &pack.to_hex(), start, len)
            .map_err(|e| e.context(format!("pack {pack}")))?;
        Ok(writable(bytes))
    }

    /// A pack's size and header entries, read from its tail.
    pub fn read_pack_header(&self, pack: &Id) -> Result<(u64, Vec<PackEntry>)> {
        let name = pack.to_hex();
        let size = self.store.stat(FileType::Pack, &name)?;
        let mut want = size.min(64 * 1024);
        loop {
            // `want` never exceeds `size`: it starts at most `size`, and grows only to what
            // the header says it needs, which `parse_header` has checked against `size`.
            let tail = self
                .store
                .read_range(FileType::Pack, &name, size - want, want)?;
            match parse_header(&self.keys, pack, size, &tail)? {
                HeaderRead::Done(entries) => return Ok((size, entries)),
                HeaderRead::NeedMore(n) if n > want && n <= size => want = n,
                HeaderRead::NeedMore(_) => {
                    return Err(Error::corrupt(format!(
                        "pack {pack}: header cannot be read"
                    )))
                }
            }
        }
    }

    /// Reads a whole pack (check's `--read-data`, prune's repack).
    pub fn read_pack(&self, pack: &Id) -> Result<PackBytes<'_>> {
        let bytes = self.store.read(FileType::Pack, &pack.to_hex())?;
        Ok(PackBytes {
            repo: self,
            id: *pack,
            bytes,
        })
    }
}

/// A whole pack in memory, whose blobs are opened by the same rule as every other read.
pub struct PackBytes<'r> {
    repo: &'r Repository,
    id: Id,
    bytes: Bytes,
}

impl PackBytes<'_> {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the bytes hash to the pack's name (a pack is named by its content).
    pub fn matches_name(&self) -> bool {
        Id::of_bytes(&self.bytes) == self.id
    }

    /// The header's entries (each checked to lie inside the pack when it is opened).
    pub fn entries(&self) -> Result<Vec<PackEntry>> {
        match parse_header(&self.repo.keys, &self.id, self.len(), &self.bytes)? {
            HeaderRead::Done(e) => Ok(e),
            HeaderRead::NeedMore(_) => Err(Error::corrupt(format!(
                "pack {}: header cannot be read",
                self.id
            ))),
        }
    }

    /// The sealed bytes of an entry.
    pub fn sealed(&self, entry: &PackEntry) -> Result<&[u8]> {
        entry_bytes(&self.bytes, entry)
    }

    /// An entry's verified plaintext.
    pub fn open(&self, entry: &PackEntry) -> Result<Vec<u8>> {
        let sealed = self.sealed(entry)?;
        let max = self.repo.max_blob(entry.kind);
        blob::open_bounded(
            &self.repo.keys,
            entry.kind,
            &entry.id,
            sealed,
            max,
            self.repo,
        )
    }
}

/// Data blobs compressed with a dictionary (payload format 2) find it here: through the index,
/// read as a dictionary (whose own payload may not name one, so there is no chain to follow),
/// verified against its id like every blob, and kept for the rest of the process.
impl DictionarySource for Repository {
    fn dictionary(&self, id: &Id) -> Result<Arc<Dictionary>> {
        let poisoned = || Error::new(ErrorKind::Other, "dictionary cache poisoned");
        if let Some(d) = self
            .dictionaries
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .find(|d| d.id() == id)
        {
            return Ok(d.clone());
        }
        let loc = self.locate(id)?;
        let mut sealed = writable(self.read_claimed(BlobKind::Dict, id, &loc)?);
        let max = self.read_bound(BlobKind::Dict, loc.kind);
        let bytes = blob::open_in_place_bounded(
            &self.keys,
            loc.kind,
            id,
            &mut sealed,
            max,
            &NoDictionaries,
        )
        .map_err(|e| e.context(format!("pack {}", loc.pack)))?;
        let dict = Arc::new(Dictionary::new(*id, bytes));
        let mut kept = self.dictionaries.lock().map_err(|_| poisoned())?;
        if kept.len() >= DICTIONARIES_KEPT {
            kept.remove(0);
        }
        kept.push(dict.clone());
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pack: u8, offset: u64, length: u32) -> BlobLocation {
        BlobLocation {
            kind: BlobKind::Data,
            pack: Id([pack; 32]),
            offset,
            length,
            raw_length: 1,
        }
    }

    fn shape(runs: &[BlobRun]) -> Vec<Vec<u64>> {
        runs.iter()
            .map(|r| r.blobs().iter().map(|(_, l)| l.offset).collect())
            .collect()
    }

    #[test]
    fn coalesce_joins_neighbours_of_one_pack_within_the_gap() {
        let blobs = vec![
            (Id([1; 32]), at(1, 200, 100)),
            (Id([2; 32]), at(1, 0, 100)),
            // A gap of 100 after the blob ending at 300: joins with a gap of 100.
            (Id([3; 32]), at(1, 400, 100)),
            // A gap of 101: starts a new run.
            (Id([4; 32]), at(1, 601, 100)),
            // Another pack: a new run even when the offsets would join.
            (Id([5; 32]), at(2, 701, 10)),
            // Overlapping the blob before it: never joins.
            (Id([6; 32]), at(2, 705, 10)),
        ];
        let runs = coalesce(blobs, 100);
        assert_eq!(
            shape(&runs),
            vec![vec![0, 200, 400], vec![601], vec![701], vec![705]]
        );
        assert_eq!(runs[0].range(), Some((0, 500)));
        assert_eq!(runs[0].pack(), &Id([1; 32]));
    }

    #[test]
    fn a_run_whose_claimed_end_overflows_has_no_range() {
        let runs = coalesce(vec![(Id([1; 32]), at(1, u64::MAX - 5, 100))], 100);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].range(), None);
    }
}
