//! The opt-in Prometheus endpoint (issue 22, `ctdbd/src/metrics.rs`):
//! node 0 of a 3-node cluster of ours gets `[ctdb-rs] metrics address`;
//! while a client workload runs on every node, `/metrics` answers in the
//! OpenMetrics text format, its counters move between scrapes, its node
//! flags follow `ctdb status` (a killed node shows as disconnected), and
//! other paths and methods are refused. The other nodes, without the
//! option, serve nothing. (The reference has no such endpoint: there is
//! nothing to compare with but its own tool's view of our daemon.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ctdb_tests::workload::Workload;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until};

const PORT: u16 = 9779;
const DB: &str = "metrics.tdb";

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
    text.push_str(&format!("[ctdb-rs]\n\tmetrics address = {}\n", addr(0)));
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
    ] {
        let (a, b) = (must(&first, sample), must(&second, sample));
        assert!(b > a, "{sample}: {a} then {b}");
    }
    load.stop();

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
