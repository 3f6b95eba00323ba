//! Locking, compatible with libtdb processes working on the same file.
//!
//! # What is locked where
//!
//! Every lock is a byte range of the file, taken with POSIX `fcntl` locks,
//! except that in a database with the mutex feature the freelist and chain
//! locks are robust pthread mutexes in the mutex area instead
//! (see [`crate::mutex`]). The offsets are fixed by the format:
//!
//! | lock              | offset / range                          | kind |
//! |-------------------|-----------------------------------------|------|
//! | open              | byte 0                                  | fcntl |
//! | active            | byte 4 (held read by CLEAR_IF_FIRST users) | fcntl |
//! | transaction       | byte 8                                  | fcntl |
//! | sequence number   | byte 48                                 | fcntl |
//! | freelist          | byte 164                                | fcntl or mutex 0 |
//! | chain *b*         | byte 168 + 4*b                          | fcntl or mutex 1+*b* |
//! | all records       | bytes 168 .. EOF (fcntl); with mutexes: the all-record mutex + bytes 168+4*hash_size .. EOF | both |
//! | one record        | byte at the record's offset (traversals) | fcntl |
//!
//! # Nesting and processes
//!
//! fcntl locks belong to the *process*, do not nest, and are all dropped when
//! the process closes *any* descriptor of the file. Like libtdb, each handle
//! therefore keeps its own table of held locks with counts: only the first
//! acquisition reaches the kernel (or the mutex), only the last release does.
//! For the same reason a process may have only one [`crate::Tdb`] handle per
//! file ([`crate::Error::AlreadyOpen`]), and must not open and close other
//! descriptors of a database file it has open.
//!
//! Mutex-mode chain locks are exclusive even when asked for read access.
//!
//! # Recovery
//!
//! When the first data lock is taken, the recovery area is checked: if a
//! process died inside a transaction commit, the database is repaired
//! (under the open lock and an exclusive lock of all records) before the lock
//! is handed out.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crate::Inner;
use crate::error::{Error, Result};
use crate::format::{FREELIST_TOP, data_start, lockoff};
use crate::mutex;

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
}

impl LockType {
    fn fcntl_type(self) -> libc::c_short {
        match self {
            LockType::Read => libc::F_RDLCK as libc::c_short,
            LockType::Write => libc::F_WRLCK as libc::c_short,
        }
    }
    fn mutex_state(self) -> i16 {
        match self {
            LockType::Read => mutex::F_RDLCK,
            LockType::Write => mutex::F_WRLCK,
        }
    }
}

/// One held lock with its nesting count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockRec {
    pub off: u32,
    pub count: u32,
    pub ltype: LockType,
}

/// State of the all-record lock held by this handle.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AllRecord {
    pub count: u32,
    pub ltype: Option<LockType>,
    /// Taken shared by a transaction, to be upgraded at commit; counts as a
    /// write lock for the covered-chain checks.
    pub upgradable: bool,
}

/// A list to lock: the freelist or a hash chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    Free,
    Chain(u32),
}

impl List {
    #[inline]
    pub fn lock_off(self) -> u32 {
        match self {
            List::Free => lockoff::FREELIST,
            List::Chain(b) => lockoff::chain(b),
        }
    }
}

fn errno_err(e: i32) -> Error {
    match e {
        libc::EAGAIN | libc::EACCES | libc::EBUSY => Error::WouldBlock,
        libc::EDEADLK => Error::Lock("deadlock detected"),
        libc::ENOTRECOVERABLE => Error::Lock("mutex is not recoverable"),
        libc::EPERM => Error::Lock("mutex is not owned by this thread"),
        e => Error::Io(std::io::Error::from_raw_os_error(e)),
    }
}

/// Tries of [`Inner::brlock_soon`] (1 ms apart).
const UPGRADE_TRIES: u32 = 20;

thread_local! {
    /// How long blocking locks taken on this thread may wait (see
    /// [`crate::Tdb::lockall_until`]).
    static WAIT_UNTIL: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// The deadline for blocking locks on this thread, if one is set.
pub(crate) fn wait_deadline() -> Option<Instant> {
    WAIT_UNTIL.with(|w| w.get())
}

/// Sets this thread's lock deadline until dropped.
struct WaitLimit(Option<Instant>);

impl WaitLimit {
    fn set(deadline: Instant) -> WaitLimit {
        WaitLimit(WAIT_UNTIL.with(|w| w.replace(Some(deadline))))
    }
}

impl Drop for WaitLimit {
    fn drop(&mut self) {
        WAIT_UNTIL.with(|w| w.set(self.0));
    }
}

/// Raw fcntl byte-range lock; `len == 0` means "to end of file".
///
/// A blocking lock with a thread deadline set gives up with
/// [`Error::WouldBlock`] when a signal interrupts the wait after the
/// deadline (the kernel has no timed fcntl wait; the caller arranges for a
/// signal, see [`crate::Tdb::lockall_until`]).
fn fcntl_lock(fd: i32, ltype: libc::c_short, off: u32, len: u64, wait: bool) -> Result<()> {
    // SAFETY: flock is plain old data; zeroed is a valid initial state.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ltype;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl.l_pid = 0;
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: fd is our open database descriptor, fl a valid flock.
        let r = unsafe { libc::fcntl(fd, cmd, &fl as *const libc::flock) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if e == libc::EINTR {
            if wait && wait_deadline().is_some_and(|d| Instant::now() >= d) {
                return Err(Error::WouldBlock);
            }
            continue;
        }
        return Err(errno_err(e));
    }
}

impl Inner {
    /// Index of the mutex standing in for a one-byte lock at `off`, if the
    /// database uses mutexes and `off` is the freelist or a chain lock.
    #[inline]
    fn mutex_index(&self, off: u32, len: u64) -> Option<u32> {
        self.mutexes.as_ref()?;
        if len != 1 || off < lockoff::FREELIST || off >= data_start(self.hash_size) {
            return None;
        }
        let rel = off - lockoff::FREELIST;
        if !rel.is_multiple_of(4) {
            return None;
        }
        let idx = rel / 4;
        if idx > self.hash_size {
            return None;
        }
        Some(idx)
    }

    /// Whether this handle holds any chain mutex (not counting the freelist).
    fn have_mutex_chainlocks(&self) -> bool {
        let lo = lockoff::chain(0);
        let hi = lockoff::chain(self.hash_size);
        self.locks.iter().any(|l| l.off >= lo && l.off < hi)
    }

    /// Take one lock in the kernel or the mutex area, ignoring nesting.
    pub(crate) fn brlock(&mut self, lt: LockType, off: u32, len: u64, wait: bool) -> Result<()> {
        if self.nolock {
            return Ok(());
        }
        if lt == LockType::Write && (self.io.read_only || self.traverse_read > 0) {
            return Err(Error::ReadOnly);
        }
        if let Some(idx) = self.mutex_index(off, len) {
            return self.mutex_lock(idx, lt, wait);
        }
        fcntl_lock(self.io.file.as_raw_fd(), lt.fcntl_type(), off, len, wait)
    }

    pub(crate) fn brunlock(&mut self, off: u32, len: u64) -> Result<()> {
        if self.nolock {
            return Ok(());
        }
        if let Some(idx) = self.mutex_index(off, len) {
            let m = self.mutexes.as_ref().expect("mutex_index implies mutexes");
            return m.unlock_chain(idx).map_err(errno_err);
        }
        fcntl_lock(
            self.io.file.as_raw_fd(),
            libc::F_UNLCK as libc::c_short,
            off,
            len,
            true,
        )
    }

    /// Lock chain/freelist mutex `idx`, queueing behind an all-record holder.
    fn mutex_lock(&mut self, idx: u32, lt: LockType, wait: bool) -> Result<()> {
        loop {
            let have_chains = idx != 0 && self.have_mutex_chainlocks();
            let m = self.mutexes.as_ref().expect("mutex mode");
            m.lock_chain(idx, wait).map_err(errno_err)?;
            if idx == 0 || have_chains {
                // The freelist is independent of the all-record lock; and with
                // another chain already held we must not wait for the
                // all-record holder (it may be waiting for that chain).
                return Ok(());
            }
            let st = m.allrecord_state();
            if st == mutex::F_UNLCK || (st == mutex::F_RDLCK && lt == LockType::Read) {
                return Ok(());
            }
            // Someone holds (or is taking) all records: let go and queue on
            // the all-record mutex, then try again.
            m.unlock_chain(idx).map_err(errno_err)?;
            m.lock_allrecord_mutex(wait).map_err(errno_err)?;
            m.unlock_allrecord_mutex().map_err(errno_err)?;
        }
    }

    fn find_lock(&self, off: u32) -> Option<usize> {
        self.locks.iter().position(|l| l.off == off)
    }

    /// Take a lock with nesting: only the first acquisition is real.
    pub(crate) fn nest_lock(&mut self, off: u32, lt: LockType, wait: bool) -> Result<()> {
        if off >= lockoff::chain(self.hash_size) {
            return Err(Error::Lock("invalid lock offset"));
        }
        if self.nolock {
            return Ok(());
        }
        if let Some(i) = self.find_lock(off) {
            if self.locks[i].ltype == LockType::Read && lt == LockType::Write {
                if self.mutex_index(off, 1).is_none() {
                    self.brlock(LockType::Write, off, 1, wait)?;
                }
                self.locks[i].ltype = LockType::Write;
            }
            self.locks[i].count += 1;
            return Ok(());
        }
        self.brlock(lt, off, 1, wait)?;
        self.locks.push(LockRec {
            off,
            count: 1,
            ltype: lt,
        });
        Ok(())
    }

    pub(crate) fn nest_unlock(&mut self, off: u32) -> Result<()> {
        if self.nolock {
            return Ok(());
        }
        let Some(i) = self.find_lock(off) else {
            return Err(Error::Lock("unlock of a lock that is not held"));
        };
        if self.locks[i].count > 1 {
            self.locks[i].count -= 1;
            return Ok(());
        }
        self.locks.swap_remove(i);
        self.brunlock(off, 1)
    }

    /// Any freelist/chain lock held?
    fn have_data_locks(&self) -> bool {
        self.locks.iter().any(|l| l.off >= lockoff::FREELIST)
    }

    fn covered_by_allrecord(&self, lt: LockType) -> Result<()> {
        if lt == LockType::Write && self.allrecord.ltype == Some(LockType::Read) {
            return Err(Error::Lock("only a shared all-record lock is held"));
        }
        Ok(())
    }

    /// Lock a chain or the freelist, repairing an interrupted commit first if
    /// this is the first data lock we take.
    pub(crate) fn lock_list(&mut self, list: List, lt: LockType, wait: bool) -> Result<()> {
        for _ in 0..8 {
            if self.allrecord.count > 0 {
                return self.covered_by_allrecord(lt);
            }
            let check = !self.have_data_locks();
            self.nest_lock(list.lock_off(), lt, wait)?;
            if !check || !self.needs_recovery() {
                return Ok(());
            }
            self.nest_unlock(list.lock_off())?;
            self.lock_and_recover()?;
        }
        Err(Error::Lock("database keeps needing recovery"))
    }

    pub(crate) fn unlock_list(&mut self, list: List, lt: LockType) -> Result<()> {
        if self.allrecord.count > 0 {
            return self.covered_by_allrecord(lt);
        }
        self.nest_unlock(list.lock_off())
    }

    /// Runs `op` with `list` locked (`lt`, waiting) and unlocks it; an
    /// error of `op` is returned before one of the unlock.
    pub(crate) fn with_list_locked<R>(
        &mut self,
        list: List,
        lt: LockType,
        op: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        self.lock_list(list, lt, true)?;
        let r = op(self);
        let u = self.unlock_list(list, lt);
        let r = r?;
        u?;
        Ok(r)
    }

    /// Take the locks a recovery needs (everything, plus the open lock) and
    /// replay the recovery area.
    fn lock_and_recover(&mut self) -> Result<()> {
        let mutexed = self.mutexes.is_some();
        if mutexed {
            self.allrecord_lock_raw(LockType::Write, true)?;
        } else {
            self.brlock(LockType::Write, FREELIST_TOP, 0, true)?;
        }
        let res = match self.brlock(LockType::Write, lockoff::OPEN, 1, true) {
            Ok(()) => {
                let r = self.transaction_recover();
                let _ = self.brunlock(lockoff::OPEN, 1);
                r
            }
            Err(e) => Err(e),
        };
        if mutexed {
            let _ = self.allrecord_unlock_raw();
        } else {
            let _ = self.brunlock(FREELIST_TOP, 0);
        }
        res
    }

    // ----- record locks (traversals) -----

    /// Shared lock on one record, keeping deleters from freeing it.
    pub(crate) fn lock_record(&mut self, off: u32) -> Result<()> {
        if self.allrecord.count > 0 || off == 0 {
            return Ok(());
        }
        self.brlock(LockType::Read, off, 1, true)
    }

    /// Release a record lock unless another traversal of ours sits on the
    /// same record (fcntl locks do not stack).
    pub(crate) fn unlock_record(&mut self, off: u32) -> Result<()> {
        if self.allrecord.count > 0 || off == 0 {
            return Ok(());
        }
        let n = self.travlocks.iter().filter(|&&o| o == off).count();
        if n == 1 {
            self.brunlock(off, 1)
        } else {
            Ok(())
        }
    }

    /// Can the record at `off` be freed right now? (No traversal, ours or
    /// another process's, is sitting on it.) Leaves no lock behind.
    pub(crate) fn record_is_free_to_reuse(&mut self, off: u32) -> Result<bool> {
        if self.travlocks.contains(&off) {
            return Ok(false);
        }
        if self.allrecord.count > 0 {
            return Ok(self.allrecord.ltype == Some(LockType::Write));
        }
        if self.nolock {
            return Ok(true);
        }
        match self.brlock(LockType::Write, off, 1, false) {
            Ok(()) => {
                self.brunlock(off, 1)?;
                Ok(true)
            }
            Err(Error::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ----- all-record lock -----

    /// Lock every record; see the module docs for what that means on disk.
    pub(crate) fn allrecord_lock(
        &mut self,
        lt: LockType,
        wait: bool,
        upgradable: bool,
    ) -> Result<()> {
        for _ in 0..8 {
            if self.io.read_only || self.traverse_read > 0 {
                return Err(Error::Lock("no all-record lock on a read-only handle"));
            }
            if self.allrecord.count > 0 && self.allrecord.ltype == Some(lt) {
                self.allrecord.count += 1;
                return Ok(());
            }
            if self.allrecord.count > 0 {
                return Err(Error::Lock("an all-record lock of the other type is held"));
            }
            if self.have_extra_locks() {
                return Err(Error::Lock(
                    "cannot lock all records while holding chain locks",
                ));
            }
            if upgradable && lt != LockType::Read {
                return Err(Error::Lock(
                    "only a shared all-record lock can be upgradable",
                ));
            }
            self.allrecord_lock_raw(lt, wait)?;
            self.allrecord = AllRecord {
                count: 1,
                ltype: Some(if upgradable { LockType::Write } else { lt }),
                upgradable,
            };
            if !self.needs_recovery() {
                return Ok(());
            }
            self.allrecord_unlock(lt)?;
            self.lock_and_recover()?;
        }
        Err(Error::Lock("database keeps needing recovery"))
    }

    /// The lock itself, without bookkeeping or recovery check.
    fn allrecord_lock_raw(&mut self, lt: LockType, wait: bool) -> Result<()> {
        if self.nolock {
            return Ok(());
        }
        if self.mutexes.is_some() {
            self.mutex_allrecord_lock(lt, wait)?;
            let rest = lockoff::chain(self.hash_size);
            if let Err(e) = self.brlock(lt, rest, 0, wait) {
                let _ = self.mutex_allrecord_unlock();
                return Err(e);
            }
            Ok(())
        } else {
            let len = 4 * self.hash_size as u64;
            self.chainlock_gradual(lt, wait, FREELIST_TOP, len)?;
            let rest = lockoff::chain(self.hash_size);
            if let Err(e) = self.brlock(lt, rest, 0, wait) {
                let _ = self.brunlock(FREELIST_TOP, len);
                return Err(e);
            }
            Ok(())
        }
    }

    fn allrecord_unlock_raw(&mut self) -> Result<()> {
        if self.nolock {
            return Ok(());
        }
        if self.mutexes.is_some() {
            self.mutex_allrecord_unlock()?;
            self.brunlock(lockoff::chain(self.hash_size), 0)
        } else {
            self.brunlock(FREELIST_TOP, 0)
        }
    }

    /// Lock a range of chain locks, splitting it up when contended so that a
    /// stream of short chain locks cannot starve us.
    fn chainlock_gradual(&mut self, lt: LockType, wait: bool, off: u32, len: u64) -> Result<()> {
        if len <= 4 {
            return self.brlock(lt, off, len, wait);
        }
        match self.brlock(lt, off, len, false) {
            Ok(()) => return Ok(()),
            Err(Error::WouldBlock) => {}
            Err(e) => return Err(e),
        }
        if !wait {
            return Err(Error::WouldBlock);
        }
        let half = len / 2;
        self.chainlock_gradual(lt, wait, off, half)?;
        if let Err(e) = self.chainlock_gradual(lt, wait, off + half as u32, len - half) {
            let _ = self.brunlock(off, half);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn allrecord_unlock(&mut self, lt: LockType) -> Result<()> {
        if self.io.read_only || self.traverse_read > 0 {
            return Err(Error::Lock("no all-record lock on a read-only handle"));
        }
        if self.allrecord.count == 0 {
            return Err(Error::Lock("all-record lock is not held"));
        }
        if self.allrecord.ltype != Some(lt) && !(self.allrecord.upgradable && lt == LockType::Read)
        {
            return Err(Error::Lock("all-record unlock with the wrong lock type"));
        }
        if self.allrecord.count > 1 {
            self.allrecord.count -= 1;
            return Ok(());
        }
        self.allrecord_unlock_raw()?;
        self.allrecord = AllRecord::default();
        Ok(())
    }

    /// Turn the transaction's shared all-record lock into an exclusive one.
    pub(crate) fn allrecord_upgrade(&mut self) -> Result<()> {
        if self.allrecord.count != 1 || !self.allrecord.upgradable {
            return Err(Error::Lock("all-record lock cannot be upgraded"));
        }
        if !self.nolock {
            if self.mutexes.is_some() {
                self.mutex_allrecord_upgrade()?;
                let rest = lockoff::chain(self.hash_size);
                let r = if self.tx.as_ref().is_some_and(|t| t.yield_at_commit) {
                    self.brlock_soon(LockType::Write, rest, 0)
                } else {
                    self.brlock_retry(LockType::Write, rest, 0)
                };
                if let Err(e) = r {
                    if let Some(m) = &self.mutexes {
                        m.set_allrecord_state(mutex::F_RDLCK);
                    }
                    return Err(e);
                }
            } else {
                self.brlock_retry(LockType::Write, FREELIST_TOP, 0)?;
            }
        }
        self.allrecord.ltype = Some(LockType::Write);
        self.allrecord.upgradable = false;
        Ok(())
    }

    /// A lock tried for a short while ([`UPGRADE_TRIES`] times, 1 ms
    /// apart), else [`Error::WouldBlock`].
    fn brlock_soon(&mut self, lt: LockType, off: u32, len: u64) -> Result<()> {
        for i in 0..UPGRADE_TRIES {
            match self.brlock(lt, off, len, false) {
                Err(Error::WouldBlock) if i + 1 < UPGRADE_TRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                r => return r,
            }
        }
        Err(Error::WouldBlock)
    }

    /// Blocking lock that rides out the kernel's over-eager fcntl deadlock
    /// detection (it can report EDEADLK where waiting would make progress).
    fn brlock_retry(&mut self, lt: LockType, off: u32, len: u64) -> Result<()> {
        let mut last = Error::Lock("deadlock detected");
        for _ in 0..1000 {
            match self.brlock(lt, off, len, true) {
                Ok(()) => return Ok(()),
                Err(Error::Lock("deadlock detected")) => {
                    last = Error::Lock("deadlock detected");
                    std::thread::sleep(std::time::Duration::from_micros(1));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn mutex_allrecord_lock(&mut self, lt: LockType, wait: bool) -> Result<()> {
        let m = self.mutexes.as_ref().expect("mutex mode");
        m.lock_allrecord_mutex(wait).map_err(errno_err)?;
        if m.allrecord_state() != mutex::F_UNLCK {
            let _ = m.unlock_allrecord_mutex();
            return Err(Error::Lock("all-record mutex state is inconsistent"));
        }
        m.set_allrecord_state(lt.mutex_state());
        // Wait for every current chain holder to finish; new ones will see
        // the state and queue on the all-record mutex.
        for i in 0..self.hash_size {
            if let Err(e) = m
                .lock_chain(i + 1, wait)
                .and_then(|()| m.unlock_chain(i + 1))
            {
                m.set_allrecord_state(mutex::F_UNLCK);
                let _ = m.unlock_allrecord_mutex();
                return Err(errno_err(e));
            }
        }
        Ok(())
    }

    fn mutex_allrecord_unlock(&mut self) -> Result<()> {
        let m = self.mutexes.as_ref().expect("mutex mode");
        let old = m.allrecord_state();
        if old != mutex::F_RDLCK && old != mutex::F_WRLCK {
            return Err(Error::Lock("all-record mutex state is inconsistent"));
        }
        m.set_allrecord_state(mutex::F_UNLCK);
        if let Err(e) = m.unlock_allrecord_mutex() {
            m.set_allrecord_state(old);
            return Err(errno_err(e));
        }
        Ok(())
    }

    fn mutex_allrecord_upgrade(&mut self) -> Result<()> {
        let m = self.mutexes.as_ref().expect("mutex mode");
        if m.allrecord_state() != mutex::F_RDLCK {
            return Err(Error::Lock("all-record mutex state is inconsistent"));
        }
        m.set_allrecord_state(mutex::F_WRLCK);
        for i in 0..self.hash_size {
            if let Err(e) = m
                .lock_chain(i + 1, true)
                .and_then(|()| m.unlock_chain(i + 1))
            {
                m.set_allrecord_state(mutex::F_RDLCK);
                return Err(errno_err(e));
            }
        }
        Ok(())
    }

    /// Locks held beyond the ones every handle keeps (active lock, and the
    /// transaction lock inside a transaction).
    pub(crate) fn have_extra_locks(&self) -> bool {
        if self.tx.is_none() && self.allrecord.count > 0 {
            return true;
        }
        let mut extra = self.locks.len();
        if self.find_lock(lockoff::ACTIVE).is_some() {
            extra -= 1;
        }
        if (self.tx.is_some() || self.starting_tx) && self.find_lock(lockoff::TRANSACTION).is_some()
        {
            extra -= 1;
        }
        extra > 0
    }

    /// Drop every lock except the active lock (end of a transaction).
    pub(crate) fn release_transaction_locks(&mut self) {
        if self.allrecord.count > 0 {
            if let Err(e) = self.allrecord_unlock_raw() {
                tracing::error!(error = %e, "failed to release all-record lock");
            }
            self.allrecord = Default::default();
        }
        let locks = std::mem::take(&mut self.locks);
        for l in locks {
            if l.off == lockoff::ACTIVE {
                self.locks.push(l);
            } else if let Err(e) = self.brunlock(l.off, 1) {
                tracing::error!(error = %e, off = l.off, "failed to release lock");
            }
        }
    }

    /// Release everything this handle still holds (on close).
    pub(crate) fn release_all_locks(&mut self) {
        if self.allrecord.count > 0 {
            let _ = self.allrecord_unlock_raw();
            self.allrecord = Default::default();
        }
        let locks = std::mem::take(&mut self.locks);
        for l in locks {
            let _ = self.brunlock(l.off, 1);
        }
    }
}

// ----- waiting for locks on other threads ---------------------------------

/// How a [`ChainWaiter`] reaches the locks.
enum WaiterKind {
    /// A duplicate of the handle's descriptor: fcntl locks belong to the
    /// process, so a lock this waiter takes is the process's lock, and the
    /// handle adopts it simply by taking it again (which the kernel grants
    /// at once to the process that holds it).
    Fcntl(std::mem::ManuallyDrop<std::fs::File>),
    /// A second mapping of the robust mutex area: the waiter's thread owns
    /// the mutex; the handle adopts it by bookkeeping only.
    Mutex(mutex::MutexArea),
}

struct WaiterShared {
    kind: WaiterKind,
    path: std::path::PathBuf,
}

// SAFETY: the mutex mapping is process-shared memory that stays mapped for
// the life of the value; the mutexes in it are made for concurrent use by
// any thread, and the all-record state word is only accessed atomically.
// The fcntl variant is a plain descriptor.
unsafe impl Send for WaiterShared {}
// SAFETY: as above; no method mutates the value itself.
unsafe impl Sync for WaiterShared {}

/// Takes chain locks of one database file on behalf of its [`crate::Tdb`]
/// handle, blocking, from any thread (the handle is not `Sync`).
///
/// This is how a program that must not block (CTDB's daemon, an async
/// client) waits for a contended record: a helper thread blocks in
/// [`ChainWaiter::lock`] (queued in the kernel or on the mutex like any
/// other waiter, so it gets the lock as soon as the holder lets go), then
/// the handle's owner [adopts](crate::Tdb::adopt_chain) the held chain,
/// works on its records, [releases](crate::Tdb::release_adopted) it, and
/// finally the helper drops its [`WaitedChain`].
///
/// With fcntl locking the lock is the process's: the helper's lock is the
/// handle's, and the handle's release is the real one (dropping the
/// [`WaitedChain`] does nothing). The waiter keeps a duplicate descriptor
/// of the file which it never closes (closing any descriptor of a file
/// drops every fcntl lock the process holds on it); that is one descriptor
/// per waiter, not per wait.
#[derive(Clone)]
pub struct ChainWaiter {
    shared: Arc<WaiterShared>,
}

impl std::fmt::Debug for ChainWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWaiter")
            .field("path", &self.shared.path)
            .field("mutexes", &matches!(self.shared.kind, WaiterKind::Mutex(_)))
            .finish()
    }
}

/// A chain lock held by a [`ChainWaiter`] on the current thread. With
/// mutexes it is released when dropped, which must happen on the thread
/// that took it (hence not `Send`).
#[must_use = "the chain is released (mutex mode) when the guard is dropped"]
pub struct WaitedChain {
    shared: Arc<WaiterShared>,
    bucket: u32,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for WaitedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitedChain")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl WaitedChain {
    pub fn bucket(&self) -> u32 {
        self.bucket
    }
}

impl Drop for WaitedChain {
    fn drop(&mut self) {
        if let WaiterKind::Mutex(m) = &self.shared.kind
            && let Err(e) = m.unlock_chain(self.bucket + 1)
        {
            tracing::error!(
                errno = e,
                bucket = self.bucket,
                "waited chain unlock failed"
            );
        }
    }
}

impl ChainWaiter {
    /// Locks chain `bucket` exclusively, waiting as long as it takes (with
    /// mutexes, also behind a holder of the all-record lock, as the
    /// handle's own chain locks do).
    pub fn lock(&self, bucket: u32) -> Result<WaitedChain> {
        let held = || WaitedChain {
            shared: self.shared.clone(),
            bucket,
            _not_send: std::marker::PhantomData,
        };
        match &self.shared.kind {
            WaiterKind::Fcntl(f) => {
                let off = List::Chain(bucket).lock_off();
                let mut spurious = 0u32;
                loop {
                    match fcntl_lock(f.as_raw_fd(), LockType::Write.fcntl_type(), off, 1, true) {
                        Ok(()) => return Ok(held()),
                        // The kernel's deadlock detection sees processes,
                        // not threads, and can report a deadlock where
                        // waiting would make progress: wait again.
                        Err(Error::Lock("deadlock detected")) if spurious < 10_000 => {
                            spurious += 1;
                            std::thread::yield_now();
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            WaiterKind::Mutex(m) => {
                let idx = bucket + 1;
                loop {
                    m.lock_chain(idx, true).map_err(errno_err)?;
                    if m.allrecord_state() == mutex::F_UNLCK {
                        return Ok(held());
                    }
                    // Someone holds (or is taking) every record: queue on
                    // the all-record mutex behind them, then try again.
                    let r = m
                        .unlock_chain(idx)
                        .and_then(|()| m.lock_allrecord_mutex(true))
                        .and_then(|()| m.unlock_allrecord_mutex());
                    r.map_err(errno_err)?;
                }
            }
        }
    }
}

impl crate::Tdb {
    /// A [`ChainWaiter`] for this handle's file.
    pub fn chain_waiter(&self) -> Result<ChainWaiter> {
        let i = self.inner()?;
        if i.nolock {
            return Err(Error::Lock(
                "no lock waiter on a database opened without locking",
            ));
        }
        let kind = match &i.mutexes {
            Some(m) => WaiterKind::Mutex(m.remap(&i.io.file)?),
            None => WaiterKind::Fcntl(std::mem::ManuallyDrop::new(i.io.file.try_clone()?)),
        };
        Ok(ChainWaiter {
            shared: Arc::new(WaiterShared {
                kind,
                path: i.path.clone(),
            }),
        })
    }

    /// The hash chain `key` lives in.
    pub fn bucket_of(&self, key: &[u8]) -> u32 {
        let i = self.inner.borrow();
        i.bucket(i.hash.hash(key))
    }

    /// Takes over chain `bucket`, which a [`ChainWaiter`] of this file
    /// holds: until [`Self::release_adopted`], the handle works on the
    /// chain's records as if it had locked it (its own chain locks on it
    /// nest without touching the lock). With fcntl locks this takes the
    /// lock for real, which the kernel grants at once while the waiter's
    /// (the process's) lock is still there; if something released it
    /// meanwhile and another process took it, [`Error::WouldBlock`].
    pub fn adopt_chain(&self, bucket: u32) -> Result<()> {
        let mut i = self.inner()?;
        if bucket >= i.hash_size {
            return Err(Error::Lock("chain out of range"));
        }
        if i.mutexes.is_none() {
            return i.lock_list(List::Chain(bucket), LockType::Write, false);
        }
        if i.allrecord.count > 0 {
            return Err(Error::Lock("cannot adopt a chain under an all-record lock"));
        }
        let off = List::Chain(bucket).lock_off();
        if i.find_lock(off).is_some() {
            return Err(Error::Lock("chain already locked by this handle"));
        }
        i.locks.push(LockRec {
            off,
            count: 1,
            ltype: LockType::Write,
        });
        Ok(())
    }

    /// Ends [`Self::adopt_chain`]: with mutexes the handle forgets the
    /// chain (the waiter releases it when its [`WaitedChain`] drops); with
    /// fcntl locks this is the release.
    pub fn release_adopted(&self, bucket: u32) -> Result<()> {
        let mut i = self.inner()?;
        if i.mutexes.is_none() {
            return i.unlock_list(List::Chain(bucket), LockType::Write);
        }
        let off = List::Chain(bucket).lock_off();
        match i.find_lock(off) {
            Some(k) if i.locks[k].count == 1 => {
                i.locks.swap_remove(k);
                Ok(())
            }
            Some(_) => Err(Error::Lock("adopted chain still locked by a guard")),
            None => Err(Error::Lock("chain was not adopted")),
        }
    }

    /// [`Self::lockall`], giving up with [`Error::WouldBlock`] at
    /// `deadline`. With mutexes the waits are timed; with fcntl locks the
    /// kernel offers no timed wait, so the caller must interrupt this
    /// thread with a signal (one with a handler installed without
    /// `SA_RESTART`) once the deadline has passed, and again until the
    /// call returns.
    pub fn lockall_until(&self, deadline: Instant) -> Result<crate::AllLock<'_>> {
        let _limit = WaitLimit::set(deadline);
        self.lockall()
    }
}

#[cfg(test)]
mod waiter_tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::{OpenOptions, StoreMode, Tdb};

    fn open(dir: &tempfile::TempDir, mutexes: bool) -> Tdb {
        OpenOptions::new()
            .create(true)
            .hash_size(31)
            .mutex_locking(mutexes)
            .open(dir.path().join("w.tdb"))
            .unwrap()
    }

    /// A waiter thread blocks while the handle holds the chain, gets it
    /// when the handle lets go, and the handle then works on the chain's
    /// records through the adopted lock while the waiter still holds it.
    #[test]
    fn waiter_blocks_then_handle_adopts() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir, true);
        let bucket = db.bucket_of(b"k");
        let waiter = db.chain_waiter().unwrap();
        let held = db.chainlock(b"k").unwrap();
        let (got_tx, got_rx) = mpsc::channel();
        let (rel_tx, rel_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let w = waiter.lock(bucket).unwrap();
            got_tx.send(()).unwrap();
            let _ = rel_rx.recv();
            drop(w);
        });
        assert!(got_rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(held);
        got_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // The waiter's thread owns the mutex: the handle cannot take it...
        assert!(matches!(
            db.lock_record_nonblock(b"k"),
            Err(crate::Error::WouldBlock)
        ));
        // ...but can adopt it.
        db.adopt_chain(bucket).unwrap();
        let r = db.lock_record_nonblock(b"k").unwrap();
        r.store(b"v", StoreMode::Replace).unwrap();
        drop(r);
        db.release_adopted(bucket).unwrap();
        rel_tx.send(()).unwrap();
        t.join().unwrap();
        let r = db.lock_record_nonblock(b"k").unwrap();
        assert_eq!(r.fetch().unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// `lockall_until` gives up at its deadline while a chain is held.
    #[test]
    fn lockall_until_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir, true);
        let bucket = db.bucket_of(b"k");
        let waiter = db.chain_waiter().unwrap();
        let (got_tx, got_rx) = mpsc::channel();
        let (rel_tx, rel_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let w = waiter.lock(bucket).unwrap();
            got_tx.send(()).unwrap();
            let _ = rel_rx.recv();
            drop(w);
        });
        got_rx.recv().unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            db.lockall_until(until),
            Err(crate::Error::WouldBlock)
        ));
        assert!(std::time::Instant::now() >= until);
        rel_tx.send(()).unwrap();
        t.join().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        drop(db.lockall_until(until).unwrap());
        assert!(db.lock_record_nonblock(b"k").is_ok());
    }

    /// With fcntl locks adopting is taking the (process's) lock, and
    /// releasing the adopted chain really releases it.
    #[test]
    fn fcntl_adopt_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir, false);
        let bucket = db.bucket_of(b"k");
        let waiter = db.chain_waiter().unwrap();
        let w = waiter.lock(bucket).unwrap();
        db.adopt_chain(bucket).unwrap();
        db.store(b"k", b"v", StoreMode::Replace).unwrap();
        db.release_adopted(bucket).unwrap();
        drop(w);
        assert!(db.release_adopted(bucket).is_err());
        assert_eq!(db.fetch(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
