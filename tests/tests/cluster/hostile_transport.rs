//! Hostile peers on the node transport (port 4379): a connection from a
//! connected node's address is refused while the node's own link is up,
//! whatever it sends; the real link keeps working and the cluster stays
//! healthy. On our daemon also: a link whose packets claim another node,
//! garbage, or silence is closed with a log line naming the peer. (Not on
//! the reference: CTDB 4.17.12 aborts with "Bad talloc magic value -
//! access after free" when a connection in a down node's place sends a
//! packet with a wrong magic.)

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::keepalive::ReqKeepalive;
use ctdb_protocol::types::CTDB_RECOVERY_ACTIVE;
use ctdb_protocol::{Body, ControlRequest, Header, Operation, Packet, ReqControl, ReqMessage};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

const SRVID: u64 = 0xAE00_0000_0000_1515;
const LIMIT: Duration = Duration::from_secs(30);

/// A TCP connection to `to`:4379 made from address `from`.
fn connect_from(from: Ipv4Addr, to: Ipv4Addr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
        sock.connect(SocketAddr::new(IpAddr::V4(to), 4379))
            .await
            .unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Sends `bytes` (ignoring errors: the peer may have closed already) and
/// expects the daemon to close the connection.
fn expect_closed(mut s: TcpStream, bytes: &[u8], what: &str) {
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{what}: connection not closed: {r:?}"
    );
}

/// What an impersonator of node `src` sends node `dest`: a keepalive with
/// a wrong version and a long uptime (which makes a daemon that takes it
/// shut down), a recovery mode change, and a message for a local client.
fn attack(src: u32, dest: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let h = Header::new(Operation::ReqKeepalive, dest, src, 0);
    let k = ReqKeepalive {
        version: 0x0009_0001,
        uptime: 1_000_000,
    };
    out.extend(Packet::new(h, Body::ReqKeepalive(Some(k))).encode());
    let h = Header::new(Operation::ReqControl, dest, src, 4242);
    let mut req = ReqControl::new(ControlRequest::SetRecmode(CTDB_RECOVERY_ACTIVE));
    req.flags = ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
    out.extend(Packet::new(h, Body::ReqControl(req)).encode());
    let h = Header::new(Operation::ReqMessage, dest, src, 0);
    out.extend(
        Packet::new(
            h,
            Body::ReqMessage(ReqMessage::data(SRVID, b"forged".to_vec())),
        )
        .encode(),
    );
    out
}

fn generation(c: &Cluster, k: usize) -> String {
    let s = c.tool_ok(k, &["status"]);
    s.lines()
        .find(|l| l.starts_with("Generation:"))
        .unwrap_or_default()
        .to_owned()
}

/// Impersonating node 1 towards node 0 while node 1 is connected.
fn impersonation_is_refused(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A client on node 0 that must not get the forged message, and gets
    // the real one from node 1.
    let (_client0, mut rx) = rt.block_on(async {
        let cl = Client::connect(c.socket(0)).await.unwrap();
        let rx = cl.register_srvid(SRVID).await.unwrap();
        (cl, rx)
    });
    let gen_before = generation(&c, 0);

    for round in 0..3 {
        let s = connect_from(c.ip(1), c.ip(0));
        expect_closed(s, &attack(1, 0), &format!("impersonation {round}"));
    }

    // The real link from node 1 still carries messages.
    rt.block_on(async {
        let cl1 = Client::connect(c.socket(1)).await.unwrap();
        cl1.send_message(0, SRVID, b"real").unwrap();
        let m = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .expect("the real message never arrived")
            .expect("client closed");
        assert_eq!(m.data, b"real", "got a forged message: {:?}", m.data);
    });
    // Node 0 is up, not in recovery, in the same generation, and every node
    // is OK; no link went down.
    c.wait_healthy(LIMIT);
    assert_eq!(generation(&c, 0), gen_before, "{}", c.log_tails());
    let out = c.tool_ok(1, &["ping", "-n", "0"]);
    assert!(out.contains("response from 0"), "{out}");
    for k in 0..3 {
        let log = c.log_text(k);
        assert!(
            !log.contains("is dead") && !log.contains("mixed versions"),
            "node {k}:\n{}",
            c.log_tails()
        );
    }
    let log0 = c.log_text(0);
    assert!(
        log0.contains("Incoming queue active"),
        "refusal not logged:\n{}",
        c.log_tails()
    );
}

#[test]
fn impersonating_a_connected_node_is_refused_ours() {
    impersonation_is_refused(Daemon::ours());
}

#[test]
fn impersonating_a_connected_node_is_refused_reference() {
    impersonation_is_refused(Daemon::Reference);
}

/// With node 2 down, connections from its address are accepted, but one
/// whose packet claims to be node 1, one that sends garbage, and one that
/// sends nothing are each closed with a log line naming the peer; node 2
/// comes back afterwards.
#[test]
fn bad_links_are_closed_and_named_ours() {
    require_reference();
    let c = Cluster::start(
        ClusterOptions::new(Daemon::ours(), 3)
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 4),
    );
    c.kill(2);
    c.wait_status(LIMIT, 2, &[2]);

    // A packet claiming to be from node 1 on node 2's link.
    let s = connect_from(c.ip(2), c.ip(0));
    let port = s.local_addr().unwrap().port();
    let h = Header::new(Operation::ReqControl, 0, 1, 7);
    let p = Packet::new(h, Body::ReqControl(ReqControl::new(ControlRequest::GetPnn))).encode();
    expect_closed(s, &p, "a packet from the wrong node");
    let peer = format!("node 2 ({}:{port})", c.ip(2));
    poll_until(LIMIT, "the wrong source logged", || {
        c.log_text(0)
            .lines()
            .any(|l| l.contains(&peer) && l.contains("claims to be from node 1"))
            .then_some(())
    });

    // Garbage (a wrong magic).
    let s = connect_from(c.ip(2), c.ip(0));
    let port = s.local_addr().unwrap().port();
    let mut p = Packet::new(
        Header::new(Operation::ReqControl, 0, 2, 7),
        Body::ReqControl(ReqControl::new(ControlRequest::GetPnn)),
    )
    .encode();
    p[4..8].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    expect_closed(s, &p, "garbage");
    let peer = format!("node 2 ({}:{port})", c.ip(2));
    poll_until(LIMIT, "the garbage logged", || {
        c.log_text(0)
            .lines()
            .any(|l| l.contains(&peer) && l.contains("magic"))
            .then_some(())
    });

    // Silence: closed after the keepalive limit (4 s here).
    let s = connect_from(c.ip(2), c.ip(0));
    let port = s.local_addr().unwrap().port();
    expect_closed(s, &[], "a silent connection");
    let peer = format!("node 2 ({}:{port})", c.ip(2));
    assert!(
        c.log_text(0)
            .lines()
            .any(|l| l.contains(&peer) && l.contains("nothing received")),
        "{}",
        c.log_tails()
    );

    // The real node 2 comes back.
    c.restart(2);
    c.wait_healthy(Duration::from_secs(90));
}
