//! The loop's turns: what a turn produces is written before the loop
//! waits for the next event.

use std::io::Read;
use std::os::unix::net::UnixStream as StdUnixStream;

use bytes::BytesMut;
use ctdb_protocol::{Header, Marshal as _, Operation};

use super::Server;
use super::messages::message_bytes;

/// A packet this node sent itself (here a message for a srvid a local
/// client registered) reaches the client in the turn that handles it:
/// before, it stayed in the client's queue until something else woke
/// the loop (the 100 ms tick on a quiet node), which is where a keyed
/// commit whose last reply was its own node's waited.
#[test]
fn what_a_self_addressed_packet_produces_is_written_in_its_turn() {
    with_server(1, a_self_addressed_packet);
}

/// Runs `f` on node 0 of a detached server of `nodes` nodes (all on
/// 127.0.0.1), inside a current-thread runtime and a temporary directory.
pub(super) fn with_server(nodes: usize, f: impl FnOnce(&mut Server)) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let addrs = vec!["127.0.0.1".parse().unwrap(); nodes];
    f(&mut Server::detached(0, &addrs, dir.path()));
}

fn a_self_addressed_packet(s: &mut Server) {
    let (ours, mut theirs) = StdUnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    s.client_accepted(tokio::net::UnixStream::from_std(ours).unwrap());
    let id = *s.clients.keys().next().expect("the client is served");
    let srvid = 0xC7DB_0000_0000_0042;
    s.core.srvids.register(srvid, id);

    let mut h = Header::new(Operation::ReqMessage, 0, 0, 0);
    h.generation = s.generation();
    s.loopback
        .push(BytesMut::from(&message_bytes(h, srvid, b"hello")[..]));
    s.serve_loopback();

    theirs.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let n = match theirs.read(&mut buf) {
        Ok(n) => n,
        Err(e) => panic!("nothing written to the client in the turn: {e}"),
    };
    let (got, _) = Header::pull(&buf[..n]).unwrap();
    assert_eq!(got.operation, Operation::ReqMessage);
    assert!(
        buf[..n].windows(5).any(|w| w == b"hello"),
        "{:?}",
        &buf[..n]
    );
    assert!(s.loopback.is_empty());
}
