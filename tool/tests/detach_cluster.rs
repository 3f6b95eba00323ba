//! `ctdb detach` through our tool, on a 3-node cluster of the reference
//! daemon and of ours: as CTDB's tool does it, the tool asks its local
//! daemon only, which passes the detach on to the other nodes. Every node
//! detaches exactly once: the tool succeeds with nothing on stderr, the
//! database leaves every node's map, and no node logs `Invalid dbid` (what a
//! second detach of the same database logs).

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

fn detach_on(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let ours = our_bin("ctdb");
    let tool = |k: usize, args: &[&str]| c.tool_with(&ours, k, args);
    let ok = |k: usize, args: &[&str]| {
        let o = tool(k, args);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "node {k}: ctdb {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            c.log_tails()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    ok(0, &["attach", "gone.tdb"]);
    for k in 0..3 {
        poll_until(Duration::from_secs(30), "the attach everywhere", || {
            ok(k, &["getdbmap"]).contains("gone.tdb").then_some(())
        });
    }
    // Refused while clients may attach, on any node.
    let o = tool(1, &["detach", "gone.tdb"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Database access is still active on node 0. Set AllowclientDBAttach=0 on all nodes.\n"
    );
    for k in 0..3 {
        ok(k, &["setvar", "AllowClientDBAttach", "0"]);
    }

    // From node 1: its daemon detaches and tells nodes 0 and 2.
    ok(1, &["detach", "gone.tdb"]);
    for k in 0..3 {
        poll_until(Duration::from_secs(30), "the detach everywhere", || {
            (!ok(k, &["getdbmap"]).contains("gone.tdb")).then_some(())
        });
    }
    for k in 0..3 {
        let log = c.log_text(k);
        assert!(
            !log.contains("Invalid dbid"),
            "node {k} was asked to detach twice:\n{log}"
        );
    }

    // Again, from another node.
    for k in 0..3 {
        ok(k, &["setvar", "AllowClientDBAttach", "1"]);
    }
    ok(0, &["attach", "again.tdb"]);
    for k in 0..3 {
        poll_until(
            Duration::from_secs(30),
            "the second attach everywhere",
            || ok(k, &["getdbmap"]).contains("again.tdb").then_some(()),
        );
        ok(k, &["setvar", "AllowClientDBAttach", "0"]);
    }
    ok(2, &["detach", "again.tdb"]);
    for k in 0..3 {
        poll_until(
            Duration::from_secs(30),
            "the second detach everywhere",
            || (!ok(k, &["getdbmap"]).contains("again.tdb")).then_some(()),
        );
        assert!(!c.log_text(k).contains("Invalid dbid"), "node {k}");
        ok(k, &["setvar", "AllowClientDBAttach", "1"]);
    }
}

#[test]
fn detach_through_our_tool_on_the_reference_cluster() {
    detach_on(Daemon::Reference);
}

#[test]
fn detach_through_our_tool_on_our_cluster() {
    detach_on(Daemon::ours());
}
