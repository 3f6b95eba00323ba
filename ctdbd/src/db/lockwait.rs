//! Waiting for record locks without blocking the event loop.
//!
//! The loop only ever *tries* a chain lock. When a client holds it, the
//! work (a client's call, a node's call or dmaster packet) is queued
//! behind the record's chain, in arrival order, and a helper thread waits
//! for the lock in the kernel ([`tdb::ChainWaiter`]: queued on the robust
//! mutex, or in `F_SETLKW`, like any other waiter, so it gets the lock as
//! soon as the holder lets go). When it holds the lock it reports
//! [`DbEvent::LockHeld`]; the loop adopts the held chain, runs every piece
//! of work queued on it (later work for a waiting record queues behind, so
//! requests for one record are served in order and never retried on their
//! own), lets go, and the helper releases the lock.
//!
//! At most `LockProcessesPerDB` helpers wait per database; further chains
//! wait for a free helper in arrival order.
//!
//! With fcntl locks a helper's lock is the process's lock (the adopting
//! handle's release is the real one). A chain a helper got while the
//! handle was away (frozen, or in a persistent update) is released when
//! the handle comes home.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc as smpsc;

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use super::file::Db;
use super::{Databases, DbEvent, Env, Work};

/// Work waiting for its record's chain: the key, the work, and when it
/// started waiting (the lock statistics).
type Queued = (Vec<u8>, Work, std::time::Instant);

/// A helper waiting for (or holding) one chain.
struct Helper {
    id: u64,
    /// Dropping it tells the helper to let go.
    _release: smpsc::Sender<()>,
}

/// One database's lock waits.
pub struct LockWaits {
    ev: Option<mpsc::UnboundedSender<DbEvent>>,
    waiter: Option<tdb::ChainWaiter>,
    /// Work waiting for a chain, by chain, in arrival order.
    queues: HashMap<u32, VecDeque<Queued>>,
    /// Keys with queued work (later work for them queues behind it).
    keys: HashMap<Vec<u8>, u32>,
    /// Chains a helper waits for or holds.
    helpers: HashMap<u32, Helper>,
    /// Chains waiting for a free helper, in arrival order.
    pending: VecDeque<u32>,
    /// Chains a helper got (fcntl: the process holds them) while the
    /// handle was away.
    orphans: Vec<u32>,
    /// `LockProcessesPerDB`.
    pub cap: usize,
    next_id: u64,
    /// The (pending, current) lock requests last put in the statistics.
    reported: (u32, u32),
    /// What the counts last put in the statistics were made from: whether
    /// queues or helpers changed since, the freeze that was waiting for
    /// its locks, and `cap`. The statistics are brought up to date after
    /// every step of the database layer; a database whose lock waits did
    /// not change costs that step nothing but this comparison.
    dirty: bool,
    seen: (bool, usize),
}

impl Default for LockWaits {
    fn default() -> LockWaits {
        LockWaits::new()
    }
}

impl LockWaits {
    pub fn new() -> LockWaits {
        LockWaits {
            ev: None,
            waiter: None,
            queues: HashMap::new(),
            keys: HashMap::new(),
            helpers: HashMap::new(),
            pending: VecDeque::new(),
            orphans: Vec::new(),
            cap: 200,
            next_id: 1,
            reported: (0, 0),
            dirty: false,
            seen: (false, 200),
        }
    }

    /// Lock requests (queued work) as CTDB counts its lock contexts:
    /// `(pending, current)`. A request is current while a helper waits for
    /// its chain, at most `cap` of them (CTDB runs a child per request, at
    /// most `LockProcessesPerDB`); the others are pending.
    pub fn counts(&self) -> (u32, u32) {
        let (mut helped, mut waiting) = (0usize, 0usize);
        for (b, q) in &self.queues {
            if self.helpers.contains_key(b) {
                helped += q.len();
            } else {
                waiting += q.len();
            }
        }
        let current = helped.min(self.cap.max(1));
        let pending = waiting + helped - current;
        (
            u32::try_from(pending).unwrap_or(u32::MAX),
            u32::try_from(current).unwrap_or(u32::MAX),
        )
    }

    /// Whether work on `key` is waiting for its lock.
    pub fn waiting_on(&self, key: &[u8]) -> bool {
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    /// Number of helpers waiting or holding.
    pub fn helpers(&self) -> usize {
        self.helpers.len()
    }

    /// The id of the helper that waits for chain `bucket` (tests feed its
    /// report by hand).
    #[cfg(test)]
    pub fn helper_id(&self, bucket: u32) -> Option<u64> {
        self.helpers.get(&bucket).map(|h| h.id)
    }

    /// Takes chain `bucket`'s queued work, in order.
    fn take(&mut self, bucket: u32) -> VecDeque<Queued> {
        let q = self.queues.remove(&bucket).unwrap_or_default();
        self.dirty |= !q.is_empty();
        for (k, _, _) in &q {
            if let Some(n) = self.keys.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.keys.remove(k);
                }
            }
        }
        q
    }

    /// Starts a helper for `bucket`, or queues the chain for one.
    fn want(&mut self, db: u32, tdb: &tdb::Tdb, bucket: u32) {
        if self.helpers.contains_key(&bucket) || self.pending.contains(&bucket) {
            return;
        }
        if self.helpers.len() >= self.cap.max(1) {
            self.pending.push_back(bucket);
            return;
        }
        self.start(db, Some(tdb), bucket);
    }

    fn start(&mut self, db: u32, tdb: Option<&tdb::Tdb>, bucket: u32) {
        if self.waiter.is_none()
            && let Some(t) = tdb
        {
            match t.chain_waiter() {
                Ok(w) => self.waiter = Some(w),
                Err(e) => error!("db 0x{db:08x}: cannot wait for record locks: {e}"),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = smpsc::channel::<()>();
        let Some(ev) = self.ev.clone() else {
            return;
        };
        let waiter = self.waiter.clone();
        let ev2 = ev.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lockwait-{db:08x}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let Some(waiter) = waiter else {
                    let _ = ev.send(DbEvent::LockHeld {
                        db,
                        bucket,
                        id,
                        result: Err("no lock waiter".into()),
                    });
                    return;
                };
                match waiter.lock(bucket) {
                    Ok(held) => {
                        let _ = ev.send(DbEvent::LockHeld {
                            db,
                            bucket,
                            id,
                            result: Ok(()),
                        });
                        // Until the loop is done with the chain (or gone).
                        let _ = rx.recv();
                        drop(held);
                    }
                    Err(e) => {
                        let _ = ev.send(DbEvent::LockHeld {
                            db,
                            bucket,
                            id,
                            result: Err(e.to_string()),
                        });
                    }
                }
            });
        match spawned {
            Ok(_) => {
                self.helpers.insert(bucket, Helper { id, _release: tx });
                self.dirty = true;
            }
            Err(e) => {
                // Reported like a failed wait: the work is retried.
                error!("cannot start a lock helper: {e}");
                let _ = ev2.send(DbEvent::LockHeld {
                    db,
                    bucket,
                    id,
                    result: Err(e.to_string()),
                });
                self.helpers.insert(bucket, Helper { id, _release: tx });
                self.dirty = true;
            }
        }
    }

    /// Starts helpers for chains that waited for one.
    fn start_pending(&mut self, db: u32, tdb: Option<&tdb::Tdb>) {
        while self.helpers.len() < self.cap.max(1) {
            let Some(b) = self.pending.pop_front() else {
                break;
            };
            if self.queues.contains_key(&b) {
                self.start(db, tdb, b);
            }
        }
    }
}

impl Db {
    /// Whether work on `key` is already waiting for a lock.
    pub fn waiting_on(&self, key: &[u8]) -> bool {
        self.locks.waiting_on(key)
    }

    /// Whether record locks are robust mutexes.
    pub fn uses_mutexes(&self) -> bool {
        self.tdb_flags & tdb::flags::MUTEX_LOCKING != 0
    }

    /// Queues work that found its record locked (or queued behind work
    /// that did), and makes sure a helper waits for the record's chain;
    /// it reports on `ev`.
    pub fn wait_for_lock(&mut self, key: Vec<u8>, w: Work, ev: &mpsc::UnboundedSender<DbEvent>) {
        let Some(tdb) = self.tdb.as_ref() else {
            self.deferred.push_back(w);
            return;
        };
        let bucket = tdb.bucket_of(&key);
        let l = &mut self.locks;
        if l.ev.is_none() {
            l.ev = Some(ev.clone());
        }
        *l.keys.entry(key.clone()).or_default() += 1;
        l.dirty = true;
        l.queues
            .entry(bucket)
            .or_default()
            .push_back((key, w, std::time::Instant::now()));
        l.want(self.id, tdb, bucket);
    }

    /// The handle is back: chains helpers got meanwhile are released (with
    /// fcntl locks they are the process's), and chains whose queued work
    /// lost its helper get one.
    pub fn lock_waits_home(&mut self) {
        let Some(tdb) = self.tdb.as_ref() else {
            return;
        };
        for b in std::mem::take(&mut self.locks.orphans) {
            if tdb.adopt_chain(b).is_ok() {
                let _ = tdb.release_adopted(b);
            }
        }
        let waiting: Vec<u32> = self.locks.queues.keys().copied().collect();
        for b in waiting {
            self.locks.want(self.id, tdb, b);
        }
    }
}

impl Databases {
    /// Puts the lock requests waiting now into the statistics (CTDB's
    /// `locks.num_pending` and `locks.num_current`, daemon-wide and per
    /// database); a database freeze waiting for its locks is one current
    /// request, as CTDB's database lock. Called with the effects of every
    /// step, so a `STATISTICS` answer sees them.
    pub(crate) fn lock_counts_flush(&mut self) {
        let mut changed = false;
        for db in self.dbs.values_mut() {
            let freezing = matches!(db.freeze, super::recovery::Freeze::Pending(_));
            let seen = (freezing, db.locks.cap);
            if !db.locks.dirty && db.locks.seen == seen {
                continue;
            }
            db.locks.dirty = false;
            db.locks.seen = seen;
            let (p, mut c) = db.locks.counts();
            if freezing {
                c += 1;
            }
            if (p, c) != db.locks.reported {
                db.locks.reported = (p, c);
                db.stats.locks.num_pending = p;
                db.stats.locks.num_current = c;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let (p, c) = self.dbs.values().fold((0u32, 0u32), |(p, c), d| {
            (
                p.saturating_add(d.locks.reported.0),
                c.saturating_add(d.locks.reported.1),
            )
        });
        self.stats.bump(|s| {
            s.locks.num_pending = p;
            s.locks.num_current = c;
        });
    }

    /// A helper holds chain `bucket` of database `id` (or failed).
    pub(crate) fn lock_held(
        &mut self,
        env: &Env,
        id: u32,
        bucket: u32,
        helper: u64,
        result: Result<(), String>,
    ) {
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        // Dropping the helper's entry (at the end of this function) lets it
        // release the chain.
        let helper_entry = match db.locks.helpers.remove(&bucket) {
            Some(h) if h.id == helper => {
                db.locks.dirty = true;
                h
            }
            Some(h) => {
                db.locks.helpers.insert(bucket, h);
                return;
            }
            None => return,
        };
        if let Err(e) = result {
            warn!("{}: waiting for a record lock failed: {e}", db.name);
            let work = db.locks.take(bucket);
            lock_stats(&self.stats, &mut db.stats, &work, false);
            self.ready.extend(work.into_iter().map(|(_, w, _)| (id, w)));
            drop(helper_entry);
            if let Some(db) = self.dbs.get_mut(&id) {
                let tdb = db.tdb.as_ref();
                db.locks.start_pending(id, tdb);
            }
            return;
        }
        let Some(tdb) = db.tdb.as_ref() else {
            // The handle is away: the work waits for it, in order.
            if !db.uses_mutexes() {
                db.locks.orphans.push(bucket);
            }
            let work = db.locks.take(bucket);
            lock_stats(&self.stats, &mut db.stats, &work, true);
            db.deferred.extend(work.into_iter().map(|(_, w, _)| w));
            drop(helper_entry);
            db.locks.start_pending(id, None);
            return;
        };
        match tdb.adopt_chain(bucket) {
            Ok(()) => {}
            Err(tdb::Error::WouldBlock) => {
                // fcntl: released and taken by another process meanwhile.
                debug!("{}: chain {bucket} taken again, waiting again", db.name);
                drop(helper_entry);
                db.locks.start(id, db.tdb.as_ref(), bucket);
                return;
            }
            Err(e) => {
                error!("{}: cannot adopt chain {bucket}: {e}", db.name);
                let work = db.locks.take(bucket);
                lock_stats(&self.stats, &mut db.stats, &work, false);
                drop(helper_entry);
                db.locks.start_pending(id, db.tdb.as_ref());
                self.ready.extend(work.into_iter().map(|(_, w, _)| (id, w)));
                return;
            }
        }
        let work = db.locks.take(bucket);
        lock_stats(&self.stats, &mut db.stats, &work, true);
        let mut work = work.into_iter();
        for (_, w, _) in work.by_ref() {
            self.run_work(env, id, w);
            if self.dbs.get(&id).is_none_or(|d| d.tdb.is_none()) {
                break;
            }
        }
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        db.deferred.extend(work.map(|(_, w, _)| w));
        if let Some(tdb) = db.tdb.as_ref()
            && let Err(e) = tdb.release_adopted(bucket)
        {
            error!("{}: releasing chain {bucket}: {e}", db.name);
        }
        drop(helper_entry);
        let tdb = db.tdb.as_ref();
        db.locks.start_pending(id, tdb);
    }
}

/// Counts the requests that waited for a chain as CTDB counts its lock
/// requests: one call each, with the time it waited (or a failure).
fn lock_stats(
    stats: &crate::stats::StatsHandle,
    db: &mut ctdb_protocol::types::DbStatistics,
    work: &VecDeque<Queued>,
    locked: bool,
) {
    for (_, _, since) in work {
        stats.lock_done(db, since.elapsed(), locked);
    }
}
