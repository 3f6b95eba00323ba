//! What the public IP failover tests share (issue 19): the cluster (3
//! nodes, each in a network namespace of its own, 6 public addresses on
//! `eth0`, Debian's `10.interface.script`), where the addresses are
//! (`ip addr` in each namespace, and `ctdb ip`), waiting for placements,
//! and running a scenario on the reference and on ours side by side.

#![allow(dead_code)] // the failover and tickle tests each use part of it

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

pub const NODES: usize = 3;
pub const KEEPALIVE_INTERVAL: u64 = 2;
pub const KEEPALIVE_LIMIT: u64 = 3;

pub fn public_ips() -> Vec<String> {
    (101..=106).map(|i| format!("192.0.2.{i}")).collect()
}

/// Which of nodes `nodes` has each public address on `eth0`.
pub fn hosts(c: &Cluster, nodes: &[usize]) -> BTreeMap<String, Vec<usize>> {
    let mut m: BTreeMap<String, Vec<usize>> = public_ips()
        .into_iter()
        .map(|ip| (ip, Vec::new()))
        .collect();
    for &k in nodes {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &c.net().ns(k),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip addr in node {k}'s namespace");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(a) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) else {
                continue;
            };
            let ip = a.split('/').next().unwrap_or_default();
            if let Some(v) = m.get_mut(ip) {
                v.push(k);
            }
        }
    }
    m
}

/// `ctdb ip` on node `observer`: address -> pnn.
pub fn ctdb_ip(c: &Cluster, observer: usize) -> BTreeMap<String, i64> {
    let out = c.tool(observer, &["-X", "ip"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some((f.get(1)?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Every address on exactly one of `alive`, none on `without`, and `ctdb
/// ip` on `alive[0]` agreeing; returns the placement.
pub fn placed(c: &Cluster, alive: &[usize], without: &[usize]) -> Option<BTreeMap<String, usize>> {
    let h = hosts(c, alive);
    let mut out = BTreeMap::new();
    for (ip, on) in &h {
        if on.len() != 1 || without.contains(&on[0]) {
            return None;
        }
        out.insert(ip.clone(), on[0]);
    }
    let view = ctdb_ip(c, alive[0]);
    for (ip, k) in &out {
        if view.get(ip) != Some(&(*k as i64)) {
            return None;
        }
    }
    Some(out)
}

pub fn wait_placed(
    c: &Cluster,
    limit: Duration,
    what: &str,
    alive: &[usize],
    without: &[usize],
) -> (Duration, BTreeMap<String, usize>) {
    wait_placement(c, limit, what, alive, without, false)
}

/// [`wait_placed`], and every node of `alive` hosting some address (a
/// cluster whose nodes became healthy one after the other passes through
/// placements with everything on the first: those are not waited for).
pub fn wait_spread(
    c: &Cluster,
    limit: Duration,
    what: &str,
    alive: &[usize],
) -> (Duration, BTreeMap<String, usize>) {
    wait_placement(c, limit, what, alive, &[], true)
}

pub fn wait_placement(
    c: &Cluster,
    limit: Duration,
    what: &str,
    alive: &[usize],
    without: &[usize],
    spread: bool,
) -> (Duration, BTreeMap<String, usize>) {
    let start = Instant::now();
    let mut last = BTreeMap::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(limit, what, || {
            last = hosts(c, &[0, 1, 2]);
            placed(c, alive, without)
                .filter(|p| !spread || alive.iter().all(|k| p.values().any(|h| h == k)))
        })
    }));
    match r {
        Ok(p) => (start.elapsed(), p),
        Err(_) => {
            keep_logs(c);
            panic!(
                "{what}: not within {limit:?}; addresses on interfaces: {last:?}; ctdb ip on node {}: {:?}\nlogs:\n{}",
                alive[0],
                ctdb_ip(c, alive[0]),
                c.log_tails()
            )
        }
    }
}

/// Copies the nodes' whole logs to the temp directory (the cluster's own
/// directory goes with it).
pub fn keep_logs(c: &Cluster) {
    for k in 0..NODES {
        let to =
            std::env::temp_dir().join(format!("ip_failover-{}-node{k}.log", std::process::id()));
        let _ = std::fs::copy(c.log(k), &to);
        eprintln!("node {k}'s log kept in {}", to.display());
    }
}

/// Runs the reference tool on node `k`; fails with the logs.
pub fn tool(c: &Cluster, k: usize, args: &[&str]) {
    let out = c.tool(k, args);
    if !out.status.success() {
        keep_logs(c);
    }
    assert!(
        out.status.success(),
        "ctdb {} on node {k} failed ({}): {}{}\nlogs:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log_tails()
    );
}

/// The cluster of both tests: 3 nodes in namespaces, 6 public addresses,
/// `10.interface.script` and a monitor failing while `CTDB_BASE/fail` exists.
pub fn options(daemon: Daemon) -> ClusterOptions {
    require_reference();
    let script = std::fs::read_to_string("/etc/ctdb/events/legacy/10.interface.script")
        .expect("Debian's ctdb package: /etc/ctdb/events/legacy/10.interface.script");
    let functions = std::fs::read_to_string("/etc/ctdb/functions").expect("/etc/ctdb/functions");
    let addrs: String = public_ips()
        .iter()
        .map(|ip| format!("{ip}/24 eth0\n"))
        .collect();
    let mut opts = ClusterOptions::new(daemon.clone(), NODES)
        .in_namespaces()
        .tunable("KeepaliveInterval", KEEPALIVE_INTERVAL as u32)
        .tunable("KeepaliveLimit", KEEPALIVE_LIMIT as u32)
        .tunable("MonitorInterval", monitor_interval())
        .tunable("NoIPFailback", 0)
        .public_addresses(&addrs)
        .base_file("functions", &functions)
        .event_script("10.interface.script", &script)
        .event_script(
            "99.failflag.script",
            "#!/bin/sh\n[ \"$1\" = monitor ] && [ -e \"$CTDB_BASE/fail\" ] && { echo failing; exit 1; }\nexit 0\n",
        );
    // In test mode CTDB never checks which public addresses its host has
    // (`do_checkpublicip` is off), so every takeover run takes each
    // address again, and with 10.interface really adding them that fails
    // ("Address already assigned", then bans). Both daemons run as
    // installed, each node's files bind-mounted where CTDB looks.
    opts.env.push(("NO_TEST_MODE".into(), "1".into()));
    if matches!(daemon, Daemon::Ours(_)) {
        opts.env.push((
            "CTDB_EVENTD".into(),
            our_bin("ctdb-eventd").display().to_string(),
        ));
    }
    opts
}

pub fn monitor_interval() -> u32 {
    std::env::var("CTDB_IPF_MONITOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

pub use ctdb_tests::procs::Reaped;

/// When node `k`'s daemon logged the start of taking `ip` over (both
/// daemons log "Takeover of IP ADDR/BITS on interface IFACE"), in seconds
/// since the epoch; the last such line.
pub fn takeover_logged(c: &Cluster, k: usize, ip: &str) -> Option<f64> {
    let needle = format!("Takeover of IP {ip}/");
    let text = c.log_text(k);
    let line = text.lines().rev().find(|l| l.contains(&needle))?;
    let stamp = line.split_whitespace().next()?;
    let out = std::process::Command::new("date")
        .args(["-d", stamp, "+%s.%N"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Runs `f` for the reference and for ours (`CTDB_IPF_ONLY=ours|reference`
/// runs one side while debugging), both even when the first fails; the
/// caller prints both results, then [`rethrow`] fails the test for
/// either.
pub fn both<T>(
    f: impl Fn(Daemon) -> T,
) -> (
    Option<std::thread::Result<T>>,
    Option<std::thread::Result<T>>,
) {
    let only = std::env::var("CTDB_IPF_ONLY").unwrap_or_default();
    let run = |d: Daemon| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(d)));
    let r = (only != "ours").then(|| run(Daemon::Reference));
    let o = (only != "reference").then(|| run(Daemon::ours()));
    (r, o)
}

/// Fails the test with the first failed side's panic.
pub fn rethrow<T>(results: [(&str, Option<std::thread::Result<T>>); 2]) {
    for (who, r) in results {
        if let Some(Err(e)) = r {
            eprintln!("{who} failed");
            std::panic::resume_unwind(e);
        }
    }
}

/// Seconds with two decimals, or "-".
pub fn show(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
}
