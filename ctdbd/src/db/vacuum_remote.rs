//! The vacuuming controls other nodes and clients send
//! (`SCHEDULE_FOR_DELETION`, `VACUUM_FETCH`, `TRY_DELETE_RECORDS`,
//! `DB_VACUUM`), and the traverse that feeds a full run
//! ([`super::vacuum`]).

use ctdb_protocol::types::{DbVacuum, KeyData, LtdbHeader, RecBuffer, RecordRef, record_flags};
use ctdb_protocol::{ControlReply, ReplyControl, ReqControl};
use tracing::{debug, error, warn};

use super::vacuum::{BATCH, Queued, StartError, TryDelete, VacEvent};
use super::{Databases, DbEvent, Env, Work, ltdb};
use crate::control::ControlCtx;
use crate::server::ReplyTo;

impl Databases {
    /// `SCHEDULE_FOR_DELETION`: a client emptied a record.
    pub(crate) fn schedule_for_deletion(&mut self, k: &KeyData) -> ReplyControl {
        let Some(db) = self.dbs.get(&k.db_id) else {
            error!("Unknown db id 0x{:08x}", k.db_id);
            return ReplyControl::error(-1, format!("unknown database 0x{:08x}", k.db_id));
        };
        // Only volatile databases are vacuumed.
        if db.volatile() {
            self.vacuum
                .dbs
                .entry(k.db_id)
                .or_default()
                .schedule(&k.key, k.header);
        }
        ReplyControl::ok(ControlReply::ScheduleForDeletion)
    }

    /// `VACUUM_FETCH`: records another node wants vacuumed, this node
    /// being their lmaster; the next run migrates them here.
    pub(crate) fn vacuum_fetch(&mut self, rb: &RecBuffer) -> ReplyControl {
        if !self.dbs.contains_key(&rb.db_id) {
            error!("Unknown db 0x{:08x}", rb.db_id);
            return ReplyControl::error(-1, format!("unknown database 0x{:08x}", rb.db_id));
        }
        let v = self.vacuum.dbs.entry(rb.db_id).or_default();
        for r in rb.iter() {
            v.fetch_queue.insert(ltdb::key_hash(r.key), r.key.to_vec());
        }
        ReplyControl::ok(ControlReply::VacuumFetch)
    }

    /// `DB_VACUUM`: a vacuum run now, answered when it ends.
    pub(crate) fn db_vacuum(
        &mut self,
        env: &Env,
        to: ReplyTo,
        v: &DbVacuum,
    ) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get(&v.db_id) else {
            error!("Unknown db id 0x{:08x}", v.db_id);
            return Some(ReplyControl::status(-1));
        };
        if !db.volatile() {
            error!(
                "Vacuuming is disabled for non-volatile database {}",
                db.name
            );
            return Some(ReplyControl::status(-1));
        }
        match self.vacuum_start(env, v.db_id, v.full_vacuum_run, false, Some(to)) {
            Ok(()) => None,
            Err(StartError::Busy) => {
                warn!("Vacuuming collision");
                Some(ReplyControl::status(-1))
            }
            Err(StartError::Again) => {
                error!("Temporary vacuuming failure");
                Some(ReplyControl::status(-1))
            }
        }
    }

    /// `TRY_DELETE_RECORDS` from a database's lmaster: delete the copies
    /// here unless they are newer, answering with the records kept.
    pub(crate) fn try_delete_records(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        rb: &RecBuffer,
    ) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get_mut(&rb.db_id) else {
            error!("Unknown db 0x{:08x}", rb.db_id);
            return Some(ReplyControl::status(-1));
        };
        if rb.iter().any(|r| r.data.len() < LtdbHeader::WIRE_SIZE) {
            error!("bad ltdb record in TRY_DELETE_RECORDS");
            return Some(ReplyControl::status(-1));
        }
        if db.tdb.is_none() {
            db.deferred.push_back(Work::Control {
                ctx: *ctx,
                req: req.clone(),
                to,
            });
            return None;
        }
        debug!(
            "starting try_delete_records of {} records for dbid 0x{:x}",
            rb.count(),
            rb.db_id
        );
        self.vacuum.try_deletes.push_back(TryDelete {
            db: rb.db_id,
            records: rb.clone(),
            pos: 0,
            failed: RecBuffer::new(rb.db_id),
            to,
        });
        // Small ones are answered at once; big ones a batch per step.
        self.try_delete_step(env);
        None
    }

    /// Works on the oldest `TRY_DELETE_RECORDS`, one batch.
    pub(crate) fn try_delete_step(&mut self, env: &Env) {
        let Some(mut t) = self.vacuum.try_deletes.pop_front() else {
            return;
        };
        let Some(db) = self.dbs.get(&t.db) else {
            self.reply(t.to, ReplyControl::status(-1));
            return;
        };
        let Some(tdb) = db.tdb.as_ref() else {
            // Away for now: go on when it is back.
            self.vacuum.try_deletes.push_front(t);
            return;
        };
        let pnn = env.pnn();
        let end = (t.pos + BATCH).min(t.records.count() as usize);
        for r in t.records.iter().skip(t.pos).take(end - t.pos) {
            if !delete_copy(tdb, env, pnn, &r) {
                debug!(
                    "Failed to vacuum delete record with hash 0x{:08x}",
                    ltdb::key_hash(r.key)
                );
                t.failed.add(r.reqid, None, r.key, r.data);
            }
        }
        t.pos = end;
        if t.pos >= t.records.count() as usize {
            self.reply(
                t.to,
                ReplyControl::ok(ControlReply::TryDeleteRecords(t.failed)),
            );
        } else {
            self.vacuum.try_deletes.push_front(t);
        }
    }
}

/// Deletes this node's copy of a record its lmaster is deleting, unless
/// this node is the lmaster, holds a newer copy or is its data master, or
/// read-only delegations are involved. False when the copy was kept.
fn delete_copy(tdb: &tdb::Tdb, env: &Env, pnn: u32, r: &RecordRef<'_>) -> bool {
    if ltdb::lmaster(&env.node.vnnmap, r.key) == Some(pnn) {
        debug!("Called delete on record where we are lmaster");
        return false;
    }
    if r.data.len() != LtdbHeader::WIRE_SIZE {
        error!("Bad record size");
        return false;
    }
    let Some((hdr, _)) = ltdb::split(r.data) else {
        return false;
    };
    let Ok(rec) = tdb.lock_record_nonblock(r.key) else {
        debug!("Failed to get non-blocking chain lock");
        return false;
    };
    let Ok(value) = rec.fetch() else {
        return false;
    };
    let Some(value) = value else {
        return true;
    };
    let Some((mine, _)) = ltdb::split(&value) else {
        // Too short to be a record: corrupt, deleted.
        let _ = rec.delete();
        error!("Deleted corrupt record");
        return true;
    };
    if mine.rsn > hdr.rsn {
        debug!(
            "Skipping record with rsn={} - called with rsn={}",
            mine.rsn, hdr.rsn
        );
        return false;
    }
    if hdr.flags & record_flags::RO_FLAGS != 0 || mine.flags & record_flags::RO_FLAGS != 0 {
        debug!("Skipping record with readonly flags set");
        return false;
    }
    if mine.dmaster == pnn {
        debug!("Attempted delete record where we are the dmaster");
        return false;
    }
    match rec.delete() {
        Ok(()) | Err(tdb::Error::NotFound) => true,
        Err(e) => {
            debug!("Failed to delete record: {e}");
            false
        }
    }
}

/// Runs the traverse helper and reports the empty records this node
/// masters (the helper sends only those this node masters).
pub(crate) async fn traverse_empty(
    run: u64,
    exe: &std::path::Path,
    args: &[String],
    ev: &tokio::sync::mpsc::UnboundedSender<DbEvent>,
) -> bool {
    super::traverse::stream_helper(exe, args, |whole| {
        let mut used = 0;
        let mut recs = Vec::new();
        while let Ok((r, len)) = RecordRef::parse(&whole[used..]) {
            used += len;
            if r.data.len() == LtdbHeader::WIRE_SIZE
                && let Some((hdr, _)) = ltdb::split(r.data)
            {
                recs.push(Queued {
                    key: r.key.to_vec(),
                    hdr,
                });
            }
        }
        if !recs.is_empty() {
            let _ = ev.send(DbEvent::Vacuum(VacEvent::Traversed {
                run,
                recs,
                end: None,
            }));
        }
    })
    .await
}

#[cfg(test)]
#[path = "vacuum_tests.rs"]
mod tests;
