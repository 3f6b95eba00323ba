//! Feeds arbitrary byte streams to the daemon's event loop as a client
//! connection and as a node's incoming link would deliver them: framing
//! (`ctdb_protocol::framing::Framer`, as the loop reads), the link checks
//! (well-formed, from the link's node), and the loop's handling of every
//! packet (controls answered by the core, messages, keepalives, replies)
//! of a fresh daemon of a 3-node cluster (node 0, its database layer
//! with no databases attached, its files in a directory of this process).
//! Then the same bytes drive an outgoing queue (`Outbox`) against
//! a socket that takes what the input says, checking its byte accounting.
//!
//! Input: byte 0 picks the path (bit 0: node link or client; bits 1-2:
//! which node) and byte 1 the chunk size the stream arrives in.
#![no_main]

use std::io::{self, IoSlice};

use bytes::Bytes;
use ctdbd::outbox::{Flush, Outbox};
use ctdbd::server::Server;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fn server() -> Server {
    let nodes: Vec<std::net::IpAddr> = (1..=3)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("ctdbd-fuzz-{}", std::process::id()));
    Server::detached(0, &nodes, &dir)
}

/// The queue's byte count follows what was queued and written, whatever
/// the socket takes per call (as the input says).
fn outbox_run(data: &[u8]) {
    let o = Outbox::new();
    let mut rooms = data.iter().rev().map(|b| *b as usize * 7);
    let mut queued = 0usize;
    let mut sent = 0usize;
    for (i, c) in data.chunks(13).enumerate() {
        o.push(Bytes::copy_from_slice(c));
        queued += c.len();
        let room = rooms.next().unwrap_or(0);
        let mut send = |bufs: &[IoSlice<'_>]| -> io::Result<usize> {
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = bufs.iter().map(|b| b.len()).sum::<usize>().min(room);
            sent += n;
            Ok(n)
        };
        if i % 2 == 0 {
            let _: Flush = o.flush(&mut send);
        } else {
            let _ = o.drain(&mut send);
        }
        assert_eq!(o.bytes(), queued - sent);
        assert_eq!(o.bytes() == 0, o.is_empty());
    }
    o.close();
    assert_eq!(o.bytes(), 0);
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, rest @ ..] = data else {
        return;
    };
    RT.with(|rt| {
        let _g = rt.enter();
        let mut s = server();
        let chunk = *chunk as usize + 1;
        if sel & 1 == 0 {
            s.fuzz_client_stream(7, rest, chunk);
        } else {
            let pnn = 1 + u32::from((sel >> 1) & 1);
            s.fuzz_node_stream(pnn, rest, chunk);
        }
        // Let anything the loop started run (and end).
        rt.block_on(tokio::task::yield_now());
    });
    outbox_run(rest);
});
