//! The database handle: opening and creating files, and the record
//! operations (fetch, store, delete) on top of the locking, freelist and
//! transaction layers.

use std::cell::{RefCell, RefMut};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::format::{
    self, DEAD_MAGIC, FEATURE_FLAG_MAGIC, FEATURE_FLAG_MUTEX, FREELIST_TOP, HASH_RWLOCK_MAGIC,
    HEADER_SIZE, Header, MAGIC, OFF_SEQNUM, REC_SIZE, Record, SUPPORTED_FEATURE_FLAGS, VERSION,
    data_start, hash_top, lockoff,
};
use crate::hash::HashKind;
use crate::io::Io;
use crate::lock::{AllRecord, List, LockRec, LockType};
use crate::mutex::{self, MutexArea};
use crate::transaction::Tx;

/// libtdb's `tdb_open` flag bits, for code that receives them from elsewhere
/// (CTDB passes them around in its protocol). See [`OpenOptions::tdb_flags`].
pub mod flags {
    pub const DEFAULT: u32 = 0;
    pub const CLEAR_IF_FIRST: u32 = 1;
    pub const INTERNAL: u32 = 2;
    pub const NOLOCK: u32 = 4;
    pub const NOMMAP: u32 = 8;
    pub const CONVERT: u32 = 16;
    pub const BIGENDIAN: u32 = 32;
    pub const NOSYNC: u32 = 64;
    pub const SEQNUM: u32 = 128;
    pub const VOLATILE: u32 = 256;
    pub const ALLOW_NESTING: u32 = 512;
    pub const DISALLOW_NESTING: u32 = 1024;
    pub const INCOMPATIBLE_HASH: u32 = 2048;
    pub const MUTEX_LOCKING: u32 = 4096;
}

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

/// Options for opening or creating a database, in the spirit of
/// [`std::fs::OpenOptions`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    hash_size: u32,
    create: bool,
    read_only: bool,
    clear_if_first: bool,
    mutex_locking: bool,
    incompatible_hash: bool,
    no_sync: bool,
    no_lock: bool,
    no_mmap: bool,
    seqnum: bool,
    allow_nesting: bool,
    max_dead: u32,
    mode: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenOptions {
    /// Read-write, no creation, default hash size, fcntl locking.
    pub fn new() -> Self {
        OpenOptions {
            hash_size: format::DEFAULT_HASH_SIZE,
            create: false,
            read_only: false,
            clear_if_first: false,
            mutex_locking: false,
            incompatible_hash: false,
            no_sync: false,
            no_lock: false,
            no_mmap: false,
            seqnum: false,
            allow_nesting: true,
            max_dead: 0,
            mode: 0o600,
        }
    }

    /// Apply libtdb `tdb_open` flags ([`flags`]). `INTERNAL`, `CONVERT` and
    /// `BIGENDIAN` are not supported and ignored (with a log message).
    pub fn tdb_flags(&mut self, f: u32) -> &mut Self {
        self.clear_if_first = f & flags::CLEAR_IF_FIRST != 0;
        self.no_lock = f & flags::NOLOCK != 0;
        self.no_mmap = f & flags::NOMMAP != 0;
        self.no_sync = f & flags::NOSYNC != 0;
        self.seqnum = f & flags::SEQNUM != 0;
        if f & flags::VOLATILE != 0 {
            self.max_dead = 5;
        }
        if f & flags::DISALLOW_NESTING != 0 {
            self.allow_nesting = false;
        }
        if f & flags::ALLOW_NESTING != 0 {
            self.allow_nesting = true;
        }
        self.incompatible_hash = f & flags::INCOMPATIBLE_HASH != 0;
        self.mutex_locking = f & flags::MUTEX_LOCKING != 0;
        if f & (flags::INTERNAL | flags::CONVERT | flags::BIGENDIAN) != 0 {
            tracing::warn!(flags = f, "ignoring unsupported tdb_open flags");
        }
        self
    }

    /// Number of hash chains of a newly created file (0 means the default,
    /// 131). Ignored for existing files, whose header decides.
    pub fn hash_size(&mut self, n: u32) -> &mut Self {
        self.hash_size = if n == 0 { format::DEFAULT_HASH_SIZE } else { n };
        self
    }
    /// Create the file if it does not exist (or is empty).
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.create = yes;
        self
    }
    /// Open read-only: no locking at all (as libtdb), no writes.
    pub fn read_only(&mut self, yes: bool) -> &mut Self {
        self.read_only = yes;
        self
    }
    /// Wipe the database if no other process has it open
    /// (`TDB_CLEAR_IF_FIRST`), and keep a shared "active" lock so the next
    /// opener can tell.
    pub fn clear_if_first(&mut self, yes: bool) -> &mut Self {
        self.clear_if_first = yes;
        self
    }
    /// Create the file with robust mutexes for chain locks
    /// (`TDB_MUTEX_LOCKING`; implies the Jenkins hash). Existing files use
    /// mutexes exactly when their header has the mutex feature, whatever this
    /// says.
    pub fn mutex_locking(&mut self, yes: bool) -> &mut Self {
        self.mutex_locking = yes;
        self
    }
    /// Create the file with the Jenkins hash (`TDB_INCOMPATIBLE_HASH`).
    pub fn incompatible_hash(&mut self, yes: bool) -> &mut Self {
        self.incompatible_hash = yes;
        self
    }
    /// Skip fsync/msync in transactions (`TDB_NOSYNC`): still safe against a
    /// process dying mid-commit, not against a machine crash.
    pub fn no_sync(&mut self, yes: bool) -> &mut Self {
        self.no_sync = yes;
        self
    }
    /// Do no locking at all (`TDB_NOLOCK`): only safe with a single user.
    pub fn no_lock(&mut self, yes: bool) -> &mut Self {
        self.no_lock = yes;
        self
    }
    /// Use pread/pwrite instead of a memory map (`TDB_NOMMAP`).
    pub fn no_mmap(&mut self, yes: bool) -> &mut Self {
        self.no_mmap = yes;
        self
    }
    /// Maintain the header's sequence number on every change
    /// (`TDB_SEQNUM`).
    pub fn seqnum(&mut self, yes: bool) -> &mut Self {
        self.seqnum = yes;
        self
    }
    /// Allow nested transactions (the default, as in libtdb).
    pub fn allow_nesting(&mut self, yes: bool) -> &mut Self {
        self.allow_nesting = yes;
        self
    }
    /// Keep up to `n` deleted records per chain for reuse instead of freeing
    /// them (`TDB_VOLATILE` sets 5). Saves freelist-lock traffic for
    /// databases with heavy churn.
    pub fn max_dead(&mut self, n: u32) -> &mut Self {
        self.max_dead = n;
        self
    }
    /// Permission bits for a newly created file.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Open (or create) the database at `path`.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Tdb> {
        Tdb::open(path, self)
    }
}

// ---------------------------------------------------------------------------

/// Files open in this process, by (device, inode).
static OPEN_FILES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Removes a file from [`OPEN_FILES`] when dropped. Declared after the inner
/// state in [`Tdb`] so it runs after the descriptor has been closed.
struct Registration((u64, u64));

impl Drop for Registration {
    fn drop(&mut self) {
        let mut v = OPEN_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|x| *x == self.0) {
            v.swap_remove(i);
        }
    }
}

/// The handle's mutable state. Everything lives behind a `RefCell` in
/// [`Tdb`], so that lock guards and traversal callbacks can use the handle
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
    fn key_eq(&mut self, off: u32, key: &[u8]) -> Result<bool> {
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

// ---------------------------------------------------------------------------

/// An open TDB database.
///
/// A `Tdb` is used through shared references: lock guards, transactions and
/// traversal callbacks all borrow it. It can be moved to another thread
/// (`Send`) but not shared between threads (`!Sync`): fcntl locks belong to
/// the process, so two threads could not exclude each other through one
/// handle. Wrap it in a `Mutex` to share it.
///
/// Dropping the handle cancels an open transaction, releases every lock and
/// closes the file.
pub struct Tdb {
    pub(crate) inner: RefCell<Inner>,
    // Must stay after `inner`: removed from the registry only once the
    // descriptor is closed.
    _reg: Registration,
}

// SAFETY: the raw pointers inside (memory maps) are owned by the handle and
// valid for its whole life, whichever thread uses it. Locks that are tied to
// a thread (pthread mutexes) are only held through guards borrowing the
// handle, which are !Send, so the handle cannot change threads while one is
// held. `Tdb` is deliberately not `Sync` (RefCell).
unsafe impl Send for Tdb {}

impl std::fmt::Debug for Tdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner.try_borrow() {
            Ok(i) => f
                .debug_struct("Tdb")
                .field("path", &i.path)
                .field("hash_size", &i.hash_size)
                .field("hash", &i.hash)
                .field("mutexes", &i.mutexes.is_some())
                .finish(),
            Err(_) => f.write_str("Tdb { <busy> }"),
        }
    }
}

impl Drop for Tdb {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if inner.tx.is_some()
            && let Err(e) = inner.transaction_cancel_all()
        {
            tracing::warn!(error = %e, "cancelling transaction on close failed");
        }
        inner.release_all_locks();
    }
}

fn dev_ino(md: &std::fs::Metadata) -> (u64, u64) {
    (md.dev(), md.ino())
}

impl Tdb {
    /// Open an existing database read-write (fcntl locking, or mutexes if
    /// the file has them).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Tdb> {
        Tdb::open(path, &OpenOptions::new())
    }

    /// Open `path`, creating an empty database with `hash_size` chains if
    /// the file does not exist.
    pub fn create(path: impl AsRef<Path>, hash_size: u32) -> Result<Tdb> {
        Tdb::open(path, OpenOptions::new().create(true).hash_size(hash_size))
    }

    /// Open (or create) a database.
    pub fn open(path: impl AsRef<Path>, o: &OpenOptions) -> Result<Tdb> {
        let path = path.as_ref();
        let registry = || OPEN_FILES.lock().unwrap_or_else(|e| e.into_inner());
        // Refuse before opening a descriptor: closing a second descriptor of
        // an open file would drop the first handle's fcntl locks.
        if let Ok(md) = std::fs::metadata(path)
            && registry().contains(&dev_ino(&md))
        {
            return Err(Error::AlreadyOpen);
        }
        let read_only = o.read_only;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(o.create && !read_only)
            .mode(o.mode)
            .open(path)?;
        let id = dev_ino(&file.metadata()?);
        {
            let mut reg = registry();
            if reg.contains(&id) {
                // Lost a race with another open of the same file (or the
                // path changed under us). Leak the descriptor rather than
                // close it and drop the other handle's locks.
                std::mem::forget(file);
                return Err(Error::AlreadyOpen);
            }
            reg.push(id);
        }
        // From here on the registration is undone on every exit, after the
        // descriptor is closed. The registry is not held while we wait for
        // the file's open lock.
        let reg = Registration(id);
        let inner = open_inner(file, path, o)?;
        Ok(Tdb {
            inner: RefCell::new(inner),
            _reg: reg,
        })
    }

    #[inline]
    pub(crate) fn inner(&self) -> Result<RefMut<'_, Inner>> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| Error::Invalid("database used re-entrantly from a parse callback"))
    }

    /// Hash of `key` with this database's hash function.
    pub fn key_hash(&self, key: &[u8]) -> u32 {
        self.inner.borrow().hash.hash(key)
    }

    /// Which hash function the file uses.
    pub fn hash_kind(&self) -> HashKind {
        self.inner.borrow().hash
    }

    /// Number of hash chains.
    pub fn hash_size(&self) -> u32 {
        self.inner.borrow().hash_size
    }

    /// Whether chain locks are robust mutexes (the file has the mutex
    /// feature and locking is enabled).
    pub fn uses_mutexes(&self) -> bool {
        self.inner.borrow().mutexes.is_some()
    }

    /// The path the database was opened with.
    pub fn path(&self) -> PathBuf {
        self.inner.borrow().path.clone()
    }

    /// Current size of the TDB area of the file (excluding a mutex area).
    pub fn map_size(&self) -> u64 {
        self.inner.borrow().io.size as u64
    }

    /// How many data syncs (`fdatasync`) this
    /// handle has done: none with `TDB_NOSYNC`, four per committed
    /// transaction otherwise.
    pub fn sync_count(&self) -> u64 {
        self.inner.borrow().io.syncs
    }

    /// Set how many dead records per chain are kept for reuse.
    pub fn set_max_dead(&self, n: u32) {
        self.inner.borrow_mut().max_dead = n;
    }

    /// The header's sequence number (changed by writers that use
    /// [`OpenOptions::seqnum`]).
    pub fn seqnum(&self) -> Result<u32> {
        let mut i = self.inner()?;
        if i.tx.is_none()
            && let Some(p) = i.io.word_ptr(OFF_SEQNUM)?
        {
            // SAFETY: aligned in-bounds word of the shared mapping,
            // accessed atomically by every user.
            return Ok(unsafe { &*(p as *const AtomicU32) }.load(Ordering::SeqCst));
        }
        i.read_u32(OFF_SEQNUM)
    }

    /// Turns on `TDB_SEQNUM` for this handle from now on (libtdb's
    /// `tdb_enable_seqnum`): every store and delete through it bumps the
    /// header's sequence number.
    pub fn enable_seqnum(&self) {
        self.inner.borrow_mut().seqnum = true;
    }

    /// Whether this handle bumps the sequence number on writes.
    pub fn seqnum_enabled(&self) -> bool {
        self.inner.borrow().seqnum
    }

    /// Bumps the header's sequence number by one if this handle has
    /// `TDB_SEQNUM` (libtdb's `tdb_increment_seqnum_nonblock`): an atomic
    /// add on the mapped header word, or a read-modify-write under the
    /// sequence-number lock when the file is not mapped.
    pub fn increment_seqnum(&self) -> Result<()> {
        self.inner()?.bump_seqnum()
    }

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

    // ----- chain locks -----

    fn chainlock_impl(&self, key: &[u8], lt: LockType, wait: bool) -> Result<ChainLock<'_>> {
        self.chainlock_hashed(key, lt, wait).map(|(g, _)| g)
    }

    fn chainlock_hashed(
        &self,
        key: &[u8],
        lt: LockType,
        wait: bool,
    ) -> Result<(ChainLock<'_>, u32)> {
        let mut i = self.inner()?;
        let hash = i.hash.hash(key);
        let bucket = i.bucket(hash);
        i.io.prefetch(hash_top(bucket));
        i.lock_list(List::Chain(bucket), lt, wait)?;
        Ok((
            ChainLock {
                tdb: self,
                bucket,
                lt,
                released: false,
                _not_send: std::marker::PhantomData,
            },
            hash,
        ))
    }

    /// Lock the record `key` (its hash chain, exclusively), waiting if
    /// needed. The guard reads and writes that record without hashing or
    /// locking again: the fastest way to do a locked read-modify-write.
    pub fn lock_record<'k>(&self, key: &'k [u8]) -> Result<RecordLock<'_, 'k>> {
        let (chain, hash) = self.chainlock_hashed(key, LockType::Write, true)?;
        Ok(RecordLock { chain, key, hash })
    }

    /// Non-blocking [`Self::lock_record`]: [`Error::WouldBlock`] if another
    /// process (or a libtdb user) holds the chain. This is how the CTDB
    /// daemon takes record locks.
    pub fn lock_record_nonblock<'k>(&self, key: &'k [u8]) -> Result<RecordLock<'_, 'k>> {
        let (chain, hash) = self.chainlock_hashed(key, LockType::Write, false)?;
        Ok(RecordLock { chain, key, hash })
    }

    /// Lock the hash chain `key` belongs to, exclusively, waiting if needed.
    pub fn chainlock(&self, key: &[u8]) -> Result<ChainLock<'_>> {
        self.chainlock_impl(key, LockType::Write, true)
    }

    /// Lock the chain of `key` exclusively or fail with
    /// [`Error::WouldBlock`].
    pub fn chainlock_nonblock(&self, key: &[u8]) -> Result<ChainLock<'_>> {
        self.chainlock_impl(key, LockType::Write, false)
    }

    /// Lock the chain of `key` shared (exclusive in mutex mode).
    pub fn chainlock_read(&self, key: &[u8]) -> Result<ChainLock<'_>> {
        self.chainlock_impl(key, LockType::Read, true)
    }

    /// Non-blocking [`Self::chainlock_read`].
    pub fn chainlock_read_nonblock(&self, key: &[u8]) -> Result<ChainLock<'_>> {
        self.chainlock_impl(key, LockType::Read, false)
    }

    /// Take the freelist lock without waiting (tests of lock interop only).
    #[doc(hidden)]
    pub fn testing_freelist_lock_nonblock(&self) -> Result<()> {
        self.inner()?.lock_list(List::Free, LockType::Write, false)
    }

    /// Release the lock taken by [`Self::testing_freelist_lock_nonblock`].
    #[doc(hidden)]
    pub fn testing_freelist_unlock(&self) -> Result<()> {
        self.inner()?.unlock_list(List::Free, LockType::Write)
    }

    // ----- all-record locks -----

    fn lockall_impl(&self, lt: LockType, wait: bool) -> Result<AllLock<'_>> {
        self.inner()?.allrecord_lock(lt, wait, false)?;
        Ok(AllLock {
            tdb: self,
            lt,
            released: false,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Lock all records exclusively (libtdb `tdb_lockall`).
    pub fn lockall(&self) -> Result<AllLock<'_>> {
        self.lockall_impl(LockType::Write, true)
    }
    /// Non-blocking [`Self::lockall`].
    pub fn lockall_nonblock(&self) -> Result<AllLock<'_>> {
        self.lockall_impl(LockType::Write, false)
    }
    /// Lock all records shared.
    pub fn lockall_read(&self) -> Result<AllLock<'_>> {
        self.lockall_impl(LockType::Read, true)
    }
    /// Non-blocking [`Self::lockall_read`].
    pub fn lockall_read_nonblock(&self) -> Result<AllLock<'_>> {
        self.lockall_impl(LockType::Read, false)
    }
}

fn fetch_locked(i: &mut Inner, key: &[u8], hash: u32, out: &mut Vec<u8>) -> Result<bool> {
    out.clear();
    match i.find(key, hash)? {
        None => Ok(false),
        Some((off, rec)) => {
            i.read_append(off + REC_SIZE + rec.key_len, rec.data_len, out)?;
            Ok(true)
        }
    }
}

fn parse_locked<R>(
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

/// A held chain lock (see [`Tdb::chainlock`]). Records in the locked chain
/// can be read and written through the guard without taking the lock again;
/// this is the fast path CTDB uses for every record it touches. Released on
/// drop (or explicitly with [`ChainLock::unlock`]).
#[must_use = "the chain is unlocked as soon as the guard is dropped"]
pub struct ChainLock<'a> {
    tdb: &'a Tdb,
    bucket: u32,
    lt: LockType,
    released: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for ChainLock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainLock")
            .field("bucket", &self.bucket)
            .field("type", &self.lt)
            .finish()
    }
}

impl ChainLock<'_> {
    /// The locked chain.
    pub fn bucket(&self) -> u32 {
        self.bucket
    }

    /// Run `op` with the chain locked for `key`: directly when `key` hashes
    /// to the locked chain, else by taking that chain's lock too.
    fn with<R>(
        &self,
        key: &[u8],
        write: bool,
        op: impl FnOnce(&mut Inner, u32) -> Result<R>,
    ) -> Result<R> {
        let mut i = self.tdb.inner()?;
        let hash = i.hash.hash(key);
        let bucket = i.bucket(hash);
        let need_write = write && self.lt == LockType::Read;
        if bucket == self.bucket && !need_write {
            return op(&mut i, hash);
        }
        let lt = if write {
            LockType::Write
        } else {
            LockType::Read
        };
        i.with_list_locked(List::Chain(bucket), lt, |i| op(i, hash))
    }

    /// Fetch `key` (see [`Tdb::fetch`]).
    pub fn fetch(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let found = self.with(key, false, |i, h| fetch_locked(i, key, h, &mut out))?;
        Ok(if found { Some(out) } else { None })
    }

    /// Fetch into a reused buffer; returns whether the key exists.
    pub fn fetch_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.with(key, false, |i, h| fetch_locked(i, key, h, out))
    }

    /// Zero-copy read of `key`'s value (see [`Tdb::parse`]).
    pub fn parse<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.with(key, false, |i, h| parse_locked(i, key, h, f))
    }

    /// Does `key` exist?
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        self.with(key, false, |i, h| i.find(key, h).map(|x| x.is_some()))
    }

    /// Store `data` under `key`.
    pub fn store(&self, key: &[u8], data: &[u8], mode: StoreMode) -> Result<()> {
        self.with(key, true, |i, h| i.store_locked(key, h, &[data], mode))
    }

    /// Store the concatenation of `parts` under `key`.
    pub fn storev(&self, key: &[u8], parts: &[&[u8]], mode: StoreMode) -> Result<()> {
        self.with(key, true, |i, h| i.store_locked(key, h, parts, mode))
    }

    /// Delete `key`.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.with(key, true, |i, h| i.delete_locked(key, h))
    }

    /// Release the lock, reporting errors (dropping releases silently).
    pub fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.tdb
            .inner()?
            .unlock_list(List::Chain(self.bucket), self.lt)
    }
}

impl Drop for ChainLock<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        match self.tdb.inner() {
            Ok(mut i) => {
                if let Err(e) = i.unlock_list(List::Chain(self.bucket), self.lt) {
                    tracing::error!(error = %e, bucket = self.bucket, "chain unlock failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "chain unlock impossible"),
        }
    }
}

/// A locked record (see [`Tdb::lock_record`]): the chain lock of one key,
/// bound to that key. Released on drop.
#[must_use = "the record is unlocked as soon as the guard is dropped"]
pub struct RecordLock<'a, 'k> {
    chain: ChainLock<'a>,
    key: &'k [u8],
    hash: u32,
}

impl std::fmt::Debug for RecordLock<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLock")
            .field("key", &self.key)
            .field("bucket", &self.chain.bucket)
            .finish()
    }
}

impl<'a> RecordLock<'a, '_> {
    /// The locked key.
    pub fn key(&self) -> &[u8] {
        self.key
    }

    /// The underlying chain lock, for other keys of the same chain.
    pub fn chain(&self) -> &ChainLock<'a> {
        &self.chain
    }

    #[inline]
    fn inner(&self) -> Result<RefMut<'_, Inner>> {
        self.chain.tdb.inner()
    }

    /// The record's value, if it exists.
    pub fn fetch(&self) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(if self.fetch_into(&mut out)? {
            Some(out)
        } else {
            None
        })
    }

    /// Fetch into a reused buffer; returns whether the record exists.
    #[inline]
    pub fn fetch_into(&self, out: &mut Vec<u8>) -> Result<bool> {
        fetch_locked(&mut *self.inner()?, self.key, self.hash, out)
    }

    /// Zero-copy read of the value; `f` must not use the database.
    pub fn parse<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        parse_locked(&mut *self.inner()?, self.key, self.hash, f)
    }

    /// Does the record exist?
    pub fn exists(&self) -> Result<bool> {
        Ok(self.inner()?.find(self.key, self.hash)?.is_some())
    }

    /// Store `data` as the record's value.
    #[inline]
    pub fn store(&self, data: &[u8], mode: StoreMode) -> Result<()> {
        self.inner()?
            .store_locked(self.key, self.hash, &[data], mode)
    }

    /// Store the concatenation of `parts` (e.g. a header and a payload).
    pub fn storev(&self, parts: &[&[u8]], mode: StoreMode) -> Result<()> {
        self.inner()?.store_locked(self.key, self.hash, parts, mode)
    }

    /// Delete the record ([`Error::NotFound`] if it does not exist).
    pub fn delete(&self) -> Result<()> {
        self.inner()?.delete_locked(self.key, self.hash)
    }

    /// Release the lock, reporting errors.
    pub fn unlock(self) -> Result<()> {
        self.chain.unlock()
    }
}

/// A held all-record lock (see [`Tdb::lockall`]); released on drop.
#[must_use = "the database is unlocked as soon as the guard is dropped"]
pub struct AllLock<'a> {
    tdb: &'a Tdb,
    lt: LockType,
    released: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for AllLock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllLock").field("type", &self.lt).finish()
    }
}

impl AllLock<'_> {
    /// Release the lock, reporting errors.
    pub fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.tdb.inner()?.allrecord_unlock(self.lt)
    }
}

impl Drop for AllLock<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        match self.tdb.inner() {
            Ok(mut i) => {
                if let Err(e) = i.allrecord_unlock(self.lt) {
                    tracing::error!(error = %e, "all-record unlock failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "all-record unlock impossible"),
        }
    }
}

// ---------------------------------------------------------------------------
// Opening

fn read_header_at(file: &File, off: u64) -> Result<Option<[u8; HEADER_SIZE as usize]>> {
    let mut buf = [0u8; HEADER_SIZE as usize];
    let mut got = 0usize;
    while got < buf.len() {
        let n = file.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Ok(None);
    }
    if got < buf.len() {
        return Err(Error::corrupt(0u32, "file is shorter than a TDB header"));
    }
    Ok(Some(buf))
}

fn open_inner(file: File, path: &Path, o: &OpenOptions) -> Result<Inner> {
    let read_only = o.read_only;
    let nolock = o.no_lock || read_only;
    let clear_if_first = o.clear_if_first && !read_only;
    let want_mutex = o.mutex_locking && !read_only;
    let jenkins = o.incompatible_hash || want_mutex;
    let default_kind = if jenkins {
        HashKind::Jenkins
    } else {
        HashKind::Default
    };
    let no_sync = o.no_sync || std::env::var_os("TDB_NO_FSYNC").is_some();
    let io = Io::new(file, 0, read_only, !o.no_mmap, no_sync);
    let mut inner = Inner {
        io,
        tx: None,
        hash_size: 0,
        mod_m: 0,
        hash: default_kind,
        features: 0,
        mutexes: None,
        locks: Vec::with_capacity(4),
        allrecord: AllRecord::default(),
        travlocks: Vec::new(),
        traverse_read: 0,
        traverse_write: 0,
        nolock,
        seqnum: o.seqnum,
        allow_nesting: o.allow_nesting,
        max_dead: o.max_dead,
        starting_tx: false,
        chain_hint: None,
        path: path.to_path_buf(),
    };

    // Only one opener initialises at a time.
    inner.nest_lock(lockoff::OPEN, LockType::Write, true)?;

    let mut first = false;
    if clear_if_first && !nolock {
        match inner.nest_lock(lockoff::ACTIVE, LockType::Write, false) {
            Ok(()) => first = true,
            Err(Error::WouldBlock) => {}
            Err(e) => return Err(e),
        }
        if first {
            // Nobody else has it open: start from scratch.
            inner.brlock(LockType::Write, FREELIST_TOP, 0, true)?;
            let r = new_database(&mut inner, o.hash_size, default_kind, want_mutex);
            inner.brunlock(FREELIST_TOP, 0)?;
            r?;
        }
    } else if clear_if_first && nolock {
        new_database(&mut inner, o.hash_size, default_kind, want_mutex)?;
    }

    let raw = match read_header_at(&inner.io.file, 0)? {
        Some(b) => b,
        None => {
            if !o.create || read_only {
                return Err(Error::BadMagic);
            }
            new_database(&mut inner, o.hash_size, default_kind, want_mutex)?;
            read_header_at(&inner.io.file, 0)?.ok_or(Error::BadMagic)?
        }
    };
    let hdr = Header::parse(&raw)?;
    if hdr.version != VERSION {
        if hdr.version == VERSION.swap_bytes() {
            return Err(Error::UnsupportedFeature(
                "byte-swapped (foreign endian) database".into(),
            ));
        }
        return Err(Error::UnsupportedVersion(hdr.version));
    }
    if hdr.rwlocks != 0 && hdr.rwlocks != FEATURE_FLAG_MAGIC && hdr.rwlocks != HASH_RWLOCK_MAGIC {
        return Err(Error::UnsupportedFeature(
            "spinlock (rwlocks) database".into(),
        ));
    }
    if hdr.hash_size == 0 {
        return Err(Error::corrupt(format::OFF_HASH_SIZE, "hash size is zero"));
    }
    if hdr.hash_size > (u32::MAX - HEADER_SIZE) / 4 - 2 {
        return Err(Error::corrupt(format::OFF_HASH_SIZE, "hash size too large"));
    }
    let features = hdr.effective_features();
    if features & !SUPPORTED_FEATURE_FLAGS != 0 {
        return Err(Error::UnsupportedFeature(format!(
            "feature flags {:#x}",
            features & !SUPPORTED_FEATURE_FLAGS
        )));
    }
    inner.hash_size = hdr.hash_size;
    inner.mod_m = (u64::MAX / hdr.hash_size as u64).wrapping_add(1);
    inner.features = features;

    let mut hdr_ofs = 0u64;
    if features & FEATURE_FLAG_MUTEX != 0 {
        let expect = mutex::area_size(hdr.hash_size, inner.io.page_size);
        if !nolock && hdr.mutex_size as u64 != expect {
            return Err(Error::UnsupportedFeature(format!(
                "mutex area of {} bytes, this platform needs {}",
                hdr.mutex_size, expect
            )));
        }
        if (hdr.mutex_size as u64) < HEADER_SIZE as u64 {
            return Err(Error::corrupt(
                format::OFF_MUTEX_SIZE,
                "mutex area too small",
            ));
        }
        hdr_ofs = hdr.mutex_size as u64;
        // The real header lives behind the mutex area and must agree.
        let second = read_header_at(&inner.io.file, hdr_ofs)?
            .ok_or(Error::corrupt(0u32, "file ends inside the mutex area"))?;
        let h2 = Header::parse(&second)?;
        if h2.hash_size != hdr.hash_size || h2.version != hdr.version {
            return Err(Error::corrupt(0u32, "header copies disagree"));
        }
        if !nolock {
            if inner.mutexes.is_none() {
                inner.mutexes = Some(MutexArea::map(&inner.io.file, hdr.hash_size, hdr_ofs)?);
            }
            if !clear_if_first && !read_only {
                // First user of an existing mutex database: the mutexes may be
                // stale (left by a crashed process), so start them afresh.
                match inner.nest_lock(lockoff::ACTIVE, LockType::Write, false) {
                    Ok(()) => {
                        first = true;
                        inner.mutexes.as_ref().expect("mapped above").init()?;
                    }
                    Err(Error::WouldBlock) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    } else {
        // A header without the mutex feature: no mutex area.
        inner.mutexes = None;
    }
    if nolock {
        inner.mutexes = None;
    }

    inner.hash = detect_hash(&hdr, default_kind)?;

    inner.io.hdr_ofs = hdr_ofs;
    inner.io.refresh()?;
    if (inner.io.size as u64) < data_start(inner.hash_size) as u64 {
        return Err(Error::corrupt(
            FREELIST_TOP,
            "hash table extends beyond the end of the file",
        ));
    }

    if first {
        inner.nest_unlock(lockoff::ACTIVE)?;
    }
    if !nolock && (first || clear_if_first || inner.mutexes.is_some()) {
        inner.nest_lock(lockoff::ACTIVE, LockType::Read, true)?;
    }

    // Repair an interrupted commit.
    if inner.needs_recovery() {
        if read_only {
            return Err(Error::corrupt(
                format::OFF_RECOVERY_START,
                "interrupted transaction needs recovery, but the database is read-only",
            ));
        }
        inner.transaction_recover()?;
    }

    inner.nest_unlock(lockoff::OPEN)?;
    tracing::debug!(
        path = %path.display(),
        hash_size = inner.hash_size,
        hash = ?inner.hash,
        mutexes = inner.mutexes.is_some(),
        "opened tdb"
    );
    Ok(inner)
}

/// Which hash function wrote this header?
fn detect_hash(hdr: &Header, preferred: HashKind) -> Result<HashKind> {
    if hdr.magic1_hash == 0 && hdr.magic2_hash == 0 {
        return Ok(HashKind::Default);
    }
    for k in [preferred, preferred.other()] {
        if k.header_hashes() == (hdr.magic1_hash, hdr.magic2_hash) {
            return Ok(k);
        }
    }
    Err(Error::UnsupportedFeature(
        "the file uses an unknown (custom) hash function".into(),
    ))
}

/// Write an empty database into the (locked) file.
fn new_database(inner: &mut Inner, hash_size: u32, kind: HashKind, mutexed: bool) -> Result<()> {
    let hash_size = if hash_size == 0 {
        format::DEFAULT_HASH_SIZE
    } else {
        hash_size
    };
    if hash_size > (u32::MAX - HEADER_SIZE) / 4 - 2 {
        return Err(Error::Invalid("hash size too large"));
    }
    let (m1, m2) = kind.header_hashes();
    let mut hdr = Header {
        version: VERSION,
        hash_size,
        rwlocks: if kind == HashKind::Jenkins {
            HASH_RWLOCK_MAGIC
        } else {
            0
        },
        magic1_hash: m1,
        magic2_hash: m2,
        ..Default::default()
    };
    if mutexed {
        hdr.feature_flags |= FEATURE_FLAG_MUTEX;
    }
    if hdr.feature_flags != 0 {
        hdr.rwlocks = FEATURE_FLAG_MAGIC;
    }
    let mutex_size = if mutexed {
        mutex::area_size(hash_size, inner.io.page_size)
    } else {
        0
    };
    hdr.mutex_size = mutex_size as u32;
    let mut buf = hdr.to_bytes().to_vec();
    buf.resize(data_start(hash_size) as usize, 0);

    let file = &inner.io.file;
    file.set_len(0)?;
    file.write_all_at(&buf, 0)?;
    inner.mutexes = None;
    if mutexed {
        file.set_len(mutex_size + HEADER_SIZE as u64)?;
        let area = MutexArea::map(file, hash_size, mutex_size)?;
        area.init()?;
        inner.mutexes = Some(area);
        file.write_all_at(&buf, mutex_size)?;
    }
    inner.hash_size = hash_size;
    inner.mod_m = (u64::MAX / hash_size as u64).wrapping_add(1);
    inner.features = hdr.feature_flags;
    Ok(())
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
