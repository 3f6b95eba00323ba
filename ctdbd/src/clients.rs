//! The client socket: the unix socket local clients (the `ctdb` tool,
//! Samba, the recovery helper) connect to.
//!
//! Each connection gets a reader task, which frames whatever the kernel has
//! (many packets per wake-up) and hands packets to the event loop one at a
//! time, and a writer task, which drains the connection's queue in
//! batches. A framing error (oversized or undersized length) ends the
//! connection with a log line; nothing else is affected.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ctdb_protocol::framing::PacketCodec;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tracing::{error, info};

use crate::messaging::ClientId;
use crate::server::{Event, MAX_PACKET};

/// Binds the daemon socket (replacing a stale one), mode 0700 as CTDB
/// sets it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
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

/// Starts the reader and writer of client `id`. Returns the reader's
/// handle, the queue to write to, and the count of queued packets.
pub fn spawn(
    id: ClientId,
    stream: UnixStream,
    ev: mpsc::Sender<Event>,
) -> (
    JoinHandle<()>,
    mpsc::UnboundedSender<Bytes>,
    Arc<AtomicUsize>,
) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let q = Arc::clone(&queued);
    tokio::spawn(async move {
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            let mut n = 1;
            while batch.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(b) => {
                        batch.extend_from_slice(&b);
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            let r = wr.write_all(&batch).await;
            q.fetch_sub(n, Ordering::Relaxed);
            if r.is_err() {
                break;
            }
        }
        // Remaining packets are dropped with the connection.
        q.store(0, Ordering::Relaxed);
    });
    let reader = tokio::spawn(async move {
        let mut frames = FramedRead::with_capacity(rd, PacketCodec::new(MAX_PACKET), 64 * 1024);
        let mut error = None;
        while let Some(r) = frames.next().await {
            match r {
                Ok(pkt) => {
                    if ev.send(Event::ClientPacket { id, pkt }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let _ = ev.send(Event::ClientClosed { id, error }).await;
    });
    (reader, tx, queued)
}
