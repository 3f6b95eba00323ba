//! Persistent and replicated databases: cluster-wide commits.
//!
//! A client serialises its transaction with a g_lock, buffers its changes
//! and sends them, with the database's incremented sequence number, in one
//! `TRANS3_COMMIT` to its daemon. The daemon sends the buffer as
//! `UPDATE_RECORD` to every node of the current generation (itself
//! included), and refuses the commit while one of them is inactive: a
//! node cut off from the others must not acknowledge what the recovery
//! after the partition will discard (CTDB sends to the active nodes only,
//! and loses such commits). Each node
//! applies it in **one tdb transaction** on a worker thread (the handle
//! goes there and back), checking that no record goes back in rsn; the
//! updates of the database that queued meanwhile share that transaction
//! ([`super::group_commit`]), each keeping its own outcome. When
//! every node has answered the client gets its reply. If any node fails,
//! this node enters recovery mode and the reply waits for the recovery to
//! end ("ended by recovery"): the client then learns from the sequence
//! number whether its changes made it. A client that disconnects during a
//! commit forces a recovery too.
//!
//! Durability: persistent files are opened without `TDB_NOSYNC`, so each
//! commit is a full tdb transaction commit (its recovery area and data are
//! synced before the commit returns). The cost per commit is one
//! transaction per node, run off the event loop, in parallel on all nodes:
//! no fork per update as in CTDB, and nothing but the transaction itself
//! touches the disk.

use std::collections::HashMap;
use std::time::Instant;

use ctdb_protocol::types::{LtdbHeader, RecBuffer, node_flags};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{error, info};

use super::{Databases, Effect, Env, Work, group_commit, ltdb};
use crate::control::ControlCtx;
use crate::messaging::ClientId;
use crate::server::ReplyTo;

/// The sequence number record of persistent databases.
pub const SEQNUM_KEY: &[u8] = b"__db_sequence_number__\0";

/// A `TRANS3_COMMIT` waiting for the nodes' `UPDATE_RECORD` replies.
#[derive(Debug)]
pub struct Trans3 {
    pub db: u32,
    pub client: ClientId,
    pub to: ReplyTo,
    pub pending: u32,
    pub failed: u32,
    pub deadline: Instant,
}

/// Commits in progress, by the tag their `UPDATE_RECORD` replies carry.
#[derive(Debug, Default)]
pub struct Trans3s {
    by_tag: HashMap<u64, Trans3>,
}

impl Databases {
    /// `TRANS3_COMMIT` from a local client.
    pub(crate) fn trans3_commit(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        rb: &RecBuffer,
    ) -> Option<ReplyControl> {
        if env.node.in_recovery() {
            info!("rejecting ctdb_control_trans3_commit when recovery active");
            return Some(ReplyControl::error(-1, "recovery active"));
        }
        let Some(client) = ctx.client else {
            error!("can not match persistent_store to a client");
            return Some(ReplyControl::status(-1));
        };
        if self.trans3.by_tag.values().any(|t| t.client == client) {
            error!("trans3_commit: client {client} already has a commit active");
            return Some(ReplyControl::status(-1));
        }
        let Some(db) = self.dbs.get(&rb.db_id) else {
            error!(
                "ctdb_control_trans3_commit: Unknown database db_id[0x{:08x}]",
                rb.db_id
            );
            return Some(ReplyControl::error(
                -1,
                format!("unknown database 0x{:08x}", rb.db_id),
            ));
        };
        // ctdb-rs keyed databases: commits of one database overlap (their
        // clients hold the keys' locks).
        let keyed = db.flags & ctdb_protocol::types::db_flags::KEYED != 0;
        if !keyed && self.trans3.by_tag.values().any(|t| t.db == db.id) {
            error!(
                "ctdb_control_trans3_commit called while a transaction commit is active. db_id[0x{:08x}]",
                db.id
            );
            return Some(ReplyControl::status(-1));
        }
        let db_id = db.id;
        // Keyed: every record stamped with the generation (inmemory.rs).
        let stamped;
        let rb = if keyed {
            match super::inmemory::keyed_stamp(rb, env.generation()) {
                Ok(b) => {
                    stamped = b;
                    &stamped
                }
                Err(why) => return Some(ReplyControl::error(-1, why)),
            }
        } else {
            rb
        };
        // Every node of the current generation must take the commit. A
        // member that is gone (disconnected, banned, stopped) means this
        // node may be cut off from the rest: committing on the members it
        // still sees, as CTDB does, acknowledges changes that the next
        // recovery throws away when the other side has moved on. Refuse
        // until a recovery has made a generation of the nodes that are
        // there (the client tries again).
        let mut targets: Vec<u32> = env.node.vnnmap.map.clone();
        targets.sort_unstable();
        targets.dedup();
        if let Some(gone) = targets.iter().find(|p| {
            env.node
                .node(**p)
                .is_none_or(|n| n.flags & node_flags::INACTIVE != 0)
        }) {
            info!(
                "rejecting ctdb_control_trans3_commit: node {gone} of generation {} is not active",
                env.generation()
            );
            return Some(ReplyControl::error(
                -1,
                format!("node {gone} of the current generation is not active: recovery needed"),
            ));
        }
        if targets.is_empty() {
            return Some(ReplyControl::ok(ControlReply::Trans3Commit));
        }
        let tag = self.new_tag();
        for dest in &targets {
            let mut r = ReqControl::new(ControlRequest::UpdateRecord(rb.clone()));
            r.client_id = req.client_id;
            self.effect(Effect::Control {
                dest: *dest,
                req: r,
                tag: Some(tag),
            });
        }
        self.trans3.by_tag.insert(
            tag,
            Trans3 {
                db: db_id,
                client,
                to,
                pending: targets.len() as u32,
                failed: 0,
                deadline: Instant::now() + Self::control_timeout(env),
            },
        );
        None
    }

    /// A node answered (or failed to answer) a control this layer sent.
    pub fn control_reply(&mut self, env: &Env, tag: u64, r: Result<ReplyControl, String>) {
        if self.trans3.by_tag.contains_key(&tag) {
            self.trans3_update_done(env, tag, r);
        } else if self.ext.owns(tag) {
            self.ext_probe_reply(env, tag, r);
        } else if self.replicas.owns(tag) {
            self.replica_reply(tag, r);
        } else if self.ro_control_reply(env, tag, &r) {
            // A revocation of read-only copies (readonly.rs).
        } else {
            self.vacuum_control_reply(tag, &r);
        }
    }

    fn trans3_update_done(&mut self, env: &Env, tag: u64, r: Result<ReplyControl, String>) {
        if env.node.in_recovery() {
            info!("ctdb_persistent_callback: ignoring reply during recovery");
            return;
        }
        let Some(t) = self.trans3.by_tag.get_mut(&tag) else {
            return;
        };
        match r {
            Ok(rc) if rc.status == 0 => {
                t.pending = t.pending.saturating_sub(1);
                if t.pending == 0
                    && let Some(t) = self.trans3.by_tag.remove(&tag)
                {
                    self.reply(t.to, ReplyControl::ok(ControlReply::Trans3Commit));
                }
            }
            other => {
                let why = match other {
                    Ok(rc) => format!(
                        "status {} ({})",
                        rc.status,
                        rc.errmsg.as_deref().unwrap_or("no error message given")
                    ),
                    Err(e) => e,
                };
                error!("ctdb_persistent_callback failed with {why}");
                t.failed += 1;
                // The recovery finishes the transaction, and the reply
                // goes out when it ends.
                self.recovery_active("a persistent update failed on a node");
            }
        }
    }

    pub(crate) fn trans3_timeouts(&mut self, env: &Env, now: Instant) {
        if env.node.in_recovery() {
            return;
        }
        let due: Vec<u64> = self
            .trans3
            .by_tag
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(t) = self.trans3.by_tag.remove(&k) {
                self.reply(
                    t.to,
                    ReplyControl::error(1, "timeout in ctdb_persistent_state"),
                );
            }
        }
    }

    /// `END_RECOVERY`: commits interrupted by the recovery are answered.
    pub fn end_recovery(&mut self, env: &Env) {
        if env.node.in_recovery() {
            return;
        }
        self.seqwait_recovery_ended(env);
        for (_, t) in std::mem::take(&mut self.trans3.by_tag) {
            self.reply(
                t.to,
                ReplyControl::error(2, "trans3 commit ended by recovery"),
            );
        }
    }

    pub(crate) fn trans3_client_gone(&mut self, client: ClientId) {
        let gone: Vec<u64> = self
            .trans3
            .by_tag
            .iter()
            .filter(|(_, t)| t.client == client)
            .map(|(k, _)| *k)
            .collect();
        if !gone.is_empty() {
            error!("client exit while transaction commit active. Forcing recovery.");
            for k in gone {
                self.trans3.by_tag.remove(&k);
            }
            self.recovery_active("client exit while transaction commit active");
        }
    }

    /// `UPDATE_RECORD`: apply a commit's records in one tdb transaction,
    /// on a worker thread.
    pub(crate) fn update_record(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        rb: &RecBuffer,
    ) -> Option<ReplyControl> {
        if env.node.in_recovery() {
            info!("rejecting ctdb_control_update_record when recovery active");
            return Some(ReplyControl::error(-1, "recovery active"));
        }
        let Some(db) = self.dbs.get_mut(&rb.db_id) else {
            error!(
                "Unknown database 0x{:08x} in ctdb_control_update_record",
                rb.db_id
            );
            return Some(ReplyControl::status(-1));
        };
        if let Some(h) = &db.health {
            error!(
                "db({}) unhealthy in ctdb_control_update_record: {h}",
                db.name
            );
            return Some(ReplyControl::status(-1));
        }
        if db.flags & ctdb_protocol::types::db_flags::KEYED != 0
            && let Err(why) = super::inmemory::keyed_update_current(rb, env.generation())
        {
            error!("{}: {why}", db.name);
            return Some(ReplyControl::error(-1, why));
        }
        let Some(tdb) = db.tdb.take() else {
            // Group commit: into the batch being formed, else queued
            // behind the apply that has the handle (group_commit.rs).
            if !self.group.join(to, rb) {
                db.deferred.push_back(Work::Control {
                    ctx: *ctx,
                    req: req.clone(),
                    to,
                });
            }
            return None;
        };
        let replace_only = db.volatile();
        let db_id = db.id;
        self.apply_updates(env, db_id, tdb, replace_only, (to, rb.clone()));
        None
    }

    /// `GET_DB_SEQNUM`.
    pub(crate) fn get_db_seqnum(
        &mut self,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        db_id: u32,
    ) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get_mut(&db_id) else {
            error!("Unknown db 0x{db_id:08x}");
            return Some(ReplyControl::status(-1));
        };
        if !db.allow_access() {
            return Some(ReplyControl::error(-1, "database is frozen"));
        }
        if db.frozen() {
            return self.session_seqnum(db_id, to);
        }
        let Some(tdb) = db.tdb.as_ref() else {
            db.deferred.push_back(Work::Control {
                ctx: *ctx,
                req: req.clone(),
                to,
            });
            return None;
        };
        // Like every record access on the event loop: without waiting.
        let r = match tdb.lock_record_nonblock(SEQNUM_KEY) {
            Ok(rec) => rec.parse(parse_seqnum).map(|v| v.flatten().unwrap_or(0)),
            Err(e) => Err(e),
        };
        Some(match r {
            Ok(n) => ReplyControl::ok(ControlReply::GetDbSeqnum(n)),
            Err(tdb::Error::WouldBlock) => {
                db.wait_for_lock(
                    SEQNUM_KEY.to_vec(),
                    Work::Control {
                        ctx: *ctx,
                        req: req.clone(),
                        to,
                    },
                    &self.ev_tx,
                );
                return None;
            }
            Err(e) => ReplyControl::error(-1, e.to_string()),
        })
    }
}

/// The sequence number in a stored `__db_sequence_number__` value.
fn parse_seqnum(v: &[u8]) -> Option<u64> {
    ltdb::split(v)
        .and_then(|(_, d)| <[u8; 8]>::try_from(d).ok())
        .map(u64::from_le_bytes)
}

/// The database sequence number (0 if absent or malformed).
pub fn read_seqnum(tdb: &tdb::Tdb) -> tdb::Result<u64> {
    Ok(tdb.parse(SEQNUM_KEY, parse_seqnum)?.flatten().unwrap_or(0))
}

/// Applies an update buffer in one transaction. A record whose rsn is not
/// newer than the stored one (with different data) fails the whole update.
/// With `replace_only` (volatile databases) absent records are skipped.
/// (Batches of updates: [`group_commit::apply_batch`].)
pub fn apply_update(tdb: &tdb::Tdb, rb: &RecBuffer, replace_only: bool) -> Result<(), String> {
    let tx = tdb
        .transaction_start()
        .map_err(|e| format!("failed to start transaction: {e}"))?;
    let plan = group_commit::plan(&tx, rb, replace_only)?;
    group_commit::store(&tx, &plan)?;
    tx.commit()
        .map_err(|e| format!("failed to commit transaction: {e}"))
}

/// Strips read-only delegation flags from a pushed record header.
pub fn strip_ro(h: &mut LtdbHeader) {
    h.flags &= !ctdb_protocol::types::record_flags::RO_FLAGS;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rb(db: u32, recs: &[(&[u8], u64, &[u8])]) -> RecBuffer {
        let mut b = RecBuffer::new(db);
        for (k, rsn, v) in recs {
            let h = LtdbHeader {
                rsn: *rsn,
                dmaster: 0,
                ..Default::default()
            };
            b.add(0, Some(&h), k, v);
        }
        b
    }

    #[test]
    fn updates_apply_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tdb = tdb::OpenOptions::new()
            .create(true)
            .open(dir.path().join("p.tdb"))
            .unwrap();
        apply_update(
            &tdb,
            &rb(1, &[(b"a", 1, b"x"), (SEQNUM_KEY, 1, &1u64.to_le_bytes())]),
            false,
        )
        .unwrap();
        assert_eq!(read_seqnum(&tdb).unwrap(), 1);
        // An older rsn with different data fails, and nothing of the
        // update is left.
        let e = apply_update(&tdb, &rb(1, &[(b"b", 1, b"y"), (b"a", 1, b"z")]), false);
        assert!(e.is_err());
        assert!(tdb.fetch(b"b").unwrap().is_none());
        // The same rsn with the same data is fine.
        apply_update(&tdb, &rb(1, &[(b"a", 1, b"x")]), false).unwrap();
        // Replace-only skips absent records.
        apply_update(&tdb, &rb(1, &[(b"c", 1, b"w")]), true).unwrap();
        assert!(tdb.fetch(b"c").unwrap().is_none());
    }
}
