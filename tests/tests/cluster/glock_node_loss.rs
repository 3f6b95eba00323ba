//! Our client's g_lock when its records revert to an older copy.
//!
//! `g_lock.tdb` is volatile: when the node holding the newest copy of a
//! lock record or of our queue record dies, the recovery keeps the newest
//! copy left on the other nodes, which can list entries of processes that
//! are alive but have long moved on (released the lock, or queued again
//! since). Such an entry must neither make a waiter wait for good (its
//! process exists, so `PROCESS_EXISTS` cannot clear it) nor make its own
//! process's next lock fail.
//!
//! - `reverted_records_do_not_block_live_processes`: the revert is played
//!   by hand, deterministically: the test process takes and releases a
//!   lock, then writes back the records as they were while it held it.
//!   A client on another node must then get the lock, the test process
//!   must get it again, and a waiter whose turn has come but which finds
//!   the stale holder in the lock record must not deadlock with the stale
//!   entry's process queued behind it.
//! - `a_live_process_is_asked_about_its_stale_entry`: the same with the
//!   stale entry of another live process (`ctdb-glock-hold`), which does
//!   not lock again: the waiter asks it and gets the lock.
//! - `contenders_keep_going_when_the_lock_records_node_dies`: processes on
//!   every node of four increment a shared key of a keyed database, so they
//!   all contend for the shared key's g_lock; three times the node that is
//!   data master of that lock's queue or lock record is killed and started
//!   again. Every client connected to a live node keeps committing, and
//!   every client exits cleanly soon after it is told to stop.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ctdb_client::db::{glock, keyed};
use ctdb_client::{Client, Db, DbKind, Update};
use ctdb_protocol::Marshal;
use ctdb_protocol::types::{GLockList, GLockType, ServerId};
use ctdb_tests::client_prog::get_u64;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, test_client};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// How long a lock that nobody legitimately holds may take.
const LOCK_LIMIT: Duration = Duration::from_secs(30);

/// The data of `key` in `g_lock.tdb`, read under its lock from `g`'s node.
async fn read(g: &Db, key: &[u8]) -> Vec<u8> {
    g.fetch_lock(key, |r| (Update::Keep, r.data.clone()))
        .await
        .unwrap()
}

/// Puts `data` back as record `key` (what a recovery restoring an older
/// copy does).
async fn revert(g: &Db, key: &[u8], data: &[u8]) {
    let data = data.to_vec();
    g.fetch_lock(key, move |_| (Update::Store(data), ()))
        .await
        .unwrap();
}

async fn lock_within(g: &Db, name: &[u8], me: ServerId, what: &str) {
    match tokio::time::timeout(LOCK_LIMIT, glock::lock(g, name, me, GLockType::Write)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: lock failed: {e}"),
        Err(_) => panic!("{what}: no lock after {LOCK_LIMIT:?}"),
    }
}

#[test]
fn reverted_records_do_not_block_live_processes() {
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3));
    c.wait_one_generation();
    rt().block_on(async {
        let c0 = Client::connect(c.socket(0)).await.unwrap();
        let c1 = Client::connect(c.socket(1)).await.unwrap();
        let g0 = c0.g_lock_db().await.unwrap();
        let g1 = c1.g_lock_db().await.unwrap();
        let name = b"glock_node_loss\0".to_vec();
        let qkey = glock::queue_key(&name);
        let me0 = glock::server_id(0, 7);
        let me1 = glock::server_id(1, 7);

        // Node 0's process holds the lock: the records as they are then.
        lock_within(&g0, &name, me0, "first lock on node 0").await;
        let (q_held, r_held) = (read(&g0, &qkey).await, read(&g0, &name).await);
        assert!(!q_held.is_empty() && !r_held.is_empty());
        glock::unlock(&g0, &name, me0).await.unwrap();

        // 1. Both records revert to that copy: another node's client is
        // queued behind a live process that no longer holds the lock.
        revert(&g0, &qkey, &q_held).await;
        revert(&g0, &name, &r_held).await;
        lock_within(&g1, &name, me1, "node 1 behind a stale entry").await;
        glock::unlock(&g1, &name, me1).await.unwrap();

        // 2. Again, and the stale entry's own process locks next: it gets
        // the lock (before, "g_lock already held by this holder").
        revert(&g0, &qkey, &q_held).await;
        revert(&g0, &name, &r_held).await;
        lock_within(&g0, &name, me0, "node 0 after its own entry came back").await;
        glock::unlock(&g0, &name, me0).await.unwrap();

        // 3. Only the lock record reverts. Node 1's client's turn comes at
        // once but the stale holder is in the lock record; node 0's
        // process queues behind node 1's client. Neither may wait for
        // the other for good.
        revert(&g0, &name, &r_held).await;
        let t1 = {
            let g1 = g1.clone();
            let name = name.clone();
            tokio::spawn(async move {
                lock_within(&g1, &name, me1, "node 1 behind a stale holder").await;
                glock::unlock(&g1, &name, me1).await.unwrap();
            })
        };
        // Node 1's client is queued (its entry is in the queue record)
        // before node 0's process asks.
        let deadline = Instant::now() + LOCK_LIMIT;
        loop {
            let q = read(&g1, &qkey).await;
            let list = GLockList::pull(&q).map(|(l, _)| l).unwrap_or_default();
            if list.locks.iter().any(|l| l.sid.vnn == 1) || t1.is_finished() {
                break;
            }
            assert!(Instant::now() < deadline, "node 1's client never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lock_within(&g0, &name, me0, "node 0 queued behind node 1").await;
        glock::unlock(&g0, &name, me0).await.unwrap();
        tokio::time::timeout(LOCK_LIMIT, t1)
            .await
            .expect("node 1's client still waiting")
            .unwrap();

        // Nothing is left behind.
        for key in [&qkey, &name] {
            let data = read(&g0, key).await;
            let list = GLockList::pull(&data).map(|(l, _)| l).unwrap_or_default();
            assert!(list.locks.is_empty(), "entries left: {list:?}");
        }
    });
}

/// The stale entry belongs to another live process (`ctdb-glock-hold`,
/// which took and released the lock and stays connected without locking
/// again): `PROCESS_EXISTS` cannot clear it and that process's own next
/// lock never comes, so the waiter must ask it (the probe) and get the
/// lock.
#[test]
fn a_live_process_is_asked_about_its_stale_entry() {
    use std::io::{BufRead, BufReader, Write};
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3));
    c.wait_one_generation();
    let name = b"glock_node_loss_probe".to_vec();
    let mut holder = test_client("ctdb-glock-hold")
        .arg(c.socket(0))
        .arg(std::str::from_utf8(&name).unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ctdb-glock-hold");
    // Killed and reaped whatever happens below.
    let mut stdin = holder.stdin.take().unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut holder = ctdb_tests::procs::Reaped(holder);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held", "ctdb-glock-hold did not take the lock");
    rt().block_on(async {
        let c1 = Client::connect(c.socket(1)).await.unwrap();
        let g1 = c1.g_lock_db().await.unwrap();
        let qkey = glock::queue_key(&name);
        let (q_held, r_held) = (read(&g1, &qkey).await, read(&g1, &name).await);
        let held = GLockList::pull(&r_held).map(|(l, _)| l).unwrap_or_default();
        assert!(
            held.locks
                .iter()
                .any(|l| l.sid.pid == u64::from(holder.0.id())),
            "the lock record does not name ctdb-glock-hold: {held:?}"
        );
        writeln!(stdin, "release").unwrap();
        stdin.flush().unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "released");
        // Both records go back to the copy naming the live holder.
        revert(&g1, &qkey, &q_held).await;
        revert(&g1, &name, &r_held).await;
        let me1 = glock::server_id(1, 7);
        lock_within(
            &g1,
            &name,
            me1,
            "node 1 behind another live process's stale entry",
        )
        .await;
        glock::unlock(&g1, &name, me1).await.unwrap();
        for key in [&qkey, &name] {
            let data = read(&g1, key).await;
            let list = GLockList::pull(&data).map(|(l, _)| l).unwrap_or_default();
            assert!(list.locks.is_empty(), "entries left: {list:?}");
        }
    });
    // Still alive through all of it (it was asked, not found dead), and
    // exits cleanly once its input ends.
    assert!(
        holder.0.try_wait().unwrap().is_none(),
        "ctdb-glock-hold died"
    );
    drop(stdin);
    let st = poll_until(Duration::from_secs(30), "ctdb-glock-hold to exit", || {
        holder.0.try_wait().unwrap()
    });
    assert!(st.success(), "ctdb-glock-hold: {st:?}");
}

const DB: &str = "glock_node_loss.tdb";
const NODES: usize = 4;
const PER_NODE: usize = 3;
const ROUNDS: usize = 3;
/// How long a live client may go without a commit, and how long a client
/// may take to exit once told to stop.
const STALL_LIMIT: Duration = Duration::from_secs(60);

struct Contender {
    node: usize,
    own: String,
    /// Taken once it has exited and been read.
    child: Option<Child>,
}

impl Drop for Contender {
    /// A test that fails early leaves no client behind (the stop file
    /// goes with the cluster's directory).
    fn drop(&mut self) {
        if let Some(ch) = &mut self.child {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

fn start_contender(c: &Cluster, stop: &Path, node: usize, n: usize) -> Contender {
    let own = format!("own_{node}_{n}");
    let child = test_client("ctdb-inmem-increment")
        .arg(c.socket(node))
        .args([DB, own.as_str()])
        .arg(stop)
        .arg("keyed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Contender {
        node,
        own,
        child: Some(child),
    }
}

/// Each key's committed value, as node `k`'s copy of the keyed database
/// holds it (every node holds every record).
fn values(c: &Cluster, k: usize, keys: &[String]) -> Vec<u64> {
    rt().block_on(async {
        let cl = Client::connect(c.socket(k)).await.unwrap();
        let d = cl.attach(DB, DbKind::Keyed, 0).await.unwrap();
        keys.iter()
            .map(|key| {
                d.fetch_local(key.as_bytes())
                    .unwrap()
                    .map_or(0, |(_, v)| get_u64(&v))
            })
            .collect()
    })
}

/// Waits until every client in `live` has committed again since `before`
/// (their values, read from node `k`).
fn wait_progress(c: &Cluster, k: usize, live: &[&Contender], what: &str) {
    let keys: Vec<String> = live.iter().map(|x| x.own.clone()).collect();
    let before = values(c, k, &keys);
    let mut last = before.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(STALL_LIMIT, what, || {
            last = values(c, k, &keys);
            last.iter().zip(&before).all(|(a, b)| a > b).then_some(())
        })
    }));
    if r.is_err() {
        let stuck: Vec<&String> = keys
            .iter()
            .zip(last.iter().zip(&before))
            .filter(|(_, (a, b))| a <= b)
            .map(|(k, _)| k)
            .collect();
        panic!(
            "{what}: no commit in {STALL_LIMIT:?} by {stuck:?}\nlogs:\n{}",
            c.log_tails()
        );
    }
}

/// [`wait_progress`] for the clients of `all` not `orphaned` (their node
/// killed while they ran).
fn wait_live(c: &Cluster, k: usize, all: &[Contender], orphaned: &[bool], what: &str) {
    let live: Vec<&Contender> = all
        .iter()
        .zip(orphaned)
        .filter(|(_, o)| !**o)
        .map(|(x, _)| x)
        .collect();
    wait_progress(c, k, &live, what);
}

/// The node that is data master of `key` in `g_lock.tdb`, as the live
/// nodes' copies say: a node whose own copy names itself.
fn dmaster_of(c: &Cluster, key: &[u8]) -> Option<usize> {
    rt().block_on(async {
        for k in 0..NODES {
            let Ok(cl) = Client::connect(c.socket(k)).await else {
                continue;
            };
            let Ok(g) = cl.g_lock_db().await else {
                continue;
            };
            if let Ok(Some((h, _))) = g.fetch_local(key)
                && h.dmaster as usize == k
            {
                return Some(k);
            }
        }
        None
    })
}

#[test]
fn contenders_keep_going_when_the_lock_records_node_dies() {
    let c = Cluster::start(
        ClusterOptions::new(Daemon::ours(), NODES).recovery_helper(our_bin("ctdb_recovery_helper")),
    );
    c.wait_one_generation();
    c.our_tool_ok(0, &["attach", DB, "keyed"]);
    let db_id = ctdb_tests::db_id(DB);
    let name = keyed::lock_name(db_id, b"shared");
    let qkey = glock::queue_key(&name);
    let stop = c.dir().join("stop-increments");
    let mut all: Vec<Contender> = Vec::new();
    for node in 0..NODES {
        for n in 0..PER_NODE {
            all.push(start_contender(&c, &stop, node, n));
        }
    }
    // Clients started on a node after it was killed get fresh numbers.
    let mut next = PER_NODE;
    // Clients whose node was killed while they ran: disconnected for good.
    let mut orphaned: Vec<bool> = vec![false; all.len()];
    wait_live(&c, 0, &all, &orphaned, "every client commits at the start");
    for round in 0..ROUNDS {
        // The queue record, then the lock record, then the queue again.
        let (what, key) = if round % 2 == 0 {
            ("queue", &qkey)
        } else {
            ("lock", &name)
        };
        let victim = poll_until(Duration::from_secs(30), "a data master", || {
            dmaster_of(&c, key)
        });
        eprintln!("round {round}: killing node {victim}, data master of the {what} record");
        c.kill(victim);
        for (i, x) in all.iter().enumerate() {
            if x.node == victim {
                orphaned[i] = true;
            }
        }
        let observer = (victim + 1) % NODES;
        c.wait_status(Duration::from_secs(120), NODES - 1, &[victim]);
        wait_live(
            &c,
            observer,
            &all,
            &orphaned,
            &format!("round {round}: the clients of the nodes left commit"),
        );
        c.restart(victim);
        c.wait_one_generation();
        for _ in 0..PER_NODE {
            all.push(start_contender(&c, &stop, victim, next));
            orphaned.push(false);
            next += 1;
        }
        wait_live(
            &c,
            observer,
            &all,
            &orphaned,
            &format!("round {round}: every connected client commits after the restart"),
        );
    }
    std::fs::write(&stop, b"").unwrap();
    let deadline = Instant::now() + STALL_LIMIT;
    let mut hung = Vec::new();
    for x in &mut all {
        let ch = x.child.as_mut().unwrap();
        loop {
            if ch.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                hung.push(x.own.clone());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        hung.is_empty(),
        "clients still running {STALL_LIMIT:?} after being told to stop: {hung:?}"
    );
    let mut acked = 0;
    for mut x in all {
        let o = x.child.take().unwrap().wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{} failed: {err}", x.own);
        let out = String::from_utf8_lossy(&o.stdout);
        acked += out
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    eprintln!("{acked} acknowledged increments");
}
