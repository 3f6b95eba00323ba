//! Network partitions between nodes in their own network namespaces: a
//! node cut off from the others (both ways, or one way) is dropped from
//! the cluster, which carries on with the rest; once the cut is removed
//! the cluster heals by itself. On the reference and on ours.

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

fn status_line(c: &Cluster, observer: usize, pnn: usize) -> String {
    let out = c.tool(observer, &["status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("pnn:{pnn} ")))
        .unwrap_or_default()
        .to_owned()
}

fn partitions_heal(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(
        ClusterOptions::new(daemon, 3)
            .in_namespaces()
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3),
    );
    let limit = Duration::from_secs(90);

    // Node 2 cut off both ways: nodes 0 and 1 go on without it.
    c.net().partition(&[2], &[0, 1]);
    poll_until(limit, "node 0 to see node 2 disconnected", || {
        status_line(&c, 0, 2).contains("DISCONNECTED").then_some(())
    });
    c.wait_status(limit, 2, &[2]);
    c.tool_ok(0, &["attach", "partition.tdb"]);
    c.tool_ok(1, &["writekey", "partition.tdb", "k", "during"]);
    c.net().heal();
    c.wait_healthy(limit);
    // Node 2 catches up through the recovery that its return starts.
    poll_until(
        limit,
        "node 2 to read the record written during the cut",
        || {
            let out = c.tool(2, &["readkey", "partition.tdb", "k"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("during")
                .then_some(())
        },
    );

    // Node 0 stops hearing node 1 (one way): the cluster notices, and
    // heals once the cut is gone.
    c.net().drop_from(0, 1);
    poll_until(limit, "node 0 to see node 1 disconnected", || {
        status_line(&c, 0, 1).contains("DISCONNECTED").then_some(())
    });
    c.net().heal();
    c.wait_healthy(limit);
}

#[test]
fn partitions_heal_reference() {
    partitions_heal(Daemon::Reference);
}

#[test]
fn partitions_heal_ours() {
    partitions_heal(Daemon::ours());
}
