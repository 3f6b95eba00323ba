//! Record calls and record migration (volatile databases), as CTDB does
//! them.
//!
//! Every record has a data master (*dmaster*), the node holding its
//! current copy, and an *lmaster* fixed by its key's hash, which always
//! knows the dmaster. A client wanting a record it does not hold sends
//! `REQ_CALL` to its daemon, which forwards it to the node it believes
//! to be the dmaster; a node that is not the dmaster redirects the call to
//! the lmaster, which redirects it to the dmaster (each hop counted in
//! `hopcount`). The dmaster gives the record up with `REQ_DMASTER` to the
//! lmaster, which records the new dmaster and hands the record over with
//! `REPLY_DMASTER`; the requester stores it, runs the call, and answers its
//! client. A call for a record this node already masters is answered at
//! once.
//!
//! Record locks are only ever tried without blocking: work that finds a
//! record locked by a client waits behind its chain, in arrival order,
//! until a helper holding the lock hands the chain to the loop
//! ([`super::lockwait`]). While a migration for a key is in
//! flight from this node, other client calls for that key wait for it
//! (CTDB's `FetchCollapse`).
//!
//! This file has client calls, the dispatch of node packets and the
//! completion of calls; `migrate` serves other nodes' requests and the
//! hand-over of the dmaster role.

use std::collections::HashMap;

use bytes::Bytes;
use ctdb_protocol::call::{
    ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster, call_flags, call_id,
};
use ctdb_protocol::header::{HEADER_LEN, INVALID_GENERATION};
use ctdb_protocol::types::{LtdbHeader, node_flags};
use ctdb_protocol::{Body, Header, Marshal, Operation, Packet};
use tracing::{debug, error, info, warn};

use super::ltdb::{self, StoreCtx};
use super::readonly::{self, RoStep};
use super::{Databases, Env, Work};
use crate::messaging::ClientId;

mod migrate;

/// A call that has gone round this many nodes is looping: the cluster's
/// idea of where the record is must be inconsistent.
pub const MAX_HOPCOUNT: u32 = 1000;

/// A client call this node sent on to another node.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub db: u32,
    pub client: ClientId,
    pub client_reqid: u32,
    pub call: ReqCall,
    /// When the client's call arrived (`call_latency`).
    pub started: std::time::Instant,
}

/// Calls in flight from this node.
#[derive(Debug, Default)]
pub struct Calls {
    pending: HashMap<u32, PendingCall>,
    next_reqid: u32,
    /// Migrations in flight, by database and key; client calls for the
    /// same record wait here for them.
    inflight: HashMap<u32, HashMap<Vec<u8>, Vec<Work>>>,
    /// Records that just migrated here for local clients ([`super::pin`]).
    pub(crate) pins: super::pin::Pins,
}

impl Calls {
    fn new_reqid(&mut self) -> u32 {
        loop {
            self.next_reqid = self.next_reqid.wrapping_add(1);
            let r = self.next_reqid;
            if r != 0 && !self.pending.contains_key(&r) {
                return r;
            }
        }
    }

    /// Number of calls waiting for another node.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The call waiting for another node under request id `reqid`.
    pub(crate) fn pending_call(&self, reqid: u32) -> Option<&PendingCall> {
        self.pending.get(&reqid)
    }
}

/// The outcome of trying a record lock.
enum Try<T> {
    Done(T),
    Busy,
    Failed(String),
}

/// Runs `f` with `key`'s record locked, without waiting for the lock.
fn with_record<R>(
    tdb: &tdb::Tdb,
    key: &[u8],
    f: impl FnOnce(&tdb::RecordLock<'_, '_>) -> tdb::Result<R>,
) -> Try<R> {
    match tdb.lock_record_nonblock(key) {
        Ok(rec) => match f(&rec) {
            Ok(v) => Try::Done(v),
            Err(e) => Try::Failed(e.to_string()),
        },
        Err(tdb::Error::WouldBlock) => Try::Busy,
        Err(e) => Try::Failed(e.to_string()),
    }
}

/// Runs a call on a record this node masters: computes the reply, then
/// stores the record back (as CTDB always does, which moves its rsn).
/// Returns the call's status and reply data.
fn call_local(
    ctx: &StoreCtx,
    rec: &tdb::RecordLock<'_, '_>,
    header: &mut LtdbHeader,
    data: &[u8],
    callid: u32,
) -> tdb::Result<(i32, Vec<u8>)> {
    let reply = match callid {
        call_id::NULL_FUNC => Vec::new(),
        call_id::FETCH_FUNC => data.to_vec(),
        call_id::FETCH_WITH_HEADER_FUNC => {
            let mut v = ltdb::header_bytes(header).to_vec();
            v.extend_from_slice(data);
            v
        }
        other => {
            debug!("unknown call id 0x{other:08x}");
            return Ok((-1, Vec::new()));
        }
    };
    ltdb::store(ctx, rec, header, data)?;
    Ok((0, reply))
}

/// What a client call turned into.
enum ClientStep {
    Answered(i32, Vec<u8>),
    Remote(u32),
    /// Read-only delegations decided otherwise ([`readonly`]).
    Ro(RoStep),
}

/// What a node's `REQ_CALL` turned into.
enum NodeStep {
    Redirect(u32),
    /// The record went to the requester; this packet carries it on.
    Migrated(Bytes, u32),
    Answered(i32, Vec<u8>),
    /// Read-only delegations decided otherwise ([`readonly`]).
    Ro(RoStep),
}

impl Databases {
    fn store_ctx(env: &Env, volatile: bool, key: &[u8]) -> StoreCtx {
        StoreCtx {
            pnn: env.pnn(),
            lmaster: ltdb::lmaster(&env.node.vnnmap, key),
            volatile,
        }
    }

    /// A `REQ_CALL` from a local client.
    pub fn client_call(&mut self, env: &Env, client: ClientId, reqid: u32, mut call: ReqCall) {
        let pnn = env.pnn();
        let db_id = call.db_id;
        let started = std::time::Instant::now();
        self.stats.bump(|s| s.total_calls += 1);
        let collapse = env.tunables.fetch_collapse == 1;
        // No read-only delegations without a tracking database.
        if !self.ro_enabled(db_id) {
            call.flags &= !call_flags::WANT_READONLY;
        }
        let want_ro = call.flags & call_flags::WANT_READONLY != 0;
        let step = {
            let Some(db) = self.dbs.get_mut(&db_id) else {
                warn!("Unknown database in request. db_id==0x{db_id:08x}");
                self.client_error(
                    env,
                    client,
                    reqid,
                    -1,
                    &format!("Unknown database in request. db_id==0x{db_id:08x}"),
                );
                return;
            };
            let key = call.key.clone();
            if db.tdb.is_none() {
                db.deferred.push_back(Work::Client {
                    client,
                    reqid,
                    call,
                });
                return;
            }
            if db.waiting_on(&key) {
                db.wait_for_lock(
                    key,
                    Work::Client {
                        client,
                        reqid,
                        call,
                    },
                    &self.ev_tx,
                );
                return;
            }
            if collapse
                && let Some(q) = self
                    .calls
                    .inflight
                    .get_mut(&db_id)
                    .and_then(|m| m.get_mut(key.as_slice()))
            {
                q.push(Work::Client {
                    client,
                    reqid,
                    call,
                });
                return;
            }
            let ctx = Self::store_ctx(env, db.volatile(), &key);
            let persistent = db.persistent();
            let callid = readonly::sent_call(&call).callid;
            let Some(tdb) = db.tdb.as_ref() else {
                return;
            };
            let ro = &mut self.ro;
            let r = with_record(tdb, &key, |rec| {
                let (mut h, data) = ltdb::fetch_or_initial(&ctx, persistent, rec)?;
                match ro.check(db_id, &ctx, rec, &mut h, &data, want_ro, None)? {
                    RoStep::Go => {}
                    other => return Ok(ClientStep::Ro(other)),
                }
                if h.dmaster == pnn {
                    let (st, reply) = call_local(&ctx, rec, &mut h, &data, callid)?;
                    Ok(ClientStep::Answered(st, reply))
                } else {
                    Ok(ClientStep::Remote(h.dmaster))
                }
            });
            match r {
                Try::Done(s) => s,
                Try::Busy => {
                    db.wait_for_lock(
                        key,
                        Work::Client {
                            client,
                            reqid,
                            call,
                        },
                        &self.ev_tx,
                    );
                    return;
                }
                Try::Failed(e) => {
                    error!("{}: record call failed: {e}", db.name);
                    self.client_error(env, client, reqid, -1, "ltdb fetch failed");
                    return;
                }
            }
        };
        match step {
            ClientStep::Answered(status, data) => {
                self.stats
                    .latency(|s| &mut s.call_latency, started.elapsed());
                self.calls.pins.join(db_id, &call.key, client);
                self.send_client(
                    env,
                    client,
                    reqid,
                    Body::ReplyCall(ReplyCall {
                        status,
                        data: readonly::client_reply(&call, data),
                    }),
                );
            }
            ClientStep::Ro(step) => {
                let key = call.key.clone();
                let w = Work::Client {
                    client,
                    reqid,
                    call,
                };
                self.ro_step(env, db_id, &key, w, step, None);
            }
            ClientStep::Remote(dest) => {
                let r = self.calls.new_reqid();
                if collapse {
                    self.calls
                        .inflight
                        .entry(db_id)
                        .or_default()
                        .entry(call.key.clone())
                        .or_default();
                }
                let req = readonly::sent_call(&call);
                self.calls.pending.insert(
                    r,
                    PendingCall {
                        db: db_id,
                        client,
                        client_reqid: reqid,
                        call,
                        started,
                    },
                );
                self.stats.bump(|s| s.pending_calls += 1);
                self.send_record_packet(env, db_id, dest, r, Body::ReqCall(req));
            }
        }
    }

    /// The generation the record packets of database `db` carry and must
    /// carry to be served: the one the database was last recovered (or
    /// attached) in, as CTDB stamps and checks `ctdb_db->generation`, not
    /// the node's. A recovery sets the node's new generation (`SETVNNMAP`)
    /// before it recovers the databases, and a database's own moves only
    /// when its recovery commits: in between, what this node sends about
    /// the database still carries the old one, so no node that has the new
    /// vnn map serves it, and no node takes packets of the new generation
    /// for a copy the recovery has yet to replace. Stamping the node's
    /// generation instead let packets sent in that window (a copy about to
    /// be replaced) reach a node that had not attached the database yet
    /// ("Unknown database in request"), or wait for a frozen handle and be
    /// applied after the recovery, over the recovered copy (a second data
    /// master holding an older rsn).
    pub(super) fn record_generation(&self, env: &Env, db: u32) -> u32 {
        self.dbs.get(&db).map_or(env.generation(), |d| d.generation)
    }

    /// Sends a record packet (`REQ_CALL`, `REPLY_CALL`, `REQ_DMASTER`,
    /// `REPLY_DMASTER`) of database `db`, in that database's generation
    /// ([`Databases::record_generation`]).
    pub(super) fn send_record_packet(
        &mut self,
        env: &Env,
        db: u32,
        dest: u32,
        reqid: u32,
        body: Body,
    ) {
        let mut h = Header::new(body.operation(), dest, env.pnn(), reqid);
        h.generation = self.record_generation(env, db);
        let b: Bytes = Packet::new(h, body).encode().into();
        self.effect(super::Effect::ToNode(dest, b));
    }

    fn client_error(&mut self, env: &Env, client: ClientId, reqid: u32, status: i32, msg: &str) {
        let mut m = msg.as_bytes().to_vec();
        m.push(0);
        self.send_client(
            env,
            client,
            reqid,
            Body::ReplyError(ReplyError { status, msg: m }),
        );
    }

    fn node_error(&mut self, env: &Env, dest: u32, reqid: u32, msg: &str) {
        let mut m = msg.as_bytes().to_vec();
        m.push(0);
        self.send_node(
            env,
            dest,
            reqid,
            Body::ReplyError(ReplyError { status: -1, msg: m }),
        );
    }

    /// A record packet from a node (or looped back from this one).
    pub fn node_packet(&mut self, env: &Env, pkt: Bytes) {
        let Ok((hdr, _)) = Header::pull(&pkt) else {
            return;
        };
        let end = (hdr.length as usize).clamp(HEADER_LEN, pkt.len());
        let body = &pkt[HEADER_LEN..end];
        if matches!(
            hdr.operation,
            Operation::ReqCall
                | Operation::ReplyCall
                | Operation::ReqDmaster
                | Operation::ReplyDmaster
        ) {
            if env.node.my_flags() & node_flags::BANNED != 0 {
                debug!(
                    "{:?} from node {} dropped: banned",
                    hdr.operation, hdr.srcnode
                );
                return;
            }
            // The invalid generation is an inactive node's (or a node's
            // before its first recovery): served by no node, though this
            // node's own may be the invalid one too.
            if hdr.generation != env.generation() || hdr.generation == INVALID_GENERATION {
                debug!(
                    "{:?} from node {} for generation {} dropped (ours is {})",
                    hdr.operation,
                    hdr.srcnode,
                    hdr.generation,
                    env.generation()
                );
                return;
            }
        }
        match hdr.operation {
            Operation::ReqCall => match ReqCall::pull(body) {
                Ok((c, _)) => self.node_req_call(env, &hdr, c, &pkt),
                Err(e) => warn!("malformed REQ_CALL from node {}: {e}", hdr.srcnode),
            },
            Operation::ReqDmaster => match ReqDmaster::pull(body) {
                Ok((c, _)) => self.node_req_dmaster(env, &hdr, c, &pkt),
                Err(e) => warn!("malformed REQ_DMASTER from node {}: {e}", hdr.srcnode),
            },
            Operation::ReplyDmaster => match ReplyDmaster::pull(body) {
                Ok((c, _)) => self.node_reply_dmaster(env, &hdr, c, &pkt),
                Err(e) => warn!("malformed REPLY_DMASTER from node {}: {e}", hdr.srcnode),
            },
            Operation::ReplyCall => match ReplyCall::pull(body) {
                // A read-only copy is stored here first (which may have to
                // wait for the record's lock).
                Ok((c, _)) if !self.ro_store_copy(env, hdr.reqid, &c, &pkt) => {}
                Ok((c, _)) => match self.calls.pending.remove(&hdr.reqid) {
                    Some(p) => self.complete_call(env, p, c.status, c.data),
                    None => debug!("reqid {} not found for REPLY_CALL", hdr.reqid),
                },
                Err(e) => warn!("malformed REPLY_CALL from node {}: {e}", hdr.srcnode),
            },
            Operation::ReplyError => match ReplyError::pull(body) {
                Ok((e, _)) => match self.calls.pending.remove(&hdr.reqid) {
                    Some(p) => {
                        let msg = String::from_utf8_lossy(&e.msg)
                            .trim_end_matches('\0')
                            .to_owned();
                        warn!("call failed on node {}: {msg}", hdr.srcnode);
                        self.call_done(&p);
                        self.client_error(env, p.client, p.client_reqid, e.status, &msg);
                        self.release_inflight(p.db, &p.call.key);
                    }
                    None => debug!("reqid {} not found for REPLY_ERROR", hdr.reqid),
                },
                Err(e) => warn!("malformed REPLY_ERROR from node {}: {e}", hdr.srcnode),
            },
            _ => {}
        }
    }

    /// Answers the client of a finished call and lets calls that waited for
    /// its migration run.
    fn complete_call(&mut self, env: &Env, p: PendingCall, status: i32, data: Vec<u8>) {
        self.call_done(&p);
        self.send_client(
            env,
            p.client,
            p.client_reqid,
            Body::ReplyCall(ReplyCall {
                status,
                data: readonly::client_reply(&p.call, data),
            }),
        );
        self.release_inflight(p.db, &p.call.key);
    }

    /// A client call that waited for another node is over.
    fn call_done(&self, p: &PendingCall) {
        self.stats.decrement(|s| &mut s.pending_calls);
        self.stats
            .latency(|s| &mut s.call_latency, p.started.elapsed());
    }

    fn release_inflight(&mut self, db: u32, key: &[u8]) {
        let Some(m) = self.calls.inflight.get_mut(&db) else {
            return;
        };
        if let Some(waiting) = m.remove(key) {
            self.ready.extend(waiting.into_iter().map(|w| (db, w)));
        }
        if m.is_empty() {
            self.calls.inflight.remove(&db);
        }
    }

    /// After a recovery, calls of database `id` still waiting for another
    /// node are sent again (to this node, which routes them anew) under new
    /// request ids; replies to the old ones are ignored.
    pub(crate) fn resend_calls(&mut self, env: &Env, id: u32) {
        let old: Vec<u32> = self
            .calls
            .pending
            .iter()
            .filter(|(_, p)| p.db == id)
            .map(|(r, _)| *r)
            .collect();
        let n = old.len();
        for r in old {
            let Some(p) = self.calls.pending.remove(&r) else {
                continue;
            };
            let nr = self.calls.new_reqid();
            let req = readonly::sent_call(&p.call);
            self.calls.pending.insert(nr, p);
            self.send_record_packet(env, id, env.pnn(), nr, Body::ReqCall(req));
        }
        let name = self
            .dbs
            .get(&id)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        info!(
            "Resent calls for database={name}, generation={}, count={n}",
            self.record_generation(env, id)
        );
    }

    pub(crate) fn calls_client_gone(&mut self, client: ClientId) {
        self.client_spoke(client);
        let gone: Vec<u32> = self
            .calls
            .pending
            .iter()
            .filter(|(_, p)| p.client == client)
            .map(|(r, _)| *r)
            .collect();
        for r in gone {
            if let Some(p) = self.calls.pending.remove(&r) {
                self.stats.decrement(|s| &mut s.pending_calls);
                self.release_inflight(p.db, &p.call.key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
