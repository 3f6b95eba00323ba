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
//! * at attach it is computed once, by reading the whole file (attach
//!   already reads it all for `tdb_check`);
//! * a commit (`UPDATE_RECORD`, [`logged`]) reads each changed key's old
//!   value before and its new value after, moves the checksum by the
//!   difference and appends the new values to the log;
//! * a recovery transaction ([`RecoveryTx`]) follows wipes (checksum 0,
//!   the log starts again) and pushed records, and takes effect at its
//!   commit; pushed records without a wipe (an incremental catch-up of
//!   this node) become one entry of the log, so a node that was caught up
//!   can itself serve the next catch-up.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ctdb_protocol::types::{
    CHANGELOG_HAS_EMPTY, CHANGELOG_IN_RECOVERY, CHANGELOG_TRACKED, ChangelogInfo, ChangesChunk,
    ChangesPull, RecBuffer, db_flags,
};
use ctdb_protocol::{ControlReply, ReplyControl};
use tracing::warn;

use super::persistent::{SEQNUM_KEY, read_seqnum};
use super::{Databases, ltdb};

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
    /// The checksum is known (false only if reading the file failed).
    tracked: bool,
    checksum: u128,
    /// Records with no data (deleted), which a full recovery drops.
    empty: i64,
    /// The checksum and empty records inside an open recovery transaction.
    pending: Option<u128>,
    pending_empty: i64,
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
}

impl DbLog {
    /// The log of a newly attached database (`None` for volatile and
    /// replicated ones): its checksum is computed from the whole file.
    pub fn open(tdb: &tdb::Tdb, flags: u8) -> Option<Arc<DbLog>> {
        if flags & (db_flags::PERSISTENT | db_flags::KEYED) == 0 {
            return None;
        }
        let (tracked, (checksum, empty)) = match content_checksum(tdb) {
            Ok(c) => (true, c),
            Err(e) => {
                warn!("change log: cannot read the database ({e}); no catch-up from or to it");
                (false, (0, 0))
            }
        };
        let seqnum = read_seqnum(tdb).unwrap_or(0);
        let log = DbLog::with(tracked, checksum, seqnum, limits());
        log.lock().empty = empty;
        Some(Arc::new(log))
    }

    fn with(tracked: bool, checksum: u128, seqnum: u64, limits: Limits) -> DbLog {
        DbLog {
            inner: Mutex::new(Inner {
                tracked,
                checksum,
                empty: 0,
                pending: None,
                pending_empty: 0,
                entries: VecDeque::new(),
                base: checksum,
                base_seqnum: seqnum,
                bytes: 0,
                next_no: 1,
                limits,
            }),
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

/// The 128-bit hash of one record (MurmurHash3 x64-128, seed 0, over the
/// key's length as 4 bytes little-endian, the key and the stored value).
pub fn record_hash(key: &[u8], value: &[u8]) -> u128 {
    let mut m = Murmur::default();
    m.write(&(key.len() as u32).to_le_bytes());
    m.write(key);
    m.write(value);
    m.finish()
}

/// A record's part of the checksum, and 1 if it has no data (a deleted
/// record of a persistent database: only its header).
fn part(key: &[u8], v: &[u8]) -> (u128, i64) {
    (
        record_hash(key, v),
        i64::from(v.len() <= ltdb_header_size()),
    )
}

fn ltdb_header_size() -> usize {
    ctdb_protocol::types::LtdbHeader::WIRE_SIZE
}

/// The checksum of a whole file, and its records without data.
pub fn content_checksum(tdb: &tdb::Tdb) -> tdb::Result<(u128, i64)> {
    let mut sum = (0u128, 0i64);
    tdb.traverse_read(|k, v| {
        let p = part(k, v);
        sum = (sum.0.wrapping_add(p.0), sum.1 + p.1);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(sum)
}

fn hash_of(tdb: &tdb::Tdb, key: &[u8]) -> Result<(u128, i64), String> {
    Ok(tdb
        .parse(key, |v| part(key, v))
        .map_err(|e| format!("change log: {e}"))?
        .unwrap_or((0, 0)))
}

/// `a + new - old` for checksum parts.
fn moved(a: (u128, i64), new: (u128, i64), old: (u128, i64)) -> (u128, i64) {
    (
        a.0.wrapping_add(new.0).wrapping_sub(old.0),
        a.1 + new.1 - old.1,
    )
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

/// What a freeze session's recovery transaction does to the log: followed
/// as it happens, applied at its commit.
#[derive(Debug, Default)]
pub struct RecoveryTx {
    log: Option<Arc<DbLog>>,
    open: bool,
    wiped: bool,
    sum: (u128, i64),
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
            g.pending = Some(self.sum.0);
            g.pending_empty = self.sum.1;
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
        self.records.clear();
        self.publish();
    }

    fn publish(&self) {
        if let Some(l) = &self.log {
            let mut g = l.lock();
            g.pending = Some(self.sum.0);
            g.pending_empty = self.sum.1;
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
        let (wiped, broken, sum) = (self.wiped, self.broken, self.sum);
        let records = std::mem::take(&mut self.records);
        self.reset();
        let seqnum = read_seqnum(tdb).unwrap_or(0);
        if broken {
            // The checksum could not be followed: read the file again.
            let mut g = log.lock();
            match content_checksum(tdb) {
                Ok(c) => {
                    g.tracked = true;
                    g.restart(c, seqnum);
                }
                Err(_) => g.tracked = false,
            }
        } else if wiped {
            log.lock().restart(sum, seqnum);
        } else if !records.is_empty() {
            let delta = {
                let g = log.lock();
                (sum.0.wrapping_sub(g.checksum), sum.1 - g.empty)
            };
            log.append(delta, seqnum, records);
        }
    }
}

impl Databases {
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
                -1,
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

/// MurmurHash3 x64-128, streaming.
#[derive(Default)]
struct Murmur {
    h1: u64,
    h2: u64,
    tail: [u8; 16],
    ntail: usize,
    len: u64,
}

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Murmur {
    fn block(&mut self, b: &[u8; 16]) {
        let k1 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
        self.h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        self.h1 = self
            .h1
            .rotate_left(27)
            .wrapping_add(self.h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        self.h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        self.h2 = self
            .h2
            .rotate_left(31)
            .wrapping_add(self.h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    fn write(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.ntail > 0 {
            let n = (16 - self.ntail).min(data.len());
            self.tail[self.ntail..self.ntail + n].copy_from_slice(&data[..n]);
            self.ntail += n;
            data = &data[n..];
            if self.ntail < 16 {
                return;
            }
            let t = self.tail;
            self.block(&t);
            self.ntail = 0;
        }
        let mut chunks = data.chunks_exact(16);
        for c in &mut chunks {
            self.block(c.try_into().expect("16 bytes"));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.ntail = rest.len();
    }

    fn finish(mut self) -> u128 {
        let t = &self.tail[..self.ntail];
        let mut k1 = 0u64;
        let mut k2 = 0u64;
        for (i, &b) in t.iter().enumerate() {
            if i < 8 {
                k1 |= u64::from(b) << (8 * i);
            } else {
                k2 |= u64::from(b) << (8 * (i - 8));
            }
        }
        if t.len() > 8 {
            self.h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        }
        if !t.is_empty() {
            self.h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        }
        self.h1 ^= self.len;
        self.h2 ^= self.len;
        self.h1 = self.h1.wrapping_add(self.h2);
        self.h2 = self.h2.wrapping_add(self.h1);
        self.h1 = fmix(self.h1);
        self.h2 = fmix(self.h2);
        self.h1 = self.h1.wrapping_add(self.h2);
        self.h2 = self.h2.wrapping_add(self.h1);
        u128::from(self.h1) | (u128::from(self.h2) << 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::persistent::apply_update;
    use ctdb_protocol::types::LtdbHeader;

    fn murmur(data: &[u8]) -> u128 {
        let mut m = Murmur::default();
        m.write(data);
        m.finish()
    }

    #[test]
    fn murmur_matches_the_reference_vectors_and_streams() {
        // MurmurHash3_x64_128, seed 0: h1 then h2 as little-endian words.
        assert_eq!(murmur(b""), 0);
        let h = murmur(b"hello");
        assert_eq!(h as u64, 0xcbd8_a7b3_41bd_9b02);
        assert_eq!((h >> 64) as u64, 0x5b1e_906a_48ae_1d19);
        let long = b"The quick brown fox jumps over the lazy dog";
        let mut m = Murmur::default();
        for c in long.chunks(5) {
            m.write(c);
        }
        assert_eq!(m.finish(), murmur(long));
    }

    fn rb(recs: &[(&[u8], u64, &[u8])]) -> RecBuffer {
        let mut b = RecBuffer::new(1);
        for (k, rsn, v) in recs {
            let h = LtdbHeader {
                rsn: *rsn,
                ..Default::default()
            };
            b.add(0, Some(&h), k, v);
        }
        b
    }

    /// One batch of commits (as group commit applies them), or one commit.
    fn commit(l: &DbLog, t: &tdb::Tdb, rbs: &[RecBuffer]) {
        if let [one] = rbs {
            logged(Some(l), t, one, || apply_update(t, one, false)).unwrap();
            return;
        }
        let mut ups: Vec<(RecBuffer, Result<(), String>)> =
            rbs.iter().map(|rb| (rb.clone(), Ok(()))).collect();
        logged_batch(
            Some(l),
            t,
            &mut ups,
            |u| &u.0,
            |u| u.1.is_ok(),
            |ups| {
                // One transaction for the batch, as group commit does.
                let tx = t.transaction_start().unwrap();
                for (rb, _) in ups.iter() {
                    for r in rb.iter() {
                        tx.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
                    }
                }
                tx.commit().unwrap();
            },
        );
    }

    fn open(dir: &tempfile::TempDir, name: &str) -> tdb::Tdb {
        tdb::OpenOptions::new()
            .create(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    #[test]
    fn commits_and_catch_up_keep_the_checksum_of_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "a.tdb");
        let b = open(&dir, "b.tdb");
        let la = DbLog::open(&a, db_flags::PERSISTENT).unwrap();
        let lb = DbLog::open(&b, db_flags::PERSISTENT).unwrap();
        let u1 = rb(&[(b"x", 1, b"1"), (b"y", 1, b"1")]);
        for (t, l) in [(&a, &la), (&b, &lb)] {
            commit(l, t, std::slice::from_ref(&u1));
        }
        let at_b = lb.info(1).checksum;
        assert_eq!(at_b, la.info(1).checksum);
        // Node b is away; a commits three times (x twice in one batch).
        commit(
            &la,
            &a,
            &[
                rb(&[(b"x", 2, b"2")]),
                rb(&[(b"x", 3, b"3"), (b"z", 1, b"1")]),
            ],
        );
        commit(&la, &a, &[rb(&[(b"w", 1, b"1")])]);
        assert_eq!(la.info(1).entries, 4);
        assert_eq!(la.info(1).checksum, content_checksum(&a).unwrap().0);
        let changes = la.changes_since(at_b).unwrap();
        let keys: Vec<&[u8]> = changes.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"x".as_slice(), b"z", b"w"]);
        assert!(la.changes_since(12345).is_none());
        // b catches up in a recovery transaction.
        let mut tx = RecoveryTx::new(Some(lb.clone()));
        tx.start();
        let mut push = RecBuffer::new(1);
        for (k, v) in &changes {
            push.add(0, None, k, v);
        }
        let t = b.transaction_start().unwrap();
        tx.store(&b, &push, |t, rb| {
            for r in rb.iter() {
                t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(lb.info(1).flags, CHANGELOG_TRACKED | CHANGELOG_IN_RECOVERY);
        assert_eq!(lb.info(1).checksum, la.info(1).checksum);
        t.commit().unwrap();
        tx.committed(&b);
        assert_eq!(lb.info(1).checksum, content_checksum(&b).unwrap().0);
        assert_eq!(lb.info(1).checksum, la.info(1).checksum);
        // b's log has the catch-up as an entry, from its old state.
        assert_eq!(lb.changes_since(at_b).unwrap().len(), 3);
        // A wipe and a full push restart the log.
        let mut tx = RecoveryTx::new(Some(lb.clone()));
        tx.start();
        let t = b.transaction_start().unwrap();
        b.wipe_all().unwrap();
        tx.wiped();
        tx.store(&b, &push, |t, rb| {
            for r in rb.iter() {
                t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
            }
            Ok(())
        })
        .unwrap();
        t.commit().unwrap();
        tx.committed(&b);
        let i = lb.info(1);
        assert_eq!(i.entries, 0);
        assert_eq!(i.checksum, content_checksum(&b).unwrap().0);
    }

    #[test]
    fn deleted_records_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "a.tdb");
        let l = DbLog::open(&a, db_flags::PERSISTENT).unwrap();
        commit(&l, &a, &[rb(&[(b"k", 1, b"v")])]);
        assert_eq!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
        commit(&l, &a, &[rb(&[(b"k", 2, b"")])]);
        assert_ne!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
        assert_eq!(content_checksum(&a).unwrap(), (l.info(1).checksum, 1));
        commit(&l, &a, &[rb(&[(b"k", 3, b"w")])]);
        assert_eq!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
    }

    #[test]
    fn the_log_keeps_to_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "a.tdb");
        let l = DbLog::with(
            true,
            0,
            0,
            Limits {
                max_bytes: 200,
                max_age: Duration::from_secs(3600),
            },
        );
        let start = l.info(1).checksum;
        for i in 0..10u64 {
            commit(&l, &a, &[rb(&[(b"k", i + 1, &[7u8; 50])])]);
        }
        let i = l.info(1);
        assert!(i.bytes <= 200 && i.entries >= 1, "{i:?}");
        assert_eq!(i.last, 10);
        assert!(l.changes_since(start).is_none());
        assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
    }
}
