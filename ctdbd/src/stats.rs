//! The daemon's statistics (`STATISTICS`, `STATISTICS_RESET`) and their
//! history (`GET_STAT_HISTORY`: one entry per `StatHistoryInterval`, the
//! newest first, as CTDB keeps them), and the per-database hot keys.
//!
//! Where each counter is counted, as CTDB 4.17 counts it:
//!
//! | counter | where |
//! |---|---|
//! | `client_packets_*`, `client.*`, `node_packets_*`, `node.*`, `keepalive_*` | the event loop, per packet (`server/ingress.rs`) |
//! | `total_calls`, `pending_calls`, `call_latency` | a client's `REQ_CALL`: counted when it arrives (again when it is requeued, as CTDB does), pending until answered, latency from arrival to the answer (`db/call.rs`) |
//! | `max_hop_count`, `hop_count_bucket` (daemon and database) | a node's `REQ_CALL` that reached the record's dmaster: the hops it took (`db/call/migrate.rs`) |
//! | `locks.*` (daemon and database) | record-lock waits: requests waiting now, set after every step of the database layer (`num_current`: those a helper waits for, at most `LockProcessesPerDB` per database, as CTDB runs a lock child per request; `num_pending`: the rest, and a freeze waiting for its locks is one current request), each request once its helper has the lock (`num_calls`, `latency`, `buckets`) or failed (`num_failed`); a database freeze counts as one lock request (`db/lockwait.rs`, the freeze) |
//! | `childwrite_calls`, `pending_childwrite_calls`, `childwrite_latency` | `UPDATE_RECORD` (the per-node write of a persistent transaction's commit) |
//! | `frozen` | at the snapshot: `FREEZE` froze every database (an inactive node), until recovery mode is NORMAL again |
//! | `memory_used` | at the snapshot: the daemon's private resident memory (CTDB: talloc's total) |
//! | `num_recoveries`, `reclock_*`, `timeouts.*` | recovery end, cluster-lock checks, timed-out controls and traverses |
//!
//! The event loop's [`Stats`] and the database layer share the counters
//! through a [`StatsHandle`] (both live on the loop's thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdb_protocol::types::{
    DbStatistics, HotKey, LatencyCounter, MAX_COUNT_BUCKETS, MAX_HOT_KEYS, Statistics,
    StatisticsList, Timeval,
};
use tracing::info;

use crate::metrics::Live;
use crate::server::ReplyTo;
use ctdb_protocol::Opcode;

/// Entries of history kept, as in CTDB.
pub const MAX_STAT_HISTORY: usize = 100;

/// Controls timed at once for the metrics (beyond, the table restarts).
const MAX_CONTROLS_TIMED: usize = 10_000;

#[derive(Debug)]
struct Inner {
    /// Since start (or the last reset).
    s: Statistics,
    /// Since the last history interval.
    current: Statistics,
    history: Vec<Statistics>,
    /// `UPDATE_RECORD` writes running, by the tag of their reply.
    childwrites: HashMap<u64, Instant>,
    /// With metrics on: what only they record ([`crate::metrics::Live`]).
    live: Option<Arc<Live>>,
    /// With metrics on: controls being answered, by who asked and their
    /// request id (the control-latency histogram).
    controls: HashMap<(u64, u32), (Instant, &'static str)>,
    /// Bytes waiting to be written to clients and to nodes, as of the
    /// last tick.
    queued: (u64, u64),
}

impl Inner {
    fn new() -> Inner {
        let fresh = Statistics {
            statistics_start_time: Timeval::now(),
            ..Default::default()
        };
        Inner {
            s: fresh,
            current: fresh,
            history: Vec::new(),
            childwrites: HashMap::new(),
            live: None,
            controls: HashMap::new(),
            queued: (0, 0),
        }
    }
}

/// A handle on the counters, for the parts of the daemon that count (the
/// database layer); cheap to clone.
#[derive(Debug, Clone)]
pub struct StatsHandle(Rc<RefCell<Inner>>);

impl Default for StatsHandle {
    fn default() -> Self {
        StatsHandle(Rc::new(RefCell::new(Inner::new())))
    }
}

impl StatsHandle {
    /// Counts something, in the totals and in the current interval.
    pub fn bump(&self, f: impl Fn(&mut Statistics)) {
        let mut i = self.0.borrow_mut();
        f(&mut i.s);
        f(&mut i.current);
    }

    /// A live count going down (pending calls, lock waits), never below 0.
    pub fn decrement(&self, f: impl Fn(&mut Statistics) -> &mut u32) {
        self.bump(|s| {
            let v = f(s);
            *v = v.saturating_sub(1);
        });
    }

    /// Records a latency sample.
    pub fn latency(&self, f: impl Fn(&mut Statistics) -> &mut LatencyCounter, took: Duration) {
        let secs = took.as_secs_f64();
        self.bump(|s| f(s).record(secs));
    }

    /// A node's `REQ_CALL` that reached the record's dmaster after
    /// `hopcount` hops; the database's histogram counts it too.
    pub fn hops(&self, db: &mut DbStatistics, hopcount: u32) {
        let b = hop_bucket(hopcount);
        db.hop_count_bucket[b] += 1;
        self.bump(|s| {
            s.max_hop_count = s.max_hop_count.max(hopcount);
            s.hop_count_bucket[b] += 1;
        });
    }

    /// A lock request is over: locked after `waited` (or failed).
    pub fn lock_done(&self, db: &mut DbStatistics, waited: Duration, locked: bool) {
        let b = lock_bucket(waited);
        let secs = waited.as_secs_f64();
        if locked && let Some(l) = self.live() {
            l.lock_wait(secs);
        }
        db.locks.num_calls += 1;
        if locked {
            db.locks.buckets[b] += 1;
            db.locks.latency.record(secs);
        } else {
            db.locks.num_failed += 1;
        }
        self.bump(|s| {
            s.locks.num_calls += 1;
            if locked {
                s.locks.buckets[b] += 1;
                s.locks.latency.record(secs);
            } else {
                s.locks.num_failed += 1;
            }
        });
    }

    /// An `UPDATE_RECORD` write starts; its reply will carry `tag`.
    pub fn childwrite_started(&self, tag: u64) {
        self.0.borrow_mut().childwrites.insert(tag, Instant::now());
        self.bump(|s| {
            s.childwrite_calls += 1;
            s.pending_childwrite_calls += 1;
        });
    }

    /// A reply with `tag` is ready: if it ends an `UPDATE_RECORD` write,
    /// the write is counted done.
    pub fn childwrite_done(&self, tag: u64) {
        let started = self.0.borrow_mut().childwrites.remove(&tag);
        if let Some(t) = started {
            self.decrement(|s| &mut s.pending_childwrite_calls);
            self.latency(|s| &mut s.childwrite_latency, t.elapsed());
        }
    }

    /// A batch of `updates` `UPDATE_RECORD`s of database `db_name` was
    /// applied in `transactions` tdb transactions doing `syncs` data syncs
    /// (group commit; only the metrics count it).
    pub fn commit_batch(&self, db_name: &str, updates: u64, transactions: u64, syncs: u64) {
        if let Some(l) = self.live() {
            l.commit_batch(db_name, updates, transactions, syncs);
        }
    }

    /// The metrics' own recorders, when metrics are on.
    fn live(&self) -> Option<Arc<Live>> {
        self.0.borrow().live.clone()
    }

    /// A record of database `db_name` migrated here (hot keys; the
    /// metrics' per-database migrations).
    pub fn migrated(
        &self,
        counts: &mut MigrationCounts,
        db_name: &str,
        db: &mut DbStatistics,
        key: &[u8],
    ) {
        counts.migrated(db_name, db, key, Instant::now());
        if let Some(l) = self.live() {
            l.migration(db_name);
        }
    }

    /// A copy of the totals (no live values filled in).
    pub fn totals(&self) -> Statistics {
        self.0.borrow().s
    }
}

/// Counters kept by the event loop.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    shared: StatsHandle,
    /// Messages dropped for clients that did not read (CTDB's statistics
    /// have no field for them: kept here, and logged), since start.
    pub client_drops: ClientDrops,
}

/// Messages dropped because their client's queue was over its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientDrops {
    pub messages: u64,
    pub bytes: u64,
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle the database layer counts through.
    pub fn handle(&self) -> StatsHandle {
        self.shared.clone()
    }

    /// Counts something, in the totals and in the current interval.
    pub fn bump(&self, f: impl Fn(&mut Statistics)) {
        self.shared.bump(f);
    }

    /// Turns on what only the metrics record.
    pub fn set_live(&self, live: Option<Arc<Live>>) {
        self.shared.0.borrow_mut().live = live;
    }

    /// A recovery ended (`END_RECOVERY`); it started at `started`.
    pub fn recovery_ended(&self, started: Timeval) {
        self.bump(|s| s.num_recoveries += 1);
        if let Some(l) = self.shared.live() {
            let now = Timeval::now();
            let secs = (now.sec - started.sec) as f64 + (now.usec - started.usec) as f64 / 1e6;
            l.recovery(secs.max(0.0));
        }
    }

    /// A control whose reply goes to `to` is being answered (metrics
    /// only).
    pub fn control_started(&self, to: &ReplyTo, op: Opcode) {
        let mut i = self.shared.0.borrow_mut();
        if i.live.is_none() {
            return;
        }
        let Some((who, reqid)) = asker(to) else {
            return;
        };
        let name = op.name();
        // Controls never answered (their asker went) must not pile up.
        if i.controls.len() >= MAX_CONTROLS_TIMED {
            i.controls.clear();
        }
        i.controls.insert((who, reqid), (Instant::now(), name));
    }

    /// The reply to a control is sent to `to` (metrics only).
    pub fn control_answered(&self, to: &ReplyTo) {
        let mut i = self.shared.0.borrow_mut();
        if i.controls.is_empty() {
            return;
        }
        let Some((who, reqid)) = asker(to) else {
            return;
        };
        if let (Some((t, name)), Some(l)) = (i.controls.remove(&(who, reqid)), i.live.as_ref()) {
            l.control(name, t.elapsed().as_secs_f64());
        }
    }

    /// The bytes waiting to be written to clients and to nodes now.
    pub fn set_queued(&self, clients: u64, nodes: u64) {
        let mut i = self.shared.0.borrow_mut();
        i.queued = (clients, nodes);
        if let Some(l) = &i.live {
            l.queues(clients, nodes);
        }
    }

    /// Bytes waiting to be written to clients and to nodes, as of the last
    /// tick.
    pub fn queued(&self) -> (u64, u64) {
        self.shared.0.borrow().queued
    }

    /// `STATISTICS_RESET`: zero the totals, restart their collection time.
    /// Live counts (pending calls, lock waits) are kept: they are not
    /// totals, and what is pending now will still end.
    pub fn reset(&mut self) {
        let mut i = self.shared.0.borrow_mut();
        let old = i.s;
        i.s = Statistics {
            statistics_start_time: Timeval::now(),
            pending_calls: old.pending_calls,
            pending_childwrite_calls: old.pending_childwrite_calls,
            ..Default::default()
        };
        i.s.locks.num_current = old.locks.num_current;
        i.s.locks.num_pending = old.locks.num_pending;
    }

    /// Ends a history interval: the current counters become the newest
    /// history entry.
    pub fn rotate(&mut self) {
        let mut i = self.shared.0.borrow_mut();
        let mut done = i.current;
        done.statistics_current_time = Timeval::now();
        i.history.insert(0, done);
        i.history.truncate(MAX_STAT_HISTORY);
        i.current = Statistics {
            statistics_start_time: Timeval::now(),
            ..Default::default()
        };
    }

    /// History entries kept so far.
    pub fn history_len(&self) -> usize {
        self.shared.0.borrow().history.len()
    }

    /// `GET_STAT_HISTORY`: always [`MAX_STAT_HISTORY`] entries, unused
    /// ones zero.
    pub fn history(&self) -> StatisticsList {
        let mut stats = self.shared.0.borrow().history.clone();
        stats.resize(MAX_STAT_HISTORY, Statistics::default());
        StatisticsList { stats }
    }

    /// A snapshot for `STATISTICS`, with the live values filled in.
    pub fn snapshot(&self, num_clients: u32, recovering: bool) -> Statistics {
        let mut s = self.shared.totals();
        s.num_clients = num_clients;
        s.frozen = 0;
        s.recovering = u32::from(recovering);
        s.memory_used = memory_used().min(u64::from(u32::MAX)) as u32;
        s.statistics_current_time = Timeval::now();
        s
    }
}

/// Who asked a control and its request id: a client id, or a node's pnn
/// with bit 63 set.
fn asker(to: &ReplyTo) -> Option<(u64, u32)> {
    match *to {
        ReplyTo::Client { id, reqid } => Some((u64::from(id), reqid)),
        ReplyTo::Node { pnn, reqid } => Some((1 << 63 | u64::from(pnn), reqid)),
        ReplyTo::Nobody => None,
    }
}

/// CTDB's hop-count histogram bucket: how many times the count can be
/// halved before it reaches zero (0 hops: bucket 0; 1: 1; 2-3: 2; ...).
pub fn hop_bucket(hopcount: u32) -> usize {
    ((32 - hopcount.leading_zeros()) as usize).min(MAX_COUNT_BUCKETS - 1)
}

/// CTDB's lock-latency bucket: under 1 ms, 10 ms, 100 ms, 1 s, then
/// doubling seconds (2, 4, ... 64), then the rest.
pub fn lock_bucket(waited: Duration) -> usize {
    let t = waited.as_secs_f64();
    let bounds = [0.001, 0.01, 0.1, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
    bounds
        .iter()
        .position(|&b| t < b)
        .unwrap_or(bounds.len())
        .min(MAX_COUNT_BUCKETS - 1)
}

/// Page size for `/proc/self/statm` (4 KiB on every platform ctdbd runs
/// on; read from the kernel's auxiliary vector would need `unsafe`).
const PAGE: u64 = 4096;

/// The daemon's private resident memory in bytes: resident pages that are
/// not file-backed shared pages (`/proc/self/statm`: resident - shared),
/// i.e. its heap, stacks and anonymous maps. 0 where unavailable.
pub fn memory_used() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let (_size, resident, shared) = (f.next(), f.next(), f.next());
    resident
        .unwrap_or(0)
        .saturating_sub(shared.unwrap_or(0))
        .saturating_mul(PAGE)
}

/// How often records of a volatile database migrated here, per key, to
/// find its hot keys as CTDB does: a key's count grows while migrations
/// follow each other within [`MIGRATION_WINDOW`], and starts again at 1
/// after a pause; the highest counts are the database's hot keys.
#[derive(Debug, Default)]
pub struct MigrationCounts {
    counts: HashMap<Vec<u8>, (Instant, u64)>,
    last_sweep: Option<Instant>,
    /// Hot-key slots in use (the statistics always report all of them,
    /// as CTDB does).
    used: usize,
}

/// A key's migrations within this of the last one count as one run.
pub const MIGRATION_WINDOW: Duration = Duration::from_secs(1);
/// Keys idle this long are forgotten (at most this often).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl MigrationCounts {
    /// A record of database `db_name` migrated here: counts it and keeps
    /// the database's hot keys up to date.
    pub fn migrated(&mut self, db_name: &str, stats: &mut DbStatistics, key: &[u8], now: Instant) {
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            self.counts
                .retain(|_, (t, _)| now.duration_since(*t) < MIGRATION_WINDOW);
            self.last_sweep = Some(now);
        }
        let count = match self.counts.get_mut(key) {
            Some((t, n)) => {
                if now.duration_since(*t) < MIGRATION_WINDOW {
                    *n += 1;
                } else {
                    *t = now;
                    *n = 1;
                }
                *n
            }
            None => {
                self.counts.insert(key.to_vec(), (now, 1));
                1
            }
        };
        let count = count.min(i32::MAX as u64) as u32;
        update_hot_keys(db_name, stats, &mut self.used, key, count);
    }

    /// Keys counted now.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Puts `key` with `count` among the hot keys if it is hotter than the
/// coldest (or one of the `used` slots is free); the slots in use are kept
/// in ascending order of count, as CTDB keeps them.
pub fn update_hot_keys(
    db_name: &str,
    stats: &mut DbStatistics,
    used: &mut usize,
    key: &[u8],
    count: u32,
) {
    let n = (*used).min(MAX_HOT_KEYS);
    let keys = &mut stats.hot_keys[..n];
    if n == MAX_HOT_KEYS && count <= keys[0].count {
        return;
    }
    if let Some(k) = keys.iter_mut().find(|k| k.key == key) {
        if count <= k.count {
            return;
        }
        if count >= 2 * k.count.max(1) {
            info!(
                "Updated hot key database={db_name} key={} count={count}",
                hex(key)
            );
        }
        k.count = count;
    } else {
        let slot = if n < MAX_HOT_KEYS {
            *used = n + 1;
            n
        } else {
            0
        };
        stats.hot_keys[slot] = HotKey {
            count,
            sender_ptr: 0,
            key: key.to_vec(),
        };
        info!(
            "Added hot key database={db_name} key={} count={count}",
            hex(key)
        );
    }
    let n = (*used).min(MAX_HOT_KEYS);
    stats.hot_keys[..n].sort_by_key(|k| k.count);
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_as_ctdb() {
        assert_eq!(hop_bucket(0), 0);
        assert_eq!(hop_bucket(1), 1);
        assert_eq!(hop_bucket(3), 2);
        assert_eq!(hop_bucket(4), 3);
        assert_eq!(hop_bucket(u32::MAX), MAX_COUNT_BUCKETS - 1);
        assert_eq!(lock_bucket(Duration::from_micros(500)), 0);
        assert_eq!(lock_bucket(Duration::from_millis(5)), 1);
        assert_eq!(lock_bucket(Duration::from_millis(50)), 2);
        assert_eq!(lock_bucket(Duration::from_millis(500)), 3);
        assert_eq!(lock_bucket(Duration::from_millis(1500)), 4);
        assert_eq!(lock_bucket(Duration::from_secs(63)), 9);
        assert_eq!(lock_bucket(Duration::from_secs(1000)), 10);
    }

    #[test]
    fn hot_keys_keep_the_hottest_in_ascending_order() {
        let mut s = DbStatistics::default();
        let mut m = MigrationCounts::default();
        let t = Instant::now();
        for i in 0..12u8 {
            for _ in 0..=i {
                m.migrated("db", &mut s, &[i], t);
            }
        }
        assert_eq!(m.used, MAX_HOT_KEYS);
        let counts: Vec<u32> = s.hot_keys.iter().map(|k| k.count).collect();
        assert_eq!(counts, (3..=12).collect::<Vec<u32>>());
        assert_eq!(s.hot_keys[9].key, vec![11]);
        // After a pause the count starts again; the recorded peak stays.
        m.migrated("db", &mut s, &[11], t + Duration::from_secs(2));
        assert_eq!(s.hot_keys[9].count, 12);
        // Idle keys are forgotten.
        m.migrated("db", &mut s, &[99], t + Duration::from_secs(20));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn shared_counters_and_reset() {
        let mut st = Stats::new();
        let h = st.handle();
        let mut db = DbStatistics::default();
        h.bump(|s| s.locks.num_current = 1);
        h.lock_done(&mut db, Duration::from_millis(2), true);
        h.hops(&mut db, 3);
        let s = st.snapshot(1, false);
        assert_eq!((s.locks.num_calls, s.locks.num_current), (1, 1));
        assert_eq!(s.locks.buckets[1], 1);
        assert_eq!((s.max_hop_count, s.hop_count_bucket[2]), (3, 1));
        assert_eq!(db.locks.num_calls, 1);
        st.reset();
        let s = st.snapshot(1, false);
        assert_eq!((s.locks.num_calls, s.locks.num_current), (0, 1));
        h.bump(|s| s.locks.num_current = 0);
        assert_eq!(st.snapshot(0, false).locks.num_current, 0);
        st.rotate();
        assert_eq!(st.history().stats[0].locks.num_calls, 1);
    }
}
