//! File access: the memory map of the TDB area, bounds checks and growth.
//!
//! The TDB area is the file minus the mutex area in front of it (if any), so
//! every offset used by the rest of the crate is relative to the TDB header.
//! It is mapped `MAP_SHARED` so that every process using the file sees every
//! other's writes immediately, exactly as libtdb does. When another process
//! grows the file, an access beyond our mapping triggers an `fstat` and a
//! remap; only if the file really is too short does the access fail with
//! [`Error::Corrupt`]. Nothing is ever read or written outside the mapping.
//!
//! With `no_mmap` (libtdb's `TDB_NOMMAP`) the same interface is served by
//! `pread`/`pwrite`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::format::PAD_BYTE;

pub(crate) struct Io {
    pub file: File,
    map: Option<MmapRaw>,
    /// Start of the mapping, null when nothing is mapped.
    ptr: *mut u8,
    /// Current size of the TDB area (file size minus `hdr_ofs`), and the
    /// length of the mapping when mapped.
    pub size: u32,
    /// Size of the mutex area in front of the TDB header (0 without mutexes).
    pub hdr_ofs: u64,
    pub read_only: bool,
    use_mmap: bool,
    pub page_size: u32,
    pub no_sync: bool,
    /// Data syncs (`fdatasync`) done through this handle so far.
    pub syncs: u64,
}

impl Io {
    pub fn new(file: File, hdr_ofs: u64, read_only: bool, use_mmap: bool, no_sync: bool) -> Io {
        let page_size = match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
            Ok(Some(ps)) if ps > 0 && ps <= 1 << 30 => ps as u32,
            _ => 0x2000,
        };
        Io {
            file,
            map: None,
            ptr: ptr::null_mut(),
            size: 0,
            hdr_ofs,
            read_only,
            use_mmap,
            page_size,
            no_sync,
            syncs: 0,
        }
    }

    /// Size of the TDB area according to the file system.
    pub fn file_size(&self) -> Result<u32> {
        let len = self.file.metadata()?.len();
        if len < self.hdr_ofs {
            return Err(Error::corrupt(0u32, "file is shorter than its mutex area"));
        }
        let logical = len - self.hdr_ofs;
        u32::try_from(logical).map_err(|_| Error::corrupt(0u32, "file is larger than 4 GiB"))
    }

    /// Re-read the file size and remap if it changed.
    pub fn refresh(&mut self) -> Result<()> {
        let size = self.file_size()?;
        if size != self.size || (self.use_mmap && self.map.is_none() && size > 0) {
            self.remap(size)?;
        }
        Ok(())
    }

    fn remap(&mut self, size: u32) -> Result<()> {
        self.map = None;
        self.ptr = ptr::null_mut();
        self.size = size;
        if !self.use_mmap || size == 0 {
            return Ok(());
        }
        let mut opts = MmapOptions::new();
        opts.offset(self.hdr_ofs).len(size as usize);
        let map = if self.read_only {
            opts.map_raw_read_only(&self.file)?
        } else {
            opts.map_raw(&self.file)?
        };
        self.ptr = map.as_mut_ptr();
        self.map = Some(map);
        Ok(())
    }

    #[inline]
    pub fn is_mapped(&self) -> bool {
        !self.ptr.is_null()
    }

    /// Make sure `off .. off+len` lies inside the file, growing our view if
    /// another process has extended it.
    #[inline]
    pub fn oob(&mut self, off: u32, len: u32) -> Result<()> {
        if off as u64 + len as u64 <= self.size as u64 {
            return Ok(());
        }
        self.oob_slow(off, len)
    }

    #[cold]
    fn oob_slow(&mut self, off: u32, len: u32) -> Result<()> {
        self.refresh()?;
        if off as u64 + len as u64 <= self.size as u64 {
            Ok(())
        } else {
            Err(Error::corrupt(off, "access beyond the end of the file"))
        }
    }

    #[inline]
    pub fn read(&mut self, off: u32, buf: &mut [u8]) -> Result<()> {
        let len = len32(buf.len())?;
        self.oob(off, len)?;
        if self.is_mapped() {
            // SAFETY: `oob` established off + len <= self.size, and the
            // mapping covers exactly self.size bytes from self.ptr. The source
            // is shared memory that other processes only change under the
            // locks the caller holds; a byte copy cannot tear memory safety.
            unsafe {
                ptr::copy_nonoverlapping(self.ptr.add(off as usize), buf.as_mut_ptr(), buf.len());
            }
            Ok(())
        } else {
            self.file.read_exact_at(buf, self.hdr_ofs + off as u64)?;
            Ok(())
        }
    }

    #[inline]
    pub fn read_u32(&mut self, off: u32) -> Result<u32> {
        self.oob(off, 4)?;
        if self.is_mapped() {
            // SAFETY: in bounds per `oob`; unaligned read of plain bytes.
            return Ok(unsafe { ptr::read_unaligned(self.ptr.add(off as usize) as *const u32) });
        }
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    /// Ask the CPU to start loading the cache line at `off` of the mapping
    /// (a hint; nothing happens when unmapped or out of range). Used to
    /// overlap the chain-head miss with the lock acquisition.
    #[inline]
    pub fn prefetch(&self, off: u32) {
        #[cfg(target_arch = "x86_64")]
        if !self.ptr.is_null() && (off as u64) < self.size as u64 {
            // SAFETY: the address lies inside our mapping (checked above),
            // and a prefetch is only a hint that cannot fault or change
            // memory; SSE, which provides it, is part of the x86_64 baseline.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    self.ptr.add(off as usize) as *const i8,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Read the six words of a record header at `off` (hot path: straight
    /// from the map, no intermediate buffer).
    #[inline]
    pub fn read_record(&mut self, off: u32) -> Result<crate::format::Record> {
        self.oob(off, crate::format::REC_SIZE)?;
        if self.is_mapped() {
            // SAFETY: `oob` established that the 24 bytes at `off` lie inside
            // the mapping; every word is read unaligned.
            unsafe {
                let p = self.ptr.add(off as usize) as *const u32;
                return Ok(crate::format::Record {
                    next: ptr::read_unaligned(p),
                    rec_len: ptr::read_unaligned(p.add(1)),
                    key_len: ptr::read_unaligned(p.add(2)),
                    data_len: ptr::read_unaligned(p.add(3)),
                    full_hash: ptr::read_unaligned(p.add(4)),
                    magic: ptr::read_unaligned(p.add(5)),
                });
            }
        }
        let mut b = [0u8; crate::format::REC_SIZE as usize];
        self.read(off, &mut b)?;
        Ok(crate::format::Record::from_bytes(&b))
    }

    #[inline]
    pub fn write(&mut self, off: u32, buf: &[u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let len = len32(buf.len())?;
        self.oob(off, len)?;
        if self.is_mapped() {
            // SAFETY: bounds established by `oob` as in `read`; the mapping is
            // writable because the handle is not read-only.
            unsafe {
                ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.add(off as usize), buf.len());
            }
            Ok(())
        } else {
            self.file.write_all_at(buf, self.hdr_ofs + off as u64)?;
            Ok(())
        }
    }

    #[inline]
    pub fn write_u32(&mut self, off: u32, v: u32) -> Result<()> {
        self.write(off, &v.to_ne_bytes())
    }

    /// Borrow `len` bytes at `off` straight from the mapping, if mapped.
    #[inline]
    pub fn mapped_slice(&mut self, off: u32, len: u32) -> Result<Option<&[u8]>> {
        self.oob(off, len)?;
        if !self.is_mapped() {
            return Ok(None);
        }
        // SAFETY: in bounds per `oob`; the slice lives no longer than the
        // `&mut self` borrow, during which the mapping cannot be replaced.
        // Other processes modify this memory only under locks the caller
        // holds (the record's chain lock or the all-record lock).
        Ok(Some(unsafe {
            std::slice::from_raw_parts(self.ptr.add(off as usize), len as usize)
        }))
    }

    /// Pointer to an aligned 32-bit word of the mapping, for atomic access
    /// (sequence number). None when unmapped or misaligned.
    pub fn word_ptr(&mut self, off: u32) -> Result<Option<*mut u32>> {
        self.oob(off, 4)?;
        if !self.is_mapped() || !off.is_multiple_of(4) {
            return Ok(None);
        }
        // SAFETY: in bounds per `oob`; mmap returns page-aligned memory so
        // the word is 4-byte aligned.
        Ok(Some(unsafe { self.ptr.add(off as usize) as *mut u32 }))
    }

    /// Grow the file from `size` by `addition` bytes filled with the pad byte
    /// (written, not sparse, so that running out of disk shows up now rather
    /// than as SIGBUS later), then map the new size.
    pub fn expand_file(&mut self, size: u32, addition: u32) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let new_size = size
            .checked_add(addition)
            .ok_or(Error::Invalid("database would exceed 4 GiB"))?;
        let start = self.hdr_ofs + size as u64;
        self.file.set_len(self.hdr_ofs + new_size as u64)?;
        let pad = [PAD_BYTE; 8192];
        let mut done = 0u64;
        let total = addition as u64;
        while done < total {
            let n = std::cmp::min(pad.len() as u64, total - done) as usize;
            if let Err(e) = self.file.write_all_at(&pad[..n], start + done) {
                // Give the space back: nothing can be using it yet.
                let _ = self.file.set_len(start);
                return Err(e.into());
            }
            done += n as u64;
        }
        self.refresh()
    }

    /// Flush `off .. off+len` (and the file's data) to stable storage unless
    /// syncing is disabled.
    pub fn sync(&mut self, off: u32, len: u32) -> Result<()> {
        if self.no_sync {
            return Ok(());
        }
        // On Linux `fdatasync` also writes back the pages dirtied through a
        // shared mapping, and `msync(MS_SYNC)` is itself a data sync of its
        // range (a second cache flush of the disk for nothing): the file's
        // sync alone is enough. Elsewhere POSIX asks for the `msync`.
        #[cfg(not(target_os = "linux"))]
        if let Some(map) = &self.map {
            let off = off as usize;
            if off < self.size as usize {
                let len = std::cmp::min(len as usize, self.size as usize - off);
                map.flush_range(off, len)?;
            }
        }
        #[cfg(target_os = "linux")]
        let _ = (off, len);
        self.file.sync_data()?;
        self.syncs += 1;
        Ok(())
    }
}

#[inline]
fn len32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Invalid("length exceeds 4 GiB"))
}
