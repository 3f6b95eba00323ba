//! Partially replicated volatile databases (ctdb-rs extension, issue 21).
//!
//! A database attached with `DB_ATTACH_EXT` flags
//! [`db_flags::PARTIAL_REPLICA`] is volatile in every respect (records
//! live on their data master and migrate on demand, vacuuming, volatile
//! recovery), and each record also has a *replica*: a copy, with its
//! header, on a second node, stored like the copies migrations leave
//! behind (data master field naming the real data master, so the copy is
//! never served as authoritative).
//!
//! **Where.** The replica of a record mastered on node D goes to the
//! record's lmaster, or, when D is the lmaster, to the node after it in
//! the vnn map. The lmaster already holds a copy of every record it routed
//! a migration for (CTDB's `REQ_DMASTER` path stores the data there), so a
//! replica usually replaces a stale copy rather than adding one, keys
//! spread the replica traffic of one node over all the others by hash, and
//! the copy's header (data master D) is exactly what the lmaster must
//! record anyway.
//!
//! **When.** On a client's `DB_SYNC_RECORD` (the client crate's
//! `Db::sync`): under the record lock on D, the record's rsn `r` moves to
//! `r + 2` locally and the copy is sent with rsn `r + 1`; the client is
//! answered once the replica node stored it. A migration away from D
//! refreshes the replica by itself: D keeps the record's data with the rsn
//! it had (CTDB's rule) and the new data master stores rsn + 1.
//!
//! **Why the rsn makes recovery restore it.** Both recovery helpers keep,
//! per record, the copy with the highest rsn (volatile recovery; the kind
//! has no persistent bit). While D lives its copy has the highest rsn of
//! all (every copy elsewhere was made from a lower rsn of D, or of an
//! earlier master): D's later unsynced writes win over the replica, as
//! they would without it. When D dies, the replica, made from D's rsn at
//! the sync, is higher than any copy made before it (migrations and
//! recoveries only ever copy a lower or equal rsn of the master of the
//! time), so it is restored. A replica node keeps a copy only when its rsn
//! is higher than the local copy's (a late replica never overwrites a
//! newer copy), never for a record it masters, and only in the generation
//! the sync was made in (a replica delayed past a recovery would name a
//! data master the recovery has replaced).

use std::collections::HashMap;

use ctdb_protocol::types::{
    KeyData, LtdbHeader, REPLICA_ERR_PREFIX, RecBuffer, ReplicaStatus, ReplicaStore,
    SYNC_NOT_DMASTER, VnnMap, db_flags, record_flags,
};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{debug, error, warn};

use super::{Databases, Effect, Env, Work, ltdb};
use crate::control::ControlCtx;
use crate::server::ReplyTo;

/// Counters of one database.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    syncs: u64,
    sync_failures: u64,
    stored: u64,
    stale: u64,
}

/// A sync waiting for its replica node.
#[derive(Debug)]
struct SyncWait {
    db: u32,
    dest: u32,
    to: ReplyTo,
}

/// The layer's replica state.
#[derive(Debug, Default)]
pub struct Replicas {
    waits: HashMap<u64, SyncWait>,
    counts: HashMap<u32, Counts>,
}

impl Replicas {
    /// Whether `tag` is a replica store this layer sent.
    pub fn owns(&self, tag: u64) -> bool {
        self.waits.contains_key(&tag)
    }
}

/// The node that holds the replicas of the records node `dmaster` masters
/// whose lmaster is `lmaster`: the lmaster, or the node after it in the vnn
/// map when it is the data master itself. `None` with a one-node map.
pub fn replica_node(vnnmap: &VnnMap, lmaster: u32, dmaster: u32) -> Option<u32> {
    if lmaster != dmaster {
        return Some(lmaster);
    }
    let map = &vnnmap.map;
    let at = map.iter().position(|&p| p == lmaster)?;
    (1..map.len())
        .map(|i| map[(at + i) % map.len()])
        .find(|&p| p != dmaster)
}

fn err(msg: impl std::fmt::Display) -> ReplyControl {
    ReplyControl::error(-1, format!("{REPLICA_ERR_PREFIX} {msg}"))
}

/// What the sync found under the record lock.
enum SyncStep {
    NotHere,
    Send(u32, LtdbHeader, Vec<u8>),
}

/// Under the record lock on the node asked to sync: a record mastered
/// here moves its rsn on by 2 and its copy, one below, is what the replica
/// node gets.
fn sync_locked(
    rec: &tdb::RecordLock<'_, '_>,
    pnn: u32,
    dest: Option<u32>,
) -> Result<SyncStep, String> {
    let (mut h, data) = match ltdb::read(rec).map_err(|e| format!("read: {e}"))? {
        Some((h, d)) if h.dmaster == pnn => (h, d),
        _ => return Ok(SyncStep::NotHere),
    };
    let dest = dest.ok_or("no other node in the vnn map to hold a replica")?;
    let mut copy = h;
    copy.rsn = h.rsn + 1;
    copy.flags |= record_flags::MIGRATED_WITH_DATA;
    h.rsn += 2;
    rec.storev(&[&ltdb::header_bytes(&h), &data], tdb::StoreMode::Replace)
        .map_err(|e| format!("store: {e}"))?;
    Ok(SyncStep::Send(dest, copy, data))
}

/// Under the record lock on the replica node: stores the copy when it is
/// newer than the local one and not of a record mastered here. True when
/// stored.
fn store_copy(
    rec: &tdb::RecordLock<'_, '_>,
    pnn: u32,
    mut h: LtdbHeader,
    data: &[u8],
) -> Result<bool, String> {
    if h.dmaster == pnn {
        return Ok(false);
    }
    match ltdb::read(rec).map_err(|e| format!("read: {e}"))? {
        Some((lh, _)) if lh.dmaster == pnn || lh.rsn >= h.rsn => return Ok(false),
        _ => {}
    }
    h.flags |= record_flags::MIGRATED_WITH_DATA;
    rec.storev(&[&ltdb::header_bytes(&h), data], tdb::StoreMode::Replace)
        .map_err(|e| format!("store: {e}"))?;
    Ok(true)
}

impl Databases {
    /// The database, if it is partially replicated (else the error
    /// reply).
    fn replica_db_check(&self, id: u32) -> Option<ReplyControl> {
        match self.dbs.get(&id) {
            None => Some(err(format!("unknown database 0x{id:08x}"))),
            Some(d) if d.flags & db_flags::PARTIAL_REPLICA == 0 => Some(err(format!(
                "database {} is not partially replicated (flags 0x{:x})",
                d.name, d.flags
            ))),
            Some(_) => None,
        }
    }

    /// `SET_DB_READONLY` / `SET_DB_STICKY` (`what`) on a partially
    /// replicated database: refused, as CTDB refuses them on persistent
    /// ones. A read-only delegation or a sticky record would keep copies
    /// on other nodes that a sync neither refreshes nor revokes, and the
    /// guarantee of the kind (the replica is the newest copy off the
    /// master) is argued without them. `None` for any other database.
    pub(crate) fn replica_refuses(&self, id: u32, what: &str) -> Option<ReplyControl> {
        let d = self
            .dbs
            .get(&id)
            .filter(|d| d.flags & db_flags::PARTIAL_REPLICA != 0)?;
        error!("Partially replicated databases do not support {what} flag");
        Some(err(format!(
            "database {} is partially replicated: it does not support the {what} flag",
            d.name
        )))
    }

    /// `DB_SYNC_RECORD` from a local client.
    pub(crate) fn sync_record(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        k: &KeyData,
    ) -> Option<ReplyControl> {
        if let Some(r) = self.replica_db_check(k.db_id) {
            return Some(r);
        }
        let pnn = env.pnn();
        let Some(lmaster) = ltdb::lmaster(&env.node.vnnmap, &k.key) else {
            return Some(err("no vnn map yet"));
        };
        let db = self.dbs.get_mut(&k.db_id)?;
        let w = Work::Control {
            ctx: *ctx,
            req: req.clone(),
            to,
        };
        if db.tdb.is_none() {
            // Frozen (recovery) or busy: after the handle returns.
            db.deferred.push_back(w);
            return None;
        }
        if db.waiting_on(&k.key) {
            db.wait_for_lock(k.key.clone(), w, &self.ev_tx);
            return None;
        }
        let dest = replica_node(&env.node.vnnmap, lmaster, pnn);
        let tdb = db.tdb.as_ref()?;
        let step = match tdb.lock_record_nonblock(&k.key) {
            Err(tdb::Error::WouldBlock) => None,
            Err(e) => Some(Err(format!("record lock: {e}"))),
            Ok(rec) => Some(sync_locked(&rec, pnn, dest)),
        };
        let step = match step {
            None => {
                db.wait_for_lock(k.key.clone(), w, &self.ev_tx);
                return None;
            }
            Some(Err(e)) => return Some(err(format!("{}: {e}", db.name))),
            Some(Ok(s)) => s,
        };
        let (dest, copy, data) = match step {
            SyncStep::NotHere => {
                return Some(ReplyControl {
                    status: SYNC_NOT_DMASTER,
                    data: Some(ControlReply::DbSyncRecord(pnn)),
                    errmsg: None,
                });
            }
            SyncStep::Send(d, c, data) => (d, c, data),
        };
        let mut recs = RecBuffer::new(k.db_id);
        recs.add(0, Some(&copy), &k.key, &data);
        let tag = self.new_tag();
        self.replicas.waits.insert(
            tag,
            SyncWait {
                db: k.db_id,
                dest,
                to,
            },
        );
        self.effect(Effect::Control {
            dest,
            req: ReqControl::new(ControlRequest::DbReplicaStore(ReplicaStore {
                generation: env.generation(),
                recs,
            })),
            tag: Some(tag),
        });
        None
    }

    /// The replica node answered a `DB_REPLICA_STORE` of a sync.
    pub(crate) fn replica_reply(&mut self, tag: u64, r: Result<ReplyControl, String>) {
        let Some(w) = self.replicas.waits.remove(&tag) else {
            return;
        };
        let c = self.replicas.counts.entry(w.db).or_default();
        let reply = match r {
            Ok(rc) if rc.status == 0 => {
                c.syncs += 1;
                ReplyControl::ok(ControlReply::DbSyncRecord(w.dest))
            }
            other => {
                c.sync_failures += 1;
                let why = match other {
                    Ok(rc) => format!(
                        "status {}{}",
                        rc.status,
                        rc.errmsg.map(|m| format!(" ({m})")).unwrap_or_default()
                    ),
                    Err(e) => e,
                };
                warn!(
                    "db 0x{:08x}: node {} did not store a replica: {why}",
                    w.db, w.dest
                );
                err(format!("node {} did not store the replica: {why}", w.dest))
            }
        };
        self.reply(w.to, reply);
    }

    /// `DB_REPLICA_STORE` from another node: keep each copy that is newer
    /// than the local one.
    pub(crate) fn replica_store(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        s: &ReplicaStore,
    ) -> Option<ReplyControl> {
        let id = s.recs.db_id;
        if let Some(r) = self.replica_db_check(id) {
            return Some(r);
        }
        if s.generation != env.generation() || env.node.in_recovery() {
            return Some(err(format!(
                "replica of generation {} refused in generation {}{}",
                s.generation,
                env.generation(),
                if env.node.in_recovery() {
                    " (in recovery)"
                } else {
                    ""
                }
            )));
        }
        let pnn = env.pnn();
        let db = self.dbs.get_mut(&id)?;
        let w = Work::Control {
            ctx: *ctx,
            req: req.clone(),
            to,
        };
        if db.tdb.is_none() {
            db.deferred.push_back(w);
            return None;
        }
        let (mut stored, mut stale) = (0u64, 0u64);
        for r in s.recs.iter() {
            let Ok((h, data)) = r.header() else {
                return Some(err("a record without a header"));
            };
            if db.waiting_on(r.key) {
                db.wait_for_lock(r.key.to_vec(), w, &self.ev_tx);
                return None;
            }
            let tdb = db.tdb.as_ref()?;
            let done = match tdb.lock_record_nonblock(r.key) {
                Err(tdb::Error::WouldBlock) => None,
                Err(e) => Some(Err(format!("record lock: {e}"))),
                Ok(rec) => Some(store_copy(&rec, pnn, h, data)),
            };
            match done {
                None => {
                    // Copies already stored are stale when it runs again.
                    db.wait_for_lock(r.key.to_vec(), w, &self.ev_tx);
                    return None;
                }
                Some(Err(e)) => return Some(err(format!("{}: {e}", db.name))),
                Some(Ok(false)) => stale += 1,
                Some(Ok(true)) => stored += 1,
            }
        }
        debug!(
            "db {}: replica from node {}: {stored} stored, {stale} stale",
            db.name, ctx.srcnode
        );
        let c = self.replicas.counts.entry(id).or_default();
        c.stored += stored;
        c.stale += stale;
        Some(ReplyControl::ok(ControlReply::DbReplicaStore))
    }

    /// `DB_REPLICA_STATUS`: this node's view of database `id`. Counting the
    /// local records reads the file under a shared all-record lock taken
    /// without waiting: while a client holds a record lock the answer is
    /// an error to try again.
    pub(crate) fn replica_status(&mut self, env: &Env, id: u32) -> ReplyControl {
        if let Some(r) = self.replica_db_check(id) {
            return r;
        }
        let pnn = env.pnn();
        let Some(db) = self.dbs.get(&id) else {
            return err(format!("unknown database 0x{id:08x}"));
        };
        let Some(tdb) = db.tdb.as_ref() else {
            return err(format!(
                "{}: busy (frozen or in an update), try again",
                db.name
            ));
        };
        let (mut mastered, mut copies) = (0u64, 0u64);
        let r = tdb.lockall_read_nonblock().and_then(|_all| {
            tdb.traverse_read(|_, v| {
                if let Some((h, _)) = ltdb::split(v) {
                    if h.dmaster == pnn {
                        mastered += 1;
                    } else {
                        copies += 1;
                    }
                }
                std::ops::ControlFlow::Continue(())
            })
        });
        match r {
            Ok(_) => {}
            Err(tdb::Error::WouldBlock) => {
                return err(format!(
                    "{}: a record is locked by a client, try again",
                    db.name
                ));
            }
            Err(e) => return err(format!("{}: traverse: {e}", db.name)),
        }
        // Where a record mastered here with this node as lmaster goes (the
        // others go to their lmaster).
        let replica_pnn = replica_node(&env.node.vnnmap, pnn, pnn).unwrap_or(u32::MAX);
        let c = self.replicas.counts.get(&id).copied().unwrap_or_default();
        ReplyControl::ok(ControlReply::DbReplicaStatus(Box::new(ReplicaStatus {
            pnn,
            replica_pnn,
            mastered,
            copies,
            syncs: c.syncs,
            sync_failures: c.sync_failures,
            stored: c.stored,
            stale: c.stale,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(m: &[u32]) -> VnnMap {
        VnnMap {
            generation: 2,
            map: m.to_vec(),
        }
    }

    #[test]
    fn the_replica_goes_to_the_lmaster_or_the_node_after_it() {
        let m = map(&[0, 1, 2]);
        assert_eq!(replica_node(&m, 1, 0), Some(1));
        assert_eq!(replica_node(&m, 2, 1), Some(2));
        assert_eq!(replica_node(&m, 0, 0), Some(1));
        assert_eq!(replica_node(&m, 2, 2), Some(0));
        assert_eq!(replica_node(&map(&[3]), 3, 3), None);
        // A data master outside the map (no lmaster capability).
        assert_eq!(replica_node(&map(&[0, 2]), 2, 1), Some(2));
    }
}
