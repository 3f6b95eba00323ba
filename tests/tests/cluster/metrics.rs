//! The opt-in Prometheus endpoint (issue 22, `ctdbd/src/metrics.rs`):
//! node 0 of a 3-node cluster of ours gets a `[metrics]` section with its
//! `address`; while a client workload runs on every node (persistent
//! transactions, then fetch-locks of one volatile record from nodes 0 and
//! 1, and a record held by a client on node 0 while node 1 asks for it),
//! `/metrics` answers in the OpenMetrics text format, its counters move
//! between scrapes (calls, record-lock waits, per-database calls,
//! lock waits and migrations, the lock-wait, control-latency and recovery
//! histograms), its node flags follow `ctdb status` (a killed node shows
//! as disconnected), and other paths and methods are refused. The other
//! nodes, without the option, serve nothing. (The reference has no such
//! endpoint: there is nothing to compare with but its own tool's view of
//! our daemon.) The reference daemon starts with the same `[metrics]`
//! section in its `ctdb.conf` (it ignores sections it does not know), so
//! the setting can stay when a node goes back to CTDB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use ctdb_tests::workload::Workload;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference, test_client};

const PORT: u16 = 9779;
const DB: &str = "metrics.tdb";
const VOL: &str = "metrics_vol.tdb";

/// A `ctdb-contend` process on node `k`, once it said "ready" (or, for
/// `hold`, "locked"); `go` starts it.
fn contend(
    c: &Cluster,
    k: usize,
    args: &[&str],
    first: &str,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = test_client("ctdb-contend")
        .arg(c.socket(k))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert!(l.starts_with(first), "ctdb-contend said {l:?}");
    (child, out)
}

fn go(child: &mut Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

fn finish((mut child, _): (Child, BufReader<std::process::ChildStdout>)) {
    assert!(child.wait().unwrap().success(), "ctdb-contend failed");
}

/// The sum of every sample of `name` (any labels).
fn sum_of(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One HTTP request; the status line and the body.
fn http(addr: SocketAddr, request: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    Ok((head.to_owned(), body.to_owned()))
}

fn scrape(addr: SocketAddr) -> String {
    let (head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The value of the sample `name` (with its labels, as written).
fn value(body: &str, sample: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn must(body: &str, sample: &str) -> f64 {
    value(body, sample).unwrap_or_else(|| panic!("no {sample} in\n{body}"))
}

#[test]
fn metrics_endpoint_serves_node_state_and_moving_counters() {
    let c = Cluster::start(
        ClusterOptions::new(Daemon::ours(), 3)
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3),
    );
    let addr = |k: usize| SocketAddr::new(c.ip(k).into(), PORT);
    // Off by default: nothing listens.
    for k in 0..3 {
        assert!(
            TcpStream::connect_timeout(&addr(k), Duration::from_secs(2)).is_err(),
            "node {k} serves metrics without being asked to"
        );
    }
    // Node 0 with the option, started again on its directories.
    c.kill(0);
    let conf = c.base(0).join("ctdb.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("[metrics]\n\taddress = {}\n", addr(0)));
    std::fs::write(&conf, text).unwrap();
    c.restart(0);
    c.wait_healthy(Duration::from_secs(90));
    assert!(
        c.log_text(0)
            .contains(&format!("Serving metrics on http://{}/metrics", addr(0))),
        "{}",
        c.log_tails()
    );

    c.tool_ok(0, &["attach", DB, "persistent"]);
    let mut load = Workload::start((0..3).map(|k| c.socket(k)).collect(), DB, "m");
    poll_until(Duration::from_secs(60), "commits on every node", || {
        (0..3).all(|k| load.acked(k) > 0).then_some(())
    });

    let first = scrape(addr(0));
    println!("{first}");
    assert_eq!(must(&first, "ctdb_up"), 1.0, "{first}");
    assert_eq!(must(&first, "ctdb_pnn"), 0.0);
    assert_eq!(must(&first, "ctdb_recovery_mode"), 0.0);
    assert!(must(&first, "ctdb_recoveries_total") >= 1.0, "{first}");
    assert!(
        must(&first, "ctdb_databases{kind=\"persistent\"}") >= 1.0,
        "{first}"
    );
    // The workload's client, and this scrape's own connection.
    assert!(must(&first, "ctdb_clients") >= 2.0, "{first}");
    for p in 0..3 {
        for flag in ["disconnected", "unhealthy", "banned", "stopped"] {
            assert_eq!(
                must(
                    &first,
                    &format!("ctdb_node_flag{{pnn=\"{p}\",flag=\"{flag}\"}}")
                ),
                0.0,
                "node {p} {flag}\n{first}"
            );
        }
    }
    let generation = must(&first, "ctdb_generation");
    let status = c.tool_ok(0, &["status"]);
    assert!(
        status.contains(&format!("Generation:{generation}")),
        "{status}\n{first}"
    );

    // Counters move while the workload runs.
    let before = load.acked(0);
    poll_until(Duration::from_secs(30), "more commits", || {
        (load.acked(0) > before + 5).then_some(())
    });
    let second = scrape(addr(0));
    for sample in [
        "ctdb_client_requests_total{type=\"req_control\"}",
        "ctdb_packets_total{peer=\"client\",direction=\"received\"}",
        "ctdb_packets_total{peer=\"node\",direction=\"received\"}",
        "ctdb_childwrites_total",
    ] {
        let (a, b) = (must(&first, sample), must(&second, sample));
        assert!(b > a, "{sample}: {a} then {b}");
    }
    load.stop();

    // Record calls: one volatile record contended from nodes 0 and 1 (it
    // migrates), then held by a client on node 0 while node 1 asks for
    // it (node 0's daemon waits for the record lock).
    c.tool_ok(0, &["attach", VOL]);
    let mut procs: Vec<_> = [0, 0, 1, 1]
        .into_iter()
        .map(|k| contend(&c, k, &["fetch-lock", VOL, "hot", "2"], "ready"))
        .collect();
    for p in &mut procs {
        go(&mut p.0);
    }
    for p in procs {
        finish(p);
    }
    let holder = contend(&c, 0, &["hold", VOL, "held", "300"], "locked");
    let mut asker = contend(&c, 1, &["fetch-once", VOL, "held"], "ready");
    go(&mut asker.0);
    finish(holder);
    finish(asker);
    let third = scrape(addr(0));
    println!("{third}");
    for sample in [
        "ctdb_calls_total",
        "ctdb_lock_calls_total",
        "ctdb_lock_wait_seconds_count",
        "ctdb_control_duration_seconds_count",
    ] {
        let (a, b) = (sum_of(&second, sample), sum_of(&third, sample));
        assert!(b > a, "{sample}: {a} then {b}\n{third}");
    }
    let vol = format!("{{db=\"{VOL}\"}}");
    for series in [
        "ctdb_db_migrations_total",
        "ctdb_db_lock_calls_total",
        "ctdb_db_calls_total",
    ] {
        let sample = format!("{series}{vol}");
        assert!(must(&third, &sample) > 0.0, "{sample}\n{third}");
    }
    assert!(must(&third, &format!("ctdb_db_hot_key_count{vol}")) > 0.0);
    // Node 0 joined after the others: the recovery that took it in was
    // timed.
    assert!(must(&third, "ctdb_recovery_duration_seconds_count") >= 1.0);
    assert!(must(&third, "ctdb_last_recovery_duration_seconds") > 0.0);
    for peer in ["client", "node"] {
        must(&third, &format!("ctdb_queue_bytes{{peer=\"{peer}\"}}"));
    }

    // Other paths and methods.
    let (head, _) = http(addr(0), "GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http(addr(0), "POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let (head, _) = http(addr(0), "nonsense\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // A node that dies shows as disconnected.
    c.kill(2);
    poll_until(Duration::from_secs(30), "node 2 disconnected", || {
        let b = scrape(addr(0));
        (value(&b, "ctdb_node_flag{pnn=\"2\",flag=\"disconnected\"}") == Some(1.0)).then_some(())
    });
    // The daemon still serves its clients.
    c.tool_ok(0, &["pnn"]);
}

/// CTDB's daemon ignores sections of `ctdb.conf` it does not know: a
/// reference node with the `[metrics]` section starts and serves.
#[test]
fn reference_daemon_starts_with_a_metrics_section() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Reference, 1));
    c.kill(0);
    let conf = c.base(0).join("ctdb.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("[metrics]\n\taddress = {}:{PORT}\n", c.ip(0)));
    std::fs::write(&conf, text).unwrap();
    c.restart(0);
    c.wait_healthy(Duration::from_secs(90));
    c.tool_ok(0, &["pnn"]);
    // And serves no metrics, of course.
    let addr = SocketAddr::new(c.ip(0).into(), PORT);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}
