//! Partially replicated volatile databases (ctdb-rs extension, issue 21,
//! `DB_ATTACH_EXT` flags `0x40`): records written and synced from clients
//! on every node survive `kill -9` of one node with their last synced
//! value, while the same writes to a classic volatile database in the same
//! cluster lose the records whose only copy was on that node (the
//! documented contrast). Writes made after a sync on a node that stays up
//! are not undone by the replica. In a mixed cluster (a reference node)
//! the attach fails cleanly on both kinds of node.
//!
//! The first test recovers with the reference recovery helper (the
//! harness's default), the second with ours: both keep the copy with the
//! highest rsn, which is what restores the replicas.

use std::path::Path;
use std::time::Duration;

use ctdb_client::{Client, Db, DbKind};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{DbAttachExt, db_flags};
use ctdb_protocol::{ControlRequest, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const PR: &str = "partial_test.tdb";
const CLASSIC: &str = "volatile_test.tdb";
const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";
/// Records per writing node (3 nodes: 10,002 in all).
const PER_NODE: usize = 3334;
/// Concurrent writers per node.
const WORKERS: usize = 4;
/// Keys of the node whose third write is left unsynced.
const UNSYNCED: usize = 300;
const KILLED: usize = 2;

fn ours() -> Daemon {
    Daemon::Ours(our_bin("ctdbd"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn our_tool(c: &Cluster, k: usize, args: &[&str]) -> (bool, String) {
    let out = c.tool_with(&our_bin("ctdb"), k, args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every listed node in recovery mode NORMAL, with `ok` nodes OK and one
/// generation that is not `not`.
fn wait_recovered(c: &Cluster, nodes: &[usize], ok: usize, not: &str) {
    poll_until(Duration::from_secs(120), "a recovered cluster", || {
        let mut gens = Vec::new();
        for &k in nodes {
            let s = String::from_utf8_lossy(&c.tool(k, &["status"]).stdout).into_owned();
            let n_ok = s
                .lines()
                .filter(|l| l.starts_with("pnn:") && l.contains(" OK"))
                .count();
            if n_ok != ok || !s.contains("Recovery mode:NORMAL") {
                return None;
            }
            gens.push(c.generation(k).unwrap_or_default());
        }
        (gens.iter().all(|g| g == &gens[0]) && gens[0] != not && gens[0] != "INVALID").then_some(())
    });
}

/// The key of record `i` first written by node `k`.
fn key(k: usize, i: usize) -> Vec<u8> {
    format!("n{k}-r{i}").into_bytes()
}

/// Which node writes record (`k`, `i`) a second time: every third record
/// of node `k` is written again from the next node (a migration).
fn second_writer(k: usize, i: usize) -> Option<usize> {
    i.is_multiple_of(3).then_some((k + 1) % 3)
}

/// The value record (`k`, `i`) has after the synced writes.
fn synced_value(k: usize, i: usize) -> Vec<u8> {
    match second_writer(k, i) {
        Some(w) => format!("v2-{k}-{i}-by{w}").into_bytes(),
        None => format!("v1-{k}-{i}").into_bytes(),
    }
}

/// One synced pass, from every node at once: pass 1, each node its own
/// records; pass 2, every third record again from the next node (a
/// migration). The classic database gets the same writes, unsynced.
async fn sync_pass(pr: &[Db], classic: &[Db], pass: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..3 {
        let items: Vec<(usize, usize)> = (0..3)
            .flat_map(|k| (0..PER_NODE).map(move |i| (k, i)))
            .filter(|&(k, i)| {
                if pass == 1 {
                    k == w
                } else {
                    second_writer(k, i) == Some(w)
                }
            })
            .collect();
        let chunk = items.len().div_ceil(WORKERS).max(1);
        for part in items.chunks(chunk) {
            let part = part.to_vec();
            let (p, c) = (pr[w].clone(), classic[w].clone());
            tasks.spawn(async move {
                for (k, i) in part {
                    let v = if pass == 1 {
                        format!("v1-{k}-{i}").into_bytes()
                    } else {
                        synced_value(k, i)
                    };
                    p.store_synced(&key(k, i), &v)
                        .await
                        .unwrap_or_else(|e| panic!("sync of {k}/{i} on node {w}: {e}"));
                    c.store(&key(k, i), &v)
                        .await
                        .unwrap_or_else(|e| panic!("store of {k}/{i} on node {w}: {e}"));
                }
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Writes (and, for the partially replicated database, syncs) from every
/// node, then a third, unsynced write of some records of nodes 0 and 1
/// made on the nodes that master them.
async fn write_all(pr: &[Db], classic: &[Db]) {
    sync_pass(pr, classic, 1).await;
    sync_pass(pr, classic, 2).await;
    // Unsynced third writes on nodes 0 and 1, by the last writer (which
    // masters the record): they must win over the replicas.
    for (k, d) in pr.iter().enumerate().take(2) {
        for i in unsynced() {
            d.store(&key(k, i), format!("v3-{k}-{i}").as_bytes())
                .await
                .unwrap();
        }
    }
}

/// The records (of nodes 0 and 1) written a third time without a sync.
fn unsynced() -> impl Iterator<Item = usize> {
    (1..PER_NODE).filter(|i| i % 3 != 0).take(UNSYNCED)
}

/// The value the partially replicated database must show for (`k`, `i`).
fn expected(k: usize, i: usize) -> Vec<u8> {
    if k < 2 && unsynced().any(|x| x == i) {
        format!("v3-{k}-{i}").into_bytes()
    } else {
        synced_value(k, i)
    }
}

fn synced_records_survive_kill(helper: Option<&Path>) {
    require_reference();
    let mut opts = ClusterOptions::new(ours(), 3);
    if let Some(h) = helper {
        opts = opts.recovery_helper(h);
    }
    let c = Cluster::start(opts);
    c.wait_healthy(Duration::from_secs(120));
    wait_recovered(&c, &[0, 1, 2], 3, "");

    // The kind through our tool: flags 0x40 on every node.
    let (ok, out) = our_tool(&c, 0, &["attach", PR, "partial"]);
    assert!(ok, "attach: {out}");
    let rt = rt();
    let (pr, classic) = rt.block_on(async {
        let mut pr = Vec::new();
        let mut classic = Vec::new();
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(PR, DbKind::PartiallyReplicated, 0).await.unwrap();
            assert_eq!(d.kind(), DbKind::PartiallyReplicated);
            assert!(
                d.transaction_start(false).await.is_err(),
                "a transaction on a partially replicated database"
            );
            let map = cl.get_dbmap(CTDB_CURRENT_NODE).await.unwrap();
            let f = map.dbs.iter().find(|x| x.db_id == d.id()).map(|x| x.flags);
            assert_eq!(f, Some(db_flags::PARTIAL_REPLICA), "node {k}'s db map");
            pr.push(d);
            classic.push(cl.attach(CLASSIC, DbKind::Volatile, 0).await.unwrap());
        }
        // A classic volatile database refuses a sync, clearly.
        let e = classic[0].sync(b"x").await.unwrap_err().to_string();
        assert!(e.contains("not partially replicated"), "unclear error: {e}");
        write_all(&pr, &classic).await;
        (pr, classic)
    });

    // Tool: the replica state on node 0 (its syncs went to the others).
    let (ok, out) = our_tool(&c, 0, &["getdbstatus", PR]);
    assert!(ok, "getdbstatus: {out}");
    assert!(out.contains("PARTIALLY REPLICATED: yes"), "{out}");
    let syncs: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("SYNCS: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no SYNCS line: {out}"));
    assert!(syncs >= PER_NODE as u64, "node 0 synced {syncs}: {out}");
    assert!(
        out.contains("SYNCS: ") && out.contains("(failed: 0)"),
        "{out}"
    );
    let stored: u64 = (0..3)
        .map(|k| {
            let (ok, out) = our_tool(&c, k, &["getdbstatus", PR]);
            assert!(ok, "getdbstatus on {k}: {out}");
            out.lines()
                .find_map(|l| l.strip_prefix("REPLICAS STORED HERE: "))
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap()
        })
        .sum();
    assert!(stored >= (3 * PER_NODE) as u64, "replicas stored: {stored}");
    // Our tool's record commands work on the kind as on a volatile one.
    let (ok, out) = our_tool(&c, 1, &["writekey", PR, "toolkey", "toolvalue"]);
    assert!(ok, "writekey: {out}");
    let (ok, out) = our_tool(&c, 0, &["readkey", PR, "toolkey"]);
    assert!(ok && out.contains("toolvalue"), "readkey: {out}");
    // Read-only delegations and sticky records are refused on the kind,
    // clearly, on every node, and the flags stay off (as CTDB refuses them
    // on persistent databases).
    // Our tool prints CTDB's line ("Control SET_DB_READONY failed,
    // ret=-1"); the daemon's message says why.
    for (k, d) in pr.iter().enumerate() {
        for cmd in ["setdbreadonly", "setdbsticky"] {
            let (ok, out) = our_tool(&c, k, &[cmd, PR]);
            assert!(
                !ok && out.contains("failed"),
                "{cmd} on node {k} was taken: {out}"
            );
        }
        let id = d.id();
        rt.block_on(async {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            for (what, req) in [
                ("readonly", ControlRequest::SetDbReadonly(id)),
                ("sticky", ControlRequest::SetDbSticky(id)),
            ] {
                let r = cl
                    .control_raw(CTDB_CURRENT_NODE, ReqControl::new(req))
                    .await
                    .unwrap();
                let m = r.errmsg.unwrap_or_default();
                assert!(
                    r.status == -1
                        && m.contains("partially replicated")
                        && m.contains(&format!("does not support the {what} flag")),
                    "{what} on node {k}: status {} {m:?}",
                    r.status
                );
            }
        });
    }
    let (ok, out) = our_tool(&c, 0, &["getdbmap"]);
    assert!(ok, "getdbmap: {out}");
    let line = out.lines().find(|l| l.contains(PR)).unwrap_or_default();
    assert!(
        !line.contains("READONLY") && !line.contains("STICKY"),
        "{line}"
    );
    // The classic database is untouched by the extension.
    let (ok, out) = our_tool(&c, 0, &["getdbstatus", CLASSIC]);
    assert!(ok && !out.contains("PARTIALLY"), "{out}");
    drop(pr);
    drop(classic);

    let before = c.generation(0).unwrap_or_default();
    c.kill(KILLED);
    wait_recovered(&c, &[0, 1], 2, &before);

    let (lost_pr, lost_classic, wrong_pr) = rt.block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        let pr = cl.attach(PR, DbKind::PartiallyReplicated, 0).await.unwrap();
        let classic = cl.attach(CLASSIC, DbKind::Volatile, 0).await.unwrap();
        let (mut lost_pr, mut lost_classic) = (0usize, 0usize);
        let mut wrong = Vec::new();
        for k in 0..3 {
            for i in 0..PER_NODE {
                let r = pr.fetch(&key(k, i)).await.unwrap();
                if r.data != expected(k, i) {
                    lost_pr += 1;
                    if wrong.len() < 5 {
                        wrong.push(format!(
                            "{}: {:?} (rsn {}) instead of {:?}",
                            String::from_utf8_lossy(&key(k, i)),
                            String::from_utf8_lossy(&r.data),
                            r.header.rsn,
                            String::from_utf8_lossy(&expected(k, i))
                        ));
                    }
                }
                let r = classic.fetch(&key(k, i)).await.unwrap();
                if r.data != synced_value(k, i) {
                    lost_classic += 1;
                }
            }
        }
        (lost_pr, lost_classic, wrong)
    });
    println!(
        "after kill -9 of node {KILLED}: partially replicated lost {lost_pr} of {}, \
         classic volatile lost {lost_classic}",
        3 * PER_NODE
    );
    assert_eq!(lost_pr, 0, "synced records lost or wrong: {wrong_pr:?}");
    // The contrast: a classic volatile database loses the records whose
    // last write was on the killed node (about a third of them).
    assert!(
        lost_classic > PER_NODE / 2,
        "classic volatile lost only {lost_classic}"
    );

    // The node comes back and takes part: a sync from it lands.
    c.restart(KILLED);
    c.wait_healthy(Duration::from_secs(120));
    rt.block_on(async {
        let cl = Client::connect(c.socket(KILLED)).await.unwrap();
        let d = cl.attach(PR, DbKind::PartiallyReplicated, 0).await.unwrap();
        d.store_synced(b"after", b"back").await.unwrap();
        assert_eq!(d.fetch(b"after").await.unwrap().data, b"back");
        assert_eq!(
            d.fetch(&key(0, 1)).await.unwrap().data,
            expected(0, 1),
            "node {KILLED} reads node 0's record"
        );
    });
}

#[test]
fn synced_records_survive_kill_classic_volatile_loses_them() {
    synced_records_survive_kill(None);
}

#[test]
fn synced_records_survive_kill_with_our_recovery_helper() {
    synced_records_survive_kill(Some(&our_bin("ctdb_recovery_helper")));
}

/// Reference node 2 among ours: the attach fails on both kinds of node
/// and nothing is attached.
#[test]
fn mixed_cluster_refuses_partially_replicated_attach() {
    require_reference();
    let c = Cluster::start_with_reference_node(
        ClusterOptions::new(ours(), 3).recovery_helper(HELPER),
        2,
    );
    wait_recovered(&c, &[0, 1, 2], 3, "");

    let (ok, out) = our_tool(&c, 0, &["attach", PR, "partial"]);
    assert!(!ok, "attach on our node succeeded: {out}");
    let err = rt().block_on(async {
        let cl = Client::connect(c.socket(1)).await.unwrap();
        cl.attach(PR, DbKind::PartiallyReplicated, 0).await.err()
    });
    let err = err
        .expect("client attach on our node succeeded")
        .to_string();
    assert!(
        err.contains("node 2 refused DB_ATTACH_EXT"),
        "unclear error: {err}"
    );
    let (ok, out) = our_tool(&c, 2, &["attach", PR, "partial"]);
    assert!(!ok, "attach on the reference node succeeded: {out}");
    let st = rt().block_on(async {
        let cl = Client::connect(c.socket(2)).await.unwrap();
        cl.control_raw(
            CTDB_CURRENT_NODE,
            ReqControl::new(ControlRequest::DbAttachExt(DbAttachExt {
                flags: u32::from(db_flags::PARTIAL_REPLICA),
                probe: false,
                name: PR.into(),
            })),
        )
        .await
        .unwrap()
        .status
    });
    assert_ne!(st, 0, "the reference accepted DB_ATTACH_EXT");
    for k in 0..3 {
        let listed = c.tool_ok(k, &["getdbmap"]);
        assert!(!listed.contains(PR), "node {k} has {PR}: {listed}");
    }
    // Classic volatile databases still work across both daemons.
    c.tool_ok(0, &["attach", CLASSIC]);
    c.tool_ok(2, &["writekey", CLASSIC, "k", "from2"]);
    assert!(c.tool_ok(0, &["readkey", CLASSIC, "k"]).contains("from2"));
}
