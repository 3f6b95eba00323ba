//! What a freeze session's recovery transaction does to a database's
//! change log.
//!
//! The transaction shows in `DB_CHANGELOG_INFO` while it is open (the
//! checksum and epoch its content would have, `CHANGELOG_IN_RECOVERY`).
//! It ends by its commit, by a cancel (`DB_TRANSACTION_CANCEL`, a refused
//! keyed commit, a new transaction start), by a failed commit (the file may
//! hold either content: its checksum is computed again) or by being dropped: the freeze
//! session owns it and drops it when the session ends (`DB_THAW`, the
//! daemon dropping the session's channel, a panic), before the handle goes
//! home. A cancel or a drop leaves the log as it was before the
//! transaction started.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ctdb_protocol::types::{KEYED_EPOCH_KEY, RecBuffer};

use super::checksum::{content_checksum, hash_of, moved, part};
use super::{DbLog, epoch_of, keys, read_epoch};
use crate::db::persistent::read_seqnum;

/// What a freeze session's recovery transaction does to the log: followed
/// as it happens, applied at its commit.
#[derive(Debug)]
pub struct RecoveryTx {
    log: Option<Arc<DbLog>>,
    open: bool,
    wiped: bool,
    sum: (u128, i64),
    /// The copy epoch the transaction's content holds (keyed databases).
    epoch: u64,
    /// Pushed records without a wipe (a catch-up of this node).
    records: Vec<(Vec<u8>, Vec<u8>)>,
    broken: bool,
}

impl RecoveryTx {
    pub fn new(log: Option<Arc<DbLog>>) -> RecoveryTx {
        RecoveryTx {
            log,
            open: false,
            wiped: false,
            sum: (0, 0),
            epoch: 0,
            records: Vec::new(),
            broken: false,
        }
    }

    /// Ends the transaction without applying it: the log no longer shows
    /// it. Only an open one clears the log's pending state (which is this
    /// transaction's then; a transaction that never opened has none).
    fn reset(&mut self) {
        let was_open = std::mem::take(&mut self.open);
        self.wiped = false;
        self.records.clear();
        self.broken = false;
        if was_open && let Some(l) = &self.log {
            l.lock().pending = None;
        }
    }

    /// The recovery transaction started.
    pub fn start(&mut self) {
        self.reset();
        if let Some(l) = &self.log {
            let mut g = l.lock();
            self.sum = (g.checksum, g.empty);
            self.epoch = g.epoch;
            g.pending = Some(self.sum.0);
            g.pending_empty = self.sum.1;
            g.pending_epoch = self.epoch;
            self.open = true;
        }
    }

    /// It was cancelled (or replaced, or refused before its commit).
    pub fn cancel(&mut self) {
        self.reset();
    }

    /// The database was wiped inside it: `ok` if the wipe succeeded. A
    /// failed wipe may have removed some records: the content is no longer
    /// followed, and a commit reads the whole file again.
    pub fn wiped(&mut self, ok: bool) {
        if !self.open {
            return;
        }
        if !ok {
            self.broken = true;
            return;
        }
        self.wiped = true;
        self.sum = (0, 0);
        self.epoch = 0;
        self.records.clear();
        self.publish();
    }

    fn publish(&self) {
        if let Some(l) = &self.log {
            let mut g = l.lock();
            g.pending = Some(self.sum.0);
            g.pending_empty = self.sum.1;
            g.pending_epoch = self.epoch;
        }
    }

    /// Stores pushed records with `store` and follows the checksum. After
    /// a wipe every pushed key is taken as new (a recovery pushes each key
    /// once); otherwise each key's old value is read first.
    pub fn store(
        &mut self,
        tdb: &tdb::Tdb,
        rb: &RecBuffer,
        store: impl FnOnce(&tdb::Tdb, &RecBuffer) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.open || self.broken {
            return store(tdb, rb);
        }
        let keys = keys(rb);
        let old: Result<Vec<(u128, i64)>, String> = if self.wiped {
            Ok(vec![(0, 0); keys.len()])
        } else {
            keys.iter().map(|k| hash_of(tdb, k)).collect()
        };
        store(tdb, rb)?;
        let Ok(old) = old else {
            self.broken = true;
            return Ok(());
        };
        for (k, o) in keys.iter().zip(old) {
            match tdb.fetch(k) {
                Ok(v) => {
                    let new = v.as_ref().map_or((0, 0), |v| part(k, v));
                    self.sum = moved(self.sum, new, o);
                    if *k == KEYED_EPOCH_KEY {
                        self.epoch = v.as_deref().map_or(0, epoch_of);
                    }
                    if !self.wiped
                        && let Some(v) = v
                    {
                        self.records.push((k.to_vec(), v));
                    }
                }
                Err(_) => {
                    self.broken = true;
                    return Ok(());
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Its commit failed. The transaction is over, but the file may hold
    /// its content or the one before (a failure after the new pages were
    /// written, in the sync): the log is untracked and its checksum left
    /// to compute, which a worker does once the database is thawed
    /// ([`super::Databases::changelog_resume`]), not the session before its
    /// answer to the commit. A transaction known not to have reached the
    /// file (refused before its commit) is [`RecoveryTx::cancel`]led
    /// instead.
    pub fn commit_failed(&mut self) {
        let Some(log) = self.log.clone() else { return };
        if !self.open {
            return;
        }
        self.reset();
        log.lock().tracked = false;
        log.unfinished.store(true, Ordering::Relaxed);
    }

    /// The recovery transaction committed.
    ///
    /// After a wipe the log starts again at the rewritten content and is
    /// tracked again, whatever it was before: a log left untracked (a
    /// checksum worker stopped by a freeze, a file that could not be read
    /// at attach, a commit whose values were not followed) would otherwise
    /// keep every later recovery of the database on the full path (the
    /// helper takes any untracked node as a reason for it) until the
    /// daemon restarted or a recovery transaction that could not be
    /// followed made it read the file again. This is sound because:
    ///
    /// * nothing of the content before the wipe is left (the wipe
    ///   succeeded: a failed one marks the transaction broken, and the
    ///   commit then reads the file), and during the freeze only the
    ///   session writes the file, so the content is exactly the pushed
    ///   records, whose stored values were read back after each store
    ///   (a failed read-back is broken too);
    /// * the log is emptied and its base is the rewritten state, so
    ///   [`DbLog::changes_since`] answers only the rewritten checksum
    ///   itself (nothing to send) until new commits are logged: no
    ///   catch-up from a state before the rewrite is served from it, the
    ///   helper gets `ChangesPull::NOT_IN_LOG` and recovers in full;
    /// * a checksum worker stopped by this freeze is not needed any more
    ///   (`unfinished` is cleared: it would compute the same sum).
    ///
    /// What it relies on is what a log that was tracked before the wipe
    /// already relied on: a recovery pushes each key once after a wipe
    /// (its records are merged by key; a key pushed twice in different
    /// buffers would be counted twice). A checksum wrong that way makes
    /// catch-ups involving the copy fail their check or find no match
    /// (full path), it does not make a different content look the same.
    pub fn committed(&mut self, tdb: &tdb::Tdb) {
        let Some(log) = self.log.clone() else { return };
        if !self.open {
            return;
        }
        let (wiped, broken, sum, epoch) = (self.wiped, self.broken, self.sum, self.epoch);
        let records = std::mem::take(&mut self.records);
        self.reset();
        let seqnum = read_seqnum(tdb).unwrap_or(0);
        if broken {
            // The checksum could not be followed: read the file again.
            reread(&log, tdb, seqnum);
        } else if wiped {
            let mut g = log.lock();
            g.tracked = true;
            g.restart(sum, seqnum);
            g.epoch = epoch;
            log.unfinished.store(false, Ordering::Relaxed);
        } else if !records.is_empty() {
            log.lock().epoch = epoch;
            let delta = {
                let g = log.lock();
                (sum.0.wrapping_sub(g.checksum), sum.1 - g.empty)
            };
            log.append(delta, seqnum, records);
        }
    }
}

/// The log starts again from the file's content, read whole (tracked if
/// it could be read).
fn reread(log: &DbLog, tdb: &tdb::Tdb, seqnum: u64) {
    let epoch = read_epoch(tdb);
    let sum = content_checksum(tdb);
    let mut g = log.lock();
    g.epoch = epoch;
    match sum {
        Ok(c) => {
            g.tracked = true;
            g.restart(c, seqnum);
            log.unfinished.store(false, Ordering::Relaxed);
        }
        Err(_) => g.tracked = false,
    }
}

/// A transaction still open when its session ends (a thaw, an abandoned
/// recovery) ends without effect, as a cancel: the log no longer reports
/// its checksum, epoch or `CHANGELOG_IN_RECOVERY`.
impl Drop for RecoveryTx {
    fn drop(&mut self) {
        self.reset();
    }
}
