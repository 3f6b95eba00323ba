//! A TDB ("trivial database") engine in pure Rust, file- and lock-compatible
//! with Samba's libtdb 1.4: files written here open in `tdbdump`, `tdbtool`,
//! python's `tdb` and Samba, and theirs open here, while both kinds of
//! processes work on the same file at the same time.
//!
//! ```no_run
//! use tdb::{OpenOptions, StoreMode};
//! # fn main() -> tdb::Result<()> {
//! let db = OpenOptions::new().create(true).hash_size(10007).open("/tmp/example.tdb")?;
//! db.store(b"key", b"value", StoreMode::Replace)?;
//! assert_eq!(db.fetch(b"key")?.as_deref(), Some(&b"value"[..]));
//!
//! // The CTDB fast path: lock a record without blocking, then read and
//! // write it under that one lock.
//! let rec = db.lock_record_nonblock(b"key")?;
//! let old = rec.fetch()?;
//! rec.store(b"new value", StoreMode::Replace)?;
//! drop(rec);
//!
//! let tx = db.transaction_start()?;
//! tx.delete(b"key")?;
//! tx.commit()?;
//! # let _ = old; Ok(()) }
//! ```
//!
//! # File layout
//!
//! All integers are 32-bit, in the creating machine's byte order; offsets
//! are relative to the TDB header. ([`mod@format`] has the constants.)
//!
//! ```text
//! [ mutex area ]      only with the mutex feature; mutex_size bytes, page
//!                     aligned, see the mutex module
//! 0    header         168 bytes:
//!        0  magic_food      "TDB file\n\0", zero padded to 32 bytes
//!       32  version         0x2601196d
//!       36  hash_size       number of hash chains
//!       40  rwlocks         0, HASH_RWLOCK_MAGIC (Jenkins hash) or
//!                           FEATURE_FLAG_MAGIC (feature_flags valid)
//!       44  recovery_start  offset of the transaction recovery area, or 0
//!       48  sequence_number bumped on every change if enabled
//!       52  magic1_hash     hash of "TDB file\n\0"  } tell which hash
//!       56  magic2_hash     hash of the record magic } function is in use
//!       60  feature_flags   bit 0: mutex area present
//!       64  mutex_size      size of the mutex area
//!       68  reserved        25 words
//! 168  freelist head  offset of the first free record
//! 172  chain heads    hash_size words: first record of each chain
//! 172+4*hash_size     records, free space, recovery area, to end of file
//! ```
//!
//! Every record (used, dead, free, recovery) starts with a 24-byte header
//! (`next`, `rec_len`, `key_len`, `data_len`, `full_hash`, `magic`,
//! [`format::Record`]) followed by `rec_len` bytes: key, value, slack, and a
//! 4-byte *tailer* holding `24 + rec_len`, which lets the freelist find a
//! record's left neighbour. A key lives in chain `hash(key) % hash_size`;
//! chains and the freelist are singly linked through `next`. Two hash
//! functions exist ([`hash`]); which one a file uses is read from its
//! header. Deleted records are marked dead and moved to the freelist unless
//! a traversal holds them ([`freelist`]).
//!
//! # Modules by concern
//!
//! * [`mod@format`]: header/record layout and constants.
//! * [`hash`]: the default and the Jenkins hash.
//! * [`io`]: the memory map, bounds checks, file growth.
//! * [`lock`]: fcntl and robust-mutex locking, nesting, recovery trigger.
//! * [`mutex`]: the robust mutex area.
//! * [`freelist`]: allocation and freeing.
//! * [`transaction`]: transactions, the recovery area, crash recovery.
//! * [`traverse`]: traversals that tolerate deletion.
//! * [`check`]: integrity checker.
//!
//! # Robustness
//!
//! Every offset read from the file is bounds-checked before use and every
//! list walk has cycle detection, so a damaged or deliberately crafted file
//! produces [`Error::Corrupt`] (or another error), never a panic or a read
//! outside the file. Non-blocking lock calls return [`Error::WouldBlock`].
//!
//! # Processes, handles and threads
//!
//! Any number of processes (libtdb or this crate) may use a file at once.
//! Within one process a file may be open through only one [`Tdb`]
//! ([`Error::AlreadyOpen`] otherwise), as in libtdb, because fcntl locks
//! belong to the process; for the same reason the process must not open and
//! close other descriptors of the file while it is open. A [`Tdb`] is `Send`
//! but not `Sync`; lock guards and transactions borrow it and are neither.

#![deny(unsafe_op_in_unsafe_fn)]

mod db;
mod error;

pub mod io;
pub mod mutex;

pub mod check;
pub mod format;
pub mod freelist;
pub mod hash;
pub mod lock;
pub mod transaction;
pub mod traverse;

pub use check::CheckReport;
pub(crate) use db::Inner;
pub use db::{AllLock, ChainLock, OpenOptions, RecordLock, StoreMode, Tdb, flags};
pub use error::{Error, Result};
pub use format::DEAD_MAGIC;
pub use hash::HashKind;
pub use lock::{ChainWaiter, WaitedChain};
pub use transaction::Transaction;
pub use traverse::Iter;

/// Format one record the way `tdbdump` prints it (printable ASCII except
/// `"` and `\` as is, everything else as `\XX`).
pub fn tdbdump_record(key: &[u8], data: &[u8]) -> String {
    fn esc(out: &mut String, d: &[u8]) {
        for &c in d {
            if (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' {
                out.push(c as char);
            } else {
                out.push_str(&format!("\\{c:02X}"));
            }
        }
    }
    let mut s = String::with_capacity(32 + 3 * (key.len() + data.len()));
    s.push_str(&format!("{{\nkey({}) = \"", key.len()));
    esc(&mut s, key);
    s.push_str(&format!("\"\ndata({}) = \"", data.len()));
    esc(&mut s, data);
    s.push_str("\"\n}\n");
    s
}

/// Hooks for crash testing and fuzzing. Not part of the stable API.
#[doc(hidden)]
pub mod testing {
    use std::ops::ControlFlow;
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::{OpenOptions, StoreMode};

    /// Open the (possibly damaged) file at `path` in several ways and run
    /// every kind of operation on it, ignoring errors. Used by the fuzz
    /// target and the hostile-file tests: it must never panic, hang or touch
    /// memory outside the file.
    pub fn exercise(path: &Path) {
        for variant in 0..3 {
            let mut o = OpenOptions::new();
            o.no_sync(true);
            match variant {
                0 => o.read_only(true),
                1 => o.max_dead(2),
                _ => o.no_mmap(true),
            };
            let Ok(db) = o.open(path) else { continue };
            let _ = db.check();
            let mut keys = Vec::new();
            let _ = db.traverse_read(|k, _| {
                if keys.len() < 16 {
                    keys.push(k.to_vec());
                }
                ControlFlow::Continue(())
            });
            for k in &keys {
                let _ = db.fetch(k);
                let _ = db.exists(k);
            }
            let _ = db.fetch(b"missing key");
            for item in db.iter().take(64) {
                if item.is_err() {
                    break;
                }
            }
            if variant == 0 {
                continue;
            }
            let _ = db.store(b"fuzz", b"value", StoreMode::Replace);
            let _ = db.store(b"fuzz", &[7u8; 300], StoreMode::Replace);
            for k in keys.iter().take(4) {
                let _ = db.store(k, b"new", StoreMode::Modify);
                let _ = db.delete(k);
            }
            let mut n = 0;
            let _ = db.traverse(|k, _| {
                let _ = db.delete(k);
                n += 1;
                if n > 64 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if let Ok(tx) = db.transaction_start() {
                let _ = tx.store(b"in tx", &[1u8; 100], StoreMode::Replace);
                let _ = tx.delete(b"fuzz");
                let _ = tx.commit();
            }
            if let Ok(g) = db.chainlock_nonblock(b"fuzz") {
                let _ = g.fetch(b"fuzz");
                let _ = g.store(b"fuzz", b"x", StoreMode::Replace);
            }
            let _ = db.freelist_size();
            let _ = db.record_count();
            let _ = db.check();
        }
    }

    static CRASH_AT: AtomicU32 = AtomicU32::new(0);

    /// Kill this process with SIGKILL when the `n`-th crash point inside a
    /// transaction commit is reached (0 disables).
    pub fn crash_at_point(n: u32) {
        CRASH_AT.store(n, Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn crash_point() {
        let v = CRASH_AT.load(Ordering::Relaxed);
        if v == 0 {
            return;
        }
        if v == 1 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        }
        CRASH_AT.store(v - 1, Ordering::Relaxed);
    }
}
