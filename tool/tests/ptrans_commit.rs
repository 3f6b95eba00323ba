//! `ctdb ptrans` commits:
//!
//! * a commit the daemon refuses every time is given up after
//!   `ctdb_client::db::transaction::COMMIT_ATTEMPTS` attempts with a clear
//!   error (CTDB's tool would send it forever), counted on our fake daemon;
//! * one transaction that stores a key and then deletes it (a new key and an
//!   existing one) commits, and leaves the key empty, with our tool and the
//!   reference tool alike, against our fake daemon and 2-node clusters of the
//!   reference daemon and of ours. (CTDB's own `fake_ctdbd` is not in
//!   Debian's packages, so it is not among them.)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ctdb_client::db::transaction::COMMIT_ATTEMPTS;
use ctdb_tests::fake::FakeDaemon;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const REFERENCE_TOOL: &str = "/usr/bin/ctdb";

const STATE: &str = "NODEMAP
0       192.168.20.41   0x0 CURRENT RECMASTER
1       192.168.20.42   0x0

VNNMAP
654321
0
1
";

fn show(o: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fake daemon whose log (stderr) is kept; stopped when dropped
/// (before its directory goes).
struct Fake {
    _daemon: FakeDaemon,
    dir: tempfile::TempDir,
}

impl Fake {
    fn start(state: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let daemon = FakeDaemon::start(d, &d.join("ctdbd.socket"), state, |c| {
            c.stderr(std::fs::File::create(d.join("fake.log")).unwrap());
        });
        Fake {
            _daemon: daemon,
            dir,
        }
    }

    fn run(&self, tool: &Path, args: &[&str], input: Option<&str>) -> Output {
        let d = self.dir.path();
        let mut child = Command::new(tool)
            .args(args)
            .env("CTDB_SOCKET", d.join("ctdbd.socket"))
            .env("CTDB_BASE", d)
            .env_remove("CTDB_TEST_MODE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake.log")).unwrap()
    }
}

#[test]
fn a_commit_refused_every_time_is_given_up() {
    let fake = Fake::start(&format!(
        "{STATE}\nCONTROLFAILS\n119 0 ERROR CTDB_CONTROL_TRANS3_COMMIT fake failure\n"
    ));
    let ours = our_bin("ctdb");
    let o = fake.run(&ours, &["attach", "p.tdb", "persistent"], None);
    assert!(o.status.success(), "{}", show(&o));
    let o = fake.run(
        &ours,
        &["-T", "120", "ptrans", "p.tdb"],
        Some("\"k\" \"v\"\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(o.stdout.is_empty(), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "Failed to commit transaction on db p.tdb\n\
             transaction commit on p.tdb refused {COMMIT_ATTEMPTS} times, giving up: \
             CTDB_CONTROL_TRANS3_COMMIT fake failure\n"
        )
    );
    // Exactly that many commits reached the daemon.
    let attempts = fake
        .log()
        .lines()
        .filter(|l| l.contains("Control 119 fake error"))
        .count();
    assert_eq!(attempts, COMMIT_ATTEMPTS as usize, "{}", fake.log());
    // The transaction's g_lock was let go: the next transaction gets it
    // (and is refused in turn, not left waiting for the lock).
    let o = fake.run(&ours, &["-T", "120", "pstore", "p.tdb", "k", "v"], None);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("giving up"),
        "{}",
        show(&o)
    );
}

/// Stores then deletes a new key and an existing key in one `ptrans` each;
/// `run(args, stdin)` runs one tool command and returns its output.
fn store_then_delete(what: &str, run: &dyn Fn(&[&str], Option<&str>) -> Output) {
    let ok = |args: &[&str], input: Option<&str>| {
        let o = run(args, input);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{what}: ctdb {args:?}: {}",
            show(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["attach", "std.tdb", "persistent"], None);
    ok(&["pstore", "std.tdb", "old", "value0"], None);
    let seq0 = ok(&["getdbseqnum", "std.tdb"], None);
    ok(
        &["ptrans", "std.tdb"],
        Some(
            "\"new\" \"value1\"\n\"new\" \"\"\n\"old\" \"value2\"\n\"old\" \"\"\n\"kept\" \"v\"\n",
        ),
    );
    assert_eq!(ok(&["pfetch", "std.tdb", "new"], None), "\n", "{what}");
    assert_eq!(ok(&["pfetch", "std.tdb", "old"], None), "\n", "{what}");
    assert_eq!(ok(&["pfetch", "std.tdb", "kept"], None), "v\n", "{what}");
    // One commit: the sequence number moved by one.
    let seq1 = ok(&["getdbseqnum", "std.tdb"], None);
    let num = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(num(&seq1), num(&seq0) + 1, "{what}: {seq0} then {seq1}");
}

#[test]
fn store_then_delete_on_our_fake_daemon() {
    require_reference();
    let ours = our_bin("ctdb");
    for tool in [Path::new(REFERENCE_TOOL), ours.as_path()] {
        let fake = Fake::start(STATE);
        store_then_delete(&format!("{} on our fake", tool.display()), &|a, i| {
            fake.run(tool, a, i)
        });
    }
}

fn on_cluster(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 2));
    let ours = our_bin("ctdb");
    for (k, tool) in [(0, Path::new(REFERENCE_TOOL)), (1, ours.as_path())] {
        let what = format!("{} on node {k}", tool.display());
        // Each tool on its own node and database.
        let run = |args: &[&str], input: Option<&str>| {
            let mut child = Command::new(tool)
                .args(
                    args.iter()
                        .map(|a| a.replace("std.tdb", &format!("std{k}.tdb"))),
                )
                .env("CTDB_TEST_MODE", "yes")
                .env("CTDB_BASE", c.base(k))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(input.unwrap_or_default().as_bytes())
                .unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        };
        store_then_delete(&what, &run);
        // The other node has the same records.
        let other = 1 - k;
        let db = format!("std{k}.tdb");
        poll_until(Duration::from_secs(30), "the other node's copy", || {
            let o = c.tool_with(&ours, other, &["pfetch", &db, "kept"]);
            (String::from_utf8_lossy(&o.stdout) == "v\n").then_some(())
        });
        let o = c.tool_with(&ours, other, &["pfetch", &db, "old"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "\n", "{what}");
    }
}

#[test]
fn store_then_delete_on_the_reference_cluster() {
    on_cluster(Daemon::Reference);
}

#[test]
fn store_then_delete_on_our_cluster() {
    on_cluster(Daemon::ours());
}
