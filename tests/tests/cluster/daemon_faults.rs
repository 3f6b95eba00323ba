//! Node failures: a killed node is marked disconnected within the
//! keepalive limit, the rest recover and stay healthy, and the node rejoins
//! when restarted; a killed leader is replaced by another node, which
//! takes the cluster lock, and no two nodes hold the lock or claim the
//! lead at once. Run against our daemon and the reference.

use std::time::{Duration, Instant};

use ctdb_tests::{
    Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference, write_script,
};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";
const KEEPALIVE_INTERVAL: u32 = 1;
const KEEPALIVE_LIMIT: u32 = 3;

fn start(daemon: Daemon) -> Cluster {
    require_reference();
    Cluster::start(
        ClusterOptions::new(daemon, 3)
            .recovery_helper(HELPER)
            .tunable("KeepaliveInterval", KEEPALIVE_INTERVAL)
            .tunable("KeepaliveLimit", KEEPALIVE_LIMIT),
    )
}

fn ours() -> Daemon {
    Daemon::Ours(our_bin("ctdbd"))
}

/// Node `k`'s line in `observer`'s `ctdb status`.
fn node_line(c: &Cluster, observer: usize, k: usize) -> String {
    let out = String::from_utf8_lossy(&c.tool(observer, &["status"]).stdout).into_owned();
    out.lines()
        .find(|l| l.starts_with(&format!("pnn:{k} ")))
        .unwrap_or_default()
        .to_owned()
}

/// Waits (90 s) until each of `nodes` shows a vnn map of `size` nodes and
/// recovery mode NORMAL in its `ctdb status`: a recovery that counted
/// exactly the nodes expected has ended there.
fn wait_vnnmap(c: &Cluster, nodes: std::ops::Range<usize>, size: usize, what: &str) {
    let size = format!("Size:{size}");
    poll_until(Duration::from_secs(90), what, || {
        nodes
            .clone()
            .all(|k| {
                let s = String::from_utf8_lossy(&c.tool(k, &["status"]).stdout).into_owned();
                s.contains(&size) && s.contains("Recovery mode:NORMAL")
            })
            .then_some(())
    });
}

fn kill_node_then_restart(daemon: Daemon) {
    let c = start(daemon);
    let victim = 2;
    let killed = Instant::now();
    c.kill(victim);
    // Marked disconnected within the keepalive limit (with slack for the
    // observer's own polling).
    let limit = Duration::from_secs(u64::from(KEEPALIVE_INTERVAL * KEEPALIVE_LIMIT) + 5);
    poll_until(limit, "the killed node to be marked disconnected", || {
        node_line(&c, 0, victim)
            .contains("DISCONNECTED")
            .then_some(())
    });
    eprintln!("disconnected after {:?}", killed.elapsed());
    // The others recover without it (once the rerecovery timeout since
    // the last recovery has passed) and are healthy.
    wait_vnnmap(&c, 0..2, 2, "a recovery without the dead node");
    c.wait_status(Duration::from_secs(90), 2, &[victim]);
    // Restarted, it rejoins and is OK everywhere.
    c.restart(victim);
    c.wait_healthy(Duration::from_secs(120));
    // ...and is back in the vnn map after a recovery.
    wait_vnnmap(&c, 0..3, 3, "a recovery with the node back");
    for k in 0..3 {
        assert!(
            node_line(&c, k, victim).contains(" OK"),
            "node {k} does not see the restarted node OK"
        );
    }
}

fn kill_the_leader(daemon: Daemon) {
    let c = start(daemon);
    let old = poll_until(Duration::from_secs(30), "a leader", || c.leader(0));
    assert_eq!(
        c.lock_holder_node(),
        Some(old),
        "the leader does not hold the cluster lock"
    );
    c.kill(old);
    let survivors: Vec<usize> = (0..3).filter(|k| *k != old).collect();
    // Until a new leader is agreed, sample: the survivors never name two
    // different leaders, and the lock is never held by a dead node's
    // successor and another at once (fcntl gives one holder; it must be
    // the one they name once they name one).
    let new = poll_until(Duration::from_secs(90), "a new leader", || {
        let named: Vec<Option<usize>> = survivors.iter().map(|&k| c.leader(k)).collect();
        let live: Vec<usize> = named
            .iter()
            .flatten()
            .copied()
            .filter(|l| *l != old)
            .collect();
        if let (Some(a), Some(b)) = (live.first(), live.last()) {
            assert_eq!(a, b, "survivors name two leaders: {named:?}");
        }
        if live.len() == survivors.len() {
            Some(live[0])
        } else {
            None
        }
    });
    assert!(survivors.contains(&new));
    poll_until(
        Duration::from_secs(30),
        "the new leader to hold the lock",
        || (c.lock_holder_node() == Some(new)).then_some(()),
    );
    c.wait_status(Duration::from_secs(90), 2, &[old]);
    // Still one leader, the same, after the recovery.
    for &k in &survivors {
        assert_eq!(c.leader(k), Some(new));
    }
    assert_eq!(c.lock_holder_node(), Some(new));
}

#[test]
fn our_killed_node_is_dropped_and_rejoins() {
    kill_node_then_restart(ours());
}

#[test]
fn reference_killed_node_is_dropped_and_rejoins() {
    kill_node_then_restart(Daemon::Reference);
}

#[test]
fn our_killed_leader_is_replaced() {
    kill_the_leader(ours());
}

#[test]
fn reference_killed_leader_is_replaced() {
    kill_the_leader(Daemon::Reference);
}

/// Without a cluster lock the leader is chosen by election messages; when
/// it dies the survivors elect another.
fn elections_without_a_cluster_lock(daemon: Daemon) {
    let c = start(daemon);
    for k in 0..3 {
        c.kill(k);
    }
    for k in 0..3 {
        let p = c.base(k).join("ctdb.conf");
        let conf: String = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("cluster lock"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&p, conf).unwrap();
    }
    for k in 0..3 {
        c.restart(k);
    }
    c.wait_healthy(Duration::from_secs(120));
    let old = poll_until(Duration::from_secs(30), "an agreed leader", || {
        let l: Vec<Option<usize>> = (0..3).map(|k| c.leader(k)).collect();
        (l[0].is_some() && l.iter().all(|x| *x == l[0])).then(|| l[0].unwrap())
    });
    assert!(c.tool_ok(0, &["getreclock"]).trim().is_empty());
    c.kill(old);
    let survivors: Vec<usize> = (0..3).filter(|k| *k != old).collect();
    poll_until(Duration::from_secs(90), "a new agreed leader", || {
        let l: Vec<Option<usize>> = survivors.iter().map(|&k| c.leader(k)).collect();
        (l[0].is_some() && l[0] != Some(old) && l.iter().all(|x| *x == l[0])).then_some(())
    });
    c.wait_status(Duration::from_secs(90), 2, &[old]);
}

#[test]
fn our_elections_without_a_cluster_lock() {
    elections_without_a_cluster_lock(ours());
}

#[test]
fn reference_elections_without_a_cluster_lock() {
    elections_without_a_cluster_lock(Daemon::Reference);
}

/// Rewrites every node's `ctdb.conf` with `edit` and restarts the cluster.
fn restart_with_conf(c: &Cluster, edit: impl Fn(&str) -> String) {
    for k in 0..c.len() {
        c.kill(k);
    }
    for k in 0..c.len() {
        let p = c.base(k).join("ctdb.conf");
        let conf = edit(&std::fs::read_to_string(&p).unwrap());
        std::fs::write(&p, conf).unwrap();
    }
    for k in 0..c.len() {
        c.restart(k);
    }
    c.wait_healthy(Duration::from_secs(120));
}

/// The cluster lock as a `!helper args` command (here the fcntl helper
/// named explicitly): the leader holds it through that helper.
fn helper_command_lock(daemon: Daemon) {
    let c = start(daemon);
    let lock = c.lock_file();
    let setting = format!(
        "!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper {}",
        lock.display()
    );
    restart_with_conf(&c, |conf| {
        conf.lines()
            .map(|l| {
                if l.contains("cluster lock") {
                    format!("\tcluster lock = {setting}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    });
    assert_eq!(c.tool_ok(1, &["getreclock"]).trim(), setting);
    let leader = poll_until(Duration::from_secs(30), "a leader", || c.leader(0));
    poll_until(
        Duration::from_secs(30),
        "the leader to hold the lock",
        || (c.lock_holder_node() == Some(leader)).then_some(()),
    );
}

#[test]
fn our_cluster_lock_through_a_helper_command() {
    helper_command_lock(ours());
}

#[test]
fn reference_cluster_lock_through_a_helper_command() {
    helper_command_lock(Daemon::Reference);
}

/// A leader whose recoveries keep failing is banned and another node
/// takes over and recovers; the cluster is never left with every node
/// banned.
#[test]
fn our_leader_failing_recoveries_is_banned() {
    let tools = tempfile::tempdir().unwrap();
    let bad = tools.path().join("bad_node");
    let helper = tools.path().join("failing_helper");
    write_script(
        &helper,
        &format!(
            "#!/bin/sh\n# Fails the recovery when run by the node named in {bad}.\nb=$(cat {bad} 2>/dev/null)\ncase \"$2\" in */node.$b/*) exit 1;; esac\nexec {HELPER} \"$@\"\n",
            bad = bad.display()
        ),
    );
    require_reference();
    let c = Cluster::start(ClusterOptions::new(ours(), 3).recovery_helper(&helper));
    let leader = poll_until(Duration::from_secs(30), "a leader", || c.leader(0));
    std::fs::write(&bad, leader.to_string()).unwrap();
    c.tool_ok((leader + 1) % 3, &["setvar", "RerecoveryTimeout", "0"]);
    let observer = (leader + 1) % 3;
    // Force a recovery: the leader's helper fails until it is banned.
    let _ = c.tool(observer, &["recover"]);
    poll_until(
        Duration::from_secs(120),
        "the failing leader to be banned",
        || {
            node_line(&c, observer, leader)
                .contains("BANNED")
                .then_some(())
        },
    );
    let new = poll_until(Duration::from_secs(90), "a new leader", || {
        c.leader(observer).filter(|l| *l != leader)
    });
    assert_ne!(new, leader);
    c.wait_status(Duration::from_secs(90), 2, &[leader]);
    let s = c.tool_ok(observer, &["status"]);
    assert!(
        s.contains("Size:2"),
        "no recovery without the banned node:\n{s}"
    );
    assert!(
        c.log_text(leader).contains("Banning node"),
        "{}",
        c.log_tails()
    );
}

/// A hung node (SIGSTOP: its sockets stay open) is found by keepalives:
/// marked disconnected within the keepalive limit, and back when it
/// resumes.
fn hung_node(daemon: Daemon) {
    let c = start(daemon);
    let victim = 2;
    let pid = nix::unistd::Pid::from_raw(c.pid(victim).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let limit = Duration::from_secs(u64::from(KEEPALIVE_INTERVAL * KEEPALIVE_LIMIT) + 15);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(limit, "the hung node to be marked disconnected", || {
            node_line(&c, 0, victim)
                .contains("DISCONNECTED")
                .then_some(())
        })
    }));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    if r.is_err() {
        panic!("hung node never marked disconnected:\n{}", c.log_tails());
    }
    c.wait_healthy(Duration::from_secs(120));
    wait_vnnmap(&c, 0..3, 3, "the node back in the vnn map");
}

#[test]
fn our_hung_node_is_found_by_keepalives() {
    hung_node(ours());
}

#[test]
fn reference_hung_node_is_found_by_keepalives() {
    hung_node(Daemon::Reference);
}

/// Recoveries that outlast the leader timeout (5 s, CTDB's default; the
/// recovery helper here sleeps 7 s before it starts) are not taken for a
/// dead leader: the leader keeps broadcasting while its helper runs, and
/// what it received meanwhile (its own broadcasts among it) counts before
/// its own timeout does. So no node logs a leader broadcast timeout, no
/// election follows a recovery, and the leader stays. CTDB keeps its
/// event loop running while the helper runs. A leader that timed itself
/// out after a long recovery started an election, hence another long
/// recovery, and so on (a CI run of db_catchup's million-record full pull
/// never got healthy again).
fn slow_recoveries_keep_the_leader(daemon: Daemon, helper: &std::path::Path) {
    const RECOVERIES: usize = 5;
    require_reference();
    let tools = tempfile::tempdir().unwrap();
    let runs = tools.path().join("runs");
    let wrapper = tools.path().join("slow_helper");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\necho run >> '{}'\nsleep 7\nexec '{}' \"$@\"\n",
            runs.display(),
            helper.display()
        ),
    );
    let c = Cluster::start(
        ClusterOptions::new(daemon, 3)
            .recovery_helper(&wrapper)
            .tunable("RerecoveryTimeout", 0),
    );
    c.wait_one_generation();
    let leader = poll_until(Duration::from_secs(30), "a leader", || c.leader(0));
    let observer = (leader + 1) % 3;
    let logs_at: Vec<usize> = (0..3).map(|k| c.log_text(k).len()).collect();
    let runs_count = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let runs_at = runs_count();
    for i in 0..RECOVERIES {
        let before = c.generation(observer);
        // The tool may give up waiting before the slow recovery ends.
        let _ = c.tool(observer, &["recover"]);
        poll_until(
            Duration::from_secs(60),
            &format!("recovery {i} to start"),
            || (c.generation(observer) != before).then_some(()),
        );
        c.wait_one_generation();
    }
    let ran = runs_count() - runs_at;
    assert!(
        ran >= RECOVERIES,
        "the slow helper ran {ran} times for {RECOVERIES} recoveries"
    );
    for (k, &at) in logs_at.iter().enumerate() {
        let text = c.log_text(k);
        let since = text.get(at..).unwrap_or("");
        assert!(
            !since.contains("Leader broadcast timeout"),
            "node {k} timed out its leader during slow recoveries:\n{since}"
        );
        assert_eq!(c.leader(k), Some(leader), "node {k}'s leader");
    }
}

#[test]
fn our_slow_recoveries_keep_the_leader() {
    slow_recoveries_keep_the_leader(ours(), &our_bin("ctdb_recovery_helper"));
}

#[test]
fn reference_slow_recoveries_keep_the_leader() {
    slow_recoveries_keep_the_leader(Daemon::Reference, std::path::Path::new(HELPER));
}
