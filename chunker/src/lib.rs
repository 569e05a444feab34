//! Content-defined chunking for Cairn: FastCDC v2020 with a per-tenant seed.
//!
//! The chunker does no I/O. A caller holds bytes in a buffer of its own and asks
//! [`Chunker::next_cut`] where the next chunk ends; [`StreamChunker`] adds an internal
//! buffer for callers that receive bytes in arbitrary pieces ("bytes in, chunks out").
//!
//! Invariants, relied on by deduplication and tested by the property tests:
//! - the cut points of a stream depend only on its bytes, the parameters and the seed,
//!   never on how the bytes were split into pushes;
//! - every chunk but the last is between `min` and `max` bytes; the last is 1..=`max`;
//! - the concatenation of the chunks is the input.

use std::borrow::Cow;

use fastcdc::v2020::{self, Normalization};

/// Chunk size bounds in bytes. Stored in a repository's config, so a repository keeps the
/// parameters it was created with even if the defaults change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Params {
    /// The defaults for new repositories: see docs/performance.md for the measurements.
    pub const DEFAULT: Params = Params {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 1024 * 1024,
    };

    /// Checks the bounds that FastCDC v2020 accepts and that `min <= avg <= max`.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(ParamsError(*self))
        }
    }
}

/// Chunker parameters outside what FastCDC v2020 supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError(pub Params);

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid chunker parameters min={} avg={} max={} (need {}..={} <= {}..={} <= {}..={})",
            self.0.min,
            self.0.avg,
            self.0.max,
            v2020::MINIMUM_MIN,
            v2020::MINIMUM_MAX,
            v2020::AVERAGE_MIN,
            v2020::AVERAGE_MAX,
            v2020::MAXIMUM_MIN,
            v2020::MAXIMUM_MAX
        )
    }
}

impl std::error::Error for ParamsError {}

/// Decides cut points. Cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Chunker {
    params: Params,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
    /// Cut every `params.max` bytes instead of by content (see [`Chunker::fixed`]).
    fixed: bool,
}

impl Chunker {
    /// A chunker with the given bounds whose gear tables are perturbed by `seed`, so that two
    /// tenants cut the same bytes at unrelated places.
    pub fn new(params: Params, seed: u64) -> Result<Self, ParamsError> {
        params.validate()?;
        let (mask_s, mask_l) = v2020::select_masks(params.avg, Normalization::Level1);
        let (gear, gear_ls) = v2020::get_gear_with_seed(seed);
        Ok(Chunker {
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
            fixed: false,
        })
    }

    /// A chunker that cuts every `size` bytes from the start of a stream, whatever the
    /// content. For files that change in place at fixed offsets (a database's pages), where
    /// content-defined cuts find nothing better and cost time. `size` must be a valid
    /// FastCDC maximum, so that readers' bound on a blob's size holds.
    pub fn fixed(size: usize) -> Result<Self, ParamsError> {
        let params = Params {
            min: size,
            avg: size,
            max: size,
        };
        if !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&size) {
            return Err(ParamsError(params));
        }
        let (gear, gear_ls) = v2020::get_gear_with_seed(0);
        Ok(Chunker {
            params,
            mask_s: 0,
            mask_l: 0,
            gear,
            gear_ls,
            fixed: true,
        })
    }

    pub fn params(&self) -> Params {
        self.params
    }

    /// The length of the next chunk at the start of `buf`, or `None` when more bytes are
    /// needed to decide. With `at_end` set (no more bytes will follow) a non-empty buffer always
    /// yields a cut. Without it, a cut is only returned when it cannot move as more bytes
    /// arrive: a hash match before the end of `buf`, or `max` bytes. Callers should therefore
    /// offer at least `max` bytes when they can, so that no buffer is scanned twice.
    pub fn next_cut(&self, buf: &[u8], at_end: bool) -> Option<usize> {
        if buf.is_empty() {
            return None;
        }
        let window = &buf[..buf.len().min(self.params.max)];
        if self.fixed {
            return (at_end || window.len() == self.params.max).then_some(window.len());
        }
        if window.len() <= self.params.min {
            return (at_end || window.len() == self.params.max).then_some(window.len());
        }
        let (_, cut) = v2020::cut_gear(
            window,
            self.params.min,
            self.params.avg,
            self.params.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        let cut = cut.clamp(1, window.len());
        if cut < window.len() || window.len() == self.params.max || at_end {
            Some(cut)
        } else {
            None
        }
    }
}

/// A push-based adapter: feed bytes in any pieces, receive whole chunks.
#[derive(Debug)]
pub struct StreamChunker {
    chunker: Chunker,
    buf: Vec<u8>,
}

impl StreamChunker {
    pub fn new(chunker: Chunker) -> Self {
        StreamChunker {
            chunker,
            buf: Vec::new(),
        }
    }

    /// Appends `data` and calls `emit` for every chunk that is now decided.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while self.buf.len() - start >= self.chunker.params.max {
            match self.chunker.next_cut(&self.buf[start..], false) {
                Some(n) => {
                    emit(&self.buf[start..start + n]);
                    start += n;
                }
                None => break,
            }
        }
        self.buf.drain(..start);
    }

    /// Emits the remaining chunks; the chunker is then empty and may be reused.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        let mut start = 0;
        while let Some(n) = self.chunker.next_cut(&self.buf[start..], true) {
            emit(&self.buf[start..start + n]);
            start += n;
        }
        self.buf.clear();
    }
}

/// Splits a whole slice (convenience for tests and small inputs).
pub fn split(chunker: &Chunker, data: &[u8]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut start = 0;
    while let Some(n) = chunker.next_cut(&data[start..], true) {
        cuts.push(n);
        start += n;
    }
    cuts
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fixed_cuts_at_every_size_bytes_and_keeps_the_rest_at_the_end() {
        let c = Chunker::fixed(64 * 1024).unwrap();
        let data = vec![7u8; 64 * 1024 * 3 + 100];
        assert_eq!(split(&c, &data), vec![65536, 65536, 65536, 100]);
        assert_eq!(c.next_cut(&data[..1000], false), None);
        assert!(Chunker::fixed(1).is_err());
    }
}
