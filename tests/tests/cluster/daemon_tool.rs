//! A 3-node cluster answers the reference `ctdb` tool's informational and
//! administrative commands, and prints what the reference prints for the
//! same state (pids, times, counters and addresses masked). Each check
//! runs against our daemon and against the reference daemon, which proves
//! the check itself right.

use std::time::Duration;

use ctdb_tests::output::{mask, reference_output};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";

fn start(daemon: Daemon) -> Cluster {
    require_reference();
    Cluster::start(ClusterOptions::new(daemon, 3).recovery_helper(HELPER))
}

fn ours() -> Daemon {
    Daemon::Ours(our_bin("ctdbd"))
}

/// Runs `ctdb ARGS` on node 1 (where the reference outputs were taken)
/// and returns stdout and stderr together.
fn run(c: &Cluster, args: &[&str]) -> String {
    let out = c.tool(1, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ctdb {} failed ({}): {text}\nlogs:\n{}",
        args.join(" "),
        out.status,
        c.log_tails()
    );
    text
}

/// `ctdb ARGS` on node 1 prints what the reference printed in `name`.
fn same_as_reference(c: &Cluster, args: &[&str], name: &str) {
    let got = run(c, args);
    let dir = c.dir().to_str().unwrap();
    assert_eq!(
        mask(&got, Some(dir)),
        mask(&reference_output(name), None),
        "ctdb {} differs from the reference's {name}.out; got:\n{got}",
        args.join(" ")
    );
}

fn generation(c: &Cluster, k: usize) -> String {
    let s = c.tool_ok(k, &["status"]);
    s.lines()
        .find_map(|l| l.strip_prefix("Generation:"))
        .unwrap_or_else(|| panic!("no generation in:\n{s}"))
        .to_owned()
}

/// Waits until node 0's status shows node 1 with exactly `flags`.
fn wait_node1(c: &Cluster, flags: &str) {
    let mut last = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(Duration::from_secs(60), flags, || {
            last = String::from_utf8_lossy(&c.tool(0, &["status"]).stdout).into_owned();
            last.lines()
                .find(|l| l.starts_with("pnn:1 "))
                .is_some_and(|l| l.split_whitespace().nth(2) == Some(flags))
                .then_some(())
        })
    }));
    if r.is_err() {
        panic!(
            "node 1 never showed {flags}; last status:\n{last}\n{}",
            c.log_tails()
        );
    }
}

fn informational(c: &Cluster) {
    for (args, name) in [
        (&["status"][..], "status"),
        (&["listnodes"][..], "listnodes"),
        (&["nodestatus", "all"][..], "nodestatus"),
        (&["pnn"][..], "pnn"),
        (&["ping"][..], "ping"),
        (&["getpid"][..], "getpid"),
        (&["uptime"][..], "uptime"),
        (&["listvars"][..], "listvars"),
        (&["getvar", "RecoverTimeout"][..], "getvar"),
        (&["getdebug"][..], "getdebug"),
        (&["runstate"][..], "runstate"),
        (&["getcapabilities"][..], "getcapabilities"),
        (&["leader"][..], "recmaster"),
        (&["getreclock"][..], "getreclock"),
        (&["statistics"][..], "statistics"),
    ] {
        same_as_reference(c, args, name);
    }
    // The pid printed is the daemon's.
    assert_eq!(
        run(c, &["getpid"]).trim(),
        c.pid(1).unwrap().to_string(),
        "getpid is not the daemon's pid"
    );
}

fn settings(c: &Cluster) {
    same_as_reference(c, &["setvar", "RecoverTimeout", "31"], "setvar");
    assert_eq!(
        run(c, &["getvar", "RecoverTimeout"])
            .split_whitespace()
            .last(),
        Some("31")
    );
    same_as_reference(c, &["setvar", "RecoverTimeout", "30"], "setvar");
    same_as_reference(c, &["setdebug", "INFO"], "setdebug");
    assert_eq!(run(c, &["getdebug"]).trim(), "INFO");
    same_as_reference(c, &["setdebug", "NOTICE"], "setdebug");
    same_as_reference(c, &["getdebug"], "getdebug");
    // A tunable that does not exist is refused.
    assert!(
        !c.tool(1, &["setvar", "NoSuchTunable", "1"])
            .status
            .success()
    );
}

fn administration(c: &Cluster) {
    same_as_reference(c, &["ban", "100"], "ban");
    wait_node1(c, "BANNED|INACTIVE");
    same_as_reference(c, &["unban"], "unban");
    wait_node1(c, "OK");
    c.wait_healthy(Duration::from_secs(90));

    same_as_reference(c, &["disable"], "disable");
    wait_node1(c, "DISABLED");
    same_as_reference(c, &["enable"], "enable");
    wait_node1(c, "OK");

    same_as_reference(c, &["stop"], "stop");
    wait_node1(c, "STOPPED|INACTIVE");
    same_as_reference(c, &["continue"], "continue");
    wait_node1(c, "OK");
    c.wait_healthy(Duration::from_secs(90));
}

/// `ctdb recover` runs a recovery (with no databases attached) through
/// the reference recovery helper: the generation changes on every node.
fn recovery(c: &Cluster) {
    let before = generation(c, 0);
    same_as_reference(c, &["recover"], "recover");
    c.wait_healthy(Duration::from_secs(90));
    let after = generation(c, 0);
    assert_ne!(before, after, "recover did not change the generation");
    assert_ne!(after, "INVALID");
    for k in 1..3 {
        assert_eq!(generation(c, k), after, "node {k} has another generation");
    }
}

/// `ctdb reloadnodes` after a deleted node is added to every nodes file:
/// every daemon takes the new node map without disturbing the others.
fn reload_nodes(c: &Cluster) {
    for k in 0..3 {
        let p = c.base(k).join("nodes");
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("#127.0.0.99\n");
        std::fs::write(&p, text).unwrap();
    }
    run(c, &["reloadnodes"]);
    for k in 0..3 {
        let s = c.tool_ok(k, &["status"]);
        assert!(
            s.starts_with("Number of nodes:4 (including 1 deleted nodes)"),
            "node {k} did not reload its nodes file:\n{s}"
        );
    }
    c.wait_healthy(Duration::from_secs(60));
}

fn all(daemon: Daemon) {
    let c = start(daemon);
    informational(&c);
    settings(&c);
    recovery(&c);
    administration(&c);
    same_as_reference(&c, &["statisticsreset"], "statreset");
    reload_nodes(&c);
}

#[test]
fn tool_commands_against_our_daemon() {
    let ours = ours();
    all(ours);
}

#[test]
fn tool_commands_against_the_reference_daemon() {
    all(Daemon::Reference);
}

/// Our daemon runs the reference recovery helper (named in its log) and
/// the recovery installs a new generation.
#[test]
fn our_recovery_uses_the_reference_helper() {
    let c = start(ours());
    let leader: usize = c.tool_ok(0, &["leader"]).trim().parse().unwrap();
    let before = generation(&c, 0);
    c.tool_ok(0, &["recover"]);
    c.wait_healthy(Duration::from_secs(90));
    assert_ne!(generation(&c, 0), before);
    let log = c.log_text(leader);
    assert!(
        log.contains(&format!("Running recovery helper {HELPER}")),
        "leader {leader}'s log does not show the helper run:\n{}",
        c.log_tails()
    );
    assert!(
        log.contains("0 of 0 databases recovered"),
        "{}",
        c.log_tails()
    );
}
