//! A package upgrade replaces `ctdbd` on disk while the old daemon runs.
//! The processes the running daemon starts from its own binary (the
//! traverse helper, the recovery daemon, the exec shim of the lock helper)
//! must still be the running version: they are started as
//! `/proc/self/exe`, not by the path the daemon was started from, which
//! now names the new binary (here one that cannot serve: a script that
//! fails) or nothing.
//!
//! Ours only: CTDB forks these without `exec`, so the file on disk does
//! not matter to it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ctdb_tests::procs::recoverd_of;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn helpers_run_the_running_binary_after_it_was_replaced_on_disk() {
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("ctdbd");
    std::fs::copy(our_bin("ctdbd"), &exe).unwrap();
    let c = Cluster::start(ClusterOptions::new(Daemon::Ours(exe.clone()), 2));
    c.tool_ok(0, &["attach", "upgrade.tdb"]);
    for i in 0..20 {
        c.tool_ok(0, &["writekey", "upgrade.tdb", &format!("key{i}"), "v"]);
    }
    let dumped = |c: &Cluster| {
        let out = c.tool(1, &["catdb", "upgrade.tdb"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    let (ok, before) = dumped(&c);
    assert!(ok && before.contains("Dumped 20 records"), "{before}");

    // The upgrade: a new file renamed over the old one (dpkg's way).
    let new = bin.path().join("ctdbd.dpkg-new");
    std::fs::write(&new, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, &exe).unwrap();

    // A cluster-wide traverse runs a helper on every node.
    let (ok, after) = dumped(&c);
    assert!(
        ok && after.contains("Dumped 20 records"),
        "catdb after the binary was replaced: {after}"
    );

    // A recovery daemon killed is started again, from the running binary.
    let d0 = c.pid(0).expect("node 0's pid");
    let r0 = poll_until(Duration::from_secs(10), "node 0's recovery daemon", || {
        recoverd_of(d0)
    });
    kill(Pid::from_raw(r0), Signal::SIGKILL).unwrap();
    poll_until(
        Duration::from_secs(30),
        "a new recovery daemon on node 0",
        || recoverd_of(d0).filter(|&p| p != r0),
    );
    c.wait_healthy(Duration::from_secs(90));
}
