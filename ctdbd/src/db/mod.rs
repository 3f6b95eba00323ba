//! The database layer: attached databases, record calls and migration,
//! persistent transactions, traverses, and the database side of recovery.
//!
//! [`Databases`] is a state machine owned by the event loop
//! ([`crate::server`]). The loop hands it controls, record packets
//! (`REQ_CALL` from clients; calls and dmaster packets from nodes),
//! messages for the srvids it listens on (recovery pushes), replies to
//! the controls it sent, and completions of its background work; it
//! answers with [`Effect`]s (packets, messages, control replies) that the
//! loop carries out.
//!
//! Each database is a tdb file ([`file::Db`]) whose handle normally lives
//! here, on the event loop, where record calls use it with non-blocking
//! chain locks only ([`call`]). Work that may block or sync to disk takes
//! the handle to another thread and brings it back with a [`DbEvent`]: a
//! persistent update (one tdb transaction, [`persistent`]), or a freeze
//! session that holds every record lock of the database while recovery
//! pulls, wipes, pushes and commits ([`recovery`]). While the handle is
//! away, work for that database waits in order and is replayed when it
//! returns. Traverses run in a helper process with a handle of its own
//! ([`traverse`]), so a client holding a record lock can delay a traverse
//! but never the daemon.

pub mod call;
pub mod changelog;
pub mod controls;
pub mod file;
pub mod group_commit;
pub mod health;
pub mod inmemory;
pub mod keyed_recovery;
pub mod lockwait;
pub mod ltdb;
pub mod persistent;
pub mod pin;
pub mod readonly;
#[cfg(test)]
mod readonly_tests;
pub mod recovery;
pub mod replica;
pub mod seqnum;
pub mod seqwait;
pub mod sticky;
#[cfg(test)]
pub(crate) mod test_layer;
pub mod traverse;
pub mod vacuum;
pub mod vacuum_remote;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::call::ReqCall;
use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::types::{DbidMap, TunableList};
use ctdb_protocol::{Body, Header, Packet, ReplyControl, ReqControl};
use tokio::sync::mpsc;

use crate::control::{ClientInfo, ControlCtx};
use crate::messaging::ClientId;
use crate::node::NodeState;
use crate::server::ReplyTo;

pub use file::Db;

/// Where databases live and how they are opened.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub volatile_dir: PathBuf,
    pub persistent_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `[database] tdb mutexes`: robust mutexes for volatile databases.
    pub mutexes: bool,
    /// The program that runs local traverses (this daemon's executable).
    pub traverse_helper: PathBuf,
}

/// What the database layer reads of the rest of the daemon.
pub struct Env<'a> {
    pub node: &'a NodeState,
    pub tunables: &'a TunableList,
    pub clients: &'a BTreeMap<ClientId, ClientInfo>,
}

impl Env<'_> {
    pub fn pnn(&self) -> u32 {
        self.node.pnn
    }
    pub fn generation(&self) -> u32 {
        self.node.vnnmap.generation
    }
}

/// Something the event loop must do for the database layer.
#[derive(Debug)]
pub enum Effect {
    /// A packet to a node (this node included: it loops back).
    ToNode(u32, Bytes),
    /// A packet to a local client.
    ToClient(ClientId, Bytes),
    /// A message to `srvid` on node `dest`.
    Message {
        dest: u32,
        srvid: u64,
        data: Vec<u8>,
    },
    /// A control reply.
    Reply(ReplyTo, ReplyControl),
    /// A control to node `dest`; with a tag, its reply (or failure) comes
    /// back through [`Databases::control_reply`].
    Control {
        dest: u32,
        req: ReqControl,
        tag: Option<u64>,
    },
    /// Something needs a recovery: put this node in recovery mode.
    RecoveryActive(String),
}

/// Background work reporting back to the event loop.
pub enum DbEvent {
    /// A database handle is back (with the reply of the work that had it).
    Returned {
        db: u32,
        tdb: Box<tdb::Tdb>,
        done: Option<(u64, ReplyControl)>,
    },
    /// A freeze session locked its database (or gave up).
    Frozen { db: u32, result: Result<(), String> },
    /// A lock helper holds a record chain (or failed to wait for it).
    LockHeld {
        db: u32,
        bucket: u32,
        id: u64,
        result: Result<(), String>,
    },
    /// A freeze session finished a control.
    Reply { tag: u64, reply: ReplyControl },
    /// A freeze session committed (or failed to commit) a recovery
    /// transaction.
    Committed {
        db: u32,
        tid: u32,
        tag: u64,
        result: Result<(), String>,
    },
    /// A chunk of a `DB_PULL`, for `srvid` on `dest`; `sent` is dropped
    /// once it has been written out.
    Chunk {
        dest: u32,
        srvid: u64,
        data: Vec<u8>,
        sent: recovery::Sent,
    },
    /// A message the background work wants sent.
    Message {
        dest: u32,
        srvid: u64,
        data: Vec<u8>,
    },
    /// Records from a local traverse (whole marshalled records).
    TraverseRecords { id: u64, data: Vec<u8> },
    /// A local traverse ended.
    TraverseEnd { id: u64, ok: bool },
    /// Vacuuming's background work ([`vacuum`]).
    Vacuum(vacuum::VacEvent),
    /// A batch of `UPDATE_RECORD`s is applied, with the handle back
    /// ([`group_commit`]).
    Applied(Box<group_commit::Applied>),
}

impl std::fmt::Debug for DbEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbEvent::Returned { db, .. } => write!(f, "Returned(0x{db:08x})"),
            DbEvent::Frozen { db, result } => write!(f, "Frozen(0x{db:08x}, {result:?})"),
            DbEvent::LockHeld { db, bucket, .. } => write!(f, "LockHeld(0x{db:08x}, {bucket})"),
            DbEvent::Reply { tag, .. } => write!(f, "Reply({tag})"),
            DbEvent::Committed { db, .. } => write!(f, "Committed(0x{db:08x})"),
            DbEvent::Message { srvid, .. } => write!(f, "Message(0x{srvid:x})"),
            DbEvent::Chunk { dest, data, .. } => write!(f, "Chunk({dest}, {} bytes)", data.len()),
            DbEvent::TraverseRecords { id, .. } => write!(f, "TraverseRecords({id})"),
            DbEvent::TraverseEnd { id, ok } => write!(f, "TraverseEnd({id}, {ok})"),
            DbEvent::Vacuum(v) => write!(f, "Vacuum({v:?})"),
            DbEvent::Applied(a) => write!(f, "Applied(0x{:08x}, {})", a.db, a.updates.len()),
        }
    }
}

/// A piece of work for one database, kept while it cannot run yet.
#[derive(Debug, Clone)]
pub enum Work {
    /// A local client's `REQ_CALL`.
    Client {
        client: ClientId,
        reqid: u32,
        call: ReqCall,
    },
    /// A record packet from a node (`REQ_CALL`, `REQ_DMASTER`,
    /// `REPLY_DMASTER`), kept whole.
    Node { pkt: Bytes },
    /// A control that needs the database handle.
    Control {
        ctx: ControlCtx,
        req: ReqControl,
        to: ReplyTo,
    },
    /// A vacuum run's deletion of a record it waited to lock
    /// ([`vacuum`]).
    VacuumDelete {
        run: u64,
        key: Vec<u8>,
        hdr: ctdb_protocol::types::LtdbHeader,
    },
    /// The final store of a revocation of read-only copies, waiting for
    /// the record's lock ([`readonly`]).
    RevokeFinish { key: Vec<u8> },
}

/// Rounds of [`Databases::run_ready`] per call.
const READY_PASSES: usize = 4;

/// The database layer.
pub struct Databases {
    pub(crate) cfg: DbConfig,
    pub(crate) dbs: HashMap<u32, Db>,
    /// Attach order (`GET_DBMAP` lists the newest first, as CTDB).
    pub(crate) order: Vec<u32>,
    effects: Vec<Effect>,
    /// Work ready to run again (after a migration completed, say).
    pub(crate) ready: VecDeque<(u32, Work)>,
    pub(crate) ev_tx: mpsc::UnboundedSender<DbEvent>,
    next_tag: u64,
    /// Controls answered later, by tag.
    parked: HashMap<u64, ReplyTo>,
    pub(crate) calls: call::Calls,
    pub(crate) trans3: persistent::Trans3s,
    /// The `UPDATE_RECORD` batch being formed ([`group_commit`]).
    pub(crate) group: group_commit::GroupCommit,
    pub(crate) travs: traverse::Traverses,
    pub(crate) recovery: recovery::RecoveryState,
    /// Attaches from clients waiting for recovery to end.
    pub(crate) deferred_attach: Vec<(ControlCtx, ReqControl, ReplyTo, Instant)>,
    /// When the sequence-number check ([`seqnum`]) is next due.
    pub(crate) seqnum_next: Option<Instant>,
    /// Delete queues, vacuum timers and the vacuum run ([`vacuum`]).
    pub(crate) vacuum: vacuum::Vacuum,
    /// Attaches of extension kinds waiting for their probes ([`inmemory`]).
    pub(crate) ext: inmemory::ExtAttaches,
    /// Syncs of partially replicated databases ([`replica`]).
    pub(crate) replicas: replica::Replicas,
    /// Tracking databases and revocations ([`readonly`]).
    pub(crate) ro: readonly::ReadOnly,
    /// Sticky records and their pin-downs ([`sticky`]).
    pub(crate) sticky: sticky::Sticky,
    /// `persistent_health.tdb` and recovery commits in flight ([`health`]).
    pub(crate) health: health::Health,
    /// The daemon's counters (`ctdb statistics`), shared with the loop.
    pub stats: crate::stats::StatsHandle,
    /// Parked `DB_WAIT_SEQNUM`s ([`seqwait`]).
    pub(crate) seqwait: seqwait::SeqWaits,
}

impl Databases {
    /// A layer with no databases yet, and the channel its background work
    /// reports on.
    pub fn new(cfg: DbConfig) -> (Databases, mpsc::UnboundedReceiver<DbEvent>) {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        (
            Databases {
                cfg,
                dbs: HashMap::new(),
                order: Vec::new(),
                effects: Vec::new(),
                ready: VecDeque::new(),
                ev_tx,
                next_tag: 1,
                parked: HashMap::new(),
                calls: Default::default(),
                trans3: Default::default(),
                group: Default::default(),
                travs: Default::default(),
                recovery: Default::default(),
                deferred_attach: Vec::new(),
                seqnum_next: None,
                vacuum: Default::default(),
                ext: Default::default(),
                replicas: Default::default(),
                ro: Default::default(),
                sticky: Default::default(),
                health: Default::default(),
                stats: Default::default(),
                seqwait: Default::default(),
            },
            ev_rx,
        )
    }

    /// `GET_DBMAP`.
    pub fn dbmap(&self) -> DbidMap {
        DbidMap {
            dbs: self
                .order
                .iter()
                .rev()
                .filter_map(|id| self.dbs.get(id))
                .map(|d| ctdb_protocol::types::Dbid {
                    db_id: d.id,
                    flags: d.flags,
                })
                .collect(),
        }
    }

    /// The effects produced so far, for the event loop to carry out.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        let mut fx = std::mem::take(&mut self.effects);
        self.vacuum_replies(&mut fx);
        self.ro_flush_counts();
        self.lock_counts_flush();
        fx
    }

    /// Whether work is waiting to be run again.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Runs work that became ready (a completed migration releases the
    /// calls that waited for it), and what that work made ready in turn (a
    /// revocation finished from the queue releases the calls that waited
    /// for it, with no effect of its own that would bring the loop back),
    /// for at most [`READY_PASSES`] rounds: work that puts itself back
    /// cannot hold the loop; what is left runs with the next event.
    pub fn run_ready(&mut self, env: &Env) {
        for _ in 0..READY_PASSES {
            let mut n = self.ready.len();
            if n == 0 {
                return;
            }
            while n > 0 {
                n -= 1;
                let Some((db, w)) = self.ready.pop_front() else {
                    break;
                };
                self.run_work(env, db, w);
            }
        }
    }

    /// Runs one piece of work.
    pub(crate) fn run_work(&mut self, env: &Env, db: u32, w: Work) {
        match w {
            Work::Client {
                client,
                reqid,
                call,
            } => self.client_call(env, client, reqid, call),
            Work::Node { pkt } => self.node_packet(env, pkt),
            Work::Control { ctx, req, to } => self.control(env, ctx, &req, to),
            Work::VacuumDelete { run, key, hdr } => {
                self.vacuum_locked_delete(env, db, run, key, hdr)
            }
            Work::RevokeFinish { key } => self.revoke_finish(env, db, key),
        }
    }

    /// When the layer next wants [`Databases::tick`] (freezes past their
    /// deadline, the sequence-number check).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let freeze = self.freeze_wakeup();
        freeze
            .into_iter()
            .chain(self.seqnum_next())
            .chain(self.vacuum_wakeup())
            .chain(self.pin_wakeup())
            .chain(self.ro_wakeup())
            .chain(self.sticky_wakeup())
            .chain(self.seqwait_wakeup())
            .min()
    }

    /// Periodic work: freeze deadlines, timeouts, deferred attaches.
    pub fn tick(&mut self, env: &Env, now: Instant) {
        self.freeze_deadlines(env, now);
        self.trans3_timeouts(env, now);
        self.traverse_timeouts(env, now);
        self.attach_timeouts(env, now);
        self.seqnum_check(env, now);
        self.vacuum_tick(env, now);
        self.pin_deadlines(env, now);
        self.ro_tick(now);
        self.sticky_tick(now);
        self.seqwait_tick(env, now);
    }

    // ---- helpers for the other modules ----------------------------------

    pub(crate) fn effect(&mut self, e: Effect) {
        self.effects.push(e);
    }

    pub(crate) fn new_tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    /// Keeps a control's reply address until [`Databases::complete`].
    pub(crate) fn park(&mut self, to: ReplyTo) -> u64 {
        let t = self.new_tag();
        self.parked.insert(t, to);
        t
    }

    /// Answers a parked control.
    pub(crate) fn complete(&mut self, tag: u64, r: ReplyControl) {
        if let Some(to) = self.parked.remove(&tag) {
            self.effects.push(Effect::Reply(to, r));
        }
    }

    pub(crate) fn reply(&mut self, to: ReplyTo, r: ReplyControl) {
        self.effects.push(Effect::Reply(to, r));
    }

    /// A packet from this node, in the current generation.
    pub(crate) fn packet(env: &Env, dest: u32, reqid: u32, body: Body) -> Bytes {
        let op = body.operation();
        let mut h = Header::new(op, dest, env.pnn(), reqid);
        h.generation = env.generation();
        Packet::new(h, body).encode().into()
    }

    pub(crate) fn send_node(&mut self, env: &Env, dest: u32, reqid: u32, body: Body) {
        let b = Self::packet(env, dest, reqid, body);
        self.effects.push(Effect::ToNode(dest, b));
    }

    pub(crate) fn send_client(&mut self, env: &Env, client: ClientId, reqid: u32, body: Body) {
        let b = Self::packet(env, 0, reqid, body);
        self.effects.push(Effect::ToClient(client, b));
    }

    /// A control to `dest` that wants no reply.
    pub(crate) fn control_noreply(&mut self, dest: u32, data: ctdb_protocol::ControlRequest) {
        let mut req = ReqControl::new(data);
        req.flags = CTDB_CTRL_FLAG_NOREPLY;
        self.effects.push(Effect::Control {
            dest,
            req,
            tag: None,
        });
    }

    pub(crate) fn recovery_active(&mut self, why: impl Into<String>) {
        self.effects.push(Effect::RecoveryActive(why.into()));
    }

    /// Background work reported back.
    pub fn event(&mut self, env: &Env, ev: DbEvent) {
        match ev {
            DbEvent::Returned { db, tdb, done } => {
                if let Some((tag, r)) = done {
                    self.stats.childwrite_done(tag);
                    self.complete(tag, r);
                }
                self.handle_returned(env, db, *tdb);
            }
            DbEvent::Frozen { db, result } => self.frozen(env, db, result),
            DbEvent::LockHeld {
                db,
                bucket,
                id,
                result,
            } => self.lock_held(env, db, bucket, id, result),
            DbEvent::Reply { tag, reply } => self.complete(tag, reply),
            DbEvent::Committed {
                db,
                tid,
                tag,
                result,
            } => self.committed(db, tid, tag, result),
            DbEvent::Message { dest, srvid, data } => {
                self.effects.push(Effect::Message { dest, srvid, data })
            }
            DbEvent::Chunk {
                dest,
                srvid,
                data,
                sent,
            } => self.pull_chunk(env, dest, srvid, data, sent),
            DbEvent::TraverseRecords { id, data } => self.local_traverse_records(env, id, &data),
            DbEvent::TraverseEnd { id, ok } => self.local_traverse_end(env, id, ok),
            DbEvent::Vacuum(v) => self.vacuum_event(env, v),
            DbEvent::Applied(a) => self.batch_applied(env, *a),
        }
    }

    /// A database handle came back: run what waited for it.
    pub(crate) fn handle_returned(&mut self, env: &Env, id: u32, tdb: tdb::Tdb) {
        let Some(db) = self.dbs.get_mut(&id) else {
            // Detached meanwhile: the handle just closes.
            return;
        };
        db.tdb = Some(tdb);
        db.lock_waits_home();
        let thawed = std::mem::take(&mut db.thawing);
        self.seqnum_handle_back(id);
        self.seqwait_notify(env, id);
        // Calls that were out when the database froze go again first, as
        // CTDB's thaw does: a client call that waited for the handle is
        // sent by the loop below, in the new generation, and must not be
        // sent a second time under another request id.
        if thawed {
            self.resend_calls(env, id);
        }
        // Run what waited, in order, for as long as the handle stays here
        // (a waiting update may take it away again).
        while let Some(w) = self
            .dbs
            .get_mut(&id)
            .filter(|d| d.tdb.is_some())
            .and_then(|d| d.deferred.pop_front())
        {
            self.run_work(env, id, w);
        }
        self.changelog_resume(id);
    }

    /// A local client went away.
    pub fn client_gone(&mut self, env: &Env, client: ClientId) {
        self.calls_client_gone(client);
        self.trans3_client_gone(client);
        self.seqwait_client_gone(client);
        self.traverse_client_gone(env, client);
        self.deferred_attach
            .retain(|(ctx, _, _, _)| ctx.client != Some(client));
    }

    /// Time left for a reply to a control this layer sends.
    pub(crate) fn control_timeout(env: &Env) -> Duration {
        Duration::from_secs(u64::from(env.tunables.control_timeout.max(1)))
    }
}
