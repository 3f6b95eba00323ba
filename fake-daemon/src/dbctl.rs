//! The database controls: the fake's database layer, on real TDB files
//! shared by every scripted node. As ctdbd's event loop hands them to its
//! database layer, this fake answers them here, ahead of the daemon cores
//! (which refuse database controls).

use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Header, ReplyControl, ReqControl};
use ctdbd::messaging::ClientId;

use crate::daemon::{Daemon, Effects};
use crate::db::{Database, db_id_for, tdb_flags_for};

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;

fn not_found() -> ReplyControl {
    ReplyControl::error(ENOENT, "Database not found")
}

/// Whether this layer answers `req` (every control ctdbd hands to its
/// database layer, the database map and `FREEZE` included).
pub fn handles(req: &ReqControl) -> bool {
    ctdbd::db::controls::handles(req.opcode())
}

/// Answers a database control sent to node `h.destnode`; `None` when the
/// reply is sent otherwise (traverse) or never.
pub fn control(
    d: &mut Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    req: &ReqControl,
) -> Option<ReplyControl> {
    let dest = h.destnode;
    Some(match &req.data {
        Q::GetDbMap => ReplyControl::ok(R::GetDbMap(DbidMap {
            dbs: d
                .dbs
                .iter()
                .map(|db| Dbid {
                    db_id: db.id,
                    flags: db.flags,
                })
                .collect(),
        })),
        Q::GetDbPath(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::GetDbPath(db.path.display().to_string())),
            None => not_found(),
        },
        Q::GetDbName(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::GetDbName(db.name.clone())),
            None => not_found(),
        },
        Q::DbAttach(name) => attach(d, name, 0),
        Q::DbAttachPersistent(name) => attach(d, name, db_flags::PERSISTENT),
        Q::DbAttachReplicated(name) => attach(d, name, db_flags::REPLICATED),
        Q::DbDetach(id) => match d.dbs.iter().position(|db| db.id == *id) {
            Some(i) if d.dbs[i].is_volatile() => {
                d.dbs.remove(i);
                ReplyControl::ok(R::DbDetach)
            }
            Some(_) => ReplyControl::error(-1, "Detach on persistent database"),
            None => ReplyControl::ok(R::DbDetach),
        },
        Q::Trans3Commit(rb) => match d.db(rb.db_id) {
            None => ReplyControl::error(-1, "Unknown database"),
            Some(db) if db.is_volatile() => {
                ReplyControl::error(-1, "Transactions on volatile database")
            }
            Some(db) => match db.commit(rb) {
                Ok(()) => ReplyControl::ok(R::Trans3Commit),
                Err(e) => {
                    tracing::info!("transaction failed: {e}");
                    ReplyControl::error(-1, "Transaction failed")
                }
            },
        },
        Q::GetDbSeqnum(r) => match d.db(r.db_id) {
            None => not_found(),
            Some(db) => match db.seqnum() {
                Ok(s) => ReplyControl::ok(R::GetDbSeqnum(s)),
                Err(_) => ReplyControl::error(-1, "Failed to get seqnum"),
            },
        },
        Q::DbGetHealth(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbGetHealth(None)),
            None => not_found(),
        },
        Q::DbSetHealthy(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbSetHealthy),
            None => not_found(),
        },
        Q::GetDbStatistics(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::GetDbStatistics(Box::default())),
            None => not_found(),
        },
        Q::DbOpenFlags(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::DbOpenFlags(tdb_flags_for(db.flags) as i32)),
            None => not_found(),
        },
        Q::SetDbReadonly(id) => set_db_flag(d, *id, db_flags::READONLY, "READONLY"),
        Q::SetDbSticky(id) => set_db_flag(d, *id, db_flags::STICKY, "STICKY"),
        Q::TraverseStartExt(t) => {
            traverse(d, fx, client, h, t);
            return None;
        }
        Q::Freeze => {
            for db in &mut d.dbs {
                db.frozen = true;
            }
            ReplyControl::ok(R::Freeze)
        }
        Q::DbFreeze(id) => match d.db_mut(*id) {
            Some(db) => {
                db.frozen = true;
                ReplyControl::ok(R::DbFreeze)
            }
            None => not_found(),
        },
        Q::DbThaw(id) => match d.db_mut(*id) {
            Some(db) => {
                db.frozen = false;
                ReplyControl::ok(R::DbThaw)
            }
            None => not_found(),
        },
        Q::DbTransactionStart(t) | Q::DbTransactionCommit(t) => match d.db(t.db_id) {
            Some(db) if db.frozen => ReplyControl::ok(R::DbTransactionStart),
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbTransactionCancel(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbTransactionCancel),
            None => not_found(),
        },
        Q::WipeDatabase(t) => match d.db(t.db_id) {
            Some(db) if db.frozen => match db.wipe() {
                Ok(()) => ReplyControl::ok(R::WipeDatabase),
                Err(_) => ReplyControl::error(-1, "Failed to wipe database"),
            },
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbPushStart(p) => match d.db_mut(p.db_id) {
            Some(db) if db.frozen => {
                let push = db.push.get_or_insert_with(|| crate::db::Push {
                    srvid: p.srvid,
                    counts: Default::default(),
                });
                push.srvid = p.srvid;
                push.counts.insert(dest, 0);
                ReplyControl::ok(R::DbPushStart)
            }
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbPushConfirm(id) => match d.db_mut(*id) {
            Some(db) => match db.push.as_mut().and_then(|p| p.counts.remove(&dest)) {
                Some(n) => {
                    if db.push.as_ref().is_some_and(|p| p.counts.is_empty()) {
                        db.push = None;
                    }
                    ReplyControl::ok(R::DbPushConfirm(n))
                }
                None => ReplyControl::error(-1, "No push in progress"),
            },
            None => not_found(),
        },
        Q::DbPull(p) => match d.db(p.db_id) {
            Some(db) => {
                let recs = db.records(true).unwrap_or_default();
                let mut rb = RecBuffer::new(p.db_id);
                for (k, v) in &recs {
                    rb.add(0, None, k, v);
                }
                let mut buf = vec![0u8; ctdb_protocol::Marshal::len(&rb)];
                ctdb_protocol::Marshal::push(&rb, &mut buf);
                d.message_to(fx, client, h, p.srvid, buf);
                ReplyControl::ok(R::DbPull(rb.count()))
            }
            None => not_found(),
        },
        Q::ScheduleForDeletion(_) => ReplyControl::ok(R::ScheduleForDeletion),
        _ => ReplyControl::error(-1, "Not implemented"),
    })
}

fn attach(d: &mut Daemon, name: &str, flags: u8) -> ReplyControl {
    let id = match d.dbs.iter().find(|db| db.name == name) {
        Some(db) => db.id,
        None => {
            let id = db_id_for(name);
            match Database::open(&d.dbdir, id, name, flags, 0) {
                Ok(db) => {
                    d.dbs.push(db);
                    id
                }
                Err(e) => {
                    tracing::error!("tdb_open {name}: {e}");
                    return ReplyControl::error(-1, "Failed to attach database");
                }
            }
        }
    };
    let data = if flags & db_flags::PERSISTENT != 0 {
        R::DbAttachPersistent(id)
    } else if flags & db_flags::REPLICATED != 0 {
        R::DbAttachReplicated(id)
    } else {
        R::DbAttach(id)
    };
    ReplyControl::ok(data)
}

fn set_db_flag(d: &mut Daemon, id: u32, flag: u8, what: &str) -> ReplyControl {
    match d.db_mut(id) {
        None => not_found(),
        Some(db) if db.flags & db_flags::PERSISTENT != 0 => {
            ReplyControl::error(EINVAL, format!("Can not set {what} on persistent db"))
        }
        Some(db) => {
            db.flags |= flag;
            ReplyControl::ok(if flag == db_flags::STICKY {
                R::SetDbSticky
            } else {
                R::SetDbReadonly
            })
        }
    }
}

/// `TRAVERSE_START_EXT`: every record as a message, then the reply, then an
/// empty record to mark the end.
fn traverse(d: &Daemon, fx: &mut Effects, client: ClientId, h: &Header, t: &TraverseStartExt) {
    let Some(db) = d.db(t.db_id) else {
        d.reply(fx, client, h, ReplyControl::error(-1, "Unknown database"));
        return;
    };
    let recs = match db.records(t.withemptyrecords) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("traverse of {}: {e}", db.name);
            d.reply(fx, client, h, ReplyControl::error(-1, "Memory error"));
            return;
        }
    };
    let send = |fx: &mut Effects, key: Vec<u8>, data: Vec<u8>| {
        let rec = RecData {
            reqid: t.reqid,
            key,
            data,
        };
        let mut buf = vec![0u8; ctdb_protocol::Marshal::len(&rec)];
        ctdb_protocol::Marshal::push(&rec, &mut buf);
        d.message_to(fx, client, h, t.srvid, buf);
    };
    for (k, v) in recs {
        send(fx, k, v);
    }
    d.reply(fx, client, h, ReplyControl::ok(R::TraverseStartExt));
    send(fx, Vec::new(), Vec::new());
}
