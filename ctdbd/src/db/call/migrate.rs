//! A record migrating between nodes: a node's `REQ_CALL` served (or
//! passed on towards the lmaster and the dmaster), `REQ_DMASTER` at the
//! lmaster, `REPLY_DMASTER` at the node that asked, which becomes the
//! record's dmaster and answers its client.

use std::collections::HashMap;

use bytes::Bytes;
use ctdb_protocol::call::{ReplyCall, ReplyDmaster, ReqCall, ReqDmaster, call_flags};
use ctdb_protocol::types::{LtdbHeader, record_flags};
use ctdb_protocol::{Body, Header, Operation, Packet};
use tracing::{debug, error, warn};

use super::super::ltdb::{self, StoreCtx};
use super::super::readonly::RoStep;
use super::super::{Databases, Effect, Env, Work};
use super::{MAX_HOPCOUNT, NodeStep, PendingCall, Try, call_local, with_record};

impl Databases {
    /// Common checks before touching a record for a node packet: the
    /// database exists, its handle is here, and nothing for the key waits
    /// for a lock. `Err(())` when the packet was dealt with (queued).
    pub(super) fn node_work_ready(
        &mut self,
        db_id: u32,
        key: &[u8],
        pkt: &Bytes,
    ) -> Result<(), ()> {
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

    /// Whether a record packet for database `db_id` is of the generation
    /// that database was last recovered in ([`Databases::record_generation`]);
    /// one that is not is dropped on arrival, after the node's own
    /// generation was checked at the door. CTDB 4.17 checks only at the
    /// door, and discards a packet that waited for a record lock when its
    /// database's generation moved meanwhile ("Discarding previous
    /// generation lockwait packet"): stricter here, same effect, since no
    /// node sends a packet in a database's new generation before that
    /// database's recovery committed. Sent before the database's recovery,
    /// it may carry a copy the recovery replaced; the calls it belongs to
    /// are sent again when the database thaws.
    fn record_generation_current(&self, env: &Env, hdr: &Header, db_id: u32) -> bool {
        let ours = self.record_generation(env, db_id);
        if hdr.generation != ours {
            debug!(
                "{:?} {} from node {} for db 0x{db_id:08x} in generation {} dropped (the database's is {ours})",
                hdr.operation, hdr.reqid, hdr.srcnode, hdr.generation
            );
            return false;
        }
        true
    }

    pub(super) fn node_req_call(&mut self, env: &Env, hdr: &Header, c: ReqCall, pkt: &Bytes) {
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
        if !self.record_generation_current(env, hdr, c.db_id) {
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
        // The database's generation, which the request was checked to
        // carry: what this node sends on carries it too.
        let generation = db.generation;
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
                // Forwarded as the requester's packet, in its generation.
                let mut fh = Header::new(Operation::ReqCall, dest, src, hdr.reqid);
                fh.generation = hdr.generation;
                let fwd = ReqCall { hopcount: hop, ..c };
                let b: Bytes = Packet::new(fh, Body::ReqCall(fwd)).encode().into();
                self.effect(Effect::ToNode(dest, b));
            }
            NodeStep::Migrated(b, dest) => {
                debug!("pnn {pnn} migrating record to {src} via {dest}");
                self.effect(Effect::ToNode(dest, b));
            }
            NodeStep::Answered(status, data) => {
                self.send_record_packet(
                    env,
                    db_id,
                    src,
                    hdr.reqid,
                    Body::ReplyCall(ReplyCall { status, data }),
                );
            }
        }
    }

    /// `REQ_DMASTER` at the lmaster: the old dmaster gives the record up.
    pub(super) fn node_req_dmaster(&mut self, env: &Env, hdr: &Header, c: ReqDmaster, pkt: &Bytes) {
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
        if !self.record_generation_current(env, hdr, c.db_id) {
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
        let generation = db.generation;
        let Some(tdb) = db.tdb.as_ref() else {
            return;
        };
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
    pub(super) fn node_reply_dmaster(
        &mut self,
        env: &Env,
        hdr: &Header,
        c: ReplyDmaster,
        pkt: &Bytes,
    ) {
        if !self.dbs.contains_key(&c.db_id) {
            error!("Unknown db_id 0x{:x} in ctdb_reply_dmaster", c.db_id);
            return;
        }
        if !self.record_generation_current(env, hdr, c.db_id) {
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

    pub(super) fn became_dmaster(
        &mut self,
        env: &Env,
        p: Option<PendingCall>,
        status: i32,
        reply: Vec<u8>,
    ) {
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
