//! The `Range` header of a GET, resolved against the object's size.
//!
//! restic reads pack headers and blobs by range (`bytes=OFF-` or `bytes=OFF-END`), so ranges
//! must be exact. One range is served; a header that cannot be parsed, or asks for several
//! ranges, is ignored and the whole object is sent, as HTTP allows. A range that starts at
//! or after the end is unsatisfiable (416); an end past the object is cut to the object, as
//! HTTP requires (the client compares the length it got with the length it asked for).

/// What to send of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole object.
    Whole,
    /// 206 with `len` bytes at `offset`.
    Part { offset: u64, len: u64 },
    /// 416: nothing of the object is in the range.
    Unsatisfiable,
}

/// Resolves a `Range` header value against an object of `size` bytes.
pub fn plan(header: Option<&str>, size: u64) -> Plan {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Plan::Whole;
    };
    if spec.contains(',') {
        return Plan::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Plan::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                return Plan::Unsatisfiable;
            }
            let len = n.min(size);
            Plan::Part {
                offset: size.saturating_sub(len),
                len,
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if start >= size {
                return Plan::Unsatisfiable;
            }
            // `last` is inclusive; cut it to the object's last byte.
            let last_byte = match end {
                Some(e) if e < start => return Plan::Whole,
                Some(e) => e.min(size.saturating_sub(1)),
                None => size.saturating_sub(1),
            };
            match last_byte.checked_sub(start).and_then(|d| d.checked_add(1)) {
                Some(len) => Plan::Part { offset: start, len },
                None => Plan::Whole,
            }
        }
        _ => Plan::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(plan(None, 10), Plan::Whole);
        assert_eq!(
            plan(Some("bytes=0-"), 10),
            Plan::Part { offset: 0, len: 10 }
        );
        assert_eq!(
            plan(Some("bytes=2-4"), 10),
            Plan::Part { offset: 2, len: 3 }
        );
        assert_eq!(
            plan(Some("bytes=8-20"), 10),
            Plan::Part { offset: 8, len: 2 }
        );
        assert_eq!(
            plan(Some("bytes=9-9"), 10),
            Plan::Part { offset: 9, len: 1 }
        );
        assert_eq!(plan(Some("bytes=10-"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-3"), 10), Plan::Part { offset: 7, len: 3 });
        assert_eq!(
            plan(Some("bytes=-30"), 10),
            Plan::Part { offset: 0, len: 10 }
        );
        assert_eq!(plan(Some("bytes=-0"), 10), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=5-2"), 10), Plan::Whole);
        assert_eq!(plan(Some("bytes=0-1,3-4"), 10), Plan::Whole);
        assert_eq!(plan(Some("items=0-1"), 10), Plan::Whole);
        assert_eq!(plan(Some("bytes=x-1"), 10), Plan::Whole);
        assert_eq!(plan(Some("bytes=+1-2"), 10), Plan::Whole);
        assert_eq!(
            plan(Some("bytes=0-18446744073709551615"), u64::MAX),
            Plan::Part {
                offset: 0,
                len: u64::MAX
            }
        );
        assert_eq!(
            plan(Some("bytes=0-99999999999999999999999"), 10),
            Plan::Whole
        );
    }
}
