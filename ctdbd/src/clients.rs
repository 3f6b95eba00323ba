//! The client socket: the unix socket local clients (the `ctdb` tool,
//! Samba, the recovery helper) connect to.
//!
//! Each connection gets a reader task, which frames whatever the kernel has
//! (many packets per wake-up) and hands packets to the event loop one at a
//! time. A framing error (oversized or undersized length) ends the
//! connection with a log line; nothing else is affected.
//!
//! The socket is registered for readability only. The event loop writes
//! replies and messages itself ([`Outbox`]); only when a client does not
//! read and its socket fills up does a writer task wait for writability,
//! on a duplicate of the descriptor registered for that alone, until the
//! backlog is gone. (A socket registered for writability all the time
//! would wake the daemon each time the client read a reply: the kernel
//! signals "writable" whenever the peer drains the socket.)

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ctdb_client::unix_io::{PacketReader, Socket, register, send_vectored, watch_writable};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

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
    sock: Arc<AsyncFd<Socket>>,
    outbox: Arc<Outbox>,
    reader: JoinHandle<()>,
}

impl ClientSocket {
    /// Queues a packet; returns `true` if the connection must be flushed
    /// (see [`Outbox::push`]).
    pub fn queue(&self, b: Bytes) -> bool {
        self.outbox.push(b)
    }

    /// Writes what is queued, handing the rest to a writer task if the
    /// socket is full. `false` if the connection has failed.
    pub fn flush(&self) -> bool {
        let sock = &self.sock;
        match self
            .outbox
            .flush(|bufs| send_vectored(sock.get_ref(), bufs))
        {
            Flush::Done | Flush::Busy => true,
            Flush::Blocked => {
                spawn_writer(Arc::clone(&self.sock), Arc::clone(&self.outbox));
                true
            }
            Flush::Broken => false,
        }
    }

    /// Packets not yet written.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Closes the connection: the reader stops, a writer waiting for the
    /// client fails, the client sees end of file.
    pub fn close(&self) {
        self.reader.abort();
        self.outbox.close();
        let _ = self.sock.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// Waits for a full socket to drain and writes the backlog, until it is
/// empty (then the loop writes directly again) or the connection fails.
fn spawn_writer(sock: Arc<AsyncFd<Socket>>, outbox: Arc<Outbox>) {
    tokio::spawn(async move {
        // A second descriptor of the socket, watched for writability only
        // while there is a backlog.
        let dup = match watch_writable(sock.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                error!("cannot wait for a client socket to drain: {e}");
                outbox.close();
                let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
                return;
            }
        };
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
                    let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
                    return;
                }
                // Full again: wait for the next drain.
                Err(_) => continue,
            }
        }
    });
}

/// Starts serving client `id`: its reader task hands packets to the loop.
/// Called from the event loop (the reader joins its `LocalSet`).
pub fn spawn(
    id: ClientId,
    stream: UnixStream,
    ev: mpsc::Sender<Event>,
) -> io::Result<ClientSocket> {
    let std = stream.into_std()?;
    let sock = Arc::new(register(std, Interest::READABLE)?);
    let rsock = Arc::clone(&sock);
    let reader = tokio::task::spawn_local(async move {
        let error = read_packets(id, &rsock, &ev).await;
        let _ = ev.send(Event::ClientClosed { id, error }).await;
    });
    Ok(ClientSocket {
        sock,
        outbox: Arc::new(Outbox::new()),
        reader,
    })
}

/// Reads and frames packets until end of file (`None`) or an error (its
/// description); every complete packet goes to the loop, in order.
async fn read_packets(
    id: ClientId,
    sock: &AsyncFd<Socket>,
    ev: &mpsc::Sender<Event>,
) -> Option<String> {
    let mut reader = PacketReader::new(MAX_PACKET);
    loop {
        match reader.next(sock).await {
            Ok(Some(pkt)) => {
                if ev.send(Event::ClientPacket { id, pkt }).await.is_err() {
                    return None;
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        }
    }
}
