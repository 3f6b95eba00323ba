//! Keyed persistent databases (ctdb-rs extension, `DB_ATTACH_EXT` with
//! flags `KEYED`): per-key transactions. While one client holds a
//! transaction on key A open for 1 s, a transaction on key B from another
//! node commits in under 50 ms; a transaction on key A from a third node
//! waits for the first and sees its value; every node holds every commit;
//! a recovery merges the nodes' copies per record; no lost updates while a
//! client-less node is killed with SIGKILL and restarted (our recovery
//! helper, which leaves out the copy of a node that missed a recovery). In
//! a mixed cluster (reference node + ours) attaching one fails cleanly.

use std::time::{Duration, Instant};

use ctdb_client::db::{glock, keyed};
use ctdb_client::{Client, DbKind};
use ctdb_protocol::Marshal;
use ctdb_protocol::types::{GLockList, KEYED_EPOCH_KEY, db_flags};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

use crate::kill_increments;

const DB: &str = "keyed_test.tdb";

fn ours() -> Daemon {
    Daemon::Ours(our_bin("ctdbd"))
}

/// CTDB's recovery helper, which merges keyed databases by rsn alone.
const CTDB_HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";

/// A cluster of ours whose daemons run our recovery helper: keyed
/// databases can be attached only then.
fn ours_with_helper(nodes: usize) -> ClusterOptions {
    ClusterOptions::new(ours(), nodes).recovery_helper(our_bin("ctdb_recovery_helper"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn value(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|d| {
        d.get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    })
    .unwrap_or(0)
}

/// Every node's copy: (key, value), sorted, without the recovery's epoch
/// record.
fn copy(c: &Cluster, k: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    rt().block_on(async {
        let cl = Client::connect(c.socket(k)).await.unwrap();
        let d = cl.attach(DB, DbKind::Keyed, 0).await.unwrap();
        let mut v: Vec<_> = d
            .traverse_local()
            .unwrap()
            .into_iter()
            .filter(|r| !r.data.is_empty() && r.key != KEYED_EPOCH_KEY)
            .map(|r| (r.key, r.data))
            .collect();
        v.sort();
        v
    })
}

#[test]
fn keyed_disjoint_keys_commit_concurrently() {
    require_reference();
    let c = Cluster::start(ours_with_helper(3));
    c.wait_one_generation();
    c.our_tool_ok(0, &["attach", DB, "keyed"]);
    rt().block_on(async {
        let c0 = Client::connect(c.socket(0)).await.unwrap();
        let c1 = Client::connect(c.socket(1)).await.unwrap();
        let c2 = Client::connect(c.socket(2)).await.unwrap();
        let d0 = c0.attach(DB, DbKind::Keyed, 0).await.unwrap();
        let d1 = c1.attach(DB, DbKind::Keyed, 0).await.unwrap();
        let d2 = c2.attach(DB, DbKind::Keyed, 0).await.unwrap();
        assert!(
            d0.transaction_start(false).await.is_err(),
            "classic transaction on a keyed db"
        );

        // Warm up: each client has attached g_lock.tdb and committed once
        // (the check is about waiting for key A, not a first attach).
        for (d, k) in [(&d0, b"A"), (&d1, b"B")] {
            let mut t = d.keyed_transaction(&[k]).await.unwrap();
            t.store(k, &0u64.to_le_bytes()).unwrap();
            t.commit().await.unwrap();
        }
        // Node 0 holds key A for 2 s.
        let mut ta = d0.keyed_transaction(&[b"A"]).await.unwrap();
        ta.store(b"A", &1u64.to_le_bytes()).unwrap();
        assert!(
            ta.store(b"B", b"x").is_err(),
            "a key not locked was written"
        );
        let held = Instant::now();
        let hold = Duration::from_secs(2);
        let a_done = tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            ta.commit().await.unwrap();
            Instant::now()
        });
        // Node 1: five transactions on key B, meanwhile. The check
        // is that B commits in under 50 ms while A is held; the best of five
        // is taken so that one commit's fdatasync on a busy test machine
        // does not decide it (each is printed).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut best = Duration::MAX;
        for round in 0..5u64 {
            let t0 = Instant::now();
            let mut tb = d1.keyed_transaction(&[b"B"]).await.unwrap();
            let locked = t0.elapsed();
            tb.store(b"B", &(2 + round).to_le_bytes()).unwrap();
            tb.commit().await.unwrap();
            let took = t0.elapsed();
            eprintln!("key B committed in {took:?} (locked after {locked:?}) while key A was held");
            best = best.min(took);
        }
        assert!(
            best < Duration::from_millis(50),
            "key B took {best:?} at best"
        );
        assert!(held.elapsed() < hold, "A was not held meanwhile");
        // Node 2: key A waits for node 0's transaction, then sees its value.
        let mut ta2 = d2.keyed_transaction(&[b"A", b"B"]).await.unwrap();
        let waited = held.elapsed();
        a_done.await.unwrap();
        assert!(
            waited >= hold - Duration::from_millis(50),
            "key A was given to node 2 after {waited:?}, while node 0 held it"
        );
        assert_eq!(value(ta2.fetch(b"A").unwrap()), 1);
        assert_eq!(value(ta2.fetch(b"B").unwrap()), 6);
        ta2.store(b"A", &3u64.to_le_bytes()).unwrap();
        ta2.store(b"B", &4u64.to_le_bytes()).unwrap();
        ta2.commit().await.unwrap();
    });
    for k in 0..3 {
        let v = copy(&c, k);
        assert_eq!(
            v,
            vec![
                (b"A".to_vec(), 3u64.to_le_bytes().to_vec()),
                (b"B".to_vec(), 4u64.to_le_bytes().to_vec())
            ],
            "node {k}"
        );
    }
    // A recovery merges the copies record by record: everything stays.
    c.tool_ok(1, &["recover"]);
    c.wait_one_generation();
    for k in 0..3 {
        assert_eq!(copy(&c, k), copy(&c, 0), "node {k}");
        assert_eq!(copy(&c, k).len(), 2, "node {k}");
    }
    // Its kind in every database map.
    rt().block_on(async {
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let map = cl
                .get_dbmap(ctdb_protocol::header::CTDB_CURRENT_NODE)
                .await
                .unwrap();
            let id = cl.attach(DB, DbKind::Keyed, 0).await.unwrap().id();
            let f = map.dbs.iter().find(|d| d.db_id == id).map(|d| d.flags);
            assert_eq!(f, Some(db_flags::KEYED), "node {k}");
        }
    });
}

/// 3 nodes x 8 client processes, each incrementing its own key and a
/// shared one in per-key transactions, while node 3 (no clients) is killed
/// and restarted: acknowledged increments are all there, the shared key
/// is the sum of the own keys, every copy is identical.
#[test]
fn keyed_no_lost_updates_with_node_kills() {
    require_reference();
    // Our recovery helper: it merges keyed databases by copy epoch (CTDB's
    // merges them as volatile ones, by rsn alone).
    let c = Cluster::start(ours_with_helper(4));
    c.wait_one_generation();
    c.our_tool_ok(0, &["attach", DB, "keyed"]);
    let results = kill_increments::run_with_kills(&c, DB, true);
    // Each failed attempt's error, digits masked, with its count.
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    for r in &results {
        for line in r.stderr.lines() {
            let why = line.strip_prefix(&format!("{}: ", r.own)).unwrap_or(line);
            let masked: String = why
                .chars()
                .map(|ch| if ch.is_ascii_digit() { '#' } else { ch })
                .collect();
            *reasons.entry(masked).or_default() += 1;
        }
    }
    let (acked, unsure) = kill_increments::totals(&results);
    eprintln!("{acked} acknowledged increments, {unsure} failed attempts");
    for (why, n) in &reasons {
        eprintln!("  {n} x {why}");
    }
    // Every failed attempt was counted once, with its reason.
    assert_eq!(reasons.values().sum::<u64>(), unsure, "{reasons:?}");
    assert!(acked > 0);
    let copies: Vec<_> = (0..4).map(|k| copy(&c, k)).collect();
    kill_increments::check_copies(&copies, &results);
}

/// Commits (key, value) pairs in one keyed transaction through node `k`.
fn commit(c: &Cluster, k: usize, kv: &[(&[u8], u64)]) {
    rt().block_on(async {
        let cl = Client::connect(c.socket(k)).await.unwrap();
        let d = cl.attach(DB, DbKind::Keyed, 0).await.unwrap();
        let keys: Vec<&[u8]> = kv.iter().map(|(k, _)| *k).collect();
        let mut t = d.keyed_transaction(&keys).await.unwrap();
        for (key, v) in kv {
            t.store(key, &v.to_le_bytes()).unwrap();
        }
        t.commit().await.unwrap();
    });
}

/// A node that missed a recovery comes back holding a commit nobody else
/// applied (written into its file while it is down: A, B and a new key C,
/// each one rsn ahead of what it had, as the commit would have left them),
/// while the other nodes committed A again. With our recovery helper the
/// returning copy is left out whole: A keeps its acknowledged value, B and
/// C do not come back. Then the same situation is recovered by CTDB's
/// helper (every node restarted with it; the database exists from
/// before): it would merge per record by rsn alone and keep B and C of the
/// unacknowledged commit beside the acknowledged A, so our daemons refuse
/// its recovery of the keyed database, with an error that says why, and
/// every node keeps its copy.
#[test]
fn stale_copy_of_a_node_that_missed_a_recovery_is_left_out() {
    require_reference();
    for ours_helper in [true, false] {
        let c = Cluster::start(ours_with_helper(3));
        c.wait_one_generation();
        c.our_tool_ok(0, &["attach", DB, "keyed"]);
        commit(&c, 0, &[(b"A", 1), (b"B", 1)]);
        c.kill(2);
        c.wait_status(Duration::from_secs(120), 2, &[2]);
        commit(&c, 1, &[(b"A", 2)]);
        // Node 2 "applied" a commit of A, B and C that no other node got.
        let file = |k: usize| c.base(k).join(format!("db/persistent/keyed/{DB}.{k}"));
        {
            let t = tdb::OpenOptions::new().open(file(2)).unwrap();
            for (key, rsn) in [(&b"A"[..], 2u64), (b"B", 2), (b"C", 1)] {
                let h = ctdb_protocol::types::LtdbHeader {
                    rsn,
                    dmaster: 2,
                    ..Default::default()
                };
                t.store(
                    key,
                    &h.prepend(&99u64.to_le_bytes()),
                    tdb::StoreMode::Replace,
                )
                .unwrap();
            }
        }
        if !ours_helper {
            // Every node with CTDB's helper.
            for k in 0..2 {
                c.kill(k);
            }
            for k in 0..3 {
                c.restart_with_env(k, &ours(), &[("CTDB_RECOVERY_HELPER", CTDB_HELPER)]);
            }
            let refusal = "recovery refused, this node keeps its copy";
            let deadline = Instant::now() + Duration::from_secs(120);
            let refused = loop {
                let r: Vec<usize> = (0..3)
                    .filter(|&k| c.log_text(k).contains(refusal))
                    .collect();
                if !r.is_empty() || Instant::now() > deadline {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            eprintln!("nodes that logged the refusal: {refused:?}");
            let Some(&first) = refused.first() else {
                panic!("no node refused CTDB's recovery of the keyed database");
            };
            let line = c
                .log_text(first)
                .lines()
                .find(|l| l.contains(refusal))
                .unwrap()
                .to_owned();
            eprintln!("node {first}: {line}");
            assert!(line.contains("CTDB_RECOVERY_HELPER"), "unclear: {line}");
            // Nothing was merged: each node's file as it was.
            for k in 0..3 {
                c.kill(k);
            }
            let read = |k: usize| {
                let t = tdb::OpenOptions::new().open(file(k)).unwrap();
                let get = |key: &[u8]| {
                    value(
                        t.fetch(key)
                            .unwrap()
                            .map(|v| v[ctdb_protocol::types::LtdbHeader::WIRE_SIZE..].to_vec()),
                    )
                };
                (get(b"A"), get(b"B"), get(b"C"))
            };
            for k in 0..2 {
                assert_eq!(read(k), (2, 1, 0), "node {k}: A, B, C");
            }
            assert_eq!(read(2), (99, 99, 99), "node 2: A, B, C");
            continue;
        }
        c.restart(2);
        c.wait_one_generation();
        let copies: Vec<_> = (0..3).map(|k| copy(&c, k)).collect();
        for k in 1..3 {
            assert_eq!(
                copies[k], copies[0],
                "node {k}'s copy differs from node 0's"
            );
        }
        let get = |key: &[u8]| {
            copies[0]
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| value(Some(v.clone())))
        };
        eprintln!(
            "our helper: A {:?}, B {:?}, C {:?}",
            get(b"A"),
            get(b"B"),
            get(b"C")
        );
        assert_eq!(get(b"A"), Some(2), "acknowledged A");
        assert_eq!(get(b"B"), Some(1), "B of the stale commit came back");
        assert_eq!(get(b"C"), None, "C of the stale commit came back");
    }
}

/// Daemons of ours configured with CTDB's recovery helper refuse to attach
/// a keyed database, saying why, and classic persistent databases work
/// and recover with that helper as always.
#[test]
fn keyed_attach_refused_with_ctdbs_helper_classic_recovers() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(ours(), 3).recovery_helper(CTDB_HELPER));
    c.wait_one_generation();
    let out = c.tool_with(&our_bin("ctdb"), 1, &["attach", DB, "keyed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keyed attach succeeded");
    eprintln!("ctdb attach {DB} keyed: {err}");
    assert!(
        err.contains("copy-epoch protocol") && err.contains("CTDB_RECOVERY_HELPER"),
        "unclear error: {err}"
    );
    let e = rt().block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        cl.attach(DB, DbKind::Keyed, 0).await.err()
    });
    let e = e.expect("client keyed attach succeeded").to_string();
    assert!(e.contains("copy-epoch protocol"), "unclear error: {e}");
    for k in 0..3 {
        let map = c.tool_ok(k, &["getdbmap"]);
        assert!(!map.contains(DB), "node {k} has {DB}:\n{map}");
    }
    // Classic persistent: committed, recovered by CTDB's helper, on every
    // node.
    c.tool_ok(0, &["attach", "classic_beside.tdb", "persistent"]);
    c.tool_ok(0, &["pstore", "classic_beside.tdb", "k", "v1"]);
    let before = c.generation(0);
    c.tool_ok(2, &["recover"]);
    c.wait_one_generation();
    assert_ne!(c.generation(0), before, "no recovery ran");
    c.tool_ok(1, &["pstore", "classic_beside.tdb", "k", "v2"]);
    for k in 0..3 {
        assert_eq!(
            c.tool_ok(k, &["pfetch", "classic_beside.tdb", "k"]).trim(),
            "v2",
            "node {k}"
        );
    }
    assert!(
        (0..3).any(|k| c
            .log_text(k)
            .contains("keyed databases cannot be attached on this node")),
        "the start-up warning about the helper is missing"
    );
}

/// Our tool's pstore / pfetch / pdelete / ptrans on a keyed database take
/// per-key transactions: a pstore of key B goes through while a client on
/// another node holds key A, a pstore of key A waits for it; values are on
/// every node.
#[test]
fn tool_persistent_commands_on_keyed_database() {
    let c = Cluster::start(ours_with_helper(3));
    c.wait_one_generation();
    let ctdb = our_bin("ctdb");
    let ok = |k: usize, args: &[&str]| {
        let out = c.tool_with(&ctdb, k, args);
        assert!(
            out.status.success(),
            "ctdb {args:?} on node {k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(0, &["attach", DB, "keyed"]);
    ok(0, &["pstore", DB, "A", "a0"]);
    ok(1, &["pstore", DB, "B", "b0"]);
    for k in 0..3 {
        assert_eq!(ok(k, &["pfetch", DB, "A"]).trim(), "a0", "node {k}");
        assert_eq!(ok(k, &["pfetch", DB, "B"]).trim(), "b0", "node {k}");
    }
    let input = c.dir().join("ptrans-input");
    std::fs::write(&input, "\"C\" \"c1\"\n\"D\" \"d1\"\n\"B\" \"b1\"\n").unwrap();
    ok(2, &["ptrans", DB, input.to_str().unwrap()]);
    ok(0, &["pdelete", DB, "D"]);
    for k in 0..3 {
        assert_eq!(ok(k, &["pfetch", DB, "B"]).trim(), "b1", "node {k}");
        assert_eq!(ok(k, &["pfetch", DB, "C"]).trim(), "c1", "node {k}");
        assert_eq!(ok(k, &["pfetch", DB, "D"]).trim(), "", "node {k}");
    }
    // A client on node 0 holds key A; the tool on node 1 stores B at once
    // and waits with A.
    rt().block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        let d = cl.attach(DB, DbKind::Keyed, 0).await.unwrap();
        let mut t = d.keyed_transaction(&[b"A"]).await.unwrap();
        t.store(b"A", b"held").unwrap();
        let base1 = c.base(1);
        let tool = |args: [&'static str; 4]| {
            let ctdb = ctdb.clone();
            let base = base1.clone();
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(&ctdb)
                    .args(args)
                    .env("CTDB_TEST_MODE", "yes")
                    .env("CTDB_BASE", base)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                (out.status.success(), Instant::now())
            })
        };
        let held = Instant::now();
        let b = tool(["pstore", DB, "B", "b2"]).await.unwrap();
        assert!(b.0, "pstore B failed");
        eprintln!("pstore B took {:?} while A was held", b.1 - held);
        // `pstore A` is waiting once its process is queued for A's lock
        // (its entry in the queue record on node 1, behind our holder),
        // and still running then.
        let mut a = std::process::Command::new(&ctdb)
            .args(["pstore", DB, "A", "a2"])
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", c.base(1))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let tool_pid = u64::from(a.id());
        let cl1 = Client::connect(c.socket(1)).await.unwrap();
        let g1 = cl1.g_lock_db().await.unwrap();
        let qkey = glock::queue_key(&keyed::lock_name(d.id(), b"A"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let queue = loop {
            let list = g1
                .fetch_local(&qkey)
                .unwrap()
                .filter(|(h, _)| h.dmaster == 1)
                .and_then(|(_, v)| GLockList::pull(&v).ok().map(|(l, _)| l))
                .unwrap_or_default();
            if list.locks.iter().any(|l| l.sid.pid == tool_pid) {
                break list;
            }
            assert!(
                a.try_wait().unwrap().is_none(),
                "pstore A ended before it queued for the held key"
            );
            assert!(
                Instant::now() < deadline,
                "pstore A never queued for key A: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            queue.locks.first().map(|l| l.sid.pid),
            Some(u64::from(std::process::id())),
            "our transaction holds A, first in its queue: {queue:?}"
        );
        assert!(
            a.try_wait().unwrap().is_none(),
            "pstore A did not wait for the held key"
        );
        let released = Instant::now();
        t.commit().await.unwrap();
        let (a_ok, a_done) = tokio::task::spawn_blocking(move || {
            let st = a.wait().unwrap();
            (st.success(), Instant::now())
        })
        .await
        .unwrap();
        assert!(a_ok, "pstore A failed");
        assert!(
            a_done >= released,
            "pstore A finished before A was released"
        );
    });
    for k in 0..3 {
        assert_eq!(ok(k, &["pfetch", DB, "A"]).trim(), "a2", "node {k}");
        assert_eq!(ok(k, &["pfetch", DB, "B"]).trim(), "b2", "node {k}");
    }
}

/// Reference node 2 among ours: a keyed attach fails on both kinds of node.
#[test]
fn mixed_cluster_refuses_keyed_attach() {
    require_reference();
    // Nodes 0 and 1 run our helper (so the refusal is node 2's, not
    // their own); the reference node runs CTDB's.
    let c = Cluster::start(ours_with_helper(3));
    c.kill(2);
    c.restart_with_env(
        2,
        &Daemon::Reference,
        &[("CTDB_RECOVERY_HELPER", CTDB_HELPER)],
    );
    c.wait_one_generation();
    for k in [0, 2] {
        let out = c.tool_with(&our_bin("ctdb"), k, &["attach", DB, "keyed"]);
        assert!(!out.status.success(), "keyed attach on node {k} succeeded");
    }
    let err = rt().block_on(async {
        let cl = Client::connect(c.socket(1)).await.unwrap();
        cl.attach(DB, DbKind::Keyed, 0).await.err()
    });
    let err = err.expect("keyed attach on node 1 succeeded").to_string();
    assert!(
        err.contains("node 2 refused DB_ATTACH_EXT"),
        "unclear error: {err}"
    );
    for k in 0..3 {
        let map = c.tool_ok(k, &["getdbmap"]);
        assert!(!map.contains(DB), "node {k} has {DB}:\n{map}");
    }
}

/// The copy epoch node `k` holds (0 without the record).
fn epoch_of(c: &Cluster, k: usize) -> u64 {
    rt().block_on(async {
        let cl = Client::connect(c.socket(k)).await.unwrap();
        let d = cl.attach(DB, DbKind::Keyed, 0).await.unwrap();
        value(d.fetch_local(KEYED_EPOCH_KEY).unwrap().map(|(_, v)| v))
    })
}

/// `ctdb restoredb` of a keyed database: the backup's records replace
/// every node's copy and the copy moves to the next epoch on every node
/// (the daemons commit a rewrite of a keyed copy only with a new epoch
/// written for it; the backup's own epoch record is not restored). Before,
/// the tool carried the backup's records alone and every node refused the
/// commit, with a log line blaming the recovery helper.
#[test]
fn restoredb_of_keyed_database_moves_every_node_to_the_next_epoch() {
    let c = Cluster::start(ours_with_helper(3));
    c.wait_one_generation();
    let ctdb = our_bin("ctdb");
    let run = |k: usize, args: &[&str]| c.tool_with(&ctdb, k, args);
    let ok = |k: usize, args: &[&str]| {
        let out = run(k, args);
        assert!(
            out.status.success(),
            "ctdb {args:?} on node {k}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A recovery, driven from node 0, finished everywhere.
    let recover = || {
        let g = c.generation(0);
        ok(0, &["recover"]);
        poll_until(Duration::from_secs(60), "a new generation", || {
            (c.generation(0) != g).then_some(())
        });
        c.wait_one_generation();
    };
    ok(0, &["attach", DB, "keyed"]);
    ok(0, &["pstore", DB, "A", "a1"]);
    ok(1, &["pstore", DB, "B", "b1"]);
    // A recovery writes an epoch record, which the backup then holds.
    recover();
    let e1 = epoch_of(&c, 0);
    assert!(e1 >= 1, "a recovery moved the epoch on: {e1}");
    let backup = c.dir().join("keyed.bak");
    ok(2, &["backupdb", DB, backup.to_str().unwrap()]);
    ok(0, &["pstore", DB, "A", "a2"]);
    ok(2, &["pstore", DB, "C", "c2"]);
    let out = ok(1, &["restoredb", backup.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    let expect = vec![
        (b"A".to_vec(), b"a1".to_vec()),
        (b"B".to_vec(), b"b1".to_vec()),
    ];
    let e2 = epoch_of(&c, 0);
    assert!(e2 > e1, "the restore moved the epoch on: {e1} -> {e2}");
    for k in 0..3 {
        assert_eq!(copy(&c, k), expect, "node {k}'s copy after the restore");
        assert_eq!(epoch_of(&c, k), e2, "node {k}'s epoch after the restore");
    }
    // Commits go on over the restored copy, and a recovery keeps them.
    ok(2, &["pstore", DB, "A", "a3"]);
    recover();
    let e3 = epoch_of(&c, 0);
    assert!(e3 > e2, "the recovery moved the epoch on: {e2} -> {e3}");
    for k in 0..3 {
        assert_eq!(ok(k, &["pfetch", DB, "A"]).trim(), "a3", "node {k}");
        assert_eq!(ok(k, &["pfetch", DB, "C"]).trim(), "", "node {k}");
        assert_eq!(epoch_of(&c, k), e3, "node {k}'s epoch");
    }
}
