//! Recovering one database, independently of every other one.
//!
//! The steps are CTDB's: check the database's name on the nodes that have
//! it, attach it where it is missing, freeze it on every active node,
//! start a recovery transaction, collect the records, wipe, push, commit,
//! thaw. Collecting differs by kind:
//!
//! * volatile: every node is pulled (all at once, unlike CTDB's helper,
//!   which pulls them one after the other) and copies are merged by
//!   [`crate::merge::Rank`];
//! * persistent and replicated: every node reports its sequence number
//!   (`GET_DB_SEQNUM`) and only the first node with the highest one is
//!   pulled, as CTDB 4.17 does for both. The other nodes are wiped first
//!   and get each chunk as it arrives; the source is pushed to last, or
//!   left alone when it already holds the result (see `recover_single`).
//!
//! A failed attempt is retried up to [`NUM_RETRIES`] times in all. The node
//! that made a step fail earns a ban credit each time: a freeze, an
//! attach, a name check or a pull, as with CTDB, and also a transaction
//! start, a wipe, a push, a commit or a thaw (CTDB's helper gives none for
//! those, so a node that cannot commit, say on a full disk, makes every
//! recovery fail without ever being named).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ctdb_client::DbKind;
use ctdb_protocol::control::CTDB_CTRL_FLAG_ATTACH_RECOVERY;
use ctdb_protocol::types::{DbSeqnumRequest, TransDb};
use ctdb_protocol::{ControlReply, ControlRequest};

use crate::ctx::Ctx;
use crate::dbs::DbEntry;
use crate::error::{Error, Result};
use crate::merge::{NodeSet, Policy};
use crate::pull::{Forward, pull};
use crate::push::{Pusher, push};
use crate::store::RecordStore;
use crate::trace_event;

/// Attempts per database before the recovery fails (CTDB's value).
pub const NUM_RETRIES: u32 = 3;

/// Recovers `db`, retrying. On failure, says which database failed last
/// and, if known, on which node.
pub async fn recover_db(ctx: Arc<Ctx>, db: DbEntry) -> std::result::Result<(), String> {
    tracing::info!("recover database 0x{:08x}", db.db_id);
    let mut name = None;
    let mut last = String::new();
    for attempt in 1..=NUM_RETRIES {
        if attempt > 1 {
            tracing::info!("recover database 0x{:08x}, attempt {attempt}", db.db_id);
        }
        trace_event!("db-start", "db=0x{:08x} attempt={attempt}", db.db_id);
        let t = Instant::now();
        match recover_once(&ctx, &db, &mut name).await {
            Ok(name) => {
                trace_event!("db-done", "db=0x{:08x} name={name}", db.db_id);
                tracing::debug!(
                    "recovered database {name} (0x{:08x}) in {:?}",
                    db.db_id,
                    t.elapsed()
                );
                return Ok(());
            }
            Err(e) => {
                let node = e.node().map(|n| n.to_string()).unwrap_or("-".into());
                last = format!(
                    "{} (0x{:08x}, node {node})",
                    name.as_deref().unwrap_or("?"),
                    db.db_id
                );
                trace_event!(
                    "db-failed",
                    "db=0x{:08x} attempt={attempt} node={node}",
                    db.db_id
                );
                tracing::error!(
                    "recovery of database {} (0x{:08x}) failed (attempt {attempt} of {NUM_RETRIES}): {e}",
                    name.as_deref().unwrap_or("?"),
                    db.db_id
                );
            }
        }
    }
    Err(last)
}

/// One attempt; returns the database's name.
async fn recover_once(ctx: &Arc<Ctx>, db: &DbEntry, known: &mut Option<String>) -> Result<String> {
    let db_id = db.db_id;
    let name = check_name(ctx, db).await?;
    *known = Some(name.clone());
    create_missing(ctx, db, &name).await?;

    let path = ctx
        .client
        .getdbpath(ctx.mypnn, db_id)
        .await
        .map_err(Error::node_err("GETDBPATH", ctx.mypnn))?;

    let nodes = &ctx.nodes.pnns;
    if let Err(e) = ctx
        .all(nodes, "DB_FREEZE", ControlRequest::DbFreeze(db_id))
        .await
    {
        if let Some(pnn) = e.node() {
            ctx.nodes
                .ban_credit(pnn, &format!("failed to freeze db {name}"));
        }
        return Err(e);
    }
    let transdb = TransDb {
        db_id,
        tid: ctx.generation,
    };
    credit(
        ctx,
        &name,
        ctx.all(
            nodes,
            "DB_TRANSACTION_START",
            ControlRequest::DbTransactionStart(transdb),
        )
        .await,
    )?;

    hold(ctx, db_id).await;
    // Persistent: only what changed, when every node's log allows (catchup.rs).
    let caught_up = crate::catchup::caught_up(ctx, db, &name).await?;

    let policy = match db.kind() {
        // Partially replicated (ctdb-rs): as volatile, highest rsn wins.
        DbKind::Volatile | DbKind::PartiallyReplicated => Policy::Merge { mypnn: ctx.mypnn },
        // Keyed databases (ctdb-rs) merge per record the copies of the
        // nodes at the highest copy epoch (merge.rs).
        DbKind::Keyed => Policy::Keyed {
            mypnn: ctx.mypnn,
            current: NodeSet::all(),
            generation: ctx.generation,
        },
        _ => Policy::Single {
            persistent: db.persistent(),
        },
    };
    let dir = ctx.opts.dbdir_state.clone().unwrap_or_else(|| {
        PathBuf::from(&path)
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(std::env::temp_dir)
    });
    let store = Arc::new(Mutex::new(RecordStore::new(
        policy,
        ctx.budget.clone(),
        ctx.share,
        dir,
    )));
    if caught_up {
    } else if policy.merges() {
        collect_all(ctx, db_id, &name, &store).await?;
        let store = unshare(store)?;
        log_spill(&store, db_id, &name);
        log_stale(ctx, &store, &name);
        credit(
            ctx,
            &name,
            ctx.all(
                nodes,
                "WIPE_DATABASE",
                ControlRequest::WipeDatabase(transdb),
            )
            .await,
        )?;
        credit(
            ctx,
            &name,
            push(ctx, nodes, db_id, &name, store, policy).await,
        )?;
    } else {
        credit(
            ctx,
            &name,
            recover_single(ctx, db, &name, transdb, store, policy).await,
        )?;
    }
    credit(
        ctx,
        &name,
        ctx.all(
            nodes,
            "DB_TRANSACTION_COMMIT",
            ControlRequest::DbTransactionCommit(transdb),
        )
        .await,
    )?;
    credit(
        ctx,
        &name,
        ctx.all(nodes, "DB_THAW", ControlRequest::DbThaw(db_id))
            .await,
    )?;
    Ok(name)
}

/// A failed step that names a node gives that node a ban credit, once:
/// an error already credited where it happened (a pull) comes back as
/// [`Error::Credited`] and is passed on as it is.
fn credit<T>(ctx: &Ctx, name: &str, r: Result<T>) -> Result<T> {
    match r {
        Err(Error::Credited(e)) => Err(Error::Credited(e)),
        Err(e) => match e.node() {
            Some(pnn) => {
                ctx.nodes.ban_credit(pnn, &format!("db {name}: {e}"));
                Err(Error::Credited(Box::new(e)))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// The store, once no pull holds it any more.
fn unshare(store: Arc<Mutex<RecordStore>>) -> Result<RecordStore> {
    Ok(Arc::into_inner(store)
        .ok_or_else(|| Error::Other("record store still shared".into()))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner()))
}

/// Keyed databases: the nodes whose copies were left out (older epoch).
fn log_stale(ctx: &Ctx, store: &RecordStore, name: &str) {
    let stale = store.epochs().stale();
    if stale.is_empty() {
        return;
    }
    let list: Vec<String> = stale
        .iter()
        .map(|&(i, e)| {
            let pnn = ctx.nodes.pnns.get(i as usize).copied().unwrap_or(u32::MAX);
            format!("node {pnn} (epoch {e})")
        })
        .collect();
    tracing::warn!(
        "keyed db {name}: copies of {} left out, behind epoch {}",
        list.join(", "),
        store.epochs().highest()
    );
}

fn log_spill(store: &RecordStore, db_id: u32, name: &str) {
    let stats = store.stats();
    if stats.spilled {
        trace_event!(
            "spilled",
            "db=0x{db_id:08x} records={} bytes={}",
            stats.records,
            stats.bytes
        );
        tracing::debug!(
            "records of db {name} ({} bytes) merged on disk",
            stats.bytes
        );
    }
}

/// Persistent and replicated databases: the records of the node with the
/// highest sequence number, streamed on to the other nodes as they are
/// pulled (their copies were wiped first), then pushed to the source node
/// itself, unless it already holds exactly them: a persistent database
/// whose pull brought records (so they were valid) and no deleted (empty)
/// ones is left as it is.
async fn recover_single(
    ctx: &Arc<Ctx>,
    db: &DbEntry,
    name: &str,
    transdb: TransDb,
    store: Arc<Mutex<RecordStore>>,
    policy: Policy,
) -> Result<()> {
    let db_id = db.db_id;
    let src = highest_seqnum(ctx, db_id, name).await?;
    let others: Vec<u32> = ctx
        .nodes
        .pnns
        .iter()
        .copied()
        .filter(|&p| p != src)
        .collect();
    let mut pusher = None;
    if !others.is_empty() {
        ctx.all(
            &others,
            "WIPE_DATABASE",
            ControlRequest::WipeDatabase(transdb),
        )
        .await?;
        pusher = Some(Pusher::start(ctx, &others, db_id, name).await?);
    }
    let idx = ctx.nodes.index(src).unwrap_or(0) as u32;
    let forward = pusher.as_mut().map(|pusher| Forward {
        pusher,
        persistent: db.persistent(),
    });
    if let Err(e) = pull(ctx, db_id, name, src, idx, &store, forward).await {
        let blame = e.node().unwrap_or(src);
        ctx.nodes
            .ban_credit(blame, &format!("failed to pull db {name}"));
        return Err(Error::Credited(Box::new(e)));
    }
    if let Some(p) = pusher {
        p.finish(name).await?;
    }
    let store = unshare(store)?;
    log_spill(&store, db_id, name);
    let stats = store.stats();
    if db.persistent() && stats.records > 0 && stats.empty == 0 {
        trace_event!("source-kept", "db=0x{db_id:08x} node={src}");
        return Ok(());
    }
    trace_event!(
        "source-pushed",
        "db=0x{db_id:08x} node={src} records={} empty={}",
        stats.records,
        stats.empty
    );
    ctx.all(
        &[src],
        "WIPE_DATABASE",
        ControlRequest::WipeDatabase(transdb),
    )
    .await?;
    push(ctx, &[src], db_id, name, store, policy).await?;
    Ok(())
}

/// The database's name, which every node having it must agree on.
async fn check_name(ctx: &Ctx, db: &DbEntry) -> Result<String> {
    let replies = ctx
        .all(&db.pnns, "GET_DBNAME", ControlRequest::GetDbName(db.db_id))
        .await?;
    let mut name: Option<String> = None;
    for (&pnn, r) in db.pnns.iter().zip(replies) {
        let Some(ControlReply::GetDbName(n)) = r.data else {
            return Err(Error::Bad {
                pnn,
                msg: format!("bad GET_DBNAME reply for db 0x{:08x}", db.db_id),
            });
        };
        match &name {
            None => name = Some(n),
            Some(first) if *first != n => {
                ctx.nodes.ban_credit(pnn, "incompatible database name");
                return Err(Error::Bad {
                    pnn,
                    msg: format!(
                        "Incompatible database name for 0x{:08x} ({n} != {first})",
                        db.db_id
                    ),
                });
            }
            Some(_) => {}
        }
    }
    name.ok_or_else(|| Error::Other(format!("no node has db 0x{:08x}", db.db_id)))
}

/// Attaches the database on the active nodes that lack it.
async fn create_missing(ctx: &Ctx, db: &DbEntry, name: &str) -> Result<()> {
    let missing: Vec<u32> = ctx
        .nodes
        .pnns
        .iter()
        .copied()
        .filter(|p| !db.pnns.contains(p))
        .collect();
    let attaches = missing.iter().map(|&pnn| async move {
        tracing::debug!("Create database {name} on node {pnn}");
        let r = ctx
            .client
            .db_attach(pnn, name, db.kind(), CTDB_CTRL_FLAG_ATTACH_RECOVERY)
            .await;
        (pnn, r)
    });
    for (pnn, r) in futures::future::join_all(attaches).await {
        if let Err(e) = r {
            ctx.nodes
                .ban_credit(pnn, &format!("failed to attach db {name}"));
            return Err(Error::node_err("DB_ATTACH", pnn)(e));
        }
    }
    Ok(())
}

/// Waits while the test hook's hold file exists (at most RecoverTimeout).
async fn hold(ctx: &Ctx, db_id: u32) {
    let Some(f) = &ctx.opts.hold else { return };
    if !f.exists() {
        return;
    }
    trace_event!("hold", "db=0x{db_id:08x}");
    let deadline = Instant::now() + ctx.timeout();
    while f.exists() && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Pulls every active node at once into the store, each pull a task of
/// its own so that chunks from different nodes are taken in on every
/// worker thread.
async fn collect_all(
    ctx: &Arc<Ctx>,
    db_id: u32,
    name: &str,
    store: &Arc<Mutex<RecordStore>>,
) -> Result<()> {
    let tasks: Vec<_> =
        ctx.nodes
            .pnns
            .iter()
            .enumerate()
            .map(|(i, &pnn)| {
                let (ctx, store, name) = (ctx.clone(), store.clone(), name.to_owned());
                let task = tokio::spawn(async move {
                    pull(&ctx, db_id, &name, pnn, i as u32, &store, None).await
                });
                (pnn, task)
            })
            .collect();
    let mut results = Vec::new();
    for (pnn, task) in tasks {
        let r = task
            .await
            .unwrap_or_else(|e| Err(Error::Other(format!("pull task: {e}"))));
        results.push((pnn, r));
    }
    // Blame the first failing node in node order, as a sequential pull
    // would have.
    for (pnn, r) in results {
        if let Err(e) = r {
            ctx.nodes
                .ban_credit(pnn, &format!("failed to pull db {name}"));
            return Err(e);
        }
    }
    Ok(())
}

/// The first node with the highest sequence number of the database.
async fn highest_seqnum(ctx: &Ctx, db_id: u32, name: &str) -> Result<u32> {
    let nodes = &ctx.nodes.pnns;
    let replies = ctx
        .all(
            nodes,
            "GET_DB_SEQNUM",
            ControlRequest::GetDbSeqnum(DbSeqnumRequest { db_id }),
        )
        .await?;
    let mut best = (nodes[0], 0u64);
    for (&pnn, r) in nodes.iter().zip(replies) {
        let Some(ControlReply::GetDbSeqnum(seq)) = r.data else {
            return Err(Error::Bad {
                pnn,
                msg: format!("bad GET_DB_SEQNUM reply for db {name}"),
            });
        };
        if seq > best.1 {
            best = (pnn, seq);
        }
    }
    let (pnn, seq) = best;
    tracing::debug!("Pull persistent db {name} from node {pnn} with seqnum 0x{seq:x}");
    Ok(pnn)
}
