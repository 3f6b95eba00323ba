//! Our client's g_lock and CTDB's own clients on the same lock (issue
//! 14), on the reference daemon and ours with the same code.
//!
//! Our client queues its g_lock waiters in a record of their own, so the
//! lock record holds holders only, as CTDB's client library expects
//! (every entry there is a holder to it). Here 2 of our clients per node
//! increment one key of a persistent database in transactions while, on
//! every node, the reference `ctdb ptrans` stores another key of the same
//! database and `ctdb pfetch` reads it, in loops, all at once: the same
//! g_lock (`transaction_db_0x<id>`) for everyone. Every one of them must
//! get through again and again: each of our clients commits, and each
//! reference loop completes at least `MIN_TOOL_RUNS` commands, none of
//! which fails. (When our waiters sat in the lock record, CTDB's clients
//! saw them as holders: a reference `pfetch` gave up after 120 s.)

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ctdb_client::{Client, DbKind};
use ctdb_tests::contend::Contender;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

const DB: &str = "glock_mix.tdb";
const SECS: u64 = 15;
const OURS_PER_NODE: usize = 2;
/// Runs each reference command loop must complete.
const MIN_TOOL_RUNS: usize = 3;

/// One run of the reference tool on node `k`, with `input` on stdin.
fn ref_tool(c: &Cluster, k: usize, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("/usr/bin/ctdb")
        .args(args)
        .env("CTDB_TEST_MODE", "yes")
        .env("CTDB_BASE", c.base(k))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = child.stdin.take().unwrap();
    let _ = i.write_all(input.as_bytes());
    drop(i);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What a reference command loop did.
#[derive(Debug)]
struct Loop {
    what: String,
    ok: usize,
    failures: Vec<String>,
    longest: Duration,
}

fn value(v: &[u8]) -> u64 {
    v.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

fn mixed(daemon: Daemon) {
    require_reference();
    let c = Arc::new(Cluster::start(ClusterOptions::new(daemon, 3)));
    let name = match c.daemon() {
        Daemon::Reference => "reference",
        _ => "ours",
    };
    // The database exists everywhere before anyone starts.
    c.tool_ok(0, &["attach", DB, "persistent"]);
    let secs = SECS.to_string();
    let mut ours: Vec<Contender> = (0..3 * OURS_PER_NODE)
        .map(|i| Contender::start(&c, i % 3, &["ptrans", DB, "hot", &secs]))
        .collect();
    for o in &mut ours {
        o.expect("ready");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for k in 0..3 {
        for (kind, args, input) in [
            (
                "ptrans",
                vec!["ptrans".to_owned(), DB.to_owned()],
                format!("\"ref{k}\" \"v\"\n"),
            ),
            (
                "pfetch",
                vec!["pfetch".to_owned(), DB.to_owned(), "ref0".to_owned()],
                String::new(),
            ),
        ] {
            let c = c.clone();
            let stop = stop.clone();
            loops.push(std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut l = Loop {
                    what: format!("reference {kind} on node {k}"),
                    ok: 0,
                    failures: Vec::new(),
                    longest: Duration::ZERO,
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (ok, out) = ref_tool(&c, k, &args, &input);
                    l.longest = l.longest.max(t.elapsed());
                    if ok {
                        l.ok += 1;
                    } else {
                        l.failures.push(out);
                    }
                }
                l
            }));
        }
    }
    for o in &mut ours {
        o.go();
    }
    let counts: Vec<u64> = ours.into_iter().map(Contender::count).collect();
    stop.store(true, Ordering::Relaxed);
    let loops: Vec<Loop> = loops.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("{name}: our clients' commits {counts:?}");
    for l in &loops {
        eprintln!(
            "{name}: {}: {} runs, {} failed, longest {:?}",
            l.what,
            l.ok,
            l.failures.len(),
            l.longest
        );
    }
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            n > 0,
            "{name}: our client {i} committed nothing: {counts:?}"
        );
    }
    for l in &loops {
        assert!(
            l.failures.is_empty(),
            "{name}: {} failed: {:?}",
            l.what,
            l.failures
        );
        assert!(
            l.ok >= MIN_TOOL_RUNS,
            "{name}: {} completed only {} runs in {SECS} s",
            l.what,
            l.ok
        );
    }
    // Our increments all made it, on every node.
    let total: u64 = counts.iter().sum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for k in 0..3 {
            let cl = Client::connect(c.socket(k)).await.unwrap();
            let d = cl.attach(DB, DbKind::Persistent, 0).await.unwrap();
            let v = d.fetch_local(b"hot").unwrap().map_or(0, |(_, d)| value(&d));
            assert_eq!(v, total, "{name}: node {k}'s value");
        }
    });
}

#[test]
fn our_glock_and_ctdb_tools_share_a_lock_ours() {
    mixed(Daemon::ours());
}

#[test]
fn our_glock_and_ctdb_tools_share_a_lock_reference() {
    mixed(Daemon::Reference);
}
