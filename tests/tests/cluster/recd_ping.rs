//! `RecdPingTimeout` and `RecdFailCount` act (issue 17), on the reference
//! and on ours in the same test: the recovery daemon pings its daemon once
//! per `RecoverInterval`; with the interval raised to 4 s, a ping timeout
//! of 1 s and one miss allowed, the daemon counts a miss, then restarts its
//! recovery daemon (CTDB's log lines), again and again. With the tunables
//! back, the cluster is healthy and the new recovery daemon answers.

use std::time::{Duration, Instant};

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

const MISS: &str = "Recovery daemon ping timeout. Count : 0";
const FINAL: &str = "Final timeout for recovery daemon ping. Restarting recovery daemon.";
const SHUTDOWN: &str = "Shutting down recovery daemon";

fn name(d: &Daemon) -> &'static str {
    match d {
        Daemon::Reference => "reference",
        Daemon::Ours(_) => "ours",
    }
}

/// Lines of `text` after its first `skip` bytes that contain `what`.
fn count(text: &str, skip: usize, what: &str) -> usize {
    text.get(skip..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Returns how long node 0 took from the tunables' change to its first
/// restart of the recovery daemon.
fn late_pings_restart_the_recovery_daemon(daemon: Daemon) -> Duration {
    let label = name(&daemon);
    let c = Cluster::start(ClusterOptions::new(daemon, 2));
    c.wait_healthy(Duration::from_secs(90));
    let skip = c.log_text(0).len();
    assert_eq!(
        count(&c.log_text(0), 0, FINAL),
        0,
        "{label}: restart before the test"
    );
    // The ping timer is set at each ping, with the timeout of that moment:
    // the interval first, so that the next ping is late.
    c.tool_ok(0, &["setvar", "RecoverInterval", "4"]);
    c.tool_ok(0, &["setvar", "RecdFailCount", "1"]);
    c.tool_ok(0, &["setvar", "RecdPingTimeout", "1"]);
    let t0 = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "the recovery daemon restarted after late pings",
        || {
            let log = c.log_text(0);
            (count(&log, skip, MISS) >= 1
                && count(&log, skip, FINAL) >= 1
                && count(&log, skip, SHUTDOWN) >= 1)
                .then_some(())
        },
    );
    let took = t0.elapsed();
    for (t, v) in [
        ("RecdPingTimeout", "60"),
        ("RecdFailCount", "10"),
        ("RecoverInterval", "1"),
    ] {
        c.tool_ok(0, &["setvar", t, v]);
    }
    let restored = Instant::now();
    // Node 1 kept the defaults: it never restarted its recovery daemon.
    assert_eq!(
        count(&c.log_text(1), 0, FINAL),
        0,
        "{label}: node 1 restarted"
    );
    // The new recovery daemon works: the cluster settles and it answers.
    c.wait_healthy(Duration::from_secs(90));
    let rd = c.tool_ok(0, &["-T", "10", "rddumpmemory"]);
    assert!(!rd.trim().is_empty(), "{label}: empty rddumpmemory");
    // With the defaults back, no more restarts (a timer set by the last
    // late ping may still fire once, within 2 s: watched from 6 s on).
    while restored.elapsed() < Duration::from_secs(6) {
        c.tool_ok(0, &["status"]);
    }
    let settled = c.log_text(0).len();
    while restored.elapsed() < Duration::from_secs(12) {
        c.tool_ok(0, &["status"]);
    }
    assert_eq!(
        count(&c.log_text(0), settled, FINAL),
        0,
        "{label}: restarted with the default tunables"
    );
    took
}

#[test]
fn late_recovery_daemon_pings_restart_it() {
    require_reference();
    let reference = late_pings_restart_the_recovery_daemon(Daemon::Reference);
    let ours = late_pings_restart_the_recovery_daemon(Daemon::ours());
    println!(
        "first recovery daemon restart after RecoverInterval 4, RecdPingTimeout 1, RecdFailCount 1: reference {:.1} s, ours {:.1} s",
        reference.as_secs_f64(),
        ours.as_secs_f64()
    );
}
