//! The cluster lock in etcd, through CTDB's own `ctdb_etcd_lock` helper,
//! with a 3-member etcd cluster, one member in each node's network
//! namespace ([`ctdb_tests::etcd`]): the leader holds the lock; when it dies
//! another node takes the lock and leads; when the leader's etcd member is
//! cut from its peers (the leader's link to the lock store; the CTDB
//! traffic untouched), it loses the lock and, once the cut is gone, the
//! cluster heals. Never two holders of the lock at once (from the logs),
//! never two self-declared leaders.
//!
//! The two daemons die differently here: the reference runs in test mode
//! (no process group of its own), so killing it leaves its recovery daemon
//! and lock helper running until they notice, and the helper deletes its
//! etcd key; ours leads its own process group, which the harness kills
//! whole, so the dead leader's key stays for its TTL (9 s), as after a real
//! crash. The first election (after the 5 s leader timeout) then fails on
//! that key, and every lost attempt leaves a key of its own for 9 s: with a
//! retry every leader timeout (CTDB 4.17's pattern, which ours followed),
//! each attempt failed on the key of the one before it, for good (the
//! reference too: in a one-off run that SIGKILLed its leader's whole
//! process tree, helper included, its nodes retried every 5 s and had no
//! leader after 100 s). Ours lengthens the leader timeout after each lost lock
//! election (`leader::Recoverd::leader_timeout_len`), so it takes over in
//! about 15-20 s.

use std::time::Duration;

use ctdb_tests::etcd::{self, Etcd};
use ctdb_tests::faults;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

/// The leader node `k` reports, if it answers.
fn leader_seen_by(c: &Cluster, k: usize) -> Option<usize> {
    let out = c.tool(k, &["-T", "5", "status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Leader:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Nodes among `nodes` that each say they lead.
fn self_declared(c: &Cluster, nodes: &[usize]) -> Vec<usize> {
    nodes
        .iter()
        .copied()
        .filter(|&k| leader_seen_by(c, k) == Some(k))
        .collect()
}

/// `poll_until`, with every node's recovery log lines in the failure message.
fn wait_for<T>(c: &Cluster, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}: timed out after {limit:?} waiting for {what}\n{}",
            c.daemon(),
            faults::recoverd_tails(c, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster of `daemon` with its lock in a fresh 3-member etcd cluster.
fn start(daemon: &Daemon) -> (Cluster, Etcd) {
    require_reference();
    let mut etcd = Etcd::new();
    let mut opts = ClusterOptions::new(daemon.clone(), 3);
    opts.env.push(etcd::system_path());
    // The lock holds are read from INFO lines.
    opts.log_level = "INFO".into();
    let c = Cluster::launch(
        opts.in_namespaces()
            .cluster_lock(etcd.lock_setting())
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3)
            .tunable("RecoveryBanPeriod", 20),
    );
    etcd.start(c.net(), 3);
    c.wait_healthy(Duration::from_secs(120));
    assert_eq!(c.tool_ok(0, &["getreclock"]).trim(), etcd.lock_setting());
    (c, etcd)
}

/// Fails when two nodes' logs show them holding the lock at once.
fn no_two_holders(c: &Cluster, kills: &[(usize, std::time::SystemTime)]) {
    let holds = faults::lock_holds(c, kills);
    let both = faults::overlaps(&holds);
    println!("{:?}: lock holds {holds:?}", c.daemon());
    assert!(
        both.is_empty(),
        "{:?}: two holders at once: {both:?}",
        c.daemon()
    );
}

fn etcd_lock(daemon: Daemon) {
    let (c, etcd) = start(&daemon);
    let limit = Duration::from_secs(120);
    let all = [0, 1, 2];
    let leader = wait_for(&c, limit, "one leader", || {
        let s = self_declared(&c, &all);
        (s.len() == 1).then(|| s[0])
    });
    println!("{:?}: leader {leader} holds the etcd lock", c.daemon());

    // The leader dies: another node takes the lock and leads.
    c.kill(leader);
    let kills = [(leader, std::time::SystemTime::now())];
    let killed = std::time::Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|&k| k != leader).collect();
    let next = wait_for(&c, limit, "a new leader after the old one died", || {
        let s = self_declared(&c, &rest);
        assert!(
            s.len() <= 1,
            "two leaders: {s:?}\n{}",
            faults::recoverd_tails(&c, 30)
        );
        (s.len() == 1).then(|| s[0])
    });
    println!(
        "{:?}: node {next} took over {:.1}s after the leader was killed",
        c.daemon(),
        killed.elapsed().as_secs_f64()
    );
    c.restart_with(leader, &daemon);
    c.wait_healthy(limit);
    no_two_holders(&c, &kills);
    drop(etcd);
    c.stop();
}

/// The leader's etcd member is cut from its peers for 30 s (longer than
/// the lock's TTL), the CTDB traffic untouched.
fn lock_store_cut(daemon: Daemon, strict: bool) {
    let (c, etcd) = start(&daemon);
    let limit = Duration::from_secs(120);
    let all = [0, 1, 2];
    let leader = wait_for(&c, limit, "one leader", || {
        let s = self_declared(&c, &all);
        (s.len() == 1).then(|| s[0])
    });
    etcd.cut(c.net(), leader);
    let cut = std::time::Instant::now();
    let mut lost = None;
    let mut others = None;
    // The nodes are asked one after the other, so one poll can see a node
    // that has just lost an election still saying it leads beside the
    // winner. Two leaders count when two nodes say so in three polls
    // in a row (the lock holds from the logs are checked at the end).
    let mut two_in_a_row = 0;
    while cut.elapsed() < Duration::from_secs(30) {
        let s = self_declared(&c, &all);
        two_in_a_row = if s.len() > 1 { two_in_a_row + 1 } else { 0 };
        if s.len() > 1 {
            println!(
                "{:.1}s after the cut: two say they lead: {s:?}",
                cut.elapsed().as_secs_f64()
            );
        }
        assert!(
            two_in_a_row < 3,
            "two leaders in three polls in a row: {s:?}\n{}",
            faults::recoverd_tails(&c, 30)
        );
        if lost.is_none() && faults::log_text(&c, leader).contains("Cluster lock helper terminated")
        {
            lost = Some(cut.elapsed());
        }
        if others.is_none() && s.len() == 1 && s[0] != leader {
            others = Some((s[0], cut.elapsed()));
        }
    }
    println!(
        "{:?}: leader {leader} cut from the lock store: lost its lock after {lost:?}; another node led: {others:?}",
        c.daemon()
    );
    if strict {
        assert!(
            lost.is_some(),
            "the leader cut from etcd never lost its lock\n{}",
            faults::recoverd_tails(&c, 30)
        );
    }
    c.net().heal();
    let healed = std::time::Instant::now();
    c.wait_healthy(limit);
    let l = wait_for(&c, limit, "one leader after the cut", || {
        let s = self_declared(&c, &all);
        (s.len() == 1).then(|| s[0])
    });
    println!(
        "{:?}: healthy with leader {l} {:.1}s after the cut was removed",
        c.daemon(),
        healed.elapsed().as_secs_f64()
    );
    no_two_holders(&c, &[]);
    drop(etcd);
    c.stop();
}

#[test]
fn etcd_cluster_lock_reference() {
    etcd_lock(Daemon::Reference);
}

#[test]
fn etcd_cluster_lock_ours() {
    etcd_lock(Daemon::ours());
}

#[test]
fn etcd_lock_store_cut_reference() {
    lock_store_cut(Daemon::Reference, false);
}

#[test]
fn etcd_lock_store_cut_ours() {
    lock_store_cut(Daemon::ours(), true);
}
