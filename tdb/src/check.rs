//! Structural integrity check.
//!
//! Verifies, under a shared all-record lock, that the header is sane, that
//! every hash chain and the freelist are loop-free lists of well-formed
//! records (magic, lengths, tailer, bounds), that every record sits in the
//! chain its hash selects and its stored hash matches its key, and that no
//! two records (or a record and the recovery area) overlap. Space that no
//! list refers to is tolerated: a crash during a commit can leave some.

use crate::Inner;
use crate::db::{LoopCheck, Tdb};
use crate::error::{Error, Result};
use crate::format::{
    DEAD_MAGIC, FREE_MAGIC, FREELIST_TOP, Header, MAGIC, OFF_RECOVERY_START, PAD_U32, REC_SIZE,
    RECOVERY_INVALID_MAGIC, RECOVERY_MAGIC, VERSION, data_start, hash_top,
};
use crate::lock::LockType;

/// What [`Tdb::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Live records.
    pub records: usize,
    /// Deleted records still linked in a chain.
    pub dead: usize,
    /// Freelist entries.
    pub free: usize,
    /// Bytes in free records (excluding headers).
    pub free_bytes: u64,
    /// Size of the recovery area (0 if none).
    pub recovery_bytes: u64,
}

impl Inner {
    fn check_tailer(&mut self, off: u32, rec_len: u32) -> Result<()> {
        if rec_len < 4 || !rec_len.is_multiple_of(4) {
            return Err(Error::corrupt(off, "record length not a multiple of 4"));
        }
        let t = self.read_u32(off + REC_SIZE + rec_len - 4)?;
        if t != REC_SIZE + rec_len {
            return Err(Error::corrupt(
                off,
                "record tailer does not match its length",
            ));
        }
        Ok(())
    }

    fn check_locked(&mut self) -> Result<CheckReport> {
        let mut rep = CheckReport::default();
        let mut raw = [0u8; 168];
        self.read(0, &mut raw)?;
        let h = Header::parse(&raw)?;
        if h.version != VERSION {
            return Err(Error::UnsupportedVersion(h.version));
        }
        if h.hash_size != self.hash_size {
            return Err(Error::corrupt(36u32, "hash size changed"));
        }
        let start = data_start(self.hash_size);
        if self.size() < start {
            return Err(Error::corrupt(0u32, "file shorter than its hash table"));
        }
        let mut spans: Vec<(u64, u64)> = Vec::new();

        for b in 0..self.hash_size {
            let mut ptr = self.read_u32(hash_top(b))?;
            let mut lc = LoopCheck::new(ptr);
            while ptr != 0 {
                let r = self.read_rec(ptr)?;
                self.check_tailer(ptr, r.rec_len)?;
                if self.bucket(r.full_hash) != b {
                    return Err(Error::corrupt(ptr, "record in the wrong hash chain"));
                }
                let klen = r.key_len;
                let hash = self.hash;
                let key_hash = self.with_bytes(ptr + REC_SIZE, klen, |k| hash.hash(k))?;
                if key_hash != r.full_hash {
                    return Err(Error::corrupt(ptr, "stored hash does not match the key"));
                }
                if r.magic == DEAD_MAGIC {
                    rep.dead += 1;
                } else {
                    debug_assert_eq!(r.magic, MAGIC);
                    rep.records += 1;
                }
                spans.push((ptr as u64, ptr as u64 + REC_SIZE as u64 + r.rec_len as u64));
                ptr = r.next;
                lc.step(ptr)?;
            }
        }

        let mut ptr = self.read_u32(FREELIST_TOP)?;
        let mut lc = LoopCheck::new(ptr);
        while ptr != 0 {
            if ptr < start {
                return Err(Error::corrupt(ptr, "freelist pointer into the header"));
            }
            let r = self.read_rec_raw(ptr)?;
            if r.magic != FREE_MAGIC {
                return Err(Error::corrupt(ptr, "bad magic on freelist entry"));
            }
            self.check_extent(ptr, r.rec_len)?;
            self.check_next(ptr, r.next)?;
            self.check_tailer(ptr, r.rec_len)?;
            rep.free += 1;
            rep.free_bytes += r.rec_len as u64;
            spans.push((ptr as u64, ptr as u64 + REC_SIZE as u64 + r.rec_len as u64));
            ptr = r.next;
            lc.step(ptr)?;
        }

        let head = self.read_u32(OFF_RECOVERY_START)?;
        if head != 0 {
            if head < start {
                return Err(Error::corrupt(
                    OFF_RECOVERY_START,
                    "recovery area inside the header",
                ));
            }
            let r = self.read_rec_raw(head)?;
            match r.magic {
                RECOVERY_MAGIC | RECOVERY_INVALID_MAGIC => {
                    self.check_extent(head, r.rec_len)?;
                    rep.recovery_bytes = REC_SIZE as u64 + r.rec_len as u64;
                    spans.push((head as u64, head as u64 + rep.recovery_bytes));
                }
                // A commit died after pointing the header at a freshly added
                // area and before writing it: still pad bytes, unused.
                PAD_U32 => {}
                _ => return Err(Error::corrupt(head, "bad magic on recovery area")),
            }
        }

        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::corrupt(w[1].0 as u32, "records overlap"));
            }
        }
        Ok(rep)
    }
}

impl Tdb {
    /// Check the database's structure (see the module docs). Takes a shared
    /// lock on all records unless this handle already holds one (or is
    /// read-only, which does no locking).
    pub fn check(&self) -> Result<CheckReport> {
        let mut i = self.inner()?;
        let lock = !i.io.read_only && !i.nolock && i.allrecord.count == 0;
        if lock {
            i.allrecord_lock(LockType::Read, true, false)?;
        }
        if i.tx.is_none() {
            i.io.refresh()?;
        }
        let r = i.check_locked();
        if lock {
            i.allrecord_unlock(LockType::Read)?;
        }
        r
    }

    /// Number of freelist entries; adjacent free records are merged on the
    /// way (unless read-only).
    pub fn freelist_size(&self) -> Result<usize> {
        self.inner()?.freelist_size()
    }
}
