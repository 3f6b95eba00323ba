//! Service monitoring (issue 18): event scripts decide a node's health, on
//! three set-ups run by the same test code: the reference `ctdbd` with its
//! own event daemon, our `ctdbd` with our `ctdb-eventd`, and our `ctdbd`
//! with the reference `ctdb-eventd` (the reference `ctdbd` with ours is
//! `eventd/tests/under_ctdbd.rs`).
//!
//! * a monitor script failing while a flag file exists makes its node
//!   UNHEALTHY within two monitor intervals, and healthy again once it
//!   passes; `ctdb scriptstatus` and `ctdb event status legacy monitor`
//!   show the same on every set-up;
//! * a script that logs its event shows the same sequence of events on
//!   every set-up (init, setup, recoveries, startup, monitors, shutdown);
//! * a monitor script hung past `EventScriptTimeout` times out, counts
//!   toward `MonitorTimeoutCount`, and the node keeps serving;
//! * the event daemon going away ends the daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctdb_tests::cluster::{Cluster, ClusterOptions, Daemon};
use ctdb_tests::{our_bin, poll_until, require_reference};

const REF_EVENTD: &str = "/usr/libexec/ctdb/ctdb-eventd";

#[derive(Debug, Clone, Copy)]
enum Setup {
    Reference,
    OursWithOurEventd,
    OursWithReferenceEventd,
}

const SETUPS: [Setup; 3] = [
    Setup::Reference,
    Setup::OursWithOurEventd,
    Setup::OursWithReferenceEventd,
];

impl Setup {
    fn options(self, nodes: usize) -> ClusterOptions {
        require_reference();
        assert!(
            Path::new(REF_EVENTD).exists(),
            "the reference ctdb-eventd is missing"
        );
        match self {
            Setup::Reference => ClusterOptions::new(Daemon::Reference, nodes),
            Setup::OursWithReferenceEventd => {
                let mut o = ClusterOptions::new(Daemon::ours(), nodes);
                o.env.push(("CTDB_EVENTD".into(), REF_EVENTD.into()));
                o
            }
            Setup::OursWithOurEventd => {
                let mut o = ClusterOptions::new(Daemon::ours(), nodes);
                o.env.push((
                    "CTDB_EVENTD".into(),
                    our_bin("ctdb-eventd").display().to_string(),
                ));
                o
            }
        }
    }

    fn eventd(self) -> PathBuf {
        match self {
            Setup::OursWithOurEventd => std::fs::canonicalize(our_bin("ctdb-eventd")).unwrap(),
            _ => PathBuf::from(REF_EVENTD),
        }
    }
}

/// The event daemon's pid on node `k`.
fn eventd_pid(c: &Cluster, k: usize) -> i32 {
    std::fs::read_to_string(c.base(k).join("run/eventd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Checks that node `k` runs the set-up's event daemon.
fn check_eventd(c: &Cluster, k: usize, setup: Setup) {
    let pid = eventd_pid(c, k);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        setup.eventd(),
        "{setup:?}: the event daemon of node {k}"
    );
}

/// Script status lines with their times masked.
fn mask_times(s: &str) -> String {
    s.lines()
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.len() > 2 && matches!(t[1], "OK" | "ERROR" | "TIMEDOUT" | "DISABLED") {
                format!("{} {} <time>", t[0], t[1])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn tool_out(c: &Cluster, k: usize, args: &[&str]) -> String {
    let out = c.tool(k, args);
    format!(
        "{}{}[exit {}]",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

/// Node `pnn`'s line of `ctdb status` as node `k` sees it.
fn status_line(c: &Cluster, k: usize, pnn: usize) -> String {
    let out = c.tool(k, &["status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("pnn:{pnn} ")))
        .unwrap_or("")
        .to_owned()
}

fn unhealthy(c: &Cluster, k: usize, pnn: usize) -> bool {
    status_line(c, k, pnn).contains("UNHEALTHY")
}

const INTERVAL: u64 = 2;

fn flag_scenario(setup: Setup) -> String {
    let opts = setup
        .options(3)
        .tunable("MonitorInterval", INTERVAL as u32)
        .event_script(
            "10.flag.script",
            "#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\n\
             if [ -e \"$CTDB_BASE/monitor-fails\" ]; then echo 'flag is set'; exit 1; fi\n\
             echo 'all fine'\nexit 0\n",
        );
    let c = Cluster::start(opts);
    for k in 0..3 {
        check_eventd(&c, k, setup);
    }
    let mut t = String::new();
    t += &format!(
        "healthy:\n{}\n{}\n",
        mask_times(&tool_out(&c, 1, &["scriptstatus"])),
        mask_times(&tool_out(&c, 1, &["event", "status", "legacy", "monitor"]))
    );
    // A node that has just changed state waits 5 s before its next monitor
    // (then MonitorInterval): the bound below is for a node in its steady
    // cadence, so wait until a monitor has run since the node turned
    // healthy (its scriptstatus times change).
    let before = tool_out(&c, 1, &["scriptstatus"]);
    poll_until(
        Duration::from_secs(20),
        "a monitor run after startup",
        || (tool_out(&c, 1, &["scriptstatus"]) != before).then_some(()),
    );
    let flag = c.base(1).join("monitor-fails");
    std::fs::write(&flag, "").unwrap();
    let t0 = Instant::now();
    poll_until(Duration::from_secs(30), "node 1 UNHEALTHY", || {
        unhealthy(&c, 1, 1).then_some(())
    });
    let took = t0.elapsed();
    // The bound, for ours: two monitor intervals (one second of
    // slack for the tool and a loaded machine). (Both daemons took 4.8-5.9 s
    // when the flag was set right after startup: that was the 5 s first
    // interval after a state change, CTDB's rule, now waited out above.)
    // The reference is the oracle for what happens, not held to our bound:
    // it gets twice.
    println!("{setup:?}: UNHEALTHY after {took:.1?}");
    let bound = match setup {
        Setup::Reference => 2 * (2 * INTERVAL + 1),
        _ => 2 * INTERVAL + 1,
    };
    assert!(
        took <= Duration::from_secs(bound),
        "{setup:?}: UNHEALTHY after {took:?} (bound {bound} s)"
    );
    // The other nodes learn it through the leader.
    poll_until(
        Duration::from_secs(20),
        "node 0 sees node 1 UNHEALTHY",
        || unhealthy(&c, 0, 1).then_some(()),
    );
    t += &format!(
        "unhealthy:\n{}\n{}\n{}\n",
        status_line(&c, 0, 1)
            .split_whitespace()
            .nth(2)
            .unwrap_or(""),
        mask_times(&tool_out(&c, 1, &["scriptstatus"])),
        mask_times(&tool_out(&c, 1, &["event", "status", "legacy", "monitor"]))
    );
    std::fs::remove_file(&flag).unwrap();
    poll_until(Duration::from_secs(30), "node 1 healthy again", || {
        (!unhealthy(&c, 1, 1)).then_some(())
    });
    poll_until(
        Duration::from_secs(20),
        "node 0 sees node 1 healthy",
        || (!unhealthy(&c, 0, 1)).then_some(()),
    );
    c.wait_healthy(Duration::from_secs(30));
    t += &format!(
        "healthy again:\n{}\n",
        mask_times(&tool_out(&c, 1, &["scriptstatus"]))
    );
    t
}

#[test]
fn a_failing_monitor_script_makes_the_node_unhealthy_until_it_passes() {
    let reference = flag_scenario(Setup::Reference);
    assert!(
        reference.contains("10.flag ERROR <time>\n  OUTPUT: flag is set"),
        "{reference}"
    );
    assert!(reference.contains("unhealthy:\nUNHEALTHY\n"), "{reference}");
    for setup in [Setup::OursWithOurEventd, Setup::OursWithReferenceEventd] {
        let ours = flag_scenario(setup);
        assert_eq!(reference, ours, "{setup:?} against the reference");
    }
}

/// The events node `k` ran, in order, from a script that logs them.
fn events_of(c: &Cluster, k: usize) -> Vec<String> {
    std::fs::read_to_string(c.base(k).join("events.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Collapses repeats: runs of one event, and repeated recoveries
/// (`startrecovery recovered` pairs), which depend on timing.
fn collapse(events: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if out.last() == Some(e) {
            continue;
        }
        let n = out.len();
        if e == "startrecovery"
            && n >= 2
            && out[n - 2] == "startrecovery"
            && out[n - 1] == "recovered"
        {
            // Another recovery: wait to see it complete.
            out.push(e.clone());
            continue;
        }
        if e == "recovered"
            && n >= 3
            && out[n - 1] == "startrecovery"
            && out[n - 2] == "recovered"
            && out[n - 3] == "startrecovery"
        {
            out.pop();
            continue;
        }
        out.push(e.clone());
    }
    out
}

fn sequence_scenario(setup: Setup) -> Vec<Vec<String>> {
    let opts = setup.options(3).tunable("MonitorInterval", 1).event_script(
        "10.log.script",
        "#!/bin/sh\necho \"$1\" >> \"$CTDB_BASE/events.log\"\nexit 0\n",
    );
    let c = Cluster::start(opts);
    for k in 0..3 {
        check_eventd(&c, k, setup);
    }
    // A few monitors on every node.
    poll_until(Duration::from_secs(30), "three monitor runs", || {
        (0..3)
            .all(|k| events_of(&c, k).iter().filter(|e| *e == "monitor").count() >= 3)
            .then_some(())
    });
    let pids: Vec<i32> = (0..3).map(|k| c.pid(k).unwrap()).collect();
    c.stop();
    for p in pids {
        poll_until(Duration::from_secs(20), "the daemon to exit", || {
            (!std::path::Path::new(&format!("/proc/{p}")).exists()).then_some(())
        });
    }
    (0..3)
        .map(|k| {
            let ev = events_of(&c, k);
            // No monitor before startup.
            let startup = ev.iter().position(|e| e == "startup");
            let monitor = ev.iter().position(|e| e == "monitor");
            assert!(
                startup.is_some() && monitor > startup,
                "{setup:?} node {k}: {ev:?}"
            );
            // `ipreallocated` comes from the leader's takeover runs (after
            // recoveries and health changes), whose number depends on
            // timing: it is left out of the sequence, and whether it ran
            // is compared.
            let ipre = ev.iter().filter(|e| *e == "ipreallocated").count();
            let mut seq = collapse(
                &ev.iter()
                    .filter(|e| *e != "ipreallocated")
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            seq.push(format!("ipreallocated runs: {}", ipre.min(1)));
            seq
        })
        .collect()
}

#[test]
fn events_run_in_the_same_order_as_on_the_reference() {
    let reference = sequence_scenario(Setup::Reference);
    let expected: Vec<String> = [
        "init",
        "setup",
        "startrecovery",
        "recovered",
        "startup",
        "monitor",
        "shutdown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, seq) in reference.iter().enumerate() {
        assert_eq!(seq[..seq.len() - 1], expected, "reference node {k}");
        assert_eq!(
            seq[seq.len() - 1],
            "ipreallocated runs: 1",
            "reference node {k}"
        );
    }
    for setup in [Setup::OursWithOurEventd, Setup::OursWithReferenceEventd] {
        let ours = sequence_scenario(setup);
        for (k, (r, o)) in reference.iter().zip(&ours).enumerate() {
            assert_eq!(
                r[..r.len() - 1],
                o[..o.len() - 1],
                "{setup:?} node {k} against the reference"
            );
            // Takeover runs (IP failover) run ipreallocated as on the
            // reference.
            assert_eq!(o[o.len() - 1], r[r.len() - 1], "{setup:?} node {k}");
        }
    }
}

fn hung_scenario(setup: Setup) -> String {
    let opts = setup
        .options(1)
        .tunable("MonitorInterval", 1)
        .tunable("EventScriptTimeout", 3)
        .tunable("MonitorTimeoutCount", 2)
        .event_script(
            "10.hang.script",
            "#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\n\
             if [ -e \"$CTDB_BASE/monitor-hangs\" ]; then echo hanging; exec sleep 12; fi\nexit 0\n",
        );
    let c = Cluster::start(opts);
    check_eventd(&c, 0, setup);
    std::fs::write(c.base(0).join("monitor-hangs"), "").unwrap();
    let status = || tool_out(&c, 0, &["event", "status", "legacy", "monitor"]);
    let timed_out = poll_until(Duration::from_secs(30), "a timed-out monitor", || {
        let s = status();
        s.contains("TIMEDOUT").then_some(s)
    });
    let mut t = format!("timed out:\n{}\n", mask_times(&timed_out));
    // One timeout is not enough to be unhealthy (MonitorTimeoutCount 2);
    // the second makes the node UNHEALTHY. The daemon keeps answering.
    poll_until(Duration::from_secs(40), "UNHEALTHY after timeouts", || {
        unhealthy(&c, 0, 0).then_some(())
    });
    let log = c.log_text(0);
    t += &format!(
        "limit logged: {}\n",
        log.contains("Maximum monitor timeout count 2 reached. Making node unhealthy")
    );
    std::fs::remove_file(c.base(0).join("monitor-hangs")).unwrap();
    poll_until(Duration::from_secs(40), "healthy again", || {
        (!unhealthy(&c, 0, 0)).then_some(())
    });
    t += &format!("pnn: {}", tool_out(&c, 0, &["pnn"]));
    t
}

#[test]
fn a_hung_monitor_script_times_out_as_on_the_reference() {
    let reference = hung_scenario(Setup::Reference);
    assert!(
        reference.contains("10.hang TIMEDOUT <time>\n  OUTPUT: hanging"),
        "{reference}"
    );
    assert!(reference.contains("limit logged: true"), "{reference}");
    for setup in [Setup::OursWithOurEventd, Setup::OursWithReferenceEventd] {
        let ours = hung_scenario(setup);
        assert_eq!(reference, ours, "{setup:?} against the reference");
    }
}

fn eventd_gone_scenario(setup: Setup) -> String {
    let c = Cluster::start(setup.options(1));
    check_eventd(&c, 0, setup);
    let daemon = c.pid(0).unwrap();
    let eventd = eventd_pid(&c, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(eventd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    poll_until(Duration::from_secs(20), "the daemon to exit", || {
        let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    });
    format!(
        "logged: {}",
        c.log_text(0).contains("Eventd went away - exiting")
    )
}

#[test]
fn the_daemon_exits_when_its_event_daemon_goes_away() {
    for setup in SETUPS {
        assert_eq!(eventd_gone_scenario(setup), "logged: true", "{setup:?}");
    }
}
