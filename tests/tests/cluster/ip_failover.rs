//! Public IP failover (issue 19), on the reference cluster and on ours,
//! same code, each node in a network namespace of its own: 3 nodes, 6
//! public addresses on `eth0`, Debian's `10.interface.script` adding and
//! removing them on the interfaces (the cluster is `ipf::options`).
//!
//! * every address is hosted by exactly one node (`ip addr` in each
//!   namespace, and `ctdb ip` agrees), each node some;
//! * `ctdb disable` moves a node's addresses away within 5 s; with
//!   `NoIPFailback=0` they come back on `ctdb enable`;
//! * an UNHEALTHY node (its monitor failing) gives them up, and takes
//!   some back when healthy;
//! * a node killed with SIGKILL: its addresses are hosted by the others
//!   within 2 x (KeepaliveInterval x KeepaliveLimit) + 5 s (its own
//!   namespace keeps them: nothing runs there to remove them);
//! * `moveip` moves one address, `ipreallocate` succeeds;
//! * the IP commands of the tool (`ip`, `ip all`, `ipinfo`, `ifaces`,
//!   `gettickles`/`addtickle`/`deltickle`, `setifacelink`, `gratarp`,
//!   `addip`/`delip`) print the same with the reference tool and ours
//!   against our daemon, and the same against both daemons.
//!
//! `ip_failover_reference_and_ours` runs it with the reference
//! `ctdb_takeover_helper` on both daemons; `ip_failover_our_takeover_helper`
//! with ours (`takeover-helper/`) on both. Timings are printed side by side.

use crate::ipf;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_tests::{Cluster, Daemon, our_bin, poll_until};
use ipf::{
    KEEPALIVE_INTERVAL, KEEPALIVE_LIMIT, options, placed, show, tool, wait_placed, wait_spread,
};

#[derive(Debug, Default)]
struct Timings {
    initial: Option<Duration>,
    disable: Option<Duration>,
    enable: Option<Duration>,
    unhealthy: Option<Duration>,
    healthy: Option<Duration>,
    kill: Option<Duration>,
    moveip: Option<Duration>,
    /// `(command, reference tool's output, our tool's output)`.
    tool_outputs: Vec<(String, String, String)>,
}

/// A tool's status, stdout and stderr for `args` on node `k`.
fn run_tool(c: &Cluster, tool: &std::path::Path, k: usize, args: &[&str]) -> String {
    let out = c.tool_with(tool, k, args);
    format!(
        "status {}\n{}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The IP commands, with the reference tool and ours, on node 0 of a
/// cluster whose addresses are placed; what changes the cluster is
/// undone, and the placement waited for again.
fn tool_commands(c: &Cluster) -> Vec<(String, String, String)> {
    let reference = std::path::Path::new("/usr/bin/ctdb");
    let ours = our_bin("ctdb");
    let mut out = Vec::new();
    let mut both = |args: &[&str]| {
        let r = run_tool(c, reference, 0, args);
        let o = run_tool(c, &ours, 0, args);
        out.push((args.join(" "), r, o));
    };
    for args in [
        &["ip"][..],
        &["ip", "all"],
        &["-X", "ip", "all"],
        &["ip", "-v", "all"],
        &["ipinfo", "192.0.2.101"],
        &["ipinfo", "192.0.2.99"],
        &["ifaces"],
        &["-X", "ifaces"],
        &["-n", "all", "ifaces"],
        &["gettickles", "192.0.2.101"],
        &["gettickles", "192.0.2.99"],
        &["setifacelink", "nosuch0", "down"],
        &["setifacelink", "eth0", "sideways"],
        &["gratarp", "192.0.2.101", "eth0"],
    ] {
        both(args);
    }
    // Tickles: added (the tool sends TCP_ADD_DELAYED_UPDATE), listed,
    // deleted; each tool adds and deletes its own.
    for tool in [reference, ours.as_path()] {
        let run = |args: &[&str]| run_tool(c, tool, 0, args);
        let add = run(&["addtickle", "192.0.2.200:40000", "192.0.2.101:445"]);
        let add2 = run(&["addtickle", "192.0.2.200:40001", "192.0.2.101:2049"]);
        let all = run(&["gettickles", "192.0.2.101"]);
        let port = run(&["gettickles", "192.0.2.101", "445"]);
        let x = run(&["-X", "gettickles", "192.0.2.101"]);
        let del = run(&["deltickle", "192.0.2.200:40000", "192.0.2.101:445"]);
        let del2 = run(&["deltickle", "192.0.2.200:40001", "192.0.2.101:2049"]);
        let after = run(&["gettickles", "192.0.2.101"]);
        let text = [add, add2, all, port, x, del, del2, after].join("--\n");
        if tool == reference {
            out.push(("tickles".into(), text, String::new()));
        } else {
            out.last_mut().unwrap().2 = text;
        }
    }
    // A new address on node 0 (not hosted until a takeover run), then
    // deleted again. Whether a takeover run has placed it on node 0 by
    // the first delip is timing (node 0 asks for one within a recover
    // interval of the addip): an address not hosted is deleted at once,
    // a hosted one only by the next takeover run (on both daemons, as
    // CTDB's delip wants an ipreallocate after it). A run between the
    // two delips, so that either way the address is gone for the second
    // (a loaded run once had the reference's hosted, ours not: "Node does
    // not know about IP address" from ours only).
    for tool in [reference, ours.as_path()] {
        let run = |args: &[&str]| run_tool(c, tool, 0, args);
        let add = run(&["addip", "192.0.2.110/24", "eth0"]);
        let dup = run(&["addip", "192.0.2.110/24", "eth0"]);
        let del = run(&["delip", "192.0.2.110"]);
        poll_until(Duration::from_secs(60), "a successful ipreallocate", || {
            c.tool(0, &["ipreallocate"]).status.success().then_some(())
        });
        let del2 = run(&["delip", "192.0.2.110"]);
        let text = [add, dup, del, del2].join("--\n");
        if tool == reference {
            out.push(("addip/delip".into(), text, String::new()));
        } else {
            out.last_mut().unwrap().2 = text;
        }
    }
    out
}

/// The scenario; `helper` is the takeover helper the daemons run (their
/// default, the reference's, when `None`).
fn scenario(daemon: Daemon, helper: Option<PathBuf>, t: &mut Timings) {
    let mut opts = options(daemon);
    // The helper runs through a wrapper that counts its runs, so the test
    // knows the daemon ran this one.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let runs = wrapper_dir.path().join("runs");
    if let Some(h) = &helper {
        let w = wrapper_dir.path().join("takeover-helper.sh");
        ctdb_tests::write_script(
            &w,
            &format!(
                "#!/bin/sh\necho run >> '{}'\nexec '{}' \"$@\"\n",
                runs.display(),
                h.display()
            ),
        );
        opts.env
            .push(("CTDB_TAKEOVER_HELPER".into(), w.display().to_string()));
    }
    let c = Cluster::start(opts);
    let all = [0, 1, 2];

    let (d, _) = wait_spread(
        &c,
        Duration::from_secs(60),
        "every address on one node, every node hosting some",
        &all,
    );
    t.initial = Some(d);
    t.tool_outputs = tool_commands(&c);
    wait_spread(
        &c,
        Duration::from_secs(30),
        "placement after the tool commands",
        &all,
    );

    // Disable node 1: its addresses move within 5 s.
    let start = Instant::now();
    tool(&c, 1, &["disable"]);
    let (_, p) = wait_placed(
        &c,
        Duration::from_secs(5),
        "node 1's addresses moved on disable",
        &all,
        &[1],
    );
    t.disable = Some(start.elapsed());
    assert!(p.values().all(|&h| h != 1));

    // Enable it: with NoIPFailback=0 some come back.
    let start = Instant::now();
    tool(&c, 1, &["enable"]);
    poll_until(Duration::from_secs(15), "addresses back on node 1", || {
        placed(&c, &all, &[]).filter(|p| p.values().any(|&h| h == 1))
    });
    t.enable = Some(start.elapsed());

    // Node 2's monitor fails: UNHEALTHY, it gives its addresses up.
    std::fs::write(c.base(2).join("fail"), "").unwrap();
    let start = Instant::now();
    wait_placed(
        &c,
        Duration::from_secs(20),
        "node 2's addresses moved when UNHEALTHY",
        &all,
        &[2],
    );
    t.unhealthy = Some(start.elapsed());
    std::fs::remove_file(c.base(2).join("fail")).unwrap();
    let start = Instant::now();
    poll_until(
        Duration::from_secs(30),
        "addresses back on healthy node 2",
        || placed(&c, &all, &[]).filter(|p| p.values().any(|&h| h == 2)),
    );
    t.healthy = Some(start.elapsed());

    // Kill node 0 (whatever it led): the others host everything. Not in
    // the middle of a takeover run: a leader killed during one leaves the
    // others holding takeover runs for the 60 s it asked (as CTDB does;
    // seen on the reference: "Unable to begin - takeover runs are
    // disabled" on the new leader until then), which is not what this
    // step measures. `ipreallocate` returns after a whole run.
    tool(&c, 1, &["ipreallocate"]);
    let limit = Duration::from_secs(2 * KEEPALIVE_INTERVAL * KEEPALIVE_LIMIT + 5);
    let start = Instant::now();
    c.kill(0);
    wait_placed(
        &c,
        limit,
        "node 0's addresses hosted elsewhere after kill -9",
        &[1, 2],
        &[],
    );
    t.kill = Some(start.elapsed());

    // moveip (last: on the reference it is where takeover runs most
    // often fail): one address to the other live node.
    let alive = [1, 2];
    let p = placed(&c, &alive, &[]).expect("placement after the kill");
    let (ip, from) = p.iter().next().map(|(i, k)| (i.clone(), *k)).unwrap();
    let to = if from == 1 { 2 } else { 1 };
    let start = Instant::now();
    tool(&c, 1, &["moveip", &ip, &to.to_string()]);
    poll_until(Duration::from_secs(10), "moveip to take effect", || {
        placed(&c, &alive, &[]).filter(|p| p.get(&ip) == Some(&to))
    });
    t.moveip = Some(start.elapsed());
    tool(&c, 1, &["ipreallocate"]);
    wait_placed(
        &c,
        Duration::from_secs(10),
        "placement after ipreallocate",
        &alive,
        &[],
    );
    if let Some(h) = helper {
        let n = std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count();
        assert!(n > 0, "the daemons never ran {}", h.display());
        println!("{} ran {n} times", h.display());
    }
}

/// Runs the scenario on both daemons with `helper`; prints the timings
/// side by side under `title`, then fails for either side.
fn both_daemons(title: &str, helper: Option<PathBuf>) -> (Timings, Timings) {
    // CTDB_IPF_ONLY=ours|reference runs one side (while debugging).
    let only = std::env::var("CTDB_IPF_ONLY").unwrap_or_default();
    let mut r = Timings::default();
    let mut o = Timings::default();
    let run = |d: Daemon, t: &mut Timings| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(d, helper.clone(), t)
        }))
    };
    let rr = (only != "ours").then(|| run(Daemon::Reference, &mut r));
    let or = (only != "reference").then(|| run(Daemon::ours(), &mut o));
    println!("{title:<25} {:>9} {:>6}", "reference", "ours");
    for (what, a, b) in [
        ("initial placement", r.initial, o.initial),
        ("disable -> moved", r.disable, o.disable),
        ("enable -> back", r.enable, o.enable),
        ("unhealthy -> moved", r.unhealthy, o.unhealthy),
        ("healthy -> back", r.healthy, o.healthy),
        ("kill -9 -> moved", r.kill, o.kill),
        ("moveip -> moved", r.moveip, o.moveip),
    ] {
        println!("{what:<25} {:>9} {:>6}", show(a), show(b));
    }
    ipf::rethrow([("the reference daemon", rr), ("our daemon", or)]);
    (r, o)
}

#[test]
fn ip_failover_reference_and_ours() {
    let (r, o) = both_daemons("ip failover timings (s)", None);
    for (cmd, ref_tool, our_tool) in &o.tool_outputs {
        assert_eq!(
            ref_tool, our_tool,
            "ctdb {cmd} against our daemon: reference tool vs ours"
        );
    }
    if !r.tool_outputs.is_empty() && !o.tool_outputs.is_empty() {
        for ((cmd, rr, _), (_, or, _)) in r.tool_outputs.iter().zip(&o.tool_outputs) {
            // Which node hosts which address depends on the order the
            // nodes became healthy; the rest must be equal.
            assert_eq!(
                mask_placement(rr),
                mask_placement(or),
                "ctdb {cmd} (reference tool): reference daemon vs ours"
            );
        }
    }
}

/// The same scenario with our `ctdb_takeover_helper` as the takeover
/// helper, under our daemon and under the reference's.
#[test]
fn ip_failover_our_takeover_helper() {
    both_daemons(
        "our helper: timings (s)",
        Some(our_bin("ctdb_takeover_helper")),
    );
}

/// Tool output with the node hosting each public address masked.
fn mask_placement(out: &str) -> String {
    let is_public = |w: &str| w.starts_with("192.0.2.1") && w.len() == 11;
    let mut res = String::new();
    for line in out.lines() {
        let line = line.replace(" (active)", "");
        let line = match line.find("CurrentNode:") {
            Some(i) => format!("{}CurrentNode:N", &line[..i]),
            None => line,
        };
        // `ip -v`: node[K].
        let line = match (line.find(" node["), line.find("] active")) {
            (Some(i), Some(j)) if i < j => format!("{} node[N{}", &line[..i], &line[j..]),
            _ => line,
        };
        let sep = if line.contains('|') { '|' } else { ' ' };
        let mut f: Vec<String> = line.split(sep).map(str::to_owned).collect();
        for i in 1..f.len() {
            if is_public(f[i - 1].trim()) && f[i].trim().parse::<i64>().is_ok() {
                f[i] = "N".into();
            }
        }
        res.push_str(&f.join(&sep.to_string()));
        res.push('\n');
    }
    res
}
