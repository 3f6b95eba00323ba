//! Read-your-writes across nodes: `DB_WAIT_SEQNUM` (ctdb-rs extension).
//!
//! A writer commits on one node and hands the point its commit reached to
//! a reader on another node; the reader asks its own node to answer once
//! its copy of the database has reached that point, then reads its local
//! copy and sees the write (or a later one). Points:
//!
//! * **database sequence number** (classic and in-memory persistent
//!   databases): `__db_sequence_number__`, which every commit moves by one
//!   and recovery takes from the node with the highest;
//! * **keys at rsns** (keyed databases, and any persistent database): each
//!   listed record's rsn is at least the given one. A keyed database has no
//!   database-wide number on purpose (it would be one record every commit
//!   writes, serialising the commits the kind exists to run concurrently;
//!   a count of commits applied here says nothing of *which* commits another
//!   node applied). A key's rsn grows with every commit of the key and
//!   recovery keeps the highest, so "rsn at least r here" means this node
//!   holds that commit's value of the key or a later one;
//! * **recovery generation**: this node finished the recovery of that
//!   generation (it is the current one and the node is out of recovery,
//!   or the node went through it: the last [`GENERATIONS`] generations at
//!   the end of a recovery are remembered, not across a restart). The
//!   database plays no part beyond having to exist and be persistent.
//!
//! The request is never answered by blocking the event loop: a point not
//! reached yet is parked here and checked again whenever the database's
//! handle comes home (after every applied `UPDATE_RECORD`, and after a
//! recovery thaws it), at the end of a recovery, and at its deadline, when
//! it is answered with [`SEQWAIT_TIMEOUT_STATUS`]. A recovery does not fail
//! a wait: a commit acknowledged to its writer is on every node of the
//! generation and recovery keeps it, so the point is reached after the
//! recovery if it was committed at all; the deadline bounds the rest. A
//! database that goes away (detach) fails its waits, and so does a
//! client that goes away (its waits are dropped).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ctdb_protocol::types::{
    DbWaitSeqnum, SEQWAIT_ERR_PREFIX, SEQWAIT_TIMEOUT_STATUS, SeqWaitTarget, db_flags,
};
use ctdb_protocol::{ControlReply, ReplyControl, ReqControl};
use tracing::debug;

use super::persistent::SEQNUM_KEY;
use super::{Databases, Env, ltdb};
use crate::control::ControlCtx;
use crate::messaging::ClientId;
use crate::server::ReplyTo;

/// Generations remembered per database.
pub const GENERATIONS: usize = 32;
/// The longest wait a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Parked waits one client may have at once.
pub const MAX_PER_CLIENT: usize = 4096;
/// How soon a check that found a record chain locked is tried again.
const RETRY: Duration = Duration::from_millis(2);

/// A parked wait.
#[derive(Debug)]
struct Wait {
    db: u32,
    target: SeqWaitTarget,
    to: ReplyTo,
    client: Option<ClientId>,
    since: Instant,
    deadline: Instant,
}

/// Parked waits and what they need.
#[derive(Debug, Default)]
pub struct SeqWaits {
    waits: Vec<Wait>,
    /// Generations whose recovery this node finished, newest last.
    generations: VecDeque<u32>,
    /// A check met a locked chain: try again then.
    retry: Option<Instant>,
}

/// Where a point stands on this node.
enum Check {
    /// Reached; the value answered (sequence number, generation, or the
    /// lowest rsn of the keys).
    Reached(u64),
    /// Not yet; the value now, for the timeout message.
    Not(u64),
    /// Cannot be told now (handle away, recovery running): the handle's
    /// return or the end of the recovery checks again.
    Later,
    /// A record chain is locked (a client reading it): try again soon.
    Busy,
    /// Never: answered with this error.
    Fail(String),
}

fn err(status: i32, msg: impl std::fmt::Display) -> ReplyControl {
    ReplyControl::error(status, format!("{SEQWAIT_ERR_PREFIX} {msg}"))
}

fn describe(t: &SeqWaitTarget) -> String {
    match t {
        SeqWaitTarget::DbSeqnum(s) => format!("sequence number {s}"),
        SeqWaitTarget::Generation(g) => format!("generation {g}"),
        SeqWaitTarget::Keys(ks) => format!("{} key(s) at their rsn", ks.len()),
    }
}

/// A stored record's rsn (0 when absent or malformed).
fn rsn(tdb: &tdb::Tdb, key: &[u8]) -> Result<u64, tdb::Error> {
    let rec = tdb.lock_record_nonblock(key)?;
    Ok(rec
        .parse(|v| ltdb::split(v).map(|(h, _)| h.rsn))?
        .flatten()
        .unwrap_or(0))
}

/// The database sequence number (0 when absent or malformed).
fn db_seqnum(tdb: &tdb::Tdb) -> Result<u64, tdb::Error> {
    let rec = tdb.lock_record_nonblock(SEQNUM_KEY)?;
    Ok(rec
        .parse(|v| {
            ltdb::split(v)
                .and_then(|(_, d)| <[u8; 8]>::try_from(d).ok())
                .map(u64::from_le_bytes)
        })?
        .flatten()
        .unwrap_or(0))
}

impl Databases {
    /// `DB_WAIT_SEQNUM`: answers now, or parks the wait.
    pub(crate) fn wait_seqnum(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        _req: &ReqControl,
        to: ReplyTo,
        w: &DbWaitSeqnum,
    ) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get(&w.db_id) else {
            return Some(err(-1, format!("unknown database 0x{:08x}", w.db_id)));
        };
        let keyed = db.flags & db_flags::KEYED != 0;
        if !db.persistent() {
            return Some(err(
                -1,
                format!(
                    "{} is not a persistent database (only persistent, in-memory and keyed ones have sequence numbers)",
                    db.name
                ),
            ));
        }
        if keyed && matches!(w.target, SeqWaitTarget::DbSeqnum(_)) {
            return Some(err(
                -1,
                format!(
                    "{} is a keyed database: it has no database sequence number, wait for its keys' rsns",
                    db.name
                ),
            ));
        }
        let timeout = Duration::from_millis(u64::from(w.timeout_ms));
        if timeout > MAX_TIMEOUT {
            return Some(err(
                -1,
                format!(
                    "timeout {} ms is over the limit of {} s",
                    w.timeout_ms,
                    MAX_TIMEOUT.as_secs()
                ),
            ));
        }
        let since = Instant::now();
        match self.seqwait_check(env, w.db_id, &w.target) {
            Check::Reached(v) => return Some(ReplyControl::ok(ControlReply::DbWaitSeqnum(v))),
            Check::Fail(why) => return Some(err(-1, why)),
            Check::Not(now) if timeout.is_zero() => {
                return Some(timeout_reply(&w.target, timeout, Some(now)));
            }
            Check::Later | Check::Busy if timeout.is_zero() => {
                return Some(timeout_reply(&w.target, timeout, None));
            }
            Check::Busy => self.seqwait.retry = Some(since + RETRY),
            Check::Later | Check::Not(_) => {}
        }
        let client = ctx.client;
        if let Some(c) = client
            && self
                .seqwait
                .waits
                .iter()
                .filter(|x| x.client == Some(c))
                .count()
                >= MAX_PER_CLIENT
        {
            return Some(err(
                -1,
                format!("client already has {MAX_PER_CLIENT} waits parked"),
            ));
        }
        debug!(
            "db 0x{:08x}: parked a wait for {}, {} ms",
            w.db_id,
            describe(&w.target),
            w.timeout_ms
        );
        self.seqwait.waits.push(Wait {
            db: w.db_id,
            target: w.target.clone(),
            to,
            client,
            since,
            deadline: since + timeout,
        });
        None
    }

    /// Where `target` stands on database `id` now.
    fn seqwait_check(&self, env: &Env, id: u32, target: &SeqWaitTarget) -> Check {
        let Some(db) = self.dbs.get(&id) else {
            return Check::Fail(format!("database 0x{id:08x} was detached"));
        };
        if let SeqWaitTarget::Generation(g) = target {
            if env.node.in_recovery() || !db.allow_access() {
                return Check::Later;
            }
            let seen = self.seqwait.generations.contains(g);
            return if db.generation == *g || env.generation() == *g || seen {
                Check::Reached(u64::from(*g))
            } else {
                Check::Not(u64::from(db.generation))
            };
        }
        if !db.allow_access() {
            return Check::Later;
        }
        let Some(tdb) = db.tdb.as_ref() else {
            return Check::Later;
        };
        let r = match target {
            SeqWaitTarget::DbSeqnum(want) => db_seqnum(tdb).map(|s| (s >= *want, s)),
            SeqWaitTarget::Keys(ks) => {
                let mut lowest = u64::MAX;
                let mut all = true;
                for (k, want) in ks {
                    match rsn(tdb, k) {
                        Ok(r) => {
                            all &= r >= *want;
                            lowest = lowest.min(r);
                        }
                        Err(e) => return check_error(e),
                    }
                }
                Ok((all, if ks.is_empty() { 0 } else { lowest }))
            }
            SeqWaitTarget::Generation(_) => unreachable!("answered above"),
        };
        match r {
            Ok((true, v)) => Check::Reached(v),
            Ok((false, v)) => Check::Not(v),
            Err(e) => check_error(e),
        }
    }

    /// Checks the waits of database `id` (its handle came home: a commit
    /// was applied, or a recovery thawed it).
    pub(crate) fn seqwait_notify(&mut self, env: &Env, id: u32) {
        if self.seqwait.waits.iter().any(|w| w.db == id) {
            self.seqwait_run(env, Some(id), Instant::now());
        }
    }

    /// The end of a recovery: notes its generation and checks every
    /// wait.
    pub(crate) fn seqwait_recovery_ended(&mut self, env: &Env) {
        let h = &mut self.seqwait.generations;
        if h.back() != Some(&env.generation()) {
            h.push_back(env.generation());
            if h.len() > GENERATIONS {
                h.pop_front();
            }
        }
        if !self.seqwait.waits.is_empty() {
            self.seqwait_run(env, None, Instant::now());
        }
    }

    /// When parked waits next need a look (a deadline, or a retry).
    pub(crate) fn seqwait_wakeup(&self) -> Option<Instant> {
        self.seqwait
            .waits
            .iter()
            .map(|w| w.deadline)
            .chain(self.seqwait.retry)
            .min()
    }

    /// Deadlines and retries.
    pub(crate) fn seqwait_tick(&mut self, env: &Env, now: Instant) {
        if self.seqwait.waits.is_empty() {
            self.seqwait.retry = None;
            return;
        }
        if self.seqwait.retry.is_some_and(|t| t <= now)
            || self.seqwait.waits.iter().any(|w| w.deadline <= now)
        {
            self.seqwait.retry = None;
            self.seqwait_run(env, None, now);
        }
    }

    /// A local client went away: its waits go with it.
    pub(crate) fn seqwait_client_gone(&mut self, client: ClientId) {
        self.seqwait.waits.retain(|w| w.client != Some(client));
    }

    /// Checks the waits of database `only` (or all), answering those that
    /// are reached, failed or past their deadline.
    fn seqwait_run(&mut self, env: &Env, only: Option<u32>, now: Instant) {
        let waits = std::mem::take(&mut self.seqwait.waits);
        let mut keep = Vec::with_capacity(waits.len());
        for w in waits {
            if only.is_some_and(|id| id != w.db) {
                keep.push(w);
                continue;
            }
            match self.seqwait_check(env, w.db, &w.target) {
                Check::Reached(v) => {
                    debug!(
                        "db 0x{:08x}: {} reached after {:?}",
                        w.db,
                        describe(&w.target),
                        now.saturating_duration_since(w.since)
                    );
                    self.reply(w.to, ReplyControl::ok(ControlReply::DbWaitSeqnum(v)));
                }
                Check::Fail(why) => self.reply(w.to, err(-1, why)),
                Check::Not(v) if w.deadline <= now => {
                    let r = timeout_reply(&w.target, w.deadline - w.since, Some(v));
                    self.reply(w.to, r);
                }
                Check::Later | Check::Busy if w.deadline <= now => {
                    let r = timeout_reply(&w.target, w.deadline - w.since, None);
                    self.reply(w.to, r);
                }
                Check::Busy => {
                    self.seqwait.retry = Some(now + RETRY);
                    keep.push(w);
                }
                Check::Later | Check::Not(_) => keep.push(w),
            }
        }
        // Waits parked meanwhile (none: nothing above parks) stay too.
        keep.append(&mut self.seqwait.waits);
        self.seqwait.waits = keep;
    }

    /// Parked waits (for the memory report and tests).
    pub fn seqwait_parked(&self) -> usize {
        self.seqwait.waits.len()
    }
}

fn check_error(e: tdb::Error) -> Check {
    match e {
        tdb::Error::WouldBlock => Check::Busy,
        e => Check::Fail(format!("cannot read the database: {e}")),
    }
}

fn timeout_reply(t: &SeqWaitTarget, after: Duration, now: Option<u64>) -> ReplyControl {
    let now = match (t, now) {
        (_, None) => "could not be read".to_owned(),
        (SeqWaitTarget::Keys(_), Some(v)) => format!("lowest rsn {v}"),
        (_, Some(v)) => format!("at {v}"),
    };
    err(
        SEQWAIT_TIMEOUT_STATUS,
        format!(
            "timed out after {} ms waiting for {} ({now})",
            after.as_millis(),
            describe(t)
        ),
    )
}

#[cfg(test)]
mod tests {
    use ctdb_protocol::types::{LtdbHeader, RecBuffer};
    use ctdb_protocol::{ControlRequest, ReqControl};

    use super::super::test_layer::Layer;
    use super::super::{Effect, persistent};
    use super::*;

    /// Node 1 of three with volatile `v.tdb` and persistent `p.tdb`, the
    /// database the tests wait on.
    fn fixture() -> Layer {
        let mut f = Layer::new("v.tdb", false);
        f.id = f.open("p.tdb", db_flags::PERSISTENT);
        f
    }

    impl Layer {
        fn seqwait(
            &mut self,
            client: Option<ClientId>,
            target: SeqWaitTarget,
            ms: u32,
        ) -> Option<ReplyControl> {
            let w = DbWaitSeqnum {
                db_id: self.id,
                timeout_ms: ms,
                target,
            };
            let req = ReqControl::new(ControlRequest::DbWaitSeqnum(w.clone()));
            let ctx = ControlCtx {
                srcnode: 1,
                client,
                client_id: 0,
            };
            self.with(|d, env| d.wait_seqnum(env, &ctx, &req, ReplyTo::Nobody, &w))
        }

        /// A commit as `UPDATE_RECORD` applies it: `key` at `rsn`, and the
        /// database sequence number.
        fn seqwait_commit(&mut self, key: &[u8], rsn: u64, seqnum: u64) {
            let mut b = RecBuffer::new(self.id);
            let h = LtdbHeader {
                rsn,
                dmaster: 1,
                ..Default::default()
            };
            b.add(0, Some(&h), key, b"v");
            let hs = LtdbHeader {
                rsn: seqnum,
                dmaster: 1,
                ..Default::default()
            };
            b.add(0, Some(&hs), SEQNUM_KEY, &seqnum.to_le_bytes());
            let tdb = self.dbs.dbs[&self.id].tdb.as_ref().unwrap();
            persistent::apply_update(tdb, &b, false).unwrap();
        }

        fn seqwait_replies(&mut self) -> Vec<ReplyControl> {
            self.dbs
                .take_effects()
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Reply(_, r) => Some(r),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn parked_until_the_commit_then_answered() {
        let mut f = fixture();
        assert!(
            f.seqwait(Some(3), SeqWaitTarget::DbSeqnum(1), 10_000)
                .is_none()
        );
        let keys = SeqWaitTarget::Keys(vec![(b"k".to_vec(), 1)]);
        assert!(f.seqwait(Some(3), keys, 10_000).is_none());
        assert_eq!(f.dbs.seqwait_parked(), 2);
        // Nothing changed: a check leaves them parked.
        let id = f.id;
        f.with(|d, env| d.seqwait_notify(env, id));
        assert!(f.seqwait_replies().is_empty());
        f.seqwait_commit(b"k", 1, 1);
        f.with(|d, env| d.seqwait_notify(env, id));
        let r = f.seqwait_replies();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|r| r.status == 0));
        assert_eq!(r[0].data, Some(ControlReply::DbWaitSeqnum(1)));
        assert_eq!(f.dbs.seqwait_parked(), 0);
        // Reached already: answered at once.
        let r = f.seqwait(None, SeqWaitTarget::DbSeqnum(1), 10).unwrap();
        assert_eq!(r.data, Some(ControlReply::DbWaitSeqnum(1)));
    }

    #[test]
    fn timeouts_are_reported_as_such() {
        let mut f = fixture();
        let r = f.seqwait(None, SeqWaitTarget::DbSeqnum(5), 0).unwrap();
        assert_eq!(r.status, SEQWAIT_TIMEOUT_STATUS);
        assert!(r.errmsg.unwrap().starts_with(SEQWAIT_ERR_PREFIX));
        assert!(f.seqwait(None, SeqWaitTarget::DbSeqnum(5), 50).is_none());
        let at = f.dbs.seqwait_wakeup().unwrap();
        // Not due yet: still parked.
        f.with(|d, env| d.seqwait_tick(env, at - Duration::from_millis(10)));
        assert_eq!(f.dbs.seqwait_parked(), 1);
        f.with(|d, env| d.seqwait_tick(env, at));
        let r = f.seqwait_replies();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, SEQWAIT_TIMEOUT_STATUS);
        assert!(r[0].errmsg.as_ref().unwrap().contains("timed out"), "{r:?}");
        assert_eq!(f.dbs.seqwait_parked(), 0);
    }

    #[test]
    fn generations_clients_and_refusals() {
        let mut f = fixture();
        // The current generation (5), outside recovery.
        let r = f.seqwait(None, SeqWaitTarget::Generation(5), 0).unwrap();
        assert_eq!(r.data, Some(ControlReply::DbWaitSeqnum(5)));
        assert!(
            f.seqwait(Some(9), SeqWaitTarget::Generation(6), 10_000)
                .is_none()
        );
        f.with(|d, _| d.seqwait_client_gone(9));
        assert_eq!(f.dbs.seqwait_parked(), 0);
        // A volatile database has nothing to wait for.
        let v = f.dbs.order[0];
        let w = DbWaitSeqnum {
            db_id: v,
            timeout_ms: 10,
            target: SeqWaitTarget::DbSeqnum(1),
        };
        let req = ReqControl::new(ControlRequest::DbWaitSeqnum(w.clone()));
        let ctx = ControlCtx {
            srcnode: 1,
            client: None,
            client_id: 0,
        };
        let r = f
            .with(|d, env| d.wait_seqnum(env, &ctx, &req, ReplyTo::Nobody, &w))
            .unwrap();
        assert_eq!(r.status, -1);
        assert!(r.errmsg.unwrap().contains("not a persistent database"));
        let r = f
            .seqwait(None, SeqWaitTarget::DbSeqnum(1), 4_000_000)
            .unwrap();
        assert!(r.errmsg.unwrap().contains("over the limit"));
    }
}
