//! Group commit (issue 20): the `UPDATE_RECORD`s of one database that
//! reach a node while an earlier one is being applied there share the next
//! tdb transaction, and so one set of syncs, instead of one each.
//!
//! The window is the apply itself, nothing is held back: an update that
//! finds the database's handle at home is applied at once, alone (a quiet
//! database commits with the latency it always had). Updates that arrive
//! while the handle is on its worker thread wait in the database's queue
//! (where all work for the database waits meanwhile); when the handle
//! comes back, the first of them takes it and the updates queued right
//! behind it join its batch, up to [`max_updates`] updates and
//! [`MAX_BATCH_BYTES`] of records. Only a run of updates at the head of the
//! queue is taken: other work queued between them (a sequence-number read,
//! a freeze) keeps its place, so everything still runs in arrival order.
//!
//! Each update keeps its own outcome. In the batch's transaction every
//! update is first checked against the records as the updates before it
//! left them (CTDB's rule: no record may go back in rsn with different
//! data; a malformed record), and only then stored: an update that fails
//! its check stores nothing and gets the error it would have got alone,
//! the others commit. If storing or the commit itself fails (an I/O
//! error, a full disk), the transaction is cancelled and every update of
//! the batch is applied again alone, each in its own transaction, so each
//! gets the reply it would have got alone. Replies go out only after the
//! batch's commit returned, i.e. once it is synced (for files without
//! `TDB_NOSYNC`).
//!
//! What CTDB's clients see does not change: a classic persistent
//! database has one commit in flight at a time (its g_lock, and the
//! daemon's one-commit-per-database rule), so its batches have one update
//! and `__db_sequence_number__` moves by one per commit, as before; the
//! batches that form are those of keyed databases (many commits of one
//! database in flight) and of read-only revocations (volatile records
//! sent back to their nodes). In-memory databases are `TDB_NOSYNC` and
//! classic in concurrency: nothing to gain there.
//!
//! The metrics count, per database, the updates applied, the transactions
//! they took and the syncs those did (`ctdb_db_commit_updates_total`,
//! `ctdb_db_commit_transactions_total`, `ctdb_db_commit_syncs_total`).

use std::collections::HashMap;
use std::sync::OnceLock;

use ctdb_protocol::types::{LtdbHeader, RecBuffer};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl};
use tracing::{error, warn};

use super::{Databases, DbEvent, Env, Work, ltdb};
use crate::server::ReplyTo;

/// Updates per batch unless `CTDB_RS_GROUP_COMMIT_MAX` says otherwise.
pub const DEFAULT_MAX_UPDATES: usize = 64;
/// Records (marshalled bytes) a batch takes at most, past its first update.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// The most updates one transaction takes: `CTDB_RS_GROUP_COMMIT_MAX` in
/// the daemon's environment (1 turns group commit off: benchmarks compare
/// with it), else [`DEFAULT_MAX_UPDATES`].
pub fn max_updates() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("CTDB_RS_GROUP_COMMIT_MAX")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(DEFAULT_MAX_UPDATES)
    })
}

/// One `UPDATE_RECORD` of a batch and, once applied, its outcome.
#[derive(Debug)]
pub struct Update {
    /// The parked reply (`Databases::park`).
    pub tag: u64,
    pub rb: RecBuffer,
    pub result: Result<(), String>,
}

/// A batch back from its worker thread, with the database's handle.
pub struct Applied {
    pub db: u32,
    pub tdb: Box<tdb::Tdb>,
    pub updates: Vec<Update>,
    /// Transactions the batch took (1, or 1 + one per update after a
    /// failed group transaction).
    pub transactions: u32,
    /// Data syncs those transactions did.
    pub syncs: u64,
}

/// The records one update stores: key, new header, value.
pub(crate) type Plan<'a> = Vec<(&'a [u8], LtdbHeader, &'a [u8])>;

/// Checks update `rb` against the records as they are in `tx` (the
/// running transaction) and returns what it stores; an error if a record
/// is malformed or would go back in rsn with different data. With
/// `replace_only` (volatile databases) absent records are skipped. Reads
/// only: nothing is stored.
pub(crate) fn plan<'a>(
    tx: &tdb::Tdb,
    rb: &'a RecBuffer,
    replace_only: bool,
) -> Result<Plan<'a>, String> {
    let mut plan: Plan<'a> = Vec::new();
    // A key stored earlier in the same update: its last planned entry.
    let mut planned: HashMap<&'a [u8], usize> = HashMap::new();
    for rec in rb.iter() {
        let (h, data) = rec
            .header()
            .map_err(|e| format!("bad record in update: {e}"))?;
        let old = match planned.get(rec.key) {
            Some(&i) => Some((plan[i].1, plan[i].2 == data)),
            None => tx
                .parse(rec.key, |v| ltdb::split(v).map(|(oh, od)| (oh, od == data)))
                .map_err(|e| e.to_string())?
                .flatten(),
        };
        if replace_only && old.is_none() {
            continue;
        }
        if let Some((oh, same)) = old
            && oh.rsn >= h.rsn
            && !same
        {
            return Err(format!(
                "existing header has larger RSN {} than new RSN {}",
                oh.rsn, h.rsn
            ));
        }
        planned.insert(rec.key, plan.len());
        plan.push((rec.key, h, data));
    }
    Ok(plan)
}

/// Stores a checked update in the running transaction `tx`.
pub(crate) fn store(tx: &tdb::Tdb, plan: &Plan<'_>) -> Result<(), String> {
    for (key, h, data) in plan {
        tx.storev(
            key,
            &[&ltdb::header_bytes(h), data],
            tdb::StoreMode::Replace,
        )
        .map_err(|e| format!("failed to store record: {e}"))?;
    }
    Ok(())
}

/// Applies a batch on `tdb` (see the module docs), setting each update's
/// result; returns the number of transactions it took.
pub fn apply_batch(tdb: &tdb::Tdb, updates: &mut [Update], replace_only: bool) -> u32 {
    if let [one] = updates {
        one.result = super::persistent::apply_update(tdb, &one.rb, replace_only);
        return 1;
    }
    match together(tdb, updates, replace_only) {
        Ok(results) => {
            for (u, r) in updates.iter_mut().zip(results) {
                u.result = r;
            }
            1
        }
        Err(e) => {
            warn!(
                "group commit of {} updates failed ({e}); applying them one by one",
                updates.len()
            );
            for u in updates.iter_mut() {
                u.result = super::persistent::apply_update(tdb, &u.rb, replace_only);
            }
            1 + updates.len() as u32
        }
    }
}

/// The batch in one transaction: each update's own check result, or an
/// error that concerns the whole transaction (nothing of it committed).
fn together(
    tdb: &tdb::Tdb,
    updates: &[Update],
    replace_only: bool,
) -> Result<Vec<Result<(), String>>, String> {
    let tx = tdb
        .transaction_start()
        .map_err(|e| format!("failed to start transaction: {e}"))?;
    let mut results = Vec::with_capacity(updates.len());
    for u in updates {
        match plan(&tx, &u.rb, replace_only) {
            Ok(p) => {
                // A failed store may have left part of the update in the
                // transaction: it is dropped (cancelled) and the batch
                // applied one by one.
                store(&tx, &p)?;
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if results.iter().all(Result::is_err) {
        // Nothing to commit: every update was refused by its check.
        tx.cancel()
            .map_err(|e| format!("failed to cancel transaction: {e}"))?;
    } else {
        tx.commit()
            .map_err(|e| format!("failed to commit transaction: {e}"))?;
    }
    Ok(results)
}

/// The batch being formed, while `Databases::apply_updates` runs the
/// queued updates through `UPDATE_RECORD`'s checks.
#[derive(Debug, Default)]
pub struct GroupCommit {
    forming: Option<Forming>,
}

#[derive(Debug)]
struct Forming {
    db: u32,
    updates: Vec<(ReplyTo, RecBuffer)>,
}

impl GroupCommit {
    /// Takes an `UPDATE_RECORD` that passed its checks into the batch
    /// being formed for its database, if there is one.
    pub(crate) fn join(&mut self, to: ReplyTo, rb: &RecBuffer) -> bool {
        match &mut self.forming {
            Some(f) if f.db == rb.db_id => {
                f.updates.push((to, rb.clone()));
                true
            }
            _ => false,
        }
    }
}

/// Whether `w` is an `UPDATE_RECORD` for `db` that fits in a batch
/// already holding `bytes` of records.
fn joinable(w: &Work, db: u32, bytes: usize) -> bool {
    matches!(w, Work::Control { req, .. }
        if matches!(&req.data, ControlRequest::UpdateRecord(rb)
            if rb.db_id == db && bytes + rb.records_len() <= MAX_BATCH_BYTES))
}

impl Databases {
    /// Applies `first` (an `UPDATE_RECORD` of database `db_id` that passed
    /// its checks and took the handle `tdb`) together with the
    /// `UPDATE_RECORD`s queued right behind it, on a worker thread; the
    /// replies go out when the batch comes back
    /// ([`Databases::batch_applied`]). Each queued update goes through
    /// `UPDATE_RECORD`'s checks again now (recovery, health, kind rules),
    /// exactly as if it ran alone; one refused gets its reply at once and
    /// stays out of the batch.
    pub(crate) fn apply_updates(
        &mut self,
        env: &Env,
        db_id: u32,
        tdb: tdb::Tdb,
        replace_only: bool,
        first: (ReplyTo, RecBuffer),
    ) {
        let mut bytes = first.1.records_len();
        self.group.forming = Some(Forming {
            db: db_id,
            updates: vec![first],
        });
        loop {
            let n = self.group.forming.as_ref().map_or(0, |f| f.updates.len());
            if n >= max_updates() {
                break;
            }
            let Some(db) = self.dbs.get_mut(&db_id) else {
                break;
            };
            if !db
                .deferred
                .front()
                .is_some_and(|w| joinable(w, db_id, bytes))
            {
                break;
            }
            let Some(w) = db.deferred.pop_front() else {
                break;
            };
            if let Work::Control { req, .. } = &w
                && let ControlRequest::UpdateRecord(rb) = &req.data
            {
                bytes += rb.records_len();
            }
            // update_record: its checks, then (the handle being away) into
            // the forming batch through GroupCommit::join.
            self.run_work(env, db_id, w);
        }
        let joined = self
            .group
            .forming
            .take()
            .map(|f| f.updates)
            .unwrap_or_default();
        let mut updates = Vec::with_capacity(joined.len());
        for (to, rb) in joined {
            let tag = self.park(to);
            self.stats.childwrite_started(tag);
            updates.push(Update {
                tag,
                rb,
                result: Ok(()),
            });
        }
        let ev = self.ev_tx.clone();
        let log = self.dbs.get(&db_id).and_then(|d| d.changelog.clone());
        tokio::task::spawn_blocking(move || {
            let before = tdb.sync_count();
            // The batch's one transaction (or, after a failure, one per
            // update): the place where work that must see every applied
            // update on this node's worker thread goes.
            let transactions = super::changelog::logged_batch(
                log.as_deref(),
                &tdb,
                &mut updates,
                |u| &u.rb,
                |u| u.result.is_ok(),
                |u| apply_batch(&tdb, u, replace_only),
            );
            let syncs = tdb.sync_count().saturating_sub(before);
            let _ = ev.send(DbEvent::Applied(Box::new(Applied {
                db: db_id,
                tdb: Box::new(tdb),
                updates,
                transactions,
                syncs,
            })));
        });
    }

    /// A batch is back: it is durable, so every update gets its reply;
    /// then the handle goes home and the work that waited for it runs
    /// (the next batch among it).
    pub(crate) fn batch_applied(&mut self, env: &Env, a: Applied) {
        let Applied {
            db,
            tdb,
            updates,
            transactions,
            syncs,
        } = a;
        let name = self.dbs.get(&db).map(|d| d.name.clone());
        if let Some(name) = &name {
            self.stats
                .commit_batch(name, updates.len() as u64, transactions.into(), syncs);
        }
        for u in updates {
            let reply = match u.result {
                Ok(()) => ReplyControl::ok(ControlReply::UpdateRecord),
                Err(e) => {
                    error!(
                        "{}: failed to write persistent data: {e}",
                        name.as_deref().unwrap_or("detached database")
                    );
                    ReplyControl::error(-1, e)
                }
            };
            self.stats.childwrite_done(u.tag);
            self.complete(u.tag, reply);
        }
        self.handle_returned(env, db, *tdb);
    }
}

#[cfg(test)]
#[path = "group_commit_tests.rs"]
mod tests;
