//! Opening a database: the options ([`OpenOptions`], libtdb's [`flags`]),
//! the per-process registry that refuses a second handle on one file, and
//! opening itself: the open lock, `CLEAR_IF_FIRST`, reading and checking
//! the header (version, features, hash function, mutex area), creating an
//! empty database, and repairing an interrupted commit.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{Inner, Tdb};
use crate::error::{Error, Result};
use crate::format::{
    self, FEATURE_FLAG_MAGIC, FEATURE_FLAG_MUTEX, FREELIST_TOP, HASH_RWLOCK_MAGIC, HEADER_SIZE,
    Header, SUPPORTED_FEATURE_FLAGS, VERSION, data_start, lockoff,
};
use crate::hash::HashKind;
use crate::io::Io;
use crate::lock::{AllRecord, LockType};
use crate::mutex::{self, MutexArea};

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

/// Files open in this process, by (device, inode), each with whether its
/// handle is closing (dropped, its descriptor about to close).
///
/// A handle's entry goes away only after its descriptor is closed, so an
/// entry of a closing handle can be met by an open of a file that merely
/// has the same numbers: the closing handle's file was unlinked (a
/// database's temp dir removed) and its inode, freed by the close, given
/// to a new file before the entry went. An open that meets a closing
/// entry waits for it to go (a few instructions away) instead of failing
/// with [`Error::AlreadyOpen`]; it must not go ahead before: if it is the
/// same file, the closing handle's close would drop the new handle's
/// fcntl locks.
struct OpenFiles {
    files: Mutex<Vec<OpenFile>>,
    gone: Condvar,
}

struct OpenFile {
    id: (u64, u64),
    closing: bool,
}

static OPEN_FILES: OpenFiles = OpenFiles {
    files: Mutex::new(Vec::new()),
    gone: Condvar::new(),
};

impl OpenFiles {
    fn lock(&self) -> MutexGuard<'_, Vec<OpenFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry, once no closing handle has `id` any more; `None` if
    /// an open handle has it.
    fn settled(&self, id: (u64, u64)) -> Option<MutexGuard<'_, Vec<OpenFile>>> {
        let mut v = self.lock();
        loop {
            match v.iter().find(|f| f.id == id) {
                None => return Some(v),
                Some(f) if !f.closing => return None,
                Some(_) => v = self.gone.wait(v).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Removes a file from [`OPEN_FILES`] when dropped. Declared after the inner
/// state in [`Tdb`] so it runs after the descriptor has been closed.
pub(super) struct Registration((u64, u64));

impl Registration {
    /// The handle is being dropped: an open of the same numbers waits for
    /// the entry to go instead of failing.
    pub(super) fn closing(&self) {
        if let Some(f) = OPEN_FILES.lock().iter_mut().find(|f| f.id == self.0) {
            f.closing = true;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut v = OPEN_FILES.lock();
        if let Some(i) = v.iter().position(|f| f.id == self.0) {
            v.swap_remove(i);
        }
        drop(v);
        OPEN_FILES.gone.notify_all();
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
        // Refuse before opening a descriptor: closing a second descriptor of
        // an open file would drop the first handle's fcntl locks.
        if let Ok(md) = std::fs::metadata(path)
            && OPEN_FILES.settled(dev_ino(&md)).is_none()
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
            let Some(mut reg) = OPEN_FILES.settled(id) else {
                // Lost a race with another open of the same file (or the
                // path changed under us). Leak the descriptor rather than
                // close it and drop the other handle's locks.
                std::mem::forget(file);
                return Err(Error::AlreadyOpen);
            };
            reg.push(OpenFile { id, closing: false });
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
}

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
