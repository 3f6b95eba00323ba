//! The recovery daemon is a process of its own, as CTDB's `ctdb-recoverd`
//! (issue 16), checked on the reference and on ours in the same test:
//!
//! * each daemon has one child named `ctdb_recoverd` (`/proc/PID/comm`),
//!   a client of the daemon's socket, so `ctdb process-exists` finds it,
//!   and not the daemon itself;
//! * `kill -9` of the leader's recovery daemon: the daemon starts a new one
//!   (CTDB's "Recovery daemon (pid:N) is no longer running" line), the old
//!   one's helpers (the cluster-lock holder) go too, the new one logs as
//!   `ctdb-recoverd[PID]` in the daemon's log, and the cluster is healthy
//!   again;
//! * `kill -9` of a daemon alone (its pid, not its process group) and the
//!   harness's kill of a node: within a bound, no process is left with
//!   that node's `CTDB_BASE` in its environment or its directory in its
//!   command line (the recovery daemon, its lock helper, the event daemon).

use std::time::{Duration, Instant};

use ctdb_tests::procs::{all_pids, children, recoverd_of, stat};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn name(d: &Daemon) -> &'static str {
    match d {
        Daemon::Reference => "reference",
        Daemon::Ours(_) => "ours",
    }
}

/// Processes of node `k`: `CTDB_BASE` of the node in the environment, or
/// the node's directory in the command line (pid and command line).
fn node_processes(c: &Cluster, k: usize) -> Vec<(i32, String)> {
    let base = c.base(k).display().to_string();
    let env_needle = format!("CTDB_BASE={base}\0");
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me && stat(p).is_some_and(|(_, st, _)| st != 'Z'))
        .filter_map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            let env = String::from_utf8_lossy(&env).into_owned();
            (env.contains(&env_needle) || cmd.contains(&base)).then_some((p, cmd))
        })
        .collect()
}

/// The leader node `k` reports.
fn leader_seen_by(c: &Cluster, k: usize) -> Option<usize> {
    let out = c.tool(k, &["status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Leader:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `ctdb process-exists PID` on node `k`: success and output, with the pid
/// masked.
fn process_exists(c: &Cluster, k: usize, pid: i32) -> (bool, String) {
    let out = c.tool(k, &["process-exists", &pid.to_string()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.replace(&pid.to_string(), "PID"))
}

/// Waits (30 s at most) until no process of node `k` is left; how long
/// it took, and what was left last.
fn wait_none_left(c: &Cluster, k: usize, label: &str) -> (Duration, Vec<(i32, String)>) {
    let t0 = Instant::now();
    let mut last = Vec::new();
    poll_until(
        Duration::from_secs(30),
        &format!("{label}: nothing of node {k} left after it was killed"),
        || {
            let left = node_processes(c, k);
            if left.is_empty() {
                return Some(());
            }
            if left != last {
                println!("{label}: node {k} still has {left:?}");
            }
            last = left;
            None
        },
    );
    (t0.elapsed(), last)
}

struct Report {
    /// process-exists of the recovery daemon, then of the daemon.
    exists: [(bool, String); 2],
    /// kill -9 of the recovery daemon until a new one runs.
    restarted: Duration,
    /// ... until the old one's children are gone.
    helpers_gone: Duration,
    /// kill -9 of a daemon's pid until nothing of its node is left.
    daemon_pid_killed: Duration,
    /// The harness's kill of a node until nothing of it is left.
    node_killed: Duration,
}

fn recovery_daemon_process(daemon: Daemon) -> Report {
    let label = name(&daemon);
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    c.wait_healthy(Duration::from_secs(90));
    let d0 = c.pid(0).expect("node 0's pid");
    let r0 = poll_until(
        Duration::from_secs(10),
        "node 0's recovery daemon process",
        || recoverd_of(d0),
    );
    assert_ne!(r0, d0, "{label}");
    let rss = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    println!(
        "{label}: node 0's daemon resident {}, its recovery daemon resident {}",
        rss(d0),
        rss(r0)
    );

    // A client of its daemon, with its own pid.
    let exists = [process_exists(&c, 0, r0), process_exists(&c, 0, d0)];
    assert!(
        exists[0].0,
        "{label}: process-exists of the recovery daemon: {}",
        exists[0].1
    );
    assert!(
        !exists[1].0,
        "{label}: process-exists of the daemon itself: {}",
        exists[1].1
    );

    // kill -9 of the leader's recovery daemon.
    let leader = poll_until(Duration::from_secs(30), "a leader", || {
        leader_seen_by(&c, 0)
    });
    let dl = c.pid(leader).expect("the leader's pid");
    let old = recoverd_of(dl).expect("the leader's recovery daemon");
    let helpers: Vec<i32> = children(old).into_iter().map(|(p, _)| p).collect();
    let skip = c.log_text(leader).len();
    assert!(!helpers.is_empty(), "{label}: the leader's lock helper");
    let t0 = Instant::now();
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    let (mut restarted, mut helpers_gone) = (None, None);
    let new = poll_until(
        Duration::from_secs(60),
        "a new recovery daemon on the leader, the old one's helpers gone",
        || {
            let new = recoverd_of(dl).filter(|&p| p != old);
            if new.is_some() && restarted.is_none() {
                restarted = Some(t0.elapsed());
            }
            let gone = helpers
                .iter()
                .all(|&h| stat(h).is_none_or(|(_, st, _)| st == 'Z'));
            if gone && helpers_gone.is_none() {
                helpers_gone = Some(t0.elapsed());
            }
            new.filter(|_| gone)
        },
    );
    let (restarted, helpers_gone) = (restarted.unwrap(), helpers_gone.unwrap());
    let log = c.log_text(leader);
    let logged = format!("Recovery daemon (pid:{old}) is no longer running");
    assert!(
        log[skip..].contains(&logged),
        "{label}: no \"{logged}\" in node {leader}'s log"
    );
    // It logs to the daemon's log under its own name and pid.
    let own = format!("ctdb-recoverd[{new}]: ");
    poll_until(
        Duration::from_secs(30),
        "a log line of the new recovery daemon",
        || c.log_text(leader).contains(&own).then_some(()),
    );
    c.wait_healthy(Duration::from_secs(90));
    assert_eq!(recoverd_of(dl), Some(new), "{label}: restarted again");

    // kill -9 of the (maybe new) leader's daemon pid alone: its recovery
    // daemon, lock helper and event daemon go too.
    let k = poll_until(Duration::from_secs(30), "a leader", || {
        leader_seen_by(&c, (leader + 1) % 3)
    });
    let dk = c.pid(k).expect("pid");
    let rk = recoverd_of(dk).expect("the leader's recovery daemon");
    assert!(
        !children(rk).is_empty(),
        "{label}: the leader's lock helper"
    );
    assert!(!node_processes(&c, k).is_empty(), "{label}: node {k} seen");
    kill(Pid::from_raw(dk), Signal::SIGKILL).unwrap();
    let (daemon_pid_killed, last) = wait_none_left(&c, k, label);
    println!("{label}: last to go after kill -9 of node {k}'s daemon: {last:?}");

    // The harness's kill of another node.
    let j = (0..3).find(|&j| j != k && c.running(j)).expect("a node");
    let t0 = Instant::now();
    c.kill(j);
    let (_, last) = wait_none_left(&c, j, label);
    let node_killed = t0.elapsed();
    println!("{label}: last to go after the harness killed node {j}: {last:?}");
    Report {
        exists,
        restarted,
        helpers_gone,
        daemon_pid_killed,
        node_killed,
    }
}

#[test]
fn recovery_daemon_is_a_process_of_its_own() {
    require_reference();
    let reference = recovery_daemon_process(Daemon::Reference);
    let ours = recovery_daemon_process(Daemon::ours());
    assert_eq!(
        ours.exists, reference.exists,
        "process-exists of the recovery daemon and of the daemon"
    );
    for (what, r, o) in [
        (
            "kill -9 of the recovery daemon -> a new one",
            reference.restarted,
            ours.restarted,
        ),
        (
            "kill -9 of the recovery daemon -> its helpers gone",
            reference.helpers_gone,
            ours.helpers_gone,
        ),
        (
            "kill -9 of a daemon's pid -> nothing of its node left",
            reference.daemon_pid_killed,
            ours.daemon_pid_killed,
        ),
        (
            "harness kill of a node -> nothing of it left",
            reference.node_killed,
            ours.node_killed,
        ),
    ] {
        println!(
            "{what}: reference {:.1} s, ours {:.1} s",
            r.as_secs_f64(),
            o.as_secs_f64()
        );
    }
}

/// After logrotate moved `log.ctdb` aside and sent the daemon SIGHUP, the
/// recovery daemon writes to the new file too (CTDB passes SIGHUP on to
/// it; it logs that it reopened).
fn sighup_reaches_the_recovery_daemon(daemon: Daemon) {
    let label = name(&daemon);
    let c = Cluster::start(ClusterOptions::new(daemon, 1));
    c.wait_healthy(Duration::from_secs(90));
    let pid = c.pid(0).expect("daemon pid");
    let r = poll_until(Duration::from_secs(10), "the recovery daemon", || {
        recoverd_of(pid)
    });
    let log = c.log(0);
    std::fs::rename(&log, log.with_extension("ctdb.1")).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    let own = format!("ctdb-recoverd[{r}]: ");
    poll_until(
        Duration::from_secs(10),
        "a line of the recovery daemon in the new log.ctdb",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&own)
                .then_some(())
        },
    );
    assert_eq!(
        recoverd_of(pid),
        Some(r),
        "{label}: the same recovery daemon"
    );
    // What it writes to its standard error (a panic, anything outside its
    // log lines) goes to the new file too, not to the one moved aside:
    // CTDB's is a pipe its daemon logs from, ours the log file, reopened.
    let marker = format!("stderr-after-rotation-{r}");
    {
        use std::io::Write;
        let mut e = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("/proc/{r}/fd/2"))
            .unwrap();
        writeln!(e, "{marker}").unwrap();
    }
    poll_until(
        Duration::from_secs(10),
        "the recovery daemon's standard error in the new log.ctdb",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&marker)
                .then_some(())
        },
    );
}

#[test]
fn sighup_reaches_the_recovery_daemon_reference() {
    require_reference();
    sighup_reaches_the_recovery_daemon(Daemon::Reference);
}

#[test]
fn sighup_reaches_the_recovery_daemon_ours() {
    sighup_reaches_the_recovery_daemon(Daemon::ours());
}

/// `process-exists` on a banned node: CTDB 4.17 answers that the client
/// does not exist, logs "Killing client with pid:N on banned/stopped
/// node" and closes that client's connection. The client here is the
/// banned node's recovery daemon, whose connection breaks: it exits and
/// the daemon starts a new one.
fn process_exists_on_a_banned_node(daemon: Daemon) -> (bool, String) {
    let label = name(&daemon);
    let c = Cluster::start(ClusterOptions::new(daemon, 2));
    let d1 = c.pid(1).expect("node 1's pid");
    let r1 = poll_until(Duration::from_secs(10), "node 1's recovery daemon", || {
        recoverd_of(d1)
    });
    assert!(process_exists(&c, 1, r1).0, "{label}: before the ban");
    c.tool_ok(1, &["ban", "300"]);
    poll_until(Duration::from_secs(30), "node 1 banned", || {
        let out = c.tool(1, &["status"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("pnn:1 ") && l.contains("BANNED"))
            .then_some(())
    });
    let skip = c.log_text(1).len();
    let answer = process_exists(&c, 1, r1);
    assert!(
        !answer.0,
        "{label}: process-exists on a banned node: {}",
        answer.1
    );
    let line = format!("Killing client with pid:{r1} on banned/stopped node");
    poll_until(Duration::from_secs(10), "the killing line", || {
        c.log_text(1)[skip..].contains(&line).then_some(())
    });
    // Its connection closed, the recovery daemon goes and another starts
    // (ours at once, CTDB's within its 30 s check).
    poll_until(
        Duration::from_secs(90),
        "a new recovery daemon on node 1",
        || recoverd_of(d1).filter(|&p| p != r1),
    );
    c.tool_ok(1, &["unban"]);
    answer
}

#[test]
fn process_exists_on_a_banned_node_closes_the_client() {
    require_reference();
    let reference = process_exists_on_a_banned_node(Daemon::Reference);
    let ours = process_exists_on_a_banned_node(Daemon::ours());
    assert_eq!(ours, reference, "process-exists on a banned node");
}
