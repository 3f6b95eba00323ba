//! A node killed in the middle of a recovery: the helper fails cleanly,
//! naming the node and giving it ban credits, and the next recovery (run
//! by the leader without that node) succeeds.

mod common;

use std::time::Duration;

use common::*;
use ctdb_protocol::types::LtdbHeader;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn node_failure_reference_daemon() {
    node_failure(On::Reference);
}

#[test]
fn node_failure_our_daemon() {
    node_failure(On::Ours);
}

/// The scenario, on a cluster of `on`'s daemons running our helper.
fn node_failure(on: On) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let hold = dir.path().join("hold");
    let c = cluster(
        on,
        3,
        &trace,
        &[("CTDB_RECOVERY_HELPER_HOLD", hold.to_str().unwrap())],
    );
    restore(
        &c,
        "victim.tdb",
        0,
        (0..2000).map(|i| {
            let h = LtdbHeader {
                rsn: 1,
                dmaster: 0,
                reserved1: 0,
                flags: 0,
            };
            (format!("k{i}").into_bytes(), h, b"value".to_vec())
        }),
    );
    let boss = leader(&c, 0);
    let victim = (boss + 1) % 3;
    let survivors: Vec<usize> = (0..3).filter(|&k| k != victim).collect();
    let before = runs(&events(&trace)).len();

    // Hold the next recovery after its transactions have started, then
    // kill a node, then let the recovery go on.
    std::fs::write(&hold, b"").unwrap();
    let recover = {
        let tool_env = c.base(boss);
        std::process::Command::new("/usr/bin/ctdb")
            .arg("recover")
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", tool_env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let held_pid = ctdb_tests::poll_until(LIMIT, "the helper to hold", || {
        let evs = events(&trace);
        let done: Vec<u32> = runs(&evs).iter().map(|r| r.0).collect();
        evs.iter()
            .find(|e| e.ev == "hold" && !done.contains(&e.pid))
            .map(|e| e.pid)
    });
    c.kill(victim);
    std::fs::remove_file(&hold).unwrap();

    // The held run fails, blaming the killed node.
    let r = ctdb_tests::poll_until(LIMIT, "the held helper to exit", || {
        let r = runs(&events(&trace));
        r.iter().find(|(p, _)| *p == held_pid).copied()
    });
    assert_eq!(r.1, 1, "the helper did not fail");
    let evs = events_of(&events(&trace), held_pid);
    let credited: Vec<u64> = evs
        .iter()
        .filter(|e| e.ev == "ban-credit")
        .map(|e| e.num("node"))
        .collect();
    assert!(
        !credited.is_empty() && credited.iter().all(|&n| n == victim as u64),
        "ban credits went to {credited:?}, not only to node {victim}"
    );
    assert!(
        evs.iter()
            .any(|e| e.ev == "db-failed" && e.get("node") == victim.to_string()),
        "no database failure blamed on node {victim}: {evs:?}"
    );
    let log = std::fs::read_to_string(c.log(boss)).unwrap();
    if let Ok(keep) = std::env::var("RECHELPER_KEEP_LOG") {
        std::fs::write(keep, &log).unwrap();
    }
    let named = log.lines().any(|l| {
        l.contains(&format!("ctdb-recovery[{held_pid}]"))
            && l.contains("victim.tdb")
            && l.contains(&format!("node {victim}"))
    });
    assert!(
        named,
        "no log line names the failing node and database:\n{}",
        c.log_tails()
    );

    // The next recovery, without the dead node, succeeds.
    c.wait_status(LIMIT, 2, &[victim]);
    ctdb_tests::poll_until(LIMIT, "a successful recovery after the failed one", || {
        let all = runs(&events(&trace));
        all.iter()
            .skip_while(|(p, _)| *p != held_pid)
            .skip(1)
            .any(|(_, st)| *st == 0)
            .then_some(())
    });
    assert!(runs(&events(&trace)).len() > before + 1);
    let db = assert_identical(&c, &survivors, "victim.tdb", true);
    assert_eq!(db.len(), 2000);
    let mut recover = recover;
    let _ = recover.wait();
}
