//! Rolling upgrade from CTDB 4.17 to ctdb-rs and back, one node at a time,
//! with a client workload running on every node.
//!
//! A 3-node cluster of the reference daemon gets volatile records (one
//! written through each node) and persistent records, and a client per
//! node increments its own key in persistent transactions without pause
//! (`ctdb-increment persistent-loop`, restarted whenever it exits). Then
//! node 0, 1, 2 in turn is stopped as an admin would (`ctdb shutdown`) and
//! started again with our daemon (and our recovery and cluster lock
//! helpers) on the same directories; once all three run ours, they go back to the reference
//! the same way. Between steps the cluster must be healthy on every node,
//! and the node must run the daemon the step put there.
//!
//! What is checked:
//! - the workload never stalls for more than 10 s: per node, the longest
//!   time between two acknowledged commits, not counting, for the node
//!   being replaced, the time from its stop until the cluster is healthy
//!   with it again (its daemon is away; its client reconnects);
//! - persistent data: every node holds the same value for every key, the
//!   records written before are unchanged, and for each workload key
//!   acknowledged <= final <= attempted;
//! - volatile data: what CTDB promises. A volatile database is a cache: a
//!   daemon that starts wipes its own copy, and a recovery gathers the
//!   records of every active node (newest per key) and gives them to every
//!   active node. A record is therefore lost only once every node that
//!   held it has restarted; a rolling upgrade keeps two nodes up at every
//!   moment, so every record written before stays readable, from every
//!   node, the restarted one included (it gets the record from a node that
//!   stayed up). The restarted node's own file starts empty: checked right
//!   after each restart, before any recovery could fill it, would need
//!   timing, so that part is not asserted;
//! - after each step the leader holds the cluster lock through its own
//!   kind of helper (CTDB's or ours, which share the lock file);
//! - the cluster ends healthy, with one generation on all nodes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctdb_tests::workload::Workload;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const NODES: usize = 3;
const PDB: &str = "upgrade_p.tdb";
const VDB: &str = "upgrade_v.tdb";
const MAX_STALL: Duration = Duration::from_secs(10);
const HEAL: Duration = Duration::from_secs(120);

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Processes started with `-P <pid>` (helpers watching their daemon, the
/// reference's event daemon among them).
fn watching(pid: i32) -> usize {
    let needle = format!("\0-P\0{pid}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

/// Processes holding a file under `dir` open, with their command lines.
fn holders(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let files: Vec<PathBuf> = fds
            .filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
            .filter(|p| p.starts_with(dir))
            .collect();
        if !files.is_empty() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            found.push(format!("pid {pid} ({}): {files:?}", cmd.trim()));
        }
    }
    found
}

/// Polls `f` until it is true or `limit` has passed; whether it became true.
fn poll_within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops node `k` as an admin would: `ctdb shutdown`, then waits for the
/// daemon and its helpers to be gone.
fn shutdown(c: &Cluster, k: usize) {
    let pid = c.pid(k).expect("node's pid");
    let out = c.tool(k, &["shutdown"]);
    assert!(
        out.status.success(),
        "ctdb shutdown on node {k}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll_until(Duration::from_secs(60), "the daemon to exit", || {
        (!alive(pid) && watching(pid) == 0).then_some(())
    });
    // Nothing may keep its volatile databases open: the next daemon wipes
    // them only when it is their first user (CTDB's TDB_CLEAR_IF_FIRST)
    // and aborts if one is not empty.
    let volatile = c.base(k).join("db/volatile");
    let mut held = Vec::new();
    let gone = poll_within(Duration::from_secs(20), || {
        held = holders(&volatile);
        held.is_empty()
    });
    assert!(
        gone,
        "node {k} stopped, but these processes still hold files in {}: {held:#?}",
        volatile.display()
    );
    // Whatever a daemon leaves behind, the next one must start.
    let _ = std::fs::remove_file(c.base(k).join("run/ctdbd.pid"));
    let _ = std::fs::remove_file(c.socket(k));
}

/// Every node sees all three OK, NORMAL, and the same generation.
fn healthy_everywhere(c: &Cluster) {
    let mut last = String::new();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(HEAL, "every node to see a healthy cluster", || {
            let mut gens = Vec::new();
            for k in 0..NODES {
                let out = c.tool(k, &["status"]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                let n_ok = last
                    .lines()
                    .filter(|l| l.starts_with("pnn:") && l.contains(" OK"))
                    .count();
                if n_ok != NODES || !last.contains("Recovery mode:NORMAL") {
                    return None;
                }
                gens.push(
                    last.lines()
                        .find_map(|l| l.strip_prefix("Generation:"))
                        .map(str::to_owned),
                );
            }
            gens.iter().all(|g| *g == gens[0]).then_some(())
        })
    }));
    if ok.is_err() {
        panic!(
            "cluster not healthy; last status:\n{last}\n{}\nwhole logs kept in {}",
            c.log_tails(),
            keep_logs(c).display()
        );
    }
}

/// What the cluster holds while the clients stall: the lock records, each
/// node's view of the databases, the clients' processes, and the log lines
/// of every node that are not routine.
fn snapshot(c: &Cluster, what: &str) -> String {
    let mut s = format!("=== clients stalled after {what}: snapshot ===\n");
    for k in 0..NODES {
        for args in [
            &["catdb", "g_lock.tdb"][..],
            &["getdbmap"][..],
            &["status"][..],
        ] {
            let out = c.tool(k, args);
            s.push_str(&format!(
                "--- node {k}: ctdb {} ---\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,stat,wchan:32,etimes,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    s.push_str("--- client processes ---\n");
    for l in ps.lines().filter(|l| l.contains("ctdb-increment")) {
        s.push_str(l);
        s.push('\n');
    }
    for k in 0..NODES {
        let log = std::fs::read_to_string(c.log(k)).unwrap_or_default();
        let unusual: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                [
                    "error",
                    "warn",
                    "fail",
                    "timed out",
                    "timeout",
                    "dropped",
                    "stall",
                    "defer",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        s.push_str(&format!("--- node {k}: last unusual log lines ---\n"));
        for l in &unusual[unusual.len().saturating_sub(40)..] {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// Copies every node's log to a directory that outlives the cluster, for
/// a failure's post-mortem.
fn keep_logs(c: &Cluster) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rolling-upgrade-logs-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for k in 0..NODES {
        let _ = std::fs::copy(c.log(k), dir.join(format!("log.ctdb.{k}")));
    }
    dir
}

/// The daemon binary node `k` runs (its path, also when the file has
/// been replaced by a rebuild since it started).
fn running_binary(c: &Cluster, k: usize) -> PathBuf {
    ctdb_tests::procs::exe(c.pid(k).expect("pid")).expect("the daemon's program")
}

/// The volatile records written before the upgrade, readable from every
/// node with their values.
fn check_volatile(c: &Cluster, when: &str) {
    for r in 0..NODES {
        for w in 0..NODES {
            let out = c.tool_ok(r, &["readkey", VDB, &format!("vol{w}")]);
            let want = format!("volatile from node {w}");
            assert_eq!(
                out.trim(),
                format!("Data: size:{} ptr:[{want}]", want.len()),
                "{when}: vol{w} read on node {r}"
            );
        }
    }
}

/// Node `k`'s own copy of a database (`ctdb cattdb`: the local file,
/// read without the transaction lock the workload keeps busy), as
/// key -> data.
fn local_copy(c: &Cluster, k: usize, db: &str) -> std::collections::BTreeMap<String, String> {
    let out = c.tool_ok(k, &["cattdb", db]);
    let quoted = |l: &str| {
        let a = l.find('"')?;
        let b = l.rfind('"')?;
        (b > a).then(|| l[a + 1..b].to_owned())
    };
    let mut map = std::collections::BTreeMap::new();
    let mut key = None;
    for l in out.lines() {
        if l.starts_with("key(") {
            key = quoted(l);
        } else if l.starts_with("data(")
            && let (Some(k), Some(d)) = (key.take(), quoted(l))
        {
            map.insert(k, d);
        }
    }
    map
}

/// The persistent records written before the upgrade, in every node's
/// copy.
fn check_persistent(c: &Cluster, when: &str) {
    for r in 0..NODES {
        let copy = local_copy(c, r, PDB);
        for i in 0..20 {
            assert_eq!(
                copy.get(&format!("pkey{i}")).map(String::as_str),
                Some(format!("value {i}").as_str()),
                "{when}: pkey{i} on node {r}: {copy:?}"
            );
        }
    }
}

/// The longest time between acknowledged commits in `acks` (and from
/// `from` to the first, from the last to `to`), leaving out the parts of
/// each gap inside `excused` windows.
fn longest_stall(
    acks: &[Instant],
    from: Instant,
    to: Instant,
    excused: &[(Instant, Instant)],
) -> (Duration, Instant) {
    let mut points = vec![from];
    points.extend(acks.iter().copied().filter(|t| *t >= from && *t <= to));
    points.push(to);
    let mut worst = (Duration::ZERO, from);
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mut gap = b - a;
        for &(s, e) in excused {
            let (s, e) = (s.max(a), e.min(b));
            if e > s {
                gap = gap.saturating_sub(e - s);
            }
        }
        if gap > worst.0 {
            worst = (gap, a);
        }
    }
    worst
}

/// One step of the plan: node, the daemon to put there, its binary, and
/// extra environment for it.
type Step<'a> = (usize, &'a Daemon, PathBuf, &'a [(&'a str, &'a str)]);

#[test]
fn rolling_upgrade_from_ctdb_and_back() {
    require_reference();
    let ours = Daemon::ours();
    let reference = Daemon::Reference;
    let our_helper = our_bin("ctdb_recovery_helper");
    // CTDB holds off a new recovery for RerecoveryTimeout (10 s) after
    // one; a node that rejoins within that time (as here, right after the
    // recovery for its departure) waits it out, and meanwhile the others'
    // commits fail on it. With the default that wait alone reaches the
    // 10 s limit on the reference's nodes; 5 s leaves room for the
    // recovery itself.
    let mut opts = ClusterOptions::new(Daemon::Reference, NODES).tunable("RerecoveryTimeout", 5);
    if let Ok(level) = std::env::var("ROLLING_UPGRADE_LOG_LEVEL") {
        opts.log_level = level;
    }
    let c = Cluster::start(opts);
    let t0 = Instant::now();

    c.tool_ok(0, &["attach", VDB]);
    c.tool_ok(0, &["attach", PDB, "persistent"]);
    for w in 0..NODES {
        c.tool_ok(
            w,
            &[
                "writekey",
                VDB,
                &format!("vol{w}"),
                &format!("volatile from node {w}"),
            ],
        );
    }
    for i in 0..20 {
        c.tool_ok(
            i % NODES,
            &["pstore", PDB, &format!("pkey{i}"), &format!("value {i}")],
        );
    }
    check_volatile(&c, "before the upgrade");
    check_persistent(&c, "before the upgrade");

    // A client per node increments its own key (`load{k}`) through it.
    let mut load = Workload::start((0..NODES).map(|k| c.socket(k)).collect(), PDB, "load");
    poll_until(Duration::from_secs(60), "every client to commit", || {
        (0..NODES).all(|k| load.acked(k) > 0).then_some(())
    });
    let start = Instant::now();

    // A node upgraded to ctdb-rs runs its helpers too, as the package
    // installs them: the cluster lock is then taken by CTDB's helper on
    // some nodes and by ours on others, on the same file.
    let our_lock_helper = our_bin("ctdb_mutex_fcntl_helper");
    let our_env = [
        ("CTDB_RECOVERY_HELPER", our_helper.to_str().unwrap()),
        (
            "CTDB_CLUSTER_MUTEX_HELPER",
            our_lock_helper.to_str().unwrap(),
        ),
    ];
    let plan: Vec<Step> = (0..NODES)
        .map(|k| (k, &ours, our_bin("ctdbd"), &our_env[..]))
        .chain((0..NODES).map(|k| (k, &reference, PathBuf::from("/usr/sbin/ctdbd"), &[][..])))
        .collect();
    let mut excused: Vec<Vec<(Instant, Instant)>> = vec![Vec::new(); NODES];
    let mut snapshots: Vec<String> = Vec::new();
    for (step, (k, daemon, bin, env)) in plan.into_iter().enumerate() {
        let what = format!("step {step}: node {k} -> {daemon:?}");
        println!("{:>6.1?} {what}", t0.elapsed());
        let down = Instant::now();
        shutdown(&c, k);
        // The two others carry on without it.
        c.wait_status(HEAL, NODES - 1, &[k]);
        c.restart_with_env(k, daemon, env);
        healthy_everywhere(&c);
        excused[k].push((down, Instant::now()));
        assert_eq!(
            running_binary(&c, k),
            bin.canonicalize().unwrap(),
            "{what}: node {k} runs another daemon"
        );
        // The leader holds the cluster lock through its own kind of
        // helper, whichever kind the nodes before it used.
        poll_until(
            Duration::from_secs(30),
            &format!("{what}: the leader to hold the cluster lock through its helper"),
            || {
                let leader = c.leader(k)?;
                let holder = c.lock_holder()?;
                let helper = ctdb_tests::procs::exe(holder)?;
                let expected = if running_binary(&c, leader) == Path::new("/usr/sbin/ctdbd") {
                    PathBuf::from("/usr/libexec/ctdb/ctdb_mutex_fcntl_helper")
                } else {
                    our_lock_helper.canonicalize().ok()?
                };
                (c.lock_holder_node() == Some(leader) && helper == expected).then_some(())
            },
        );
        println!(
            "{:>6.1?}   healthy after {:.1?}",
            t0.elapsed(),
            down.elapsed()
        );
        // Its client is back and the others still commit. A client that
        // has not committed for a while is a stall on its way to failing
        // the test: what the nodes hold then is kept for the report.
        let before: Vec<u64> = (0..NODES).map(|n| load.acked(n)).collect();
        let committed = || (0..NODES).all(|n| load.acked(n) > before[n]);
        if !poll_within(MAX_STALL + Duration::from_secs(5), committed) {
            snapshots.push(snapshot(&c, &what));
        }
        // A stall that outlasts this fails the test with what the nodes
        // held when it began and their whole logs.
        if !poll_within(Duration::from_secs(60), committed) {
            panic!(
                "{what}: timed out after 60s waiting for every client to commit after the \
                 step (acknowledged before {before:?}, now {:?}; client errors {:?})\n{}\n\
                 node logs kept in {}",
                (0..NODES).map(|n| load.acked(n)).collect::<Vec<_>>(),
                (0..NODES)
                    .map(|n| load.load(n).errors())
                    .collect::<Vec<_>>(),
                snapshots.join("\n"),
                keep_logs(&c).display()
            );
        }
        check_volatile(&c, &what);
        check_persistent(&c, &what);
    }

    // A little more work on the final cluster, then stop the clients.
    let before: Vec<u64> = (0..NODES).map(|n| load.acked(n)).collect();
    poll_until(Duration::from_secs(60), "commits at the end", || {
        (0..NODES)
            .all(|n| load.acked(n) > before[n] + 10)
            .then_some(())
    });
    let end = Instant::now();
    load.stop();

    healthy_everywhere(&c);
    for k in 0..NODES {
        assert_eq!(
            running_binary(&c, k),
            PathBuf::from("/usr/sbin/ctdbd").canonicalize().unwrap(),
            "node {k} back on the reference"
        );
    }
    let mut report = String::new();
    for (k, excused) in excused.iter().enumerate() {
        let acks = load.load(k).acks();
        let (stall, at) = longest_stall(&acks, start, end, excused);
        let errors = load.load(k).errors();
        report.push_str(&format!(
            "node {k}: {} commits acknowledged, {} attempted; longest stall {stall:.1?} at +{:.1?}; \
             last client errors: {errors:?}\n",
            acks.len(),
            load.load(k).attempted(),
            at - t0
        ));
    }
    println!("{report}");
    for (k, excused) in excused.iter().enumerate() {
        let acks = load.load(k).acks();
        let (stall, at) = longest_stall(&acks, start, end, excused);
        assert!(
            stall <= MAX_STALL,
            "node {k}'s client stalled {stall:.1?} from +{:.1?}\n{report}\n{}\n{}\nwhole logs kept in {}",
            at - t0,
            snapshots.join("\n"),
            c.log_tails(),
            keep_logs(&c).display()
        );
        let (acked, attempted) = (load.load(k).acked(), load.load(k).attempted());
        let values: Vec<u64> = (0..NODES)
            .map(|n| {
                let out = c.tool_ok(n, &["pfetch", PDB, &format!("load{k}")]);
                out.trim().parse().expect("a number")
            })
            .collect();
        assert!(
            values.iter().all(|&v| v == values[0]),
            "load{k} differs between nodes: {values:?}"
        );
        assert!(
            acked <= values[0] && values[0] <= attempted,
            "load{k}: {acked} acknowledged, {attempted} attempted, value {}",
            values[0]
        );
    }
    check_volatile(&c, "after the upgrade and back");
    check_persistent(&c, "after the upgrade and back");
    let copies: Vec<_> = (0..NODES).map(|n| local_copy(&c, n, PDB)).collect();
    assert!(
        copies.iter().all(|x| *x == copies[0]),
        "the nodes' copies of {PDB} differ: {copies:?}"
    );
}
