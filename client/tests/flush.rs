//! What a connection guarantees about the requests it queued when the
//! daemon is not reading (the socket is full, so a backlog forms):
//! `Client::flush` returns only once all of them are in the socket, and
//! dropping the last handle writes the backlog before the process can go
//! on (here: shut its runtime down), so nothing sent is lost to a process
//! that ends normally. The "daemon" is the other end of a socket pair,
//! which reads only when the test says so; what it received is counted
//! in whole packets.

use std::io::Read;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::{Arc, Mutex};

use ctdb_client::Client;
use futures::FutureExt;
use tokio::io::AsyncReadExt;

/// Messages sent: far more than a unix socket's buffer holds.
const MESSAGES: usize = 200;
const PAYLOAD: usize = 32 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client on one end of a socket pair, and the other end.
fn pair(rt: &tokio::runtime::Runtime) -> (Client, StdStream) {
    let (ours, daemon) = StdStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let client =
        rt.block_on(async { Client::from_stream(tokio::net::UnixStream::from_std(ours).unwrap()) });
    (client, daemon)
}

/// Sends the messages; the socket fills up long before the last one.
fn send_all(c: &Client) {
    let payload = vec![0xA5u8; PAYLOAD];
    for i in 0..MESSAGES {
        c.send_message(0, 0x1000 + i as u64, &payload).unwrap();
    }
}

/// The whole packets in `bytes` (each starts with its length).
fn packets(bytes: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 0;
    while bytes.len() >= at + 4 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        assert!(len >= 4, "bad packet length {len}");
        if bytes.len() < at + len {
            break;
        }
        at += len;
        n += 1;
    }
    n
}

/// Everything the daemon's end can read now without waiting.
fn read_ready(s: &mut StdStream, into: &mut Vec<u8>) {
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn flush_returns_once_every_queued_packet_is_in_the_socket() {
    let rt = runtime();
    let (c, mut daemon) = pair(&rt);
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = c.clone();
    rt.block_on(async {
        send_all(&c);
        // Nobody reads: the backlog cannot be written, flush waits.
        assert!(
            c.flush().now_or_never().is_none(),
            "flush returned while the daemon's end was full and unread"
        );
        // Now the daemon reads (a task of the same runtime: whatever it
        // has not read when flush returns is still in the socket).
        let mut reader = tokio::net::UnixStream::from_std(daemon.try_clone().unwrap()).unwrap();
        let into = Arc::clone(&got);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        c.flush().await.unwrap();
    });
    // Nothing of the connection runs any more, and its last handle is
    // never dropped (it would write the backlog): what flush left
    // unwritten is lost here.
    std::mem::forget(keep);
    drop(c);
    drop(rt);
    let mut bytes = std::mem::take(&mut *got.lock().unwrap());
    read_ready(&mut daemon, &mut bytes);
    assert_eq!(
        packets(&bytes),
        MESSAGES,
        "packets in the socket when flush returned"
    );
}

#[test]
fn flush_with_nothing_queued_returns_at_once() {
    let rt = runtime();
    let (c, _daemon) = pair(&rt);
    rt.block_on(async {
        c.send_message(0, 1, b"small").unwrap();
        assert!(matches!(c.flush().now_or_never(), Some(Ok(()))));
    });
}

#[test]
fn dropping_the_last_handle_writes_the_backlog_before_the_runtime_ends() {
    let rt = runtime();
    let (c, mut daemon) = pair(&rt);
    let clone = c.clone();
    rt.block_on(async {
        send_all(&c);
        assert!(
            c.flush().now_or_never().is_none(),
            "no backlog formed: the test would prove nothing"
        );
    });
    // The daemon reads on a thread of its own until the connection ends.
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        daemon.read_to_end(&mut bytes).unwrap();
        bytes
    });
    // Not the last handle: nothing to do yet.
    drop(clone);
    // The last one: writes the backlog, waiting for the reader.
    drop(c);
    // The connection's tasks go with the runtime, as at a process's end;
    // then the socket closes and the reader sees its end.
    drop(rt);
    let bytes = reader.join().unwrap();
    assert_eq!(
        packets(&bytes),
        MESSAGES,
        "packets the daemon received from a client dropped before its runtime ended"
    );
}
