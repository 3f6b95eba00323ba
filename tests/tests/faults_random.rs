//! A randomized fault schedule against a 3-node cluster in network
//! namespaces, with a persistent-transaction workload on every node and a
//! checker, on the reference and on ours.
//!
//! Each round injects one fault for a few seconds (a node cut off both
//! ways, a one-way cut, a paused node, a killed node that is restarted),
//! removes it, and requires the cluster to heal by itself. Meanwhile a
//! client per node increments its own key in persistent transactions,
//! counting the commits that were acknowledged and the ones attempted.
//! The checker then requires:
//! - every node holds the same value (persistent databases are replicas);
//! - at no sample did two nodes each claim to be the leader;
//! - on ours, no acknowledged commit lost and none invented: for every
//!   key, acknowledged <= final value <= attempted. The reference does
//!   not keep this promise under partitions: a node cut off from the
//!   others commits on the nodes it still sees (itself), acknowledges,
//!   and the recovery after the partition heals discards those commits
//!   (seen here: dozens lost in a 5 s cut). Its run reports what it lost
//!   and checks only that nothing was invented.
//!
//! The schedule comes from a seed printed at the start: a fixed one by
//! default (CI runs are repeatable), `CTDB_FAULT_SEED=N` replays N,
//! `CTDB_FAULT_SEED=random` draws one; `CTDB_FAULT_ROUNDS` sets the length.

use std::time::{Duration, Instant};

use ctdb_tests::workload::Workload;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DB: &str = "faults.tdb";
const NODES: usize = 3;

/// xorshift64*: the schedule is a pure function of the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Isolate(usize),
    OneWay { to: usize, from: usize },
    Pause(usize),
    KillRestart(usize),
}

fn pick(r: &mut Rng) -> Fault {
    let a = r.below(NODES as u64) as usize;
    let b = (a + 1 + r.below(NODES as u64 - 1) as usize) % NODES;
    match r.below(4) {
        0 => Fault::Isolate(a),
        1 => Fault::OneWay { to: a, from: b },
        2 => Fault::Pause(a),
        _ => Fault::KillRestart(a),
    }
}

/// The leader each node reports (`None` when it does not answer).
fn leaders(c: &Cluster) -> Vec<Option<usize>> {
    (0..NODES)
        .map(|k| {
            let out = c.tool(k, &["-T", "3", "status"]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("Leader:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

fn faults(daemon: Daemon, strict: bool) {
    require_reference();
    // A fixed schedule by default, so a CI run is repeatable; set
    // CTDB_FAULT_SEED=random (or a number) to explore others.
    let seed = match std::env::var("CTDB_FAULT_SEED").ok().as_deref() {
        None => 12345,
        Some("random") => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
        Some(s) => s.parse().expect("CTDB_FAULT_SEED: a number or \"random\""),
    };
    let rounds: usize = std::env::var("CTDB_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("fault schedule seed {seed} ({rounds} rounds) on {daemon:?}");
    let mut rng = Rng(seed);
    let c = Cluster::start(
        ClusterOptions::new(daemon.clone(), NODES)
            .in_namespaces()
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3),
    );
    c.tool_ok(0, &["attach", DB, "persistent"]);

    // A client per node increments its own key (`node{k}`) through it.
    let mut load = Workload::start((0..NODES).map(|k| c.socket(k)).collect(), DB, "node");

    let heal_limit = Duration::from_secs(120);
    let mut claims = Vec::new();
    for round in 0..rounds {
        let f = pick(&mut rng);
        let hold = Duration::from_millis(3000 + rng.below(4000));
        println!("round {round}: {f:?} for {hold:?}");
        match f {
            Fault::Isolate(a) => {
                let rest: Vec<usize> = (0..NODES).filter(|&x| x != a).collect();
                c.net().partition(&[a], &rest);
            }
            Fault::OneWay { to, from } => c.net().drop_from(to, from),
            Fault::Pause(a) => {
                let pid = c.pid(a).expect("pid");
                kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            }
            Fault::KillRestart(a) => c.kill(a),
        }
        let until = Instant::now() + hold;
        while Instant::now() < until {
            let l = leaders(&c);
            let selfish: Vec<usize> = (0..NODES).filter(|&k| l[k] == Some(k)).collect();
            claims.push((round, l, selfish.clone()));
            assert!(
                selfish.len() <= 1,
                "seed {seed} round {round} ({f:?}): nodes {selfish:?} each claim to lead\n{}",
                c.log_tails()
            );
        }
        match f {
            Fault::Isolate(_) | Fault::OneWay { .. } => c.net().heal(),
            Fault::Pause(a) => {
                let pid = c.pid(a).expect("pid");
                kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
            }
            Fault::KillRestart(a) => c.restart_with(a, &daemon),
        }
        c.wait_healthy(heal_limit);
    }

    // Let the workload commit a little more on the healed cluster, then
    // stop it and compare.
    let before = load.total_acked();
    ctdb_tests::poll_until(
        Duration::from_secs(90),
        "a commit after the last fault",
        || (load.total_acked() > before).then_some(()),
    );
    load.stop();
    c.wait_healthy(heal_limit);
    for k in 0..NODES {
        let (acked, attempted) = (load.load(k).acked(), load.load(k).attempted());
        let values: Vec<u64> = (0..NODES)
            .map(|n| {
                let out = c.tool_ok(n, &["pfetch", DB, &format!("node{k}")]);
                out.trim().parse().unwrap_or(0)
            })
            .collect();
        println!("key node{k}: acknowledged {acked}, attempted {attempted}, values {values:?}");
        assert!(acked > 0, "seed {seed}: node {k}'s client never committed");
        assert!(
            values.iter().all(|&v| v == values[0]),
            "seed {seed}: node{k} differs between nodes: {values:?}"
        );
        assert!(
            values[0] <= attempted,
            "seed {seed}: node{k} = {} but only {attempted} commits were attempted",
            values[0]
        );
        if acked > values[0] {
            println!(
                "seed {seed}: {:?} lost {} acknowledged commits of node{k}",
                c.daemon(),
                acked - values[0]
            );
        }
        assert!(
            !strict || acked <= values[0],
            "seed {seed}: node{k} = {} but {acked} commits were acknowledged",
            values[0]
        );
    }
    println!("{} leader samples, never two leaders", claims.len());
}

#[test]
fn random_faults_reference() {
    faults(Daemon::Reference, false);
}

#[test]
fn random_faults_ours() {
    faults(Daemon::ours(), true);
}
