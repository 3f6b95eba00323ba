//! Incremental catch-up of persistent databases (ctdb-rs, issue 21).
//!
//! Before pulling a classic persistent database whole, the helper asks
//! every node for its change log (`DB_CHANGELOG_INFO`, see the daemon's
//! `db::changelog`): the content checksum of its copy and the changes it
//! committed recently. The source is the node the full path would pull
//! (the first with the highest sequence number). Every other node whose
//! checksum differs from the source's must be at a state that the log of
//! the source, or of a node with the same content, went through (probed
//! first with a one-record `DB_CHANGES_PULL`: a node that was itself
//! caught up jumped over the states in between, another may not have); it
//! then gets only the records changed since
//! (`DB_CHANGES_PULL` from that node, in chunks of RecBufferSizeLimit,
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
//! merge is any one of them, which is the source, or hold past states of
//! one of them, whose log went through them (a commit that a recovery
//! ended reached only some of them; their merge by rsn is then that copy,
//! see [`choose`]), which is the source; a node behind gets the
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
//! back far enough, a keyed database whose current copies differ with
//! none a past state of another (the full merge keeps what each applied),
//! replicated and volatile databases, and `CTDB_RECOVERY_HELPER_NO_CATCHUP` naming a file that
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

/// Whether a failed `DB_CHANGES_PULL` says the node's log does not reach
/// back (a node that does not know the control, a timeout, a node gone:
/// no).
fn not_in_log(e: &ctdb_client::ClientError) -> bool {
    matches!(
        e,
        ctdb_client::ClientError::ControlFailed { status, .. } if *status == ChangesPull::NOT_IN_LOG
    )
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
    let candidates = if keyed {
        keyed_candidates(&infos)
    } else {
        vec![seqnum_source(ctx, db_id, name).await?]
    };
    let reach = probe_logs(ctx, db_id, &infos, &candidates).await;
    let plan = match choose(&infos, &candidates, |s, c| {
        reach.get(&(s, c)).copied().unwrap_or(Reach::Failed)
    }) {
        Ok(p) => p,
        Err(why) => return skip(why),
    };
    let src = plan.src;
    let src_pnn = nodes[src];
    if infos[src].flags & CHANGELOG_HAS_EMPTY != 0 {
        // The full path drops deleted records from every copy.
        return skip("empty-records");
    }
    let target = infos[src].checksum;
    // Keyed: the next copy epoch, for every node (the source included).
    let next_epoch = keyed.then(|| epoch_record(ctx, &infos));
    // The nodes behind, grouped by where they are, each group with the
    // node whose log serves it.
    let groups: Vec<(u128, Vec<u32>, u32)> = plan
        .groups
        .iter()
        .map(|g| {
            (
                g.from,
                g.behind.iter().map(|&i| nodes[i]).collect(),
                nodes[g.server],
            )
        })
        .collect();
    let limit = ctx.tun.rec_buffer_size_limit.max(1);
    let mut records = 0u64;
    let mut bytes = 0u64;
    for (from, behind, server) in &groups {
        let server = *server;
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
                .control(server, ControlRequest::DbChangesPull(req))
                .await;
            let chunk = match r.map(|r| r.data) {
                Ok(Some(ControlReply::DbChangesPull(c))) => c,
                Ok(_) if pusher.is_none() => return skip("bad-reply"),
                Err(e) if pusher.is_none() => {
                    // Only the first group can get here with nothing sent
                    // before; later groups' records went into the
                    // transaction already.
                    if records == 0 {
                        // The serving node says its log does not reach
                        // back (it did when probed: expired meanwhile);
                        // anything else (a timeout, a node gone) is told
                        // apart in the trace.
                        tracing::debug!("db {name}: DB_CHANGES_PULL from node {server}: {e}");
                        return skip(if not_in_log(&e) {
                            "log-too-short"
                        } else {
                            "changes-pull-failed"
                        });
                    }
                    mark_failed(db_id);
                    return Err(Error::Other(format!(
                        "catch-up of db {name}: node {server}'s log does not reach nodes {behind:?}"
                    )));
                }
                Ok(_) => {
                    return Err(Error::Bad {
                        pnn: server,
                        msg: format!("bad DB_CHANGES_PULL reply for db {name}"),
                    });
                }
                Err(e) => return Err(Error::node_err("DB_CHANGES_PULL", server)(e)),
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
        "db=0x{db_id:08x} name={name} source={src_pnn} nodes={} servers={} records={records} bytes={bytes} epoch={} us={}",
        groups.iter().map(|g| g.1.len()).sum::<usize>(),
        groups
            .iter()
            .map(|g| g.2.to_string())
            .collect::<Vec<_>>()
            .join(","),
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

/// Keyed databases: the nodes at the highest copy epoch (indices in the
/// node list, in list order), each a possible source.
fn keyed_candidates(infos: &[ChangelogInfo]) -> Vec<usize> {
    let top = infos.iter().map(|i| i.epoch).max().unwrap_or(0);
    (0..infos.len())
        .filter(|&i| infos[i].epoch == top)
        .collect()
}

/// What a probe of one node's log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The log reaches back to the checksum.
    Yes,
    /// The node says it does not.
    No,
    /// The control failed otherwise (a timeout, a node gone).
    Failed,
}

/// Asks every node that holds a candidate's content whether its log
/// reaches back to each other checksum the nodes hold (one
/// `DB_CHANGES_PULL` of at most one record each, all at once). Keyed by
/// (node index, checksum).
async fn probe_logs(
    ctx: &Ctx,
    db_id: u32,
    infos: &[ChangelogInfo],
    candidates: &[usize],
) -> std::collections::HashMap<(usize, u128), Reach> {
    let mut asks: Vec<(usize, u128)> = Vec::new();
    for (s, si) in infos.iter().enumerate() {
        if !candidates.iter().any(|&c| infos[c].checksum == si.checksum) {
            continue;
        }
        for i in infos {
            if i.checksum != si.checksum && !asks.contains(&(s, i.checksum)) {
                asks.push((s, i.checksum));
            }
        }
    }
    let replies = futures::future::join_all(asks.iter().map(|&(s, from)| {
        let req = ChangesPull {
            db_id,
            limit: 1,
            from,
            offset: 0,
        };
        ctx.client
            .control(ctx.nodes.pnns[s], ControlRequest::DbChangesPull(req))
    }))
    .await;
    asks.into_iter()
        .zip(replies)
        .map(|(k, r)| {
            let reach = match r.map(|r| r.data) {
                Ok(Some(ControlReply::DbChangesPull(_))) => Reach::Yes,
                Err(e) if not_in_log(&e) => Reach::No,
                _ => Reach::Failed,
            };
            (k, reach)
        })
        .collect()
}

/// A catch-up's plan: the node whose content every node gets, and each
/// group of nodes at another checksum with the node whose log serves it.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    src: usize,
    groups: Vec<Group>,
}

#[derive(Debug, PartialEq, Eq)]
struct Group {
    from: u128,
    behind: Vec<usize>,
    server: usize,
}

/// Picks the first candidate (indices into `infos`, in order) whose
/// content every other node can be brought to: each node at another
/// checksum must be at a state that the log of some node holding the
/// candidate's content went through (`reach(node, checksum)`; the
/// candidate itself is asked first, then the nodes with the same content,
/// whose logs may reach further: a node that was itself caught up jumped
/// over the states in between). Otherwise why not (the skip reason).
///
/// Keyed databases: every node at the highest epoch is a candidate. When
/// their copies differ (a commit that a recovery ended was applied on some
/// of them: its sends are refused once the generation moved on), a copy
/// whose state another current copy's log went through is a past state of
/// that copy, which holds every record of it or a later value of it, with
/// a higher rsn (each commit writes the key's rsn plus one, under the
/// key's lock): the full merge by rsn of the two is the later copy. So the
/// later copy is the source and the earlier one is caught up, and the
/// logs go on (a full merge would wipe them and start them again, and a
/// node that was away before it, whose checksum every log held, would get
/// a full copy on its return).
fn choose(
    infos: &[ChangelogInfo],
    candidates: &[usize],
    reach: impl Fn(usize, u128) -> Reach,
) -> std::result::Result<Plan, &'static str> {
    let mut failed = false;
    for &src in candidates {
        let target = infos[src].checksum;
        let mut servers = vec![src];
        servers.extend((0..infos.len()).filter(|&i| i != src && infos[i].checksum == target));
        let mut groups: Vec<Group> = Vec::new();
        let mut ok = true;
        for (i, info) in infos.iter().enumerate() {
            if info.checksum == target {
                continue;
            }
            if let Some(g) = groups.iter_mut().find(|g| g.from == info.checksum) {
                g.behind.push(i);
                continue;
            }
            let mut server = None;
            for &s in &servers {
                match reach(s, info.checksum) {
                    Reach::Yes => {
                        server = Some(s);
                        break;
                    }
                    Reach::No => {}
                    Reach::Failed => failed = true,
                }
            }
            match server {
                Some(server) => groups.push(Group {
                    from: info.checksum,
                    behind: vec![i],
                    server,
                }),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Ok(Plan { src, groups });
        }
    }
    let differ = candidates
        .iter()
        .any(|&c| infos[c].checksum != infos[candidates[0]].checksum);
    Err(if candidates.is_empty() {
        "no-nodes"
    } else if differ {
        "current-copies-differ"
    } else if failed {
        "changes-pull-failed"
    } else {
        "log-too-short"
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_too_short_is_told_by_its_status() {
        let failed = |status| ctdb_client::ClientError::ControlFailed {
            opcode: ctdb_protocol::Opcode::DbChangesPull,
            node: 1,
            status,
            errmsg: Some("does not reach back".into()),
        };
        assert!(not_in_log(&failed(ChangesPull::NOT_IN_LOG)));
        assert!(!not_in_log(&failed(-1)));
    }

    fn info(epoch: u64, checksum: u128) -> ChangelogInfo {
        ChangelogInfo {
            flags: CHANGELOG_TRACKED,
            epoch,
            checksum,
            ..Default::default()
        }
    }

    /// `logs[i]`: the checksums node i's log went through.
    fn reach(logs: &[&[u128]]) -> impl Fn(usize, u128) -> Reach {
        let logs: Vec<Vec<u128>> = logs.iter().map(|l| l.to_vec()).collect();
        move |s, c| {
            if logs[s].contains(&c) {
                Reach::Yes
            } else {
                Reach::No
            }
        }
    }

    /// The CI failure's sequence: node 2 (at checksum A) stops; the
    /// recovery among nodes 0 and 1 freezes while node 0 commits, and the
    /// commit in flight reached node 0 (B) but not node 1 (still A). The
    /// current copies differ, but node 1's is a state node 0's log went
    /// through: node 1 is caught up from node 0, no full merge (which
    /// would start every log again, and node 2, at A, would get a full
    /// copy on its return).
    #[test]
    fn a_commit_ended_by_the_recovery_is_caught_up_not_merged() {
        const A: u128 = 0xa;
        const B: u128 = 0xb;
        let infos = [info(5, B), info(5, A)];
        let plan = choose(&infos, &keyed_candidates(&infos), reach(&[&[A], &[]])).unwrap();
        assert_eq!(
            plan,
            Plan {
                src: 0,
                groups: vec![Group {
                    from: A,
                    behind: vec![1],
                    server: 0
                }]
            }
        );
        // The other way round (node 1 applied it, node 0 did not): node 0's
        // log does not reach B, node 1 is the source.
        let infos = [info(5, A), info(5, B)];
        let plan = choose(&infos, &keyed_candidates(&infos), reach(&[&[], &[A]])).unwrap();
        assert_eq!(plan.src, 1);
        assert_eq!(plan.groups[0].behind, vec![0]);
        // Node 2 back (epoch 4, checksum A), nodes 0 and 1 moved on to C
        // through B: caught up from node 0's log.
        const C: u128 = 0xc;
        let infos = [info(6, C), info(6, C), info(5, A)];
        let plan = choose(&infos, &keyed_candidates(&infos), reach(&[&[A, B], &[A]])).unwrap();
        assert_eq!((plan.src, plan.groups[0].server), (0, 0));
    }

    /// Copies that each hold something the other never held: the full
    /// merge, as before.
    #[test]
    fn diverged_current_copies_are_merged_in_full() {
        let infos = [info(5, 0xb), info(5, 0xc), info(4, 0xa)];
        let r = choose(
            &infos,
            &keyed_candidates(&infos),
            reach(&[&[0xa], &[0xa], &[]]),
        );
        assert_eq!(r, Err("current-copies-differ"));
        // One current copy, a node behind at a state no log holds.
        let infos = [info(5, 0xb), info(5, 0xb), info(4, 0xa)];
        let r = choose(&infos, &keyed_candidates(&infos), reach(&[&[], &[], &[]]));
        assert_eq!(r, Err("log-too-short"));
        // A probe that failed is told apart.
        let r = choose(&infos, &keyed_candidates(&infos), |_, _| Reach::Failed);
        assert_eq!(r, Err("changes-pull-failed"));
    }

    /// A node with the source's content serves a node its own log does
    /// not reach (the source was itself caught up and jumped over the
    /// state the node behind is at).
    #[test]
    fn a_node_with_the_same_content_serves_what_the_source_cannot() {
        let infos = [info(0, 0xc), info(0, 0xc), info(0, 0xb)];
        let plan = choose(&infos, &[0], reach(&[&[0xa], &[0xa, 0xb], &[]])).unwrap();
        assert_eq!(
            plan,
            Plan {
                src: 0,
                groups: vec![Group {
                    from: 0xb,
                    behind: vec![2],
                    server: 1
                }]
            }
        );
        // Every node at the source's checksum: nothing to send.
        let infos = [info(0, 0xc), info(0, 0xc)];
        let plan = choose(&infos, &[1], |_, _| Reach::No).unwrap();
        assert_eq!((plan.src, plan.groups.len()), (1, 0));
    }
}
