//! The handle's mutable state ([`Inner`]) and its lowest layer: reading
//! and writing bytes, words and record headers (through the running
//! transaction when there is one, else the map or the file) with bounds
//! and sanity checks, the chain of a hash, and cycle detection for list
//! walks ([`LoopCheck`]).

use std::path::PathBuf;

use super::record::ChainHint;
use crate::error::{Error, Result};
use crate::format::{DEAD_MAGIC, MAGIC, REC_SIZE, Record, data_start};
use crate::hash::HashKind;
use crate::io::Io;
use crate::lock::{AllRecord, LockRec};
use crate::mutex::MutexArea;
use crate::transaction::Tx;

/// The handle's mutable state. Everything lives behind a `RefCell` in
/// [`Tdb`](super::Tdb), so that lock guards and traversal callbacks can use the handle
/// through shared references.
pub(crate) struct Inner {
    pub(crate) io: Io,
    pub(crate) tx: Option<Box<Tx>>,
    pub(crate) hash_size: u32,
    /// `u64::MAX / hash_size + 1`, for [`Inner::bucket`].
    pub(crate) mod_m: u64,
    pub(crate) hash: HashKind,
    pub(crate) features: u32,
    pub(crate) mutexes: Option<MutexArea>,
    pub(crate) locks: Vec<LockRec>,
    pub(crate) allrecord: AllRecord,
    /// Offsets of the records that our running traversals sit on.
    pub(crate) travlocks: Vec<u32>,
    pub(crate) traverse_read: u32,
    pub(crate) traverse_write: u32,
    pub(crate) nolock: bool,
    pub(crate) seqnum: bool,
    pub(crate) allow_nesting: bool,
    pub(crate) max_dead: u32,
    /// Set while a transaction takes its locks (the transaction lock then
    /// does not count as an "extra" lock).
    pub(crate) starting_tx: bool,
    pub(crate) chain_hint: Option<ChainHint>,
    pub(crate) path: PathBuf,
}

/// Brent-style cycle detector for walking a linked list of records without
/// extra reads: the walker compares each pointer with a saved one that jumps
/// ahead at power-of-two intervals.
pub(crate) struct LoopCheck {
    saved: u32,
    power: u32,
    steps: u32,
}

impl LoopCheck {
    pub fn new(start: u32) -> Self {
        LoopCheck {
            saved: start,
            power: 1,
            steps: 0,
        }
    }

    #[inline]
    pub fn step(&mut self, next: u32) -> Result<()> {
        if next == 0 {
            return Ok(());
        }
        if next == self.saved {
            return Err(Error::corrupt(next, "loop in record list"));
        }
        self.steps += 1;
        if self.steps == self.power {
            self.saved = next;
            self.power = self.power.saturating_mul(2);
            self.steps = 0;
        }
        Ok(())
    }
}

impl Inner {
    // ----- byte access, through the transaction when one is active -----

    #[inline]
    pub(crate) fn size(&self) -> u32 {
        match &self.tx {
            Some(tx) => tx.size,
            None => self.io.size,
        }
    }

    #[inline]
    pub(crate) fn read(&mut self, off: u32, buf: &mut [u8]) -> Result<()> {
        match &mut self.tx {
            Some(tx) => tx.read(&mut self.io, off, buf),
            None => self.io.read(off, buf),
        }
    }

    #[inline]
    pub(crate) fn read_u32(&mut self, off: u32) -> Result<u32> {
        if self.tx.is_none() {
            return self.io.read_u32(off);
        }
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    #[inline]
    pub(crate) fn write(&mut self, off: u32, buf: &[u8]) -> Result<()> {
        if self.io.read_only || self.traverse_read > 0 {
            return Err(Error::ReadOnly);
        }
        match &mut self.tx {
            Some(tx) => tx.write(&mut self.io, off, buf),
            None => self.io.write(off, buf),
        }
    }

    #[inline]
    pub(crate) fn write_u32(&mut self, off: u32, v: u32) -> Result<()> {
        self.write(off, &v.to_ne_bytes())
    }

    /// Make sure `off .. off+len` exists in the current view.
    #[inline]
    pub(crate) fn oob(&mut self, off: u32, len: u32) -> Result<()> {
        match &self.tx {
            Some(tx) => {
                if off as u64 + len as u64 <= tx.size as u64 {
                    Ok(())
                } else {
                    Err(Error::corrupt(off, "access beyond the end of the file"))
                }
            }
            None => self.io.oob(off, len),
        }
    }

    /// Read a record header without any validation.
    #[inline]
    pub(crate) fn read_rec_raw(&mut self, off: u32) -> Result<Record> {
        if self.tx.is_none() {
            return self.io.read_record(off);
        }
        let mut b = [0u8; REC_SIZE as usize];
        self.read(off, &mut b)?;
        Ok(Record::from_bytes(&b))
    }

    /// Read and validate the header of a used or dead record.
    #[inline]
    pub(crate) fn read_rec(&mut self, off: u32) -> Result<Record> {
        if off < data_start(self.hash_size) {
            return Err(Error::corrupt(off, "record pointer into the header"));
        }
        let r = self.read_rec_raw(off)?;
        if r.magic != MAGIC && r.magic != DEAD_MAGIC {
            return Err(Error::corrupt(off, "bad record magic"));
        }
        if r.key_len as u64 + r.data_len as u64 > r.rec_len as u64 {
            return Err(Error::corrupt(off, "record contents exceed its length"));
        }
        self.check_extent(off, r.rec_len)?;
        self.check_next(off, r.next)?;
        Ok(r)
    }

    /// The record at `off` with `rec_len` must lie inside the file.
    #[inline]
    pub(crate) fn check_extent(&mut self, off: u32, rec_len: u32) -> Result<()> {
        let total = REC_SIZE as u64 + rec_len as u64;
        if total > u32::MAX as u64 {
            return Err(Error::corrupt(off, "record length overflows"));
        }
        self.oob(off, total as u32)
    }

    /// A `next` pointer must be 0 or point at a record header in the file.
    #[inline]
    pub(crate) fn check_next(&mut self, off: u32, next: u32) -> Result<()> {
        if next == 0 {
            return Ok(());
        }
        if next < data_start(self.hash_size) {
            return Err(Error::corrupt(off, "next pointer into the header"));
        }
        self.oob(next, REC_SIZE)
    }

    #[inline]
    pub(crate) fn rec_write(&mut self, off: u32, r: &Record) -> Result<()> {
        self.write(off, &r.to_bytes())
    }

    /// Does the file hold `key` at `off`?
    #[inline]
    pub(super) fn key_eq(&mut self, off: u32, key: &[u8]) -> Result<bool> {
        let len = key.len() as u32;
        if self.tx.is_none()
            && let Some(s) = self.io.mapped_slice(off, len)?
        {
            return Ok(s == key);
        }
        let mut buf = [0u8; 256];
        let mut done = 0usize;
        while done < key.len() {
            let n = std::cmp::min(buf.len(), key.len() - done);
            self.read(off + done as u32, &mut buf[..n])?;
            if buf[..n] != key[done..done + n] {
                return Ok(false);
            }
            done += n;
        }
        Ok(true)
    }

    /// Append `len` bytes at `off` to `out`.
    #[inline]
    pub(crate) fn read_append(&mut self, off: u32, len: u32, out: &mut Vec<u8>) -> Result<()> {
        if self.tx.is_none()
            && let Some(s) = self.io.mapped_slice(off, len)?
        {
            out.extend_from_slice(s);
            return Ok(());
        }
        let start = out.len();
        out.resize(start + len as usize, 0);
        self.read(off, &mut out[start..])
    }

    /// Run `f` on `len` bytes at `off`, straight from the map when possible.
    pub(crate) fn with_bytes<R>(
        &mut self,
        off: u32,
        len: u32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        if self.tx.is_none()
            && let Some(s) = self.io.mapped_slice(off, len)?
        {
            return Ok(f(s));
        }
        let mut v = Vec::with_capacity(len as usize);
        self.read_append(off, len, &mut v)?;
        Ok(f(&v))
    }

    // ----- hashing -----

    /// `hash % hash_size`, without a division (Lemire's fastmod with a
    /// precomputed multiplier; exact for all 32-bit operands).
    #[inline]
    pub(crate) fn bucket(&self, hash: u32) -> u32 {
        let low = self.mod_m.wrapping_mul(hash as u64);
        ((low as u128 * self.hash_size as u128) >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fastmod_is_exact() {
        for d in [
            1u32,
            2,
            3,
            7,
            131,
            10007,
            100_001,
            1 << 20,
            u32::MAX / 4 - 50,
        ] {
            let m = (u64::MAX / d as u64).wrapping_add(1);
            let f = |a: u32| ((m.wrapping_mul(a as u64) as u128 * d as u128) >> 64) as u32;
            let mut x = 0x1234_5678u32;
            for a in [0, 1, d - 1, d, d.wrapping_add(1), u32::MAX, u32::MAX - 1] {
                assert_eq!(f(a), a % d, "{a} % {d}");
            }
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                assert_eq!(f(x), x % d, "{x} % {d}");
            }
        }
    }
}
