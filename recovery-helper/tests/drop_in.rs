//! Our helper as a drop-in, in a cluster of reference daemons and in one of
//! our own daemons: after `ctdb recover`, a killed and restarted node, and
//! a stopped and continued node, every database is identical on every node
//! and no recovery failed.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(90);

fn kv(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{i:05}"), format!("{prefix}-value-{i}")))
        .collect()
}

/// Checks every database on `nodes` and the records each must hold.
fn check_all(c: &ctdb_tests::Cluster, nodes: &[usize], vol_expect: &[(String, String)]) {
    let vol = assert_identical(c, nodes, "vol1", true);
    for (k, v) in vol_expect {
        let held = vol
            .get(k.as_bytes())
            .unwrap_or_else(|| panic!("volatile record {k} lost"));
        assert_eq!(held.data, v.as_bytes(), "volatile record {k}");
    }
    let pers = assert_identical(c, nodes, "pers1", false);
    // 2999 records (one was deleted) and the sequence number record.
    assert_eq!(pers.len(), 3000);
    for (k, v) in kv("pk", 3000).into_iter().skip(1) {
        assert_eq!(pers[k.as_bytes()].data, v.as_bytes());
    }
    assert!(!pers.contains_key(b"pk00000".as_slice()));
    let repl = assert_identical(c, nodes, "repl1", false);
    for (k, v) in kv("rk", 20) {
        assert_eq!(repl[k.as_bytes()].data, v.as_bytes());
    }
}

#[test]
fn drop_in_reference_daemon() {
    drop_in(On::Reference);
}

#[test]
fn drop_in_our_daemon() {
    drop_in(On::Ours);
}

/// The scenario, on a cluster of `on`'s daemons running our helper.
fn drop_in(on: On) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let c = cluster(on, 3, &trace, &[]);

    // Volatile records written on all three nodes, some keys on each (so
    // they migrate), some on one node only.
    tool(&c, 0, &["attach", "vol1"]);
    let mut expect = Vec::new();
    for node in 0..3 {
        for i in 0..4 {
            let v = format!("shared-{i}-from-{node}");
            tool(&c, node, &["writekey", "vol1", &format!("shared{i}"), &v]);
        }
        let (k, v) = (format!("own{node}"), format!("only-on-{node}"));
        tool(&c, node, &["writekey", "vol1", &k, &v]);
        expect.push((k, v));
    }
    for i in 0..4 {
        // The last write wins.
        expect.push((format!("shared{i}"), format!("shared-{i}-from-2")));
    }
    // A 3000-record persistent database and a replicated database.
    tool(&c, 0, &["attach", "pers1", "persistent"]);
    ptrans(&c, 1, "pers1", &kv("pk", 3000));
    // A deleted record stays as a header without data until a recovery
    // drops it (and makes the helper push to every node).
    tool(&c, 0, &["pdelete", "pers1", "pk00000"]);
    tool(&c, 0, &["attach", "repl1", "replicated"]);
    ptrans(&c, 2, "repl1", &kv("rk", 20));
    let dbmap = tool(&c, 0, &["getdbmap"]);
    assert!(
        dbmap.contains("repl1") && dbmap.contains("REPLICATED"),
        "{dbmap}"
    );

    // 1. ctdb recover.
    let before = runs(&events(&trace)).len();
    tool(&c, 0, &["recover"]);
    c.wait_healthy(LIMIT);
    let r = wait_runs(&trace, before, LIMIT);
    assert!(r[before..].iter().all(|&(_, st)| st == 0), "runs {r:?}");
    check_all(&c, &[0, 1, 2], &expect);

    // 2. A node killed, then restarted. Records written meanwhile on a
    // surviving node must reach it.
    let victim = (leader(&c, 0) + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|&k| k != victim).collect();
    c.kill(victim);
    c.wait_status(LIMIT, 2, &[victim]);
    tool(
        &c,
        others[0],
        &["writekey", "vol1", "while-dead", "written"],
    );
    expect.push(("while-dead".into(), "written".into()));
    restart(&c, victim);
    c.wait_healthy(LIMIT);
    check_all(&c, &[0, 1, 2], &expect);

    // 3. A node stopped, then continued.
    let stopped = (leader(&c, 0) + 2) % 3;
    let active: Vec<usize> = (0..3).filter(|&k| k != stopped).collect();
    tool(&c, stopped, &["stop"]);
    c.wait_status(LIMIT, 2, &[stopped]);
    tool(
        &c,
        active[0],
        &["writekey", "vol1", "while-stopped", "written"],
    );
    expect.push(("while-stopped".into(), "written".into()));
    tool(&c, stopped, &["continue"]);
    c.wait_healthy(LIMIT);
    check_all(&c, &[0, 1, 2], &expect);

    // The persistent database went to the other nodes while it was pulled
    // from the source. The first recovery then also pushed it to the
    // source (which had a deleted record to drop); later ones left the
    // source alone, as it already held exactly the records to push.
    let evs = events(&trace);
    let pushes: Vec<&Event> = evs
        .iter()
        .filter(|e| e.ev == "push-start" && e.get("name") == "pers1")
        .collect();
    let db = pushes
        .first()
        .expect("pers1 never pushed")
        .get("db")
        .to_owned();
    assert!(pushes.iter().any(|e| e.num("nodes") == 2), "{pushes:?}");
    assert!(pushes.iter().any(|e| e.num("nodes") == 1), "{pushes:?}");
    // (On ctdb-rs daemons such a recovery, every copy already equal, is an
    // incremental catch-up that sends nothing: src/catchup.rs.)
    assert!(
        evs.iter()
            .any(|e| (e.ev == "source-kept" || e.ev == "catchup") && e.get("db") == db),
        "the source of pers1 was never left alone"
    );

    // Every helper run succeeded, and no daemon logged a failed recovery.
    let all = runs(&events(&trace));
    assert!(all.len() >= before + 4, "too few recoveries: {all:?}");
    assert!(all.iter().all(|&(_, st)| st == 0), "failed runs: {all:?}");
    let failures = recovery_failures(&c);
    assert!(
        failures.is_empty(),
        "recovery failures logged:\n{}",
        failures.join("\n")
    );
}
