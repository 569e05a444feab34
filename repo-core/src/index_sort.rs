//! An external sort of index entries, for building a cache's blob table from scratch.
//!
//! Inserting millions of entries into redb in the order the index files list them writes the
//! B-tree at random: once it outgrows the page cache every insert reads and rewrites pages
//! (building the table for 10 million blobs that way took 53 s). Entries are instead gathered
//! in runs of at most [`RUN_ENTRIES`], each sorted and written to a file in a scratch folder,
//! and the runs are merged, so that the cache receives every entry in id order and builds its
//! B-tree sequentially.
//!
//! Memory: one run (about 42 MB) while gathering; one record and a read buffer per run while
//! merging. The scratch folder is removed when the sorter or its merge is dropped, and a
//! leftover one (from a killed process) is removed when a new sort starts at the same place.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::cache::{BlobLocation, LOCATION_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

/// A blob id, the position of the index file that lists it, and its encoded location.
pub const RECORD: usize = 32 + 4 + LOCATION_LEN;
/// Entries held in memory before a run is written out.
const RUN_ENTRIES: usize = 500_000;
/// Read buffer per run while merging.
const READ_BUFFER: usize = 64 << 10;

type Record = [u8; RECORD];

/// One entry coming out of the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortedEntry {
    pub id: Id,
    /// Position of the listing index file in the caller's list.
    pub file: u32,
    pub location: BlobLocation,
}

fn record(id: &Id, file: u32, location: &BlobLocation) -> Record {
    let mut r = [0u8; RECORD];
    r[..32].copy_from_slice(&id.0);
    // Big-endian, so that equal ids sort by file position.
    r[32..36].copy_from_slice(&file.to_be_bytes());
    r[36..].copy_from_slice(&location.encode());
    r
}

fn entry(r: &Record) -> Result<SortedEntry> {
    let mut file = [0u8; 4];
    file.copy_from_slice(&r[32..36]);
    Ok(SortedEntry {
        id: Id::from_slice(&r[..32])?,
        file: u32::from_be_bytes(file),
        location: BlobLocation::decode(&r[36..])?,
    })
}

/// Removes the scratch folder when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

/// Gathers entries in any order; [`EntrySorter::into_merged`] yields them by id.
pub struct EntrySorter {
    scratch: Scratch,
    run: Vec<Record>,
    spilled: Vec<PathBuf>,
}

impl EntrySorter {
    /// A sorter whose runs go to the folder `dir`, which must not be shared with another
    /// process; whatever is there is removed first.
    pub fn new(dir: PathBuf) -> Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &dir, e)),
        }
        Ok(EntrySorter {
            scratch: Scratch(dir),
            run: Vec::new(),
            spilled: Vec::new(),
        })
    }

    pub fn push(&mut self, id: &Id, file: u32, location: &BlobLocation) -> Result<()> {
        if self.run.len() >= RUN_ENTRIES {
            self.spill()?;
        }
        self.run.push(record(id, file, location));
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        if self.spilled.is_empty() {
            std::fs::create_dir_all(&self.scratch.0)
                .map_err(|e| io("creating", &self.scratch.0, e))?;
        }
        self.run.sort_unstable();
        let path = self
            .scratch
            .0
            .join(format!("run-{:05}", self.spilled.len()));
        let f = File::create(&path).map_err(|e| io("creating", &path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for r in &self.run {
            w.write_all(r).map_err(|e| io("writing", &path, e))?;
        }
        w.flush().map_err(|e| io("writing", &path, e))?;
        self.run.clear();
        self.spilled.push(path);
        Ok(())
    }

    /// Every pushed entry in (id, file position) order.
    pub fn into_merged(mut self) -> Result<Merged> {
        self.run.sort_unstable();
        let mut sources = Vec::with_capacity(self.spilled.len() + 1);
        for path in &self.spilled {
            let f = File::open(path).map_err(|e| io("opening", path, e))?;
            sources.push(Source::File {
                reader: BufReader::with_capacity(READ_BUFFER, f),
                path: path.clone(),
            });
        }
        sources.push(Source::Memory(std::mem::take(&mut self.run).into_iter()));
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (k, s) in sources.iter_mut().enumerate() {
            if let Some(r) = s.next()? {
                heap.push(Reverse((r, k)));
            }
        }
        Ok(Merged {
            _scratch: self.scratch,
            sources,
            heap,
        })
    }
}

enum Source {
    File {
        reader: BufReader<File>,
        path: PathBuf,
    },
    Memory(std::vec::IntoIter<Record>),
}

impl Source {
    fn next(&mut self) -> Result<Option<Record>> {
        match self {
            Source::Memory(it) => Ok(it.next()),
            Source::File { reader, path } => {
                let mut r = [0u8; RECORD];
                match reader.read_exact(&mut r) {
                    Ok(()) => Ok(Some(r)),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(io("reading", path, e)),
                }
            }
        }
    }
}

/// The merge of a sorter's runs: an iterator over entries in (id, file position) order.
pub struct Merged {
    _scratch: Scratch,
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<(Record, usize)>>,
}

impl Iterator for Merged {
    type Item = Result<SortedEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((r, k)) = self.heap.pop()?;
        match self.sources[k].next() {
            Ok(Some(next)) => self.heap.push(Reverse((next, k))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(entry(&r))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::id::BlobKind;

    fn loc(n: u64) -> BlobLocation {
        BlobLocation {
            kind: BlobKind::Data,
            pack: Id([7; 32]),
            offset: n,
            length: 1,
            raw_length: 2,
        }
    }

    /// A folder left by a killed load (runs of another sort) is removed before a new sort
    /// uses the place, so its records never reach the merge.
    #[test]
    fn a_leftover_scratch_folder_is_removed_first() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("sort");
        std::fs::create_dir(&scratch).unwrap();
        std::fs::write(scratch.join("run-00000"), vec![9u8; 10 * RECORD]).unwrap();
        let mut s = EntrySorter::new(scratch.clone()).unwrap();
        assert!(!scratch.exists());
        s.push(&Id([1; 32]), 0, &loc(5)).unwrap();
        let got: Vec<SortedEntry> = s.into_merged().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].location.offset, 5);
    }

    #[test]
    fn merges_spilled_runs_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("sort");
        let mut s = EntrySorter::new(scratch.clone()).unwrap();
        // More than two runs, ids in a scrambled order, one id listed by two files.
        let n = (2 * RUN_ENTRIES + 1234) as u64;
        for i in 0..n {
            let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&k.to_be_bytes());
            s.push(&Id(id), (i % 5) as u32, &loc(k)).unwrap();
        }
        s.push(&Id([0; 32]), 9, &loc(1)).unwrap();
        assert_eq!(s.spilled.len(), 2);
        let merged = s.into_merged().unwrap();
        let mut last: Option<(Id, u32)> = None;
        let mut count = 0u64;
        for e in merged {
            let e = e.unwrap();
            if e.id != Id([0; 32]) {
                assert_eq!(e.location.offset.to_be_bytes(), e.id.0[..8]);
            }
            if let Some(prev) = last {
                assert!(prev < (e.id, e.file), "out of order");
            }
            last = Some((e.id, e.file));
            count += 1;
        }
        assert_eq!(count, n + 1);
        assert!(!scratch.exists(), "the scratch folder is removed");
    }
}
