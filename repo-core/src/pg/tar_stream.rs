//! A reader of the tar stream `pg_basebackup -Ft -D -` writes: ustar headers of 512 bytes,
//! each followed by the entry's content padded to 512 bytes, ended by zero blocks.
//!
//! Only what PostgreSQL writes is accepted (regular files, folders, symlinks; names of up to
//! 255 bytes through the ustar prefix); anything else is a clear error rather than a guess.
//! Every number is checked: a size that does not fit or a header whose checksum is wrong
//! stops the backup. Content is read straight from the underlying stream through a
//! [`std::io::Take`], so an entry of any size costs no memory.

use std::io::{self, Read};

use crate::error::{Error, ErrorKind, Result};

const BLOCK: usize = 512;

/// What kind of entry a header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry's header.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// The path as stored, without a trailing `/`.
    pub(crate) path: Vec<u8>,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) size: u64,
    pub(crate) link_target: Vec<u8>,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
}

/// Reads headers and content in turn from `R`.
pub(crate) struct TarStream<R> {
    inner: R,
    /// Content and padding of the previous entry not read yet.
    skip: u64,
    ended: bool,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Command,
        format!("pg_basebackup's tar stream: {}", message.into()),
    )
}

impl<R: Read> TarStream<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarStream {
            inner,
            skip: 0,
            ended: false,
        }
    }

    /// The next entry's header, or `None` at the end of the archive. The entry's content is
    /// then read with [`TarStream::content`]; whatever of it is not read is skipped here.
    pub(crate) fn next_header(&mut self) -> Result<Option<Header>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut block = [0u8; BLOCK];
        if !read_block(&mut self.inner, &mut block)? {
            return Err(bad("it ends without the end-of-archive blocks"));
        }
        if block.iter().all(|&b| b == 0) {
            self.ended = true;
            return Ok(None);
        }
        let header = parse(&block)?;
        let padded = header
            .size
            .checked_add((BLOCK as u64 - header.size % BLOCK as u64) % BLOCK as u64)
            .ok_or_else(|| bad("an entry's size overflows"))?;
        self.skip = padded;
        Ok(Some(header))
    }

    /// The underlying stream, for what follows the archive's end.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The content of the entry whose header was returned last: exactly `size` bytes.
    pub(crate) fn content(&mut self, size: u64) -> Content<'_, R> {
        Content {
            stream: self,
            left: size,
        }
    }

    fn skip_rest(&mut self) -> Result<()> {
        let n = io::copy(&mut (&mut self.inner).take(self.skip), &mut io::sink())
            .map_err(|e| Error::io("reading pg_basebackup's output", e))?;
        if n != self.skip {
            return Err(bad("it ends inside an entry"));
        }
        self.skip = 0;
        Ok(())
    }
}

/// An entry's content; reading it past its size returns end of file.
pub(crate) struct Content<'a, R> {
    stream: &'a mut TarStream<R>,
    left: u64,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.stream.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pg_basebackup's tar stream ends inside a file",
            ));
        }
        self.left -= n as u64;
        self.stream.skip = self.stream.skip.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Fills `block`; false when the stream ended before its first byte.
fn read_block(r: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool> {
    let mut filled = 0;
    while filled < BLOCK {
        match r.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(bad("it ends inside a header")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading pg_basebackup's output", e)),
        }
    }
    Ok(true)
}

/// A NUL-terminated field.
fn field(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A numeric field: octal digits (surrounded by spaces or NULs), or base-256 when the
/// first byte has its high bit set.
fn number(bytes: &[u8], what: &str) -> Result<u64> {
    if let Some((&first, rest)) = bytes.split_first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return Err(bad(format!("negative {what}")));
            }
            let mut v: u64 = u64::from(first & 0x3f);
            for &b in rest {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| bad(format!("{what} does not fit in 64 bits")))?;
            }
            return Ok(v);
        }
    }
    let text = field(bytes);
    let digits: Vec<u8> = text.iter().copied().filter(|b| *b != b' ').collect();
    if digits.is_empty() {
        return Ok(0);
    }
    let mut v: u64 = 0;
    for d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return Err(bad(format!("{what} is not an octal number")));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| bad(format!("{what} does not fit in 64 bits")))?;
    }
    Ok(v)
}

fn name_field(bytes: &[u8]) -> Option<String> {
    let f = field(bytes);
    (!f.is_empty()).then(|| String::from_utf8_lossy(f).into_owned())
}

fn parse(block: &[u8; BLOCK]) -> Result<Header> {
    let stored = number(&block[148..156], "the header checksum")?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(bad("a header's checksum is wrong"));
    }
    if &block[257..262] != b"ustar" {
        return Err(bad("a header is not in ustar format"));
    }
    let mut path = Vec::new();
    let prefix = field(&block[345..500]);
    if !prefix.is_empty() {
        path.extend_from_slice(prefix);
        path.push(b'/');
    }
    path.extend_from_slice(field(&block[0..100]));
    while path.last() == Some(&b'/') {
        path.pop();
    }
    let kind = match block[156] {
        b'0' | 0 | b'7' => EntryKind::File,
        b'5' => EntryKind::Dir,
        b'2' => EntryKind::Symlink,
        other => {
            return Err(bad(format!(
                "entry {} has type {:?}, which a base backup does not hold",
                String::from_utf8_lossy(&path),
                char::from(other)
            )))
        }
    };
    let size = number(&block[124..136], "a size")?;
    let small = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(format!("{what} too large")));
    Ok(Header {
        kind,
        mode: small(number(&block[100..108], "a mode")?, "a mode")? & 0o7777,
        uid: small(number(&block[108..116], "a uid")?, "a uid")?,
        gid: small(number(&block[116..124], "a gid")?, "a gid")?,
        mtime: i64::try_from(number(&block[136..148], "a time")?)
            .map_err(|_| bad("a time too large"))?,
        size: if kind == EntryKind::File { size } else { 0 },
        link_target: field(&block[157..257]).to_vec(),
        user: name_field(&block[265..297]),
        group: name_field(&block[297..329]),
        path,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000600");
        b[108..115].copy_from_slice(b"0000764");
        b[116..123].copy_from_slice(b"0000764");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[136..147].copy_from_slice(b"14500000000");
        b[156] = kind;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum::<u64>() + 8 * 32;
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    fn archive(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in entries {
            out.extend_from_slice(&header(name, *kind, data.len() as u64));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
        out
    }

    #[test]
    fn reads_entries_and_skips_unread_content() {
        let data = archive(&[
            ("base/", b'5', b""),
            ("base/1", b'0', b"hello"),
            ("x", b'0', &[1u8; 700]),
        ]);
        let mut t = TarStream::new(&data[..]);
        let h = t.next_header().unwrap().unwrap();
        assert_eq!((h.path.as_slice(), h.kind), (&b"base"[..], EntryKind::Dir));
        let h = t.next_header().unwrap().unwrap();
        let mut s = String::new();
        t.content(h.size).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let h = t.next_header().unwrap().unwrap();
        assert_eq!(h.size, 700);
        assert!(t.next_header().unwrap().is_none());
    }

    #[test]
    fn numbers_in_octal_and_base_256() {
        assert_eq!(number(b"0000644\0", "x").unwrap(), 0o644);
        assert_eq!(number(b"   17 \0", "x").unwrap(), 0o17);
        // A size past the octal field's 8 GiB, as GNU tar and PostgreSQL write it.
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x02; // 2 << 32
        assert_eq!(number(&big, "x").unwrap(), 2 << 32);
        big[0] = 0xC0;
        assert!(number(&big, "x").is_err(), "negative");
        assert!(number(b"0000899\0", "x").is_err());
        let mut huge = [0xFFu8; 12];
        huge[0] = 0xBF;
        assert!(number(&huge, "x").is_err(), "overflow");
    }

    #[test]
    fn damage_is_an_error_not_a_guess() {
        let mut data = archive(&[("a", b'0', b"abc")]);
        data[0] = b'b';
        assert!(TarStream::new(&data[..]).next_header().is_err());
        let data = archive(&[("a", b'0', &[0u8; 2000])]);
        let mut t = TarStream::new(&data[..700]);
        let h = t.next_header().unwrap().unwrap();
        let mut sink = Vec::new();
        assert!(t.content(h.size).read_to_end(&mut sink).is_err());
        let data = archive(&[("dev", b'3', b"")]);
        assert!(TarStream::new(&data[..]).next_header().is_err());
        assert!(TarStream::new(&[][..]).next_header().is_err());
    }
}
