//! Free space management.
//!
//! Free records form a singly linked list whose head is the word at
//! [`FREELIST_TOP`]; every free record has [`FREE_MAGIC`] and, like every
//! record, a tailer (its last four bytes hold `24 + rec_len`) so that the
//! record to the *left* of any record can be found. Freeing a record merges
//! it into its left neighbour when that is free (O(1), no list walk);
//! allocation walks the list best-fit, merging as it goes, and takes the
//! space from the *end* of the chosen record. When nothing fits the file
//! grows (at least 25%, at least 100 times the request for small requests),
//! page-aligned, and the new space is freed into the list.
//!
//! Deleted records first become *dead* (still linked in their chain, magic
//! [`DEAD_MAGIC`](crate::format::DEAD_MAGIC)); they are moved to the freelist right away unless a
//! traversal sits on them or the database keeps some dead records for
//! reuse (`max_dead`, CTDB's volatile databases).

use crate::Inner;
use crate::db::LoopCheck;
use crate::error::{Error, Result};
use crate::format::{
    FREE_MAGIC, FREELIST_TOP, MAGIC, MIN_REC_SIZE, PAD_U32, REC_SIZE, Record, align_up, data_start,
};
use crate::lock::{List, LockType};

/// How much to grow a database of `map_size` bytes that needs `size` more.
pub(crate) fn expand_adjust(map_size: u32, size: u32, page_size: u32) -> u32 {
    let max_size = u32::MAX - map_size;
    if size > max_size {
        return size;
    }
    let increment = if size > 100 * 1024 {
        size as u64 * 2
    } else {
        size as u64 * 100
    };
    let top_size = map_size as u64 + increment;
    let grown = if map_size > 100 * 1024 * 1024 {
        (map_size as f64 * 1.10) as u64
    } else {
        (map_size as f64 * 1.25) as u64
    };
    let new_size = align_up(std::cmp::max(top_size, grown), page_size as u64);
    if new_size > u32::MAX as u64 {
        return max_size;
    }
    new_size as u32 - map_size
}

impl Inner {
    /// Write the tailer of the record at `off`.
    fn update_tailer(&mut self, off: u32, rec: &Record) -> Result<()> {
        let total = REC_SIZE + rec.rec_len;
        self.write_u32(off + total - 4, total)
    }

    /// Read a freelist entry. A used magic is tolerated and fixed (a process
    /// died while freeing it).
    fn rec_free_read(&mut self, off: u32) -> Result<Record> {
        if off < data_start(self.hash_size) {
            return Err(Error::corrupt(off, "freelist pointer into the header"));
        }
        let mut r = self.read_rec_raw(off)?;
        if r.magic == MAGIC && !self.io.read_only {
            tracing::warn!(offset = off, "used magic on freelist entry; fixing");
            r.magic = FREE_MAGIC;
            self.rec_write(off, &r)?;
        }
        if r.magic != FREE_MAGIC {
            return Err(Error::corrupt(off, "bad magic on freelist entry"));
        }
        if r.rec_len < 4 {
            return Err(Error::corrupt(off, "free record too short"));
        }
        self.check_extent(off, r.rec_len)?;
        self.check_next(off, r.next)?;
        Ok(r)
    }

    /// If the record left of `off` is free, grow it over `rec` and return it.
    fn merge_left(&mut self, off: u32, rec: &Record) -> Result<Option<(u32, Record)>> {
        let start = data_start(self.hash_size);
        let tail_off = off - 4;
        if tail_off <= start {
            return Ok(None);
        }
        let left_size = self.read_u32(tail_off)?;
        if left_size == 0 || left_size == PAD_U32 || left_size > off {
            return Ok(None);
        }
        let left = off - left_size;
        if left < start {
            return Ok(None);
        }
        let mut lrec = self.read_rec_raw(left)?;
        if lrec.magic != FREE_MAGIC
            || left as u64 + REC_SIZE as u64 + lrec.rec_len as u64 != off as u64
        {
            return Ok(None);
        }
        let Some(len) = lrec
            .rec_len
            .checked_add(REC_SIZE)
            .and_then(|x| x.checked_add(rec.rec_len))
        else {
            return Ok(None);
        };
        lrec.rec_len = len;
        self.rec_write(left, &lrec)?;
        self.update_tailer(left, &lrec)?;
        Ok(Some((left, lrec)))
    }

    /// Put the record at `off` on the freelist.
    pub(crate) fn free(&mut self, off: u32, rec: &mut Record) -> Result<()> {
        self.lock_list(List::Free, LockType::Write, true)?;
        let r = self.free_locked(off, rec);
        let u = self.unlock_list(List::Free, LockType::Write);
        r.and(u)
    }

    fn free_locked(&mut self, off: u32, rec: &mut Record) -> Result<()> {
        if rec.rec_len < 4 {
            return Err(Error::corrupt(off, "record too short to free"));
        }
        self.check_extent(off, rec.rec_len)?;
        // A valid tailer first, so a crash leaves a walkable record.
        self.update_tailer(off, rec)?;
        if self.merge_left(off, rec)?.is_some() {
            return Ok(());
        }
        rec.magic = FREE_MAGIC;
        rec.next = self.read_u32(FREELIST_TOP)?;
        self.rec_write(off, rec)?;
        self.write_u32(FREELIST_TOP, off)
    }

    /// Allocate room for a record with `length` bytes of key and data. The
    /// chain for `hash` must be write-locked. Returns the offset and header
    /// (magic set, lengths to be filled in by the caller).
    pub(crate) fn allocate(&mut self, hash: u32, length: u32) -> Result<(u32, Record)> {
        if self.max_dead > 0 {
            // Prefer recycling a dead record, and do not queue on a busy
            // freelist while other chains may have something to give.
            for i in 0..self.hash_size {
                let bucket = self.bucket(hash.wrapping_add(i));
                if self
                    .lock_list(List::Chain(bucket), LockType::Write, false)
                    .is_ok()
                {
                    let got = self.alloc_dead(bucket, length);
                    let u = self.unlock_list(List::Chain(bucket), LockType::Write);
                    if let Some(x) = got? {
                        u?;
                        return Ok(x);
                    }
                    u?;
                }
                if self.lock_list(List::Free, LockType::Write, false).is_ok() {
                    let r = self
                        .trim_dead(hash, 0)
                        .and_then(|()| self.allocate_from_freelist(length));
                    let u = self.unlock_list(List::Free, LockType::Write);
                    let r = r?;
                    u?;
                    return Ok(r);
                }
            }
        }
        self.lock_list(List::Free, LockType::Write, true)?;
        // Dead records can exist even without max_dead (a traversal kept
        // them alive): give them back now.
        let r = self
            .trim_dead(hash, 0)
            .and_then(|()| self.allocate_from_freelist(length));
        let u = self.unlock_list(List::Free, LockType::Write);
        let r = r?;
        u?;
        Ok(r)
    }

    /// Take a dead record of chain `bucket` big enough for `length`.
    fn alloc_dead(&mut self, bucket: u32, length: u32) -> Result<Option<(u32, Record)>> {
        if self.chain_known_clean(bucket) {
            return Ok(None);
        }
        let Some((off, rec, last)) = self.find_dead(bucket, length)? else {
            return Ok(None);
        };
        if !self.record_is_free_to_reuse(off)? {
            return Ok(None);
        }
        self.write_u32(last, rec.next)?;
        let mut rec = rec;
        rec.magic = MAGIC;
        Ok(Some((off, rec)))
    }

    /// Best-fit allocation from the freelist (freelist lock held).
    fn allocate_from_freelist(&mut self, length: u32) -> Result<(u32, Record)> {
        // Over-allocate a little so records can grow in place.
        let length = (length as f64 * 1.25) as u64 + 4;
        let length = align_up(length, 4);
        if length > (u32::MAX / 2) as u64 {
            return Err(Error::Invalid("record too large"));
        }
        let length = length as u32;

        let mut expansions = 0;
        for _attempt in 0..16 {
            let mut merge_created_candidate = false;
            let mut last = FREELIST_TOP;
            let mut ptr = self.read_u32(FREELIST_TOP)?;
            let mut lc = LoopCheck::new(ptr);
            // (offset, link, rec_len) of the best candidate so far
            let mut best: Option<(u32, u32, u32)> = None;
            let mut multiplier: f32 = 1.0;

            while ptr != 0 {
                let rec = self.rec_free_read(ptr)?;
                if let Some((left, lrec)) = self.merge_left(ptr, &rec)? {
                    // Merged into its left neighbour: unlink it.
                    self.write_u32(last, rec.next)?;
                    ptr = rec.next;
                    if let Some(b) = &mut best
                        && b.0 == left
                    {
                        b.2 = lrec.rec_len;
                    }
                    if lrec.rec_len > length {
                        merge_created_candidate = true;
                    }
                    // The list changed; restart cycle detection from here.
                    lc = LoopCheck::new(ptr);
                    continue;
                }
                if rec.rec_len >= length && best.is_none_or(|b| rec.rec_len < b.2) {
                    best = Some((ptr, last, rec.rec_len));
                }
                last = ptr;
                ptr = rec.next;
                lc.step(ptr)?;
                if let Some(b) = best
                    && (b.2 as f32) < length as f32 * multiplier
                {
                    break;
                }
                // Accept ever looser fits the longer we search.
                multiplier *= 1.05;
            }

            if let Some((off, link, _)) = best {
                let rec = self.rec_free_read(off)?;
                return self.allocate_ofs(length, off, rec, link);
            }
            if merge_created_candidate {
                continue;
            }
            // One expansion always makes room in a sound file; if the new
            // space cannot be found after that, the freelist is damaged.
            if expansions == 2 {
                break;
            }
            expansions += 1;
            self.expand(length + REC_SIZE)?;
        }
        Err(Error::corrupt(
            FREELIST_TOP,
            "freelist allocation does not converge",
        ))
    }

    /// Carve `length` bytes out of free record `rec` at `off` (linked from
    /// `link`).
    fn allocate_ofs(
        &mut self,
        length: u32,
        off: u32,
        mut rec: Record,
        link: u32,
    ) -> Result<(u32, Record)> {
        let split = length
            .checked_add(MIN_REC_SIZE)
            .is_some_and(|need| rec.rec_len >= need);
        if !split {
            // Take the whole record.
            self.write_u32(link, rec.next)?;
            rec.magic = MAGIC;
            self.rec_write(off, &rec)?;
            return Ok((off, rec));
        }
        // Shorten the free record and use its tail.
        rec.rec_len -= length + REC_SIZE;
        self.rec_write(off, &rec)?;
        self.update_tailer(off, &rec)?;
        let new_off = off + REC_SIZE + rec.rec_len;
        let newrec = Record {
            rec_len: length,
            magic: MAGIC,
            ..Default::default()
        };
        self.rec_write(new_off, &newrec)?;
        self.update_tailer(new_off, &newrec)?;
        Ok((new_off, newrec))
    }

    /// Grow the database by at least `size` bytes and free the new space.
    pub(crate) fn expand(&mut self, size: u32) -> Result<()> {
        self.lock_list(List::Free, LockType::Write, true)?;
        let r = self.expand_locked(size);
        let u = self.unlock_list(List::Free, LockType::Write);
        r.and(u)
    }

    fn expand_locked(&mut self, size: u32) -> Result<()> {
        if self.tx.is_none() {
            // Someone else may have grown it already.
            self.io.refresh()?;
        }
        let cur = self.size();
        let add = expand_adjust(cur, size, self.io.page_size);
        if add < size || cur.checked_add(add).is_none() || add <= REC_SIZE {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        match &mut self.tx {
            Some(tx) => tx.expand(add),
            None => self.io.expand_file(cur, add)?,
        }
        let mut rec = Record {
            rec_len: add - REC_SIZE,
            ..Default::default()
        };
        self.free_locked(cur, &mut rec)
    }

    /// Number of freelist entries, merging neighbours on the way (unless
    /// read-only).
    pub(crate) fn freelist_size(&mut self) -> Result<usize> {
        let lt = if self.io.read_only {
            LockType::Read
        } else {
            LockType::Write
        };
        self.lock_list(List::Free, lt, true)?;
        let r = (|| -> Result<usize> {
            let mut count = 0usize;
            let mut cur = FREELIST_TOP;
            let mut next = self.read_u32(cur)?;
            let mut lc = LoopCheck::new(next);
            while next != 0 {
                count += 1;
                if !self.io.read_only && self.traverse_read == 0 {
                    let rec = self.rec_free_read(next)?;
                    if self.merge_left(next, &rec)?.is_some() {
                        self.write_u32(cur, rec.next)?;
                        next = rec.next;
                        lc = LoopCheck::new(next);
                        continue;
                    }
                }
                cur = next;
                next = self.read_u32(cur)?;
                self.check_next(cur, next)?;
                lc.step(next)?;
            }
            Ok(count)
        })();
        let u = self.unlock_list(List::Free, lt);
        let r = r?;
        u?;
        Ok(r)
    }

    /// Is the free space so fragmented that a repack would pay off (the
    /// largest free block is less than half of all free space)?
    pub(crate) fn repack_worthwhile(&mut self) -> bool {
        let mut total = 0u64;
        let mut largest = 0u64;
        let Ok(mut ptr) = self.read_u32(FREELIST_TOP) else {
            return false;
        };
        let mut lc = LoopCheck::new(ptr);
        while ptr != 0 {
            let Ok(rec) = self.rec_free_read(ptr) else {
                break;
            };
            total += rec.rec_len as u64;
            largest = largest.max(rec.rec_len as u64);
            ptr = rec.next;
            if lc.step(ptr).is_err() {
                break;
            }
        }
        total > largest * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_adjust_rounds_to_pages() {
        let add = expand_adjust(696, 100, 4096);
        assert_eq!((696 + add) % 4096, 0);
        assert!(add >= 100 * 100);
        let add = expand_adjust(1 << 20, 1 << 20, 4096);
        assert_eq!(add, 2 << 20);
        // Near 4 GiB: one jump to the limit.
        let add = expand_adjust(u32::MAX - 10_000, 5000, 4096);
        assert_eq!(add, 10_000);
    }
}
