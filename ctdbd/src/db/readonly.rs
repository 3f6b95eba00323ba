//! Read-only delegations, as CTDB 4.17 hands them out and takes them back.
//!
//! A database marked read-only (`SET_DB_READONLY`) gets a *tracking
//! database*, `NAME.PNN.RO` beside its file (tdb, no locks, cleared by its
//! first opener, not synced), holding for each delegated key a bitmap of
//! the nodes that hold a read-only copy.
//!
//! A client that only wants to read a record it does not master asks its
//! daemon with `CTDB_WANT_READONLY`; the daemon turns the call into a
//! fetch with header and sends it to the data master. The data master,
//! instead of migrating the record, hands out a copy: the first time, it
//! moves the record's rsn on by three and sets `RO_HAVE_DELEGATIONS`; it
//! sets the caller's bit in the tracking database and answers with the
//! record, its header showing two less than the stored rsn and
//! `RO_HAVE_READONLY` instead of `RO_HAVE_DELEGATIONS`. The caller's
//! daemon stores that copy (if newer than its own); its clients may read
//! it under their chain lock without migrating anything.
//!
//! Any other call for the record on the data master (a write from a local
//! client, a migration asked for by another node) first revokes the
//! delegations: `RO_REVOKING_READONLY` is stored, every node of the
//! tracking entry gets an `UPDATE_RECORD` with the record's data and a
//! header one below the stored rsn, without read-only flags and with
//! `MIGRATED_WITH_DATA` (a node replaces only a copy it has), and the
//! calls for the record wait. When every node has answered (or the
//! control timed out), the record is locked again (through the lock
//! waits of [`super::lockwait`], never blocking the loop) and, if it
//! still carries the revoking and delegation flags at the expected rsn,
//! stored with the rsn moved on and `RO_REVOKE_COMPLETE` (or, if a node
//! failed, with the revoking flag cleared, so that the next call tries
//! again). The waiting calls then run: calls that want write access at
//! once, read-only requests a second later. The first call to find
//! `RO_REVOKE_COMPLETE` clears all read-only flags (the store moves the
//! rsn as usual) and the tracking entry, and counts a revoke.
//!
//! A recovery revokes every delegation implicitly: pushed records lose
//! their read-only flags, and at `DB_PUSH_CONFIRM` the tracking database
//! is wiped and revocations under way are abandoned.
//!
//! CTDB revokes in a forked child that blocks on the chain lock; here the
//! revocation is state on the loop (controls out, replies in) and the
//! final store waits for the record's lock like any other work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ctdb_protocol::call::{ReqCall, call_flags, call_id};
use ctdb_protocol::header::HEADER_LEN;
use ctdb_protocol::types::{LtdbHeader, RecBuffer, db_flags, record_flags};
use ctdb_protocol::{ControlReply, ControlRequest, Header, Marshal, ReplyControl, ReqControl};
use tracing::{debug, error, info, warn};

use super::ltdb::{self, StoreCtx};
use super::{Databases, Effect, Env, Work};

/// How long read-only requests that waited for a revocation wait more
/// after it, so that the writers they waited with go first (CTDB's grace).
pub const RO_GRACE: Duration = Duration::from_secs(1);

/// Read-only state of every database.
#[derive(Default)]
pub struct ReadOnly {
    dbs: HashMap<u32, RoDb>,
    /// `UPDATE_RECORD` controls of revocations, by tag.
    tags: HashMap<u64, (u32, Vec<u8>)>,
    /// Calls released by a revocation that wait out [`RO_GRACE`].
    delayed: Vec<(Instant, u32, Work)>,
    /// Counts not yet added to the database's and the daemon's statistics
    /// (`db_ro_delegations`/`total_ro_delegations`, and the revokes).
    counts: Vec<(u32, Count)>,
}

#[derive(Debug, Clone, Copy)]
enum Count {
    Delegation,
    Revoke,
}

struct RoDb {
    tracking: tdb::Tdb,
    revokes: HashMap<Vec<u8>, Revoke>,
}

/// A revocation under way.
struct Revoke {
    /// The header sent to the holders of copies.
    header: LtdbHeader,
    /// Controls not answered yet.
    pending: usize,
    /// A node failed (or did not answer).
    failed: bool,
    /// Calls for the record, in arrival order.
    waiting: Vec<Work>,
}

/// What the read-only rules decided for a call, under the record lock.
#[derive(Debug)]
pub enum RoStep {
    /// Go on with the call as usual.
    Go,
    /// The record is being revoked: the call waits for the revocation.
    Wait,
    /// The delegations must be revoked first (the revoking flag is
    /// stored); the call waits for it.
    Revoke { header: LtdbHeader, data: Vec<u8> },
    /// A read-only copy for the calling node: the `REPLY_CALL` data.
    Delegated(Vec<u8>),
}

/// The tracking bitmap with `pnn` added.
pub fn tracking_add(old: Option<Vec<u8>>, pnn: u32) -> Vec<u8> {
    let mut v = old.unwrap_or_default();
    let byte = (pnn / 8) as usize;
    if v.len() < byte + 1 {
        v.resize(byte + 1, 0);
    }
    v[byte] |= 1 << (pnn % 8);
    v
}

/// The nodes of a tracking bitmap, lowest first.
pub fn tracking_nodes(v: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, b) in v.iter().enumerate() {
        for j in 0..8 {
            if b & (1 << j) != 0 {
                out.push(i as u32 * 8 + j);
            }
        }
    }
    out
}

/// The `REQ_CALL` a client's call becomes (`hopcount` 0): one still asking
/// for a read-only copy (its database has a tracking database) is turned
/// into a fetch with header, as CTDB does.
pub fn sent_call(call: &ReqCall) -> ReqCall {
    let mut c = ReqCall {
        hopcount: 0,
        ..call.clone()
    };
    if c.flags & call_flags::WANT_READONLY != 0 {
        c.callid = call_id::FETCH_WITH_HEADER_FUNC;
    }
    c
}

/// The reply data a client's call (as it sent it) gets: a plain fetch sent
/// on as a fetch with header ([`sent_call`]) loses the header again.
pub fn client_reply(call: &ReqCall, data: Vec<u8>) -> Vec<u8> {
    if call.flags & call_flags::WANT_READONLY != 0 && call.callid == call_id::FETCH_FUNC {
        return data
            .get(LtdbHeader::WIRE_SIZE..)
            .unwrap_or_default()
            .to_vec();
    }
    data
}

impl ReadOnly {
    /// The read-only rules of CTDB's call handlers, run under the record
    /// lock after the record was read. `node` is the calling node and the
    /// call's function for a node's `REQ_CALL`, `None` for a local
    /// client's call. `h` is updated to what was stored.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        db: u32,
        ctx: &StoreCtx,
        rec: &tdb::RecordLock<'_, '_>,
        h: &mut LtdbHeader,
        data: &[u8],
        want_ro: bool,
        node: Option<(u32, u32)>,
    ) -> tdb::Result<RoStep> {
        use record_flags as rf;
        if h.flags & rf::RO_REVOKE_COMPLETE != 0 {
            h.flags &= !rf::RO_FLAGS;
            ltdb::store(ctx, rec, h, data)?;
            if let Some(r) = self.dbs.get(&db) {
                match r.tracking.delete(rec.key()) {
                    Ok(()) | Err(tdb::Error::NotFound) => {}
                    Err(e) => error!("Failed to clear out trackingdb record: {e}"),
                }
            }
            self.counts.push((db, Count::Revoke));
        }
        let active = self
            .dbs
            .get(&db)
            .is_some_and(|r| r.revokes.contains_key(rec.key()));
        if h.flags & rf::RO_REVOKING_READONLY != 0 {
            if active {
                return Ok(RoStep::Wait);
            }
            // The flag outlived its revocation (a failed final store):
            // revoke again.
            warn!(
                "record 0x{:08x} marked revoking without a revocation: revoking again",
                ltdb::key_hash(rec.key())
            );
            return Ok(RoStep::Revoke {
                header: *h,
                data: data.to_vec(),
            });
        }
        let have = rf::RO_HAVE_DELEGATIONS | rf::RO_HAVE_READONLY;
        match node {
            None => {
                if h.dmaster == ctx.pnn && !want_ro && h.flags & have != 0 {
                    return self.begin_revoke(ctx, rec, h, data);
                }
                Ok(RoStep::Go)
            }
            Some((src, callid)) => {
                if h.dmaster != ctx.pnn && h.flags & rf::RO_HAVE_DELEGATIONS == 0 {
                    // Not ours: the caller redirects.
                    return Ok(RoStep::Go);
                }
                if !want_ro && h.flags & have != 0 {
                    return self.begin_revoke(ctx, rec, h, data);
                }
                if !want_ro || callid != call_id::FETCH_WITH_HEADER_FUNC || src == ctx.pnn {
                    // (A read-only call of this node come back here is
                    // answered from the record itself.)
                    return Ok(RoStep::Go);
                }
                let Some(r) = self.dbs.get(&db) else {
                    return Ok(RoStep::Go);
                };
                if h.flags & rf::RO_HAVE_DELEGATIONS == 0 {
                    h.rsn += 3;
                    h.flags |= rf::RO_HAVE_DELEGATIONS;
                    ltdb::store(ctx, rec, h, data)?;
                }
                let bits = tracking_add(r.tracking.fetch(rec.key())?, src);
                r.tracking
                    .store(rec.key(), &bits, tdb::StoreMode::Replace)?;
                let mut copy = *h;
                copy.rsn = copy.rsn.saturating_sub(2);
                copy.flags |= rf::RO_HAVE_READONLY;
                copy.flags &= !rf::RO_HAVE_DELEGATIONS;
                let mut out = ltdb::header_bytes(&copy).to_vec();
                out.extend_from_slice(data);
                self.counts.push((db, Count::Delegation));
                Ok(RoStep::Delegated(out))
            }
        }
    }

    fn begin_revoke(
        &mut self,
        ctx: &StoreCtx,
        rec: &tdb::RecordLock<'_, '_>,
        h: &mut LtdbHeader,
        data: &[u8],
    ) -> tdb::Result<RoStep> {
        h.flags |= record_flags::RO_REVOKING_READONLY;
        ltdb::store(ctx, rec, h, data)?;
        Ok(RoStep::Revoke {
            header: *h,
            data: data.to_vec(),
        })
    }
}

impl Databases {
    /// `SET_DB_READONLY`: opens the tracking database and marks the
    /// database read-only (volatile databases only).
    pub(crate) fn set_db_readonly(&mut self, env: &Env, id: u32) -> ReplyControl {
        let Some(d) = self.dbs.get_mut(&id) else {
            error!("Unknown db 0x{id:08x}");
            return ReplyControl::error(-1, format!("unknown database 0x{id:08x}"));
        };
        if d.flags & db_flags::READONLY != 0 && self.ro.dbs.contains_key(&id) {
            return ReplyControl::ok(ControlReply::SetDbReadonly);
        }
        if !d.volatile() {
            error!("Non-volatile databases do not support readonly flag");
            return ReplyControl::error(-1, "Non-volatile databases do not support readonly flag");
        }
        let mut path = d.path.clone().into_os_string();
        path.push(".RO");
        let opened = tdb::OpenOptions::new()
            .create(true)
            .hash_size(env.tunables.database_hash_size.max(1))
            .no_lock(true)
            .clear_if_first(true)
            .no_sync(true)
            .mode(0o600)
            .open(&path);
        let tracking = match opened {
            Ok(t) => t,
            Err(e) => {
                error!(
                    "Failed to open/create the tracking database '{}': {e}",
                    path.to_string_lossy()
                );
                return ReplyControl::error(-1, format!("cannot open the tracking database: {e}"));
            }
        };
        info!("OPENED tracking database : '{}'", path.to_string_lossy());
        self.ro.dbs.insert(
            id,
            RoDb {
                tracking,
                revokes: HashMap::new(),
            },
        );
        d.flags |= db_flags::READONLY;
        info!("Readonly property set on DB {}", d.name);
        ReplyControl::ok(ControlReply::SetDbReadonly)
    }

    /// Whether a call asking for a read-only copy gets one from database
    /// `db` (CTDB ignores the wish without a tracking database).
    pub(crate) fn ro_enabled(&self, db: u32) -> bool {
        self.ro.dbs.contains_key(&db)
            && self
                .dbs
                .get(&db)
                .is_some_and(|d| d.flags & db_flags::READONLY != 0)
    }

    /// Carries out what [`ReadOnly::check`] decided for `w` (a call for
    /// `key`): wait for a revocation, start one, or send the read-only copy
    /// to the calling node (`reply_to`: its pnn and request id).
    pub(crate) fn ro_step(
        &mut self,
        env: &Env,
        db: u32,
        key: &[u8],
        w: Work,
        step: RoStep,
        reply_to: Option<(u32, u32)>,
    ) {
        match step {
            RoStep::Go => self.ready.push_back((db, w)),
            RoStep::Wait => self.ro_wait(db, key, w),
            RoStep::Revoke { header, data } => {
                self.start_revoke(env, db, key, header, data);
                self.ro_wait(db, key, w);
            }
            RoStep::Delegated(data) => {
                if let Some((dest, reqid)) = reply_to {
                    debug!(
                        "read-only copy of 0x{:08x} delegated to node {dest}",
                        ltdb::key_hash(key)
                    );
                    // In the database's generation, as every record
                    // packet (`Databases::send_record_packet`).
                    self.send_record_packet(
                        env,
                        db,
                        dest,
                        reqid,
                        ctdb_protocol::Body::ReplyCall(ctdb_protocol::call::ReplyCall {
                            status: 0,
                            data,
                        }),
                    );
                }
            }
        }
    }

    fn ro_wait(&mut self, db: u32, key: &[u8], w: Work) {
        match self
            .ro
            .dbs
            .get_mut(&db)
            .and_then(|r| r.revokes.get_mut(key))
        {
            Some(rv) => rv.waiting.push(w),
            // Nothing to wait for (abandoned meanwhile): run it again.
            None => self.ready.push_back((db, w)),
        }
    }

    /// Sends the revocation of `key`'s delegations to every node holding a
    /// copy. `stored` is the header stored with the revoking flag.
    fn start_revoke(&mut self, env: &Env, db: u32, key: &[u8], stored: LtdbHeader, data: Vec<u8>) {
        let Some(r) = self.ro.dbs.get_mut(&db) else {
            return;
        };
        if r.revokes.contains_key(key) {
            return;
        }
        let mut header = stored;
        header.flags &= !(record_flags::RO_REVOKING_READONLY
            | record_flags::RO_HAVE_DELEGATIONS
            | record_flags::RO_HAVE_READONLY);
        header.flags |= record_flags::MIGRATED_WITH_DATA;
        header.rsn = header.rsn.saturating_sub(1);
        let nodes: Vec<u32> = match r.tracking.fetch(key) {
            Ok(v) => tracking_nodes(&v.unwrap_or_default()),
            Err(e) => {
                error!("reading the tracking database: {e}");
                Vec::new()
            }
        };
        let nodes: Vec<u32> = nodes.into_iter().filter(|p| *p != env.pnn()).collect();
        debug!(
            "revoking read-only copies of 0x{:08x} on nodes {nodes:?}",
            ltdb::key_hash(key)
        );
        r.revokes.insert(
            key.to_vec(),
            Revoke {
                header,
                pending: nodes.len(),
                failed: false,
                waiting: Vec::new(),
            },
        );
        let mut rb = RecBuffer::new(db);
        rb.add(0, Some(&header), key, &data);
        for p in &nodes {
            let tag = self.new_tag();
            self.ro.tags.insert(tag, (db, key.to_vec()));
            self.effect(Effect::Control {
                dest: *p,
                req: ReqControl::new(ControlRequest::UpdateRecord(rb.clone())),
                tag: Some(tag),
            });
        }
        if nodes.is_empty() {
            self.revoke_finish(env, db, key.to_vec());
        }
    }

    /// A reply to a revocation's `UPDATE_RECORD`; false if `tag` is not
    /// one of those.
    pub(crate) fn ro_control_reply(
        &mut self,
        env: &Env,
        tag: u64,
        r: &Result<ReplyControl, String>,
    ) -> bool {
        let Some((db, key)) = self.ro.tags.remove(&tag) else {
            return false;
        };
        let Some(rv) = self
            .ro
            .dbs
            .get_mut(&db)
            .and_then(|d| d.revokes.get_mut(&key))
        else {
            return true;
        };
        match r {
            Ok(rc) if rc.status == 0 => {}
            Ok(rc) => {
                error!(
                    "Recv for revoke update record failed res:{} ({})",
                    rc.status,
                    rc.errmsg.as_deref().unwrap_or("")
                );
                rv.failed = true;
            }
            Err(e) => {
                error!("Recv for revoke update record failed: {e}");
                rv.failed = true;
            }
        }
        rv.pending = rv.pending.saturating_sub(1);
        if rv.pending == 0 {
            self.revoke_finish(env, db, key);
        }
        true
    }

    /// Every holder answered: store the outcome under the record's lock
    /// (waiting for it if a client holds it) and let the calls go.
    pub(crate) fn revoke_finish(&mut self, env: &Env, db_id: u32, key: Vec<u8>) {
        let Some(rv) = self.ro.dbs.get(&db_id).and_then(|d| d.revokes.get(&key)) else {
            return;
        };
        let (expect, failed) = (rv.header.rsn + 1, rv.failed);
        let Some(db) = self.dbs.get_mut(&db_id) else {
            self.revoke_done(db_id, &key, false);
            return;
        };
        let w = Work::RevokeFinish { key: key.clone() };
        if db.tdb.is_none() {
            db.deferred.push_back(w);
            return;
        }
        if db.waiting_on(&key) {
            db.wait_for_lock(key, w, &self.ev_tx);
            return;
        }
        let ctx = Self::ro_store_ctx(env, &key);
        let Some(tdb) = db.tdb.as_ref() else {
            return;
        };
        let r = match tdb.lock_record_nonblock(&key) {
            Ok(rec) => Some(finish_record(&ctx, &rec, expect, failed)),
            Err(tdb::Error::WouldBlock) => None,
            Err(e) => Some(Err(e.to_string())),
        };
        let Some(r) = r else {
            db.wait_for_lock(key, w, &self.ev_tx);
            return;
        };
        let ok = match r {
            Ok(()) => true,
            Err(e) => {
                error!(
                    "{}: finishing the revocation of read-only copies: {e}",
                    db.name
                );
                false
            }
        };
        // After a failed revocation every call waits a moment (CTDB runs
        // writers again at once there, which, with a node that cannot be
        // reached, only starts the next failing revocation).
        self.revoke_done(db_id, &key, ok && !failed);
    }

    fn ro_store_ctx(env: &Env, key: &[u8]) -> StoreCtx {
        StoreCtx {
            pnn: env.pnn(),
            lmaster: ltdb::lmaster(&env.node.vnnmap, key),
            volatile: true,
        }
    }

    /// The revocation of `key` is over: calls wanting write access run now,
    /// read-only requests after [`RO_GRACE`] (all of them after it when
    /// the revocation failed: `ok` false).
    fn revoke_done(&mut self, db: u32, key: &[u8], ok: bool) {
        let Some(rv) = self.ro.dbs.get_mut(&db).and_then(|d| d.revokes.remove(key)) else {
            return;
        };
        let later = Instant::now() + RO_GRACE;
        for w in rv.waiting {
            if ok && !wants_readonly(&w) {
                self.ready.push_back((db, w));
            } else {
                self.ro.delayed.push((later, db, w));
            }
        }
    }

    /// A `REPLY_CALL` for a call of ours: if it carries a read-only copy,
    /// store it here (when newer than ours). False when the packet had to
    /// wait for the record's lock (it comes back through the lock waits).
    pub(crate) fn ro_store_copy(
        &mut self,
        env: &Env,
        reqid: u32,
        c: &ctdb_protocol::call::ReplyCall,
        pkt: &bytes::Bytes,
    ) -> bool {
        let Some(p) = self.calls.pending_call(reqid) else {
            return true;
        };
        if sent_call(&p.call).callid != call_id::FETCH_WITH_HEADER_FUNC {
            return true;
        }
        let Some((h, data)) = ltdb::split(&c.data) else {
            return true;
        };
        if h.flags & record_flags::RO_HAVE_READONLY == 0 {
            return true;
        }
        let (db_id, key) = (p.db, p.call.key.clone());
        let Some(db) = self.dbs.get_mut(&db_id) else {
            return true;
        };
        let w = Work::Node { pkt: pkt.clone() };
        if db.tdb.is_none() {
            db.deferred.push_back(w);
            return false;
        }
        if db.waiting_on(&key) {
            db.wait_for_lock(key, w, &self.ev_tx);
            return false;
        }
        let ctx = Self::ro_store_ctx(env, &key);
        let Some(tdb) = db.tdb.as_ref() else {
            return true;
        };
        let r = match tdb.lock_record_nonblock(&key) {
            Ok(rec) => Some((|| {
                let old = ltdb::read(&rec)?.map_or(0, |(oh, _)| oh.rsn);
                if h.rsn <= old {
                    return Ok(());
                }
                let mut h = h;
                ltdb::store(&ctx, &rec, &mut h, data).map(|_| ())
            })()),
            Err(tdb::Error::WouldBlock) => None,
            Err(e) => Some(Err(e)),
        };
        let Some(r) = r else {
            db.wait_for_lock(key, w, &self.ev_tx);
            return false;
        };
        if let Err(e) = r {
            error!("Failed to store new record in ctdb_reply_call: {e}");
        }
        true
    }

    /// Recovery pushed database `id` (its records lost their read-only
    /// flags): the tracking database is wiped and revocations are
    /// abandoned; their calls run again.
    pub(crate) fn ro_recovered(&mut self, id: u32) {
        let Some(r) = self.ro.dbs.get_mut(&id) else {
            return;
        };
        info!("Clearing the tracking database for dbid 0x{id:x}");
        let wiped = r.tracking.wipe_all();
        let revokes = std::mem::take(&mut r.revokes);
        if let Err(e) = wiped {
            error!(
                "Failed to wipe tracking database for 0x{id:x}. Dropping read-only delegation support: {e}"
            );
            self.ro.dbs.remove(&id);
            if let Some(d) = self.dbs.get_mut(&id) {
                d.flags &= !db_flags::READONLY;
            }
        }
        self.ro.tags.retain(|_, (db, _)| *db != id);
        let later = Instant::now() + RO_GRACE;
        for (_, rv) in revokes {
            for w in rv.waiting {
                if wants_readonly(&w) {
                    self.ro.delayed.push((later, id, w));
                } else {
                    self.ready.push_back((id, w));
                }
            }
        }
    }

    /// Counts delegations and revokes in the databases' and the daemon's
    /// statistics.
    pub(crate) fn ro_flush_counts(&mut self) {
        if self.ro.counts.is_empty() {
            return;
        }
        for (db, c) in std::mem::take(&mut self.ro.counts) {
            match c {
                Count::Delegation => self.stats.bump(|s| s.total_ro_delegations += 1),
                Count::Revoke => self.stats.bump(|s| s.total_ro_revokes += 1),
            }
            if let Some(d) = self.dbs.get_mut(&db) {
                match c {
                    Count::Delegation => d.stats.db_ro_delegations += 1,
                    Count::Revoke => d.stats.db_ro_revokes += 1,
                }
            }
        }
    }

    /// Read-only requests whose grace after a revocation is over run.
    pub(crate) fn ro_tick(&mut self, now: Instant) {
        if self.ro.delayed.is_empty() {
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ro.delayed)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        self.ro.delayed = keep;
        self.ready.extend(due.into_iter().map(|(_, db, w)| (db, w)));
    }

    pub(crate) fn ro_wakeup(&self) -> Option<Instant> {
        self.ro.delayed.iter().map(|(t, _, _)| *t).min()
    }

    /// Number of revocations under way (for tests and statistics).
    pub fn ro_revokes_active(&self) -> usize {
        self.ro.dbs.values().map(|d| d.revokes.len()).sum()
    }

    /// Database `id`'s tracking database.
    #[cfg(test)]
    pub(crate) fn ro_tracking(&self, id: u32) -> Option<&tdb::Tdb> {
        self.ro.dbs.get(&id).map(|d| &d.tracking)
    }
}

/// The final store of a revocation, under the record's lock. `expect` is
/// the rsn the record must not exceed (the one stored with the revoking
/// flag).
fn finish_record(
    ctx: &StoreCtx,
    rec: &tdb::RecordLock<'_, '_>,
    expect: u64,
    failed: bool,
) -> Result<(), String> {
    let Some((mut h, data)) = ltdb::read(rec).map_err(|e| e.to_string())? else {
        return Err("Failed for fetch tdb record in revokechild".into());
    };
    if h.rsn > expect {
        return Err("RSN too high in tdb record in revokechild".into());
    }
    let both = record_flags::RO_REVOKING_READONLY | record_flags::RO_HAVE_DELEGATIONS;
    if h.flags & both != both {
        return Err("Flags are wrong in tdb record in revokechild".into());
    }
    if failed {
        info!("Revoke all delegations failed, retrying.");
        h.flags &= !record_flags::RO_REVOKING_READONLY;
    } else {
        h.rsn += 1;
        h.flags |= record_flags::RO_REVOKE_COMPLETE;
    }
    ltdb::store(ctx, rec, &mut h, &data)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether a waiting call asked for a read-only copy.
fn wants_readonly(w: &Work) -> bool {
    match w {
        Work::Client { call, .. } => call.flags & call_flags::WANT_READONLY != 0,
        Work::Node { pkt } => {
            let Ok((h, _)) = Header::pull(pkt) else {
                return false;
            };
            let end = (h.length as usize).clamp(HEADER_LEN, pkt.len());
            h.operation == ctdb_protocol::Operation::ReqCall
                && ReqCall::pull(&pkt[HEADER_LEN..end])
                    .is_ok_and(|(c, _)| c.flags & call_flags::WANT_READONLY != 0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_bitmaps_are_ctdbs() {
        let v = tracking_add(None, 1);
        assert_eq!(v, [0b10]);
        let v = tracking_add(Some(v), 2);
        assert_eq!(v, [0b110]);
        let v = tracking_add(Some(v), 9);
        assert_eq!(v, [0b110, 0b10]);
        assert_eq!(tracking_nodes(&v), [1, 2, 9]);
        assert!(tracking_nodes(&[]).is_empty());
    }
}
