//! The phases of a vacuum run ([`super`]), each a batch at a time.

use ctdb_protocol::call::{ReqCall, call_flags, call_id};
use ctdb_protocol::types::{LtdbHeader, RecBuffer, record_flags};
use ctdb_protocol::{
    ControlReply, ControlRequest, Header, Marshal, Operation, ReplyControl, ReqControl,
};
use tracing::{debug, error, info, warn};

use super::{DelRec, Phase, Run, VACUUM_CLIENT, VacEvent};
use crate::db::{Databases, DbEvent, Effect, Env, Work, ltdb};

impl Databases {
    /// Phase 1: vacuum migrations of the fetch queue's records.
    pub(super) fn vacuum_fetch_batch(&mut self, env: &Env, run: &mut Run, budget: &mut usize) {
        let pnn = env.pnn();
        while run.pos < run.fetch.len() && *budget > 0 {
            let Some(tdb) = self.dbs.get(&run.db).and_then(|d| d.tdb.as_ref()) else {
                return;
            };
            *budget -= 1;
            let key = std::mem::take(&mut run.fetch[run.pos]);
            run.pos += 1;
            // Only records still mastered elsewhere are fetched.
            let elsewhere = match tdb.lock_record_nonblock(&key) {
                Ok(rec) => matches!(
                    ltdb::read(&rec),
                    Ok(Some((h, _))) if h.dmaster != pnn
                ),
                Err(_) => false,
            };
            if !elsewhere {
                debug!(
                    "Skipped Fetch record, key hash 0x{:08x}",
                    ltdb::key_hash(&key)
                );
                continue;
            }
            let reqid = self.vacuum_reqid();
            run.calls.insert(reqid, key.clone());
            run.count.fetched += 1;
            let call = ReqCall {
                flags: call_flags::IMMEDIATE_MIGRATION | call_flags::VACUUM_MIGRATION,
                db_id: run.db,
                callid: call_id::NULL_FUNC,
                hopcount: 0,
                key,
                calldata: Vec::new(),
            };
            self.client_call(env, VACUUM_CLIENT, reqid, call);
        }
        if run.pos >= run.fetch.len() {
            run.fetch = Vec::new();
            run.phase = Phase::FetchWait;
        }
    }

    pub(super) fn vacuum_reqid(&mut self) -> u32 {
        self.vacuum.next_reqid = self.vacuum.next_reqid.wrapping_add(1).max(1);
        self.vacuum.next_reqid
    }

    /// Phase 2: the delete queue.
    pub(super) fn vacuum_queue_batch(&mut self, env: &Env, run: &mut Run, budget: &mut usize) {
        let pnn = env.pnn();
        while run.pos < run.queue.len() && *budget > 0 {
            let Some(tdb) = self.dbs.get(&run.db).and_then(|d| d.tdb.as_ref()) else {
                return;
            };
            *budget -= 1;
            let q = run.queue[run.pos].clone();
            run.pos += 1;
            run.count.queue_total += 1;
            let Ok(rec) = tdb.lock_record_nonblock(&q.key) else {
                // Busy: CTDB's fast path forgets the hint here and leaves
                // the record to a full run; ours keeps it queued for the
                // next run (unless a newer hint for the key came meanwhile).
                run.count.queue_error += 1;
                if let Some(v) = self.vacuum.dbs.get_mut(&run.db) {
                    v.requeue(q);
                }
                continue;
            };
            let Some(h) = empty_header(&rec) else {
                run.count.queue_skipped += 1;
                continue;
            };
            if h.dmaster != pnn || h.rsn != q.hdr.rsn {
                // Migrated away (and maybe back): not ours to delete.
                run.count.queue_skipped += 1;
                continue;
            }
            let Some(lmaster) = ltdb::lmaster(&env.node.vnnmap, &q.key) else {
                run.count.queue_skipped += 1;
                continue;
            };
            if lmaster != pnn {
                run.fetch_lists
                    .entry(lmaster)
                    .or_insert_with(|| RecBuffer::new(run.db))
                    .add(pnn, None, &q.key, &[]);
                run.count.to_fetch_list += 1;
            } else if q.hdr.flags & record_flags::MIGRATED_WITH_DATA != 0 {
                let hash = ltdb::key_hash(&q.key);
                if let std::collections::btree_map::Entry::Vacant(e) = run.delete_list.entry(hash) {
                    e.insert(DelRec {
                        key: q.key.clone(),
                        hdr: q.hdr,
                        remote_fail: 0,
                    });
                    run.delete_order.push(hash);
                    run.count.to_delete_list += 1;
                } else {
                    debug!("Hash collision when vacuuming, skipping this record");
                    run.count.queue_skipped += 1;
                }
            } else {
                // Never left with data: no other node has a copy.
                match rec.delete() {
                    Ok(()) | Err(tdb::Error::NotFound) => run.count.queue_deleted += 1,
                    Err(e) => {
                        error!("Error deleting record from {}: {e}", run.name);
                        run.count.queue_error += 1;
                    }
                }
            }
        }
        if run.pos >= run.queue.len() {
            run.queue = Vec::new();
            run.pos = 0;
            run.phase = Phase::FetchLists;
        }
    }

    /// Phase 3: each lmaster gets its `VACUUM_FETCH` list.
    pub(super) fn vacuum_send_fetch_lists(&mut self, run: &mut Run) {
        for (lmaster, list) in std::mem::take(&mut run.fetch_lists) {
            debug!(
                "Found {} records for lmaster {lmaster} in '{}'",
                list.count(),
                run.name
            );
            let tag = self.new_tag();
            run.tags.insert(tag, lmaster);
            self.effect(Effect::Control {
                dest: lmaster,
                req: ReqControl::new(ControlRequest::VacuumFetch(list)),
                tag: Some(tag),
            });
        }
    }

    /// Phase 4: the delete list to every other active node.
    pub(super) fn vacuum_send_try_delete(&mut self, env: &Env, run: &mut Run) {
        run.phase = Phase::TryDelete;
        if run.delete_list.is_empty() {
            return;
        }
        let mut rb = RecBuffer::new(run.db);
        for h in &run.delete_order {
            if let Some(d) = run.delete_list.get(h) {
                rb.add(run.db, Some(&d.hdr), &d.key, &[]);
            }
        }
        let pnn = env.pnn();
        let active: Vec<u32> = env
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && !n.is_inactive() && n.pnn != pnn)
            .map(|n| n.pnn)
            .collect();
        for node in active {
            let tag = self.new_tag();
            run.tags.insert(tag, node);
            self.effect(Effect::Control {
                dest: node,
                req: ReqControl::new(ControlRequest::TryDeleteRecords(rb.clone())),
                tag: Some(tag),
            });
        }
    }

    /// A node answered a control a run sent. Returns false if the tag is
    /// not vacuuming's.
    pub(crate) fn vacuum_control_reply(
        &mut self,
        tag: u64,
        r: &Result<ReplyControl, String>,
    ) -> bool {
        let Some(run) = self.vacuum.run.as_mut() else {
            return false;
        };
        let Some(node) = run.tags.remove(&tag) else {
            return false;
        };
        if run.tags.is_empty() {
            self.vacuum.kick = true;
        }
        let ok = matches!(r, Ok(rc) if rc.status == 0);
        match run.phase {
            Phase::FetchLists if !ok => {
                error!("Failed to send vacuum fetch control to node {node}");
            }
            Phase::TryDelete => match r {
                Ok(rc) if rc.status == 0 => {
                    if let Some(ControlReply::TryDeleteRecords(kept)) = &rc.data {
                        for rec in kept.iter() {
                            let h = ltdb::key_hash(rec.key);
                            match run.delete_list.get_mut(&h) {
                                Some(d) => d.remote_fail += 1,
                                None => error!(
                                    "Failed to find record with hash 0x{h:08x} coming back from TRY_DELETE_RECORDS control in delete list"
                                ),
                            }
                        }
                    }
                }
                other => {
                    let why = match other {
                        Ok(rc) => format!("status {}", rc.status),
                        Err(e) => e.clone(),
                    };
                    error!("Failed to delete records on node {node}: {why}");
                    run.abandon = true;
                }
            },
            _ => {}
        }
        true
    }

    /// Phase 5: records every other node deleted are deleted here.
    pub(super) fn vacuum_delete_batch(&mut self, env: &Env, run: &mut Run, budget: &mut usize) {
        while run.pos < run.delete_order.len() && *budget > 0 {
            let Some(db) = self.dbs.get_mut(&run.db) else {
                return;
            };
            if db.tdb.is_none() {
                return;
            }
            *budget -= 1;
            let h = run.delete_order[run.pos];
            run.pos += 1;
            let Some(d) = run.delete_list.get(&h).cloned() else {
                continue;
            };
            if d.remote_fail > 0 {
                run.count.list_remote_error += 1;
                continue;
            }
            let busy = db.waiting_on(&d.key)
                || db
                    .tdb
                    .as_ref()
                    .is_some_and(|t| t.lock_record_nonblock(&d.key).is_err());
            if busy {
                run.lock_waits += 1;
                db.wait_for_lock(
                    d.key.clone(),
                    Work::VacuumDelete {
                        run: run.id,
                        key: d.key,
                        hdr: d.hdr,
                    },
                    &self.ev_tx,
                );
                continue;
            }
            if delete_if_unchanged(db, env, &d.key, &d.hdr) {
                run.count.list_deleted += 1;
            } else {
                run.count.list_skipped += 1;
            }
        }
        if run.pos >= run.delete_order.len() && run.lock_waits == 0 {
            run.phase = Phase::Repack;
        }
    }

    /// A delete-list record whose lock was waited for.
    pub(crate) fn vacuum_locked_delete(
        &mut self,
        env: &Env,
        db_id: u32,
        run_id: u64,
        key: Vec<u8>,
        hdr: LtdbHeader,
    ) {
        let Some(mut run) = self.vacuum.run.take() else {
            return;
        };
        if run.id != run_id || run.db != db_id {
            self.vacuum.run = Some(run);
            return;
        }
        let Some(db) = self.dbs.get_mut(&db_id) else {
            self.vacuum.run = Some(run);
            return;
        };
        let ready = db
            .tdb
            .as_ref()
            .is_some_and(|t| t.lock_record_nonblock(&key).is_ok());
        if !ready {
            // Still (or again) locked: wait again.
            db.wait_for_lock(
                key.clone(),
                Work::VacuumDelete {
                    run: run_id,
                    key,
                    hdr,
                },
                &self.ev_tx,
            );
            self.vacuum.run = Some(run);
            return;
        }
        run.lock_waits = run.lock_waits.saturating_sub(1);
        if delete_if_unchanged(db, env, &key, &hdr) {
            run.count.list_deleted += 1;
        } else {
            run.count.list_skipped += 1;
        }
        if run.lock_waits == 0 && run.pos >= run.delete_order.len() {
            run.phase = Phase::Repack;
            self.vacuum.run = Some(run);
            self.vacuum_repack(env);
            return;
        }
        self.vacuum.run = Some(run);
    }

    /// Phase 6: the handle goes to a thread that repacks the file if its
    /// freelist reached `RepackLimit` entries.
    pub(super) fn vacuum_repack(&mut self, env: &Env) {
        let Some(run) = self.vacuum.run.as_mut() else {
            return;
        };
        let (run_id, db_id, name) = (run.id, run.db, run.name.clone());
        let limit = env.tunables.repack_limit as usize;
        if limit == 0 {
            // Repacking is off: the handle stays here.
            self.vacuum_finish(env, false);
            return;
        }
        let Some(tdb) = self.dbs.get_mut(&db_id).and_then(|d| d.tdb.take()) else {
            // Away (a freeze or update has it): skip the repack.
            self.vacuum_finish(env, false);
            return;
        };
        let ev = self.ev_tx.clone();
        // The handle travels in a slot, so that a thread that cannot be
        // started does not take it along.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(tdb)));
        let theirs = std::sync::Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name(format!("repack-{db_id:08x}"))
            .spawn(move || {
                let Some(tdb) = theirs.lock().ok().and_then(|mut s| s.take()) else {
                    return;
                };
                let result = repack_if_needed(&tdb, &name, limit);
                let _ = ev.send(DbEvent::Vacuum(VacEvent::Repacked {
                    run: run_id,
                    db: db_id,
                    tdb: Box::new(tdb),
                    result,
                }));
            });
        if let Err(e) = spawned {
            error!("cannot start the repack thread: {e}");
            let back = slot.lock().ok().and_then(|mut s| s.take());
            if let Some(tdb) = back {
                self.handle_returned(env, db_id, tdb);
            }
            self.vacuum_finish(env, false);
        }
    }

    /// Takes the replies to vacuum migrations out of `effects`.
    pub(crate) fn vacuum_replies(&mut self, effects: &mut Vec<Effect>) {
        if !effects
            .iter()
            .any(|e| matches!(e, Effect::ToClient(VACUUM_CLIENT, _)))
        {
            return;
        }
        let mut done = Vec::new();
        effects.retain(|e| match e {
            Effect::ToClient(VACUUM_CLIENT, b) => {
                if let Ok((h, _)) = Header::pull(b) {
                    done.push((h.reqid, h.operation == Operation::ReplyCall));
                }
                false
            }
            _ => true,
        });
        for (reqid, ok) in done {
            self.vacuum_call_done(reqid, ok);
        }
    }

    /// A vacuum migration finished: the record, now here, is queued for
    /// deletion (for the next run) if it is empty.
    pub(super) fn vacuum_call_done(&mut self, reqid: u32, ok: bool) {
        let Some(run) = self.vacuum.run.as_mut() else {
            return;
        };
        let Some(key) = run.calls.remove(&reqid) else {
            return;
        };
        if run.calls.is_empty() {
            self.vacuum.kick = true;
        }
        let db_id = run.db;
        if !ok {
            error!("Failed to migrate record for vacuuming");
            return;
        }
        let Some(tdb) = self.dbs.get(&db_id).and_then(|d| d.tdb.as_ref()) else {
            return;
        };
        let Ok(rec) = tdb.lock_record_nonblock(&key) else {
            return;
        };
        let Some(h) = empty_header(&rec) else {
            return;
        };
        drop(rec);
        debug!(
            "Vacuum Fetch record, key hash 0x{:08x}",
            ltdb::key_hash(&key)
        );
        self.vacuum.dbs.entry(db_id).or_default().schedule(&key, h);
    }
}

/// The header of a locked record that holds nothing else.
pub(crate) fn empty_header(rec: &tdb::RecordLock<'_, '_>) -> Option<LtdbHeader> {
    rec.parse(|v| {
        if v.len() == LtdbHeader::WIRE_SIZE {
            ltdb::split(v).map(|(h, _)| h)
        } else {
            None
        }
    })
    .ok()
    .flatten()
    .flatten()
}

/// Deletes a delete-list record on its lmaster, if it is still empty,
/// mastered here, at the queued rsn and without read-only flags.
fn delete_if_unchanged(db: &crate::db::Db, env: &Env, key: &[u8], hdr: &LtdbHeader) -> bool {
    let pnn = env.pnn();
    let Some(tdb) = db.tdb.as_ref() else {
        return false;
    };
    let Ok(rec) = tdb.lock_record_nonblock(key) else {
        return false;
    };
    let Some(h) = empty_header(&rec) else {
        return false;
    };
    if h.flags & record_flags::RO_FLAGS != 0 {
        debug!(
            "record on database {} has read-only flags: skipping",
            db.name
        );
        return false;
    }
    if h.dmaster != pnn || h.rsn != hdr.rsn {
        debug!(
            "record on database {} was migrated (and maybe back): skipping",
            db.name
        );
        return false;
    }
    if ltdb::lmaster(&env.node.vnnmap, key) != Some(pnn) {
        debug!(
            "not lmaster for a record in the delete list of {}: skipping",
            db.name
        );
        return false;
    }
    match rec.delete() {
        Ok(()) | Err(tdb::Error::NotFound) => true,
        Err(e) => {
            warn!("Error deleting record from {}: {e}", db.name);
            false
        }
    }
}

/// On the repack thread: the freelist size, and a repack when it reached
/// `limit` (0: never). `Some(entries)` when it repacked.
pub(crate) fn repack_if_needed(
    tdb: &tdb::Tdb,
    name: &str,
    limit: usize,
) -> Result<Option<usize>, String> {
    let n = tdb.freelist_size().map_err(|e| e.to_string())?;
    if limit == 0 || n < limit {
        return Ok(None);
    }
    info!("Repacking {name} with {n} freelist entries");
    tdb.repack().map_err(|e| e.to_string())?;
    Ok(Some(n))
}
