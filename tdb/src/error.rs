//! Error type of the crate.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when opening or using a TDB file.
///
/// A damaged or hostile file never makes the engine panic or read outside the
/// file: every inconsistency found while following offsets surfaces as
/// [`Error::Corrupt`] (or one of the header errors) instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file's structure is inconsistent: an offset points outside the
    /// file, a record has an unexpected magic, a chain loops, ...
    #[error("corrupt database at offset {offset}: {reason}")]
    Corrupt {
        /// Offset (relative to the TDB header) where the problem was seen.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The file does not start with the TDB magic text.
    #[error("not a TDB file (bad magic)")]
    BadMagic,
    /// The header carries a version number this engine does not understand.
    #[error("unsupported TDB version {0:#010x}")]
    UnsupportedVersion(u32),
    /// The file uses a feature this engine does not implement.
    #[error("unsupported TDB feature: {0}")]
    UnsupportedFeature(String),
    /// An operating-system level I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A non-blocking lock could not be taken because another holder has it.
    #[error("lock is held by someone else (would block)")]
    WouldBlock,
    /// A lock operation failed for a reason other than contention (bad
    /// nesting, deadlock detected by the kernel, unrecoverable mutex, ...).
    #[error("lock error: {0}")]
    Lock(&'static str),
    /// The key does not exist.
    #[error("record not found")]
    NotFound,
    /// The key already exists (store with [`crate::StoreMode::Insert`]).
    #[error("record already exists")]
    Exists,
    /// A write was attempted on a read-only handle or inside a read-only
    /// traverse.
    #[error("database is read-only here")]
    ReadOnly,
    /// The file is already open through another [`crate::Tdb`] handle in this
    /// process (fcntl locks are per process, so a second handle would silently
    /// share and then drop the first one's locks; libtdb refuses this too).
    #[error("database is already open in this process")]
    AlreadyOpen,
    /// A transaction was started while one is active and nesting is disabled.
    #[error("nested transactions are disabled for this database")]
    Nesting,
    /// The caller asked for something that makes no sense in the current
    /// state (bad flag combination, no transaction active, ...).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The transaction hit an earlier error and can only be cancelled.
    #[error("transaction failed earlier and was cancelled")]
    TransactionFailed,
}

impl Error {
    pub(crate) fn corrupt(offset: impl Into<u64>, reason: &'static str) -> Self {
        Error::Corrupt {
            offset: offset.into(),
            reason,
        }
    }

    /// True for [`Error::WouldBlock`].
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock)
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound)
    }
}
