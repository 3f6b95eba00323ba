//! Transactions and crash recovery.
//!
//! # While a transaction runs
//!
//! [`Tdb::transaction_start`] takes the transaction lock (one writer
//! transaction per file) and a *shared, upgradable* lock on all records, so
//! other processes can still read but nobody can write. Every write of the
//! transaction goes to private copies of the touched pages (the *overlay*);
//! reads look at the overlay first. The file itself is not touched, so a
//! cancel just forgets the overlay. Growth of the file is simulated too.
//!
//! # Commit, in an order that survives a crash at any point
//!
//! 1. Upgrade to an exclusive all-record lock, take the open lock (no new
//!    opener can run recovery under our feet).
//! 2. Find room for the *recovery area* (reuse the old one if big enough,
//!    otherwise free it and put a new one at the end of the file), grow the
//!    file, point the header's `recovery_start` at it.
//! 3. Write the recovery record with the **old** contents of every page the
//!    transaction changed, with an invalid magic; `fsync`.
//! 4. Set the recovery magic; `fsync`. From here on, any opener (ours or
//!    libtdb) that finds the magic copies the old pages back.
//! 5. Write the new pages into the file; `fsync`.
//! 6. Clear the recovery magic; `fsync`. The transaction is committed when
//!    this is on disk.
//!
//! A crash before step 4 leaves the file as it was (the new recovery area is
//! inert); between 4 and 6, recovery rolls the file back to the state before
//! the transaction. `no_sync` skips the `fsync`s: still safe if only the
//! process dies, not if the machine does.
//!
//! # Recovery record layout
//!
//! ```text
//! record header: next=0, rec_len=room, key_len=file size before the
//!                transaction, data_len=bytes used, magic=RECOVERY_MAGIC
//! then repeated: u32 offset, u32 length, <length> bytes of old contents
//! then a u32 tailer (24 + rec_len)
//! ```

use crate::Inner;
use crate::db::Tdb;
use crate::error::{Error, Result};
use crate::format::{
    self, OFF_RECOVERY_START, PAD_BYTE, REC_OFF_MAGIC, REC_SIZE, RECOVERY_INVALID_MAGIC,
    RECOVERY_MAGIC, Record, data_start, lockoff,
};
use crate::freelist::expand_adjust;
use crate::io::Io;
use crate::lock::LockType;

/// How long [`Tdb::repack`] keeps trying when readers are in the way.
pub const REPACK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// In-memory state of a running transaction.
pub(crate) struct Tx {
    /// Private copies of touched pages, indexed by page number.
    blocks: Vec<Option<Box<[u8]>>>,
    block_size: u32,
    /// Size of the file when the transaction started.
    old_size: u32,
    /// Size of the file as the transaction sees it.
    pub(crate) size: u32,
    nesting: u32,
    /// Some write failed: the transaction can only be cancelled.
    error: bool,
    prepared: bool,
    /// Where we set the recovery magic (to clear it when done).
    magic_offset: Option<u32>,
    expanded: bool,
    /// Commit only if the exclusive lock comes soon ([`Transaction::commit_or_yield`]).
    pub(crate) yield_at_commit: bool,
}

impl Tx {
    fn new(block_size: u32, size: u32) -> Tx {
        Tx {
            blocks: Vec::new(),
            block_size,
            old_size: size,
            size,
            nesting: 0,
            error: false,
            prepared: false,
            magic_offset: None,
            expanded: false,
            yield_at_commit: false,
        }
    }

    fn dirty(&self) -> bool {
        self.blocks.iter().any(|b| b.is_some())
    }

    /// Fill `buf` with file contents at `off` that no transaction write has
    /// touched: the real file below the old size, pad bytes above it.
    fn read_base(&self, io: &mut Io, off: u32, buf: &mut [u8]) -> Result<()> {
        let end = off as u64 + buf.len() as u64;
        let real_end = std::cmp::min(end, self.old_size as u64);
        let mut split = 0usize;
        if (off as u64) < real_end {
            split = (real_end - off as u64) as usize;
            io.read(off, &mut buf[..split])?;
        }
        buf[split..].fill(PAD_BYTE);
        Ok(())
    }

    pub(crate) fn read(&mut self, io: &mut Io, mut off: u32, mut buf: &mut [u8]) -> Result<()> {
        if off as u64 + buf.len() as u64 > self.size as u64 {
            return Err(Error::corrupt(off, "access beyond the end of the file"));
        }
        let bs = self.block_size;
        while !buf.is_empty() {
            let blk = (off / bs) as usize;
            let boff = (off % bs) as usize;
            let n = std::cmp::min(bs as usize - boff, buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match self.blocks.get(blk) {
                Some(Some(b)) => now.copy_from_slice(&b[boff..boff + n]),
                _ => {
                    if let Err(e) = self.read_base(io, off, now) {
                        self.error = true;
                        return Err(e);
                    }
                }
            }
            buf = rest;
            off += n as u32;
        }
        Ok(())
    }

    fn block_mut(&mut self, io: &mut Io, blk: usize) -> Result<&mut [u8]> {
        if self.blocks.len() <= blk {
            self.blocks.resize_with(blk + 1, || None);
        }
        if self.blocks[blk].is_none() {
            let bs = self.block_size;
            let mut b = vec![0u8; bs as usize].into_boxed_slice();
            let start = blk as u64 * bs as u64;
            let len = std::cmp::min(bs as u64, (self.size as u64).saturating_sub(start)) as usize;
            self.read_base(io, start as u32, &mut b[..len])?;
            self.blocks[blk] = Some(b);
        }
        Ok(self.blocks[blk].as_deref_mut().expect("just filled"))
    }

    pub(crate) fn write(&mut self, io: &mut Io, mut off: u32, mut buf: &[u8]) -> Result<()> {
        if self.prepared {
            self.error = true;
            return Err(Error::Invalid(
                "transaction already prepared: no more writes",
            ));
        }
        if off as u64 + buf.len() as u64 > self.size as u64 {
            self.error = true;
            return Err(Error::corrupt(off, "access beyond the end of the file"));
        }
        let bs = self.block_size;
        while !buf.is_empty() {
            let blk = (off / bs) as usize;
            let boff = (off % bs) as usize;
            let n = std::cmp::min(bs as usize - boff, buf.len());
            match self.block_mut(io, blk) {
                Ok(b) => b[boff..boff + n].copy_from_slice(&buf[..n]),
                Err(e) => {
                    self.error = true;
                    return Err(e);
                }
            }
            buf = &buf[n..];
            off += n as u32;
        }
        Ok(())
    }

    /// Update pages already in the overlay (so that writes made directly to
    /// the file during commit are not undone by stale overlay pages).
    fn write_existing(&mut self, mut off: u32, mut buf: &[u8]) {
        let bs = self.block_size;
        while !buf.is_empty() {
            let blk = (off / bs) as usize;
            let boff = (off % bs) as usize;
            let n = std::cmp::min(bs as usize - boff, buf.len());
            if let Some(Some(b)) = self.blocks.get_mut(blk) {
                b[boff..boff + n].copy_from_slice(&buf[..n]);
            }
            buf = &buf[n..];
            off += n as u32;
        }
    }

    /// Grow the transaction's view of the file.
    pub(crate) fn expand(&mut self, add: u32) {
        self.size += add;
        self.expanded = true;
    }

    /// (page offset, length) of every touched page that existed before the
    /// transaction, clipped to the old file size.
    fn old_extents(&self) -> Vec<(u32, u32)> {
        let bs = self.block_size as u64;
        self.blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_some())
            .filter_map(|(i, _)| {
                let start = i as u64 * bs;
                if start >= self.old_size as u64 {
                    return None;
                }
                let len = std::cmp::min(bs, self.old_size as u64 - start);
                Some((start as u32, len as u32))
            })
            .collect()
    }

    fn recovery_size(&self) -> Option<u32> {
        let mut n: u64 = 4;
        for (_, len) in self.old_extents() {
            n += 8 + len as u64;
        }
        u32::try_from(n).ok()
    }
}

impl Inner {
    // ----- recovery (works on the real file, never inside a transaction) --

    /// Does the file hold a valid recovery record, i.e. did a process die
    /// in the middle of a commit? Unreadable recovery information counts as
    /// "yes", so that the repair attempt reports the damage.
    pub(crate) fn needs_recovery(&mut self) -> bool {
        let head = match self.io.read_u32(OFF_RECOVERY_START) {
            Ok(h) => h,
            Err(_) => return true,
        };
        if head == 0 {
            return false;
        }
        match head.checked_add(REC_OFF_MAGIC).map(|o| self.io.read_u32(o)) {
            Some(Ok(m)) => m == RECOVERY_MAGIC,
            _ => true,
        }
    }

    /// Copy the old pages saved in the recovery area back into the file.
    pub(crate) fn transaction_recover(&mut self) -> Result<()> {
        debug_assert!(self.tx.is_none());
        let head = self.io.read_u32(OFF_RECOVERY_START)?;
        if head == 0 {
            return Ok(());
        }
        if head < data_start(self.hash_size) {
            return Err(Error::corrupt(
                OFF_RECOVERY_START,
                "recovery pointer into the header",
            ));
        }
        let mut hb = [0u8; REC_SIZE as usize];
        self.io.read(head, &mut hb)?;
        let rec = Record::from_bytes(&hb);
        if rec.magic != RECOVERY_MAGIC {
            return Ok(());
        }
        if self.io.read_only {
            return Err(Error::corrupt(
                head,
                "interrupted transaction needs recovery, but the database is read-only",
            ));
        }
        if rec.data_len > rec.rec_len {
            return Err(Error::corrupt(head, "recovery data exceeds its area"));
        }
        let eof = rec.key_len;
        let mut data = vec![0u8; rec.data_len as usize];
        self.io.read(head + REC_SIZE, &mut data)?;

        // Validate every entry before writing anything.
        let mut entries = Vec::new();
        let mut p = 0usize;
        while p + 8 < data.len() {
            let ofs = format::get_u32(&data, p);
            let len = format::get_u32(&data, p + 4) as usize;
            let body = p + 8;
            if body + len > data.len() {
                return Err(Error::corrupt(head, "recovery entry runs past its data"));
            }
            if ofs as u64 + len as u64 > self.io.size as u64 {
                self.io.oob(ofs, len as u32)?;
            }
            entries.push((ofs, body, len));
            p = body + len;
        }
        for (ofs, body, len) in entries {
            self.io.write(ofs, &data[body..body + len])?;
        }
        self.io.sync(0, self.io.size)?;
        if eof <= head {
            // The recovery area lies beyond the restored end of file.
            self.io.write_u32(OFF_RECOVERY_START, 0)?;
        }
        self.io
            .write_u32(head + REC_OFF_MAGIC, RECOVERY_INVALID_MAGIC)?;
        self.io.sync(0, eof)?;
        tracing::info!(path = %self.path.display(), restored_size = eof, "recovered interrupted transaction");
        Ok(())
    }

    /// The existing recovery area, read from the real file: (offset, record),
    /// or `None` if there is none or it is unusable.
    fn recovery_area(&mut self) -> Option<(u32, Record)> {
        let head = self.io.read_u32(OFF_RECOVERY_START).ok()?;
        if head == 0 || head < data_start(self.hash_size) {
            return None;
        }
        let mut hb = [0u8; REC_SIZE as usize];
        self.io.read(head, &mut hb).ok()?;
        let rec = Record::from_bytes(&hb);
        if rec.magic != RECOVERY_MAGIC && rec.magic != RECOVERY_INVALID_MAGIC {
            return None;
        }
        if rec.rec_len < 4
            || self
                .io
                .oob(head, REC_SIZE.checked_add(rec.rec_len)?)
                .is_err()
        {
            return None;
        }
        Some((head, rec))
    }

    // ----- transaction life cycle -----

    pub(crate) fn transaction_start(&mut self, wait: bool) -> Result<()> {
        if self.io.read_only || self.traverse_read > 0 {
            return Err(Error::ReadOnly);
        }
        if let Some(tx) = &mut self.tx {
            if !self.allow_nesting {
                return Err(Error::Nesting);
            }
            tx.nesting += 1;
            return Ok(());
        }
        if self.have_extra_locks() {
            return Err(Error::Lock(
                "cannot start a transaction while holding locks",
            ));
        }
        if !self.travlocks.is_empty() || self.traverse_write > 0 {
            return Err(Error::Lock("cannot start a transaction inside a traverse"));
        }
        self.nest_lock(lockoff::TRANSACTION, LockType::Write, wait)?;
        self.starting_tx = true;
        let r = self.allrecord_lock(LockType::Read, true, true);
        self.starting_tx = false;
        if let Err(e) = r {
            let _ = self.nest_unlock(lockoff::TRANSACTION);
            return Err(e);
        }
        if let Err(e) = self.io.refresh() {
            self.release_transaction_locks();
            return Err(e);
        }
        self.tx = Some(Box::new(Tx::new(self.io.page_size, self.io.size)));
        Ok(())
    }

    fn tx_ref(&mut self) -> Result<&mut Tx> {
        self.tx
            .as_deref_mut()
            .ok_or(Error::Invalid("no transaction is active"))
    }

    /// Cancel (one nesting level of) the transaction.
    pub(crate) fn transaction_cancel(&mut self) -> Result<()> {
        let tx = self.tx_ref()?;
        if tx.nesting > 0 {
            tx.error = true;
            tx.nesting -= 1;
            return Ok(());
        }
        self.transaction_cancel_all()
    }

    /// Throw the whole transaction away and drop its locks.
    pub(crate) fn transaction_cancel_all(&mut self) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Err(Error::Invalid("no transaction is active"));
        };
        let mut res = Ok(());
        if let Some(mo) = tx.magic_offset {
            // Commit did not finish: make the recovery area inert again (the
            // file still holds the old data, or the complete new data).
            res = self
                .io
                .write_u32(mo, RECOVERY_INVALID_MAGIC)
                .and_then(|()| self.io.sync(mo, 4));
        }
        self.release_transaction_locks();
        res
    }

    pub(crate) fn transaction_prepare_commit(&mut self) -> Result<()> {
        let tx = self.tx_ref()?;
        if tx.prepared {
            self.transaction_cancel_all()?;
            return Err(Error::Invalid("transaction already prepared"));
        }
        if tx.error {
            self.transaction_cancel_all()?;
            return Err(Error::TransactionFailed);
        }
        if tx.nesting > 0 || !tx.dirty() {
            return Ok(());
        }
        let r = self.prepare_inner();
        if r.is_err() {
            let _ = self.transaction_cancel_all();
        }
        r
    }

    fn prepare_inner(&mut self) -> Result<()> {
        if self.have_extra_locks() {
            return Err(Error::Lock("locks still held at commit"));
        }
        self.allrecord_upgrade()?;
        self.nest_lock(lockoff::OPEN, LockType::Write, true)?;
        self.setup_recovery()?;
        let tx = self.tx_ref()?;
        tx.prepared = true;
        let need = tx.size;
        if self.io.size < need {
            let cur = self.io.size;
            self.io.expand_file(cur, need - cur)?;
        }
        Ok(())
    }

    /// Steps 2-4 of the commit protocol (see the module docs).
    fn setup_recovery(&mut self) -> Result<()> {
        let mut area = self.recovery_area();
        let mut rsize = self
            .tx_ref()?
            .recovery_size()
            .ok_or(Error::Invalid("transaction too large"))?;
        let (head, max) = match area {
            Some((head, rec)) if rsize <= rec.rec_len => (head, rec.rec_len),
            _ => {
                let tx_size = self.tx_ref()?.size;
                let mut head = tx_size;
                if let Some((h, rec)) = area.take() {
                    if h as u64 + REC_SIZE as u64 + rec.rec_len as u64 == tx_size as u64 {
                        // Last thing in the file: just grow it in place.
                        head = h;
                    } else {
                        // Give the old area back (inside the transaction) and
                        // put a new one at the end.
                        let mut r = rec;
                        self.free(h, &mut r)?;
                        rsize = self
                            .tx_ref()?
                            .recovery_size()
                            .ok_or(Error::Invalid("transaction too large"))?;
                    }
                }
                let max = expand_adjust(head, rsize, self.io.page_size)
                    .checked_sub(REC_SIZE)
                    .filter(|&m| m >= rsize)
                    .ok_or(Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)))?;
                let end = (head as u64) + REC_SIZE as u64 + max as u64;
                if end > u32::MAX as u64 {
                    return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)));
                }
                let cur = self.io.size;
                if (cur as u64) < end {
                    self.io.expand_file(cur, end as u32 - cur)?;
                }
                crate::testing::crash_point();
                // Safe to point at it now: its magic is not valid yet.
                self.io.write_u32(OFF_RECOVERY_START, head)?;
                crate::testing::crash_point();
                self.tx_ref()?
                    .write_existing(OFF_RECOVERY_START, &head.to_ne_bytes());
                (head, max)
            }
        };

        let tx = self.tx.as_deref().expect("transaction active");
        let extents = tx.old_extents();
        let old_size = tx.old_size;
        let mut blob = Vec::with_capacity(REC_SIZE as usize + rsize as usize);
        let hdr = Record {
            next: 0,
            rec_len: max,
            key_len: old_size,
            data_len: rsize,
            full_hash: 0,
            magic: RECOVERY_INVALID_MAGIC,
        };
        blob.extend_from_slice(&hdr.to_bytes());
        for (off, len) in extents {
            blob.extend_from_slice(&off.to_ne_bytes());
            blob.extend_from_slice(&len.to_ne_bytes());
            let at = blob.len();
            blob.resize(at + len as usize, 0);
            // The old contents: straight from the file.
            self.io.read(off, &mut blob[at..])?;
        }
        blob.extend_from_slice(&(REC_SIZE + max).to_ne_bytes());
        debug_assert_eq!(blob.len(), (REC_SIZE + rsize) as usize);

        self.io.write(head, &blob)?;
        self.tx_ref()?.write_existing(head, &blob);
        crate::testing::crash_point();
        self.io.sync(head, blob.len() as u32)?;

        let mo = head + REC_OFF_MAGIC;
        self.io.write_u32(mo, RECOVERY_MAGIC)?;
        self.tx_ref()?
            .write_existing(mo, &RECOVERY_MAGIC.to_ne_bytes());
        self.tx_ref()?.magic_offset = Some(mo);
        crate::testing::crash_point();
        self.io.sync(mo, 4)?;
        crate::testing::crash_point();
        Ok(())
    }

    pub(crate) fn transaction_commit(&mut self) -> Result<bool> {
        let tx = self.tx_ref()?;
        if tx.error {
            self.transaction_cancel_all()?;
            return Err(Error::TransactionFailed);
        }
        if tx.nesting > 0 {
            tx.nesting -= 1;
            return Ok(false);
        }
        if !tx.dirty() {
            self.transaction_cancel_all()?;
            return Ok(false);
        }
        if !tx.prepared {
            self.transaction_prepare_commit()?;
        }

        // Step 5: the new pages go into the file.
        let mut tx = self.tx.take().expect("transaction active");
        let bs = tx.block_size;
        let size = tx.size;
        let mut res = Ok(());
        for (i, b) in tx.blocks.iter_mut().enumerate() {
            let Some(b) = b.take() else { continue };
            let off = i as u64 * bs as u64;
            let len = std::cmp::min(bs as u64, size as u64 - off) as usize;
            crate::testing::crash_point();
            if let Err(e) = self.io.write(off as u32, &b[..len]) {
                res = Err(e);
                break;
            }
        }
        if let Err(e) = res {
            tracing::error!(error = %e, "commit write failed; rolling back");
            let _ = self.transaction_recover();
            self.tx = Some(tx);
            let _ = self.transaction_cancel_all();
            return Err(e);
        }
        let need_repack = tx.expanded && self.repack_worthwhile();
        crate::testing::crash_point();
        let synced = self.io.sync(0, self.io.size);
        crate::testing::crash_point();
        // Make the change visible to backup tools that look at mtime.
        let _ = self.io.file.set_modified(std::time::SystemTime::now());
        // Step 6: the recovery magic goes (in the cancel path).
        tx.blocks.clear();
        self.tx = Some(tx);
        let cancelled = self.transaction_cancel_all();
        crate::testing::crash_point();
        synced?;
        cancelled?;
        Ok(need_repack)
    }
}

/// A running transaction (see [`Tdb::transaction_start`]).
///
/// While it exists every operation on the [`Tdb`] (it derefs to it) happens
/// inside the transaction. Dropping it without [`Transaction::commit`]
/// cancels it.
#[must_use = "dropping a transaction cancels it"]
pub struct Transaction<'a> {
    tdb: &'a Tdb,
    done: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("done", &self.done)
            .finish()
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Tdb;
    fn deref(&self) -> &Tdb {
        self.tdb
    }
}

impl Transaction<'_> {
    /// Do steps 1-4 of the commit now (see the module docs), leaving only
    /// the writes for [`Self::commit`]. Used for two-phase commits across
    /// several databases.
    pub fn prepare_commit(&mut self) -> Result<()> {
        let r = self.tdb.inner()?.transaction_prepare_commit();
        if r.is_err() && self.tdb.inner()?.tx.is_none() {
            self.done = true;
        }
        r
    }

    /// Make the transaction's changes permanent.
    pub fn commit(self) -> Result<()> {
        self.commit_inner(true)
    }

    /// [`Self::commit`], but if the exclusive lock the commit needs is not
    /// had soon, the transaction is cancelled and [`Error::WouldBlock`]
    /// returned, so that the caller can let go of everything and try again.
    ///
    /// With mutexes, a reader's traverse (libtdb's or ours) keeps its
    /// current record locked with `fcntl` while it takes the next chain;
    /// once the commit has made the all-record lock exclusive that reader
    /// waits for the all-record mutex, which the committer holds until it
    /// is done, while the committer waits for the reader's record lock: a
    /// deadlock no waiting ends. Giving up the transaction lets the reader
    /// through.
    pub fn commit_or_yield(self) -> Result<()> {
        if let Ok(mut i) = self.tdb.inner()
            && let Some(tx) = i.tx.as_deref_mut()
        {
            tx.yield_at_commit = true;
        }
        self.commit_inner(false)
    }

    fn commit_inner(mut self, allow_repack: bool) -> Result<()> {
        self.done = true;
        let need_repack = self.tdb.inner()?.transaction_commit()?;
        if need_repack
            && allow_repack
            && let Err(e) = self.tdb.repack()
        {
            tracing::warn!(error = %e, "repack after commit failed (not fatal)");
        }
        Ok(())
    }

    /// Throw the transaction away.
    pub fn cancel(mut self) -> Result<()> {
        self.done = true;
        self.tdb.inner()?.transaction_cancel()
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.tdb.inner() {
            Ok(mut i) => {
                if i.tx.is_some()
                    && let Err(e) = i.transaction_cancel()
                {
                    tracing::error!(error = %e, "transaction cancel failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "transaction cancel impossible"),
        }
    }
}

impl Tdb {
    /// Start a transaction, waiting for another process's transaction to
    /// finish. No chain or all-record locks may be held. With nesting
    /// allowed (the default), starting again inside a transaction nests.
    pub fn transaction_start(&self) -> Result<Transaction<'_>> {
        self.inner()?.transaction_start(true)?;
        Ok(Transaction {
            tdb: self,
            done: false,
            _not_send: std::marker::PhantomData,
        })
    }

    /// [`Self::transaction_start`], but [`Error::WouldBlock`] if another
    /// transaction is running.
    pub fn transaction_start_nonblock(&self) -> Result<Transaction<'_>> {
        self.inner()?.transaction_start(false)?;
        Ok(Transaction {
            tdb: self,
            done: false,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Is a transaction running on this handle?
    pub fn transaction_active(&self) -> bool {
        self.inner
            .try_borrow()
            .map(|i| i.tx.is_some())
            .unwrap_or(true)
    }

    /// Rewrite the database compactly: all records are copied out, the file
    /// is wiped and they are stored back, in one transaction. The file does
    /// not shrink, but its free space becomes one block.
    ///
    /// A commit that would wait for a reader which waits for us (see
    /// [`Transaction::commit_or_yield`]) is given up and the repack done
    /// again a little later, for up to [`REPACK_PATIENCE`].
    pub fn repack(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let tx = self.transaction_start()?;
            let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            self.traverse_read(|k, v| {
                records.push((k.to_vec(), v.to_vec()));
                std::ops::ControlFlow::Continue(())
            })?;
            self.wipe_all()?;
            for (k, v) in &records {
                self.store(k, v, crate::StoreMode::Insert)?;
            }
            match tx.commit_or_yield() {
                Err(Error::WouldBlock) if started.elapsed() < REPACK_PATIENCE => {
                    tracing::debug!("repack: readers hold records, trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }
}
