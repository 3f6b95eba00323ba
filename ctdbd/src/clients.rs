//! The client socket: the unix socket local clients (the `ctdb` tool,
//! Samba, the recovery helper) connect to.
//!
//! The event loop reads each connection itself when it is readable
//! ([`crate::event_loop`]), framing whatever the kernel has (many packets
//! per read) and handling a few packets per connection per turn. A
//! framing error (oversized or undersized length) ends the connection
//! with a log line; nothing else is affected.
//!
//! What a connection costs: an idle one holds no buffer at all. Reads go
//! into one scratch buffer shared by every connection of the thread
//! ([`ctdb_protocol::framing::Framer`]); only a packet that arrived in
//! part is kept, in a buffer of its own that grows with what has arrived
//! (a length field alone reserves nothing) and is let go as soon as it is
//! complete.
//!
//! A client that sends requests and does not read the replies is held
//! back: while more than the client queue limit is waiting to be written
//! to it, the loop reads no more of its requests (the kernel's socket
//! buffer fills, and the client blocks), until half of it has drained
//! (the queue wakes the connection then). Messages for such a client are
//! dropped (see `Server::deliver_local`).
//!
//! The socket is registered for readability only. The event loop writes
//! replies and messages itself ([`Outbox`]); only when a client does not
//! read and its socket fills up does a writer task wait for writability,
//! on a duplicate of the descriptor registered for that alone, until the
//! backlog is gone. (A socket registered for writability all the time
//! would wake the daemon each time the client read a reply: the kernel
//! signals "writable" whenever the peer drains the socket.)

use std::cell::Cell;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ctdb_client::unix_io::{Socket, send_vectored, watch_writable};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

use crate::event_loop::{Next, ReadyQueue, SockReader, Token};
use crate::messaging::ClientId;
use crate::outbox::{Flush, Outbox};
use crate::server::{Event, MAX_PACKET};

/// Binds the daemon socket (replacing a stale one), mode 0700 as CTDB
/// sets it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket does not.
        if Socket::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    info!("Listening to ctdb socket {}", path.display());
    Ok(l)
}

/// Accepts connections and hands them to the event loop.
pub fn spawn_acceptor(l: UnixListener, ev: mpsc::Sender<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    if ev.send(Event::ClientAccepted(s)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error!("accept on ctdb socket failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// A client connection as the event loop holds it.
pub struct ClientSocket {
    reader: SockReader<Socket>,
    outbox: Arc<Outbox>,
    /// Messages dropped since the queue last went over the limit, and
    /// their bytes (0 while nothing is being dropped).
    dropping: Cell<(u64, u64)>,
}

impl ClientSocket {
    /// Bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.bytes()
    }

    /// Counts a message dropped for this client; `true` for the first of
    /// a run (worth a log line).
    pub fn count_drop(&self, bytes: usize) -> bool {
        let (n, b) = self.dropping.get();
        self.dropping.set((n + 1, b + bytes as u64));
        n == 0
    }

    /// Ends a run of drops (the queue is below the limit again); returns
    /// what was dropped in it, if anything.
    pub fn end_drops(&self) -> Option<(u64, u64)> {
        let d = self.dropping.replace((0, 0));
        (d.0 > 0).then_some(d)
    }

    /// Queues a packet; returns `true` if the connection must be flushed
    /// (see [`Outbox::push`]).
    pub fn queue(&self, b: Bytes) -> bool {
        self.outbox.push(b)
    }

    /// Writes what is queued, handing the rest to a writer task if the
    /// socket is full. `false` if the connection has failed.
    pub fn flush(&self) -> bool {
        let sock = self.reader.get_ref();
        match self.outbox.flush(|bufs| send_vectored(sock, bufs)) {
            Flush::Done | Flush::Busy => true,
            Flush::Blocked => {
                spawn_writer(sock, Arc::clone(&self.outbox));
                true
            }
            Flush::Broken => false,
        }
    }

    /// Packets not yet written.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The next packet from the client: one framed already or one read
    /// now. While more than `queue_limit` bytes wait to be written to the
    /// client nothing more is read (`Pending`), until half has drained.
    pub fn next_packet(&mut self, queue_limit: usize) -> Next {
        match self.reader.framed() {
            Ok(Some(p)) => return Next::Packet(p),
            Ok(None) => {}
            Err(e) => return Next::Closed(Some(e)),
        }
        if self.outbox.bytes() > queue_limit
            && self
                .outbox
                .hold_until_below(queue_limit / 2, self.reader.waker())
        {
            debug!("a client does not read its replies; not reading it until they drain");
            return Next::Pending;
        }
        self.reader.next_packet()
    }

    /// The loop took the connection from the ready queue.
    pub fn taken(&self) {
        self.reader.taken();
    }

    /// Queues the connection for another turn (its budget is spent).
    pub fn requeue(&self) {
        self.reader.requeue();
    }

    /// Closes the connection: a writer waiting for the client fails, the
    /// client sees end of file.
    pub fn close(&self) {
        self.outbox.close();
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// Waits for a full socket to drain and writes the backlog, until it is
/// empty (then the loop writes directly again) or the connection fails.
fn spawn_writer(sock: &Socket, outbox: Arc<Outbox>) {
    // A second descriptor of the socket, watched for writability only
    // while there is a backlog.
    let dup = match watch_writable(sock) {
        Ok(d) => d,
        Err(e) => {
            error!("cannot wait for a client socket to drain: {e}");
            outbox.close();
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let mut guard = match dup.writable().await {
                Ok(g) => g,
                Err(e) => {
                    debug!("client socket: {e}");
                    outbox.close();
                    return;
                }
            };
            match guard.try_io(|d| outbox.drain(|bufs| send_vectored(d.get_ref(), bufs))) {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    debug!("writing to a client failed: {e}");
                    let _ = dup.get_ref().shutdown(std::net::Shutdown::Both);
                    return;
                }
                // Full again: wait for the next drain.
                Err(_) => continue,
            }
        }
    });
}

/// Starts serving client `id`: the loop reads it when `ready` names it.
pub fn serve(
    id: ClientId,
    stream: UnixStream,
    ready: &Arc<ReadyQueue>,
) -> io::Result<ClientSocket> {
    // Out of tokio's registration (which watches writability too) and
    // registered for readability alone.
    let std = stream.into_std()?;
    std.set_nonblocking(true)?;
    let reader = SockReader::new(std, Token::Client(id), ready, MAX_PACKET)?;
    Ok(ClientSocket {
        reader,
        outbox: Arc::new(Outbox::new()),
        dropping: Cell::new((0, 0)),
    })
}
