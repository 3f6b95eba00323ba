//! Traversal: visiting every record.
//!
//! Chains are visited in order, each under its chain lock; the lock is
//! dropped before the caller sees a record, but a shared fcntl lock on the
//! *record* (one byte at its offset) is kept until the traversal moves on.
//! A deleter that finds that lock (or, in this process, the traversal's
//! bookkeeping) marks the record dead instead of freeing it, so the
//! traversal can always continue from it: deleting the current record inside
//! the callback is fine. Records added during a traversal may or may not be
//! seen (new records go to the head of their chain).
//!
//! * [`Tdb::traverse_read`]: shared chain locks; the callback cannot write.
//! * [`Tdb::traverse`]: exclusive chain locks plus the transaction lock (so a
//!   concurrent transaction cannot deadlock with it); the callback may store
//!   and delete, including the record it was given.
//! * [`Tdb::iter`]: a cursor in the style of libtdb's firstkey/nextkey;
//!   the database may be modified between steps.

use std::ops::ControlFlow;

use crate::Inner;
use crate::db::{LoopCheck, Tdb};
use crate::error::{Error, Result};
use crate::format::{REC_SIZE, Record, hash_top, lockoff};
use crate::lock::{List, LockType};

/// Where a traversal is.
pub(crate) struct TravState {
    list: u32,
    /// Record we sit on (record-locked and in `travlocks`), 0 if none.
    off: u32,
    lt: LockType,
    lc: LoopCheck,
}

impl TravState {
    fn new(lt: LockType) -> Self {
        TravState {
            list: 0,
            off: 0,
            lt,
            lc: LoopCheck::new(0),
        }
    }
}

impl Inner {
    /// First chain at or after `h` whose head is non-zero, looked at without
    /// locking (the value is re-read under the lock).
    fn next_nonempty_chain(&mut self, mut h: u32) -> u32 {
        while h < self.hash_size {
            match self.read_u32(hash_top(h)) {
                Ok(0) => h += 1,
                _ => break,
            }
        }
        h
    }

    /// Stop sitting on the current record.
    fn leave_record(&mut self, st: &mut TravState) -> Result<()> {
        if st.off == 0 {
            return Ok(());
        }
        let off = std::mem::take(&mut st.off);
        let r = self.unlock_record(off);
        if let Some(p) = self.travlocks.iter().position(|&o| o == off) {
            self.travlocks.swap_remove(p);
        }
        r
    }

    /// Move to the next live record. On success the chain `st.list` is left
    /// locked (the caller unlocks it after copying the record out) and the
    /// record is record-locked.
    fn next_lock(&mut self, st: &mut TravState) -> Result<Option<(u32, Record)>> {
        let mut want_next = st.off != 0;
        while st.list < self.hash_size {
            if st.off == 0 && st.list != 0 {
                // Skip empty chains without locking them. The first chain is
                // always locked, so that at least one lock orders our reads.
                st.list = self.next_nonempty_chain(st.list);
                if st.list >= self.hash_size {
                    break;
                }
            }
            let list = List::Chain(st.list);
            self.lock_list(list, st.lt, true)?;
            match self.scan_chain(st, want_next) {
                Ok(Some(x)) => return Ok(Some(x)),
                Ok(None) => {
                    self.unlock_list(list, st.lt)?;
                    want_next = false;
                    st.list += 1;
                    st.lc = LoopCheck::new(0);
                }
                Err(e) => {
                    let _ = self.leave_record(st);
                    let _ = self.unlock_list(list, st.lt);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    fn scan_chain(&mut self, st: &mut TravState, want_next: bool) -> Result<Option<(u32, Record)>> {
        let mut off = if st.off == 0 {
            let head = self.read_u32(hash_top(st.list))?;
            st.lc = LoopCheck::new(head);
            head
        } else {
            let prev = st.off;
            self.leave_record(st)?;
            prev
        };
        if want_next && off != 0 {
            let rec = self.read_rec(off)?;
            off = rec.next;
            st.lc.step(off)?;
        }
        while off != 0 {
            let rec = self.read_rec(off)?;
            if rec.next == off {
                return Err(Error::corrupt(off, "record points to itself"));
            }
            if !rec.is_dead() {
                self.lock_record(off)?;
                self.travlocks.push(off);
                st.off = off;
                return Ok(Some((off, rec)));
            }
            off = rec.next;
            st.lc.step(off)?;
        }
        Ok(None)
    }
}

/// Releases a traversal's record lock and counters however it ends.
struct TravGuard<'a> {
    tdb: &'a Tdb,
    st: TravState,
    read: bool,
    write: bool,
}

impl Drop for TravGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut i) = self.tdb.inner() {
            let _ = i.leave_record(&mut self.st);
            if self.read {
                i.traverse_read -= 1;
            }
            if self.write {
                i.traverse_write -= 1;
                let _ = i.nest_unlock(lockoff::TRANSACTION);
            }
        }
    }
}

impl Tdb {
    fn traverse_impl(
        &self,
        mut g: TravGuard<'_>,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<usize> {
        let mut buf = Vec::new();
        let mut count = 0usize;
        loop {
            let klen;
            {
                let mut i = self.inner()?;
                let Some((off, rec)) = i.next_lock(&mut g.st)? else {
                    break;
                };
                buf.clear();
                let r = i.read_append(off + REC_SIZE, rec.key_len + rec.data_len, &mut buf);
                let u = i.unlock_list(List::Chain(g.st.list), g.st.lt);
                r?;
                u?;
                klen = rec.key_len as usize;
            }
            count += 1;
            if f(&buf[..klen], &buf[klen..]).is_break() {
                break;
            }
        }
        Ok(count)
    }

    /// Visit every record with shared locks. The callback gets key and value
    /// and may stop the walk with `ControlFlow::Break(())`; it cannot modify
    /// the database ([`Error::ReadOnly`]). Returns the number of records
    /// visited.
    pub fn traverse_read(&self, f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>) -> Result<usize> {
        self.inner()?.traverse_read += 1;
        let g = TravGuard {
            tdb: self,
            st: TravState::new(LockType::Read),
            read: true,
            write: false,
        };
        self.traverse_impl(g, f)
    }

    /// Visit every record with exclusive locks; the callback may modify the
    /// database through the same handle, including deleting the record it is
    /// looking at. Read-only handles fall back to [`Self::traverse_read`].
    pub fn traverse(&self, f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>) -> Result<usize> {
        {
            let mut i = self.inner()?;
            if i.io.read_only || i.traverse_read > 0 {
                drop(i);
                return self.traverse_read(f);
            }
            // With all records locked, waiting for the transaction lock
            // could deadlock against a transaction waiting for us.
            let wait = i.allrecord.count == 0;
            i.nest_lock(lockoff::TRANSACTION, LockType::Write, wait)?;
            i.traverse_write += 1;
        }
        let g = TravGuard {
            tdb: self,
            st: TravState::new(LockType::Write),
            read: false,
            write: true,
        };
        self.traverse_impl(g, f)
    }

    /// Number of records (a read traversal).
    pub fn record_count(&self) -> Result<usize> {
        self.traverse_read(|_, _| ControlFlow::Continue(()))
    }

    /// Iterate over `(key, value)` pairs. Between steps the iterator keeps
    /// only a lock on the record it is at, so the database may be changed
    /// (even that record deleted) while iterating.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            tdb: self,
            st: TravState::new(LockType::Read),
            done: false,
        }
    }
}

/// Iterator returned by [`Tdb::iter`].
pub struct Iter<'a> {
    tdb: &'a Tdb,
    st: TravState,
    done: bool,
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = (|| {
            let mut i = self.tdb.inner()?;
            let Some((off, rec)) = i.next_lock(&mut self.st)? else {
                return Ok(None);
            };
            let mut key = Vec::with_capacity(rec.key_len as usize);
            let mut val = Vec::with_capacity(rec.data_len as usize);
            let r = i
                .read_append(off + REC_SIZE, rec.key_len, &mut key)
                .and_then(|()| i.read_append(off + REC_SIZE + rec.key_len, rec.data_len, &mut val));
            let u = i.unlock_list(List::Chain(self.st.list), self.st.lt);
            r?;
            u?;
            Ok(Some((key, val)))
        })();
        match r {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for Iter<'_> {
    fn drop(&mut self) {
        if let Ok(mut i) = self.tdb.inner() {
            let _ = i.leave_record(&mut self.st);
        }
    }
}
