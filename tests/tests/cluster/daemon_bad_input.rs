//! Bad input is contained: garbage, truncated, oversized, wrong-magic and
//! out-of-protocol packets from a client, and a TCP connection from an
//! address not in the nodes file, each make the daemon log and close that
//! one connection; every other client and node carries on.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ctdb_protocol::types::capabilities;
use ctdb_protocol::{Body, ControlRequest, Header, Operation, Packet, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const MAGIC: u32 = 0x4354_4442;

fn header(length: u32, magic: u32, version: u32, op: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [length, magic, version, 0, op, 0xF000_0001, 0, 1] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// Sends `bytes` on a fresh connection (then, if `half_close`, ends the
/// sending side) and expects the daemon to close the connection.
fn expect_closed(c: &Cluster, what: &str, bytes: &[u8], half_close: bool) {
    let mut s = UnixStream::connect(c.socket(0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = [0u8; 256];
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{what}: connection not closed: {r:?}"
    );
}

/// The cluster still serves: a client that stayed connected throughout
/// gets answers, the tool gets answers, all nodes are OK.
fn still_serving(c: &Cluster, good: &mut UnixStream, what: &str) {
    let mut req = ReqControl::new(ControlRequest::GetCapabilities);
    req.client_id = 0;
    let p = Packet::new(
        Header::new(Operation::ReqControl, 0xF000_0001, 0, 77),
        Body::ReqControl(req),
    );
    good.write_all(&p.encode()).unwrap();
    let mut len = [0u8; 4];
    good.read_exact(&mut len).unwrap();
    let n = u32::from_le_bytes(len) as usize;
    let mut rest = vec![0u8; n - 4];
    good.read_exact(&mut rest).unwrap();
    let caps = u32::from_le_bytes(rest[40..44].try_into().unwrap());
    assert_eq!(
        caps & capabilities::DEFAULT,
        capabilities::DEFAULT,
        "after {what}"
    );
    let out = c.tool_ok(0, &["ping"]);
    assert!(out.starts_with("response from 0"), "after {what}: {out}");
}

#[test]
fn bad_client_packets_and_unknown_nodes_are_contained() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Ours(our_bin("ctdbd")), 3));
    let mut good = UnixStream::connect(c.socket(0)).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut garbage = b"this is not a ctdb packet at all, not even close....".to_vec();
    garbage.extend_from_slice(&[0xAB; 64]);
    let mut truncated = header(64, MAGIC, 1, 7);
    truncated.truncate(20);
    let oversized = header(0x7FFF_FFF8, MAGIC, 1, 7);
    let wrong_magic = header(32, 0xDEAD_BEEF, 1, 7);
    let wrong_version = header(32, MAGIC, 2, 7);
    let unknown_op = header(32, MAGIC, 1, 99);
    let too_short = header(8, MAGIC, 1, 7);
    let reply_from_client = header(32, MAGIC, 1, 8);
    for (what, bytes, half) in [
        ("garbage", &garbage, false),
        ("a truncated packet", &truncated, true),
        ("an oversized packet", &oversized, false),
        ("a wrong magic", &wrong_magic, false),
        ("a wrong version", &wrong_version, false),
        ("an unknown operation", &unknown_op, false),
        ("a length shorter than a header", &too_short, false),
        ("a reply sent by a client", &reply_from_client, false),
    ] {
        expect_closed(&c, what, bytes, half);
        still_serving(&c, &mut good, what);
    }

    // A control whose data does not decode gets an error reply; the
    // connection stays usable.
    {
        let mut s = UnixStream::connect(c.socket(0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut pkt = header(72, MAGIC, 1, 7);
        pkt[28..32].copy_from_slice(&5u32.to_le_bytes());
        let mut body = Vec::new();
        body.extend_from_slice(&91u32.to_le_bytes()); // GET_NODEMAP
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&8u32.to_le_bytes()); // 8 bytes of data it takes none of
        body.extend_from_slice(&[1; 8]);
        body.extend_from_slice(&[0; 4]); // padding to the length field's 72
        pkt.extend_from_slice(&body);
        s.write_all(&pkt).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut rest = vec![0u8; u32::from_le_bytes(len) as usize - 4];
        s.read_exact(&mut rest).unwrap();
        let reqid = u32::from_le_bytes(rest[24..28].try_into().unwrap());
        let status = i32::from_le_bytes(rest[28..32].try_into().unwrap());
        assert_eq!((reqid, status), (5, -1), "malformed control not refused");
        still_serving(&c, &mut good, "a malformed control");
    }

    // A node connection from an address not in the nodes file.
    let ip0 = c.ip(0);
    let stranger = Ipv4Addr::new(ip0.octets()[0], ip0.octets()[1], ip0.octets()[2], 200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(IpAddr::V4(stranger), 0)).unwrap();
        let mut s = sock
            .connect(SocketAddr::new(IpAddr::V4(ip0), 4379))
            .await
            .unwrap();
        let _ = s.write_all(&header(32, MAGIC, 1, 9)).await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("stranger's connection left open");
        assert!(
            matches!(r, Ok(0)) || r.is_err(),
            "stranger's connection not closed: {r:?}"
        );
    });
    poll_until(Duration::from_secs(10), "the refusal in the log", || {
        c.log_text(0)
            .contains(&format!("Refused connection from unknown node {stranger}"))
            .then_some(())
    });
    still_serving(&c, &mut good, "an unknown node");

    // Each bad client was logged; no node was disturbed.
    let log = c.log_text(0);
    for needle in [
        "bad packet length",
        "bad magic",
        "unsupported protocol version",
    ] {
        assert!(
            log.contains(needle),
            "no log line with \"{needle}\":\n{}",
            c.log_tails()
        );
    }
    c.wait_healthy(Duration::from_secs(30));
    for k in 0..3 {
        assert!(!c.log_text(k).contains("is dead"), "{}", c.log_tails());
    }
}
