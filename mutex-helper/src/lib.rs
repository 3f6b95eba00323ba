//! `ctdb_mutex_fcntl_helper FILE [RECHECK_INTERVAL [PING_TIMEOUT]]`: the
//! cluster lock as an `fcntl` lock on a file every node sees (on the
//! cluster file system), a drop-in for CTDB 4.17's helper of that name.
//!
//! The daemon (ours or CTDB's) runs the helper when it wants the cluster
//! lock and reads one character from its standard output: `0` taken, `1`
//! someone else holds it, `3` an error (said on standard error). Holding
//! the lock is keeping the helper running; the daemon releases it with
//! SIGTERM. The helper exits, letting the lock go, when its parent is gone
//! or when the lock file is no longer the one it locked (removed, replaced,
//! its directory moved: see [`lock::check`]); the daemon then sees the lock
//! lost. Nodes running CTDB's helper and nodes running this one exclude
//! each other: both take a POSIX record lock on the file's first byte.
//!
//! - [`args`]: the command line, read as CTDB's helper reads it.
//! - [`lock`]: the lock file, taking the lock, checking it is still ours.
//! - [`hold`]: what the helper does while it holds the lock.

pub mod args;
pub mod hold;
pub mod lock;
