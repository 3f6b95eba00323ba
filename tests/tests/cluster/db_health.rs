//! Database health (`persistent_health.tdb`, `DB_GET_HEALTH`,
//! `DB_SET_HEALTHY`), the same steps on the reference daemon and ours:
//!
//! * a reason written into node 1's `persistent_health.tdb.1` (as CTDB
//!   itself writes one: key the database name, value the reason) shows in
//!   `ctdb getdbstatus` (HEALTH) and `ctdb getdbmap` (UNHEALTHY) on node 1
//!   only;
//! * `ctdb wipedb` (which sends `DB_SET_HEALTHY`) makes it healthy and
//!   removes the reason from the file;
//! * so does a recovery (its commit, with healthy nodes in the cluster);
//! * a node whose health file marks a persistent database unhealthy does
//!   not start, nor one whose persistent tdb fails `tdb_check`; with the
//!   reason gone it starts and the cluster is healthy again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const DB: &str = "health_test.tdb";
const REASON: &str = "TEST - marked unhealthy by db_health";

fn health_file(c: &Cluster, k: usize) -> PathBuf {
    c.base(k)
        .join(format!("db/state/persistent_health.tdb.{k}"))
}

fn mark(path: &Path, reason: Option<&str>) {
    let t = tdb::Tdb::open_existing(path).unwrap();
    match reason {
        Some(r) => t
            .store(DB.as_bytes(), r.as_bytes(), tdb::StoreMode::Replace)
            .unwrap(),
        None => {
            let _ = t.delete(DB.as_bytes());
        }
    }
}

fn stored_reason(path: &Path) -> Option<String> {
    let t = tdb::Tdb::open_existing(path).unwrap();
    t.fetch(DB.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn health(c: &Cluster, k: usize) -> String {
    let s = c.tool_ok(k, &["getdbstatus", DB]);
    s.lines()
        .find_map(|l| l.strip_prefix("HEALTH: "))
        .unwrap_or_else(|| panic!("no HEALTH line in:\n{s}"))
        .to_owned()
}

fn dbmap_line(c: &Cluster, k: usize) -> String {
    let s = c.tool_ok(k, &["getdbmap"]);
    s.lines()
        .find(|l| l.contains(&format!("name:{DB}")))
        .unwrap_or_else(|| panic!("{DB} not in getdbmap:\n{s}"))
        .to_owned()
}

fn wait_health(c: &Cluster, k: usize, want: &str, what: &str) {
    poll_until(Duration::from_secs(30), what, || {
        (health(c, k) == want).then_some(())
    });
}

/// Points every hash chain of a tdb past its end (`tdb_check` fails,
/// opening does not).
fn corrupt_chains(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut off = 172;
    while off + 4 <= len.min(172 + 4 * 131) {
        f.write_all_at(&0x7fff_fff0u32.to_le_bytes(), off).unwrap();
        off += 4;
    }
}

/// Starts node 1 and waits for it to have given up, with `line` in its log.
fn refuses_to_start(c: &Cluster, daemon: &Daemon, line: &str) {
    // Cluster::kill waits for the daemon and the helpers it signalled;
    // this waits for every other process of the node too (a new daemon
    // that meets an old one's event daemon gives up before it looks at its
    // databases).
    node_processes_gone(c);
    let st = c.launch_node(1, daemon);
    println!("launcher exit status: {st}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log_text(1).contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 did not log {line:?} within 30 s; the end of its log:\n{}",
            tail(&c.log_text(1), 60)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    poll_until(Duration::from_secs(30), "node 1's daemon to exit", || {
        (!c.running(1)).then_some(())
    });
    assert!(
        !c.tool(1, &["pnn"]).status.success(),
        "node 1 answers although it refused to start"
    );
    // Its event daemon notices its parent is gone a few seconds later;
    // until then a new daemon cannot start one.
    node_processes_gone(c);
    let _ = std::fs::remove_file(c.base(1).join("run/ctdbd.pid"));
    let _ = std::fs::remove_file(c.socket(1));
}

/// Waits until no process of node 1 is left.
fn node_processes_gone(c: &Cluster) {
    let base = format!("CTDB_BASE={}", c.base(1).display());
    poll_until(
        Duration::from_secs(30),
        "node 1's processes to exit",
        || (!node_processes_left(&base)).then_some(()),
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether any process has `base` (`CTDB_BASE=...`) in its environment.
fn node_processes_left(base: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            return false;
        }
        std::fs::read(e.path().join("environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == base.as_bytes()))
            .unwrap_or(false)
    })
}

fn run(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon.clone(), 3));
    c.tool_ok(0, &["attach", DB, "persistent"]);
    c.tool_ok(0, &["pstore", DB, "key1", "value1"]);
    let hf = health_file(&c, 1);
    assert!(hf.exists(), "{} missing", hf.display());
    for k in 0..3 {
        assert_eq!(health(&c, k), "OK", "node {k}");
    }

    // A reason in the file: node 1 reports it, the others do not.
    mark(&hf, Some(REASON));
    assert_eq!(health(&c, 1), REASON);
    assert!(
        dbmap_line(&c, 1).contains("UNHEALTHY"),
        "{}",
        dbmap_line(&c, 1)
    );
    assert_eq!(health(&c, 0), "OK");
    assert!(!dbmap_line(&c, 0).contains("UNHEALTHY"));

    // wipedb sends DB_SET_HEALTHY: healthy, and gone from the file.
    c.tool_ok(0, &["wipedb", DB]);
    wait_health(&c, 1, "OK", "node 1 healthy after wipedb");
    assert_eq!(stored_reason(&hf), None);

    // A recovery's commit, with healthy nodes about, makes it healthy.
    mark(&hf, Some(REASON));
    assert_eq!(health(&c, 1), REASON);
    c.tool_ok(0, &["recover"]);
    wait_health(&c, 1, "OK", "node 1 healthy after a recovery");
    assert_eq!(stored_reason(&hf), None);

    // Marked unhealthy while down: node 1 does not start.
    c.kill(1);
    mark(&hf, Some(REASON));
    refuses_to_start(&c, &daemon, "is marked as unhealthy");
    // Reason gone: it starts.
    mark(&hf, None);
    c.restart(1);
    c.wait_healthy(Duration::from_secs(120));
    assert_eq!(health(&c, 1), "OK");

    // A corrupt persistent tdb: node 1 does not start.
    c.kill(1);
    corrupt_chains(&c.base(1).join(format!("db/persistent/{DB}.1")));
    refuses_to_start(&c, &daemon, "tdb_check(");
}

#[test]
fn db_health_reference() {
    run(Daemon::Reference);
}

#[test]
fn db_health_ours() {
    run(Daemon::Ours(our_bin("ctdbd")));
}
