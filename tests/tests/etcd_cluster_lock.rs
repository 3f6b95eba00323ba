//! The cluster lock in etcd, through CTDB's own `ctdb_etcd_lock` helper,
//! with an etcd server in the bridge namespace of a cluster in network
//! namespaces: the leader holds the lock; when it dies another node takes
//! the lock and leads. Never two leaders.
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
//! about 15-20 s. A leader cut off from etcd (not from the other nodes) is
//! not replaced within two minutes on the reference either;
//! `Network::cut_from_bridge` is there to test that once it is settled.

use std::process::{Child, Stdio};
use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_etcd_lock";

/// An etcd server in the cluster's bridge namespace; killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(c: &Cluster) -> Etcd {
    let net = c.net();
    let ip = net.bridge_ip();
    let data = c.dir().join("etcd");
    let client = format!("http://{ip}:2379");
    let child = net
        .command_in_bridge("/usr/bin/etcd")
        .args(["--name", "ctdbrs", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "ctdbrs=http://127.0.0.1:2380"])
        .args(["--enable-v2=true", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(c.dir().join("etcd.log")).unwrap())
        .spawn()
        .expect("start etcd (apt-get install etcd-server)");
    let etcd = Etcd(child);
    poll_until(Duration::from_secs(30), "etcd answering", || {
        let probe = format!("import socket; socket.create_connection(('{ip}', 2379), 1)");
        net.command_in(0, "/usr/bin/python3")
            .args(["-c", &probe])
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    etcd
}

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

/// `poll_until`, with every node's log in the failure message.
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
            c.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn etcd_lock(daemon: Daemon) {
    require_reference();
    for p in [HELPER, "/usr/bin/etcd"] {
        assert!(
            std::path::Path::new(p).exists(),
            "{p} missing: run scripts/install-deps.sh (ctdb, etcd-server, python3-etcd)"
        );
    }
    // The helper reads its etcd endpoint from a config file.
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("etcd.conf");
    std::fs::write(
        &conf,
        "host = 192.0.2.254\nport = 2379\nlock_ttl = 9\nrefresh = 2\n",
    )
    .unwrap();
    let setting = format!("!{HELPER} -c {}", conf.display());
    let mut opts = ClusterOptions::new(daemon.clone(), 3);
    // The helper runs `python3` from PATH and needs Debian's python3-etcd:
    // the system's interpreter, whatever else the test's PATH has first.
    opts.env
        .push(("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    let c = Cluster::launch(
        opts.in_namespaces()
            .cluster_lock(setting.clone())
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3),
    );
    let _etcd = start_etcd(&c);
    let limit = Duration::from_secs(120);
    c.wait_healthy(limit);
    assert_eq!(c.tool_ok(0, &["getreclock"]).trim(), setting);
    let all = [0, 1, 2];
    let leader = wait_for(&c, limit, "one leader", || {
        let s = self_declared(&c, &all);
        (s.len() == 1).then(|| s[0])
    });
    println!("{:?}: leader {leader} holds the etcd lock", c.daemon());

    // The leader dies: another node takes the lock and leads.
    c.kill(leader);
    let killed = std::time::Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|&k| k != leader).collect();
    let next = wait_for(&c, limit, "a new leader after the old one died", || {
        let s = self_declared(&c, &rest);
        assert!(s.len() <= 1, "two leaders: {s:?}\n{}", c.log_tails());
        (s.len() == 1).then(|| s[0])
    });
    println!(
        "{:?}: node {next} took over {:.1}s after the leader was killed",
        c.daemon(),
        killed.elapsed().as_secs_f64()
    );
    c.restart_with(leader, &daemon);
    c.wait_healthy(limit);
    drop(_etcd);
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
