//! Debian's own event scripts (issue 18's check): `00.ctdb`, `01.reclock`
//! and `05.system` from the installed `ctdb` package, with the `functions`
//! file they load, in every node's `events/legacy/` before a 3-node cluster
//! starts. The same scenario runs on the reference `ctdbd` (with its event
//! daemon), on ours with our `ctdb-eventd`, and on ours with the
//! reference's `ctdb-eventd`:
//!
//! * the cluster starts and becomes healthy with them (their `init`,
//!   `setup` and `startup` pass);
//! * `startup` really ran `00.ctdb`, which attaches `ctdb.tdb` (persistent)
//!   on every node;
//! * `ctdb scriptstatus` and `ctdb event status legacy monitor` (and
//!   `init`, `setup`, `startup`) on every node print what the reference
//!   prints, with times and durations masked.

use std::path::Path;
use std::time::{Duration, Instant};

use ctdb_tests::cluster::{Cluster, ClusterOptions, Daemon};
use ctdb_tests::{our_bin, require_reference};

const REF_EVENTD: &str = "/usr/libexec/ctdb/ctdb-eventd";
const SCRIPTS: [&str; 3] = ["00.ctdb.script", "01.reclock.script", "05.system.script"];

#[derive(Debug, Clone, Copy)]
enum Setup {
    Reference,
    OursWithOurEventd,
    OursWithReferenceEventd,
}

fn options(setup: Setup) -> ClusterOptions {
    require_reference();
    let mut o = match setup {
        Setup::Reference => ClusterOptions::new(Daemon::Reference, 3),
        Setup::OursWithOurEventd | Setup::OursWithReferenceEventd => {
            ClusterOptions::new(Daemon::ours(), 3)
        }
    };
    match setup {
        Setup::Reference => {}
        Setup::OursWithOurEventd => o.env.push((
            "CTDB_EVENTD".into(),
            our_bin("ctdb-eventd").display().to_string(),
        )),
        Setup::OursWithReferenceEventd => {
            o.env.push(("CTDB_EVENTD".into(), REF_EVENTD.into()));
        }
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{p}: {e} (Debian's ctdb package: scripts/install-deps.sh)"))
    };
    // The scripts keep their state in CTDB_SCRIPT_VARDIR, by default
    // /var/lib/ctdb/scripts, which `00.ctdb` empties at `init`: shared by
    // every node on this machine, the nodes' init events race (one node's
    // `rm -rf` removes another's cache file and that node's init fails:
    // seen on ours, whose nodes start closer together; the race is the
    // scripts', not the daemon's). As CTDB's own tests do, each node gets
    // its own, through the options file the scripts load.
    o = o
        .tunable("MonitorInterval", 1)
        .base_file("functions", &read("/etc/ctdb/functions"))
        .base_file(
            "script.options",
            "CTDB_SCRIPT_VARDIR=\"${CTDB_BASE}/var/scripts\"\n",
        );
    for s in SCRIPTS {
        o = o.event_script(s, &read(&format!("/usr/share/ctdb/events/legacy/{s}")));
    }
    o
}

/// Masks what differs between runs and nodes: the times and durations of
/// script status lines (`NAME STATUS DURATION DATE`, `OUTPUT:` kept).
fn mask(s: &str) -> String {
    s.lines()
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let statuses = ["OK", "ERROR", "TIMEDOUT", "DISABLED", "CANCELLED"];
            if t.len() > 2 && statuses.contains(&t[1]) {
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
        "$ ctdb {}\n{}{}[exit {}]\n",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

/// The scenario's transcript, node by node.
fn scenario(setup: Setup) -> String {
    let c = Cluster::start(options(setup));
    if !matches!(setup, Setup::Reference) {
        let want = match setup {
            Setup::OursWithOurEventd => std::fs::canonicalize(our_bin("ctdb-eventd")).unwrap(),
            _ => Path::new(REF_EVENTD).to_path_buf(),
        };
        for k in 0..3 {
            let pid = std::fs::read_to_string(c.base(k).join("run/eventd.pid")).unwrap();
            let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap();
            assert_eq!(exe, want, "{setup:?}: node {k}'s event daemon");
        }
    }
    c.wait_healthy(Duration::from_secs(60));
    let mut t = String::new();
    for k in 0..3 {
        // A monitor run after start-up with all three scripts in it.
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mask(&last).contains("05.system OK") {
            assert!(
                Instant::now() < deadline,
                "{setup:?}: node {k} ran no monitor with 05.system in 30 s:\n{last}\n{}",
                c.log_tails()
            );
            std::thread::sleep(Duration::from_millis(200));
            last = tool_out(&c, k, &["scriptstatus"]);
        }
        let dbmap = String::from_utf8_lossy(&c.tool(k, &["getdbmap"]).stdout).into_owned();
        let ctdb_tdb = dbmap
            .lines()
            .find(|l| l.contains("name:ctdb.tdb "))
            .map(|l| l.contains("PERSISTENT"));
        t += &format!("node {k}: ctdb.tdb attached persistent: {ctdb_tdb:?}\n");
        for args in [
            &["scriptstatus"][..],
            &["event", "status", "legacy", "monitor"],
            &["event", "status", "legacy", "init"],
            &["event", "status", "legacy", "setup"],
            &["event", "status", "legacy", "startup"],
        ] {
            t += &mask(&tool_out(&c, k, args));
            t.push('\n');
        }
    }
    c.stop();
    t
}

#[test]
fn debian_event_scripts_run_and_show_as_on_the_reference() {
    let reference = scenario(Setup::Reference);
    println!("reference:\n{reference}");
    for k in 0..3 {
        assert!(
            reference.contains(&format!(
                "node {k}: ctdb.tdb attached persistent: Some(true)"
            )),
            "{reference}"
        );
    }
    assert!(
        reference.contains("00.ctdb OK <time>\n01.reclock OK <time>\n05.system OK <time>"),
        "{reference}"
    );
    for setup in [Setup::OursWithOurEventd, Setup::OursWithReferenceEventd] {
        let ours = scenario(setup);
        assert_eq!(reference, ours, "{setup:?} against the reference");
    }
}
