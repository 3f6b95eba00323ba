//! Records: finding a key in its chain, storing (in place when it fits,
//! else in new space), deleting (marking dead, trimming dead records
//! beyond the handle's limit), wiping, and the sequence number bump, all on
//! an already locked chain; and the handle's record operations that lock
//! the chain around them ([`Tdb::fetch`], [`Tdb::store`], ...).

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Inner, LoopCheck, Tdb};
use crate::error::{Error, Result};
use crate::format::{
    self, DEAD_MAGIC, FREELIST_TOP, MAGIC, OFF_SEQNUM, REC_SIZE, Record, data_start, hash_top,
};
use crate::lock::{List, LockType};

/// How [`Tdb::store`] treats an existing or missing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Create or overwrite (libtdb `TDB_REPLACE`).
    Replace,
    /// Create only; [`Error::Exists`] if the key is there (`TDB_INSERT`).
    Insert,
    /// Overwrite only; [`Error::NotFound`] if the key is missing
    /// (`TDB_MODIFY`).
    Modify,
}

/// What the last complete walk of a chain found, valid only while the
/// store that made it runs (the chain stays locked and unchanged): lets the
/// allocator skip a second walk looking for dead records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainHint {
    bucket: u32,
    dead: bool,
}

/// Result of trying to update a record without moving it.
enum InPlace {
    Done,
    Missing,
    TooSmall,
}

impl Inner {
    // ----- record lookup and update (chain must be locked) -----

    /// Find the live record for `key` in its chain.
    pub(crate) fn find(&mut self, key: &[u8], hash: u32) -> Result<Option<(u32, Record)>> {
        let bucket = self.bucket(hash);
        self.chain_hint = None;
        let mut ptr = self.read_u32(hash_top(bucket))?;
        let mut lc = LoopCheck::new(ptr);
        let mut dead = false;
        while ptr != 0 {
            let r = self.read_rec(ptr)?;
            if r.magic == MAGIC
                && r.full_hash == hash
                && r.key_len as usize == key.len()
                && self.key_eq(ptr + REC_SIZE, key)?
            {
                return Ok(Some((ptr, r)));
            }
            dead |= r.magic == DEAD_MAGIC;
            ptr = r.next;
            lc.step(ptr)?;
        }
        // The whole chain was seen: remember whether it holds dead records.
        self.chain_hint = Some(ChainHint { bucket, dead });
        Ok(None)
    }

    /// Is chain `bucket` known (from a complete walk under the lock we still
    /// hold, with no change since) to contain no dead records?
    #[inline]
    pub(crate) fn chain_known_clean(&self, bucket: u32) -> bool {
        matches!(self.chain_hint, Some(h) if h.bucket == bucket && !h.dead)
    }

    pub(crate) fn bump_seqnum(&mut self) -> Result<()> {
        if !self.seqnum {
            return Ok(());
        }
        if self.tx.is_none() {
            if let Some(p) = self.io.word_ptr(OFF_SEQNUM)? {
                // SAFETY: `word_ptr` returns an aligned, in-bounds pointer
                // into the shared mapping; all users update this word
                // atomically.
                let a = unsafe { &*(p as *const AtomicU32) };
                a.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            self.nest_lock(OFF_SEQNUM, LockType::Write, true)?;
            let r = self
                .read_u32(OFF_SEQNUM)
                .and_then(|v| self.write_u32(OFF_SEQNUM, v.wrapping_add(1)));
            let u = self.nest_unlock(OFF_SEQNUM);
            return r.and(u);
        }
        let v = self.read_u32(OFF_SEQNUM)?;
        self.write_u32(OFF_SEQNUM, v.wrapping_add(1))
    }

    /// Store under an already held write lock of the key's chain.
    pub(crate) fn store_locked(
        &mut self,
        key: &[u8],
        hash: u32,
        parts: &[&[u8]],
        mode: StoreMode,
    ) -> Result<()> {
        if self.io.read_only || self.traverse_read > 0 {
            return Err(Error::ReadOnly);
        }
        let mut dlen: u32 = 0;
        for p in parts {
            let l = u32::try_from(p.len()).map_err(|_| Error::Invalid("value too large"))?;
            dlen = dlen
                .checked_add(l)
                .ok_or(Error::Invalid("value too large"))?;
        }
        let klen = u32::try_from(key.len()).map_err(|_| Error::Invalid("key too large"))?;
        // Leave headroom for the record header, tailer and over-allocation.
        let rec_len = klen
            .checked_add(dlen)
            .filter(|&x| x <= u32::MAX / 2)
            .ok_or(Error::Invalid("record too large"))?;

        self.chain_hint = None;
        let r = self.store_new(key, hash, parts, mode, klen, dlen, rec_len);
        self.chain_hint = None;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn store_new(
        &mut self,
        key: &[u8],
        hash: u32,
        parts: &[&[u8]],
        mode: StoreMode,
        klen: u32,
        dlen: u32,
        rec_len: u32,
    ) -> Result<()> {
        if mode == StoreMode::Insert {
            if self.find(key, hash)?.is_some() {
                return Err(Error::Exists);
            }
        } else {
            match self.update_in_place(key, hash, parts, dlen)? {
                InPlace::Done => return self.bump_seqnum(),
                InPlace::Missing if mode == StoreMode::Modify => return Err(Error::NotFound),
                InPlace::Missing => {}
                InPlace::TooSmall => {
                    // Drop the old copy first: less fragmentation, and no
                    // merging with a block that is about to be rewritten.
                    match self.delete_locked(key, hash) {
                        Ok(()) | Err(Error::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }

        let (off, mut rec) = self.allocate(hash, rec_len)?;
        self.chain_hint = None;
        let bucket = self.bucket(hash);
        rec.next = self.read_u32(hash_top(bucket))?;
        rec.key_len = klen;
        rec.data_len = dlen;
        rec.full_hash = hash;
        rec.magic = MAGIC;
        self.rec_write(off, &rec)?;
        let mut pos = off + REC_SIZE;
        self.write(pos, key)?;
        pos += klen;
        for p in parts {
            self.write(pos, p)?;
            pos += p.len() as u32;
        }
        self.write_u32(hash_top(bucket), off)?;
        self.bump_seqnum()
    }

    fn update_in_place(
        &mut self,
        key: &[u8],
        hash: u32,
        parts: &[&[u8]],
        dlen: u32,
    ) -> Result<InPlace> {
        let Some((off, mut rec)) = self.find(key, hash)? else {
            return Ok(InPlace::Missing);
        };
        let doff = off + REC_SIZE + rec.key_len;
        if rec.data_len == dlen {
            // Rewriting identical data is common enough to be worth a compare.
            let same = self.with_bytes(doff, dlen, |old| {
                let mut pos = 0usize;
                for p in parts {
                    if old[pos..pos + p.len()] != **p {
                        return false;
                    }
                    pos += p.len();
                }
                true
            })?;
            if same {
                return Ok(InPlace::Done);
            }
        }
        if (rec.rec_len as u64) < key.len() as u64 + dlen as u64 + 4 {
            return Ok(InPlace::TooSmall);
        }
        let mut pos = doff;
        for p in parts {
            self.write(pos, p)?;
            pos += p.len() as u32;
        }
        if rec.data_len != dlen {
            rec.data_len = dlen;
            self.rec_write(off, &rec)?;
        }
        Ok(InPlace::Done)
    }

    /// Delete under an already held write lock of the key's chain.
    pub(crate) fn delete_locked(&mut self, key: &[u8], hash: u32) -> Result<()> {
        if self.io.read_only || self.traverse_read > 0 {
            return Err(Error::ReadOnly);
        }
        let Some((off, mut rec)) = self.find(key, hash)? else {
            return Err(Error::NotFound);
        };
        self.chain_hint = None;
        rec.magic = DEAD_MAGIC;
        self.rec_write(off, &rec)?;
        self.bump_seqnum()?;
        self.trim_dead(hash, self.max_dead)
    }

    /// Free the dead records of a chain beyond the first `keep`. Records a
    /// traversal sits on stay (dead) in the chain.
    pub(crate) fn trim_dead(&mut self, hash: u32, keep: u32) -> Result<()> {
        if self.chain_known_clean(self.bucket(hash)) {
            return Ok(());
        }
        let mut last = hash_top(self.bucket(hash));
        let mut ptr = self.read_u32(last)?;
        let mut lc = LoopCheck::new(last);
        let mut ndead = 0u32;
        let mut freelist_locked = false;
        let res = (|| -> Result<()> {
            while ptr != 0 {
                let rec = self.read_rec(ptr)?;
                let next = rec.next;
                let mut deleted = false;
                if rec.magic == DEAD_MAGIC {
                    ndead += 1;
                    if ndead > keep && self.record_is_free_to_reuse(ptr)? {
                        if !freelist_locked {
                            self.lock_list(List::Free, LockType::Write, true)?;
                            freelist_locked = true;
                        }
                        self.write_u32(last, next)?;
                        let mut r = rec;
                        self.free(ptr, &mut r)?;
                        deleted = true;
                    }
                }
                if !deleted {
                    last = ptr;
                    lc.step(next)?;
                }
                ptr = next;
            }
            Ok(())
        })();
        if freelist_locked {
            let u = self.unlock_list(List::Free, LockType::Write);
            return res.and(u);
        }
        res
    }

    /// Find the smallest dead record in chain `bucket` that holds `length`
    /// bytes (plus tailer), with the pointer that links it in.
    pub(crate) fn find_dead(
        &mut self,
        bucket: u32,
        length: u32,
    ) -> Result<Option<(u32, Record, u32)>> {
        let need = length as u64 + 4;
        let mut last = hash_top(bucket);
        let mut ptr = self.read_u32(last)?;
        let mut lc = LoopCheck::new(ptr);
        let mut best: Option<(u32, Record, u32)> = None;
        while ptr != 0 {
            let r = self.read_rec(ptr)?;
            if r.magic == DEAD_MAGIC
                && r.rec_len as u64 >= need
                && best.is_none_or(|(_, b, _)| r.rec_len < b.rec_len)
                && !self.travlocks.contains(&ptr)
            {
                best = Some((ptr, r, last));
            }
            last = ptr;
            ptr = r.next;
            lc.step(ptr)?;
        }
        Ok(best)
    }

    // ----- whole-database helpers -----

    /// Empty the database: every chain and the freelist are reset and all
    /// space except the recovery area goes to the freelist.
    pub(crate) fn wipe_all_locked(&mut self) -> Result<()> {
        let start = data_start(self.hash_size);
        let size = self.size() as u64;
        // Keep a usable recovery area where it is (only the commit code may
        // move it); forget one that is not usable.
        let mut head = self.read_u32(format::OFF_RECOVERY_START)?;
        let mut rec_size = 0u64;
        if head != 0 {
            let usable = head >= start
                && match self.read_rec_raw(head) {
                    Ok(r) => {
                        rec_size = REC_SIZE as u64 + r.rec_len as u64;
                        (r.magic == format::RECOVERY_MAGIC
                            || r.magic == format::RECOVERY_INVALID_MAGIC)
                            && head as u64 + rec_size <= size
                    }
                    Err(_) => false,
                };
            if !usable {
                self.write_u32(format::OFF_RECOVERY_START, 0)?;
                head = 0;
            }
        }
        let zeros = vec![0u8; 4 * (self.hash_size as usize + 1)];
        self.write(FREELIST_TOP, &zeros)?;
        if head == 0 {
            self.free_region(start, size - start as u64)?;
        } else {
            self.free_region(start, head as u64 - start as u64)?;
            self.free_region(head + rec_size as u32, size - head as u64 - rec_size)?;
        }
        self.bump_seqnum()
    }

    fn free_region(&mut self, off: u32, len: u64) -> Result<()> {
        if len <= REC_SIZE as u64 {
            return Ok(());
        }
        let mut r = Record {
            rec_len: (len - REC_SIZE as u64) as u32,
            ..Default::default()
        };
        self.free(off, &mut r)
    }
}

impl Tdb {
    // ----- record operations -----

    /// Fetch the value stored under `key`.
    pub fn fetch(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(if self.fetch_into(key, &mut out)? {
            Some(out)
        } else {
            None
        })
    }

    /// Fetch into a caller-provided buffer (cleared first); returns whether
    /// the key exists. Saves the allocation when called in a loop.
    pub fn fetch_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.under_chain_lock(key, LockType::Read, |i, hash| {
            fetch_locked(i, key, hash, out)
        })
    }

    /// Call `f` with the value of `key`, straight from the memory map when
    /// possible, under the chain's read lock. `f` must not use the database.
    pub fn parse<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.under_chain_lock(key, LockType::Read, |i, hash| parse_locked(i, key, hash, f))
    }

    /// Does `key` exist?
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        self.under_chain_lock(key, LockType::Read, |i, hash| {
            i.find(key, hash).map(|x| x.is_some())
        })
    }

    /// Store `data` under `key`.
    pub fn store(&self, key: &[u8], data: &[u8], mode: StoreMode) -> Result<()> {
        self.storev(key, &[data], mode)
    }

    /// Store the concatenation of `parts` under `key`.
    pub fn storev(&self, key: &[u8], parts: &[&[u8]], mode: StoreMode) -> Result<()> {
        self.under_chain_lock(key, LockType::Write, |i, hash| {
            i.store_locked(key, hash, parts, mode)
        })
    }

    /// Append `data` to the value of `key` (creating it if missing).
    pub fn append(&self, key: &[u8], data: &[u8]) -> Result<()> {
        self.under_chain_lock(key, LockType::Write, |i, hash| {
            let mut old = Vec::new();
            fetch_locked(i, key, hash, &mut old)?;
            i.store_locked(key, hash, &[&old, data], StoreMode::Replace)
        })
    }

    /// Delete `key`; [`Error::NotFound`] if it does not exist.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.under_chain_lock(key, LockType::Write, |i, hash| i.delete_locked(key, hash))
    }

    /// Delete every record, keeping the file and its size.
    pub fn wipe_all(&self) -> Result<()> {
        let mut i = self.inner()?;
        i.allrecord_lock(LockType::Write, true, false)?;
        let r = i.wipe_all_locked();
        let u = i.allrecord_unlock(LockType::Write);
        r?;
        u
    }

    /// Runs `op` with `key`'s hash under its chain's lock of type `lt`,
    /// waiting for it (the chain's head prefetched first). A write lock is
    /// for writing: refused on a read-only handle and inside a read-only
    /// traverse. An error of `op` is returned before one of the unlock.
    fn under_chain_lock<R>(
        &self,
        key: &[u8],
        lt: LockType,
        op: impl FnOnce(&mut Inner, u32) -> Result<R>,
    ) -> Result<R> {
        let mut i = self.inner()?;
        if lt == LockType::Write && (i.io.read_only || i.traverse_read > 0) {
            return Err(Error::ReadOnly);
        }
        let hash = i.hash.hash(key);
        let bucket = i.bucket(hash);
        i.io.prefetch(hash_top(bucket));
        i.with_list_locked(List::Chain(bucket), lt, |i| op(i, hash))
    }
}

pub(super) fn fetch_locked(
    i: &mut Inner,
    key: &[u8],
    hash: u32,
    out: &mut Vec<u8>,
) -> Result<bool> {
    out.clear();
    match i.find(key, hash)? {
        None => Ok(false),
        Some((off, rec)) => {
            i.read_append(off + REC_SIZE + rec.key_len, rec.data_len, out)?;
            Ok(true)
        }
    }
}

pub(super) fn parse_locked<R>(
    i: &mut Inner,
    key: &[u8],
    hash: u32,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>> {
    match i.find(key, hash)? {
        None => Ok(None),
        Some((off, rec)) => i
            .with_bytes(off + REC_SIZE + rec.key_len, rec.data_len, f)
            .map(Some),
    }
}
