//! Traverses: a client's `TRAVERSE_START[_EXT]` becomes a
//! `TRAVERSE_ALL[_EXT]` to every active node (volatile databases) or to
//! one node (persistent and replicated ones); each node traverses its
//! copy and sends the records back with `TRAVERSE_DATA`, then an empty
//! record; the originating node relays each record as a message to the
//! client's srvid, and the end marker once every node has finished.
//!
//! A node's local traverse runs in a helper process (this daemon's own
//! executable, started with [`HELPER_ARG`]), as CTDB forks one: the helper
//! opens the file itself and may wait for record locks that clients hold
//! without holding up anything in the daemon. Volatile databases send only
//! the records this node is data master of, and empty ones only when
//! asked.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Instant;

use ctdb_protocol::header::CTDB_BROADCAST_CONNECTED;
use ctdb_protocol::types::{
    LtdbHeader, RecData, RecordRef, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
};
use ctdb_protocol::{ControlReply, ControlRequest, Marshal, ReplyControl};
use tokio::io::AsyncReadExt;
use tracing::{error, info, warn};

use super::{Databases, DbEvent, Effect, Env};
use crate::control::ControlCtx;
use crate::messaging::ClientId;

/// First argument that makes `ctdbd` run as a traverse helper.
pub const HELPER_ARG: &str = "--traverse-helper";

/// The traverse helper of a running daemon: this binary, named by
/// `/proc/self/exe`, which still names the running version after a package
/// upgrade replaced (or removed) the file on disk, where the path
/// `std::env::current_exe` gave at start-up would start the new one (or
/// nothing). The recovery daemon and the exec shim are started the same way.
pub const SELF_EXE: &str = "/proc/self/exe";

/// A traverse a local client started.
#[derive(Debug)]
struct TravStart {
    db: u32,
    volatile: bool,
    client: ClientId,
    client_reqid: u32,
    srvid: u64,
    nulls: u32,
    expected: u32,
    records: u32,
    deadline: Instant,
}

/// A local traverse running for some node.
#[derive(Debug)]
struct LocalTrav {
    db: u32,
    origin: u32,
    reqid: u32,
    client_reqid: u32,
    srvid: u64,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
pub struct Traverses {
    next_reqid: u32,
    starts: HashMap<u32, TravStart>,
    next_local: u64,
    locals: HashMap<u64, LocalTrav>,
}

impl Databases {
    /// `TRAVERSE_START[_EXT]` from a local client.
    pub(crate) fn traverse_start(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        t: TraverseStartExt,
    ) -> Option<ReplyControl> {
        let Some(client) = ctx.client else {
            error!("No client found for traverse");
            return Some(ReplyControl::status(-1));
        };
        let Some(db) = self.dbs.get(&t.db_id) else {
            return Some(ReplyControl::error(
                -1,
                format!("unknown database 0x{:08x}", t.db_id),
            ));
        };
        if let Some(h) = &db.health
            && env.tunables.allow_unhealthy_db_read == 0
        {
            error!(
                "db({}) unhealthy in ctdb_control_traverse_start: {h}",
                db.name
            );
            return Some(ReplyControl::status(-1));
        }
        let volatile = db.volatile();
        let name = db.name.clone();
        let pnn = env.pnn();
        let map = &env.node.vnnmap.map;
        // Every active node, whether or not it is in the vnnmap: a node
        // with its lmaster role off is out of the map but may still be
        // the data master of records (as CTDB's BROADCAST_ACTIVE).
        let mut targets: Vec<u32> = if volatile {
            env.node
                .nodes
                .iter()
                .filter(|n| !n.is_deleted() && !n.is_inactive())
                .map(|n| n.pnn)
                .collect()
        } else if map.contains(&pnn) || map.is_empty() {
            vec![pnn]
        } else {
            vec![map[0]]
        };
        targets.sort_unstable();
        targets.dedup();
        let reqid = loop {
            self.travs.next_reqid = self.travs.next_reqid.wrapping_add(1);
            let r = self.travs.next_reqid;
            if r != 0 && !self.travs.starts.contains_key(&r) {
                break r;
            }
        };
        self.travs.starts.insert(
            reqid,
            TravStart {
                db: t.db_id,
                volatile,
                client,
                client_reqid: t.reqid,
                srvid: t.srvid,
                nulls: 0,
                expected: targets.len() as u32,
                records: 0,
                deadline: Instant::now()
                    + std::time::Duration::from_secs(u64::from(
                        env.tunables.traverse_timeout.max(1),
                    )),
            },
        );
        info!("Starting traverse on DB {name} (id {reqid})");
        for dest in targets {
            let all = TraverseAllExt {
                db_id: t.db_id,
                reqid,
                pnn,
                client_reqid: t.reqid,
                srvid: t.srvid,
                withemptyrecords: t.withemptyrecords,
            };
            if dest == pnn {
                self.start_local(env, all);
            } else if t.withemptyrecords {
                self.control_noreply(dest, ControlRequest::TraverseAllExt(all));
            } else {
                self.control_noreply(
                    dest,
                    ControlRequest::TraverseAll(TraverseAll {
                        db_id: all.db_id,
                        reqid: all.reqid,
                        pnn: all.pnn,
                        client_reqid: all.client_reqid,
                        srvid: all.srvid,
                    }),
                );
            }
        }
        if self
            .travs
            .starts
            .get(&reqid)
            .is_some_and(|s| s.expected == 0)
        {
            self.traverse_end(env, reqid);
        }
        Some(ReplyControl::ok(ControlReply::TraverseStartExt))
    }

    /// `TRAVERSE_ALL[_EXT]` from a node (or this one).
    pub(crate) fn traverse_all(&mut self, env: &Env, c: TraverseAllExt) -> Option<ReplyControl> {
        let Some(db) = self.dbs.get(&c.db_id) else {
            return Some(ReplyControl::status(-1));
        };
        if let Some(h) = &db.health
            && env.tunables.allow_unhealthy_db_read == 0
        {
            error!(
                "db({}) unhealthy in ctdb_control_traverse_all: {h}",
                db.name
            );
            return Some(ReplyControl::status(-1));
        }
        self.start_local(env, c);
        Some(ReplyControl::ok(ControlReply::TraverseAll))
    }

    /// Starts the helper that traverses this node's copy for `c`.
    fn start_local(&mut self, env: &Env, c: TraverseAllExt) {
        let Some(db) = self.dbs.get(&c.db_id) else {
            return;
        };
        let id = self.travs.next_local;
        self.travs.next_local += 1;
        let exe = self.cfg.traverse_helper.clone();
        let args = vec![
            HELPER_ARG.to_owned(),
            db.path.display().to_string(),
            (db.tdb_flags & !tdb::flags::CLEAR_IF_FIRST).to_string(),
            env.pnn().to_string(),
            u8::from(db.volatile()).to_string(),
            u8::from(c.withemptyrecords).to_string(),
        ];
        let ev = self.ev_tx.clone();
        let task = tokio::spawn(async move {
            let ok = run_helper(id, &exe, &args, &ev).await;
            let _ = ev.send(DbEvent::TraverseEnd { id, ok });
        });
        self.travs.locals.insert(
            id,
            LocalTrav {
                db: c.db_id,
                origin: c.pnn,
                reqid: c.reqid,
                client_reqid: c.client_reqid,
                srvid: c.srvid,
                task,
            },
        );
    }

    /// Records from a local traverse go to the node that asked.
    pub(crate) fn local_traverse_records(&mut self, env: &Env, id: u64, data: &[u8]) {
        let Some(t) = self.travs.locals.get(&id) else {
            return;
        };
        let (origin, reqid) = (t.origin, t.reqid);
        let mut rest = data;
        while !rest.is_empty() {
            let Ok((r, n)) = RecordRef::parse(rest) else {
                break;
            };
            rest = &rest[n..];
            let rec = RecData {
                reqid,
                key: r.key.to_vec(),
                data: r.data.to_vec(),
            };
            self.send_traverse_data(env, origin, rec);
        }
    }

    pub(crate) fn local_traverse_end(&mut self, env: &Env, id: u64, ok: bool) {
        let Some(t) = self.travs.locals.remove(&id) else {
            return;
        };
        if !ok {
            error!("Local traverse failed db:0x{:08x} reqid:{}", t.db, t.reqid);
        }
        let rec = RecData {
            reqid: t.reqid,
            key: Vec::new(),
            data: Vec::new(),
        };
        self.send_traverse_data(env, t.origin, rec);
    }

    fn send_traverse_data(&mut self, env: &Env, origin: u32, rec: RecData) {
        if origin == env.pnn() {
            self.traverse_data(env, rec);
        } else {
            self.control_noreply(origin, ControlRequest::TraverseData(rec));
        }
    }

    /// `TRAVERSE_DATA`: a record (or a node's end marker) for a traverse
    /// started here.
    pub(crate) fn traverse_data(&mut self, env: &Env, rec: RecData) -> Option<ReplyControl> {
        let Some(t) = self.travs.starts.get_mut(&rec.reqid) else {
            // The traverse may have ended already.
            return Some(ReplyControl::status(-1));
        };
        if rec.key.is_empty() && rec.data.is_empty() {
            t.nulls += 1;
            if t.volatile && t.nulls < t.expected {
                return Some(ReplyControl::ok(ControlReply::TraverseData));
            }
            let id = rec.reqid;
            self.traverse_end(env, id);
            return Some(ReplyControl::ok(ControlReply::TraverseData));
        }
        t.records += 1;
        let out = RecData {
            reqid: t.client_reqid,
            key: rec.key,
            data: rec.data,
        };
        let srvid = t.srvid;
        self.effect(Effect::Message {
            dest: env.pnn(),
            srvid,
            data: out.to_bytes(),
        });
        Some(ReplyControl::ok(ControlReply::TraverseData))
    }

    /// Ends a traverse: the empty record tells the client.
    fn traverse_end(&mut self, env: &Env, id: u32) {
        let Some(t) = self.travs.starts.remove(&id) else {
            return;
        };
        let name = self
            .dbs
            .get(&t.db)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        info!(
            "Ending traverse on DB {name} (id {id}), records {}",
            t.records
        );
        let end = RecData {
            reqid: t.client_reqid,
            key: Vec::new(),
            data: Vec::new(),
        };
        self.effect(Effect::Message {
            dest: env.pnn(),
            srvid: t.srvid,
            data: end.to_bytes(),
        });
    }

    /// `TRAVERSE_KILL`: stop local traverses for a client's traverse.
    pub(crate) fn traverse_kill(&mut self, t: &TraverseStart) -> Option<ReplyControl> {
        let ids: Vec<u64> = self
            .travs
            .locals
            .iter()
            .filter(|(_, l)| l.db == t.db_id && l.client_reqid == t.reqid && l.srvid == t.srvid)
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            if let Some(l) = self.travs.locals.remove(&id) {
                l.task.abort();
            }
        }
        Some(ReplyControl::ok(ControlReply::TraverseKill))
    }

    /// Tells every node to stop its part of traverse `t`.
    fn broadcast_kill(&mut self, env: &Env, t: TraverseStart) {
        let _ = CTDB_BROADCAST_CONNECTED;
        let others: Vec<u32> = env
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.is_connected() && n.pnn != env.pnn())
            .map(|n| n.pnn)
            .collect();
        for p in others {
            self.control_noreply(p, ControlRequest::TraverseKill(t));
        }
        self.traverse_kill(&t);
    }

    pub(crate) fn traverse_timeouts(&mut self, env: &Env, now: Instant) {
        let due: Vec<u32> = self
            .travs
            .starts
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for id in due {
            let Some(t) = self.travs.starts.get(&id) else {
                continue;
            };
            error!("Traverse all timeout on database:0x{:08x}", t.db);
            let kill = TraverseStart {
                db_id: t.db,
                reqid: t.client_reqid,
                srvid: t.srvid,
            };
            self.traverse_end(env, id);
            self.broadcast_kill(env, kill);
        }
    }

    pub(crate) fn traverse_client_gone(&mut self, env: &Env, client: ClientId) {
        let gone: Vec<u32> = self
            .travs
            .starts
            .iter()
            .filter(|(_, t)| t.client == client)
            .map(|(k, _)| *k)
            .collect();
        for id in gone {
            if let Some(t) = self.travs.starts.remove(&id) {
                warn!(
                    "Traverse cancelled by client disconnect for database:0x{:08x}",
                    t.db
                );
                self.broadcast_kill(
                    env,
                    TraverseStart {
                        db_id: t.db,
                        reqid: t.client_reqid,
                        srvid: t.srvid,
                    },
                );
            }
        }
    }
}

/// Runs the helper and forwards its output in whole records.
async fn run_helper(
    id: u64,
    exe: &std::path::Path,
    args: &[String],
    ev: &tokio::sync::mpsc::UnboundedSender<DbEvent>,
) -> bool {
    stream_helper(exe, args, |whole| {
        let _ = ev.send(DbEvent::TraverseRecords { id, data: whole });
    })
    .await
}

/// Runs the traverse helper `exe` and hands its output to `records` in
/// buffers of whole marshalled records, as they arrive. True when the
/// helper succeeded and its output ended on a record boundary.
pub(crate) async fn stream_helper(
    exe: &std::path::Path,
    args: &[String],
    mut records: impl FnMut(Vec<u8>),
) -> bool {
    let mut cmd = tokio::process::Command::new(exe);
    if exe == std::path::Path::new(SELF_EXE) {
        // `ps` shows it as `ctdbd --traverse-helper ...`.
        cmd.arg0("ctdbd");
    }
    let mut child = match cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start traverse helper {}: {e}", exe.display());
            return false;
        }
    };
    let Some(mut out) = child.stdout.take() else {
        return false;
    };
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match out.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return false,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Forward every complete record.
        let mut used = 0;
        while buf.len() - used >= 4 {
            let len = u32::from_le_bytes(buf[used..used + 4].try_into().unwrap_or([0; 4])) as usize;
            if len < 16 {
                return false;
            }
            if buf.len() - used < len {
                break;
            }
            used += len;
        }
        if used > 0 {
            let rest = buf.split_off(used);
            records(std::mem::replace(&mut buf, rest));
        }
    }
    let status = child.wait().await;
    buf.is_empty() && status.is_ok_and(|s| s.success())
}

/// The traverse helper's `main`: `PATH TDB_FLAGS PNN VOLATILE WITH_EMPTY`.
/// Writes every record to send (header included) to stdout, marshalled as
/// CTDB records. Exits 0 on success.
pub fn helper_main(args: &[String]) -> i32 {
    match helper(args) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "traverse helper: {e}");
            1
        }
    }
}

fn helper(args: &[String]) -> Result<(), String> {
    let [path, flags, pnn, volatile, with_empty] = args else {
        return Err("usage: PATH TDB_FLAGS PNN VOLATILE WITH_EMPTY".into());
    };
    let flags: u32 = flags.parse().map_err(|_| "bad flags")?;
    let pnn: u32 = pnn.parse().map_err(|_| "bad pnn")?;
    let volatile = volatile == "1";
    let with_empty = with_empty == "1";
    let tdb = tdb::OpenOptions::new()
        .tdb_flags(flags & !tdb::flags::CLEAR_IF_FIRST)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut failed = None;
    let mut scratch = Vec::new();
    tdb.traverse_read(|k, v| {
        if volatile {
            if !with_empty && v.len() <= LtdbHeader::WIRE_SIZE {
                return std::ops::ControlFlow::Continue(());
            }
            // Only the authoritative copy is sent.
            match super::ltdb::split(v) {
                Some((h, _)) if h.dmaster == pnn => {}
                _ => return std::ops::ControlFlow::Continue(()),
            }
        }
        let rec = RecData {
            reqid: 0,
            key: k.to_vec(),
            data: v.to_vec(),
        };
        scratch.resize(rec.len(), 0);
        rec.push(&mut scratch);
        if let Err(e) = w.write_all(&scratch) {
            failed = Some(e.to_string());
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| format!("traverse failed: {e}"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    w.flush().map_err(|e| e.to_string())
}
