//! Record-lock fairness under contention (issue 14), against our daemon
//! and the reference with the same code: 3 nodes x 4 client processes
//! each, every process looping fetch-lock + increment + release on ONE
//! volatile record for `LOCK_FAIRNESS_SECS` (12 s by default); then
//! persistent transactions incrementing one key, with the g_lock taken
//! the way CTDB's own client library takes it (`ptrans-ctdb`) and then by
//! our client's queue (`ptrans`). In every run and every phase, every one
//! of the 12 processes must complete at least 5% of the mean per-process
//! count of that run (each run's counts are printed, per process and per
//! node, before anything is asserted). After each phase the record's
//! value (the persistent key's on every node) must equal the sum of the
//! acknowledged increments; no node of ours may log "High hopcount". The
//! whole round runs `LOCK_FAIRNESS_RUNS` times (3 by default; the
//! starvation this guards against showed in 2 or 3 runs out of 4).
//! `LOCK_FAIRNESS_MODES` (comma-separated, default
//! `fetch-lock,ptrans-ctdb,ptrans`) picks the phases, for experiments.
//!
//! The reference is held to the same, except with CTDB's g_lock, where it
//! starves processes (and nodes) on a loaded machine: there its numbers
//! are printed (see [`fairness_reference`]).
//!
//! On our daemon only, the latency checks: a request for a record that a
//! client on another node holds for 2 s completes within 100 ms of the
//! release; a freeze while a client holds a record lock for 3 s completes
//! within 100 ms of the release, and the daemon burns less than 50 ms of
//! CPU meanwhile (it waits, it does not poll).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctdb_client::{Client, DbKind};
use ctdb_protocol::{ControlRequest, ReqControl};
use ctdb_tests::contend::Contender;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

const CLIENTS_PER_NODE: usize = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds each contention phase lasts.
fn secs() -> u64 {
    env_or("LOCK_FAIRNESS_SECS", 12)
}

/// How many times the whole round runs.
fn runs() -> u64 {
    env_or("LOCK_FAIRNESS_RUNS", 3)
}

/// Runs `mode` from 4 processes per node at once, all starting together;
/// returns each process's acknowledged count.
fn contend(c: &Cluster, mode: &str, db: &str, key: &str) -> Vec<u64> {
    let secs = secs().to_string();
    let mut procs: Vec<Contender> = (0..3 * CLIENTS_PER_NODE)
        .map(|i| Contender::start(c, i % 3, &[mode, db, key, &secs]))
        .collect();
    for p in &mut procs {
        p.expect("ready");
    }
    for p in &mut procs {
        p.go();
    }
    procs.into_iter().map(Contender::count).collect()
}

/// The processes of one phase of one run that did less than 5% of the
/// mean per-process count (as "process i on node k: n"); prints the
/// counts, per process and per node.
fn short_of_share(counts: &[u64], what: &str) -> Vec<String> {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    let nodes: Vec<u64> = (0..3)
        .map(|k| counts.iter().skip(k).step_by(3).sum())
        .collect();
    let lowest = *counts.iter().min().unwrap_or(&0) as f64;
    eprintln!(
        "{what}: per process {counts:?} (mean {mean:.1}, lowest {:.0}% of it), per node {nodes:?}",
        100.0 * lowest / mean.max(1e-9)
    );
    if mean == 0.0 {
        return vec![format!("{what}: nobody made progress")];
    }
    counts
        .iter()
        .enumerate()
        .filter(|&(_, &n)| (n as f64) < 0.05 * mean)
        .map(|(i, &n)| {
            format!(
                "{what}: process {i} (node {}) did {n}, below 5% of the mean {mean:.1}: {counts:?}",
                i % 3
            )
        })
        .collect()
}

fn value(v: &[u8]) -> u64 {
    v.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn read_volatile(c: &Cluster, db: &str, key: &[u8]) -> u64 {
    rt().block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        let d = cl.attach(db, DbKind::Volatile, 0).await.unwrap();
        value(&d.fetch(key).await.unwrap().data)
    })
}

fn read_persistent(c: &Cluster, db: &str, key: &[u8]) -> Vec<u64> {
    rt().block_on(async {
        let mut v = Vec::new();
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(db, DbKind::Persistent, 0).await.unwrap();
            v.push(d.fetch_local(key).unwrap().map_or(0, |(_, d)| value(&d)));
        }
        v
    })
}

/// Runs every phase `runs()` times on `daemon`; returns, by phase, the
/// processes that fell short of 5% of the mean in some run (every run's
/// counts are printed first). The final values are asserted on either
/// daemon, the absence of "High hopcount" lines on ours.
fn fairness(daemon: Daemon) -> Vec<(&'static str, String)> {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let name = match c.daemon() {
        Daemon::Reference => "reference",
        _ => "ours",
    };
    let (mut vol, mut pers) = (0u64, 0u64);
    let mut short = Vec::new();
    let modes = std::env::var("LOCK_FAIRNESS_MODES")
        .unwrap_or_else(|_| "fetch-lock,ptrans-ctdb,ptrans".into());
    for run in 1..=runs() {
        if modes.split(',').any(|m| m == "fetch-lock") {
            let counts = contend(&c, "fetch-lock", "fair_vol.tdb", "hot");
            short.extend(
                short_of_share(&counts, &format!("{name} run {run}: fetch-lock"))
                    .into_iter()
                    .map(|m| ("fetch-lock", m)),
            );
            vol += counts.iter().sum::<u64>();
            assert_eq!(
                read_volatile(&c, "fair_vol.tdb", b"hot"),
                vol,
                "{name}: the record's value differs from the acknowledged increments"
            );
        }
        for mode in ["ptrans-ctdb", "ptrans"] {
            if !modes.split(',').any(|m| m == mode) {
                continue;
            }
            let counts = contend(&c, mode, "fair_pers.tdb", "hot");
            let what = format!("{name} run {run}: {mode}");
            short.extend(
                short_of_share(&counts, &what)
                    .into_iter()
                    .map(|m| (mode, m)),
            );
            eprintln!(
                "{what}: {:.1} commits/s",
                counts.iter().sum::<u64>() as f64 / secs() as f64
            );
            pers += counts.iter().sum::<u64>();
            for (k, v) in read_persistent(&c, "fair_pers.tdb", b"hot")
                .into_iter()
                .enumerate()
            {
                assert_eq!(
                    v, pers,
                    "{name} {mode}: node {k}'s value differs from the acknowledged increments"
                );
            }
        }
    }
    for k in 0..3 {
        let n = c.log_text(k).matches("High hopcount").count();
        eprintln!("{name}: node {k} logged {n} High hopcount warnings");
        // The reference logs a few now and then (6 in one full-suite
        // run): reported; ours must log none.
        if name == "ours" {
            assert_eq!(n, 0, "{name}: node {k} logged {n} High hopcount warnings");
        }
    }
    for (_, s) in &short {
        eprintln!("SHORT OF SHARE: {s}");
    }
    short
}

#[test]
fn fairness_ours() {
    let short = fairness(Daemon::ours());
    assert!(
        short.is_empty(),
        "processes short of 5% of the mean: {short:#?}"
    );
}

/// The reference passes the check with fetch-lock and with our client's
/// g_lock queue. With CTDB's own g_lock algorithm it does not reliably
/// on a loaded machine: with the first emulation of CTDB's client (which
/// let go of the lock record before its checks) it failed 6 of 11 runs,
/// 4 of 5 side by side with ours (its lowest process 1 commit against a
/// mean of 24-27; ours passed all 5 at 26-48%); with the faithful one
/// (the record kept locked across the checks, as CTDB's client does) it
/// passed 6 of 6 but at the edge, one node making 4 commits in 20 s
/// (1 per process, 8% of the mean) while ours had 42-67%. Its numbers
/// are printed, not asserted.
#[test]
fn fairness_reference() {
    let short: Vec<_> = fairness(Daemon::Reference)
        .into_iter()
        .filter(|(mode, _)| *mode != "ptrans-ctdb")
        .collect();
    assert!(
        short.is_empty(),
        "processes short of 5% of the mean: {short:#?}"
    );
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// User + system CPU time of process `pid`.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after ")".
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// A client on node 1 holds the record's lock for 2 s while a client on
/// node 0 asks for the record: it gets it within 100 ms of the release.
/// Then a freeze of the database while a client holds a lock for 3 s
/// completes within 100 ms of the release, and the daemon uses less than
/// 50 ms of CPU meanwhile.
#[test]
fn lock_waits_end_at_the_release_ours() {
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3));
    // Attach everywhere first.
    for k in 0..3 {
        let mut p = Contender::start(&c, k, &["fetch-once", "latency.tdb", "warm"]);
        p.expect("ready");
        p.go();
        p.expect("done");
        p.finish();
    }
    let mut holder = Contender::start(&c, 1, &["hold", "latency.tdb", "hot", "2000"]);
    holder.expect("locked");
    let mut asker = Contender::start(&c, 0, &["fetch-once", "latency.tdb", "hot"]);
    asker.expect("ready");
    asker.go();
    let released = holder.number("released");
    let done = asker.number("done");
    holder.finish();
    asker.finish();
    eprintln!(
        "migration completed {} us after the release",
        done as i128 - released as i128
    );
    assert!(done >= released, "the record moved while the lock was held");
    assert!(
        done - released < 100_000,
        "the request completed {} ms after the release",
        (done - released) / 1000
    );

    // The freeze.
    let pid = c.pid(1).unwrap();
    let mut holder = Contender::start(&c, 1, &["hold", "latency.tdb", "frozen", "3000"]);
    holder.expect("locked");
    let id = ctdb_tests::db_id("latency.tdb");
    let (cpu, frozen_at) = rt().block_on(async {
        let cl = Client::connect(c.socket(1))
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(60));
        let cpu0 = cpu_time(pid);
        let t0 = Instant::now();
        let r = cl
            .control_raw(1, ReqControl::new(ControlRequest::DbFreeze(id)))
            .await
            .unwrap();
        let frozen_at = now_us();
        let cpu = cpu_time(pid) - cpu0;
        assert_eq!(r.status, 0, "freeze failed: {:?}", r.errmsg);
        assert!(
            t0.elapsed() >= Duration::from_secs(1),
            "froze under a held lock"
        );
        cl.control(1, ControlRequest::DbThaw(id)).await.unwrap();
        (cpu, frozen_at)
    });
    let released = holder.number("released");
    holder.finish();
    eprintln!(
        "freeze completed {} us after the release; daemon CPU while waiting: {cpu:?}",
        frozen_at as i128 - released as i128
    );
    assert!(frozen_at >= released);
    assert!(
        frozen_at - released < 100_000,
        "the freeze completed {} ms after the release",
        (frozen_at - released) / 1000
    );
    assert!(
        cpu < Duration::from_millis(50),
        "the daemon used {cpu:?} of CPU while the freeze waited"
    );
}
