//! Change logs of persistent databases, for incremental catch-up
//! (ctdb-rs extension, issue 21).
//!
//! Every persistent database (classic, in-memory and keyed) has a
//! [`DbLog`]: the content checksum of this node's copy and a bounded log
//! of the changes committed here, each with the checksum the copy had
//! after it. The checksum is the wrapping sum, over every record, of a
//! 128-bit hash of the key and the stored value (header included), so it
//! depends on the content only, not on the order of writes, and it is
//! kept up to date with every write instead of being recomputed:
//!
//! * at attach it is computed once, by reading the whole file: on a
//!   worker thread that holds the database's handle meanwhile when the
//!   node runs ([`Databases::changelog_compute`]; the database's work
//!   waits, the event loop does not), at once at start-up, before the node
//!   joins the cluster ([`Databases::changelog_compute_now`]);
//! * a commit (`UPDATE_RECORD`, [`logged`]) reads each changed key's old
//!   value before and its new value after, moves the checksum by the
//!   difference and appends the new values to the log;
//! * a recovery transaction ([`RecoveryTx`]) follows wipes (checksum 0,
//!   the log starts again) and pushed records, and takes effect at its
//!   commit (a wipe's commit also tracks a log that was untracked: the
//!   log starts at the rewritten content, see [`RecoveryTx::committed`]);
//!   ended any other way it leaves the log as it was; pushed records
//!   without a wipe (an incremental catch-up of this node) become one
//!   entry of the log, so a node that was caught up can itself serve the
//!   next catch-up.
//!
//! A node whose copy's checksum equals the checksum after some entry of
//! another node's log (or before its oldest one) holds exactly what that
//! node held then; the records changed since ([`DbLog::changes_since`],
//! newest value of each key) bring it to the same content, which the
//! recovery helper checks by comparing checksums after applying them.
//! Records are never deleted by commits (a persistent delete stores an
//! empty record), so changed records are all a catch-up needs. The log
//! also counts such empty records: a full recovery drops them from every
//! copy, so a copy holding any is recovered in full (`CHANGELOG_HAS_EMPTY`).
//!
//! The log is bounded by bytes and by age (`[ctdb-rs] changelog max
//! bytes`, `changelog max age` in `ctdb.conf`); the oldest entries go
//! first. It lives in memory: a node that restarts starts with an empty
//! log (its copy's checksum is still right, so it can be caught up; it
//! cannot serve a catch-up for changes from before its start). Writes that
//! bypass the daemon (tdbtool, `ctdb tstore` on a file in use) are not
//! seen: the checksum then no longer matches the file and catch-ups
//! involving this node fail their check and fall back to a full pull.
//!
//! Rooms: this file holds the log and the commit path ([`logged`],
//! [`logged_batch`]) and answers the two controls; `checksum.rs` the hash
//! and the content checksum; `recovery_tx.rs` the recovery transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ctdb_protocol::types::{
    CHANGELOG_HAS_EMPTY, CHANGELOG_IN_RECOVERY, CHANGELOG_TRACKED, ChangelogInfo, ChangesChunk,
    ChangesPull, LtdbHeader, RecBuffer, db_flags,
};
use ctdb_protocol::{ControlReply, ReplyControl};
use tracing::{info, warn};

use super::persistent::{SEQNUM_KEY, read_seqnum};
use super::{Databases, DbEvent, ltdb};

mod checksum;
mod recovery_tx;

pub use checksum::{content_checksum, content_checksum_until, record_hash};
use checksum::{hash_of, moved, part};
pub use recovery_tx::RecoveryTx;

/// The log's bounds (per database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// Default bound in bytes of records per database: 16 MiB.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// Default bound in age: one hour.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Sets the bounds from `ctdb.conf`, once, before databases attach.
pub fn set_limits(l: Limits) {
    let _ = LIMITS.set(l);
}

fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// One change: the stored values it left (key, value with header), and
/// the copy's checksum and sequence number after it.
#[derive(Debug)]
struct Entry {
    no: u64,
    at: Instant,
    post: u128,
    seqnum: u64,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    /// The checksum is known: false until computed, after reading the
    /// file failed or a commit stored other values than followed; true
    /// again once the file is read whole or rewritten by a recovery.
    tracked: bool,
    checksum: u128,
    /// Records with no data (deleted), which a full recovery drops.
    empty: i64,
    /// The checksum and empty records inside an open recovery transaction.
    pending: Option<u128>,
    pending_empty: i64,
    /// Keyed databases: the copy epoch the copy holds, and inside an open
    /// recovery transaction.
    epoch: u64,
    pending_epoch: u64,
    entries: VecDeque<Entry>,
    /// Checksum and sequence number before the oldest entry.
    base: u128,
    base_seqnum: u64,
    bytes: usize,
    next_no: u64,
    limits: Limits,
}

/// A database's checksum and change log, shared by whoever holds its
/// handle (the event loop, a commit's worker, a freeze session).
#[derive(Debug)]
pub struct DbLog {
    inner: Mutex<Inner>,
    /// Set to stop a checksum worker (a freeze waits for the handle).
    stop: AtomicBool,
    /// A worker was stopped: the checksum is still to be computed.
    unfinished: AtomicBool,
}

impl DbLog {
    /// The log of a newly attached database (`None` for volatile and
    /// replicated ones). Its checksum is not known until
    /// [`DbLog::compute`] has read the whole file, which attach leaves to a
    /// worker thread ([`Databases::changelog_compute`]); until then the log
    /// says it is not tracked, and no catch-up involves this copy.
    pub fn open(tdb: &tdb::Tdb, flags: u8) -> Option<Arc<DbLog>> {
        if flags & (db_flags::PERSISTENT | db_flags::KEYED) == 0 {
            return None;
        }
        let log = DbLog::with(false, 0, read_seqnum(tdb).unwrap_or(0), limits());
        log.lock().epoch = read_epoch(tdb);
        Some(Arc::new(log))
    }

    /// Computes the checksum from the whole file. The caller holds the
    /// database's only handle, so nothing writes to it meanwhile. False if
    /// [`DbLog::interrupt_compute`] stopped it since the last
    /// [`DbLog::begin_compute`]: the log stays untracked and
    /// [`DbLog::unfinished`] says so.
    pub fn compute(&self, tdb: &tdb::Tdb) -> bool {
        let sum = match content_checksum_until(tdb, &self.stop) {
            Some(sum) => sum,
            None => {
                self.lock().tracked = false;
                self.unfinished.store(true, Ordering::Relaxed);
                return false;
            }
        };
        self.unfinished.store(false, Ordering::Relaxed);
        let seqnum = read_seqnum(tdb).unwrap_or(0);
        let epoch = read_epoch(tdb);
        let mut g = self.lock();
        match sum {
            Ok(c) => {
                g.tracked = true;
                g.restart(c, seqnum);
            }
            Err(e) => {
                warn!("change log: cannot read the database ({e}); no catch-up from or to it");
                g.tracked = false;
            }
        }
        g.epoch = epoch;
        true
    }

    /// A worker is about to compute the checksum: earlier interruptions
    /// are for earlier workers.
    pub fn begin_compute(&self) {
        self.stop.store(false, Ordering::Relaxed);
    }

    /// Stops the checksum worker, if one runs, at its next record: a freeze
    /// (a recovery) waits for the database's handle, which the worker
    /// holds; a whole large file is not to be read first.
    pub fn interrupt_compute(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A stopped worker left the checksum to compute.
    pub fn unfinished(&self) -> bool {
        self.unfinished.load(Ordering::Relaxed)
    }

    fn with(tracked: bool, checksum: u128, seqnum: u64, limits: Limits) -> DbLog {
        DbLog {
            inner: Mutex::new(Inner {
                tracked,
                checksum,
                empty: 0,
                pending: None,
                pending_empty: 0,
                epoch: 0,
                pending_epoch: 0,
                entries: VecDeque::new(),
                base: checksum,
                base_seqnum: seqnum,
                bytes: 0,
                next_no: 1,
                limits,
            }),
            stop: AtomicBool::new(false),
            unfinished: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `DB_CHANGELOG_INFO` reports.
    pub fn info(&self, db_id: u32) -> ChangelogInfo {
        let mut g = self.lock();
        g.expire(Instant::now());
        let mut flags = 0;
        if g.tracked {
            flags |= CHANGELOG_TRACKED;
        }
        if g.pending.is_some() {
            flags |= CHANGELOG_IN_RECOVERY;
        }
        let empty = if g.pending.is_some() {
            g.pending_empty
        } else {
            g.empty
        };
        if empty > 0 {
            flags |= CHANGELOG_HAS_EMPTY;
        }
        ChangelogInfo {
            db_id,
            flags,
            entries: g.entries.len() as u32,
            checksum: g.pending.unwrap_or(g.checksum),
            seqnum: g.entries.back().map_or(g.base_seqnum, |e| e.seqnum),
            first: g.entries.front().map_or(0, |e| e.no),
            last: g.entries.back().map_or(0, |e| e.no),
            base_seqnum: g.base_seqnum,
            bytes: g.bytes as u64,
            oldest_age_ms: g
                .entries
                .front()
                .map_or(0, |e| e.at.elapsed().as_millis() as u64),
            max_bytes: g.limits.max_bytes as u64,
            max_age_ms: g.limits.max_age.as_millis() as u64,
            epoch: if g.pending.is_some() {
                g.pending_epoch
            } else {
                g.epoch
            },
        }
    }

    /// The records changed since this copy's checksum was `from`, newest
    /// value of each key, in the order of their last change; `None` if the
    /// log does not reach back to `from`.
    pub fn changes_since(&self, from: u128) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut g = self.lock();
        g.expire(Instant::now());
        if !g.tracked {
            return None;
        }
        let start = if from == g.checksum {
            g.entries.len()
        } else if let Some(i) = g.entries.iter().rposition(|e| e.post == from) {
            i + 1
        } else if from == g.base {
            0
        } else {
            return None;
        };
        let mut last: HashMap<&[u8], (usize, &[u8])> = HashMap::new();
        let mut n = 0usize;
        for e in g.entries.iter().skip(start) {
            for (k, v) in &e.records {
                last.insert(k, (n, v));
                n += 1;
            }
        }
        let mut out: Vec<(usize, &[u8], &[u8])> =
            last.into_iter().map(|(k, (i, v))| (i, k, v)).collect();
        out.sort_unstable_by_key(|r| r.0);
        Some(
            out.into_iter()
                .map(|(_, k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        )
    }

    /// A committed change moved the checksum by `delta` and left `records`.
    fn append(&self, delta: (u128, i64), seqnum: u64, records: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut g = self.lock();
        g.checksum = g.checksum.wrapping_add(delta.0);
        g.empty += delta.1;
        let bytes = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        let no = g.next_no;
        g.next_no += 1;
        let post = g.checksum;
        g.entries.push_back(Entry {
            no,
            at: Instant::now(),
            post,
            seqnum,
            records,
            bytes,
        });
        g.bytes += bytes;
        g.expire(Instant::now());
    }
}

impl Inner {
    /// Drops the oldest entries beyond the bounds.
    fn expire(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            if self.bytes <= self.limits.max_bytes
                && now.duration_since(e.at) <= self.limits.max_age
            {
                break;
            }
            let e = self.entries.pop_front().expect("checked");
            self.bytes -= e.bytes;
            self.base = e.post;
            self.base_seqnum = e.seqnum;
        }
    }

    /// The log starts again from the current content (after a wipe).
    fn restart(&mut self, (checksum, empty): (u128, i64), seqnum: u64) {
        self.checksum = checksum;
        self.empty = empty;
        self.entries.clear();
        self.bytes = 0;
        self.base = checksum;
        self.base_seqnum = seqnum;
    }
}

/// The copy epoch a stored value of the record `__keyed_epoch__` holds
/// (header, then u64 little-endian; 0 if too short).
fn epoch_of(value: &[u8]) -> u64 {
    value
        .get(LtdbHeader::WIRE_SIZE..LtdbHeader::WIRE_SIZE + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The copy epoch a file holds (0 without the record). Unreadable or
/// damaged, it is reported as 0 too (the helper then takes this copy as
/// behind and pushes it the current one, which the recovery transaction
/// takes: `keyed_recovery::check_recovered`), and logged.
fn read_epoch(tdb: &tdb::Tdb) -> u64 {
    match super::keyed_recovery::epoch(tdb) {
        Ok(e) => e,
        Err(why) => {
            warn!("change log: {why}; reported as copy epoch 0");
            0
        }
    }
}

/// The distinct keys of a buffer, in order of first appearance.
fn keys(rb: &RecBuffer) -> Vec<&[u8]> {
    let mut seen = HashSet::new();
    rb.iter()
        .map(|r| r.key)
        .filter(|k| seen.insert(*k))
        .collect()
}

/// Runs `apply` (one commit's `UPDATE_RECORD` on `tdb`) and, if it
/// succeeds, moves the checksum and logs the stored values.
pub fn logged(
    log: Option<&DbLog>,
    tdb: &tdb::Tdb,
    rb: &RecBuffer,
    apply: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let mut one = [(rb, Ok(()))];
    logged_batch(
        log,
        tdb,
        &mut one,
        |u| u.0,
        |u| u.1.is_ok(),
        |u| {
            u[0].1 = apply();
            1
        },
    );
    let [(_, r)] = one;
    r
}

/// Runs `apply` (a batch of commits' `UPDATE_RECORD`s on `tdb`, see
/// `group_commit`; `records` gives an update's records, `applied` whether
/// `apply` applied it) and logs every applied update, one entry each,
/// moving the checksum by what each changed. Without a log, only `apply`.
pub fn logged_batch<U, A>(
    log: Option<&DbLog>,
    tdb: &tdb::Tdb,
    updates: &mut [U],
    records: impl Fn(&U) -> &RecBuffer,
    applied: impl Fn(&U) -> bool,
    apply: impl FnOnce(&mut [U]) -> A,
) -> A {
    let Some(log) = log else {
        return apply(updates);
    };
    // Every touched key's hash before the batch.
    let mut current: HashMap<Vec<u8>, (u128, i64)> = HashMap::new();
    let mut readable = true;
    for u in updates.iter() {
        for rec in records(u).iter() {
            if !current.contains_key(rec.key) {
                match hash_of(tdb, rec.key) {
                    Ok(h) => {
                        current.insert(rec.key.to_vec(), h);
                    }
                    Err(_) => readable = false,
                }
            }
        }
    }
    let transactions = apply(updates);
    if !readable {
        log.lock().tracked = false;
        return transactions;
    }
    // Each applied update in order, its records as stored (header, data).
    let mut seqnum = log.info(0).seqnum;
    for u in updates.iter().filter(|u| applied(u)) {
        let mut delta = (0u128, 0i64);
        let mut stored: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut at: HashMap<&[u8], usize> = HashMap::new();
        for rec in records(u).iter() {
            let Ok((h, data)) = rec.header() else {
                continue;
            };
            let mut v = ltdb::header_bytes(&h).to_vec();
            v.extend_from_slice(data);
            let new = part(rec.key, &v);
            let old = current.insert(rec.key.to_vec(), new).unwrap_or((0, 0));
            delta = moved(delta, new, old);
            if rec.key == SEQNUM_KEY
                && let Ok(b) = <[u8; 8]>::try_from(data)
            {
                seqnum = u64::from_le_bytes(b);
            }
            match at.get(rec.key) {
                Some(&i) => stored[i].1 = v,
                None => {
                    at.insert(rec.key, stored.len());
                    stored.push((rec.key.to_vec(), v));
                }
            }
        }
        log.append(delta, seqnum, stored);
    }
    // What the file holds must be what was followed.
    let agrees = current
        .iter()
        .all(|(k, h)| hash_of(tdb, k).is_ok_and(|now| now == *h));
    if !agrees {
        warn!(
            "change log: a commit stored other values than followed; no catch-up from or to this copy"
        );
        log.lock().tracked = false;
    }
    transactions
}

impl Databases {
    /// After an attach while the node runs: hands the new database's handle
    /// to a worker thread
    /// that reads the whole file for its change log's checksum
    /// ([`DbLog::compute`]), so a large database does not hold up the event
    /// loop. The database's own work waits for the handle meanwhile, as it
    /// does during a commit or a repack; every other database is served.
    pub(crate) fn changelog_compute(&mut self, id: u32) {
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        let Some(log) = db.changelog.clone() else {
            return;
        };
        let Some(tdb) = db.tdb.take() else {
            return;
        };
        let ev = self.ev_tx.clone();
        let name = db.name.clone();
        log.begin_compute();
        tokio::task::spawn_blocking(move || {
            if !log.compute(&tdb) {
                info!(
                    "change log of {name}: checksum stopped for a freeze; computed again after it"
                );
            }
            let _ = ev.send(DbEvent::Returned {
                db: id,
                tdb: Box::new(tdb),
                done: None,
            });
        });
    }

    /// The handle of database `id` is back: if a freeze stopped its
    /// checksum worker (a freeze waits for the handle without a deadline,
    /// so one that finds the worker holding it stops it: `recovery.rs`)
    /// and the database is no longer frozen, a new worker computes it.
    pub(crate) fn changelog_resume(&mut self, id: u32) {
        let again = self.dbs.get(&id).is_some_and(|d| {
            d.tdb.is_some()
                && matches!(d.freeze, super::recovery::Freeze::None)
                && d.changelog.as_ref().is_some_and(|l| l.unfinished())
        });
        if again {
            self.changelog_compute(id);
        }
    }

    /// At start-up: computes the attached database's checksum at once.
    /// The node is not in the cluster yet, so nothing waits for it; were
    /// it left to a worker, the node would join meanwhile and the first
    /// recovery's freeze, on every node, would wait for it.
    pub(crate) fn changelog_compute_now(&self, id: u32) {
        if let Some(db) = self.dbs.get(&id)
            && let (Some(log), Some(tdb)) = (&db.changelog, &db.tdb)
        {
            log.begin_compute();
            log.compute(tdb);
        }
    }

    /// `DB_CHANGELOG_INFO`.
    pub(crate) fn changelog_info(&self, db_id: u32) -> ReplyControl {
        match self.dbs.get(&db_id) {
            None => ReplyControl::error(-1, format!("unknown database 0x{db_id:08x}")),
            Some(db) => match &db.changelog {
                None => ReplyControl::error(
                    -1,
                    format!("database {} has no change log (not persistent)", db.name),
                ),
                Some(l) => ReplyControl::ok(ControlReply::DbChangelogInfo(Box::new(l.info(db_id)))),
            },
        }
    }

    /// `DB_CHANGES_PULL`: one chunk of the records changed since `p.from`.
    pub(crate) fn changes_pull(&self, p: &ChangesPull) -> ReplyControl {
        let Some(db) = self.dbs.get(&p.db_id) else {
            return ReplyControl::error(-1, format!("unknown database 0x{:08x}", p.db_id));
        };
        let Some(log) = &db.changelog else {
            return ReplyControl::error(-1, format!("database {} has no change log", db.name));
        };
        let Some(all) = log.changes_since(p.from) else {
            return ReplyControl::error(
                ChangesPull::NOT_IN_LOG,
                format!(
                    "the change log of {} does not reach back to checksum {:032x}",
                    db.name, p.from
                ),
            );
        };
        let limit = (p.limit as usize).max(1);
        let mut records = RecBuffer::new(p.db_id);
        let mut i = p.offset as usize;
        while i < all.len() && (records.count() == 0 || records.records_len() < limit) {
            let (k, v) = &all[i];
            records.add(0, None, k, v);
            i += 1;
        }
        ReplyControl::ok(ControlReply::DbChangesPull(ChangesChunk {
            done: i >= all.len(),
            total: all.len() as u64,
            records,
        }))
    }
}

#[cfg(test)]
mod tests;
