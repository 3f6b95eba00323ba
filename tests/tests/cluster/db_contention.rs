//! Our client library against a 3-node cluster: record operations,
//! traverses with and without empty records, persistent and replicated
//! transactions. No lost updates: 3 nodes x 4 client processes each
//! increment one shared record, through fetch-lock (volatile) and through
//! persistent transactions; the final value is exact. The persistent
//! clients commit for a time budget (at least a floor of commits each)
//! rather than a fixed count: the reference forks a child and syncs its
//! file four times on every node for each commit (~60 commits/s here
//! whatever the number of clients), so 12,000 commits took it 4-5
//! minutes. A client killed with
//! SIGKILL while holding a record lock, or inside a persistent
//! transaction, holds nobody up and leaves nothing partial behind; nor do
//! recoveries in the middle of it all. Against our daemon and the
//! reference.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ctdb_client::{Client, DbKind};
use ctdb_protocol::{ControlRequest, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference, test_client};

/// Increments per process: fetch-lock; persistent transactions, at least
/// this many and on until the budget is spent (the sum of what the
/// clients report is the value the record must hold).
const VOLATILE_PER_CLIENT: u64 = 1000;
const PERSISTENT_MIN_PER_CLIENT: u64 = 25;
const PERSISTENT_SECS: u64 = 15;
const CLIENTS_PER_NODE: usize = 4;

fn spawn(c: &Cluster, node: usize, args: &[&str]) -> Child {
    test_client("ctdb-increment")
        .arg(c.socket(node))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child's first line of output.
fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// Waits for a child that must succeed; its output.
fn finish(mut child: Child, what: &str) -> String {
    let o = child.wait_with_output_timeout();
    assert!(
        o.0,
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.1),
        String::from_utf8_lossy(&o.2)
    );
    String::from_utf8_lossy(&o.1).into_owned()
}

trait WaitTimeout {
    fn wait_with_output_timeout(&mut self) -> (bool, Vec<u8>, Vec<u8>);
}

impl WaitTimeout for Child {
    /// Waits (at most 10 minutes, then kills) and collects the output.
    fn wait_with_output_timeout(&mut self) -> (bool, Vec<u8>, Vec<u8>) {
        let st = poll_until(Duration::from_secs(600), "a client to finish", || {
            self.try_wait().unwrap()
        });
        let mut out = Vec::new();
        let mut err = Vec::new();
        use std::io::Read;
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_end(&mut out);
        }
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        (st.success(), out, err)
    }
}

fn value(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|d| {
        d.get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    })
    .unwrap_or(0)
}

/// Increments `key` from 4 processes on each node at once (`args` after
/// the key: the count, and for persistent ones the seconds); what each
/// process says it did ("done N").
fn hammer(c: &Cluster, mode: &str, db: &str, key: &str, args: &[&str]) -> Vec<u64> {
    let children: Vec<Child> = (0..3 * CLIENTS_PER_NODE)
        .map(|i| spawn(c, i % 3, &[&[mode, db, key], args].concat()))
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(i, ch)| {
            let out = finish(ch, &format!("{mode} client {i}"));
            out.trim()
                .strip_prefix("done ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{mode} client {i} said {out:?}"))
        })
        .collect()
}

/// Prints how long each phase of a test took and what it did.
struct Phases {
    who: &'static str,
    start: Instant,
    last: Instant,
}

impl Phases {
    fn new(who: &'static str) -> Self {
        let now = Instant::now();
        Phases {
            who,
            start: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "{}: {:5.1} s (at {:5.1} s) {what}",
            self.who,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }
}

fn read_volatile(c: &Cluster, db: &str, key: &[u8]) -> u64 {
    let rt = rt();
    rt.block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        let d = cl.attach(db, DbKind::Volatile, 0).await.unwrap();
        value(Some(d.fetch(key).await.unwrap().data))
    })
}

/// The persistent value on every node (they must agree).
fn read_persistent(c: &Cluster, db: &str, key: &[u8]) -> Vec<Option<Vec<u8>>> {
    let rt = rt();
    rt.block_on(async {
        let mut v = Vec::new();
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(db, DbKind::Persistent, 0).await.unwrap();
            v.push(
                d.fetch_local(key)
                    .unwrap()
                    .map(|(_, d)| d)
                    .filter(|d| !d.is_empty()),
            );
        }
        v
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn kill9(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
}

/// The client library's operations.
async fn client_api(c: &Cluster) {
    let c0 = Client::connect(c.socket(0)).await.unwrap();
    let c2 = Client::connect(c.socket(2)).await.unwrap();
    // Volatile records: store, delete, fetch on another node (migrates).
    let v0 = c0.attach("api_vol.tdb", DbKind::Volatile, 0).await.unwrap();
    v0.store(b"a", b"one").await.unwrap();
    v0.store(b"b", b"two").await.unwrap();
    v0.delete(b"b").await.unwrap();
    let v2 = c2.attach("api_vol.tdb", DbKind::Volatile, 0).await.unwrap();
    let r = v2.fetch(b"a").await.unwrap();
    assert_eq!((r.data.as_slice(), r.header.dmaster), (&b"one"[..], 2));
    assert!(v2.fetch(b"b").await.unwrap().data.is_empty());
    let r = v0.fetch_readonly(b"a").await.unwrap();
    assert_eq!(r.data, b"one");
    // Traverses: records with data, then empty ones too.
    let keys = |recs: Vec<ctdb_client::TraverseRecord>| {
        let mut k: Vec<Vec<u8>> = recs.into_iter().map(|r| r.key).collect();
        k.sort();
        k
    };
    let full = keys(
        c2.traverse(v0.id(), false)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert_eq!(full, vec![b"a".to_vec()]);
    let all = keys(
        c2.traverse(v0.id(), true)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    );
    assert!(
        all.contains(&b"a".to_vec()) && all.contains(&b"b".to_vec()),
        "{all:?}"
    );
    // Persistent: commit, cancel, sequence number.
    let p0 = c0
        .attach("api_pers.tdb", DbKind::Persistent, 0)
        .await
        .unwrap();
    let mut t = p0.transaction_start(false).await.unwrap();
    t.store(b"k", b"v").unwrap();
    t.commit().await.unwrap();
    let mut t = p0.transaction_start(false).await.unwrap();
    t.store(b"cancelled", b"x").unwrap();
    t.cancel().await.unwrap();
    let p2 = c2
        .attach("api_pers.tdb", DbKind::Persistent, 0)
        .await
        .unwrap();
    assert_eq!(p2.fetch_local(b"k").unwrap().unwrap().1, b"v");
    assert!(p2.fetch_local(b"cancelled").unwrap().is_none());
    assert_eq!(c2.get_db_seqnum(2, p2.id()).await.unwrap(), 1);
    let recs = c0
        .traverse(p0.id(), false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(recs.iter().any(|r| r.key == b"k" && r.data == b"v"));
    // Replicated: transactions reach every node.
    let r0 = c0
        .attach("api_repl.tdb", DbKind::Replicated, 0)
        .await
        .unwrap();
    let mut t = r0.transaction_start(false).await.unwrap();
    for i in 0..10 {
        t.store(format!("r{i}").as_bytes(), b"replicated").unwrap();
    }
    t.commit().await.unwrap();
    let r2 = c2
        .attach("api_repl.tdb", DbKind::Replicated, 0)
        .await
        .unwrap();
    assert_eq!(r2.fetch_local(b"r7").unwrap().unwrap().1, b"replicated");
    let mut t = r2.transaction_start(false).await.unwrap();
    t.delete(b"r7").unwrap();
    t.commit().await.unwrap();
    assert!(
        r0.fetch_local(b"r7")
            .unwrap()
            .is_none_or(|(_, v)| v.is_empty())
    );
}

fn no_lost_updates_and_dead_clients(daemon: Daemon) -> Cluster {
    require_reference();
    let mut p = Phases::new(match daemon {
        Daemon::Reference => "reference",
        Daemon::Ours(_) => "ours",
    });
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    p.done("cluster of 3 started");
    rt().block_on(client_api(&c));
    p.done("client API: volatile, traverse, persistent, replicated");

    // Fetch-lock increments of one volatile record from every node.
    let n = VOLATILE_PER_CLIENT.to_string();
    let done = hammer(&c, "volatile", "counter.tdb", "hot", &[&n]);
    let total = 3 * CLIENTS_PER_NODE as u64 * VOLATILE_PER_CLIENT;
    assert_eq!(done.iter().sum::<u64>(), total, "{done:?}");
    assert_eq!(read_volatile(&c, "counter.tdb", b"hot"), total);
    p.done(&format!(
        "{total} fetch-lock increments of one record by {} processes",
        done.len()
    ));

    // Persistent transactions incrementing one key: every acknowledged
    // commit counted once, on every node.
    let (min, secs) = (
        PERSISTENT_MIN_PER_CLIENT.to_string(),
        PERSISTENT_SECS.to_string(),
    );
    let done = hammer(&c, "persistent", "pcounter.tdb", "hot", &[&min, &secs]);
    assert!(
        done.iter().all(|&n| n >= PERSISTENT_MIN_PER_CLIENT),
        "{done:?}"
    );
    let total: u64 = done.iter().sum();
    for v in read_persistent(&c, "pcounter.tdb", b"hot") {
        assert_eq!(value(v), total, "per client: {done:?}");
    }
    p.done(&format!(
        "{total} persistent commits on one key by {} processes (each: {done:?})",
        done.len()
    ));

    // Recoveries while clients are at it lose nothing either.
    let mut running: Vec<Child> = (0..6)
        .map(|i| spawn(&c, i % 3, &["volatile", "counter.tdb", "busy", "1000"]))
        .collect();
    running.extend((0..3).map(|k| spawn(&c, k, &["persistent", "pcounter.tdb", "busy", "50"])));
    c.tool_ok(0, &["recover"]);
    c.tool_ok(1, &["recover"]);
    for (i, ch) in running.into_iter().enumerate() {
        finish(ch, &format!("client {i} during recoveries"));
    }
    assert_eq!(read_volatile(&c, "counter.tdb", b"busy"), 6000);
    for v in read_persistent(&c, "pcounter.tdb", b"busy") {
        assert_eq!(value(v), 150);
    }
    p.done("2 recoveries amid 6 fetch-lock and 3 persistent clients");

    // A client killed while it holds a record lock: the others proceed.
    let mut holder = spawn(&c, 1, &["hold-lock", "counter.tdb", "locked-key"]);
    assert_eq!(first_line(&mut holder), "locked");
    let mut waiters: Vec<Child> = [0, 2]
        .iter()
        .map(|&k| spawn(&c, k, &["volatile", "counter.tdb", "locked-key", "50"]))
        .collect();
    // They cannot finish while the lock is held.
    std::thread::sleep(Duration::from_millis(500));
    for w in &mut waiters {
        assert!(w.try_wait().unwrap().is_none(), "finished despite the lock");
    }
    kill9(&mut holder);
    for (i, w) in waiters.into_iter().enumerate() {
        finish(w, &format!("lock waiter {i}"));
    }
    assert_eq!(read_volatile(&c, "counter.tdb", b"locked-key"), 100);
    p.done("a record lock holder killed, its 2 waiters went on");

    // A client killed inside a persistent transaction: its g_lock goes to
    // the next client, and none of its changes is visible anywhere.
    let mut holder = spawn(&c, 2, &["hold-transaction", "pcounter.tdb", "tkey"]);
    assert_eq!(first_line(&mut holder), "in transaction");
    let mut waiters: Vec<Child> = [0, 1]
        .iter()
        .map(|&k| spawn(&c, k, &["persistent", "pcounter.tdb", "tkey", "20"]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for w in &mut waiters {
        assert!(
            w.try_wait().unwrap().is_none(),
            "finished despite the g_lock"
        );
    }
    kill9(&mut holder);
    for (i, w) in waiters.into_iter().enumerate() {
        finish(w, &format!("transaction waiter {i}"));
    }
    for v in read_persistent(&c, "pcounter.tdb", b"tkey") {
        assert_eq!(value(v), 40);
    }
    for v in read_persistent(&c, "pcounter.tdb", b"partial7") {
        assert!(v.is_none(), "a dead client's change is visible: {v:?}");
    }
    p.done("a client killed in a transaction, its 2 waiters went on");
    c
}

/// A freeze that cannot get the record locks a client holds fails with an
/// error (and a log line) instead of hanging; the daemon serves meanwhile;
/// once the client is gone the database freezes and thaws.
fn freeze_gives_up(c: &Cluster) {
    c.tool_ok(1, &["setvar", "RecoverTimeout", "6"]);
    let mut holder = spawn(c, 1, &["hold-lock", "counter.tdb", "frozen-key"]);
    assert_eq!(first_line(&mut holder), "locked");
    let id = ctdb_tests::db_id("counter.tdb");
    rt().block_on(async {
        let cl = Client::connect(c.socket(1))
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(60));
        let freeze = cl.control_raw(1, ReqControl::new(ControlRequest::DbFreeze(id)));
        let ping = async {
            // Answered while the freeze waits for the lock.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cl.ping(1).await
        };
        let (f, p) = tokio::join!(freeze, ping);
        p.unwrap();
        assert_ne!(f.unwrap().status, 0, "froze while a client held a lock");
        kill9(&mut holder);
        let r = cl
            .control_raw(1, ReqControl::new(ControlRequest::DbFreeze(id)))
            .await
            .unwrap();
        assert_eq!(r.status, 0, "{:?}", r.errmsg);
        cl.control(1, ControlRequest::DbThaw(id)).await.unwrap();
    });
    assert!(
        c.log_text(1)
            .contains("Freeze of database counter.tdb failed"),
        "{}",
        c.log_tails()
    );
    c.tool_ok(1, &["setvar", "RecoverTimeout", "30"]);
    // The database works as before.
    let one = spawn(c, 1, &["volatile", "counter.tdb", "frozen-key", "5"]);
    finish(one, "increment after the freeze");
}

#[test]
fn no_lost_updates_ours() {
    let c = no_lost_updates_and_dead_clients(Daemon::ours());
    freeze_gives_up(&c);
}

#[test]
fn no_lost_updates_reference() {
    no_lost_updates_and_dead_clients(Daemon::Reference);
}
