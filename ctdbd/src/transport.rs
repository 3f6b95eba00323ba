//! Node transport over TCP, as CTDB's `tcp` transport does it.
//!
//! Each daemon listens on port 4379 of its node address and connects to
//! every other node from that address (so the peer can tell who it is).
//! The outgoing connection carries everything this node sends to that
//! node; the incoming connection from it carries what it sends to us. The
//! event loop sees a node as connected when both are up.
//!
//! A connector task per node keeps the outgoing connection up, retrying
//! with a short back-off, and hands each new connection to the event loop
//! ([`OutLink`]), which writes to it directly ([`Outbox`]). The loop reads
//! incoming connections itself when they are readable
//! ([`crate::event_loop`]); a framing error tears that connection down.
//!
//! Who may talk to us ([`InLink`], [`check_packet`]): an incoming
//! connection is accepted only from the address of a node in the nodes
//! file, and only while that node has no incoming connection already (a
//! second one is refused, as CTDB refuses it with "Incoming queue
//! active"). Every packet on it must be a well-formed CTDB packet from
//! that node: right magic and version, a known operation, and the node's
//! own pnn as source (a `REQ_CALL` may carry another node's pnn: calls are
//! passed on from node to node with their caller as source). Anything else
//! closes that connection with a log line naming the peer. A connection
//! that sends nothing within the keepalive limit is closed too, so a
//! silent squatter cannot keep the node's slot.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::{Header, Marshal, Operation};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::config::CTDB_PORT;
use crate::event_loop::{ReadyQueue, SockReader, Token};
use crate::outbox::{Flush, Outbox};
use crate::server::{Event, MAX_PACKET};

/// What the event loop asks of a node's connector.
#[derive(Debug)]
pub enum OutCmd {
    /// Close the connection and connect again.
    Restart,
}

/// An outgoing connection, as the event loop holds it.
pub struct OutLink {
    stream: Arc<TcpStream>,
    outbox: Arc<Outbox>,
}

impl std::fmt::Debug for OutLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutLink")
            .field("queued", &self.outbox.len())
            .finish()
    }
}

impl OutLink {
    pub(crate) fn new(stream: Arc<TcpStream>) -> OutLink {
        OutLink {
            stream,
            outbox: Arc::new(Outbox::new()),
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.bytes()
    }

    /// Queues a packet; `true` if the link must be flushed.
    pub fn queue(&self, b: Bytes) -> bool {
        self.outbox.push(b)
    }

    /// Writes what is queued (a writer task takes over if the socket is
    /// full). `false` if the connection has failed.
    pub fn flush(&self) -> bool {
        let s = &self.stream;
        match self.outbox.flush(|bufs| send(s, bufs)) {
            Flush::Done | Flush::Busy => true,
            Flush::Blocked => {
                spawn_writer(Arc::clone(&self.stream), Arc::clone(&self.outbox));
                true
            }
            Flush::Broken => false,
        }
    }

    /// Drops what is queued and shuts the connection down.
    pub fn close(&self) {
        self.outbox.close();
        let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Both);
    }
}

fn send(s: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(s).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
}

/// Writes the backlog of a full connection as it drains.
fn spawn_writer(stream: Arc<TcpStream>, outbox: Arc<Outbox>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = stream.writable().await {
                debug!("node connection: {e}");
                outbox.close();
                return;
            }
            match stream.try_io(Interest::WRITABLE, || {
                outbox.drain(|bufs| send(&stream, bufs))
            }) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    debug!("writing to a node failed: {e}");
                    let _ = socket2::SockRef::from(&*stream).shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    });
}

/// The incoming connection of a node, as the event loop holds it.
pub struct InLink {
    /// Tells this connection from an earlier one of the same node.
    pub id: u64,
    pub peer: SocketAddr,
    pub reader: SockReader<std::net::TcpStream>,
    pub accepted: Instant,
    /// A valid packet has arrived on it.
    pub proven: bool,
}

impl InLink {
    /// Stops the connection (dropping the link closes it).
    pub fn close(&self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// Why a packet on a node's incoming connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("malformed packet: {0}")]
    Header(#[from] ctdb_protocol::Error),
    #[error("{op:?} packet claims to be from node {claimed}")]
    WrongSource { op: Operation, claimed: u32 },
}

/// Checks a framed packet that arrived on node `pnn`'s incoming
/// connection: a well-formed header, and `pnn` as its source (a
/// `REQ_CALL` passed on by `pnn` may name its original caller, which must
/// be a node for which `is_node` holds).
pub fn check_packet(
    pnn: u32,
    pkt: &[u8],
    is_node: impl Fn(u32) -> bool,
) -> Result<Header, LinkError> {
    let (h, _) = Header::pull(pkt)?;
    if (h.length as usize) != pkt.len() {
        return Err(LinkError::Header(ctdb_protocol::Error::BadLength {
            length: h.length,
            why: "does not match the frame",
        }));
    }
    let ok = h.srcnode == pnn || (h.operation == Operation::ReqCall && is_node(h.srcnode));
    if !ok {
        return Err(LinkError::WrongSource {
            op: h.operation,
            claimed: h.srcnode,
        });
    }
    Ok(h)
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

/// Prepares node `pnn`'s incoming connection `link` for the loop to
/// read when `ready` names it.
pub fn in_reader(
    pnn: u32,
    link: u64,
    stream: TcpStream,
    ready: &Arc<ReadyQueue>,
) -> io::Result<SockReader<std::net::TcpStream>> {
    set_keepalive(&stream);
    let std = stream.into_std()?;
    std.set_nonblocking(true)?;
    SockReader::new(std, Token::NodeIn { pnn, link }, ready, MAX_PACKET)
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

/// Keeps an outgoing connection from `local` to node `pnn` at `peer`,
/// handing each new one to the loop. Returns the connector's command
/// queue.
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
            // Restarts asked for while down are moot.
            loop {
                match rx.try_recv() {
                    Ok(_) => continue,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let stream = match connect(local, peer).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    debug!("connect to node {pnn} at {peer} failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            let link = OutLink::new(Arc::clone(&stream));
            if ev.send(Event::NodeOutUp { pnn, link }).await.is_err() {
                return;
            }
            let why = watch(&stream, &mut rx).await;
            let _ = socket2::SockRef::from(&*stream).shutdown(std::net::Shutdown::Both);
            drop(stream);
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

/// Waits until the connection fails or a restart is asked for; `None`
/// when the event loop has gone away.
async fn watch(stream: &TcpStream, rx: &mut mpsc::UnboundedReceiver<OutCmd>) -> Option<String> {
    let mut junk = [0u8; 512];
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                return cmd.map(|OutCmd::Restart| "restart requested".into());
            }
            // Nothing should arrive on an outgoing connection: data or
            // EOF both mean the peer is gone.
            r = stream.readable() => {
                if let Err(e) = r {
                    return Some(format!("read failed: {e}"));
                }
                match stream.try_read(&mut junk) {
                    Ok(0) => return Some("closed by peer".into()),
                    Ok(_) => return Some("unexpected data from peer".into()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Some(format!("read failed: {e}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::{Body, ControlRequest, Packet, ReqControl};

    fn control_from(src: u32) -> Vec<u8> {
        let h = Header::new(Operation::ReqControl, 0, src, 1);
        Packet::new(h, Body::ReqControl(ReqControl::new(ControlRequest::GetPnn))).encode()
    }

    #[test]
    fn packets_must_come_from_the_links_node() {
        let known = |p: u32| p < 3;
        assert_eq!(check_packet(1, &control_from(1), known).unwrap().srcnode, 1);
        assert!(matches!(
            check_packet(1, &control_from(2), known),
            Err(LinkError::WrongSource { claimed: 2, .. })
        ));
        let mut bad = control_from(1);
        bad[4] ^= 0xff;
        assert!(matches!(
            check_packet(1, &bad, known),
            Err(LinkError::Header(_))
        ));
        let mut bad = control_from(1);
        bad[8] = 2;
        assert!(check_packet(1, &bad, known).is_err());
        // The frame and the length field must agree.
        let mut long = control_from(1);
        long.extend_from_slice(&[0; 8]);
        assert!(check_packet(1, &long, known).is_err());
        assert!(check_packet(1, &[0u8; 7], known).is_err());
    }

    #[test]
    fn a_passed_on_call_may_name_its_caller() {
        let call = ctdb_protocol::call::ReqCall {
            flags: 0,
            db_id: 1,
            callid: 0,
            hopcount: 1,
            key: b"k".to_vec(),
            calldata: Vec::new(),
        };
        let h = Header::new(Operation::ReqCall, 0, 2, 9);
        let pkt = Packet::new(h, Body::ReqCall(call)).encode();
        assert!(check_packet(1, &pkt, |p| p < 3).is_ok());
        assert!(check_packet(1, &pkt, |p| p < 2).is_err());
    }
}
