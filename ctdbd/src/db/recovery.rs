//! The database side of recovery: freezing, pulling, wiping, pushing,
//! committing, thawing.
//!
//! Freezing a database starts a *freeze session*: a thread that takes the
//! database handle and locks all its records, trying without blocking
//! until it succeeds or the freeze times out (a client holding a record
//! lock delays a freeze, it cannot hang the daemon, and a freeze that
//! cannot get its locks fails with a clear reason instead of leaving the
//! recovery waiting forever). While frozen, the session serves the
//! recovery controls in order: `DB_PULL` (records streamed as messages in
//! chunks of `RecBufferSizeLimit`), `DB_TRANSACTION_START`,
//! `WIPE_DATABASE`, `DB_PUSH_START` / pushed record messages /
//! `DB_PUSH_CONFIRM`, `DB_TRANSACTION_COMMIT`, `GET_DB_SEQNUM`. `DB_THAW`
//! ends the session and the handle comes home.
//!
//! A persistent (or replicated) database's recovery transaction is a tdb
//! transaction: the session swaps its all-record lock for the
//! transaction's (only the daemon writes these databases), so the wipe and
//! the pushed records reach the file atomically and durably at commit, or
//! not at all. A volatile database keeps its all-record lock; its
//! transaction is kept in memory and applied under that lock at commit,
//! with CTDB's store rules (volatile files are wiped at start anyway).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc as smpsc;
use std::time::{Duration, Instant};

use ctdb_protocol::header::INVALID_GENERATION;
use ctdb_protocol::types::{PullDbExt, TransDb, VnnMap};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{error, warn};

use super::{Databases, Env, Work};
use crate::control::ControlCtx;
use crate::server::ReplyTo;

mod session;

pub use session::Sent;
use session::{install_wakeup_signal, interrupt, session};

/// A database's freeze state.
#[derive(Debug, Default)]
pub enum Freeze {
    #[default]
    None,
    /// The session is trying to lock the records.
    Pending(smpsc::Sender<Cmd>),
    Frozen(smpsc::Sender<Cmd>),
}

/// What the node needs to know to store recovered volatile records.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub pnn: u32,
    pub vnnmap: VnnMap,
}

/// A request to a freeze session.
#[derive(Debug)]
pub enum Cmd {
    Pull {
        tag: u64,
        dest: u32,
        srvid: u64,
        limit: usize,
        invalid: bool,
    },
    Seqnum {
        tag: u64,
    },
    TxStart {
        tag: u64,
    },
    TxCancel,
    Wipe {
        tag: u64,
    },
    PushStart,
    Push {
        data: Vec<u8>,
        info: StoreInfo,
    },
    PushConfirm {
        tag: u64,
    },
    Commit {
        tag: u64,
        tid: u32,
        info: StoreInfo,
    },
    Thaw,
}

/// `FREEZE` (all databases) in progress.
#[derive(Debug, Default)]
struct FreezeAll {
    tags: Vec<u64>,
    waiting: HashSet<u32>,
    failed: bool,
}

/// A freeze session still waiting for its locks.
#[derive(Debug)]
struct Freezing {
    /// When it gives up (moved to now by a thaw).
    deadline: Instant,
    /// Its thread, to interrupt a wait in `fcntl` at the deadline.
    thread: std::thread::JoinHandle<()>,
}

/// How often a freeze past its deadline is interrupted again until it
/// reports (a signal can arrive just before the thread starts waiting).
const FREEZE_NUDGE: Duration = Duration::from_millis(20);

/// Recovery bookkeeping across databases.
#[derive(Debug, Default)]
pub struct RecoveryState {
    /// Freeze sessions waiting for their locks, by database.
    freezing: HashMap<u32, Freezing>,
    /// Tags of `DB_FREEZE` controls waiting, by database.
    waiters: HashMap<u32, Vec<u64>>,
    all: Option<FreezeAll>,
    /// `FREEZE` froze everything (this node went inactive).
    frozen_all: bool,
    /// Push srvids, to their database.
    pushes: HashMap<u64, u32>,
}

impl Databases {
    fn freeze_timeout(env: &Env) -> Duration {
        Duration::from_secs(u64::from((env.tunables.recover_timeout / 3).max(1)))
    }

    /// Sends a request to database `id`'s session.
    fn session_send(&mut self, id: u32, cmd: Cmd) -> bool {
        let Some(db) = self.dbs.get(&id) else {
            return false;
        };
        match &db.freeze {
            Freeze::Frozen(tx) | Freeze::Pending(tx) => tx.send(cmd).is_ok(),
            Freeze::None => false,
        }
    }

    pub(crate) fn session_seqnum(&mut self, id: u32, to: ReplyTo) -> Option<ReplyControl> {
        let tag = self.park(to);
        if !self.session_send(id, Cmd::Seqnum { tag }) {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    fn parked_fail(&mut self, tag: u64, why: &str) {
        self.complete(tag, ReplyControl::error(-1, why));
    }

    /// Starts freezing database `id` (its handle must be here).
    fn start_freeze(&mut self, env: &Env, id: u32) {
        let timeout = Self::freeze_timeout(env);
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        let Some(tdb) = db.tdb.take() else {
            return;
        };
        error!("Freeze db: {}", db.name);
        let (tx, rx) = smpsc::channel();
        let ev = self.ev_tx.clone();
        let volatile = db.volatile();
        let keyed = db.flags & ctdb_protocol::types::db_flags::KEYED != 0;
        let name = db.name.clone();
        let log = super::changelog::RecoveryTx::new(db.changelog.clone());
        db.freeze = Freeze::Pending(tx);
        let deadline = Instant::now() + timeout;
        install_wakeup_signal();
        let spawned = std::thread::Builder::new()
            .name(format!("freeze-{id:08x}"))
            .spawn(move || session(id, name, tdb, (volatile, keyed), rx, ev, deadline, log));
        match spawned {
            Ok(thread) => {
                self.recovery
                    .freezing
                    .insert(id, Freezing { deadline, thread });
            }
            // The handle went with the closure; it cannot come back.
            Err(e) => error!("cannot start a freeze session: {e}"),
        }
    }

    pub(crate) fn db_freeze(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        id: u32,
    ) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Freeze db for unknown dbid 0x{id:08x}");
            return Some(ReplyControl::status(-1));
        };
        match db.freeze {
            Freeze::Frozen(_) => {
                error!("Freeze db: {} frozen", db.name);
                return Some(ReplyControl::ok(ControlReply::DbFreeze));
            }
            Freeze::Pending(_) => {}
            Freeze::None => {
                if db.tdb.is_none() {
                    db.deferred.push_back(Work::Control {
                        ctx: *ctx,
                        req: req.clone(),
                        to,
                    });
                    // A change-log checksum worker gives the handle back
                    // at once (it reads the whole file, a commit only its keys).
                    if let Some(l) = &db.changelog {
                        l.interrupt_compute();
                    }
                    return None;
                }
                self.start_freeze(env, id);
            }
        }
        let tag = self.park(to);
        self.recovery.waiters.entry(id).or_default().push(tag);
        None
    }

    /// `FREEZE`: every database (this node became inactive; volatile
    /// records here are no longer authoritative).
    pub(crate) fn freeze_all(&mut self, env: &Env, to: ReplyTo) -> Option<ReplyControl> {
        self.recovery.frozen_all = true;
        let ids: Vec<u32> = self.order.clone();
        let mut waiting = HashSet::new();
        for id in ids {
            let Some(db) = self.dbs.get_mut(&id) else {
                continue;
            };
            if db.volatile() {
                db.invalid_records = true;
            }
            match db.freeze {
                Freeze::Frozen(_) => {}
                Freeze::Pending(_) => {
                    waiting.insert(id);
                }
                Freeze::None => {
                    waiting.insert(id);
                    if db.tdb.is_some() {
                        self.start_freeze(env, id);
                    } else {
                        let req = ReqControl::new(ControlRequest::DbFreeze(id));
                        let ctx = ControlCtx {
                            srcnode: env.pnn(),
                            client: None,
                            client_id: 0,
                        };
                        db.deferred.push_back(Work::Control {
                            ctx,
                            req,
                            to: ReplyTo::Nobody,
                        });
                        if let Some(l) = &db.changelog {
                            l.interrupt_compute();
                        }
                    }
                }
            }
        }
        if waiting.is_empty() {
            error!("Freeze all: frozen");
            return Some(ReplyControl::ok(ControlReply::Freeze));
        }
        error!("Freeze all");
        let tag = self.park(to);
        let all = self.recovery.all.get_or_insert_with(FreezeAll::default);
        all.tags.push(tag);
        all.waiting.extend(waiting);
        None
    }

    /// When a freeze waiting for its locks reaches its deadline (or must
    /// be interrupted again).
    pub(crate) fn freeze_wakeup(&self) -> Option<Instant> {
        self.recovery.freezing.values().map(|f| f.deadline).min()
    }

    /// Freezes past their deadline: interrupt their wait (a blocked
    /// `fcntl`; mutex waits are timed), and again a little later until
    /// they report.
    pub(crate) fn freeze_deadlines(&mut self, env: &Env, now: Instant) {
        let _ = env;
        for f in self.recovery.freezing.values_mut() {
            if f.deadline <= now {
                interrupt(&f.thread);
                f.deadline = now + FREEZE_NUDGE;
            }
        }
        for db in self.dbs.values_mut() {
            db.locks.cap = env.tunables.lock_processes_per_db.max(1) as usize;
        }
    }

    /// A session reported its freeze.
    pub(crate) fn frozen(&mut self, env: &Env, id: u32, result: Result<(), String>) {
        // The thread is no longer waiting: never signal it again.
        let since = (self.recovery.freezing.remove(&id))
            .and_then(|f| f.deadline.checked_sub(Self::freeze_timeout(env)));
        let waiters = self.recovery.waiters.remove(&id).unwrap_or_default();
        let ok = result.is_ok();
        let mut reply = ReplyControl::ok(ControlReply::DbFreeze);
        if let Some(db) = self.dbs.get_mut(&id) {
            // A database lock request, in CTDB's lock statistics.
            let waited = since.map(|t| t.elapsed()).unwrap_or_default();
            self.stats.lock_done(&mut db.stats, waited, ok);
            match result {
                Ok(()) => {
                    if let Freeze::Pending(tx) = std::mem::take(&mut db.freeze) {
                        db.freeze = Freeze::Frozen(tx);
                    }
                }
                Err(why) => {
                    error!("Failed to get db lock for {}: {why}", db.name);
                    db.freeze = Freeze::None;
                    reply = ReplyControl::error(-1, format!("freeze of {} failed: {why}", db.name));
                }
            }
        } else if !ok {
            reply = ReplyControl::error(-1, "database detached during freeze");
        }
        for t in waiters {
            self.complete(t, reply.clone());
        }
        if let Some(all) = &mut self.recovery.all
            && all.waiting.remove(&id)
        {
            all.failed |= !ok;
            if all.waiting.is_empty()
                && let Some(all) = self.recovery.all.take()
            {
                let r = if all.failed {
                    ReplyControl::error(-1, "Failed to get locks in ctdb_freeze_child")
                } else {
                    ReplyControl::ok(ControlReply::Freeze)
                };
                for t in all.tags {
                    self.complete(t, r.clone());
                }
            }
        }
    }

    /// `DB_THAW`.
    pub(crate) fn db_thaw(&mut self, env: &Env, id: u32) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Thaw db for unknown dbid 0x{id:08x}");
            return Some(ReplyControl::status(-1));
        };
        error!("Thaw db: {} generation {}", db.name, db.generation);
        self.thaw_one(env, id);
        Some(ReplyControl::ok(ControlReply::DbThaw))
    }

    fn thaw_one(&mut self, env: &Env, id: u32) {
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        db.txn = None;
        db.invalid_records = false;
        if let Some(s) = db.push.take() {
            self.recovery.pushes.remove(&s);
        }
        if let Some(f) = self.recovery.freezing.get_mut(&id) {
            // Stop waiting for the locks now.
            f.deadline = Instant::now();
        }
        let db = self.dbs.get_mut(&id).expect("present");
        match std::mem::take(&mut db.freeze) {
            Freeze::Pending(tx) | Freeze::Frozen(tx) => {
                let _ = tx.send(Cmd::Thaw);
                // Calls are resent when the handle is back.
                db.thawing = true;
            }
            Freeze::None => {
                if db.tdb.is_some() {
                    self.resend_calls(env, id);
                } else {
                    db.thawing = true;
                }
            }
        }
    }

    /// Whether `FREEZE` froze every database (until recovery mode goes
    /// back to NORMAL).
    pub(crate) fn all_frozen(&self) -> bool {
        self.recovery.frozen_all
    }

    /// `SET_RECMODE` went to NORMAL: databases frozen by `FREEZE` thaw.
    pub fn recmode_normal(&mut self, env: &Env) {
        if std::mem::take(&mut self.recovery.frozen_all) {
            error!("Thawing all");
            for id in self.order.clone() {
                self.thaw_one(env, id);
            }
        }
        self.run_deferred_attaches(env);
    }

    /// This node became inactive (banned or stopped): every database's
    /// generation becomes invalid, as in CTDB 4.17, until a recovery
    /// commits the database in a new one. What this node sends about a
    /// database meanwhile carries a generation no node serves, rather
    /// than the one the rest of the cluster may still be in.
    pub fn node_inactive(&mut self) {
        for db in self.dbs.values_mut() {
            db.generation = INVALID_GENERATION;
        }
    }

    /// Every database must have been recovered in the current generation
    /// before the node leaves recovery.
    pub fn check_generations(&self, env: &Env) -> Result<(), String> {
        for id in &self.order {
            if let Some(db) = self.dbs.get(id)
                && db.generation != env.generation()
            {
                error!(
                    "Inconsistent DB generation {} for {}",
                    db.generation, db.name
                );
                return Err(format!(
                    "Inconsistent DB generation {} for {}",
                    db.generation, db.name
                ));
            }
        }
        Ok(())
    }

    fn frozen_db(&self, id: u32, what: &str) -> Result<(), ReplyControl> {
        match self.dbs.get(&id) {
            None => {
                error!("{what} for unknown dbid 0x{id:08x}");
                Err(ReplyControl::status(-1))
            }
            Some(db) if !db.frozen() => {
                error!("Database {} not frozen, cannot {what}", db.name);
                Err(ReplyControl::error(
                    -1,
                    format!("database {} is not frozen", db.name),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn db_transaction_start(
        &mut self,
        to: ReplyTo,
        t: &TransDb,
    ) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(t.db_id, "start transaction") {
            return Some(r);
        }
        let tag = self.park(to);
        if self.session_send(t.db_id, Cmd::TxStart { tag }) {
            if let Some(db) = self.dbs.get_mut(&t.db_id) {
                db.txn = Some(t.tid);
            }
        } else {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    pub(crate) fn db_transaction_cancel(&mut self, id: u32) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Transaction cancel for unknown dbid 0x{id:08x}");
            return Some(ReplyControl::status(-1));
        };
        error!("Recovery db transaction cancelled for {}", db.name);
        db.txn = None;
        self.session_send(id, Cmd::TxCancel);
        Some(ReplyControl::ok(ControlReply::DbTransactionCancel))
    }

    pub(crate) fn db_transaction_commit(
        &mut self,
        env: &Env,
        to: ReplyTo,
        t: &TransDb,
    ) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(t.db_id, "commit transaction") {
            return Some(r);
        }
        let db = self.dbs.get(&t.db_id).expect("checked");
        match db.txn {
            None => {
                error!("Transaction not started on {}", db.name);
                return Some(ReplyControl::error(-1, "transaction not started"));
            }
            Some(tid) if tid != t.tid => {
                error!(
                    "Incorrect transaction commit id 0x{:08x} for {}",
                    t.tid, db.name
                );
                return Some(ReplyControl::error(-1, "incorrect transaction id"));
            }
            Some(_) => {}
        }
        let tag = self.park(to);
        self.health_commit_asked(env, tag);
        let info = StoreInfo {
            pnn: env.pnn(),
            vnnmap: env.node.vnnmap.clone(),
        };
        if !self.session_send(
            t.db_id,
            Cmd::Commit {
                tag,
                tid: t.tid,
                info,
            },
        ) {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    /// A session committed a recovery transaction.
    pub(crate) fn committed(&mut self, id: u32, tid: u32, tag: u64, result: Result<(), String>) {
        self.health_commit_done(id, tag, result.is_ok());
        let reply = match result {
            Ok(()) => {
                if let Some(db) = self.dbs.get_mut(&id) {
                    db.txn = None;
                    db.generation = tid;
                }
                ReplyControl::ok(ControlReply::DbTransactionCommit)
            }
            Err(e) => {
                error!("Failed to commit transaction for db 0x{id:08x}: {e}");
                ReplyControl::error(-1, e)
            }
        };
        self.complete(tag, reply);
    }

    pub(crate) fn wipe_database(&mut self, to: ReplyTo, t: &TransDb) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(t.db_id, "wipe") {
            return Some(r);
        }
        let db = self.dbs.get(&t.db_id).expect("checked");
        if db.txn != Some(t.tid) {
            error!("transaction not started or incorrect id 0x{:x}", t.tid);
            return Some(ReplyControl::error(-1, "transaction not started"));
        }
        let tag = self.park(to);
        if !self.session_send(t.db_id, Cmd::Wipe { tag }) {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    pub(crate) fn db_pull(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        to: ReplyTo,
        p: &PullDbExt,
    ) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(p.db_id, "pull") {
            return Some(r);
        }
        let invalid = self.dbs.get(&p.db_id).is_some_and(|d| d.invalid_records);
        let tag = self.park(to);
        let cmd = Cmd::Pull {
            tag,
            dest: ctx.srcnode,
            srvid: p.srvid,
            limit: env.tunables.rec_buffer_size_limit.max(1) as usize,
            invalid,
        };
        if !self.session_send(p.db_id, cmd) {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    pub(crate) fn db_push_start(&mut self, p: &PullDbExt) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(p.db_id, "push") {
            return Some(r);
        }
        let db = self.dbs.get_mut(&p.db_id).expect("checked");
        if let Some(old) = db.push.replace(p.srvid) {
            warn!("DB push already started for {}", db.name);
            self.recovery.pushes.remove(&old);
        }
        self.recovery.pushes.insert(p.srvid, p.db_id);
        self.session_send(p.db_id, Cmd::PushStart);
        Some(ReplyControl::ok(ControlReply::DbPushStart))
    }

    pub(crate) fn db_push_confirm(&mut self, to: ReplyTo, id: u32) -> Option<ReplyControl> {
        if let Err(r) = self.frozen_db(id, "confirm push") {
            return Some(r);
        }
        let db = self.dbs.get_mut(&id).expect("checked");
        let Some(srvid) = db.push.take() else {
            error!("DB push not started");
            return Some(ReplyControl::error(-1, "DB push not started"));
        };
        self.recovery.pushes.remove(&srvid);
        self.ro_recovered(id);
        let tag = self.park(to);
        if !self.session_send(id, Cmd::PushConfirm { tag }) {
            self.parked_fail(tag, "freeze session gone");
        }
        None
    }

    /// A message for a srvid this layer listens on (pushed records).
    /// Returns false if the srvid is not ours.
    pub fn message(&mut self, env: &Env, srvid: u64, data: &[u8]) -> bool {
        let Some(&id) = self.recovery.pushes.get(&srvid) else {
            return false;
        };
        let info = StoreInfo {
            pnn: env.pnn(),
            vnnmap: env.node.vnnmap.clone(),
        };
        self.session_send(
            id,
            Cmd::Push {
                data: data.to_vec(),
                info,
            },
        );
        true
    }
}
