//! Vacuuming: deleting, on every node, the records clients deleted, as
//! CTDB 4.17 does it.
//!
//! A client deletes a record by storing it empty (just the header) in its
//! local copy and telling its daemon with `SCHEDULE_FOR_DELETION`; the
//! record then sits in the database's *delete queue* ([`DbVac`]). Every
//! `VacuumInterval` seconds each volatile database gets a vacuum run (one
//! run at a time across databases; a database whose turn comes while
//! another runs tries again 0.5 s later). Every `VacuumFastPathCount`-th
//! run is a *full* run, which first traverses the whole file (in the
//! traverse helper process) for empty records this node is data master
//! of, as if each had been queued.
//!
//! A run, in CTDB's order:
//! 1. the *fetch queue* (keys other nodes sent with `VACUUM_FETCH`,
//!    because this node is their lmaster): each record still mastered
//!    elsewhere is migrated here with a `VACUUM_MIGRATION` call; a record
//!    that was never migrated with data is deleted on arrival, any other
//!    comes home empty and is queued for deletion (next run);
//! 2. the delete queue: a record still empty, still mastered here and with
//!    the rsn it was queued with is sent to its lmaster's `VACUUM_FETCH`
//!    list when this node is not the lmaster, deleted at once when it is
//!    and the record never left with data, and put on the *delete list*
//!    otherwise;
//! 3. the `VACUUM_FETCH` lists go to their lmasters;
//! 4. the delete list goes to every other active node as
//!    `TRY_DELETE_RECORDS` ([`super::vacuum_remote`]); each deletes its
//!    copy unless it holds a newer one (higher rsn, or it is data master)
//!    and answers with the records it kept;
//! 5. records every node deleted are deleted here, under the record lock
//!    (waited for through [`super::lockwait`]), if still empty, mastered
//!    here and at the same rsn: a record re-created meanwhile is kept;
//! 6. the handle goes to a worker thread, which repacks the file when its
//!    freelist has `RepackLimit` entries or more.
//!
//! Nothing here blocks the event loop: record locks are only tried (a
//! busy record of the delete queue stays queued for the next run, where
//! CTDB's vacuuming child drops it and leaves it to a full run), records
//! are handled at most [`BATCH`] per step, and the run is given up after
//! `VacuumMaxRunTime` seconds, or when recovery starts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ctdb_protocol::types::{LtdbHeader, RecBuffer};
use ctdb_protocol::{ControlReply, ReplyControl};
use tracing::{debug, error};

use super::{Databases, DbEvent, Env, ltdb};
use crate::messaging::ClientId;

#[path = "vacuum_run.rs"]
mod run;
use crate::server::ReplyTo;

/// The client id vacuum migrations are made under (never a real client's:
/// those count up from 1). Their replies are taken out of the effects.
pub const VACUUM_CLIENT: ClientId = u32::MAX;

/// Records handled per step, in each phase.
pub const BATCH: usize = 1000;

/// A record queued for deletion: its key and the header it had.
#[derive(Debug, Clone)]
pub struct Queued {
    pub key: Vec<u8>,
    pub hdr: LtdbHeader,
}

/// One volatile database's vacuuming state.
#[derive(Debug, Default)]
pub struct DbVac {
    /// Records scheduled for deletion, by key hash (a colliding key is
    /// not queued, as in CTDB).
    pub delete_queue: HashMap<u32, Queued>,
    /// Keys other nodes want vacuumed here (`VACUUM_FETCH`), by key hash.
    pub fetch_queue: HashMap<u32, Vec<u8>>,
    /// Runs since the last full run.
    pub fast_path_count: u32,
    /// `VacuumInterval` when the timer was set.
    interval: u32,
    /// When the next run is due (`None` while one runs for the timer).
    due: Option<Instant>,
}

impl DbVac {
    /// Queues a record for deletion (a newer header for the same key
    /// replaces the old one).
    pub fn schedule(&mut self, key: &[u8], hdr: LtdbHeader) {
        let h = ltdb::key_hash(key);
        match self.delete_queue.get(&h) {
            Some(q) if q.key != key => {
                debug!("schedule for deletion: hash collision for key hash 0x{h:08x}, skipped");
            }
            _ => {
                self.delete_queue.insert(
                    h,
                    Queued {
                        key: key.to_vec(),
                        hdr,
                    },
                );
            }
        }
    }

    /// Puts back a record a run could not look at (its lock was busy), for
    /// the next run; a hint that came for the key meanwhile is newer and
    /// stays.
    pub fn requeue(&mut self, q: Queued) {
        self.delete_queue.entry(ltdb::key_hash(&q.key)).or_insert(q);
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Full run: waiting for the traverse helper's empty records.
    Traverse,
    /// Sending vacuum migrations for the fetch queue.
    Fetch,
    /// Waiting for them.
    FetchWait,
    /// Working through the delete queue.
    DeleteQueue,
    /// Sending the `VACUUM_FETCH` lists and waiting for the answers.
    FetchLists,
    /// Sending `TRY_DELETE_RECORDS` and waiting for the answers.
    TryDelete,
    /// Deleting what every node deleted.
    DeleteLocal,
    /// The handle is with the repack thread.
    Repack,
}

/// A delete-list entry.
#[derive(Debug, Clone)]
struct DelRec {
    key: Vec<u8>,
    hdr: LtdbHeader,
    remote_fail: u32,
}

/// What a run counted (logged at its end, as CTDB's statistics lines).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub traversed: u32,
    pub fetched: u32,
    pub queue_total: u32,
    pub queue_deleted: u32,
    pub queue_skipped: u32,
    pub queue_error: u32,
    pub to_delete_list: u32,
    pub to_fetch_list: u32,
    pub list_deleted: u32,
    pub list_skipped: u32,
    pub list_remote_error: u32,
    pub repacked: bool,
}

/// The vacuum run in progress (CTDB's vacuuming child).
struct Run {
    id: u64,
    db: u32,
    name: String,
    full: bool,
    scheduled: bool,
    started: Instant,
    deadline: Instant,
    /// A `DB_VACUUM` waiting for the run.
    control: Option<ReplyTo>,
    phase: Phase,
    /// This run's copy of the delete queue (plus what the traverse found).
    queue_map: HashMap<u32, Queued>,
    queue: Vec<Queued>,
    fetch: Vec<Vec<u8>>,
    pos: usize,
    /// Vacuum migrations in flight: request id to key.
    calls: HashMap<u32, Vec<u8>>,
    fetch_lists: BTreeMap<u32, RecBuffer>,
    delete_list: BTreeMap<u32, DelRec>,
    delete_order: Vec<u32>,
    /// Controls (by tag) or lock waits still to come back.
    tags: HashMap<u64, u32>,
    lock_waits: usize,
    /// A node failed `TRY_DELETE_RECORDS`: nothing is deleted here.
    abandon: bool,
    traverse: Option<tokio::task::JoinHandle<()>>,
    count: Counts,
}

/// Background vacuuming work reporting back.
pub enum VacEvent {
    /// Empty records this node masters, from a full run's traverse.
    Traversed {
        run: u64,
        recs: Vec<Queued>,
        end: Option<bool>,
    },
    /// The repack thread gives the handle back.
    Repacked {
        run: u64,
        db: u32,
        tdb: Box<tdb::Tdb>,
        result: Result<Option<usize>, String>,
    },
}

impl std::fmt::Debug for VacEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VacEvent::Traversed { run, recs, end } => {
                write!(f, "Traversed({run}, {} records, {end:?})", recs.len())
            }
            VacEvent::Repacked { run, db, .. } => write!(f, "Repacked({run}, 0x{db:08x})"),
        }
    }
}

/// A `TRY_DELETE_RECORDS` being worked through.
pub struct TryDelete {
    pub db: u32,
    pub records: RecBuffer,
    pub pos: usize,
    pub failed: RecBuffer,
    pub to: ReplyTo,
}

/// The layer's vacuuming state.
#[derive(Default)]
pub struct Vacuum {
    pub dbs: HashMap<u32, DbVac>,
    run: Option<Run>,
    next_run: u64,
    next_reqid: u32,
    pub(crate) try_deletes: VecDeque<TryDelete>,
    /// A run moved on and wants the next step soon.
    pub(crate) kick: bool,
}

impl Vacuum {
    /// Whether a run is in progress.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// The database the current run is for.
    pub fn running_db(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.db)
    }
}

/// Why a run could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    /// Recovery is running or the database is frozen.
    Again,
    /// Another run is in progress.
    Busy,
}

fn interval_of(env: &Env) -> u32 {
    env.tunables.vacuum_interval
}

fn secs(n: u32) -> Duration {
    // An interval of 0 would spin: once a second at most.
    Duration::from_secs(u64::from(n.max(1)))
}

impl Databases {
    /// When vacuuming next wants [`Databases::tick`].
    pub(crate) fn vacuum_wakeup(&self) -> Option<Instant> {
        let v = &self.vacuum;
        let try_ready = v
            .try_deletes
            .front()
            .is_some_and(|t| self.dbs.get(&t.db).is_none_or(|d| d.tdb.is_some()));
        if v.kick || try_ready {
            return Some(Instant::now());
        }
        let due = v.dbs.values().filter_map(|d| d.due).min();
        // A repack is not timed (its thread cannot be stopped): past the
        // deadline, a wakeup at that instant would spin the loop until the
        // thread reports.
        let run = v
            .run
            .as_ref()
            .filter(|r| r.phase != Phase::Repack)
            .map(|r| r.deadline);
        due.into_iter().chain(run).min()
    }

    /// Timers and the next batch of work.
    pub(crate) fn vacuum_tick(&mut self, env: &Env, now: Instant) {
        self.vacuum.kick = false;
        self.vacuum_timers(env, now);
        self.try_delete_step(env);
        self.vacuum_step(env, now);
    }

    /// Starts the runs that are due.
    fn vacuum_timers(&mut self, env: &Env, now: Instant) {
        // Volatile databases get a timer when first seen; detached ones
        // lose their state.
        let interval = interval_of(env);
        let running = self.vacuum.running_db();
        for (id, db) in &self.dbs {
            if !db.volatile() {
                continue;
            }
            // Also a database whose queue a control filled before its
            // timer was set.
            let v = self.vacuum.dbs.entry(*id).or_default();
            if v.due.is_none() && running != Some(*id) {
                v.interval = interval;
                v.due = Some(now + secs(interval));
            }
        }
        let dbs = &self.dbs;
        self.vacuum.dbs.retain(|id, _| dbs.contains_key(id));
        let mut due: Vec<(Instant, u32)> = self
            .vacuum
            .dbs
            .iter()
            .filter_map(|(id, v)| v.due.filter(|d| *d <= now).map(|d| (d, *id)))
            .collect();
        due.sort();
        let fast_max = env.tunables.vacuum_fast_path_count;
        for (_, id) in due {
            let Some(v) = self.vacuum.dbs.get_mut(&id) else {
                continue;
            };
            if interval > v.interval {
                // Raised: the rest of the new interval first.
                let d = interval - v.interval;
                debug!(
                    "Vacuum interval increased from {} to {interval}, rescheduling",
                    v.interval
                );
                v.interval = interval;
                v.due = Some(now + Duration::from_secs(u64::from(d)));
                continue;
            }
            v.interval = interval;
            let mut full = false;
            if v.fast_path_count >= fast_max {
                full = fast_max > 0;
                v.fast_path_count = 0;
            }
            match self.vacuum_start(env, id, full, true, None) {
                Ok(()) => {
                    if let Some(v) = self.vacuum.dbs.get_mut(&id) {
                        v.due = None;
                    }
                }
                Err(StartError::Busy) => {
                    if let Some(v) = self.vacuum.dbs.get_mut(&id) {
                        v.due = Some(now + Duration::from_millis(500));
                    }
                }
                Err(StartError::Again) => {
                    if let Some(v) = self.vacuum.dbs.get_mut(&id) {
                        v.due = Some(now + secs(interval));
                    }
                }
            }
        }
    }

    /// Starts a vacuum run of database `id` (a scheduled one, or one a
    /// `DB_VACUUM` control asked for, answered at its end).
    pub(crate) fn vacuum_start(
        &mut self,
        env: &Env,
        id: u32,
        full: bool,
        scheduled: bool,
        control: Option<ReplyTo>,
    ) -> Result<(), StartError> {
        let Some(db) = self.dbs.get(&id) else {
            return Err(StartError::Again);
        };
        if env.node.in_recovery() || !db.allow_access() || db.txn.is_some() {
            debug!(
                "Not vacuuming {} ({})",
                db.name,
                if env.node.in_recovery() {
                    "in recovery"
                } else {
                    "frozen"
                }
            );
            return Err(StartError::Again);
        }
        if self.vacuum.run.is_some() {
            return Err(StartError::Busy);
        }
        let name = db.name.clone();
        let path = db.path.clone();
        let flags = db.tdb_flags;
        let v = self.vacuum.dbs.entry(id).or_default();
        // The run takes the queues; new deletions queue for the next one.
        let queue_map = std::mem::take(&mut v.delete_queue);
        let fetch: Vec<Vec<u8>> = std::mem::take(&mut v.fetch_queue).into_values().collect();
        self.vacuum.next_run += 1;
        let run_id = self.vacuum.next_run;
        let now = Instant::now();
        debug!(
            "Vacuuming child process for db {name} started ({} run)",
            if full { "full" } else { "fast" }
        );
        let mut run = Run {
            id: run_id,
            db: id,
            name,
            full,
            scheduled,
            started: now,
            deadline: now + Duration::from_secs(u64::from(env.tunables.vacuum_max_run_time)),
            control,
            phase: Phase::Fetch,
            queue_map,
            queue: Vec::new(),
            fetch,
            pos: 0,
            calls: HashMap::new(),
            fetch_lists: BTreeMap::new(),
            delete_list: BTreeMap::new(),
            delete_order: Vec::new(),
            tags: HashMap::new(),
            lock_waits: 0,
            abandon: false,
            traverse: None,
            count: Counts::default(),
        };
        if full {
            run.phase = Phase::Traverse;
            run.traverse = Some(self.vacuum_traverse(env, run_id, &path, flags));
        }
        self.vacuum.run = Some(run);
        self.vacuum.kick = true;
        Ok(())
    }

    /// Runs the traverse helper over this node's copy for a full run;
    /// only empty records this node masters come back.
    fn vacuum_traverse(
        &self,
        env: &Env,
        run: u64,
        path: &std::path::Path,
        flags: u32,
    ) -> tokio::task::JoinHandle<()> {
        let exe = self.cfg.traverse_helper.clone();
        let args = vec![
            super::traverse::HELPER_ARG.to_owned(),
            path.display().to_string(),
            (flags & !tdb::flags::CLEAR_IF_FIRST).to_string(),
            env.pnn().to_string(),
            "1".to_owned(),
            "1".to_owned(),
        ];
        let ev = self.ev_tx.clone();
        tokio::spawn(async move {
            let ok = super::vacuum_remote::traverse_empty(run, &exe, &args, &ev).await;
            let _ = ev.send(DbEvent::Vacuum(VacEvent::Traversed {
                run,
                recs: Vec::new(),
                end: Some(ok),
            }));
        })
    }

    /// Background vacuuming work reported back.
    pub(crate) fn vacuum_event(&mut self, env: &Env, ev: VacEvent) {
        match ev {
            VacEvent::Traversed { run, recs, end } => {
                let Some(r) = self.vacuum.run.as_mut().filter(|r| r.id == run) else {
                    return;
                };
                r.count.traversed += recs.len() as u32;
                for q in recs {
                    let h = ltdb::key_hash(&q.key);
                    match r.queue_map.get(&h) {
                        Some(old) if old.key != q.key => {}
                        _ => {
                            r.queue_map.insert(h, q);
                        }
                    }
                }
                if let Some(ok) = end {
                    if !ok {
                        error!("Traverse error in vacuuming '{}'", r.name);
                    }
                    r.traverse = None;
                    r.phase = Phase::Fetch;
                    self.vacuum.kick = true;
                }
            }
            VacEvent::Repacked {
                run,
                db,
                tdb,
                result,
            } => {
                self.handle_returned(env, db, *tdb);
                let Some(r) = self.vacuum.run.as_mut().filter(|r| r.id == run) else {
                    return;
                };
                match result {
                    Ok(Some(n)) => {
                        debug!("Repacked {} with {n} freelist entries", r.name);
                        r.count.repacked = true;
                    }
                    Ok(None) => {}
                    Err(e) => error!("Failed to repack '{}': {e}", r.name),
                }
                self.vacuum_finish(env, false);
            }
        }
    }

    /// Does the next piece of the run.
    fn vacuum_step(&mut self, env: &Env, now: Instant) {
        let Some(mut run) = self.vacuum.run.take() else {
            return;
        };
        let db_ok = self
            .dbs
            .get(&run.db)
            .is_some_and(|d| d.allow_access() && d.txn.is_none());
        if run.phase != Phase::Repack && (env.node.in_recovery() || !db_ok) {
            debug!("Aborting vacuuming for {} (recovery)", run.name);
            self.vacuum.run = Some(run);
            self.vacuum_finish(env, true);
            return;
        }
        if run.phase != Phase::Repack && now >= run.deadline {
            error!("Vacuuming child process timed out for db {}", run.name);
            self.vacuum.run = Some(run);
            self.vacuum_finish(env, true);
            return;
        }
        let mut budget = BATCH;
        loop {
            let before = run.phase;
            match run.phase {
                Phase::Traverse | Phase::Repack => break,
                Phase::Fetch => self.vacuum_fetch_batch(env, &mut run, &mut budget),
                Phase::FetchWait => {
                    if run.calls.is_empty() {
                        run.phase = Phase::DeleteQueue;
                        run.queue = std::mem::take(&mut run.queue_map).into_values().collect();
                        run.pos = 0;
                    }
                }
                Phase::DeleteQueue => self.vacuum_queue_batch(env, &mut run, &mut budget),
                Phase::FetchLists => {
                    if run.tags.is_empty() {
                        if !run.fetch_lists.is_empty() {
                            self.vacuum_send_fetch_lists(&mut run);
                        }
                        if run.tags.is_empty() {
                            self.vacuum_send_try_delete(env, &mut run);
                        }
                    }
                }
                Phase::TryDelete => {
                    if run.tags.is_empty() {
                        run.phase = if run.abandon {
                            Phase::Repack
                        } else {
                            Phase::DeleteLocal
                        };
                        run.pos = 0;
                        if run.phase == Phase::Repack {
                            self.vacuum.run = Some(run);
                            self.vacuum_repack(env);
                            return;
                        }
                    }
                }
                Phase::DeleteLocal => {
                    self.vacuum_delete_batch(env, &mut run, &mut budget);
                    if run.phase == Phase::Repack {
                        self.vacuum.run = Some(run);
                        self.vacuum_repack(env);
                        return;
                    }
                }
            }
            if budget == 0 {
                // More to do at once, after whatever else is waiting.
                self.vacuum.kick = true;
                break;
            }
            if run.phase == before {
                break;
            }
        }
        self.vacuum.run = Some(run);
    }

    /// Ends the run (CTDB's child destructor): latency, the next timer,
    /// the `DB_VACUUM` reply.
    pub(super) fn vacuum_finish(&mut self, env: &Env, killed: bool) {
        let Some(run) = self.vacuum.run.take() else {
            return;
        };
        if let Some(t) = &run.traverse {
            t.abort();
        }
        if !run.calls.is_empty() {
            self.calls_client_gone(VACUUM_CLIENT);
        }
        let took = run.started.elapsed().as_secs_f64();
        let c = run.count;
        debug!(
            "Vacuuming took {took:.3} seconds for database {} ({} run: fetched {} delete queue total {} deleted {} skipped {} errors {} to delete list {} to fetch lists {}; delete list deleted {} skipped {} remote errors {}{})",
            run.name,
            if run.full { "full" } else { "fast" },
            c.fetched,
            c.queue_total,
            c.queue_deleted,
            c.queue_skipped,
            c.queue_error,
            c.to_delete_list,
            c.to_fetch_list,
            c.list_deleted,
            c.list_skipped,
            c.list_remote_error,
            if c.repacked { "; repacked" } else { "" }
        );
        if let Some(db) = self.dbs.get_mut(&run.db) {
            db.stats.vacuum_latency.record(took);
        }
        if let Some(v) = self.vacuum.dbs.get_mut(&run.db) {
            if !killed {
                v.fast_path_count += 1;
            }
            if run.scheduled {
                v.interval = interval_of(env);
                v.due = Some(Instant::now() + secs(v.interval));
            }
        }
        if let Some(to) = run.control {
            self.reply(
                to,
                if killed {
                    ReplyControl::status(-1)
                } else {
                    ReplyControl::ok(ControlReply::DbVacuum)
                },
            );
        }
    }
}
