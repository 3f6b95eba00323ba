//! Group commit (issue 20, `ctdbd/src/db/group_commit.rs`): commits of
//! one database that reach a node while an earlier one is being applied
//! share the next tdb transaction and its syncs.
//!
//! On a 3-node cluster of ours with metrics on every node, 24 clients (8
//! per node) commit per-key transactions on their own keys of a keyed
//! database, all at once, while 3 clients (one per node) commit classic
//! transactions on one key of a classic persistent database. Afterwards
//! every node holds every value, and each node's counters show the keyed
//! commits applied in fewer transactions, with fewer syncs, than commits
//! (CTDB pays one synced transaction per commit and node), while the
//! classic database, whose commits CTDB's g_lock serialises, still took
//! one transaction per commit and its `__db_sequence_number__` moved by
//! one per commit. The classic part runs on the reference daemon too,
//! with the same result: what CTDB's clients see is unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ctdb_client::{Client, DbKind};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};

const KEYED: &str = "gc_keyed.tdb";
const CLASSIC: &str = "gc_classic.tdb";
const SEQNUM_KEY: &[u8] = b"__db_sequence_number__\0";
const PORT: u16 = 9781;
const PER_NODE: usize = 8;
const KEYED_COMMITS: u64 = 30;
const CLASSIC_COMMITS: u64 = 15;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn value(v: Option<(ctdb_protocol::types::LtdbHeader, Vec<u8>)>) -> u64 {
    v.and_then(|(_, d)| {
        d.get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    })
    .unwrap_or(0)
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    reply
}

/// The value of counter `name` for database `db`.
fn counter(body: &str, name: &str, db: &str) -> u64 {
    let sample = format!("ctdb_{name}_total{{db=\"{db}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample}in\n{body}"))
}

/// One classic transaction per round from one client on every node, all
/// incrementing one key: CTDB's g_lock serialises them.
async fn classic_load(c: &Cluster) {
    let mut tasks = Vec::new();
    for k in 0..c.len() {
        let sock = c.socket(k);
        tasks.push(tokio::spawn(async move {
            let cl = Client::connect(sock).await.unwrap();
            let d = cl.attach(CLASSIC, DbKind::Persistent, 0).await.unwrap();
            for _ in 0..CLASSIC_COMMITS {
                let mut t = d.transaction_start(false).await.unwrap();
                let v = t
                    .fetch(b"shared")
                    .unwrap()
                    .and_then(|d| {
                        d.get(..8)
                            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    })
                    .unwrap_or(0);
                t.store(b"shared", &(v + 1).to_le_bytes()).unwrap();
                t.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every node: the classic key and the database sequence number count
/// every commit.
fn check_classic(c: &Cluster) {
    let total = CLASSIC_COMMITS * c.len() as u64;
    rt().block_on(async {
        for k in 0..c.len() {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(CLASSIC, DbKind::Persistent, 0).await.unwrap();
            assert_eq!(value(d.fetch_local(b"shared").unwrap()), total, "node {k}");
            assert_eq!(
                value(d.fetch_local(SEQNUM_KEY).unwrap()),
                total,
                "node {k}: one sequence number per commit"
            );
        }
    });
}

#[test]
fn concurrent_keyed_commits_share_transactions_and_syncs() {
    require_reference();
    // Our recovery helper: keyed databases need it.
    let c = Cluster::start(
        ClusterOptions::new(Daemon::ours(), 3).recovery_helper(our_bin("ctdb_recovery_helper")),
    );
    let addr = |k: usize| SocketAddr::new(c.ip(k).into(), PORT);
    // Metrics on every node: started again on their directories.
    for k in 0..3 {
        c.kill(k);
    }
    for k in 0..3 {
        let conf = c.base(k).join("ctdb.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("[metrics]\n\taddress = {}\n", addr(k)));
        std::fs::write(&conf, text).unwrap();
        c.restart(k);
    }
    c.wait_one_generation();
    c.our_tool_ok(0, &["attach", KEYED, "keyed"]);
    c.tool_ok(0, &["attach", CLASSIC, "persistent"]);

    let keyed_commits = KEYED_COMMITS * (3 * PER_NODE) as u64;
    rt().block_on(async {
        // Every client connected, attached and warmed up (its first
        // transaction attaches g_lock.tdb) before any starts.
        let mut dbs = Vec::new();
        for k in 0..3 {
            for i in 0..PER_NODE {
                let cl = Client::connect(c.socket(k)).await.unwrap();
                let d = cl.attach(KEYED, DbKind::Keyed, 0).await.unwrap();
                let key = format!("k{k}_{i}").into_bytes();
                let mut t = d.keyed_transaction(&[&key]).await.unwrap();
                t.store(&key, &0u64.to_le_bytes()).unwrap();
                t.commit().await.unwrap();
                dbs.push((cl, d, key));
            }
        }
        let start = tokio::sync::Barrier::new(dbs.len() + 1);
        let start = std::sync::Arc::new(start);
        let mut tasks = Vec::new();
        for (cl, d, key) in dbs {
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                for n in 1..=KEYED_COMMITS {
                    let mut t = d.keyed_transaction(&[&key]).await.unwrap();
                    assert_eq!(value(d.fetch_local(&key).unwrap()), n - 1);
                    t.store(&key, &n.to_le_bytes()).unwrap();
                    t.commit().await.unwrap();
                }
                drop(cl);
            }));
        }
        start.wait().await;
        classic_load(&c).await;
        for t in tasks {
            t.await.unwrap();
        }
    });

    // Every value on every node.
    rt().block_on(async {
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(KEYED, DbKind::Keyed, 0).await.unwrap();
            for j in 0..3 {
                for i in 0..PER_NODE {
                    let key = format!("k{j}_{i}");
                    assert_eq!(
                        value(d.fetch_local(key.as_bytes()).unwrap()),
                        KEYED_COMMITS,
                        "node {k}, {key}"
                    );
                }
            }
        }
    });
    check_classic(&c);

    for k in 0..3 {
        let m = metrics(addr(k));
        let updates = counter(&m, "db_commit_updates", KEYED);
        let transactions = counter(&m, "db_commit_transactions", KEYED);
        let syncs = counter(&m, "db_commit_syncs", KEYED);
        eprintln!(
            "node {k}: keyed {updates} updates in {transactions} transactions, {syncs} syncs ({:.1} updates per transaction)",
            updates as f64 / transactions as f64
        );
        // Every commit (and the warm-ups) applied here, at least once.
        assert!(updates >= keyed_commits, "node {k}: {updates} updates");
        assert!(
            transactions < updates,
            "node {k}: {transactions} transactions for {updates} updates: nothing was grouped"
        );
        assert!(
            syncs < 4 * updates && syncs <= 4 * transactions,
            "node {k}: {syncs} syncs for {updates} updates in {transactions} transactions"
        );
        let cu = counter(&m, "db_commit_updates", CLASSIC);
        let ct = counter(&m, "db_commit_transactions", CLASSIC);
        let cs = counter(&m, "db_commit_syncs", CLASSIC);
        eprintln!("node {k}: classic {cu} updates in {ct} transactions, {cs} syncs");
        assert_eq!(cu, CLASSIC_COMMITS * 3, "node {k}");
        assert_eq!(
            ct, cu,
            "node {k}: a classic commit is alone in its transaction"
        );
        assert_eq!(cs, 4 * cu, "node {k}");
    }
    drop(c);

    // The classic part on the reference: the same values and sequence
    // number.
    let r = Cluster::start(ClusterOptions::new(Daemon::Reference, 3));
    r.wait_one_generation();
    r.tool_ok(0, &["attach", CLASSIC, "persistent"]);
    rt().block_on(classic_load(&r));
    check_classic(&r);
}
