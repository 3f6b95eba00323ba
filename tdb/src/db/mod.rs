//! The database handle, [`Tdb`], split by concern:
//!
//! * [`open`]: the open options, the per-process registry of open files,
//!   and opening, checking and creating a file.
//! * [`inner`]: the handle's mutable state ([`Inner`]), byte access through
//!   the map or the running transaction, the chain hash, cycle detection.
//! * [`record`]: record lookup, store and delete on a locked chain, and the
//!   handle's record operations (fetch, store, delete, append, wipe).
//! * [`guards`]: the chain, record and all-record lock guards and the
//!   handle's methods that take them.
//!
//! This module holds the handle itself: its drop, and its accessors.

use std::cell::{RefCell, RefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::format::OFF_SEQNUM;
use crate::hash::HashKind;

mod guards;
mod inner;
mod open;
mod record;

pub use guards::{AllLock, ChainLock, RecordLock};
pub(crate) use inner::{Inner, LoopCheck};
use open::Registration;
pub use open::{OpenOptions, flags};
pub use record::StoreMode;

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
        // Our descriptor closes next (`inner`), then the entry goes.
        self._reg.closing();
    }
}

impl Tdb {
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
}
