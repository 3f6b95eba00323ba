//! What a freeze session's recovery transaction does to a database's
//! change log.

use std::sync::Arc;

use ctdb_protocol::types::{KEYED_EPOCH_KEY, RecBuffer};

use super::checksum::{content_checksum, hash_of, moved, part};
use super::{DbLog, epoch_of, keys, read_epoch};
use crate::db::persistent::read_seqnum;

/// What a freeze session's recovery transaction does to the log: followed
/// as it happens, applied at its commit.
#[derive(Debug, Default)]
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
            ..Default::default()
        }
    }

    fn reset(&mut self) {
        self.open = false;
        self.wiped = false;
        self.records.clear();
        self.broken = false;
        if let Some(l) = &self.log {
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

    /// It was cancelled (or replaced).
    pub fn cancel(&mut self) {
        self.reset();
    }

    /// The database was wiped inside it.
    pub fn wiped(&mut self) {
        if !self.open {
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

    /// The recovery transaction committed.
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
            let mut g = log.lock();
            g.epoch = read_epoch(tdb);
            match content_checksum(tdb) {
                Ok(c) => {
                    g.tracked = true;
                    g.restart(c, seqnum);
                }
                Err(_) => g.tracked = false,
            }
        } else if wiped {
            let mut g = log.lock();
            g.restart(sum, seqnum);
            g.epoch = epoch;
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
