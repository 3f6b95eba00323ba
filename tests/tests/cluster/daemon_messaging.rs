//! Messaging through the daemons: srvid registration, delivery on the
//! same node, to another node and by broadcast, deregistration, and
//! `CHECK_PID_SRVID`. Against our daemon and the reference.

use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::header::{CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};
use tokio::sync::mpsc::UnboundedReceiver;

const SRVID: u64 = 0xAE00_0000_0000_1234;

async fn next(rx: &mut UnboundedReceiver<ctdb_client::Message>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("message not delivered")
        .expect("connection closed")
        .data
}

async fn nothing(rx: &mut UnboundedReceiver<ctdb_client::Message>) {
    let r = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(r.is_err(), "unexpected message: {r:?}");
}

fn messaging(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = Client::connect(c.socket(0)).await.unwrap();
        let b = Client::connect(c.socket(1)).await.unwrap();
        let d = Client::connect(c.socket(2)).await.unwrap();
        let mut rb = b.register_srvid(SRVID).await.unwrap();
        let mut rd = d.register_srvid(SRVID).await.unwrap();
        let mut ra = a.register_srvid(SRVID).await.unwrap();

        // To one other node.
        a.send_message(1, SRVID, b"to node 1").unwrap();
        assert_eq!(next(&mut rb).await, b"to node 1");
        // On the same node.
        b.send_message(CTDB_CURRENT_NODE, SRVID, b"local").unwrap();
        assert_eq!(next(&mut rb).await, b"local");
        // Broadcasts reach every node, the sender's own included.
        for dest in [CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED] {
            a.send_message(dest, SRVID, b"everyone").unwrap();
            assert_eq!(next(&mut ra).await, b"everyone");
            assert_eq!(next(&mut rb).await, b"everyone");
            assert_eq!(next(&mut rd).await, b"everyone");
        }
        nothing(&mut rb).await;

        // CHECK_PID_SRVID knows our registration by pid, on our node only.
        let me = std::process::id() as i32;
        assert!(b.check_pid_srvid(1, me, SRVID).await.unwrap());
        assert!(!b.check_pid_srvid(1, me, SRVID + 1).await.unwrap());
        // Deregistered: no longer delivered, no longer found.
        b.deregister_srvid(SRVID).await.unwrap();
        d.deregister_srvid(SRVID).await.unwrap();
        a.deregister_srvid(SRVID).await.unwrap();
        let mut other = b.register_srvid(SRVID + 1).await.unwrap();
        assert!(!b.check_pid_srvid(1, me, SRVID).await.unwrap());
        a.send_message(1, SRVID, b"nobody").unwrap();
        a.send_message(1, SRVID + 1, b"somebody").unwrap();
        assert_eq!(next(&mut other).await, b"somebody");
        // A process that is our client exists; a made-up one does not.
        assert!(b.process_exists(1, me).await.unwrap());
        assert!(!b.process_exists(1, 0x3fff_fff0).await.unwrap());
        // The daemon is not a client of its own.
        let daemon = c.pid(1).expect("node 1's pid");
        assert!(
            !b.process_exists(1, daemon).await.unwrap(),
            "PROCESS_EXISTS of the daemon's own pid"
        );
    });
}

#[test]
fn messages_through_our_daemons() {
    messaging(Daemon::Ours(our_bin("ctdbd")));
}

#[test]
fn messages_through_reference_daemons() {
    messaging(Daemon::Reference);
}
