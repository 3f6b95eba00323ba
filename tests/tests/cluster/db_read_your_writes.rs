//! Read-your-writes across nodes (issue 21, `DB_WAIT_SEQNUM`): a writer
//! on node 0 commits and hands the point its commit reached (the database
//! sequence number; on a keyed database its keys' rsns) to a reader on
//! node 2, which asks its node to wait for it and then reads its local
//! copy: 10,000 rounds on a classic persistent database, and rounds on a
//! keyed and an in-memory one, with zero stale reads. A wait for a point
//! not reached yet is parked by the daemon and answered by the commit that
//! reaches it (checked by polling the wait once after a later control on
//! the same connection was answered). A point never reached ends in
//! `WaitTimedOut` after the timeout given. A reference daemon does not know
//! the control: the client reports `NotSupported`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_client::{ClientError, CommitPoint, Db, DbKind};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};

const KEY: &[u8] = b"ryw_key";
const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The round number stored under [`KEY`] in `db`'s local copy (0 if none).
fn local_round(db: &Db) -> u64 {
    round_of(db, KEY)
}

fn round_of(db: &Db, key: &[u8]) -> u64 {
    db.fetch_local(key)
        .unwrap()
        .and_then(|(_, v)| v.try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0)
}

/// One commit of round `i` on `db`: its point.
async fn commit_round(db: &Db, i: u64) -> CommitPoint {
    commit_key(db, KEY, i).await
}

async fn commit_key(db: &Db, key: &[u8], i: u64) -> CommitPoint {
    if db.kind() == DbKind::Keyed {
        let mut t = db.keyed_transaction(&[key]).await.unwrap();
        t.store(key, &i.to_le_bytes()).unwrap();
        t.commit_point().await.unwrap()
    } else {
        let mut t = db.transaction_start(false).await.unwrap();
        t.store(key, &i.to_le_bytes()).unwrap();
        CommitPoint::Seqnum(t.commit_seq().await.unwrap())
    }
}

/// `rounds` commits of `key` on node 0, each point handed to a reader on
/// node 2 that waits for it and reads: returns the stale reads (a value
/// older than the round whose point was waited for).
async fn rounds(
    sockets: (PathBuf, PathBuf),
    name: String,
    key: Vec<u8>,
    kind: DbKind,
    rounds: u64,
) -> u64 {
    let wc = ctdb_client::Client::connect(&sockets.0).await.unwrap();
    let rc = ctdb_client::Client::connect(&sockets.1).await.unwrap();
    let writer = wc.attach(&name, kind, 0).await.unwrap();
    let reader = rc.attach(&name, kind, 0).await.unwrap();
    let base = round_of(&writer, &key);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(CommitPoint, u64)>();
    let w = writer.clone();
    let k = key.clone();
    let writing = tokio::spawn(async move {
        for i in base + 1..=base + rounds {
            let p = commit_key(&w, &k, i).await;
            if let CommitPoint::Keys(ks) = &p {
                assert_eq!(ks.len(), 1, "one key written");
            }
            tx.send((p, i)).unwrap();
        }
    });
    let mut stale = 0;
    let mut last = 0;
    while let Some((p, i)) = rx.recv().await {
        let reached = reader.wait_for(&p, WAIT).await.unwrap();
        if let CommitPoint::Seqnum(s) = p {
            assert!(reached >= s, "wait answered at {reached}, below {s}");
        }
        let seen = round_of(&reader, &key);
        if seen < i {
            stale += 1;
            eprintln!("round {i}: node 2 read {seen} after its wait for {p:?}");
        }
        last = i;
    }
    writing.await.unwrap();
    assert_eq!(last, base + rounds, "every round was read");
    stale
}

/// `total` rounds in `streams` concurrent writer/reader pairs: on classic
/// and in-memory databases one database each (a database's transactions
/// are serialised), on a keyed database one key each of the same
/// database. Asserts zero stale reads.
async fn rounds_in_streams(c: &Cluster, name: &str, kind: DbKind, streams: u64, total: u64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let db = if kind == DbKind::Keyed {
            name.to_owned()
        } else {
            format!("{s}_{name}")
        };
        let key = format!("ryw_key_{s}").into_bytes();
        tasks.push(tokio::spawn(rounds(
            (c.socket(0), c.socket(2)),
            db,
            key,
            kind,
            total / streams,
        )));
    }
    let mut stale = 0;
    for t in tasks {
        stale += t.await.unwrap();
    }
    eprintln!(
        "{name} ({kind:?}): {total} rounds in {streams} streams in {:.1} s, {stale} stale reads",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stale, 0, "stale reads on {name}");
}

/// A wait for the next point, sent before the commit that reaches it: the
/// daemon parks it (it is still unanswered after a later control on the
/// same connection was answered) and the commit answers it.
async fn parked_rounds(c: &Cluster, name: &str, kind: DbKind, rounds: u64) {
    let wc = ctdb_client::Client::connect(c.socket(0)).await.unwrap();
    let rc = ctdb_client::Client::connect(c.socket(2)).await.unwrap();
    let writer = wc.attach(name, kind, 0).await.unwrap();
    let reader = rc.attach(name, kind, 0).await.unwrap();
    for _ in 0..rounds {
        let i = local_round(&writer) + 1;
        // The point the next commit will reach.
        let next = if kind == DbKind::Keyed {
            let rsn = reader.fetch_local(KEY).unwrap().map_or(0, |(h, _)| h.rsn);
            CommitPoint::Keys(vec![(KEY.to_vec(), rsn + 1)])
        } else {
            CommitPoint::Seqnum(reader.local_seqnum().unwrap() + 1)
        };
        let wait = reader.wait_for(&next, WAIT);
        tokio::pin!(wait);
        // The first poll sends the control.
        tokio::select! {
            biased;
            r = &mut wait => panic!("answered before the commit: {r:?}"),
            _ = std::future::ready(()) => {}
        }
        // Node 2 handles its client's packets in order: once this is
        // answered, the wait was handled, and it must still be parked.
        rc.get_pnn(CTDB_CURRENT_NODE).await.unwrap();
        tokio::task::yield_now().await;
        tokio::select! {
            biased;
            r = &mut wait => panic!("answered before the commit: {r:?}"),
            _ = std::future::ready(()) => {}
        }
        let p = commit_round(&writer, i).await;
        assert_eq!(p, next, "the commit reached the point waited for");
        wait.await.unwrap();
        assert_eq!(
            local_round(&reader),
            i,
            "node 2 sees the commit it waited for"
        );
    }
}

/// Waits that cannot be satisfied in time end in `WaitTimedOut`, not in a
/// generic failure, after the timeout given; the current generation is
/// reached at once.
async fn timeouts(c: &Cluster, name: &str, kind: DbKind) {
    let rc = ctdb_client::Client::connect(c.socket(2)).await.unwrap();
    let reader = rc.attach(name, kind, 0).await.unwrap();
    let far = if kind == DbKind::Keyed {
        let rsn = reader.fetch_local(KEY).unwrap().map_or(0, |(h, _)| h.rsn);
        CommitPoint::Keys(vec![(KEY.to_vec(), rsn + 1000)])
    } else {
        CommitPoint::Seqnum(reader.local_seqnum().unwrap() + 1000)
    };
    let t0 = Instant::now();
    let r = reader.wait_for(&far, Duration::from_millis(200)).await;
    let took = t0.elapsed();
    assert!(
        matches!(&r, Err(ClientError::WaitTimedOut { .. })),
        "a wait past the last commit: {r:?}"
    );
    eprintln!("{kind:?}: {} after {took:?}", r.unwrap_err());
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    let g = rc.get_vnnmap(CTDB_CURRENT_NODE).await.unwrap().generation;
    assert_eq!(
        reader
            .wait_generation(g, Duration::from_secs(5))
            .await
            .unwrap(),
        g
    );
    let r = reader
        .wait_generation(g.wrapping_add(1), Duration::from_millis(200))
        .await;
    assert!(
        matches!(&r, Err(ClientError::WaitTimedOut { .. })),
        "a generation this node never had: {r:?}"
    );
    // A keyed database has no database sequence number: a clear refusal.
    if kind == DbKind::Keyed {
        let r = reader.wait_seqnum(1, Duration::from_millis(200)).await;
        assert!(
            matches!(&r, Err(ClientError::ControlFailed { errmsg: Some(m), .. }) if m.contains("keyed")),
            "{r:?}"
        );
    }
}

fn ours_3() -> Cluster {
    require_reference();
    // Our recovery helper: keyed databases need it.
    let c = Cluster::start(
        ClusterOptions::new(Daemon::Ours(our_bin("ctdbd")), 3)
            .recovery_helper(our_bin("ctdb_recovery_helper")),
    );
    c.wait_one_generation();
    c
}

#[test]
fn classic_10000_rounds_no_stale_read() {
    let c = ours_3();
    let db = "ryw_classic.tdb";
    rt().block_on(async {
        parked_rounds(&c, db, DbKind::Persistent, 100).await;
        rounds_in_streams(&c, db, DbKind::Persistent, 4, 10_000).await;
        timeouts(&c, db, DbKind::Persistent).await;
    });
}

#[test]
fn inmemory_3000_rounds_no_stale_read() {
    let c = ours_3();
    let db = "ryw_inmemory.tdb";
    rt().block_on(async {
        parked_rounds(&c, db, DbKind::InMemory, 100).await;
        rounds_in_streams(&c, db, DbKind::InMemory, 1, 3_000).await;
        timeouts(&c, db, DbKind::InMemory).await;
    });
}

#[test]
fn keyed_4000_rounds_in_4_key_streams_no_stale_read() {
    let c = ours_3();
    let db = "ryw_keyed.tdb";
    rt().block_on(async {
        parked_rounds(&c, db, DbKind::Keyed, 100).await;
        rounds_in_streams(&c, db, DbKind::Keyed, 4, 4_000).await;
        timeouts(&c, db, DbKind::Keyed).await;
    });
}

/// After a recovery, a wait parked before it is answered by a commit
/// after it, and the generation before the recovery counts as reached.
#[test]
fn waits_survive_a_recovery() {
    let c = ours_3();
    let db = "ryw_recovery.tdb";
    rt().block_on(async {
        let rc = ctdb_client::Client::connect(c.socket(2)).await.unwrap();
        let reader = rc.attach(db, DbKind::Persistent, 0).await.unwrap();
        let g0 = rc.get_vnnmap(CTDB_CURRENT_NODE).await.unwrap().generation;
        let next = reader.local_seqnum().unwrap() + 1;
        let wait = tokio::spawn({
            let reader = reader.clone();
            async move { reader.wait_seqnum(next, Duration::from_secs(120)).await }
        });
        rc.get_pnn(CTDB_CURRENT_NODE).await.unwrap();
        let out = c.tool_with(&our_bin("ctdb"), 0, &["recover"]);
        assert!(out.status.success(), "ctdb recover failed");
        // Polled with a deadline (the tool's recover returns before the
        // recovery has run).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let g = rc.get_vnnmap(CTDB_CURRENT_NODE).await.unwrap().generation;
            let normal = rc.get_recmode(CTDB_CURRENT_NODE).await.unwrap() == 0;
            if g != g0 && normal {
                break;
            }
            assert!(Instant::now() < deadline, "no new generation on node 2");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.wait_one_generation();
        // Any answer to the wait was routed before this one.
        rc.get_pnn(CTDB_CURRENT_NODE).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!wait.is_finished(), "the wait ended without a commit");
        let wc = ctdb_client::Client::connect(c.socket(0)).await.unwrap();
        let writer = wc.attach(db, DbKind::Persistent, 0).await.unwrap();
        let p = commit_round(&writer, 1).await;
        assert_eq!(p, CommitPoint::Seqnum(next));
        assert_eq!(wait.await.unwrap().unwrap(), next);
        assert_eq!(local_round(&reader), 1);
        // The generation before the recovery was finished here.
        assert_eq!(
            reader
                .wait_generation(g0, Duration::from_millis(200))
                .await
                .unwrap(),
            g0
        );
    });
}

/// The reference daemon answers the unknown control with an error: the
/// client says the node does not support it.
#[test]
fn reference_daemon_reports_not_supported() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Reference, 1));
    c.wait_healthy(Duration::from_secs(120));
    rt().block_on(async {
        let cl = ctdb_client::Client::connect(c.socket(0)).await.unwrap();
        let db = cl
            .attach("ryw_ref.tdb", DbKind::Persistent, 0)
            .await
            .unwrap();
        let p = commit_round(&db, 1).await;
        let r = db.wait_for(&p, Duration::from_secs(1)).await;
        match &r {
            Err(e @ ClientError::NotSupported { .. }) => {
                let m = e.to_string();
                assert!(m.contains("does not support"), "{m}");
                eprintln!("reference: {m}");
            }
            other => panic!("the reference daemon's answer: {other:?}"),
        }
    });
    // Our tool's waitseqnum says so too, with its own exit status.
    let (code, out) = waitseqnum(&c, 0, &["ryw_ref.tdb", "1", "1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not support DB_WAIT_SEQNUM"), "{out}");
}

/// Our tool's `waitseqnum` on node `k`: exit status and output.
fn waitseqnum(c: &Cluster, k: usize, args: &[&str]) -> (i32, String) {
    let mut all = vec!["waitseqnum"];
    all.extend_from_slice(args);
    let out = c.tool_with(&our_bin("ctdb"), k, &all);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `ctdb waitseqnum` (ours): a script on node 2 waits for the sequence
/// number a commit on node 0 returned, then reads node 2's copy: the
/// write is there, every round. A point past the last commit times out
/// (exit status 2, the daemon's message), a generation the node finished
/// is reached, bad input is refused (exit status 1).
#[test]
fn tool_waitseqnum_waits_for_the_writers_point() {
    let c = ours_3();
    let name = "ryw_tool.tdb";
    let rt = rt();
    let (writer, reader) = rt.block_on(async {
        let w = ctdb_client::Client::connect(c.socket(0)).await.unwrap();
        let r = ctdb_client::Client::connect(c.socket(2)).await.unwrap();
        let wd = w.attach(name, DbKind::Persistent, 0).await.unwrap();
        let rd = r.attach(name, DbKind::Persistent, 0).await.unwrap();
        (wd, rd)
    });
    for i in 1..=20u64 {
        let p = rt.block_on(commit_round(&writer, i));
        let CommitPoint::Seqnum(seq) = p else {
            panic!("a classic commit's point: {p:?}");
        };
        let (code, out) = waitseqnum(&c, 2, &[name, &seq.to_string(), "30"]);
        assert_eq!(code, 0, "round {i}: {out}");
        // "NAME: reached V on node 2", V at least the writer's point.
        let reached: u64 = out
            .split("reached ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("round {i}: no reached value in {out}"));
        assert!(
            reached >= seq,
            "round {i}: reached {reached} < {seq}: {out}"
        );
        assert_eq!(
            local_round(&reader),
            i,
            "round {i}: node 2's copy after the wait"
        );
    }
    let seq = reader.local_seqnum().unwrap();
    let t0 = Instant::now();
    let (code, out) = waitseqnum(&c, 2, &[name, &(seq + 1000).to_string(), "0.2"]);
    assert_eq!(code, 2, "a point past the last commit: {out}");
    assert!(out.contains("timed out"), "{out}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    eprintln!("timeout: {out}");
    let g = rt
        .block_on(async {
            let cl = ctdb_client::Client::connect(c.socket(2)).await.unwrap();
            cl.get_vnnmap(CTDB_CURRENT_NODE).await
        })
        .unwrap()
        .generation;
    let (code, out) = waitseqnum(&c, 2, &[name, &format!("gen:{g}"), "5"]);
    assert_eq!(code, 0, "the current generation: {out}");
    // From node 0 for node 2 (-n): the same wait, answered there.
    let out = c.tool_with(
        &our_bin("ctdb"),
        0,
        &["-n", "2", "waitseqnum", name, &seq.to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("on node 2"), "{text}");
    for bad in [
        vec!["nosuch.tdb", "1"],
        vec![name, "x"],
        vec![name, "1", "-3"],
    ] {
        let (code, out) = waitseqnum(&c, 2, &bad);
        assert_eq!(code, 1, "{bad:?}: {out}");
    }
}
