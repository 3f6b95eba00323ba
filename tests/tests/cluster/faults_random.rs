//! A randomized fault schedule against a 3-node cluster in network
//! namespaces whose cluster lock is in a 3-member etcd cluster (one member
//! per node namespace, CTDB's `ctdb_etcd_lock` helper), with workloads on
//! every node and a checker, on the reference and on ours.
//!
//! Each round injects one fault ([`ctdb_tests::faults::Fault`]: partitions
//! 2+1 and 1+1+1, a one-way cut, SIGSTOP, kill -9 and restart, packet loss,
//! a slow link, the leader's link to the lock store cut) for 3-7 s,
//! removes it, and requires the cluster to heal by itself within
//! `HEAL_BOUND`. Meanwhile a client per node increments its own key in
//! persistent transactions (acknowledged commits counted), and another
//! its own key of a volatile database under fetch-lock (applied increments
//! counted). The checker then requires:
//! - persistent: every node holds the same value, and for every key
//!   acknowledged <= final value <= attempted (no acknowledged commit
//!   lost, none invented);
//! - volatile: final value <= attempted (nothing invented); and nothing
//!   lost but what CTDB allows: a node's key is touched by that node's
//!   client only, so its only up-to-date copy is on that node, and only
//!   when that node died may increments go; every increment made by a
//!   client started after the node's last death must be there (all of
//!   them when it never died). CTDB also drops the volatile records of a
//!   node frozen inactive (banned); the report says when a loss followed
//!   such a freeze, and ours is held to the stricter rule. A sampler reads
//!   the records from every node's file while the run goes, so a loss is
//!   reported with where and when the counter went back (and the logs
//!   are kept; `CTDB_FAULT_KEEP_LOGS=1` keeps them always);
//! - at no instant did two nodes hold the cluster lock (holds read from the
//!   daemons' timestamped log lines, ended at kills), except for the time
//!   `ctdb_etcd_lock` takes to tell a holder cut off from etcd that its
//!   key expired ([`ctdb_tests::faults::HELPER_NOTICE`]: by etcd the lock
//!   was never held twice, by the logs both held it; reported), and at no
//!   sample did two nodes each claim to be the leader;
//! - after every fault, the cluster was healthy again within `HEAL_BOUND`.
//!
//! Ours must pass every check. The reference does not keep every promise
//! here, so its run reports what it broke and fails only on invented
//! values: a node cut off from the others commits persistent
//! transactions on the nodes it still sees (itself), acknowledges, and the
//! recovery after the partition heals discards them; and with the etcd
//! lock, a leader that loses or drops its lock without releasing it (a
//! one-way cut, a 2+1 partition, a cut from etcd) leaves its key for the
//! TTL, and its nodes' retries every 5 s each leave a key the next one
//! fails on, so it may never elect a leader again (seen in the short run
//! and the long one: "Unable to take cluster lock - contention" every 5 s
//! for minutes). With the lock in a file (`CTDB_FAULT_LOCK=file`), a
//! restarted reference node aborted in `ctdb_control_db_attach` during its
//! startup recovery (twice in a row in one long run). A schedule the
//! reference does not heal from stops there; a daemon that died by itself
//! is started again first.
//!
//! The schedule comes from a seed printed at the start: a fixed one by
//! default (CI runs are repeatable), `CTDB_FAULT_SEED=N` replays N,
//! `CTDB_FAULT_SEED=random` draws one. `CTDB_FAULT_ROUNDS` sets the
//! number of faults; `CTDB_FAULT_SECS` instead runs faults until that many
//! seconds have passed (the long run in the README: the `long_run_*`
//! tests, ignored by default). A seed that found a bug gets a regression
//! test named after it that replays the faults that found it
//! (`seed_12345_*`).

use std::time::{Duration, Instant};

use ctdb_tests::etcd::{self, Etcd};
use ctdb_tests::faults::{self, Fault, HELPER_NOTICE, Injector, Report, Schedule};
use ctdb_tests::workload::{Mode, Workload};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

const PDB: &str = "faults.tdb";
const VDB: &str = "faultsv.tdb";
const NODES: usize = 3;
const HEAL_BOUND: Duration = Duration::from_secs(120);

/// The leader each node reports (`None` when it does not answer).
fn leaders(c: &Cluster) -> Vec<Option<usize>> {
    (0..NODES).map(|k| faults::leader_seen_by(c, k)).collect()
}

/// The tool's output for `args` on node `k`, asked again for up to a
/// minute while it fails (a recovery a late effect of the last fault
/// started, say: the tool's attach then times out); `None` (with the
/// recovery daemons' last lines printed) if it kept failing.
fn tool_retry(c: &Cluster, k: usize, args: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.tool(k, args);
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            println!(
                "ctdb {} on node {k} kept failing for 60s: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                faults::recoverd_tails(c, 40)
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A volatile record's value as node `k`'s tool reads it (fetch-lock).
fn volatile_value(c: &Cluster, k: usize, key: &str) -> Option<u64> {
    let out = tool_retry(c, k, &["readkey", VDB, key])?;
    Some(
        out.split_once("ptr:[")
            .and_then(|(_, r)| r.rsplit_once(']'))
            .map(|(v, _)| v.trim().parse().unwrap_or(0))
            .unwrap_or(0),
    )
}

/// How long after a node's "Freeze all" its database may still be taking
/// its locks (writes acknowledged then are lost with the node's records).
const FREEZE_MARGIN: Duration = Duration::from_secs(1);

/// How many of `l`'s increments were acknowledged after `t`.
fn acks_after(l: &ctdb_tests::workload::ClientLoad, t: std::time::SystemTime) -> u64 {
    let ago = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    let Some(at) = Instant::now().checked_sub(ago) else {
        return l.acked();
    };
    l.acks().iter().filter(|&&a| a > at).count() as u64
}

/// Waits for a healthy cluster; the time it took, or `None` past `limit`.
fn heal_time(c: &Cluster, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.wait_healthy(limit)));
    r.ok().map(|()| t0.elapsed())
}

/// Runs one schedule. `strict`: every check must hold (ours); otherwise
/// (the reference) broken promises are reported, and only invented values
/// fail the run.
fn run(daemon: Daemon, strict: bool, default_rounds: usize) -> Report {
    run_plan(daemon, strict, default_rounds, None)
}

/// [`run`], or with `replay` = (seed, faults) the given faults in order
/// instead of the seed's schedule (a regression test replays the fault
/// of a seeded run that found a bug, without the rounds before it).
fn run_plan(
    daemon: Daemon,
    strict: bool,
    default_rounds: usize,
    replay: Option<(u64, Vec<(Fault, Duration)>)>,
) -> Report {
    require_reference();
    let seed = match &replay {
        Some((seed, _)) => *seed,
        None => faults::seed_from_env(12345),
    };
    let secs: Option<u64> = std::env::var("CTDB_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let rounds: usize = std::env::var("CTDB_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_rounds);
    match secs {
        Some(s) => println!("fault schedule seed {seed} (for {s}s) on {daemon:?}"),
        None => println!("fault schedule seed {seed} ({rounds} rounds) on {daemon:?}"),
    }
    if let Some((_, faults)) = &replay {
        println!("replaying faults of seed {seed}: {faults:?}");
    }
    // CTDB_FAULT_LOCK=file: the lock in a shared file (fcntl) instead;
    // the schedule is the same, its lock-store cuts then cut nothing.
    let file_lock = std::env::var("CTDB_FAULT_LOCK").as_deref() == Ok("file");
    let mut schedule = match replay {
        Some((_, faults)) => Schedule::scripted(faults),
        None => Schedule::new(seed, NODES, true),
    };
    let mut etcd = (!file_lock).then(Etcd::new);
    let mut opts = ClusterOptions::new(daemon.clone(), NODES)
        .in_namespaces()
        .tunable("KeepaliveInterval", 1)
        .tunable("KeepaliveLimit", 3)
        // A node that cannot take the lock (etcd without quorum: 1+1+1)
        // bans itself for this long (300 s by default): the heal bound
        // includes one ban.
        .tunable("RecoveryBanPeriod", 20);
    // The lock holds are read from INFO lines.
    opts.log_level = "INFO".into();
    if let Some(etcd) = &etcd {
        opts = opts.cluster_lock(etcd.lock_setting());
        opts.env.push(etcd::system_path());
    }
    println!(
        "cluster lock: {}",
        if file_lock {
            "shared file"
        } else {
            "3-member etcd"
        }
    );
    let c = Cluster::launch(opts);
    if let Some(etcd) = &mut etcd {
        etcd.start(c.net(), NODES);
    }
    c.wait_healthy(HEAL_BOUND);
    c.tool_ok(0, &["attach", PDB, "persistent"]);
    c.tool_ok(0, &["attach", VDB]);

    let sockets = || (0..NODES).map(|k| c.socket(k)).collect::<Vec<_>>();
    let mut pload = Workload::start_mode(sockets(), Mode::Persistent, PDB, "node");
    let mut vload = Workload::start_mode(sockets(), Mode::Volatile, VDB, "vnode");
    let sampler = faults::RecordSampler::start(
        &c,
        VDB,
        (0..NODES).map(|k| format!("vnode{k}")).collect(),
        Duration::from_millis(100),
    );

    let mut report = Report::default();
    let mut inj = Injector::new(&c, etcd.as_ref());
    let started = Instant::now();
    let mut round = 0;
    loop {
        let more = match secs {
            Some(s) => started.elapsed() < Duration::from_secs(s),
            None => round < rounds,
        };
        if !more {
            break;
        }
        let (f, hold) = schedule.next_fault();
        let f = inj.apply(f);
        println!(
            "round {round} at {:.0}s: {f:?} for {hold:?}",
            started.elapsed().as_secs_f64()
        );
        *report.kinds.entry(f.kind()).or_default() += 1;
        let until = Instant::now() + hold;
        while Instant::now() < until {
            let l = leaders(&c);
            let selfish: Vec<usize> = (0..NODES).filter(|&k| l[k] == Some(k)).collect();
            report.leader_samples += 1;
            if selfish.len() > 1 {
                report.two_leader_samples += 1;
                println!("seed {seed} round {round} ({f:?}): nodes {selfish:?} each claim to lead");
                assert!(
                    !strict,
                    "seed {seed} round {round} ({f:?}): nodes {selfish:?} each claim to lead\n{}",
                    faults::recoverd_tails(&c, 40)
                );
            }
        }
        inj.remove(f);
        match heal_time(&c, HEAL_BOUND) {
            Some(t) => {
                println!("  healed in {:.1}s", t.as_secs_f64());
                report.heal_max = report.heal_max.max(t);
            }
            None => {
                report.heal_failures += 1;
                println!(
                    "seed {seed} round {round} ({f:?}): not healthy {HEAL_BOUND:?} after the fault was removed\n{}",
                    faults::recoverd_tails(&c, 40)
                );
                if strict {
                    // The tails above rarely reach back to the fault: the
                    // whole logs, for the report.
                    let dir = faults::keep_logs(&c, seed);
                    println!("whole logs kept in {}", dir.display());
                }
                assert!(!strict, "seed {seed} round {round} ({f:?}): did not heal");
                // A daemon that died by itself (the reference aborted
                // once in a restarted node's db attach) is started again,
                // and the schedule goes on if that heals the cluster;
                // otherwise the rest of it would test nothing more.
                let crashed = inj.restart_crashed();
                if crashed.is_empty() {
                    break;
                }
                println!("  daemons of nodes {crashed:?} had died by themselves: started again");
                match heal_time(&c, HEAL_BOUND) {
                    Some(t) => println!("  healed {:.1}s after that", t.as_secs_f64()),
                    None => break,
                }
            }
        }
        round += 1;
    }
    let elapsed = started.elapsed();

    // Let the workloads work a little on the healed cluster, then stop
    // them and compare.
    // A fault can act after it was removed (a leader cut from etcd loses
    // its lock only when its helper gives up): the cluster must also work
    // and be healthy at the end.
    let mut healed = report.heal_failures == 0;
    if healed {
        let (p, v) = (pload.total_acked(), vload.total_acked());
        // The reference's etcd lock contention does not end by itself:
        // it gets less time, to keep the short suite short.
        let deadline = Instant::now() + Duration::from_secs(if strict { 90 } else { 30 });
        while !(pload.total_acked() > p && vload.total_acked() > v) {
            if Instant::now() > deadline {
                println!(
                    "seed {seed}: no work done after the last fault\n{}",
                    faults::recoverd_tails(&c, 40)
                );
                assert!(!strict, "seed {seed}: no work after the last fault");
                report.heal_failures += 1;
                healed = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    pload.stop();
    vload.stop();
    let holds = faults::lock_holds(&c, inj.kills());
    let both = faults::overlaps(&holds);
    report.lock_holds = holds.len();
    report.lock_overlaps = both.len();
    let mut lock_failures = Vec::new();
    for (a, b) in &both {
        let msg = format!("seed {seed}: two nodes held the cluster lock at once: {a:?} and {b:?}");
        println!("{msg}");
        // ctdb_etcd_lock tells a holder cut off from etcd that its key
        // expired only when a renewal fails, which may be just after
        // another node took the lock: that much is the helper's, not the
        // daemon's (faults::HELPER_NOTICE), and reported. Anything else
        // fails ours: a daemon that let go late, or held on past its
        // helper's word.
        if faults::helper_late(a, b) {
            println!("  (the earlier holder's helper told it late: within {HELPER_NOTICE:?})");
        } else {
            lock_failures.push(msg);
        }
    }
    assert!(
        report.lock_holds > 0,
        "seed {seed}: no cluster lock hold in the logs (INFO lines missing?)"
    );
    if healed && heal_time(&c, HEAL_BOUND).is_none() {
        println!(
            "seed {seed}: not healthy at the end\n{}",
            faults::recoverd_tails(&c, 40)
        );
        if strict {
            let dir = faults::keep_logs(&c, seed);
            println!("whole logs kept in {}", dir.display());
        }
        assert!(!strict, "seed {seed}: not healthy at the end");
        report.heal_failures += 1;
        healed = false;
    }
    if !healed {
        report.persistent_acked = (0..NODES).map(|k| pload.acked(k)).sum();
        report.volatile_acked = (0..NODES).map(|k| vload.acked(k)).sum();
        report.print(&format!("{daemon:?}"), seed, elapsed);
        return report;
    }

    for k in 0..NODES {
        let l = pload.load(k);
        let (acked, attempted) = (l.acked(), l.attempted());
        let values: Option<Vec<u64>> = (0..NODES)
            .map(|n| {
                let out = tool_retry(&c, n, &["pfetch", PDB, &format!("node{k}")])?;
                Some(out.trim().parse().unwrap_or(0))
            })
            .collect();
        let Some(values) = values else {
            report.unreadable += 1;
            assert!(!strict, "seed {seed}: node{k} could not be read");
            continue;
        };
        println!(
            "persistent node{k}: acknowledged {acked}, attempted {attempted}, values {values:?}"
        );
        report.persistent_acked += acked;
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
            report.persistent_lost += acked - values[0];
            println!(
                "seed {seed}: {daemon:?} lost {} acknowledged commits of node{k}",
                acked - values[0]
            );
        }
        assert!(
            !strict || acked <= values[0],
            "seed {seed}: node{k} = {} but {acked} commits were acknowledged",
            values[0]
        );
    }
    let mut volatile_failures = Vec::new();
    for k in 0..NODES {
        let l = vload.load(k);
        let (acked, attempted) = (l.acked(), l.attempted());
        let key = format!("vnode{k}");
        let Some(value) = volatile_value(&c, (k + 1) % NODES, &key) else {
            report.unreadable += 1;
            assert!(!strict, "seed {seed}: {key} could not be read");
            continue;
        };
        let since_kill = match inj.last_kill(k) {
            Some(t) => l.acked_by_clients_started_after(t),
            None => acked,
        };
        // A node frozen inactive (banned) loses its volatile records as
        // a dead one does; increments acknowledged well after the freeze
        // (the database stays frozen until the next recovery) are kept.
        let since_freeze = faults::inactive_freezes(&c, k)
            .into_iter()
            .max()
            .map(|t| acks_after(l, t + FREEZE_MARGIN));
        // Ours keeps every increment made since the key's node last died.
        // CTDB also drops the volatile records of a node frozen inactive
        // (banned), which the report says; ours is held to the stricter
        // rule (the bans seed 12345 caused were a bug: a node took its own
        // stale leader broadcast for a leader's and banned itself).
        let must_keep = since_kill;
        let ctdb_keeps = since_freeze.map_or(since_kill, |n| n.min(since_kill));
        println!(
            "volatile {key}: applied {acked} (since node {k} last died: {since_kill}, last frozen inactive: {}), attempted {attempted}, value {value}",
            since_freeze.map_or("never".to_owned(), |n| n.to_string())
        );
        report.volatile_acked += acked;
        report.volatile_lost += acked.saturating_sub(value);
        assert!(
            acked > 0,
            "seed {seed}: node {k}'s volatile client never got a lock"
        );
        assert!(
            value <= attempted,
            "seed {seed}: {key} = {value} but only {attempted} increments were attempted"
        );
        if value < must_keep {
            report.volatile_lost_kept += must_keep - value;
            let why = if value < ctdb_keeps {
                "CTDB keeps them"
            } else {
                "its node was frozen inactive (banned) meanwhile, which drops them in CTDB too"
            };
            let msg = format!(
                "seed {seed}: {daemon:?} lost volatile increments of {key} made since node {k} last died ({value} < {must_keep}; {why})"
            );
            println!("{msg}");
            volatile_failures.push(msg);
        }
    }
    let samples = sampler.finish();
    if report.volatile_lost_kept > 0
        || report.lock_overlaps > 0
        || std::env::var_os("CTDB_FAULT_KEEP_LOGS").is_some()
    {
        for (key, s) in &samples {
            faults::print_rollbacks(key, s);
        }
        let dir = faults::keep_logs(&c, seed);
        let text: String = samples
            .iter()
            .flat_map(|(k, s)| s.iter().map(move |x| format!("{k} {x:?}\n")))
            .collect();
        let _ = std::fs::write(dir.join("samples.txt"), text);
        println!("logs and record samples kept in {}", dir.display());
    }
    report.print(&format!("{daemon:?}"), seed, elapsed);
    assert!(
        !strict || lock_failures.is_empty(),
        "{}\n{}",
        lock_failures.join("\n"),
        faults::recoverd_tails(&c, 40)
    );
    assert!(
        !strict || volatile_failures.is_empty(),
        "{}",
        volatile_failures.join("\n")
    );
    drop(inj);
    c.stop();
    report
}

#[test]
fn random_faults_reference() {
    let r = run(Daemon::Reference, false, 6);
    assert!(r.kinds.values().sum::<u32>() > 0);
}

#[test]
fn random_faults_ours() {
    let r = run(Daemon::ours(), true, 8);
    assert_eq!(
        (r.persistent_lost, r.heal_failures, r.unreadable),
        (0, 0, 0)
    );
}

/// Seed 12345 found (round 7, the 1+1+1 partition, in 2 of 4 runs): the
/// leader, whose solo recovery failed when the partition cut it from etcd,
/// lost the lock, then read its own leader broadcast from before, took
/// itself for the leader again without the lock, and banned itself; the
/// ban froze its databases and discarded their volatile records, among
/// them the only up-to-date copy of its own key (7000-9000 increments
/// lost). The 1+1+1 partition of that round, twice, on ours.
#[test]
fn seed_12345_split_all_keeps_the_leaders_volatile_records() {
    let hold = Duration::from_millis(4095);
    let r = run_plan(
        Daemon::ours(),
        true,
        2,
        Some((12345, vec![(Fault::SplitAll, hold)])),
    );
    assert_eq!(
        (r.persistent_lost, r.volatile_lost_kept, r.heal_failures),
        (0, 0, 0)
    );
}

/// The long run (README): `CTDB_FAULT_SECS=1800 cargo test --release -p
/// ctdb-tests --test cluster -- --ignored --nocapture
/// faults_random::long_run_ours`.
#[test]
#[ignore = "long run: set CTDB_FAULT_SECS, see the README"]
fn long_run_ours() {
    run(Daemon::ours(), false, 8);
}

/// The same schedule on the reference.
#[test]
#[ignore = "long run: set CTDB_FAULT_SECS, see the README"]
fn long_run_reference() {
    run(Daemon::Reference, false, 8);
}
