//! A cluster-wide traverse reaches every active node, also one whose
//! lmaster role is off (so it is out of the vnnmap) but which is the data
//! master of a record: `ctdb catdb` lists that record with its data, on the
//! reference and on ours.

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

fn traverse_reaches_a_node_without_lmaster_role(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    c.tool_ok(1, &["setlmasterrole", "off"]);
    // The vnnmap is rebuilt from the nodes' capabilities by a recovery.
    c.tool_ok(0, &["recover"]);
    poll_until(Duration::from_secs(60), "node 1 out of the vnnmap", || {
        let out = c.tool(0, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("Size:2") && !text.contains("lmaster:1"))
            .then_some(())
    });
    c.wait_healthy(Duration::from_secs(60));
    c.tool_ok(0, &["attach", "lmrole.tdb"]);
    c.tool_ok(0, &["writekey", "lmrole.tdb", "shared-key", "from-node-0"]);
    c.tool_ok(1, &["writekey", "lmrole.tdb", "shared-key", "from-node-1"]);
    let out = c.tool_ok(0, &["catdb", "lmrole.tdb"]);
    assert!(
        out.contains("shared-key") && out.contains("from-node-1"),
        "catdb on node 0 of {:?} misses node 1's record:\n{out}",
        c.daemon()
    );
    assert!(
        out.contains("Dumped 1 records"),
        "{:?}: expected exactly one record:\n{out}",
        c.daemon()
    );
}

#[test]
fn traverse_with_lmaster_role_off_reference() {
    traverse_reaches_a_node_without_lmaster_role(Daemon::Reference);
}

#[test]
fn traverse_with_lmaster_role_off_ours() {
    traverse_reaches_a_node_without_lmaster_role(Daemon::ours());
}
