//! Tunnels (`TUNNEL_REGISTER`/`TUNNEL_DEREGISTER`, `REQ_TUNNEL`) between
//! clients of different nodes, the same code against the reference daemon,
//! ours, and a mixed cluster (ours with one reference node).
//!
//! The ring is CTDB's own tunnel test's layout (`ctdb/tests/src/
//! tunnel_test.c`, not shipped in Debian's package): the client on node
//! `k` sets up tunnel `CTDB_TUNNEL_TEST | k`, on which it sends to node
//! `k + 1`, and `CTDB_TUNNEL_TEST | (k - 1)`, on which it receives from node
//! `k - 1`. Every node sends a burst of numbered packets at once, then a
//! token goes round the ring; every packet must arrive, in order.

use std::time::Duration;

use ctdb_client::tunnel::tunnel_flags;
use ctdb_client::{Client, Tunnel, TunnelPacket};
use ctdb_protocol::header::{CTDB_BROADCAST_ALL, CTDB_CURRENT_NODE};
use ctdb_protocol::keepalive::CTDB_TUNNEL_TEST;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const NODES: usize = 3;
/// Packets each node sends in its burst.
const BURST: u32 = 2000;
/// Times the token goes round.
const ROUNDS: u32 = 100;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn next(t: &mut Tunnel, what: &str) -> TunnelPacket {
    tokio::time::timeout(Duration::from_secs(20), t.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 20 s"))
        .unwrap_or_else(|| panic!("{what}: connection closed"))
}

fn word(p: &TunnelPacket, i: usize) -> u32 {
    u32::from_le_bytes(p.data[4 * i..4 * i + 4].try_into().unwrap())
}

fn packet(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// One node's end of the ring.
struct End {
    pnn: u32,
    client: Client,
    send: Tunnel,
    recv: Tunnel,
}

/// The ring on a healthy cluster of `NODES`: bursts, then the token.
async fn ring(c: &Cluster) {
    let mut ends = Vec::new();
    for k in 0..NODES {
        let client = Client::connect(c.socket(k)).await.unwrap();
        let pnn = client.pnn();
        assert_eq!(pnn, k as u32);
        let prev = (pnn + NODES as u32 - 1) % NODES as u32;
        let send = client
            .tunnel_setup(CTDB_TUNNEL_TEST | u64::from(pnn))
            .await
            .unwrap();
        let recv = client
            .tunnel_setup(CTDB_TUNNEL_TEST | u64::from(prev))
            .await
            .unwrap();
        ends.push(End {
            pnn,
            client,
            send,
            recv,
        });
    }
    let next_of = |pnn: u32| (pnn + 1) % NODES as u32;

    // Bursts: every node sends BURST packets to the next one at once.
    for e in &ends {
        for seq in 0..BURST {
            e.send.send(next_of(e.pnn), &packet(&[e.pnn, seq])).unwrap();
        }
    }
    for e in &mut ends {
        let prev = (e.pnn + NODES as u32 - 1) % NODES as u32;
        for seq in 0..BURST {
            let p = next(&mut e.recv, &format!("node {} burst packet {seq}", e.pnn)).await;
            assert_eq!(p.tunnel_id, CTDB_TUNNEL_TEST | u64::from(prev));
            assert_eq!(
                (word(&p, 0), word(&p, 1)),
                (prev, seq),
                "node {} got a packet out of order or from the wrong node",
                e.pnn
            );
            assert_eq!(p.flags, tunnel_flags::REQUEST | tunnel_flags::NOREPLY);
            // CTDB's daemon writes a new header for its client: itself as
            // source, no reqid.
            assert_eq!(
                (p.srcnode, p.reqid),
                (e.pnn, 0),
                "header of node {}'s packet",
                e.pnn
            );
        }
        assert!(
            e.recv.try_recv().is_none(),
            "node {} got extra packets",
            e.pnn
        );
        // Nothing arrives on the sending tunnel: nobody sends on it to us.
        assert!(e.send.try_recv().is_none());
    }

    // The token: node 0 starts it, each node passes it on with the count
    // incremented, ROUNDS times round.
    ends[0].send.send(1, &packet(&[0])).unwrap();
    let mut expect = 0u32;
    'rounds: loop {
        for k in 0..NODES {
            let idx = (k + 1) % NODES;
            let e = &mut ends[idx];
            let p = next(&mut e.recv, &format!("token {expect} at node {idx}")).await;
            assert_eq!(word(&p, 0), expect, "token count at node {idx}");
            expect += 1;
            if expect == ROUNDS * NODES as u32 {
                break 'rounds;
            }
            e.send.send(next_of(e.pnn), &packet(&[expect])).unwrap();
        }
    }
    for e in ends {
        e.send.destroy().await.unwrap();
        e.recv.destroy().await.unwrap();
        drop(e.client);
    }
}

/// Registration rules and dropped packets, on nodes 0 and 1.
async fn rules(c: &Cluster) {
    const ID: u64 = CTDB_TUNNEL_TEST | 0x77;
    let a = Client::connect(c.socket(0)).await.unwrap();
    let b = Client::connect(c.socket(1)).await.unwrap();
    let b2 = Client::connect(c.socket(1)).await.unwrap();
    let mut tb = b.tunnel_setup(ID).await.unwrap();
    // One client per id per node: another client of node 1 is refused.
    assert!(b2.tunnel_setup(ID).await.is_err(), "second owner of an id");
    // Only the owner deregisters.
    let mut req = ctdb_protocol::ReqControl::new(ctdb_protocol::ControlRequest::TunnelDeregister);
    req.srvid = ID;
    let r = b2.control_raw(CTDB_CURRENT_NODE, req).await.unwrap();
    assert_ne!(r.status, 0, "deregistered by a client that does not own it");

    // Dropped by node 0: the id is not registered there (by anyone).
    a.tunnel_send(1, ID, tunnel_flags::REQUEST, b"unregistered")
        .unwrap();
    // Dropped: broadcasts, and node numbers past the nodes file.
    let ta = a.tunnel_setup(ID).await.unwrap();
    ta.send(CTDB_BROADCAST_ALL, b"broadcast").unwrap();
    ta.send(NODES as u32 + 5, b"no such node").unwrap();
    // Delivered: same path, after the dropped ones.
    ta.send(1, b"registered").unwrap();
    let p = next(&mut tb, "registered packet").await;
    assert_eq!(
        p.data, b"registered",
        "a packet that should have been dropped arrived"
    );
    // To the sender's own node (a client there owns the id: itself).
    let mut ta = ta;
    ta.send(0, b"loop").unwrap();
    assert_eq!(next(&mut ta, "packet to own node").await.data, b"loop");

    // Deregistered: the id is free for another client of the node.
    tb.destroy().await.unwrap();
    let tb2 = b2.tunnel_setup(ID).await.unwrap();
    tb2.destroy().await.unwrap();
    ta.destroy().await.unwrap();

    // A client that goes away loses its ids: a connection registers id 0
    // and closes; then another client can have it.
    let r = ctdb_tests::raw_control(&c.socket(1), 152, &[]);
    assert_eq!(r.status, 0, "TUNNEL_REGISTER on a fresh connection");
    let mut freed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while freed.is_none() && tokio::time::Instant::now() < deadline {
        match b2.tunnel_setup(0).await {
            Ok(t) => freed = Some(t),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let t0 = freed.expect("id 0 still registered 10 s after its client went away");
    t0.destroy().await.unwrap();
}

fn run(c: &Cluster) {
    let rt = runtime();
    rt.block_on(ring(c));
    rt.block_on(rules(c));
}

#[test]
fn tunnel_ring_reference() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Reference, NODES));
    run(&c);
}

#[test]
fn tunnel_ring_ours() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Ours(our_bin("ctdbd")), NODES));
    run(&c);
}

/// Ours on nodes 0 and 1, the reference on node 2: packets cross between
/// the two kinds of daemon both ways.
#[test]
fn tunnel_ring_mixed() {
    require_reference();
    let c = Cluster::start(
        ClusterOptions::new(Daemon::Ours(our_bin("ctdbd")), NODES)
            .recovery_helper("/usr/libexec/ctdb/ctdb_recovery_helper"),
    );
    c.kill(2);
    c.restart_with(2, &Daemon::Reference);
    c.wait_healthy(Duration::from_secs(120));
    poll_until(
        Duration::from_secs(90),
        "all three nodes in one generation",
        || {
            (0..NODES)
                .all(|k| {
                    let s = c.tool_ok(k, &["status"]);
                    s.contains("Size:3") && s.matches(" OK").count() == 3
                })
                .then_some(())
        },
    );
    run(&c);
}
