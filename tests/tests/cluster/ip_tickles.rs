//! TCP connection tickles (issue 19), on the reference cluster and on
//! ours, in the namespaces of `ipf`: a client in a namespace of its own
//! (`Network::client`, 192.0.2.200) holds a TCP connection to a public
//! address; the server it talks to (`ctdb-tickle-server`, on the node
//! hosting the address) registers it with `TCP_CLIENT` as Samba's smbd
//! does, and every node must list it at once (`TCP_ADD`, not the
//! periodic tickle update). When the address moves, the client's
//! connection must be reset within 2 s of the takeover (the new host's
//! tickle ACK, the client's answer, the new host's reset), not left to
//! time out:
//!
//! * the host is killed (SIGKILL, its link taken down, as a dead
//!   machine's);
//! * the host is disabled (`ctdb disable`: it releases the address and
//!   is still up).
//!
//! "The takeover" is when the new host logged that it takes the address
//! over; both delays are printed side by side.

use crate::ipf;

use std::io::BufRead;
use std::time::Duration;

use ctdb_tests::{Cluster, Daemon, our_bin, poll_until};
use ipf::{
    KEEPALIVE_INTERVAL, KEEPALIVE_LIMIT, NODES, Reaped, keep_logs, options, tool, wait_placed,
    wait_spread,
};

/// A client connection to `ip` held through the cluster's events: the
/// server on `host` registered it with `TCP_CLIENT`.
struct Held {
    ip: String,
    _server: Reaped,
    _client: Reaped,
    /// The client's next line: `reset T`, `closed T` or `error E T` (T in
    /// seconds since the epoch) when its connection ends.
    end: std::sync::mpsc::Receiver<String>,
}

/// Starts the test server on `host` for `ip`, connects the client
/// namespace's client to it, and waits until every node lists the
/// connection.
fn hold(c: &Cluster, client: &ctdb_tests::netns::ClientNs, host: usize, ip: &str) -> Held {
    let port = 4445;
    let mut srv = c
        .net()
        .command_in(host, our_bin("ctdb-test-client"))
        .arg("ctdb-tickle-server")
        .arg(c.socket(host))
        .arg(format!("{ip}:{port}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut srv_lines = std::io::BufReader::new(srv.stdout.take().unwrap()).lines();
    let srv = Reaped(srv);
    let first = srv_lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(first, "listening", "the test server did not start");
    let cl = format!(
        "import socket,time\ns=socket.create_connection(('{ip}',{port}),timeout=5)\ns.settimeout(None)\nprint(s.getsockname()[1],flush=True)\ntry:\n  d=s.recv(1); print('closed',time.time(),flush=True)\nexcept ConnectionResetError:\n  print('reset',time.time(),flush=True)\nexcept OSError as e:\n  print('error',e,time.time(),flush=True)\n"
    );
    let mut cli = client
        .command("python3")
        .args(["-c", &cl])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    let cli = Reaped(cli);
    let cport = lines
        .next()
        .and_then(|l| l.ok())
        .expect("the client's port (did it connect?)");
    let conn = format!("{}:{cport}", client.ip());
    let registered = srv_lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(
        registered,
        format!("registered {conn}"),
        "TCP_CLIENT on node {host}"
    );
    // The host tells every node at once (TCP_ADD); the periodic update
    // (TickleUpdateInterval) is left at its 20 s.
    poll_until(
        Duration::from_secs(5),
        "the connection in every node's tickle list",
        || {
            (0..NODES)
                .all(|k| {
                    String::from_utf8_lossy(&c.tool(k, &["gettickles", ip]).stdout).contains(&conn)
                })
                .then_some(())
        },
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next().and_then(|l| l.ok()).unwrap_or_default());
    });
    Held {
        ip: ip.to_owned(),
        _server: srv,
        _client: cli,
        end: rx,
    }
}

/// Waits for `held`'s client to be reset; returns the seconds from
/// `new_host` logging the takeover of its address to the reset (negative
/// when the old host reset it before, as a releasing node does).
fn reset_after_takeover(c: &Cluster, held: &Held, new_host: usize, what: &str) -> f64 {
    let line = held
        .end
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    let mut f = line.split_whitespace();
    let kind = f.next().unwrap_or_default().to_owned();
    let at: f64 = f.last().and_then(|t| t.parse().ok()).unwrap_or(0.0);
    if kind != "reset" {
        keep_logs(c);
    }
    assert_eq!(
        kind,
        "reset",
        "{what}: the client's connection to {} was not reset within 10 s (got {line:?})\nlogs:\n{}",
        held.ip,
        c.log_tails()
    );
    let taken = ipf::takeover_logged(c, new_host, &held.ip)
        .unwrap_or_else(|| panic!("node {new_host} logged no takeover of {}", held.ip));
    let after = at - taken;
    assert!(
        after <= 2.0,
        "{what}: reset {after:.2} s after node {new_host} took {} over",
        held.ip
    );
    after
}

/// One cluster: a connection to an address of node 1, which is disabled;
/// then (node 1 enabled again) one to an address of node 2, which is
/// killed. Returns both delays.
fn tickle_scenario(daemon: Daemon) -> (f64, f64) {
    let c = Cluster::start(options(daemon));
    let client = c.net().client();
    let all = [0, 1, 2];
    let on = |p: &std::collections::BTreeMap<String, usize>, k: usize| {
        p.iter()
            .find(|(_, h)| **h == k)
            .map(|(i, _)| i.clone())
            .unwrap()
    };

    let (_, p) = wait_spread(&c, Duration::from_secs(60), "placement", &all);
    let held = hold(&c, &client, 1, &on(&p, 1));
    tool(&c, 1, &["disable"]);
    let (_, p) = wait_placed(
        &c,
        Duration::from_secs(10),
        "node 1's addresses moved on disable",
        &all,
        &[1],
    );
    let disabled = reset_after_takeover(&c, &held, p[&held.ip], "disable");
    drop(held);
    tool(&c, 1, &["enable"]);

    let (_, p) = wait_spread(&c, Duration::from_secs(30), "placement after enable", &all);
    let held = hold(&c, &client, 2, &on(&p, 2));
    // No takeover run in flight when node 2 dies (were it the leader, the
    // others would hold runs for the 60 s it asked): see ip_failover.rs.
    tool(&c, 0, &["ipreallocate"]);
    c.kill(2);
    let _ = std::process::Command::new("ip")
        .args(["-n", &c.net().ns(2), "link", "set", "eth0", "down"])
        .status();
    let limit = Duration::from_secs(2 * KEEPALIVE_INTERVAL * KEEPALIVE_LIMIT + 5);
    let (_, p) = wait_placed(
        &c,
        limit,
        "the dead host's addresses elsewhere",
        &[0, 1],
        &[],
    );
    let killed = reset_after_takeover(&c, &held, p[&held.ip], "kill -9");
    (disabled, killed)
}

#[test]
fn tickles_reset_clients_reference_and_ours() {
    let (r, o) = ipf::both(tickle_scenario);
    let get = |x: &Option<std::thread::Result<(f64, f64)>>| {
        x.as_ref().and_then(|r| r.as_ref().ok()).copied()
    };
    let (rv, ov) = (get(&r), get(&o));
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.2}"));
    println!("client reset after takeover (s)   reference   ours");
    println!(
        "{:<33} {:>9} {:>6}",
        "ctdb disable of the host",
        secs(rv.map(|v| v.0)),
        secs(ov.map(|v| v.0))
    );
    println!(
        "{:<33} {:>9} {:>6}",
        "kill -9 of the host",
        secs(rv.map(|v| v.1)),
        secs(ov.map(|v| v.1))
    );
    ipf::rethrow([("the reference daemon", r), ("our daemon", o)]);
}
