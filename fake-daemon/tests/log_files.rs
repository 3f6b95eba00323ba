//! Log files hold plain text: colour escape codes only ever go to a
//! terminal. Checked for the fake daemon (whose stderr is a test's log
//! file) and for a cluster of our daemon with our recovery helper (both
//! append to `log.ctdb`).

use std::process::Command;
use std::time::Duration;

use ctdb_tests::fake::FakeDaemon;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until};

const STATE: &str = "NODEMAP
0       192.168.20.41   0x0 CURRENT RECMASTER
1       192.168.20.42   0x0

VNNMAP
654321
0
1

CONTROLFAILS
30 0 TIMEOUT  # getpid times out, which the fake logs as an error
";

fn assert_plain(what: &str, text: &str) {
    assert!(
        !text.contains('\u{1b}'),
        "{what} has escape codes:\n{}",
        text.escape_debug()
    );
}

#[test]
fn the_fake_daemon_logs_plain_text_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("fake.log");
    let fake = FakeDaemon::start(d, &d.join("ctdbd.socket"), STATE, |c| {
        c.stderr(std::fs::File::create(&log).unwrap());
    });

    let out = Command::new(our_bin("ctdb"))
        .args(["-t", "1", "getpid"])
        .env("CTDB_SOCKET", d.join("ctdbd.socket"))
        .env_remove("CTDB_TEST_MODE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "getpid should have timed out");
    let text = poll_until(Duration::from_secs(10), "the fake's error line", || {
        let t = std::fs::read_to_string(&log).unwrap();
        t.contains("fake timeout").then_some(t)
    });
    assert!(text.contains("ERROR"), "{text}");
    assert_plain("the fake daemon's log", &text);
    drop(fake);
}

#[test]
fn our_daemon_and_recovery_helper_log_plain_text() {
    ctdb_tests::require_reference(); // the cluster-lock helper
    let c = Cluster::start(
        ClusterOptions::new(Daemon::ours(), 2).recovery_helper(our_bin("ctdb_recovery_helper")),
    );
    // A recovery the helper logs, besides the one at start.
    c.tool_ok(0, &["recover"]);
    c.wait_healthy(Duration::from_secs(60));
    for k in 0..c.len() {
        let text = c.log_text(k);
        assert!(!text.is_empty(), "node {k} logged nothing");
        assert_plain(&format!("node {k}'s log.ctdb"), &text);
    }
    let all: String = (0..c.len()).map(|k| c.log_text(k)).collect();
    assert!(
        all.contains("ctdb-recovery["),
        "the recovery helper logged nothing into log.ctdb:\n{all}"
    );
}
