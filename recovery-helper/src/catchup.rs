//! Incremental catch-up of persistent databases (ctdb-rs, issue 21).
//!
//! Before pulling a classic persistent database whole, the helper asks
//! every node for its change log (`DB_CHANGELOG_INFO`, see the daemon's
//! `db::changelog`): the content checksum of its copy and the changes it
//! committed recently. The source is the node the full path would pull
//! (the first with the highest sequence number). Every other node whose
//! checksum differs from the source's must be at a state the source's log
//! went through; it then gets only the records changed since
//! (`DB_CHANGES_PULL` from the source, in chunks of RecBufferSizeLimit,
//! each pushed on as it arrives with `DB_PUSH_START`/messages/
//! `DB_PUSH_CONFIRM`, inside the recovery transaction, without a wipe).
//! After the push each caught-up node's checksum must equal the source's;
//! otherwise the attempt fails (nothing is committed: the next attempt
//! starts a new transaction) and this run uses the full pull for that
//! database.
//!
//! Keyed databases (ctdb-rs) are merged per record among the copies of
//! the nodes at the highest copy epoch (`merge::Epochs`), and every
//! recovery writes the next epoch into every node's copy. Their catch-up
//! keeps both rules: the nodes at the highest epoch (each node reports its
//! epoch in `DB_CHANGELOG_INFO`) must all hold the same content, so their
//! merge is any one of them, which is the source; a node behind gets the
//! records changed since its state as above (it then holds exactly the
//! source's content: nothing of a commit the others never applied can
//! survive, since its checksum would be found nowhere in the source's
//! log); and every node, the source too, gets the next epoch record (the
//! one the full merge would push) in the same push. The records keep
//! their headers as the source holds them: the generation stamps in
//! `reserved1` are those of the commits that wrote them, as after a full
//! merge; dmaster and flags stay the source's where the full merge would
//! name the recovering node (they only break rsn ties between current
//! copies, which a catch-up never has). The check: every node holds the
//! same checksum and the next epoch.
//!
//! The full pull is used whenever anything does not fit: a node that does
//! not answer `DB_CHANGELOG_INFO` (CTDB's daemon answers -1 to the
//! unknown opcode, so a cluster with any reference node never takes this
//! path), a node whose checksum is not followed, a log that does not reach
//! back far enough, a keyed database whose current copies differ (a commit
//! some of them applied: the full merge keeps it), replicated and volatile
//! databases, and `CTDB_RECOVERY_HELPER_NO_CATCHUP` naming a file that
//! exists (a test hook to force full pulls).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ctdb_client::DbKind;
use ctdb_protocol::types::{
    CHANGELOG_HAS_EMPTY, CHANGELOG_TRACKED, ChangelogInfo, ChangesPull, DbSeqnumRequest,
    KEYED_EPOCH_KEY, LtdbHeader, RecBuffer,
};
use ctdb_protocol::{ControlReply, ControlRequest};

use crate::ctx::Ctx;
use crate::dbs::DbEntry;
use crate::error::{Error, Result};
use crate::push::Pusher;
use crate::trace_event;

/// Databases whose catch-up failed its check in this run: full pulls.
static FAILED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn failed(db_id: u32) -> bool {
    FAILED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&db_id))
}

fn mark_failed(db_id: u32) {
    FAILED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(db_id);
}

/// The test hook's file, if set and present.
fn forced_full() -> bool {
    std::env::var_os("CTDB_RECOVERY_HELPER_NO_CATCHUP")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .is_some_and(|p| p.exists())
}

/// Brings every node's copy of `db` to the source's by sending only what
/// changed, inside the recovery transaction that is open on every node.
/// `Ok(true)`: done, only the commit and thaw remain. `Ok(false)`: nothing
/// was sent; recover the database in full. An error after records were
/// sent fails the attempt.
pub async fn caught_up(ctx: &Arc<Ctx>, db: &DbEntry, name: &str) -> Result<bool> {
    let db_id = db.db_id;
    let skip = |why: &str| {
        trace_event!("catchup-skip", "db=0x{db_id:08x} why={why}");
        tracing::debug!("db {name}: full recovery ({why})");
        Ok(false)
    };
    let keyed = db.kind() == DbKind::Keyed;
    if !keyed
        && (!db.persistent() || db.kind() != DbKind::Persistent && db.kind() != DbKind::InMemory)
    {
        return skip("kind");
    }
    if failed(db_id) {
        return skip("failed-before");
    }
    if forced_full() {
        return skip("forced");
    }
    let t = Instant::now();
    let nodes = &ctx.nodes.pnns;
    let mut infos: Vec<ChangelogInfo> = Vec::with_capacity(nodes.len());
    for (pnn, r) in ctx
        .client
        .control_many(nodes, ControlRequest::DbChangelogInfo(db_id))
        .await
    {
        match r.map(|r| r.data) {
            Ok(Some(ControlReply::DbChangelogInfo(i))) if i.flags & CHANGELOG_TRACKED != 0 => {
                infos.push(*i)
            }
            Ok(_) => return skip(&format!("node-{pnn}-untracked")),
            Err(_) => return skip(&format!("node-{pnn}-no-log")),
        }
    }
    let src = if keyed {
        match keyed_source(&infos) {
            Ok(i) => i,
            Err(why) => return skip(why),
        }
    } else {
        seqnum_source(ctx, db_id, name).await?
    };
    let src_pnn = nodes[src];
    if infos[src].flags & CHANGELOG_HAS_EMPTY != 0 {
        // The full path drops deleted records from every copy.
        return skip("empty-records");
    }
    let target = infos[src].checksum;
    // Keyed: the next copy epoch, for every node (the source included).
    let next_epoch = keyed.then(|| epoch_record(ctx, &infos));
    // The nodes behind, grouped by where they are.
    let mut groups: Vec<(u128, Vec<u32>)> = Vec::new();
    for (&pnn, i) in nodes.iter().zip(&infos) {
        if i.checksum == target {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == i.checksum) {
            Some(g) => g.1.push(pnn),
            None => groups.push((i.checksum, vec![pnn])),
        }
    }
    let limit = ctx.tun.rec_buffer_size_limit.max(1);
    let mut records = 0u64;
    let mut bytes = 0u64;
    for (from, behind) in &groups {
        let mut offset = 0u64;
        let mut pusher: Option<Pusher> = None;
        loop {
            let req = ChangesPull {
                db_id,
                limit,
                from: *from,
                offset,
            };
            let r = ctx
                .client
                .control(src_pnn, ControlRequest::DbChangesPull(req))
                .await;
            let chunk = match r.map(|r| r.data) {
                Ok(Some(ControlReply::DbChangesPull(c))) => c,
                Ok(_) if pusher.is_none() => return skip("bad-reply"),
                Err(e) if pusher.is_none() => {
                    // Only the first group can get here with nothing sent
                    // before; later groups' records went into the
                    // transaction already.
                    if records == 0 {
                        // The source says its log does not reach back;
                        // anything else (a timeout, a node gone) is told
                        // apart in the trace.
                        let msg = e.to_string();
                        tracing::debug!("db {name}: DB_CHANGES_PULL from node {src_pnn}: {msg}");
                        return skip(if msg.contains("does not reach back") {
                            "log-too-short"
                        } else {
                            "changes-pull-failed"
                        });
                    }
                    mark_failed(db_id);
                    return Err(Error::Other(format!(
                        "catch-up of db {name}: node {src_pnn}'s log does not reach nodes {behind:?}"
                    )));
                }
                Ok(_) => {
                    return Err(Error::Bad {
                        pnn: src_pnn,
                        msg: format!("bad DB_CHANGES_PULL reply for db {name}"),
                    });
                }
                Err(e) => return Err(Error::node_err("DB_CHANGES_PULL", src_pnn)(e)),
            };
            if pusher.is_none() {
                pusher = Some(Pusher::start(ctx, behind, db_id, name).await?);
            }
            let n = chunk.records.count();
            offset += u64::from(n);
            records += u64::from(n);
            bytes += ctdb_protocol::Marshal::len(&chunk.records) as u64;
            if n > 0 {
                let mut rb = RecBuffer::new(db_id);
                for rec in chunk.records.iter() {
                    // Keyed: the next epoch replaces the source's below.
                    if !(keyed && rec.key == KEYED_EPOCH_KEY) {
                        rb.add(0, None, rec.key, rec.data);
                    }
                }
                if let Some(p) = pusher.as_mut() {
                    p.send(rb, name).await?;
                }
            }
            if chunk.done || n == 0 {
                break;
            }
        }
        if let Some(mut p) = pusher {
            if let Some((_, rb)) = &next_epoch {
                p.send(rb.clone(), name).await?;
            }
            p.finish(name).await?;
        }
    }
    // Keyed: the nodes that needed no records get the next epoch alone.
    if let Some((_, rb)) = &next_epoch {
        let current: Vec<u32> = nodes
            .iter()
            .zip(&infos)
            .filter(|(_, i)| i.checksum == target)
            .map(|(&p, _)| p)
            .collect();
        let mut p = Pusher::start(ctx, &current, db_id, name).await?;
        p.send(rb.clone(), name).await?;
        p.finish(name).await?;
    }
    // The check: every node now holds what the source holds (keyed: every
    // node, each with the next epoch; the source's checksum moved with it).
    let (checked, target) = match &next_epoch {
        None => (groups.iter().flat_map(|g| g.1.clone()).collect(), target),
        Some((epoch, _)) => {
            let after = match ctx
                .client
                .control(src_pnn, ControlRequest::DbChangelogInfo(db_id))
                .await
                .map(|r| r.data)
            {
                Ok(Some(ControlReply::DbChangelogInfo(i))) if i.epoch == *epoch => i.checksum,
                _ => {
                    mark_failed(db_id);
                    return Err(Error::Other(format!(
                        "catch-up of db {name}: source node {src_pnn} did not take epoch {epoch}"
                    )));
                }
            };
            (nodes.clone(), after)
        }
    };
    if !checked.is_empty() {
        let want_epoch = next_epoch.as_ref().map(|e| e.0);
        for (pnn, r) in ctx
            .client
            .control_many(&checked, ControlRequest::DbChangelogInfo(db_id))
            .await
        {
            let got = match r.map(|r| r.data) {
                Ok(Some(ControlReply::DbChangelogInfo(i)))
                    if want_epoch.is_none_or(|e| e == i.epoch) =>
                {
                    Some(i.checksum)
                }
                _ => None,
            };
            if got != Some(target) {
                mark_failed(db_id);
                trace_event!("catchup-mismatch", "db=0x{db_id:08x} node={pnn}");
                tracing::error!(
                    "catch-up of db {name}: node {pnn} has checksum {} instead of {target:032x}; recovering it in full",
                    got.map_or("?".to_string(), |c| format!("{c:032x}"))
                );
                return Err(Error::Other(format!(
                    "catch-up of db {name} failed its check on node {pnn}"
                )));
            }
        }
    }
    trace_event!(
        "catchup",
        "db=0x{db_id:08x} name={name} source={src_pnn} nodes={} records={records} bytes={bytes} epoch={} us={}",
        groups.iter().map(|g| g.1.len()).sum::<usize>(),
        next_epoch.as_ref().map_or(0, |e| e.0),
        t.elapsed().as_micros()
    );
    tracing::info!(
        "db {name}: caught up {} node(s) from node {src_pnn} with {records} records ({bytes} bytes)",
        groups.iter().map(|g| g.1.len()).sum::<usize>()
    );
    Ok(true)
}

/// Classic and in-memory databases: the node the full path would pull,
/// the first with the highest sequence number (index in the node list).
async fn seqnum_source(ctx: &Ctx, db_id: u32, name: &str) -> Result<usize> {
    let nodes = &ctx.nodes.pnns;
    let mut src = 0usize;
    let mut best = 0u64;
    for (i, (pnn, r)) in ctx
        .client
        .control_many(
            nodes,
            ControlRequest::GetDbSeqnum(DbSeqnumRequest { db_id }),
        )
        .await
        .into_iter()
        .enumerate()
    {
        let r = r.map_err(Error::node_err("GET_DB_SEQNUM", pnn))?;
        let Some(ControlReply::GetDbSeqnum(seq)) = r.data else {
            return Err(Error::Bad {
                pnn,
                msg: format!("bad GET_DB_SEQNUM reply for db {name}"),
            });
        };
        if i == 0 || seq > best {
            (src, best) = (i, seq);
        }
    }
    Ok(src)
}

/// Keyed databases: the first node at the highest copy epoch (index in the
/// node list), when every node at that epoch holds the same content (their
/// merge is then any one of them); otherwise why not.
fn keyed_source(infos: &[ChangelogInfo]) -> std::result::Result<usize, &'static str> {
    let top = infos.iter().map(|i| i.epoch).max().unwrap_or(0);
    let mut current = infos.iter().enumerate().filter(|(_, i)| i.epoch == top);
    let (src, first) = current.next().ok_or("no-nodes")?;
    if current.any(|(_, i)| i.checksum != first.checksum) {
        return Err("current-copies-differ");
    }
    Ok(src)
}

/// Keyed databases: the next copy epoch and its record as the full merge
/// pushes it (`merge::Epochs::next_record`: rsn the epoch, dmaster this
/// node, `reserved1` the recovery's generation, which the daemon checks
/// before it commits a keyed recovery; flags as `pushed_header` makes them
/// for a non-persistent database).
fn epoch_record(ctx: &Ctx, infos: &[ChangelogInfo]) -> (u64, RecBuffer) {
    let next = infos.iter().map(|i| i.epoch).max().unwrap_or(0) + 1;
    let data = next.to_le_bytes();
    let value = LtdbHeader {
        rsn: next,
        dmaster: ctx.mypnn,
        reserved1: ctx.generation,
        flags: 0,
    }
    .prepend(&data);
    let h = crate::merge::pushed_header(&value, false, ctx.mypnn).expect("record with data");
    let mut rb = RecBuffer::new(infos.first().map_or(0, |i| i.db_id));
    rb.add(0, Some(&h), KEYED_EPOCH_KEY, &data);
    (next, rb)
}

/// Records this process's bytes read and written (`/proc/self/io`: its
/// sockets, as the helper touches no files but its trace) as a trace
/// event, so tests can compare what recoveries moved.
pub fn trace_io() {
    if !crate::trace::enabled() {
        return;
    }
    let Ok(s) = std::fs::read_to_string("/proc/self/io") else {
        return;
    };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    trace_event!("io", "rchar={} wchar={}", field("rchar:"), field("wchar:"));
}
