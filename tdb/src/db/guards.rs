//! Lock guards: [`ChainLock`] (one hash chain), [`RecordLock`] (one key's
//! chain, bound to the key) and [`AllLock`] (every chain), which read and
//! write under the lock they hold and release it on drop, and the handle's
//! methods that take them ([`Tdb::chainlock`], [`Tdb::lock_record`],
//! [`Tdb::lockall`], ...).

use std::cell::RefMut;

use super::record::{fetch_locked, parse_locked};
use super::{Inner, StoreMode, Tdb};
use crate::error::Result;
use crate::format::hash_top;
use crate::lock::{List, LockType};

impl Tdb {
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

    /// Non-blocking [`Self::lock_record`]:
    /// [`Error::WouldBlock`](crate::Error::WouldBlock) if another process
    /// (or a libtdb user) holds the chain. This is how the CTDB daemon takes
    /// record locks.
    pub fn lock_record_nonblock<'k>(&self, key: &'k [u8]) -> Result<RecordLock<'_, 'k>> {
        let (chain, hash) = self.chainlock_hashed(key, LockType::Write, false)?;
        Ok(RecordLock { chain, key, hash })
    }

    /// Lock the hash chain `key` belongs to, exclusively, waiting if needed.
    pub fn chainlock(&self, key: &[u8]) -> Result<ChainLock<'_>> {
        self.chainlock_impl(key, LockType::Write, true)
    }

    /// Lock the chain of `key` exclusively or fail with
    /// [`Error::WouldBlock`](crate::Error::WouldBlock).
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

    /// Delete the record ([`Error::NotFound`](crate::Error::NotFound) if it
    /// does not exist).
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
