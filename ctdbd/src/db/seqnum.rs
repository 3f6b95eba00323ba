//! Database sequence numbers, as Samba's `smbd` relies on them.
//!
//! smbd caches byte-range locks, share modes and leases per process and
//! trusts its cache while the tdb header's sequence number has not moved.
//! It asks for sequence numbers on the databases it caches with
//! `ENABLE_SEQNUM`, then opens its local copy with the flags
//! `DB_OPEN_FLAGS` reports (which then include `TDB_SEQNUM`), so every
//! store it makes bumps the number for the other smbds of the node.
//!
//! The daemon's part, as CTDB 4.17's:
//! - `ENABLE_SEQNUM` turns `TDB_SEQNUM` on for the daemon's own handle
//!   (records it stores on migration and recovery bump the number too)
//!   and for the flags `DB_OPEN_FLAGS` reports.
//! - Every `SeqnumInterval` ms the daemon compares each such database's
//!   number with the one it last saw; when it moved, it sends
//!   `UPDATE_SEQNUM` to the other nodes of the vnnmap.
//! - A node receiving `UPDATE_SEQNUM` bumps its own copy's number (if it
//!   has sequence numbers on for that database), so the smbds there drop
//!   their caches; it takes the new number as seen, so the change does
//!   not echo back.

use std::time::{Duration, Instant};

use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl};
use tracing::{debug, error};

use super::{Databases, Env};

impl Databases {
    /// `ENABLE_SEQNUM`.
    pub(crate) fn enable_seqnum(&mut self, env: &Env, id: u32) -> ReplyControl {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Unknown db_id 0x{id:x} in ctdb_ltdb_enable_seqnum");
            return ReplyControl::status(-1);
        };
        db.tdb_flags |= tdb::flags::SEQNUM;
        if db.seqnum.is_none() {
            // While background work has the handle, it is turned on when
            // the handle comes back (Databases::handle_returned).
            let now = db.tdb.as_ref().map(|t| {
                t.enable_seqnum();
                t.seqnum().unwrap_or(0)
            });
            db.seqnum = Some(now.unwrap_or(0));
        }
        if self.seqnum_next.is_none() {
            self.seqnum_next = Some(Instant::now() + seqnum_interval(env));
        }
        ReplyControl::ok(ControlReply::EnableSeqnum)
    }

    /// `UPDATE_SEQNUM` from node `srcnode`.
    pub(crate) fn update_seqnum(&mut self, env: &Env, srcnode: u32, id: u32) -> ReplyControl {
        if srcnode == env.pnn() {
            return ReplyControl::ok(ControlReply::UpdateSeqnum);
        }
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Unknown db_id 0x{id:x} in ctdb_ltdb_update_seqnum");
            return ReplyControl::status(-1);
        };
        if let Some(why) = &db.health {
            error!("db({}) unhealty in ctdb_ltdb_update_seqnum: {why}", db.name);
            return ReplyControl::status(-1);
        }
        match db.tdb.as_ref() {
            Some(t) => {
                // A no-op unless this node turned sequence numbers on.
                if let Err(e) = t.increment_seqnum() {
                    error!("db({}): cannot bump the sequence number: {e}", db.name);
                }
                if db.seqnum.is_some() {
                    db.seqnum = Some(t.seqnum().unwrap_or(0));
                }
            }
            // The handle is away (a freeze or a persistent update): bump
            // once it is back.
            None => db.seqnum_bump_pending = db.seqnum.is_some(),
        }
        ReplyControl::ok(ControlReply::UpdateSeqnum)
    }

    /// When the sequence-number check is next due.
    pub(crate) fn seqnum_next(&self) -> Option<Instant> {
        self.seqnum_next
    }

    /// The periodic check: tells the other nodes of each database whose
    /// number moved since the last check.
    pub(crate) fn seqnum_check(&mut self, env: &Env, now: Instant) {
        if self.seqnum_next.is_none_or(|t| t > now) {
            return;
        }
        let mut moved = Vec::new();
        for db in self.dbs.values_mut() {
            let (Some(seen), Some(t)) = (db.seqnum, db.tdb.as_ref()) else {
                continue;
            };
            let cur = match t.seqnum() {
                Ok(n) => n,
                Err(e) => {
                    error!("db({}): cannot read the sequence number: {e}", db.name);
                    continue;
                }
            };
            if cur != seen {
                debug!("db({}) sequence number {seen} -> {cur}", db.name);
                moved.push(db.id);
            }
            db.seqnum = Some(cur);
        }
        let me = env.pnn();
        for id in moved {
            for &pnn in env.node.vnnmap.map.iter().filter(|&&p| p != me) {
                self.control_noreply(pnn, ControlRequest::UpdateSeqnum(id));
            }
        }
        self.seqnum_next = Some(now + seqnum_interval(env));
    }

    /// A database handle came back from background work: it keeps
    /// `TDB_SEQNUM` if it was turned on meanwhile, and takes a bump that
    /// arrived while it was away.
    pub(crate) fn seqnum_handle_back(&mut self, id: u32) {
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        let (Some(_), Some(t)) = (db.seqnum, db.tdb.as_ref()) else {
            return;
        };
        t.enable_seqnum();
        if std::mem::take(&mut db.seqnum_bump_pending) {
            if let Err(e) = t.increment_seqnum() {
                error!("db({}): cannot bump the sequence number: {e}", db.name);
            }
            db.seqnum = Some(t.seqnum().unwrap_or(0));
        }
    }
}

fn seqnum_interval(env: &Env) -> Duration {
    Duration::from_millis(u64::from(env.tunables.seqnum_interval.max(1)))
}

#[cfg(test)]
mod tests {
    use ctdb_protocol::{ControlRequest, Opcode};

    use super::*;
    use crate::db::Effect;
    use crate::db::test_layer::Layer;

    fn updates(effects: &[Effect]) -> Vec<(u32, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Control { dest, req, .. } => match req.data {
                    ControlRequest::UpdateSeqnum(id) => {
                        assert_eq!(req.opcode(), Opcode::UpdateSeqnum);
                        Some((*dest, id))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn enabled_numbers_move_and_are_sent_to_the_other_nodes() {
        let mut f = Layer::new("brlock.tdb", true);
        let id = f.id;
        let (dbs, env) = f.parts();
        let flags = dbs.dbs[&id].tdb_flags;
        assert_eq!(flags & tdb::flags::SEQNUM, 0);
        assert!(dbs.seqnum_next().is_none(), "no check before ENABLE_SEQNUM");

        // Before ENABLE_SEQNUM, an UPDATE_SEQNUM from a node changes nothing.
        let s0 = dbs_tdb_seqnum(dbs, id);
        assert_eq!(dbs.update_seqnum(&env, 0, id).status, 0);
        assert_eq!(dbs_tdb_seqnum(dbs, id), s0);

        assert_eq!(dbs.enable_seqnum(&env, id).status, 0);
        assert_eq!(dbs.dbs[&id].tdb_flags, flags | tdb::flags::SEQNUM);
        let due = dbs.seqnum_next().expect("check armed");

        // Nothing moved: the check sends nothing.
        dbs.seqnum_check(&env, due);
        assert!(updates(&dbs.take_effects()).is_empty());

        // The daemon's own store moves it; the next check tells nodes 0 and 2.
        let t = dbs.dbs[&id].tdb.as_ref().unwrap();
        t.store(b"k", &[0u8; 24], tdb::StoreMode::Replace).unwrap();
        assert_eq!(dbs_tdb_seqnum(dbs, id), s0 + 1);
        let due = dbs.seqnum_next().unwrap();
        dbs.seqnum_check(&env, due - Duration::from_millis(1));
        assert!(updates(&dbs.take_effects()).is_empty(), "not before due");
        dbs.seqnum_check(&env, due);
        assert_eq!(updates(&dbs.take_effects()), vec![(0, id), (2, id)]);

        // An update from node 2 bumps our copy, and does not echo back.
        assert_eq!(dbs.update_seqnum(&env, 2, id).status, 0);
        assert_eq!(dbs_tdb_seqnum(dbs, id), s0 + 2);
        let due = dbs.seqnum_next().unwrap();
        dbs.seqnum_check(&env, due);
        assert!(updates(&dbs.take_effects()).is_empty());

        // One from ourselves is ignored; unknown databases are refused.
        assert_eq!(dbs.update_seqnum(&env, 1, id).status, 0);
        assert_eq!(dbs_tdb_seqnum(dbs, id), s0 + 2);
        assert_ne!(dbs.update_seqnum(&env, 0, 0xdead).status, 0);
        assert_ne!(dbs.enable_seqnum(&env, 0xdead).status, 0);
    }

    #[test]
    fn a_bump_while_the_handle_is_away_lands_when_it_returns() {
        let mut f = Layer::new("brlock.tdb", true);
        let id = f.id;
        let (dbs, env) = f.parts();
        dbs.enable_seqnum(&env, id);
        let s0 = dbs_tdb_seqnum(dbs, id);
        let away = dbs.dbs.get_mut(&id).unwrap().tdb.take().unwrap();
        assert_eq!(dbs.update_seqnum(&env, 0, id).status, 0);
        dbs.dbs.get_mut(&id).unwrap().tdb = Some(away);
        dbs.seqnum_handle_back(id);
        assert_eq!(dbs_tdb_seqnum(dbs, id), s0 + 1);
        // Taken as seen: the check does not send it back.
        let due = dbs.seqnum_next().unwrap();
        dbs.seqnum_check(&env, due);
        assert!(updates(&dbs.take_effects()).is_empty());
    }

    fn dbs_tdb_seqnum(dbs: &Databases, id: u32) -> u32 {
        dbs.dbs[&id].tdb.as_ref().unwrap().seqnum().unwrap()
    }
}
