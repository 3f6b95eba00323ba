//! Robust, process-shared pthread mutexes (the `TDB_FEATURE_FLAG_MUTEX`
//! feature, used by CTDB for volatile databases).
//!
//! With the feature, the file starts with a *mutex area* of `mutex_size`
//! bytes (page aligned), followed by the ordinary TDB file. The mutex area
//! is laid out like this C structure, on the creating machine's ABI:
//!
//! ```text
//! struct {
//!     header             copy of the 168-byte TDB header
//!     allrecord_mutex    pthread_mutex_t, guards the field below
//!     allrecord_lock     short: F_UNLCK / F_RDLCK / F_WRLCK
//!     chains[hash_size+1] pthread_mutex_t: [0] freelist, [1+i] chain i
//! }
//! ```
//!
//! All mutexes are `PTHREAD_MUTEX_ERRORCHECK`, `PTHREAD_PROCESS_SHARED` and
//! `PTHREAD_MUTEX_ROBUST`. A process that dies holding one leaves it in the
//! "owner died" state; the next locker gets `EOWNERDEAD`, marks it consistent
//! and carries on, so a crash never wedges the other users. If the dead
//! process held the all-record mutex, the all-record state is reset to
//! unlocked as well.
//!
//! The area is mapped once, separately from the TDB area (which is remapped
//! whenever the file grows), because glibc's robust-mutex bookkeeping keeps
//! pointers to locked mutexes and must not see them move.

use std::fs::File;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicI16, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::format::{HEADER_SIZE, align_up};

const MUTEX_SIZE: usize = size_of::<libc::pthread_mutex_t>();
const MUTEX_ALIGN: usize = align_of::<libc::pthread_mutex_t>();

/// Offset of the all-record mutex in the area.
const fn allrecord_mutex_off() -> usize {
    align_up(HEADER_SIZE as u64, MUTEX_ALIGN as u64) as usize
}
/// Offset of the all-record state word.
const fn allrecord_state_off() -> usize {
    allrecord_mutex_off() + MUTEX_SIZE
}
/// Offset of `chains[0]`.
const fn chains_off() -> usize {
    align_up((allrecord_state_off() + 2) as u64, MUTEX_ALIGN as u64) as usize
}
/// Size of the fixed part (the C struct with one chain mutex).
const fn struct_size() -> usize {
    let a = if MUTEX_ALIGN > 4 { MUTEX_ALIGN } else { 4 };
    align_up((chains_off() + MUTEX_SIZE) as u64, a as u64) as usize
}

/// Size of the mutex area for `hash_size` chains on this machine.
pub fn area_size(hash_size: u32, page_size: u32) -> u64 {
    let raw = struct_size() as u64 + hash_size as u64 * MUTEX_SIZE as u64;
    align_up(raw, page_size as u64)
}

/// `allrecord_lock` values, as the C library defines them.
pub(crate) const F_UNLCK: i16 = libc::F_UNLCK as i16;
pub(crate) const F_RDLCK: i16 = libc::F_RDLCK as i16;
pub(crate) const F_WRLCK: i16 = libc::F_WRLCK as i16;

pub(crate) struct MutexArea {
    _map: MmapRaw,
    base: *mut u8,
    hash_size: u32,
}

/// Outcome of a failed mutex operation: an errno value.
pub(crate) type Errno = i32;

impl MutexArea {
    /// Map the mutex area (the first `size` bytes of the file).
    pub fn map(file: &File, hash_size: u32, size: u64) -> Result<MutexArea> {
        let need = struct_size() as u64 + hash_size as u64 * MUTEX_SIZE as u64;
        if size < need {
            return Err(Error::corrupt(0u32, "mutex area too small for hash size"));
        }
        let map = MmapOptions::new()
            .offset(0)
            .len(size as usize)
            .map_raw(file)?;
        let base = map.as_mut_ptr();
        Ok(MutexArea {
            _map: map,
            base,
            hash_size,
        })
    }

    /// A second mapping of the same area (for a [`crate::lock::ChainWaiter`]
    /// that locks chains from another thread). The descriptor is only used
    /// for the `mmap`, never closed here.
    pub fn remap(&self, file: &File) -> Result<MutexArea> {
        MutexArea::map(file, self.hash_size, self._map.len() as u64)
    }

    /// Pointer to mutex `idx`: 0 is the freelist, `1 + chain` a hash chain.
    #[inline]
    fn chain_ptr(&self, idx: u32) -> *mut libc::pthread_mutex_t {
        assert!(idx <= self.hash_size, "mutex index out of range");
        // SAFETY: idx <= hash_size, and `map` checked the area holds
        // chains_off + (hash_size + 1) mutexes.
        unsafe { self.base.add(chains_off() + idx as usize * MUTEX_SIZE) as *mut _ }
    }

    #[inline]
    fn allrecord_ptr(&self) -> *mut libc::pthread_mutex_t {
        // SAFETY: the fixed part of the area is always mapped.
        unsafe { self.base.add(allrecord_mutex_off()) as *mut _ }
    }

    #[inline]
    fn state(&self) -> &AtomicI16 {
        // SAFETY: the state word lies in the fixed part of the mapping, is
        // 2-byte aligned (the offset is even and the map page aligned), and
        // is only ever accessed atomically or under the all-record mutex.
        unsafe { &*(self.base.add(allrecord_state_off()) as *const AtomicI16) }
    }

    /// Current all-record state as stored in the file.
    #[inline]
    pub fn allrecord_state(&self) -> i16 {
        self.state().load(Ordering::Acquire)
    }

    #[inline]
    pub fn set_allrecord_state(&self, v: i16) {
        self.state().store(v, Ordering::Release)
    }

    /// (Re)initialise every mutex. Only done by the first opener, while
    /// nobody else can be using the area.
    pub fn init(&self) -> Result<()> {
        // SAFETY: plain pthread attribute/mutex initialisation on memory we
        // own exclusively at this point (the caller holds the active lock
        // exclusively, so no other process is using these mutexes).
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let res = (|| {
                check(libc::pthread_mutexattr_settype(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                ))?;
                check(libc::pthread_mutexattr_setpshared(
                    &mut attr,
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                for i in 0..=self.hash_size {
                    check(libc::pthread_mutex_init(self.chain_ptr(i), &attr))?;
                }
                self.set_allrecord_state(F_UNLCK);
                check(libc::pthread_mutex_init(self.allrecord_ptr(), &attr))?;
                Ok(())
            })();
            libc::pthread_mutexattr_destroy(&mut attr);
            res
        }
    }

    /// Lock mutex `idx` (see [`Self::chain_ptr`]). A dead previous owner is
    /// taken over silently (the chain's records are bounds-checked on every
    /// access, so a half-finished update by the dead process is harmless).
    #[inline]
    pub fn lock_chain(&self, idx: u32, wait: bool) -> std::result::Result<(), Errno> {
        let m = self.chain_ptr(idx);
        lock_robust(m, wait, || {
            tracing::warn!(
                mutex = idx,
                "previous owner of chain mutex died; recovering"
            );
        })
    }

    #[inline]
    pub fn unlock_chain(&self, idx: u32) -> std::result::Result<(), Errno> {
        // SAFETY: a valid, initialised process-shared mutex in our mapping.
        let r = unsafe { libc::pthread_mutex_unlock(self.chain_ptr(idx)) };
        if r == 0 { Ok(()) } else { Err(r) }
    }

    /// Lock the all-record mutex. If its owner died, the all-record state it
    /// left behind is cleared.
    pub fn lock_allrecord_mutex(&self, wait: bool) -> std::result::Result<(), Errno> {
        lock_robust(self.allrecord_ptr(), wait, || {
            tracing::warn!("previous owner of the all-record mutex died; resetting");
            self.set_allrecord_state(F_UNLCK);
        })
    }

    pub fn unlock_allrecord_mutex(&self) -> std::result::Result<(), Errno> {
        // SAFETY: valid, initialised mutex in our mapping.
        let r = unsafe { libc::pthread_mutex_unlock(self.allrecord_ptr()) };
        if r == 0 { Ok(()) } else { Err(r) }
    }
}

fn lock_robust(
    m: *mut libc::pthread_mutex_t,
    wait: bool,
    on_owner_died: impl FnOnce(),
) -> std::result::Result<(), Errno> {
    let until = if wait {
        crate::lock::wait_deadline()
    } else {
        None
    };
    // SAFETY: `m` points to an initialised process-shared mutex inside a
    // mapping that outlives this call; `ts` is a valid timespec.
    let mut r = unsafe {
        match (wait, until) {
            (true, None) => libc::pthread_mutex_lock(m),
            (true, Some(d)) => {
                let ts = realtime_deadline(d);
                libc::pthread_mutex_timedlock(m, &ts)
            }
            (false, _) => libc::pthread_mutex_trylock(m),
        }
    };
    if r == libc::EOWNERDEAD {
        on_owner_died();
        // SAFETY: we now own the mutex; marking it consistent is required
        // before it can be unlocked normally.
        r = unsafe { libc::pthread_mutex_consistent(m) };
    }
    match r {
        0 => Ok(()),
        libc::EBUSY | libc::ETIMEDOUT => Err(libc::EAGAIN),
        e => Err(e),
    }
}

/// `deadline` as the absolute `CLOCK_REALTIME` time
/// `pthread_mutex_timedlock` wants.
fn realtime_deadline(deadline: std::time::Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let at = std::time::SystemTime::now() + left;
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

fn check(r: libc::c_int) -> Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(Error::Io(std::io::Error::from_raw_os_error(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_glibc_x86_64() {
        if MUTEX_SIZE == 40 && MUTEX_ALIGN == 8 {
            assert_eq!(allrecord_mutex_off(), 168);
            assert_eq!(allrecord_state_off(), 208);
            assert_eq!(chains_off(), 216);
            assert_eq!(struct_size(), 256);
            // cap_vol.tdb from the reference cluster: hash size 100001.
            assert_eq!(area_size(100_001, 4096), 0x3d_1000);
        }
    }
}
