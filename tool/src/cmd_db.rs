//! Database commands: the database map, status, dumps, attach/detach,
//! flags, sequence numbers, statistics and wiping.

use std::io::Write;
use std::path::PathBuf;

use ctdb_client::DbKind;
use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::types::{DbSeqnumRequest, DbidMap, LtdbHeader, TransDb, db_flags, node_flags};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Opcode};

use crate::cmd_node;
use crate::ctx::{CtrlError, Ctx, active_nodes, connected_nodes};
use crate::format;
use crate::options::usage;
use ctdb_protocol::stdio::check_output;

/// A database found by name or id.
pub struct DbRef {
    pub id: u32,
    pub name: String,
    pub flags: u8,
}

async fn dbmap(ctx: &Ctx, pnn: u32) -> Result<DbidMap, i32> {
    match ctx.ctrl(pnn, Q::GetDbMap).await {
        Ok(Some(R::GetDbMap(m))) => Ok(m),
        Ok(_) => Err(1),
        Err(e) => Err(e),
    }
}

async fn dbname(ctx: &Ctx, pnn: u32, id: u32) -> Result<String, i32> {
    match ctx.ctrl(pnn, Q::GetDbName(id)).await {
        Ok(Some(R::GetDbName(n))) => Ok(n),
        Ok(_) => Err(1),
        Err(e) => Err(e),
    }
}

/// Finds a database by name or `0x` id on the connected node; prints
/// `No database matching ...` when there is none.
pub async fn db_exists(ctx: &Ctx, arg: &str) -> Option<DbRef> {
    let m = dbmap(ctx, ctx.pnn).await.ok()?;
    let found = if arg.starts_with("0x") {
        let id = format::parse_standard_ulong(arg, 0)? as u32;
        m.dbs.iter().find(|d| d.db_id == id).cloned()
    } else {
        let mut f = None;
        for d in &m.dbs {
            match dbname(ctx, ctx.pnn, d.db_id).await {
                Ok(n) if n == arg => {
                    f = Some(*d);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        f
    };
    let Some(d) = found else {
        eprintln!("No database matching '{arg}' found");
        return None;
    };
    let name = if arg.starts_with("0x") {
        dbname(ctx, ctx.pnn, d.db_id).await.ok()?
    } else {
        arg.to_owned()
    };
    Some(DbRef {
        id: d.db_id,
        name,
        flags: d.flags,
    })
}

/// An attached database: id, local file and the tdb flags to open it with.
pub struct Attached {
    pub id: u32,
    pub path: PathBuf,
    pub tdb_flags: u32,
}

/// Attaches a database as CTDB's library does (attach, path, health,
/// read-only/sticky flags on every connected node, open flags), reporting
/// failures with its messages.
pub async fn attach_db(ctx: &Ctx, name: &str, flags: u8) -> Result<Attached, i32> {
    use crate::ctx::CtrlError::{Status, Transport};
    let me = ctx.pnn;
    let (req, what) = if flags & db_flags::EXTENDED != 0 {
        // ctdb-rs kinds (in-memory persistent): CTDB 4.17 refuses this.
        (
            Q::DbAttachExt(ctdb_protocol::types::DbAttachExt {
                flags: u32::from(flags & !(db_flags::READONLY | db_flags::STICKY)),
                probe: false,
                name: name.to_owned(),
            }),
            "DB_ATTACH_EXT",
        )
    } else if flags & db_flags::PERSISTENT != 0 {
        (
            Q::DbAttachPersistent(name.to_owned()),
            "DB_ATTACH_PERSISTENT",
        )
    } else if flags & db_flags::REPLICATED != 0 {
        (
            Q::DbAttachReplicated(name.to_owned()),
            "DB_ATTACH_REPLICATED",
        )
    } else {
        (Q::DbAttach(name.to_owned()), "DB_ATTACH")
    };
    // One step: a transport failure reads "<step> failed", a failed reply
    // "<parse>".
    let step = |r: Result<Option<R>, crate::ctx::CtrlError>, failed: String, parse: String| match r
    {
        Ok(d) => Ok(d),
        Err(Transport(e)) => {
            eprintln!("attach: {name} {failed}, ret={e}");
            Err(e)
        }
        Err(Status(e)) => {
            eprintln!("attach: {name} {parse}, ret={e}");
            Err(e)
        }
    };
    // The extension kinds: a refusal says why (another node's daemon, a
    // recovery helper that cannot recover the kind); CTDB's attach replies
    // carry no such text, so only these print it.
    let extension = matches!(req, Q::DbAttachExt(_));
    let reply = match ctx
        .client
        .control_raw(me, ctdb_protocol::ReqControl::new(req))
        .await
    {
        Ok(r) if r.status == 0 => Ok(r.data),
        Ok(r) => {
            if extension && let Some(m) = &r.errmsg {
                eprintln!("attach: {name}: {m}");
            }
            Err(Status(r.status))
        }
        Err(ctdb_client::ClientError::Timeout { .. }) => Err(Transport(crate::ctx::ETIMEDOUT)),
        Err(ctdb_client::ClientError::Disconnected) => crate::ctx::disconnected(),
        Err(_) => Err(Transport(-1)),
    };
    let id = match step(
        reply,
        format!("{what} failed"),
        "failed to get db_id".into(),
    )? {
        Some(R::DbAttach(id))
        | Some(R::DbAttachPersistent(id))
        | Some(R::DbAttachReplicated(id))
        | Some(R::DbAttachExt(id)) => id,
        _ => return Err(1),
    };
    let path = match step(
        ctx.ctrl_quiet(me, Q::GetDbPath(id)).await,
        "GETDBPATH failed".into(),
        "GETDBPATH parse failed".into(),
    )? {
        Some(R::GetDbPath(p)) => p,
        _ => return Err(1),
    };
    if let Some(R::DbGetHealth(Some(reason))) = step(
        ctx.ctrl_quiet(me, Q::DbGetHealth(id)).await,
        "DB_GET_HEALTH failed".into(),
        "DB_GET_HEALTH parse failed".into(),
    )? {
        eprintln!("attach: {name} database unhealthy ({reason})");
        return Err(5);
    }
    if flags & (db_flags::READONLY | db_flags::STICKY) != 0 {
        let r = async {
            let m = match ctx
                .ctrl_quiet(me, Q::GetNodemap)
                .await
                .map_err(|e| e.code())?
            {
                Some(R::GetNodemap(m)) => m,
                _ => return Err(1),
            };
            let nodes = connected_nodes(&m, CTDB_UNKNOWN_PNN);
            if flags & db_flags::READONLY != 0 {
                ctx.ctrl_multi(&nodes, Q::SetDbReadonly(id)).await?;
            }
            if flags & db_flags::STICKY != 0 {
                ctx.ctrl_multi(&nodes, Q::SetDbSticky(id)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("attach: {name} set db flags 0x{flags:08x} failed");
            return Err(e);
        }
    }
    let tdb_flags = match step(
        ctx.ctrl_quiet(me, Q::DbOpenFlags(id)).await,
        "DB_OPEN_FLAGS failed".into(),
        "DB_OPEN_FLAGS parse failed".into(),
    )? {
        Some(R::DbOpenFlags(f)) => f as u32,
        _ => return Err(1),
    };
    Ok(Attached {
        id,
        path: PathBuf::from(path),
        tdb_flags,
    })
}

/// The database kind its flags say.
pub fn kind(flags: u8) -> DbKind {
    DbKind::from_flags(flags)
}

pub async fn getdbmap(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("getdbmap"));
    }
    let m = match dbmap(ctx, ctx.cmd_pnn).await {
        Ok(m) => m,
        Err(e) => return e,
    };
    let s = ctx.opts.sep.clone();
    if ctx.opts.machinereadable {
        println!(
            "{s}ID{s}Name{s}Path{s}Persistent{s}Sticky{s}Unhealthy{s}Readonly{s}Replicated{s}"
        );
    } else {
        println!("Number of databases:{}", m.dbs.len());
    }
    for d in &m.dbs {
        let name = match dbname(ctx, ctx.cmd_pnn, d.db_id).await {
            Ok(n) => n,
            Err(e) => return e,
        };
        let path = match ctx.ctrl(ctx.cmd_pnn, Q::GetDbPath(d.db_id)).await {
            Ok(Some(R::GetDbPath(p))) => p,
            Ok(_) => return 1,
            Err(e) => return e,
        };
        let health = match ctx.ctrl(ctx.cmd_pnn, Q::DbGetHealth(d.db_id)).await {
            Ok(Some(R::DbGetHealth(h))) => h,
            Ok(_) => None,
            Err(e) => return e,
        };
        let f = |x: u8| d.flags & x != 0;
        if ctx.opts.machinereadable {
            println!(
                "{s}0x{:08X}{s}{name}{s}{path}{s}{}{s}{}{s}{}{s}{}{s}{}{s}",
                d.db_id,
                f(db_flags::PERSISTENT) as u8,
                f(db_flags::STICKY) as u8,
                health.is_some() as u8,
                f(db_flags::READONLY) as u8,
                f(db_flags::REPLICATED) as u8
            );
        } else {
            println!(
                "dbid:0x{:08x} name:{name} path:{path}{}{}{}{}{}",
                d.db_id,
                if f(db_flags::PERSISTENT) {
                    " PERSISTENT"
                } else {
                    ""
                },
                if f(db_flags::STICKY) { " STICKY" } else { "" },
                if f(db_flags::READONLY) {
                    " READONLY"
                } else {
                    ""
                },
                if f(db_flags::REPLICATED) {
                    " REPLICATED"
                } else {
                    ""
                },
                if health.is_some() { " UNHEALTHY" } else { "" }
            );
        }
    }
    0
}

pub async fn getdbstatus(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("getdbstatus"));
    }
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    let path = match ctx.ctrl(ctx.cmd_pnn, Q::GetDbPath(db.id)).await {
        Ok(Some(R::GetDbPath(p))) => p,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let health = match ctx.ctrl(ctx.cmd_pnn, Q::DbGetHealth(db.id)).await {
        Ok(Some(R::DbGetHealth(h))) => h,
        Ok(_) => None,
        Err(e) => return e,
    };
    let yn = |x: u8| if db.flags & x != 0 { "yes" } else { "no" };
    println!("dbid: 0x{:08x}\nname: {}\npath: {path}", db.id, db.name);
    println!(
        "PERSISTENT: {}\nREPLICATED: {}\nSTICKY: {}\nREADONLY: {}",
        yn(db_flags::PERSISTENT),
        yn(db_flags::REPLICATED),
        yn(db_flags::STICKY),
        yn(db_flags::READONLY)
    );
    println!("HEALTH: {}", health.as_deref().unwrap_or("OK"));
    if db.flags & db_flags::PARTIAL_REPLICA != 0 {
        return crate::cmd_replica::print_status(ctx, ctx.cmd_pnn, db.id).await;
    }
    0
}

/// Finds and attaches the database named by `arg` (printing why not).
async fn find_and_attach(ctx: &Ctx, arg: &str) -> Result<(DbRef, Attached), i32> {
    let Some(db) = db_exists(ctx, arg).await else {
        return Err(1);
    };
    match attach_db(ctx, &db.name, db.flags).await {
        Ok(a) => Ok((db, a)),
        Err(e) => {
            eprintln!("Failed to attach to DB {}", db.name);
            Err(e)
        }
    }
}

pub async fn catdb(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("catdb"));
    }
    let (_, a) = match find_and_attach(ctx, &args[0]).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let mut count = 0u32;
    let mut ret = 0;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match ctx.client.traverse(a.id, false).await {
        Err(e) => ret = traverse_error(&e),
        Ok(mut t) => {
            let mut s = String::new();
            while let Some(r) = t.next().await {
                match r {
                    // CTDB's client library drops records with no data
                    // (deleted persistent records) whatever the daemon
                    // sends.
                    Ok(rec) if rec.data.is_empty() => {}
                    Ok(rec) => {
                        count += 1;
                        s.clear();
                        format::record(&mut s, &rec.header, &rec.key, &rec.data);
                        let _ = check_output(out.write_all(s.as_bytes()));
                    }
                    Err(e) => {
                        ret = crate::ctx::report(
                            &e,
                            ctdb_protocol::Opcode::TraverseStartExt,
                            ctx.pnn,
                        );
                        break;
                    }
                }
            }
        }
    }
    let _ = check_output(writeln!(out, "Dumped {count} records"));
    let _ = check_output(out.flush());
    ret
}

/// A failed traverse, reported as CTDB's library reports it.
fn traverse_error(e: &ctdb_client::ClientError) -> i32 {
    match e {
        ctdb_client::ClientError::ControlFailed { status, .. } => {
            eprintln!("traverse: control reply failed, ret={status}");
            *status
        }
        ctdb_client::ClientError::Disconnected => crate::ctx::disconnected(),
        _ => {
            eprintln!("traverse: control failed, ret={}", crate::ctx::ETIMEDOUT);
            crate::ctx::ETIMEDOUT
        }
    }
}

/// A record as raw (key, value) bytes.
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// Every record of the local copy of a database, with a header.
pub fn local_records(a: &Attached) -> Result<Vec<RawRecord>, i32> {
    let file = ctdb_client::db::open_local(a.path.clone(), a.tdb_flags).map_err(|e| {
        eprintln!("{e}");
        1
    })?;
    let mut out = Vec::new();
    file.with(|t| {
        t.traverse_read(|k, v| {
            out.push((k.to_vec(), v.to_vec()));
            std::ops::ControlFlow::Continue(())
        })
    })
    .map_err(|e| {
        eprintln!("{e}");
        1
    })?;
    Ok(out)
}

pub async fn cattdb(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("cattdb"));
    }
    let (_, a) = match find_and_attach(ctx, &args[0]).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let recs = match local_records(&a) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0u32;
    let mut s = String::new();
    for (k, v) in recs {
        let Ok((h, d)) = LtdbHeader::split(&v) else {
            continue;
        };
        count += 1;
        s.clear();
        format::record(&mut s, &h, &k, d);
        let _ = check_output(out.write_all(s.as_bytes()));
    }
    let _ = check_output(writeln!(out, "Dumped {count} record(s)"));
    let _ = check_output(out.flush());
    0
}

pub async fn attach(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.is_empty() || args.len() > 2 {
        usage(Some("attach"));
    }
    let flags = match args.get(1).map(String::as_str) {
        None => 0,
        Some("persistent") => db_flags::PERSISTENT,
        Some("readonly") => db_flags::READONLY,
        Some("sticky") => db_flags::STICKY,
        Some("replicated") => db_flags::REPLICATED,
        Some("inmemory") => db_flags::PERSISTENT | db_flags::INMEMORY,
        Some("keyed") => db_flags::KEYED,
        Some("partial") => db_flags::PARTIAL_REPLICA,
        Some(_) => usage(Some("attach")),
    };
    match attach_db(ctx, &args[0], flags).await {
        Ok(a) => match ctdb_client::db::open_local(a.path, a.tdb_flags) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Err(e) => e,
    }
}

pub async fn detach(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.is_empty() {
        usage(Some("detach"));
    }
    let recmode = match ctx.ctrl_status(ctx.cmd_pnn, Q::GetRecmode, true).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if recmode != 0 {
        eprintln!("Database cannot be detached when recovery is active");
        return 1;
    }
    let Some(m) = ctx.get_nodemap(false).await else {
        return 1;
    };
    for n in &m.nodes {
        if n.flags & (node_flags::DISCONNECTED | node_flags::DELETED) != 0 {
            continue;
        }
        if n.flags & node_flags::INACTIVE != 0 {
            eprintln!(
                "Database cannot be detached on inactive (stopped or banned) node {}",
                n.pnn
            );
            return 1;
        }
        let req = Q::GetTunable(ctdb_protocol::control::TunableName(
            "AllowClientDBAttach".into(),
        ));
        let v = match ctx.ctrl(n.pnn, req).await {
            Ok(Some(R::GetTunable(v))) => v,
            Ok(_) => 0,
            Err(e) => {
                eprintln!(
                    "Unable to get tunable AllowClientDBAttach from node {}",
                    n.pnn
                );
                return e;
            }
        };
        if v == 1 {
            eprintln!(
                "Database access is still active on node {}. Set AllowclientDBAttach=0 on all nodes.",
                n.pnn
            );
            return 1;
        }
    }
    let mut ret2 = 0;
    for a in args {
        let Some(db) = db_exists(ctx, a).await else {
            continue;
        };
        if db.flags & (db_flags::PERSISTENT | db_flags::REPLICATED) != 0 {
            eprintln!("Only volatile databases can be detached");
            return 1;
        }
        if let Err(e) = detach_local(ctx, db.id).await {
            eprintln!("Database {} detach failed", db.name);
            ret2 = e;
        }
    }
    ret2
}

/// Detaches database `id` as CTDB's client library does: the local daemon
/// (whatever node `-n` names) is asked for the name, then to detach; it
/// passes the detach on to every other connected node itself.
async fn detach_local(ctx: &Ctx, id: u32) -> Result<(), i32> {
    let local = ctx.pnn;
    let name = match ctx.ctrl_quiet(local, Q::GetDbName(id)).await {
        Ok(Some(R::GetDbName(n))) => n,
        Ok(_) => String::new(),
        Err(e) => {
            eprintln!("detach: 0x{id:x} GET_DBNAME failed, ret={}", e.code());
            return Err(e.code());
        }
    };
    match ctx.ctrl_quiet(local, Q::DbDetach(id)).await {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("detach: {name} DB_DETACH failed, ret={}", e.code());
            Err(e.code())
        }
    }
}

pub async fn setdbflag(ctx: &mut Ctx, args: &[String], readonly: bool) -> i32 {
    let name = if readonly {
        "setdbreadonly"
    } else {
        "setdbsticky"
    };
    if args.len() != 1 {
        usage(Some(name));
    }
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    if db.flags & (db_flags::PERSISTENT | db_flags::REPLICATED) != 0 {
        if readonly {
            eprintln!("READONLY can be set only on volatile DB");
        } else {
            eprintln!("STICKY can be set only on volatile DB");
        }
        return 1;
    }
    let req = if readonly {
        Q::SetDbReadonly(db.id)
    } else {
        Q::SetDbSticky(db.id)
    };
    match ctx.ctrl(ctx.cmd_pnn, req).await {
        Ok(_) => 0,
        Err(e) => e,
    }
}

pub async fn getdbseqnum(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("getdbseqnum"));
    }
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    let req = Q::GetDbSeqnum(DbSeqnumRequest { db_id: db.id });
    match ctx.ctrl(ctx.cmd_pnn, req).await {
        Ok(Some(R::GetDbSeqnum(s))) => {
            println!("0x{s:x}");
            0
        }
        Ok(_) => 1,
        Err(e) => {
            eprintln!("Failed to get sequence number for DB {}", db.name);
            e
        }
    }
}

pub async fn dbstatistics(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("dbstatistics"));
    }
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    let s = match ctx.ctrl(ctx.cmd_pnn, Q::GetDbStatistics(db.id)).await {
        Ok(Some(R::GetDbStatistics(s))) => s,
        Ok(_) => return 1,
        Err(e) => {
            eprintln!("Failed to get statistics for DB {}", db.name);
            return e;
        }
    };
    println!("DB Statistics {}", db.name);
    crate::cmd_misc::print_fields(&[
        ("db_ro_delegations", s.db_ro_delegations),
        ("db_ro_revokes", s.db_ro_revokes),
        ("locks.num_calls", s.locks.num_calls),
        ("locks.num_current", s.locks.num_current),
        ("locks.num_pending", s.locks.num_pending),
        ("locks.num_failed", s.locks.num_failed),
    ]);
    let buckets = |b: &[u32]| {
        b.iter()
            .map(|v| format!(" {}", *v as i32))
            .collect::<String>()
    };
    println!(" hop_count_buckets:{}", buckets(&s.hop_count_bucket));
    println!(" lock_buckets:{}", buckets(&s.locks.buckets));
    for (label, l) in [
        ("locks_latency      MIN/AVG/MAX", &s.locks.latency),
        ("vacuum_latency     MIN/AVG/MAX", &s.vacuum_latency),
    ] {
        let avg = if l.num != 0 {
            l.total / l.num as f64
        } else {
            0.0
        };
        println!(
            " {label:<30}     {:.6}/{avg:.6}/{:.6} sec out of {}",
            l.min, l.max, l.num
        );
    }
    println!(" Num Hot Keys:     {}", s.num_hot_keys as i32);
    for hk in s.hot_keys.iter().take(s.num_hot_keys as usize) {
        let hex: String = hk.key.iter().map(|b| format!("{b:02x}")).collect();
        println!("     Count:{} Key:{hex}", hk.count as i32);
    }
    0
}

/// Starts a recovery-style rewrite of a database on every active node:
/// freeze, start a transaction, wipe. Returns the nodes and transaction.
pub async fn rewrite_begin(ctx: &mut Ctx, db_id: u32) -> Result<(Vec<u32>, TransDb), i32> {
    let Some(m) = ctx.get_nodemap(false).await else {
        eprintln!("Failed to get nodemap");
        return Err(12);
    };
    let generation = match cmd_node::get_generation(ctx).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("Failed to get current generation");
            return Err(e);
        }
    };
    let nodes = active_nodes(&m, CTDB_UNKNOWN_PNN);
    if nodes.is_empty() {
        return Err(12);
    }
    let t = TransDb {
        db_id,
        tid: generation,
    };
    let r = async {
        ctx.ctrl_multi(&nodes, Q::DbFreeze(db_id)).await?;
        ctx.ctrl_multi(&nodes, Q::DbTransactionStart(t)).await?;
        ctx.ctrl_multi(&nodes, Q::WipeDatabase(t)).await?;
        Ok::<(), i32>(())
    }
    .await;
    match r {
        Ok(()) => Ok((nodes, t)),
        Err(e) => Err(rewrite_failed(ctx, e).await),
    }
}

/// Finishes a rewrite: healthy, commit, thaw.
pub async fn rewrite_finish(ctx: &mut Ctx, nodes: &[u32], t: TransDb) -> i32 {
    match rewrite_commit(ctx, nodes, t).await {
        Ok(()) => 0,
        Err(f) => rewrite_failed(ctx, f.code()).await,
    }
}

/// Why the end of a rewrite failed: the first of its controls (healthy,
/// commit, thaw) that failed on some node, and every node it failed on,
/// in node order, with how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteFailure {
    pub op: Opcode,
    pub failed: Vec<(u32, CtrlError)>,
}

impl RewriteFailure {
    /// The exit code: the first node's failure, as `ctrl_multi` gives it.
    pub fn code(&self) -> i32 {
        self.failed.first().map_or(-1, |(_, e)| e.code())
    }
}

/// The end of a rewrite (healthy, commit, thaw) without the recovery a
/// failure needs (`rewrite_failed`): the caller can say what failed first.
pub async fn rewrite_commit(ctx: &Ctx, nodes: &[u32], t: TransDb) -> Result<(), RewriteFailure> {
    for req in [
        Q::DbSetHealthy(t.db_id),
        Q::DbTransactionCommit(t),
        Q::DbThaw(t.db_id),
    ] {
        let op = req.opcode();
        let failed: Vec<(u32, CtrlError)> = nodes
            .iter()
            .zip(ctx.ctrl_each(nodes, req).await)
            .filter_map(|(&n, r)| r.err().map(|e| (n, e)))
            .collect();
        if !failed.is_empty() {
            return Err(RewriteFailure { op, failed });
        }
    }
    Ok(())
}

/// A rewrite failed: force a recovery to get back to a consistent state.
pub async fn rewrite_failed(ctx: &mut Ctx, e: i32) -> i32 {
    let _ = ctx.ctrl(ctx.pnn, Q::SetRecmode(1)).await;
    e
}

pub async fn wipedb(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("wipedb"));
    }
    let (db, _) = match find_and_attach(ctx, &args[0]).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let (nodes, t) = match rewrite_begin(ctx, db.id).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    let r = rewrite_finish(ctx, &nodes, t).await;
    if r == 0 {
        println!("Database {} wiped", db.name);
    }
    r
}
