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

use std::collections::HashMap;

use bytes::Bytes;
use ctdb_protocol::call::{
    ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster, call_flags, call_id,
};
use ctdb_protocol::header::HEADER_LEN;
use ctdb_protocol::types::{LtdbHeader, node_flags, record_flags};
use ctdb_protocol::{Body, Header, Marshal, Operation, Packet};
use tracing::{debug, error, info, warn};

use super::ltdb::{self, StoreCtx};
use super::readonly::{self, RoStep};
use super::{Databases, Effect, Env, Work};
use crate::messaging::ClientId;

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
                self.send_node(env, dest, r, Body::ReqCall(req));
            }
        }
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
            if hdr.generation != env.generation() {
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

    /// Common checks before touching a record for a node packet: the
    /// database exists, its handle is here, and nothing for the key waits
    /// for a lock. `Err(())` when the packet was dealt with (queued).
    fn node_work_ready(&mut self, db_id: u32, key: &[u8], pkt: &Bytes) -> Result<(), ()> {
        let Some(db) = self.dbs.get_mut(&db_id) else {
            return Ok(());
        };
        if db.tdb.is_none() {
            db.deferred.push_back(Work::Node { pkt: pkt.clone() });
            return Err(());
        }
        if db.waiting_on(key) {
            db.wait_for_lock(key.to_vec(), Work::Node { pkt: pkt.clone() }, &self.ev_tx);
            return Err(());
        }
        Ok(())
    }

    fn node_req_call(&mut self, env: &Env, hdr: &Header, c: ReqCall, pkt: &Bytes) {
        let pnn = env.pnn();
        let src = hdr.srcnode;
        if !self.dbs.contains_key(&c.db_id) {
            warn!("Unknown database in request. db_id==0x{:08x}", c.db_id);
            self.node_error(
                env,
                src,
                hdr.reqid,
                &format!("Unknown database in request. db_id==0x{:08x}", c.db_id),
            );
            return;
        }
        if self.sticky_defer(c.db_id, &c.key, pkt) {
            return;
        }
        if self.node_work_ready(c.db_id, &c.key, pkt).is_err() {
            return;
        }
        if src != pnn
            && self
                .calls
                .pins
                .defer(c.db_id, &c.key, Work::Node { pkt: pkt.clone() })
                .is_ok()
        {
            // Just migrated here for local clients that have not looked
            // at it yet: this request waits for them.
            return;
        }
        let Some(db) = self.dbs.get_mut(&c.db_id) else {
            return;
        };
        let ctx = Self::store_ctx(env, db.volatile(), &c.key);
        let persistent = db.persistent();
        let generation = env.generation();
        let db_id = c.db_id;
        let Some(tdb) = db.tdb.as_ref() else {
            return;
        };
        let want_ro = c.flags & call_flags::WANT_READONLY != 0
            && db.flags & ctdb_protocol::types::db_flags::READONLY != 0;
        let ro = &mut self.ro;
        let r = with_record(tdb, &c.key, |rec| {
            let (mut h, data) = ltdb::fetch_or_initial(&ctx, persistent, rec)?;
            let node = Some((src, c.callid));
            match ro.check(db_id, &ctx, rec, &mut h, &data, want_ro, node)? {
                RoStep::Go => {}
                other => return Ok(NodeStep::Ro(other)),
            }
            if h.dmaster != pnn && h.flags & record_flags::RO_HAVE_DELEGATIONS == 0 {
                // Not ours: the lmaster knows, and the lmaster sends it on
                // to the dmaster.
                let lm = ctx.lmaster.unwrap_or(pnn);
                return Ok(NodeStep::Redirect(if lm == pnn { h.dmaster } else { lm }));
            }
            if src != pnn {
                // Ours, asked for by another node: migrate it there.
                if !data.is_empty() {
                    h.flags |= record_flags::MIGRATED_WITH_DATA;
                }
                let lm = ctx.lmaster.unwrap_or(pnn);
                let (dest, body) = if lm == pnn {
                    h.dmaster = src;
                    ltdb::store(&ctx, rec, &mut h, &data)?;
                    (
                        src,
                        Body::ReplyDmaster(ReplyDmaster {
                            db_id,
                            rsn: h.rsn,
                            key: c.key.clone(),
                            data,
                            record_flags: h.flags,
                        }),
                    )
                } else {
                    let body = Body::ReqDmaster(ReqDmaster {
                        db_id,
                        rsn: h.rsn,
                        dmaster: src,
                        key: c.key.clone(),
                        data: data.clone(),
                        record_flags: h.flags,
                    });
                    h.dmaster = src;
                    ltdb::store(&ctx, rec, &mut h, &data)?;
                    (lm, body)
                };
                let mut ph = Header::new(body.operation(), dest, pnn, hdr.reqid);
                ph.generation = generation;
                return Ok(NodeStep::Migrated(
                    Packet::new(ph, body).encode().into(),
                    dest,
                ));
            }
            // Our own call come back to us (a resend): answer it here.
            let (st, reply) = call_local(&ctx, rec, &mut h, &data, c.callid)?;
            Ok(NodeStep::Answered(st, reply))
        });
        let step = match r {
            Try::Done(s) => s,
            Try::Busy => {
                let key = c.key.clone();
                db.wait_for_lock(key, Work::Node { pkt: pkt.clone() }, &self.ev_tx);
                return;
            }
            Try::Failed(e) => {
                error!("{}: REQ_CALL failed: {e}", db.name);
                self.node_error(
                    env,
                    src,
                    hdr.reqid,
                    "ltdb fetch failed in ctdb_request_call",
                );
                return;
            }
        };
        if !matches!(step, NodeStep::Redirect(_) | NodeStep::Ro(_)) {
            // Hops the call took to find the record.
            self.stats.hops(&mut db.stats, c.hopcount);
        }
        if matches!(step, NodeStep::Migrated(..) | NodeStep::Answered(..)) {
            self.sticky_hops(env, db_id, &c.key, c.hopcount);
        }
        match step {
            NodeStep::Ro(step) => {
                let w = Work::Node { pkt: pkt.clone() };
                self.ro_step(env, db_id, &c.key, w, step, Some((src, hdr.reqid)));
            }
            NodeStep::Redirect(dest) => {
                let hop = c.hopcount + 1;
                if hop >= MAX_HOPCOUNT {
                    error!(
                        "REQ_CALL for db 0x{:08x} key hash 0x{:08x} from node {src} reached hopcount {hop}: record location is inconsistent",
                        c.db_id,
                        ltdb::key_hash(&c.key)
                    );
                    self.node_error(env, src, hdr.reqid, "hopcount limit reached");
                    self.recovery_active("call hopcount limit reached");
                    return;
                }
                if hop % 100 > 95 {
                    warn!(
                        "High hopcount {hop} dbid:0x{:08x} key:0x{:08x} reqid={} pnn:{pnn} src:{src} dst:{dest}",
                        c.db_id,
                        ltdb::key_hash(&c.key),
                        hdr.reqid
                    );
                }
                // Forwarded as the requester's packet.
                let mut fh = Header::new(Operation::ReqCall, dest, src, hdr.reqid);
                fh.generation = generation;
                let fwd = ReqCall { hopcount: hop, ..c };
                let b: Bytes = Packet::new(fh, Body::ReqCall(fwd)).encode().into();
                self.effect(Effect::ToNode(dest, b));
            }
            NodeStep::Migrated(b, dest) => {
                debug!("pnn {pnn} migrating record to {src} via {dest}");
                self.effect(Effect::ToNode(dest, b));
            }
            NodeStep::Answered(status, data) => {
                self.send_node(
                    env,
                    src,
                    hdr.reqid,
                    Body::ReplyCall(ReplyCall { status, data }),
                );
            }
        }
    }

    /// `REQ_DMASTER` at the lmaster: the old dmaster gives the record up.
    fn node_req_dmaster(&mut self, env: &Env, hdr: &Header, c: ReqDmaster, pkt: &Bytes) {
        let pnn = env.pnn();
        let src = hdr.srcnode;
        if !self.dbs.contains_key(&c.db_id) {
            self.node_error(
                env,
                src,
                hdr.reqid,
                &format!("Unknown database in request. db_id==0x{:08x}", c.db_id),
            );
            return;
        }
        if self.node_work_ready(c.db_id, &c.key, pkt).is_err() {
            return;
        }
        let Some(db) = self.dbs.get_mut(&c.db_id) else {
            return;
        };
        let ctx = Self::store_ctx(env, db.volatile(), &c.key);
        if ctx.lmaster != Some(pnn) {
            error!(
                "dmaster request to non-lmaster db={} lmaster={:?} gen={} curgen={}",
                db.name,
                ctx.lmaster,
                hdr.generation,
                env.generation()
            );
            self.recovery_active("REQ_DMASTER to a node that is not lmaster");
            return;
        }
        let persistent = db.persistent();
        let Some(tdb) = db.tdb.as_ref() else {
            return;
        };
        let generation = env.generation();
        // What to do once the lock is released.
        enum Step {
            Bad,
            Become(Option<PendingCall>, i32, Vec<u8>),
            Reply(Bytes, u32),
        }
        let pending = &mut self.calls.pending;
        let r = with_record(tdb, &c.key, |rec| {
            let (mut h, _) = ltdb::fetch_or_initial(&ctx, persistent, rec)?;
            if h.dmaster != src {
                error!(
                    "pnn {pnn} dmaster request for new-dmaster {} from non-master {src} real-dmaster={} key 0x{:08x} dbid 0x{:08x} c->rsn={} header.rsn={} reqid={}",
                    c.dmaster,
                    h.dmaster,
                    ltdb::key_hash(&c.key),
                    c.db_id,
                    c.rsn,
                    h.rsn,
                    hdr.reqid
                );
                if h.rsn != 0 || h.dmaster != pnn {
                    return Ok(Step::Bad);
                }
            }
            if h.rsn > c.rsn {
                warn!(
                    "pnn {pnn} dmaster request with older RSN key 0x{:08x}: {} < {}",
                    ltdb::key_hash(&c.key),
                    c.rsn,
                    h.rsn
                );
            }
            h.rsn = c.rsn;
            h.flags = c.record_flags;
            if c.dmaster == pnn {
                let (p, st, reply) = become_dmaster(
                    &ctx,
                    rec,
                    pending,
                    hdr.reqid,
                    &c.key,
                    &c.data,
                    c.rsn,
                    c.record_flags,
                )?;
                return Ok(Step::Become(p, st, reply));
            }
            h.dmaster = c.dmaster;
            ltdb::store(&ctx, rec, &mut h, &c.data)?;
            let body = Body::ReplyDmaster(ReplyDmaster {
                db_id: c.db_id,
                rsn: h.rsn,
                key: c.key.clone(),
                data: c.data.clone(),
                record_flags: h.flags,
            });
            let mut ph = Header::new(Operation::ReplyDmaster, c.dmaster, pnn, hdr.reqid);
            ph.generation = generation;
            Ok(Step::Reply(
                Packet::new(ph, body).encode().into(),
                c.dmaster,
            ))
        });
        let step = match r {
            Try::Done(s) => s,
            Try::Busy => {
                db.wait_for_lock(c.key.clone(), Work::Node { pkt: pkt.clone() }, &self.ev_tx);
                return;
            }
            Try::Failed(e) => {
                error!("{}: REQ_DMASTER failed: {e}", db.name);
                self.recovery_active("failed to store a migrated record");
                return;
            }
        };
        match step {
            Step::Bad => {
                error!("ctdb_req_dmaster from non-master. Force a recovery.");
                self.recovery_active("REQ_DMASTER from a node that is not dmaster");
            }
            Step::Become(p, st, reply) => {
                self.sticky_became_dmaster(env, c.db_id, &c.key);
                self.became_dmaster(env, p, st, reply)
            }
            Step::Reply(b, dest) => self.effect(Effect::ToNode(dest, b)),
        }
    }

    /// `REPLY_DMASTER`: the record arrives here, where a call waits for it.
    fn node_reply_dmaster(&mut self, env: &Env, hdr: &Header, c: ReplyDmaster, pkt: &Bytes) {
        if !self.dbs.contains_key(&c.db_id) {
            error!("Unknown db_id 0x{:x} in ctdb_reply_dmaster", c.db_id);
            return;
        }
        if self.node_work_ready(c.db_id, &c.key, pkt).is_err() {
            return;
        }
        let Some(db) = self.dbs.get_mut(&c.db_id) else {
            return;
        };
        let ctx = Self::store_ctx(env, db.volatile(), &c.key);
        let Some(tdb) = db.tdb.as_ref() else {
            return;
        };
        let pending = &mut self.calls.pending;
        let r = with_record(tdb, &c.key, |rec| {
            become_dmaster(
                &ctx,
                rec,
                pending,
                hdr.reqid,
                &c.key,
                &c.data,
                c.rsn,
                c.record_flags,
            )
        });
        match r {
            Try::Done((p, st, reply)) => {
                self.sticky_became_dmaster(env, c.db_id, &c.key);
                self.became_dmaster(env, p, st, reply)
            }
            Try::Busy => {
                db.wait_for_lock(c.key.clone(), Work::Node { pkt: pkt.clone() }, &self.ev_tx)
            }
            Try::Failed(e) => {
                error!("{}: storing a migrated record failed: {e}", db.name);
                self.recovery_active("failed to store a migrated record");
            }
        }
    }

    fn became_dmaster(&mut self, env: &Env, p: Option<PendingCall>, status: i32, reply: Vec<u8>) {
        if let Some(p) = p {
            if let Some(db) = self.dbs.get_mut(&p.db).filter(|d| d.volatile()) {
                let (counts, stats) = (&mut db.migrations, &mut db.stats);
                self.stats.migrated(counts, &db.name, stats, &p.call.key);
            }
            // The client has yet to lock the record: keep it here until it
            // has had its look.
            self.calls
                .pins
                .pin(p.db, &p.call.key, p.client, std::time::Instant::now());
            self.complete_call(env, p, status, reply);
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
            self.send_node(env, env.pnn(), nr, Body::ReqCall(req));
        }
        let name = self
            .dbs
            .get(&id)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        info!(
            "Resent calls for database={name}, generation={}, count={n}",
            env.generation()
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

/// This node becomes the record's dmaster: store it (its rsn moves), and if
/// a call of ours waits for it, run that call. Returns the call (if any)
/// with its status and reply.
#[allow(clippy::too_many_arguments)]
fn become_dmaster(
    ctx: &StoreCtx,
    rec: &tdb::RecordLock<'_, '_>,
    pending: &mut HashMap<u32, PendingCall>,
    reqid: u32,
    key: &[u8],
    data: &[u8],
    rsn: u64,
    flags: u32,
) -> tdb::Result<(Option<PendingCall>, i32, Vec<u8>)> {
    let mut h = LtdbHeader {
        rsn,
        dmaster: ctx.pnn,
        reserved1: 0,
        flags,
    };
    // A vacuum migration marks the record for the store rules (an empty
    // record never migrated with data is deleted on the lmaster).
    if pending
        .get(&reqid)
        .is_some_and(|p| p.call.flags & call_flags::VACUUM_MIGRATION != 0)
    {
        h.flags |= record_flags::VACUUM_MIGRATED;
    }
    ltdb::store(ctx, rec, &mut h, data)?;
    let Some(p) = pending.get(&reqid) else {
        error!(
            "pnn {} Invalid reqid {reqid} in ctdb_become_dmaster",
            ctx.pnn
        );
        return Ok((None, 0, Vec::new()));
    };
    if p.call.key != key {
        error!("Got bogus DMASTER packet reqid:{reqid}: key does not match");
        return Ok((None, 0, Vec::new()));
    }
    let Some(p) = pending.remove(&reqid) else {
        return Ok((None, 0, Vec::new()));
    };
    let (st, reply) = call_local(ctx, rec, &mut h, data, p.call.callid)?;
    Ok((Some(p), st, reply))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::db::Effect;
    use crate::node::NodeState;

    struct Fixture {
        _dir: tempfile::TempDir,
        dbs: Databases,
        node: NodeState,
        tunables: ctdb_protocol::types::TunableList,
        clients: BTreeMap<ClientId, crate::control::ClientInfo>,
    }

    /// Node 1 of three, generation 5, with volatile database `t.tdb`.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (dbs, _rx, node, _id) =
            crate::db::test_layer::node1_of_three(dir.path(), "t.tdb", false);
        Fixture {
            _dir: dir,
            dbs,
            node,
            tunables: crate::tunables::defaults(),
            clients: BTreeMap::new(),
        }
    }

    impl Fixture {
        fn packet(&mut self, src: u32, generation: u32, call: ReqCall) -> Vec<Effect> {
            let mut h = Header::new(Operation::ReqCall, 1, src, 77);
            h.generation = generation;
            let b: Bytes = Packet::new(h, Body::ReqCall(call)).encode().into();
            let env = Env {
                node: &self.node,
                tunables: &self.tunables,
                clients: &self.clients,
            };
            self.dbs.node_packet(&env, b);
            self.dbs.take_effects()
        }
    }

    /// A key whose lmaster (in a map of 0, 1, 2) is node `lm`.
    fn key_for(lm: u32) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("key{i}").into_bytes())
            .find(|k| ltdb::key_hash(k) % 3 == lm)
            .unwrap()
    }

    fn decode(e: &Effect) -> (u32, Packet) {
        match e {
            Effect::ToNode(d, b) => (*d, Packet::decode_request(b).unwrap()),
            other => panic!("unexpected effect {other:?}"),
        }
    }

    #[test]
    fn calls_are_redirected_through_the_lmaster_until_the_hop_limit() {
        let mut f = fixture();
        let db_id = ltdb::db_id("t.tdb");
        let key = key_for(2);
        let call = ReqCall {
            flags: call_flags::IMMEDIATE_MIGRATION,
            db_id,
            callid: call_id::NULL_FUNC,
            hopcount: 3,
            key: key.clone(),
            calldata: Vec::new(),
        };
        // Not ours: on to the lmaster, one hop more, as the requester's.
        let fx = f.packet(0, 5, call.clone());
        assert_eq!(fx.len(), 1);
        let (dest, p) = decode(&fx[0]);
        assert_eq!((dest, p.header.srcnode, p.header.reqid), (2, 0, 77));
        let Body::ReqCall(c) = p.body else { panic!() };
        assert_eq!(c.hopcount, 4);
        // A call that went round too often: an error and a recovery.
        let fx = f.packet(
            0,
            5,
            ReqCall {
                hopcount: MAX_HOPCOUNT - 1,
                ..call.clone()
            },
        );
        assert!(matches!(&fx[1], Effect::RecoveryActive(_)), "{fx:?}");
        let (dest, p) = decode(&fx[0]);
        assert_eq!(dest, 0);
        assert!(matches!(p.body, Body::ReplyError(_)));
        // Another generation's packets are dropped.
        assert!(f.packet(0, 4, call.clone()).is_empty());
        // An unknown database gets an error reply.
        let fx = f.packet(
            2,
            5,
            ReqCall {
                db_id: 0x1234,
                ..call
            },
        );
        let (dest, p) = decode(&fx[0]);
        assert_eq!(dest, 2);
        assert!(matches!(p.body, Body::ReplyError(_)));
    }

    #[test]
    fn a_record_pinned_for_a_local_client_waits_until_it_speaks() {
        let mut f = fixture();
        let db_id = ltdb::db_id("t.tdb");
        let key = key_for(1);
        // As if a migration had just brought the record here for client 5
        // (the pin's limit far enough ahead that the test's own pace cannot
        // reach it: a pin past its limit holds nothing).
        let later = std::time::Instant::now() + std::time::Duration::from_secs(600);
        f.dbs.calls.pins.pin(db_id, &key, 5, later);
        let call = ReqCall {
            flags: call_flags::IMMEDIATE_MIGRATION,
            db_id,
            callid: call_id::NULL_FUNC,
            hopcount: 1,
            key: key.clone(),
            calldata: Vec::new(),
        };
        // Node 2's request waits: nothing is sent.
        assert!(f.packet(2, 5, call).is_empty());
        assert!(!f.dbs.has_ready());
        // Another client speaking changes nothing; client 5 ends the pin.
        f.dbs.client_spoke(6);
        assert!(!f.dbs.has_ready());
        f.dbs.client_spoke(5);
        assert!(f.dbs.has_ready());
        let env = Env {
            node: &f.node,
            tunables: &f.tunables,
            clients: &f.clients,
        };
        f.dbs.run_ready(&env);
        let fx = f.dbs.take_effects();
        let (dest, p) = decode(&fx[0]);
        assert_eq!(dest, 2);
        assert!(matches!(p.body, Body::ReplyDmaster(_)), "{:?}", p.body);
    }

    #[test]
    fn the_lmaster_migrates_a_new_record_to_the_caller() {
        let mut f = fixture();
        let db_id = ltdb::db_id("t.tdb");
        let key = key_for(1);
        let fx = f.packet(
            2,
            5,
            ReqCall {
                flags: call_flags::IMMEDIATE_MIGRATION,
                db_id,
                callid: call_id::NULL_FUNC,
                hopcount: 1,
                key: key.clone(),
                calldata: Vec::new(),
            },
        );
        let (dest, p) = decode(&fx[0]);
        assert_eq!(dest, 2);
        let Body::ReplyDmaster(r) = p.body else {
            panic!("{:?}", p.body)
        };
        // Created here (rsn 1), handed over with that rsn.
        assert_eq!((r.rsn, r.key.as_slice()), (1, key.as_slice()));
        let tdb = f.dbs.dbs[&db_id].tdb.as_ref().unwrap();
        let (h, _) = ltdb::split(&tdb.fetch(&key).unwrap().unwrap())
            .map(|(h, d)| (h, d.to_vec()))
            .unwrap();
        assert_eq!((h.dmaster, h.rsn), (2, 1));
        assert_eq!(f.dbs.dbs[&db_id].stats.hop_count_bucket[1], 1);
    }
}
