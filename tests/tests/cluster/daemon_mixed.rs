//! Mixed clusters: our daemon and the reference daemon speak the same
//! node protocol. Our node joins a reference cluster, and a reference node
//! joins a cluster led by ours; both become healthy with one generation,
//! and records migrate and persistent transactions commit across the two
//! kinds of daemon, also through a recovery.

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";

fn ours() -> Daemon {
    Daemon::Ours(our_bin("ctdbd"))
}

fn swap_node_2(first: Daemon, second: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(first, 3).recovery_helper(HELPER));
    c.kill(2);
    c.restart_with(2, &second);
    c.wait_healthy(Duration::from_secs(120));
    poll_until(
        Duration::from_secs(90),
        "one generation with all three nodes",
        || {
            let g: Vec<Option<String>> = (0..3).map(|k| c.generation(k)).collect();
            let all_in = (0..3).all(|k| c.tool_ok(k, &["status"]).contains("Size:3"));
            (all_in
                && g[0].is_some()
                && g.iter().all(|x| *x == g[0])
                && g[0].as_deref() != Some("INVALID"))
            .then_some(())
        },
    );
    for k in 0..3 {
        let s = c.tool_ok(k, &["status"]);
        assert_eq!(s.matches(" OK").count(), 3, "node {k}:\n{s}");
    }
    // Messages and controls cross between the two kinds of daemon.
    assert_eq!(
        c.tool_ok(0, &["-n", "2", "getpid"]).trim(),
        c.pid(2).unwrap().to_string()
    );
    assert_eq!(
        c.tool_ok(2, &["-n", "0", "getpid"]).trim(),
        c.pid(0).unwrap().to_string()
    );
    databases(&c);
}

/// Node 2 runs the other daemon: records move between the two kinds.
fn databases(c: &Cluster) {
    c.tool_ok(0, &["attach", "mixed.tdb"]);
    c.tool_ok(1, &["attach", "mixedp.tdb", "persistent"]);
    for (w, r, v) in [(0, 2, "a"), (2, 1, "b"), (1, 2, "c"), (2, 0, "d")] {
        c.tool_ok(w, &["writekey", "mixed.tdb", "k", v]);
        let out = c.tool_ok(r, &["readkey", "mixed.tdb", "k"]);
        assert_eq!(out.trim(), format!("Data: size:1 ptr:[{v}]"), "{w} -> {r}");
    }
    c.tool_ok(2, &["pstore", "mixedp.tdb", "p", "from2"]);
    c.tool_ok(0, &["pstore", "mixedp.tdb", "q", "from0"]);
    for k in 0..3 {
        assert_eq!(c.tool_ok(k, &["pfetch", "mixedp.tdb", "p"]).trim(), "from2");
        assert_eq!(c.tool_ok(k, &["getdbseqnum", "mixedp.tdb"]).trim(), "0x2");
    }
    c.tool_ok(1, &["recover"]);
    for k in 0..3 {
        let out = c.tool_ok(k, &["readkey", "mixed.tdb", "k"]);
        assert_eq!(out.trim(), "Data: size:1 ptr:[d]", "node {k}");
        assert_eq!(c.tool_ok(k, &["pfetch", "mixedp.tdb", "q"]).trim(), "from0");
    }
}

#[test]
fn our_node_joins_a_reference_cluster() {
    swap_node_2(Daemon::Reference, ours());
}

#[test]
fn reference_node_joins_our_cluster() {
    swap_node_2(ours(), Daemon::Reference);
}
