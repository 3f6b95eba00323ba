//! Database controls: which controls the layer answers, attach and detach,
//! and the small informational ones; the rest are dispatched to their
//! modules.

use std::time::{Duration, Instant};

use ctdb_protocol::control::CTDB_CTRL_FLAG_ATTACH_RECOVERY;
use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::types::{Runstate, TraverseAllExt, TraverseStartExt, db_flags};
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReplyControl, ReqControl};
use tracing::{error, info, warn};

use super::{Databases, Env, file, ltdb};
use crate::control::{ControlCtx, is_db_control};
use crate::server::ReplyTo;

/// Controls the database layer answers.
pub fn handles(op: Opcode) -> bool {
    is_db_control(op) || matches!(op, Opcode::Freeze | Opcode::GetDbMap)
}

impl Databases {
    /// Answers a database control; the reply goes to `to`, now or later.
    pub fn control(&mut self, env: &Env, ctx: ControlCtx, req: &ReqControl, to: ReplyTo) {
        if let Some(r) = self.control_inner(env, &ctx, req, to) {
            self.reply(to, r);
        }
    }

    fn control_inner(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
    ) -> Option<ReplyControl> {
        use ControlRequest as Rq;
        let ok = |d| Some(ReplyControl::ok(d));
        match &req.data {
            Rq::GetDbMap => ok(ControlReply::GetDbMap(self.dbmap())),
            Rq::DbAttach(n) => self.attach(env, ctx, req, to, n, 0),
            Rq::DbAttachPersistent(n) => self.attach(env, ctx, req, to, n, db_flags::PERSISTENT),
            Rq::DbAttachReplicated(n) => self.attach(env, ctx, req, to, n, db_flags::REPLICATED),
            Rq::DbAttachExt(a) => self.attach_ext(env, ctx, req, to, a),
            // Partially replicated databases (replica.rs).
            Rq::DbSyncRecord(k) => self.sync_record(env, ctx, req, to, k),
            Rq::DbReplicaStore(s) => self.replica_store(env, ctx, req, to, s),
            Rq::DbReplicaStatus(id) => Some(self.replica_status(env, *id)),
            Rq::DbDetach(id) => self.detach(env, ctx, *id),
            Rq::GetDbPath(id) => Some(self.with_db(*id, |d| {
                ReplyControl::ok(ControlReply::GetDbPath(d.path.display().to_string()))
            })),
            Rq::GetDbName(id) => Some(self.with_db(*id, |d| {
                ReplyControl::ok(ControlReply::GetDbName(d.name.clone()))
            })),
            Rq::DbGetHealth(id) => Some(self.db_get_health(*id)),
            Rq::DbSetHealthy(id) => Some(self.db_set_healthy(env, *id)),
            Rq::DbOpenFlags(id) => Some(self.with_db(*id, |d| {
                ReplyControl::ok(ControlReply::DbOpenFlags(d.tdb_flags as i32))
            })),
            Rq::SetDbReadonly(id) => Some(
                self.replica_refuses(*id, "readonly")
                    .unwrap_or_else(|| self.set_db_readonly(env, *id)),
            ),
            Rq::SetDbSticky(id) => Some(
                self.replica_refuses(*id, "sticky")
                    .unwrap_or_else(|| self.set_db_sticky(*id)),
            ),
            Rq::GetDbStatistics(id) => Some(self.with_db(*id, |d| {
                ReplyControl::ok(ControlReply::GetDbStatistics(Box::new(d.stats.clone())))
            })),
            Rq::GetDbSeqnum(r) => self.get_db_seqnum(ctx, req, to, r.db_id),
            Rq::EnableSeqnum(id) => Some(self.enable_seqnum(env, *id)),
            Rq::UpdateSeqnum(id) => Some(self.update_seqnum(env, ctx.srcnode, *id)),
            // Vacuuming (vacuum.rs, vacuum_remote.rs).
            Rq::ScheduleForDeletion(k) => Some(self.schedule_for_deletion(k)),
            Rq::VacuumFetch(rb) => Some(self.vacuum_fetch(rb)),
            Rq::TryDeleteRecords(rb) => self.try_delete_records(env, ctx, req, to, rb),
            Rq::DbVacuum(v) => self.db_vacuum(env, to, v),
            Rq::Trans3Commit(rb) => self.trans3_commit(env, ctx, req, to, rb),
            Rq::DbWaitSeqnum(w) => self.wait_seqnum(env, ctx, req, to, w),
            Rq::UpdateRecord(rb) => self.update_record(env, ctx, req, to, rb),
            Rq::TraverseStart(t) => self.traverse_start(
                env,
                ctx,
                TraverseStartExt {
                    db_id: t.db_id,
                    reqid: t.reqid,
                    srvid: t.srvid,
                    withemptyrecords: false,
                },
            ),
            Rq::TraverseStartExt(t) => self.traverse_start(env, ctx, *t),
            Rq::TraverseAll(t) => self.traverse_all(
                env,
                TraverseAllExt {
                    db_id: t.db_id,
                    reqid: t.reqid,
                    pnn: t.pnn,
                    client_reqid: t.client_reqid,
                    srvid: t.srvid,
                    withemptyrecords: false,
                },
            ),
            Rq::TraverseAllExt(t) => self.traverse_all(env, *t),
            Rq::TraverseData(rec) => self.traverse_data(env, rec.clone()),
            Rq::TraverseKill(t) => self.traverse_kill(t),
            Rq::DbFreeze(id) => self.db_freeze(env, ctx, req, to, *id),
            Rq::Freeze => self.freeze_all(env, to),
            Rq::DbThaw(id) => self.db_thaw(env, *id),
            Rq::DbTransactionStart(t) => self.db_transaction_start(to, t),
            Rq::DbTransactionCommit(t) => self.db_transaction_commit(env, to, t),
            Rq::DbTransactionCancel(id) => self.db_transaction_cancel(*id),
            Rq::WipeDatabase(t) => self.wipe_database(to, t),
            Rq::DbPull(p) => self.db_pull(env, ctx, to, p),
            Rq::DbPushStart(p) => self.db_push_start(p),
            Rq::DbPushConfirm(id) => self.db_push_confirm(to, *id),
            // Incremental catch-up (changelog.rs).
            Rq::DbChangelogInfo(id) => Some(self.changelog_info(*id)),
            Rq::DbChangesPull(p) => Some(self.changes_pull(p)),
            _ => Some(ReplyControl::error(
                -1,
                format!("{} is not a database control", req.opcode().name()),
            )),
        }
    }

    fn with_db(&self, id: u32, f: impl FnOnce(&super::Db) -> ReplyControl) -> ReplyControl {
        match self.dbs.get(&id) {
            Some(d) => f(d),
            None => unknown(id),
        }
    }

    /// `DB_ATTACH[_PERSISTENT|_REPLICATED|_EXT]`.
    pub(crate) fn attach(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        name: &str,
        flags: u8,
    ) -> Option<ReplyControl> {
        if env.tunables.allow_client_db_attach == 0 {
            error!("DB Attach to database {name} denied by tunable AllowClientDBAccess == 0");
            return Some(ReplyControl::status(-1));
        }
        if let Err(why) = file::check_name(name) {
            error!("DB Attach refused: {why}");
            return Some(ReplyControl::error(-1, why));
        }
        let from_client = ctx.srcnode == env.pnn() && ctx.client.is_some();
        if from_client {
            if env.node.me().is_inactive() {
                error!(
                    "DB Attach to database {name} refused since node is inactive (flags=0x{:x})",
                    env.node.my_flags()
                );
                return Some(ReplyControl::status(-1));
            }
            let recovery = req.flags & CTDB_CTRL_FLAG_ATTACH_RECOVERY != 0;
            if recovery && !env.node.in_recovery() {
                error!("Attach from recovery refused because recovery is not active");
                return Some(ReplyControl::status(-1));
            }
            if !recovery && (env.node.in_recovery() || env.node.runstate < Runstate::Startup) {
                let pid = ctx
                    .client
                    .and_then(|c| env.clients.get(&c))
                    .map_or(0, |c| c.pid);
                error!(
                    "DB Attach to database {name} deferred for client with pid:{pid} since node is in recovery mode."
                );
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(env.tunables.deferred_attach_timeout));
                self.deferred_attach.push((*ctx, req.clone(), to, deadline));
                return None;
            }
        }
        if let Some(d) = self.dbs.values().find(|d| d.name == name) {
            if d.flags & flags != flags {
                error!(
                    "Error: Failed to re-attach with 0x{flags:x} flags, database has 0x{:x} flags",
                    d.flags
                );
                return Some(ReplyControl::status(-1));
            }
            return Some(ReplyControl::ok(attach_reply(req, d.id)));
        }
        let id = ltdb::db_id(name);
        if let Some(other) = self.dbs.get(&id) {
            error!(
                "db_id 0x{id:x} hash collision. name1='{name}' name2='{}'",
                other.name
            );
            return Some(ReplyControl::error(-1, "database id collision"));
        }
        if flags & db_flags::PERSISTENT != 0
            && let Err(e) = self.health_attach_check(name)
        {
            error!("{e}");
            return Some(ReplyControl::error(-1, e));
        }
        let db = match file::open(
            &self.cfg,
            name,
            flags,
            env.pnn(),
            env.tunables.database_hash_size,
            env.tunables.database_max_dead,
            env.generation(),
        ) {
            Ok(d) => d,
            Err(e) => {
                error!("{e}");
                return Some(ReplyControl::error(-1, e));
            }
        };
        self.dbs.insert(id, db);
        self.order.push(id);
        self.changelog_compute(id);
        // Every other node attaches it too.
        let data = match req.data.clone() {
            ControlRequest::DbAttachPersistent(n) => ControlRequest::DbAttachPersistent(n),
            ControlRequest::DbAttachReplicated(n) => ControlRequest::DbAttachReplicated(n),
            ControlRequest::DbAttachExt(a) => ControlRequest::DbAttachExt(a),
            _ => ControlRequest::DbAttach(name.to_owned()),
        };
        let others: Vec<u32> = env
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.is_connected() && n.pnn != env.pnn())
            .map(|n| n.pnn)
            .collect();
        for p in others {
            self.control_noreply(p, data.clone());
        }
        Some(ReplyControl::ok(attach_reply(req, id)))
    }

    /// Attaches a persistent database found on disk at start-up.
    pub fn attach_existing(&mut self, env: &Env, name: &str) -> Result<u32, String> {
        self.health_attach_check(name)?;
        let db = file::open(
            &self.cfg,
            name,
            db_flags::PERSISTENT,
            env.pnn(),
            env.tunables.database_hash_size,
            env.tunables.database_max_dead,
            env.generation(),
        )?;
        let id = db.id;
        if self.dbs.contains_key(&id) {
            return Err(format!("db_id 0x{id:x} hash collision for '{name}'"));
        }
        self.dbs.insert(id, db);
        self.order.push(id);
        self.changelog_compute_now(id);
        Ok(id)
    }

    /// Re-runs attaches deferred during recovery.
    pub(crate) fn run_deferred_attaches(&mut self, env: &Env) {
        if env.node.in_recovery() || env.node.runstate < Runstate::Startup {
            return;
        }
        for (ctx, req, to, _) in std::mem::take(&mut self.deferred_attach) {
            self.control(env, ctx, &req, to);
        }
    }

    pub(crate) fn attach_timeouts(&mut self, env: &Env, now: Instant) {
        if !self.deferred_attach.is_empty() {
            self.run_deferred_attaches(env);
        }
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred_attach)
            .into_iter()
            .partition(|(_, _, _, d)| *d <= now);
        self.deferred_attach = keep;
        for (_, _, to, _) in due {
            self.reply(to, ReplyControl::status(-1));
        }
    }

    /// `DB_DETACH`.
    fn detach(&mut self, env: &Env, ctx: &ControlCtx, id: u32) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get(&id) else {
            error!("Invalid dbid 0x{id:08x} in DB detach");
            return Some(ReplyControl::status(-1));
        };
        if env.tunables.allow_client_db_attach == 1 {
            error!(
                "DB detach from database {} denied. Clients are allowed access to databases (AllowClientDBAccess == 1)",
                db.name
            );
            return Some(ReplyControl::status(-1));
        }
        if !db.volatile() {
            error!("Detaching non-volatile database {} denied", db.name);
            return Some(ReplyControl::status(-1));
        }
        if env.node.in_recovery() {
            error!("DB detach denied while in recovery");
            return Some(ReplyControl::status(-1));
        }
        if ctx.client.is_some() && ctx.srcnode == env.pnn() {
            // From a client: every node (this one included) detaches.
            for n in env.node.nodes.iter() {
                if !n.is_deleted() && n.is_connected() && n.pnn != CTDB_UNKNOWN_PNN {
                    self.control_noreply(n.pnn, ControlRequest::DbDetach(id));
                }
            }
            return Some(ReplyControl::ok(ControlReply::DbDetach));
        }
        if self.dbs.get(&id).is_some_and(|d| d.tdb.is_none()) {
            warn!("Detaching database 0x{id:08x} while it is busy");
        }
        if let Some(db) = self.dbs.remove(&id) {
            self.order.retain(|x| *x != id);
            info!("Detached from database '{}'", db.name);
            self.effect(super::Effect::Message {
                dest: env.pnn(),
                srvid: ctdb_protocol::message::srvid::DETACH_DATABASE,
                data: id.to_le_bytes().to_vec(),
            });
        }
        Some(ReplyControl::ok(ControlReply::DbDetach))
    }
}

fn unknown(id: u32) -> ReplyControl {
    error!("Unknown db 0x{id:08x}");
    ReplyControl::error(-1, format!("unknown database 0x{id:08x}"))
}

fn attach_reply(req: &ReqControl, id: u32) -> ControlReply {
    match req.data {
        ControlRequest::DbAttachPersistent(_) => ControlReply::DbAttachPersistent(id),
        ControlRequest::DbAttachReplicated(_) => ControlReply::DbAttachReplicated(id),
        ControlRequest::DbAttachExt(_) => ControlReply::DbAttachExt(id),
        _ => ControlReply::DbAttach(id),
    }
}
