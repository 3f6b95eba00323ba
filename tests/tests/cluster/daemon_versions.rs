//! The mixed-version check: a node restarted as another Samba version
//! (`CTDB_TEST_SAMBA_VERSION`, which CTDB honours to test this) meets the
//! older-running nodes' keepalives and shuts itself down; the others carry
//! on. On the reference and on ours.

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn other_version_is_refused(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon.clone(), 3));
    c.kill(2);
    c.wait_status(Duration::from_secs(60), 2, &[2]);
    // 4.18: a different minor version than every other node.
    let v = ((4u32 << 16) | 18).to_string();
    c.restart_with_env(2, &daemon, &[("CTDB_TEST_SAMBA_VERSION", &v)]);
    let pid = poll_until(Duration::from_secs(30), "node 2's pid", || c.pid(2));
    poll_until(
        Duration::from_secs(60),
        "node 2 shutting down on the version mismatch",
        || (!alive(pid)).then_some(()),
    );
    let log = c.log_text(2);
    assert!(
        log.contains("mixed versions"),
        "{:?}: node 2 stopped without saying why:\n{log}",
        c.daemon()
    );
    // The others are unaffected.
    for k in [0, 1] {
        c.tool_ok(k, &["ping"]);
    }
    c.wait_status(Duration::from_secs(60), 2, &[2]);
}

#[test]
fn other_version_is_refused_reference() {
    other_version_is_refused(Daemon::Reference);
}

#[test]
fn other_version_is_refused_ours() {
    other_version_is_refused(Daemon::ours());
}
