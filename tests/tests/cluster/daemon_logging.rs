//! Log rotation: after logrotate moves `log.ctdb` aside and sends SIGHUP,
//! the daemon writes to a new `log.ctdb`, on the reference and on ours.

use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn sighup_reopens_the_log(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 1));
    let log = c.log(0);
    let rotated = log.with_extension("ctdb.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = c.pid(0).expect("daemon pid");
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    poll_until(
        Duration::from_secs(10),
        "a new log.ctdb after SIGHUP",
        || log.exists().then_some(()),
    );
    // A line logged after the reopen goes to the new file only.
    c.tool_ok(0, &["attach", "after_rotation.tdb"]);
    let line = "after_rotation.tdb";
    poll_until(
        Duration::from_secs(10),
        "the attach logged in the new file",
        || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains(line)
                .then_some(())
        },
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains(line),
        "{:?} still wrote to the rotated file:\n{old}",
        c.daemon()
    );
    assert!(!old.is_empty(), "the rotated file kept the earlier lines");
    // The daemon is still fine.
    c.tool_ok(0, &["status"]);
}

#[test]
fn sighup_reopens_the_log_reference() {
    sighup_reopens_the_log(Daemon::Reference);
}

#[test]
fn sighup_reopens_the_log_ours() {
    sighup_reopens_the_log(Daemon::ours());
}
