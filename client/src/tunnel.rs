//! Tunnels: opaque packets between clients of different nodes.
//!
//! A client sets up a tunnel id with its daemon ([`Client::tunnel_setup`],
//! `TUNNEL_REGISTER`); only one client per node may hold an id. Packets
//! sent on a tunnel ([`Tunnel::send`]) go to the client that registered
//! the same id on the destination node, and arrive on that client's
//! [`Tunnel::recv`]. The daemons forward a packet only when the sender's
//! own node has the id registered (normally by the sender itself) and the
//! destination is a node number (CTDB drops broadcasts; `send` replaces
//! `CTDB_CURRENT_NODE` with this client's node). Nothing is acknowledged:
//! a packet to a node where nobody holds the id is dropped there. The
//! header the receiver sees is the receiving daemon's (CTDB writes its own
//! node as source, destination 0, reqid 0), so a reply must name its
//! destination in the data.

use ctdb_protocol::header::{CTDB_CURRENT_NODE, HEADER_LEN};
use ctdb_protocol::keepalive::ReqTunnel;
pub use ctdb_protocol::keepalive::tunnel_flags;
use ctdb_protocol::{Body, ControlRequest, Header, Marshal, Opcode, Operation, Packet, ReqControl};
use tokio::sync::mpsc;

use crate::connection::Client;
use crate::error::{ClientError, Result};

/// One tunnel packet as the daemon delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPacket {
    /// The header's source node (CTDB 4.17 writes the receiving node).
    pub srcnode: u32,
    pub reqid: u32,
    pub tunnel_id: u64,
    /// `tunnel_flags` bits as the sender set them.
    pub flags: u32,
    pub data: Vec<u8>,
}

/// A registered tunnel id on one connection.
pub struct Tunnel {
    client: Client,
    id: u64,
    rx: mpsc::UnboundedReceiver<TunnelPacket>,
}

impl Client {
    /// Registers tunnel `id` with this client's daemon and returns the
    /// tunnel its packets arrive on. Fails if this connection or another
    /// client of the node holds the id already.
    pub async fn tunnel_setup(&self, id: u64) -> Result<Tunnel> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut t = self.tunnel_handlers().lock().unwrap();
            if t.contains_key(&id) {
                return Err(ClientError::Other(format!(
                    "tunnel 0x{id:x} already set up on this connection"
                )));
            }
            // Installed first, so nothing can arrive unrouted.
            t.insert(id, tx);
        }
        let mut req = ReqControl::new(ControlRequest::TunnelRegister);
        req.srvid = id;
        let r = self.control_raw(CTDB_CURRENT_NODE, req).await;
        match r {
            Ok(r) if r.status == 0 => Ok(Tunnel {
                client: self.clone(),
                id,
                rx,
            }),
            other => {
                self.tunnel_handlers().lock().unwrap().remove(&id);
                match other {
                    Ok(r) => Err(ClientError::ControlFailed {
                        opcode: Opcode::TunnelRegister,
                        node: self.pnn(),
                        status: r.status,
                        errmsg: r.errmsg,
                    }),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

impl Client {
    /// Sends one `REQ_TUNNEL` packet as is, whether or not this client set
    /// up `tunnel_id` (the daemon drops it unless some client of its node
    /// did). `CTDB_CURRENT_NODE` is replaced with this client's node;
    /// other destinations, broadcasts included, go to the daemon unchanged.
    pub fn tunnel_send(&self, dest: u32, tunnel_id: u64, flags: u32, data: &[u8]) -> Result<()> {
        let dest = if dest == CTDB_CURRENT_NODE {
            self.pnn()
        } else {
            dest
        };
        let pkt = Packet::new(
            Header::new(Operation::ReqTunnel, dest, self.pnn(), self.next_reqid()),
            Body::ReqTunnel(ReqTunnel {
                tunnel_id,
                flags,
                data: data.to_vec(),
            }),
        );
        self.send_packet(&pkt)
    }
}

impl Tunnel {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `data` on this tunnel to the client holding the id on node
    /// `dest`, with `flags` (`tunnel_flags`). Returns once written to the
    /// daemon; delivery is not confirmed.
    pub fn send_flags(&self, dest: u32, flags: u32, data: &[u8]) -> Result<()> {
        self.client.tunnel_send(dest, self.id, flags, data)
    }

    /// Sends a request that wants no reply (`REQUEST | NOREPLY`), as
    /// CTDB's client library marks one-way packets.
    pub fn send(&self, dest: u32, data: &[u8]) -> Result<()> {
        self.send_flags(dest, tunnel_flags::REQUEST | tunnel_flags::NOREPLY, data)
    }

    /// The next packet for this tunnel; `None` once the connection ended.
    pub async fn recv(&mut self) -> Option<TunnelPacket> {
        self.rx.recv().await
    }

    /// A packet already received, if any.
    pub fn try_recv(&mut self) -> Option<TunnelPacket> {
        self.rx.try_recv().ok()
    }

    /// Deregisters the id (`TUNNEL_DEREGISTER`).
    pub async fn destroy(self) -> Result<()> {
        self.client
            .tunnel_handlers()
            .lock()
            .unwrap()
            .remove(&self.id);
        let mut req = ReqControl::new(ControlRequest::TunnelDeregister);
        req.srvid = self.id;
        let r = self.client.control_raw(CTDB_CURRENT_NODE, req).await?;
        if r.status != 0 {
            return Err(ClientError::ControlFailed {
                opcode: Opcode::TunnelDeregister,
                node: self.client.pnn(),
                status: r.status,
                errmsg: r.errmsg,
            });
        }
        Ok(())
    }
}

/// Handlers by tunnel id (held by the connection).
pub(crate) type Handlers = std::collections::HashMap<u64, mpsc::UnboundedSender<TunnelPacket>>;

/// Routes a `REQ_TUNNEL` from the daemon to its tunnel's handler.
pub(crate) fn dispatch(handlers: &std::sync::Mutex<Handlers>, header: &Header, frame: &[u8]) {
    let t = match ReqTunnel::pull(&frame[HEADER_LEN.min(frame.len())..]) {
        Ok((t, _)) => t,
        Err(e) => {
            tracing::warn!("bad tunnel packet from daemon: {e}");
            return;
        }
    };
    let handlers = handlers.lock().unwrap();
    match handlers.get(&t.tunnel_id) {
        Some(h) => {
            let _ = h.send(TunnelPacket {
                srcnode: header.srcnode,
                reqid: header.reqid,
                tunnel_id: t.tunnel_id,
                flags: t.flags,
                data: t.data,
            });
        }
        None => tracing::debug!("tunnel packet for unknown id 0x{:x}", t.tunnel_id),
    }
}
