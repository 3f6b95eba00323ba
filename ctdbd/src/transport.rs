//! Node transport over TCP, as CTDB's `tcp` transport does it.
//!
//! Each daemon listens on port 4379 of its node address and connects to
//! every other node from that address (so the peer can tell who it is).
//! The outgoing connection carries everything this node sends to that
//! node; the incoming connection from it carries what it sends to us. The
//! event loop sees a node as connected when both are up.
//!
//! A connector task per node keeps the outgoing connection up, retrying
//! with a short back-off. Reader tasks frame incoming packets; a framing
//! error tears that connection down.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use ctdb_protocol::framing::PacketCodec;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tracing::{debug, error};

use crate::config::CTDB_PORT;
use crate::server::{Event, MAX_PACKET};

/// What the event loop asks of an outgoing connection.
#[derive(Debug)]
pub enum OutCmd {
    Packet(Bytes),
    /// Close the connection and connect again.
    Restart,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds the transport listener on `ip`:4379.
pub fn listen(ip: IpAddr) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(ip, CTDB_PORT);
    let sock = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

/// Accepts node connections and hands them to the event loop (which
/// refuses addresses not in the nodes file).
pub fn spawn_acceptor(l: TcpListener, ev: mpsc::Sender<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((stream, peer)) => {
                    if ev.send(Event::NodeAccepted { stream, peer }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error!("accept on node transport failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

fn set_keepalive(s: &TcpStream) {
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::KeepAlive, &true);
}

/// Reads packets from node `pnn`'s incoming connection `link`.
pub fn spawn_in_reader(
    pnn: u32,
    link: u64,
    stream: TcpStream,
    ev: mpsc::Sender<Event>,
) -> JoinHandle<()> {
    set_keepalive(&stream);
    tokio::spawn(async move {
        let mut frames =
            FramedRead::with_capacity(stream, PacketCodec::new(MAX_PACKET), 256 * 1024);
        let mut error = None;
        while let Some(r) = frames.next().await {
            match r {
                Ok(pkt) => {
                    if ev.send(Event::NodePacket { pnn, link, pkt }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let _ = ev.send(Event::NodeInClosed { pnn, link, error }).await;
    })
}

async fn connect(local: IpAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match peer {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(local, 0))?;
    let s = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(peer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    set_keepalive(&s);
    Ok(s)
}

/// Keeps an outgoing connection from `local` to node `pnn` at `peer`.
/// Returns the queue of packets (and restarts) for it.
pub fn spawn_connector(
    pnn: u32,
    local: IpAddr,
    peer: SocketAddr,
    ev: mpsc::Sender<Event>,
) -> mpsc::UnboundedSender<OutCmd> {
    let (tx, mut rx) = mpsc::unbounded_channel::<OutCmd>();
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            // Nothing queued while down is worth sending later.
            loop {
                match rx.try_recv() {
                    Ok(_) => continue,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let stream = match connect(local, peer).await {
                Ok(s) => s,
                Err(e) => {
                    debug!("connect to node {pnn} at {peer} failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            if ev.send(Event::NodeOutUp { pnn }).await.is_err() {
                return;
            }
            let why = run_out(stream, &mut rx).await;
            let Some(why) = why else {
                return;
            };
            if ev
                .send(Event::NodeOutDown {
                    pnn,
                    error: why.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(backoff).await;
        }
    });
    tx
}

/// Writes queued packets until the connection fails or a restart is
/// asked for; `None` when the event loop has gone away.
async fn run_out(stream: TcpStream, rx: &mut mpsc::UnboundedReceiver<OutCmd>) -> Option<String> {
    let (mut rd, mut wr) = stream.into_split();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut junk = [0u8; 512];
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let first = match cmd {
                    None => return None,
                    Some(OutCmd::Restart) => return Some("restart requested".into()),
                    Some(OutCmd::Packet(b)) => b,
                };
                batch.clear();
                batch.extend_from_slice(&first);
                let mut restart = false;
                while batch.len() < 1024 * 1024 {
                    match rx.try_recv() {
                        Ok(OutCmd::Packet(b)) => batch.extend_from_slice(&b),
                        Ok(OutCmd::Restart) => { restart = true; break; }
                        Err(_) => break,
                    }
                }
                if let Err(e) = wr.write_all(&batch).await {
                    return Some(format!("write failed: {e}"));
                }
                if restart {
                    return Some("restart requested".into());
                }
            }
            // Nothing should arrive on an outgoing connection: data or
            // EOF both mean the peer is gone.
            r = rd.read(&mut junk) => {
                return Some(match r {
                    Ok(0) => "closed by peer".into(),
                    Ok(_) => "unexpected data from peer".into(),
                    Err(e) => format!("read failed: {e}"),
                });
            }
        }
    }
}
