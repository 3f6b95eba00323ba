//! `ctdb_recovery_helper`: CTDB's database recovery, parallel and chunked,
//! interchangeable with CTDB 4.17's helper.
//!
//! # Invocation
//!
//! The leader's recovery daemon runs `ctdb_recovery_helper <write-fd>
//! <socket-path> <generation>` (its `CTDB_RECOVERY_HELPER`, or the helper
//! in its helper directory). The helper connects to the daemon's socket as
//! a client, recovers, and on success writes the `int` 0 (four bytes,
//! native byte order) to `write-fd` and exits 0. On failure it writes
//! nothing and exits 1; the daemon reads end-of-file and counts the
//! recovery as failed. This is exactly what CTDB's helper does. Ban
//! credits do not travel through the fd: like CTDB's helper, this one bans
//! the node at fault itself with `SET_BAN_STATE` (see [`recovery`]), and
//! it names the node that made the recovery fail to the leader with a
//! `CTDB_SRVID_BANNING` message, which gives that node banning credits.
//!
//! It logs where the daemon logs (`CTDB_LOGGING`, `CTDB_DEBUGLEVEL`, see
//! [`log`]), as `ctdb-recovery[pid]`, with the reference's wording for the
//! main steps, and names the node and database of every failure.
//!
//! # What it does
//!
//! [`recovery`] runs the cluster-wide steps in CTDB's order; every database
//! is then recovered by its own task ([`recover_db`]), all at once: freeze,
//! transaction, pull ([`pull`]), merge ([`merge`], [`store`]), wipe, push
//! ([`push`]), commit, thaw, each database retried up to three times. Every
//! control waits at most RecoverTimeout, so the helper cannot hang.
//!
//! Records travel in chunks both ways: nodes send `DB_PULL` records as
//! messages of at most RecBufferSizeLimit bytes, and the helper pushes
//! record buffers of at most that size between `DB_PUSH_START` and
//! `DB_PUSH_CONFIRM`, checking the count each node confirms.
//!
//! Against CTDB's helper, this one differs in how, not in what:
//!
//! * the nodes of a volatile database are pulled at once rather than one
//!   after the other, with a merge rule ([`merge::Rank`]) that picks the
//!   same survivor CTDB's sequential rule picks;
//! * records are not copied into a scratch TDB and then into a scratch file
//!   before being pushed: they stay in the chunks they arrived in, indexed
//!   by key, and the push cuts its buffers straight from there, on a
//!   separate thread, while earlier buffers are being sent; each buffer is
//!   encoded once for all nodes;
//! * a persistent or replicated database is wiped on the nodes other than
//!   the source (the node with the highest sequence number) before the
//!   pull, and each pulled chunk is pushed on to them at once, so they
//!   store while the source is still being read. The source itself gets
//!   the push afterwards, unless (persistent databases only) it already
//!   holds exactly what would be pushed: records were pulled and none of
//!   them was a deleted (empty) record, which a push would drop. The
//!   result on every node is the one CTDB's helper produces; only the
//!   source's needless wipe and rewrite are saved.
//!
//! Limits: only `file:` logging is honoured (anything else, such as
//! `syslog`, goes to standard error); the ban credits of a failed recovery
//! lead to a ban only when a node reaches three, as with CTDB.
//!
//! # Memory
//!
//! Records held in memory by all databases together are limited by a
//! budget ([`budget`], 64 MiB unless `CTDB_RECOVERY_HELPER_MEMORY` says
//! otherwise, e.g. `256M`). A database whose records do not fit moves them
//! to anonymous spill files, partitioned by a hash of the key so that all
//! copies of a key meet in the same file; at push time the files are merged
//! one at a time, and a file larger than the database's share of the
//! budget is split again by another hash before merging (see [`store`]).
//! So a database many times larger than the budget is merged a bounded
//! piece at a time. The push keeps at most two record buffers waiting in
//! its channel, and pulls and pushes use connections of their own that are
//! read and written only as fast as records are taken in or produced
//! ([`conn`]).
//! Spill files go to `CTDB_DBDIR_STATE` (set by the reference daemon for
//! its helper), else to the database's own directory.
//!
//! # For tests and benchmarks
//!
//! * `CTDB_RECOVERY_HELPER_TRACE=FILE` appends progress events to FILE
//!   ([`trace`]), ending with the process's peak resident memory.
//! * `CTDB_RECOVERY_HELPER_HOLD=FILE`: while FILE exists, each database
//!   waits (at most RecoverTimeout) between starting its transaction and
//!   pulling, so a test can break a node at a known point.

pub mod budget;
pub mod catchup;
pub mod conn;
pub mod ctx;
pub mod dbs;
pub mod error;
pub mod log;
pub mod merge;
pub mod pull;
pub mod push;
pub mod recover_db;
pub mod recovery;
pub mod store;
pub mod trace;

pub use ctx::Options;
pub use error::{Error, Result};
