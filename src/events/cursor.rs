//! Cursors: where a reader is in every shard's ring.
//!
//! Written `<epoch>-<p0>-<p1>-...` in lower-case hex: the process's start
//! epoch, then the sequence of the last event seen from each shard.
//! Clients treat it as opaque. Cheap to write per event (a subscriber
//! writes one with every event it sends).

/// A position in every shard's ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub epoch: u64,
    pub pos: Vec<u64>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    /// Not a cursor at all: the client's mistake (400).
    #[error("malformed cursor")]
    Malformed,
    /// A cursor of another process (a restart, or another shard count):
    /// what it points at is gone, so the client must re-list.
    #[error("cursor from another server run")]
    Foreign,
}

/// Cursors longer than this are refused before parsing.
const MAX_LEN: usize = 17 * 257;

impl Cursor {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        write_parts(out, self.epoch, &self.pos, None);
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = Vec::with_capacity(8 + 9 * self.pos.len());
        self.write(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parses a cursor for this process (`epoch`, `shards`).
    pub(crate) fn parse(s: &str, epoch: u64, shards: usize) -> Result<Cursor, CursorError> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(CursorError::Malformed);
        }
        let mut parts = s.split('-').map(|p| {
            if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CursorError::Malformed);
            }
            u64::from_str_radix(p, 16).map_err(|_| CursorError::Malformed)
        });
        let e = parts.next().ok_or(CursorError::Malformed)??;
        let pos = parts.collect::<Result<Vec<_>, _>>()?;
        if pos.is_empty() {
            return Err(CursorError::Malformed);
        }
        if e != epoch || pos.len() != shards {
            return Err(CursorError::Foreign);
        }
        Ok(Cursor { epoch, pos })
    }
}

/// Writes the cursor `epoch, pos` with `pos[at.0]` replaced by `at.1`:
/// the cursor just after one event of shard `at.0`, without copying `pos`.
/// Written once per event per subscriber, so by hand: `write!` with `{:x}`
/// was a sixth of a shard's time with a thousand subscribers.
pub(crate) fn write_parts(out: &mut Vec<u8>, epoch: u64, pos: &[u64], at: Option<(usize, u64)>) {
    push_hex(out, epoch);
    for (i, p) in pos.iter().enumerate() {
        let p = match at {
            Some((s, seq)) if s == i => seq,
            _ => *p,
        };
        out.push(b'-');
        push_hex(out, p);
    }
}

/// Lower-case hex without leading zeros (`0` for zero), as `{:x}` writes.
pub(crate) fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..n).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tells_foreign_from_malformed() {
        let c = Cursor {
            epoch: 0x18f3a,
            pos: vec![0, 255, 7],
        };
        let s = c.encode();
        assert_eq!(s, "18f3a-0-ff-7");
        let mut out = Vec::new();
        for v in [0, 1, 0xf, 0x10, 0xabc, u64::MAX] {
            out.clear();
            push_hex(&mut out, v);
            assert_eq!(out, format!("{v:x}").into_bytes(), "{v}");
        }
        assert_eq!(Cursor::parse(&s, 0x18f3a, 3), Ok(c));
        assert_eq!(Cursor::parse(&s, 1, 3), Err(CursorError::Foreign));
        assert_eq!(Cursor::parse(&s, 0x18f3a, 2), Err(CursorError::Foreign));
        for bad in [
            "",
            "zz-1",
            "1",
            "1--2",
            "1-2-",
            "1-12345678901234567",
            "1-+2",
        ] {
            assert_eq!(
                Cursor::parse(bad, 1, 2),
                Err(CursorError::Malformed),
                "{bad}"
            );
        }
        let mut out = Vec::new();
        write_parts(&mut out, 1, &[1, 2], Some((1, 10)));
        assert_eq!(out, b"1-1-a");
    }
}
