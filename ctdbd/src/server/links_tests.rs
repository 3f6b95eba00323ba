//! Node links: what is sent to a node whose outgoing connection is not up.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ctdb_protocol::call::ReqCall;
use ctdb_protocol::keepalive::ReqKeepalive;
use ctdb_protocol::{Body, Header, Marshal as _, Operation, Packet};

use super::loop_tests::with_server;
use super::{Event, Server};
use crate::transport::OutLink;

fn packet(generation: u32, reqid: u32, body: Body) -> Bytes {
    let mut h = Header::new(body.operation(), 1, 0, reqid);
    h.generation = generation;
    Packet::new(h, body).encode().into()
}

fn call(generation: u32, reqid: u32) -> Bytes {
    packet(
        generation,
        reqid,
        Body::ReqCall(ReqCall {
            flags: 0,
            db_id: 0x1234,
            callid: 0,
            hopcount: 0,
            key: b"the key".to_vec(),
            calldata: Vec::new(),
        }),
    )
}

/// A call resent at a recovery's thaw to a node whose outgoing
/// connection is not up yet (it restarted a moment ago) reaches it when
/// the connection comes up, ahead of anything sent after; CTDB drops it,
/// which leaves the caller waiting for its call timeout. A keepalive is
/// not kept, nor is a call of a generation a recovery has ended.
#[test]
fn record_packets_wait_for_the_node_connection() {
    with_server(2, kept_until_connected);
}

fn kept_until_connected(s: &mut Server) {
    s.links.entry(1).or_default();
    // As after a recovery (a node that never recovered has the invalid
    // generation, whose packets no node serves and none is kept).
    s.core.node.vnnmap.generation = 0x5eed;

    let generation = s.generation();
    let kept = call(generation, 1);
    s.send_node(1, kept.clone());
    let keepalive = ReqKeepalive {
        version: 1,
        uptime: 1,
    };
    s.send_node(
        1,
        packet(generation, 2, Body::ReqKeepalive(Some(keepalive))),
    );
    s.send_node(1, call(generation.wrapping_add(1), 3));

    // The connection comes up: what was kept goes first, then new packets.
    let mut peer = link_up(s);
    let after = call(generation, 4);
    s.send_node(1, after.clone());
    s.flush();
    expect_exactly(&mut peer, &[&kept, &after]);

    // The connection goes down, and up again (a new one): what was sent
    // in between arrives on the new one.
    s.on_event(Event::NodeOutDown {
        pnn: 1,
        error: "reset".into(),
    });
    let between = call(generation, 5);
    s.send_node(1, between.clone());
    let mut peer = link_up(s);
    s.flush();
    expect_exactly(&mut peer, &[&between]);
}

/// A new outgoing connection to node 1 for `s`; returns its far end.
fn link_up(s: &mut Server) -> std::net::TcpStream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    out.set_nonblocking(true).unwrap();
    let (peer, _) = listener.accept().unwrap();
    let link = OutLink::new(Arc::new(tokio::net::TcpStream::from_std(out).unwrap()));
    s.on_event(Event::NodeOutUp { pnn: 1, link });
    peer
}

/// `peer` receives exactly `want`, in order, and nothing more.
fn expect_exactly(peer: &mut std::net::TcpStream, want: &[&Bytes]) {
    let want: Vec<u8> = want.iter().flat_map(|b| b.iter().copied()).collect();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = vec![0u8; want.len()];
    peer.read_exact(&mut got)
        .expect("the packets reach the node");
    assert_eq!(got, want, "these packets in this order");
    assert_eq!(Header::pull(&got).unwrap().0.operation, Operation::ReqCall);
    peer.set_nonblocking(true).unwrap();
    let mut more = [0u8; 64];
    assert!(
        peer.read(&mut more).is_err(),
        "nothing else is sent (no keepalive, no call of a past generation)"
    );
}
