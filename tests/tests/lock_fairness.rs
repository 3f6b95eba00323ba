//! Record-lock fairness under contention (issue 14), against our daemon
//! and the reference with the same code: 3 nodes x 4 client processes
//! each, every process looping fetch-lock + increment + release on ONE
//! volatile record for `LOCK_FAIRNESS_SECS` (20 s by default); then
//! persistent transactions incrementing one key, with the g_lock taken
//! the way CTDB's own client library takes it and then by our client's
//! queue. Every process must complete at least 5% of the mean
//! per-process count, except with CTDB's g_lock, which serves whoever
//! looks first after a release and starves single processes on the
//! reference too: there every node must commit in every run, and over
//! all runs at least `NODE_SHARE` of the mean per node. The final value
//! must equal the sum of the acknowledged increments, and no node of ours
//! may log "High hopcount". The whole round runs `LOCK_FAIRNESS_RUNS`
//! times (2 by default; the starvation this guards against showed in 2
//! or 3 runs out of 4). `LOCK_FAIRNESS_MODES` (comma-separated, default
//! `fetch-lock,ptrans-ctdb,ptrans`) picks the phases, for experiments.
//!
//! On our daemon only, the latency checks: a request for a record that a
//! client on another node holds for 2 s completes within 100 ms of the
//! release; a freeze while a client holds a record lock for 3 s completes
//! within 100 ms of the release, and the daemon burns less than 50 ms of
//! CPU meanwhile (it waits, it does not poll).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctdb_client::{Client, DbKind};
use ctdb_protocol::{ControlRequest, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};

const CLIENTS_PER_NODE: usize = 4;

/// With CTDB's g_lock, the least a node may commit over all runs, as a
/// fraction of the mean per node. Measured (10 s runs, summed over 2-3
/// runs): the reference 66-69% on a quiet and on a loaded machine, ours
/// 39-95% with record pins; before pins, ours gave one node 20 commits
/// against 383 and 1448 in a full-suite run.
const NODE_SHARE: f64 = 0.2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds each contention phase lasts.
fn secs() -> u64 {
    env_or("LOCK_FAIRNESS_SECS", 20)
}

/// How many times the whole round runs.
fn runs() -> u64 {
    env_or("LOCK_FAIRNESS_RUNS", 2)
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

impl Proc {
    fn start(c: &Cluster, node: usize, args: &[&str]) -> Proc {
        let mut child = Command::new(our_bin("ctdb-contend"))
            .arg(c.socket(node))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        Proc { child, stdin, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_owned()
    }

    fn expect(&mut self, what: &str) -> String {
        let l = self.line();
        assert!(
            l.starts_with(what),
            "client said {l:?}, expected {what:?} (exit: {:?})",
            self.child.try_wait()
        );
        l
    }

    fn go(&mut self) {
        let mut i = self.stdin.take().unwrap();
        i.write_all(b"go\n").unwrap();
    }

    /// The number after `word` in the next line.
    fn number(&mut self, word: &str) -> u128 {
        let l = self.expect(word);
        l[word.len()..].trim().parse().unwrap()
    }

    fn finish(mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "client failed: {st}");
    }
}

/// Runs `mode` from 4 processes per node at once, all starting together;
/// returns each process's acknowledged count.
fn contend(c: &Cluster, mode: &str, db: &str, key: &str) -> Vec<u64> {
    let secs = secs().to_string();
    let mut procs: Vec<Proc> = (0..3 * CLIENTS_PER_NODE)
        .map(|i| Proc::start(c, i % 3, &[mode, db, key, &secs]))
        .collect();
    for p in &mut procs {
        p.expect("ready");
    }
    for p in &mut procs {
        p.go();
    }
    procs
        .into_iter()
        .map(|mut p| {
            let n = p.number("count") as u64;
            p.finish();
            n
        })
        .collect()
}

/// Every process (or node) did at least 5% of the mean.
fn check_fair(counts: &[u64], what: &str) {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    eprintln!("{what}: counts {counts:?} (mean {mean:.0})");
    assert!(mean > 0.0, "{what}: nobody made progress");
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            n as f64 >= 0.05 * mean,
            "{what}: number {i} did {n}, below 5% of the mean {mean:.0}: {counts:?}"
        );
    }
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

fn fairness(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let name = match c.daemon() {
        Daemon::Reference => "reference",
        _ => "ours",
    };
    let (mut vol, mut pers) = (0u64, 0u64);
    // Commits per node with CTDB's g_lock, over all runs.
    let mut ctdb_nodes = [0u64; 3];
    let modes = std::env::var("LOCK_FAIRNESS_MODES")
        .unwrap_or_else(|_| "fetch-lock,ptrans-ctdb,ptrans".into());
    for run in 1..=runs() {
        if modes.contains("fetch-lock") {
            let counts = contend(&c, "fetch-lock", "fair_vol.tdb", "hot");
            check_fair(&counts, &format!("{name} run {run}: fetch-lock"));
            vol += counts.iter().sum::<u64>();
            assert_eq!(read_volatile(&c, "fair_vol.tdb", b"hot"), vol);
        }
        for mode in ["ptrans-ctdb", "ptrans"] {
            if !modes.split(',').any(|m| m == mode) {
                continue;
            }
            let counts = contend(&c, mode, "fair_pers.tdb", "hot");
            let what = format!("{name} run {run}: {mode}");
            if mode == "ptrans-ctdb" {
                // CTDB's client retries a taken g_lock every millisecond,
                // first come first served: its processes are not served
                // evenly on either daemon, so the issue asks for every
                // node (not every process) to get its share.
                eprintln!("{what}: per-process counts {counts:?}");
                let nodes: Vec<u64> = (0..3)
                    .map(|k| counts.iter().skip(k).step_by(3).sum())
                    .collect();
                // Per run, the share a node gets depends on which node's
                // look comes first after each release: even the reference
                // gave one node 4 of 134 commits in a run on a loaded
                // machine. Every node must get some in every run, and over
                // all runs its fair part (see NODE_SHARE).
                let mean = nodes.iter().sum::<u64>() as f64 / 3.0;
                eprintln!(
                    "{what} per node: {nodes:?} (lowest {:.0}% of the mean)",
                    100.0 * *nodes.iter().min().unwrap() as f64 / mean.max(1.0)
                );
                assert!(
                    nodes.iter().all(|&n| n > 0),
                    "{what}: a node made no commit at all: {nodes:?}"
                );
                for (k, n) in nodes.iter().enumerate() {
                    ctdb_nodes[k] += n;
                }
            } else {
                check_fair(&counts, &what);
            }
            eprintln!(
                "{what}: {:.1} commits/s",
                counts.iter().sum::<u64>() as f64 / secs() as f64
            );
            pers += counts.iter().sum::<u64>();
            for v in read_persistent(&c, "fair_pers.tdb", b"hot") {
                assert_eq!(
                    v, pers,
                    "{mode}: a node's value differs from the increments"
                );
            }
        }
    }
    if ctdb_nodes.iter().any(|&n| n > 0) {
        let mean = ctdb_nodes.iter().sum::<u64>() as f64 / 3.0;
        eprintln!(
            "{name}: ptrans-ctdb over {} runs, per node: {ctdb_nodes:?} (lowest {:.0}% of the mean; {:.0}% required)",
            runs(),
            100.0 * *ctdb_nodes.iter().min().unwrap() as f64 / mean,
            100.0 * NODE_SHARE
        );
        for (k, &n) in ctdb_nodes.iter().enumerate() {
            assert!(
                n as f64 >= NODE_SHARE * mean,
                "{name}: with CTDB's g_lock node {k} made {n} commits over all runs, below {:.0}% of the mean {mean:.0}: {ctdb_nodes:?}",
                100.0 * NODE_SHARE
            );
        }
    }
    for k in 0..3 {
        let log = c.log_text(k);
        let n = log.matches("High hopcount").count();
        eprintln!("{name}: node {k} logged {n} High hopcount warnings");
        // The reference logs a few now and then (6 in one full-suite run);
        // ours must log none.
        if name == "ours" {
            assert_eq!(n, 0, "node {k} logged {n} High hopcount warnings");
        }
    }
}

#[test]
fn fairness_ours() {
    fairness(Daemon::ours());
}

#[test]
fn fairness_reference() {
    fairness(Daemon::Reference);
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
        let mut p = Proc::start(&c, k, &["fetch-once", "latency.tdb", "warm"]);
        p.expect("ready");
        p.go();
        p.expect("done");
        p.finish();
    }
    let mut holder = Proc::start(&c, 1, &["hold", "latency.tdb", "hot", "2000"]);
    holder.expect("locked");
    let mut asker = Proc::start(&c, 0, &["fetch-once", "latency.tdb", "hot"]);
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
    let mut holder = Proc::start(&c, 1, &["hold", "latency.tdb", "frozen", "3000"]);
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
