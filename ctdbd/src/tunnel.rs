//! Tunnels: opaque `REQ_TUNNEL` packets between clients on different
//! nodes, as CTDB 4.17 routes them.
//!
//! A client registers a 64-bit tunnel id with its own daemon
//! (`TUNNEL_REGISTER`, the id in the control's srvid field); each id has at
//! most one client per node (a second registration of the same id fails,
//! whichever client asks). A client's `REQ_TUNNEL` names a destination
//! node in its header: the daemon forwards it only if the destination is a
//! node of the nodes file (no broadcasts, no `CTDB_CURRENT_NODE`) and some
//! local client has registered the packet's tunnel id, and drops it with a
//! log line otherwise. The packet goes to the destination node (to itself
//! through the loop-back when it is this node) with this node as source
//! and no reqid; the receiving daemon passes tunnel id, flags and data to
//! the client that registered the id there, in a new packet whose header
//! names the receiving node as source, destination 0 and reqid 0 (what
//! CTDB's daemon writes). Unknown ids are dropped with a log line. Nothing
//! is answered: `REQUEST`/`REPLY` flags and their pairing belong to the
//! clients. A client's registrations end with `TUNNEL_DEREGISTER` (only
//! its own) or when it disconnects.

use std::collections::HashMap;

use bytes::Bytes;
use ctdb_protocol::header::HEADER_LEN;
use ctdb_protocol::keepalive::ReqTunnel;
use ctdb_protocol::{
    Body, ControlReply, ControlRequest, Header, Marshal, Operation, Packet, ReplyControl,
    ReqControl,
};
use tracing::{debug, error, info};

use crate::control::ControlCtx;
use crate::messaging::ClientId;

/// Which local client owns which tunnel id.
#[derive(Debug, Default)]
pub struct Tunnels {
    owners: HashMap<u64, ClientId>,
}

/// Where a client's tunnel packet goes.
#[derive(Debug, PartialEq)]
pub struct Forward {
    pub dest: u32,
    pub bytes: Bytes,
}

impl Tunnels {
    /// Registers `id` for `client`; false if any client has it already.
    pub fn register(&mut self, id: u64, client: ClientId) -> bool {
        if self.owners.contains_key(&id) {
            return false;
        }
        self.owners.insert(id, client);
        true
    }

    /// Deregisters `id`; false unless `client` had registered it.
    pub fn deregister(&mut self, id: u64, client: ClientId) -> bool {
        if self.owners.get(&id) != Some(&client) {
            return false;
        }
        self.owners.remove(&id);
        true
    }

    /// Forgets every tunnel of a client that went away.
    pub fn remove_client(&mut self, client: ClientId) {
        self.owners.retain(|_, c| *c != client);
    }

    /// The client that registered `id` here.
    pub fn owner(&self, id: u64) -> Option<ClientId> {
        self.owners.get(&id).copied()
    }

    /// Number of registered tunnel ids.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// `TUNNEL_REGISTER` / `TUNNEL_DEREGISTER` (status -1 and a log line
    /// on failure, as CTDB answers). Only a local client can register.
    pub fn control(&mut self, ctx: &ControlCtx, req: &ReqControl) -> ReplyControl {
        let id = req.srvid;
        let Some(client) = ctx.client else {
            error!("Bad client_id in tunnel control from node {}", ctx.srcnode);
            return ReplyControl::status(-1);
        };
        match req.data {
            ControlRequest::TunnelRegister => {
                if !self.register(id, client) {
                    error!("Tunnel id 0x{id:x} already registered");
                    return ReplyControl::status(-1);
                }
                info!("Registered tunnel for id 0x{id:x}");
                ReplyControl::ok(ControlReply::TunnelRegister)
            }
            ControlRequest::TunnelDeregister => {
                if !self.deregister(id, client) {
                    error!("Failed to deregister tunnel id 0x{id:x}");
                    return ReplyControl::status(-1);
                }
                ReplyControl::ok(ControlReply::TunnelDeregister)
            }
            _ => ReplyControl::status(-1),
        }
    }

    /// A client's `REQ_TUNNEL` (`pkt` is the whole packet): the packet to
    /// send to its destination node, or `None` when it is dropped.
    /// `nodes` is the size of the nodes file (CTDB's `num_nodes`).
    pub fn from_client(
        &self,
        client: ClientId,
        pkt: &[u8],
        nodes: usize,
        pnn: u32,
        generation: u32,
    ) -> Option<Forward> {
        let (hdr, t) = match parse(pkt) {
            Ok(x) => x,
            Err(e) => {
                error!("client {client}: malformed tunnel packet ({e}); dropped");
                return None;
            }
        };
        if hdr.destnode as usize >= nodes {
            error!("Invalid destination 0x{:x}", hdr.destnode);
            return None;
        }
        if self.owner(t.tunnel_id).is_none() {
            error!("tunnel id 0x{:x} not registered, dropping pkt", t.tunnel_id);
            return None;
        }
        let mut h = Header::new(Operation::ReqTunnel, hdr.destnode, pnn, 0);
        h.generation = generation;
        Some(Forward {
            dest: hdr.destnode,
            bytes: Packet::new(h, Body::ReqTunnel(t)).encode().into(),
        })
    }

    /// A `REQ_TUNNEL` from a node (or this node's loop-back): the client
    /// to hand it to and the packet it gets, or `None` when nobody here
    /// registered its tunnel id.
    pub fn from_node(
        &self,
        src: u32,
        pkt: &[u8],
        pnn: u32,
        generation: u32,
    ) -> Option<(ClientId, Bytes)> {
        let (_, t) = match parse(pkt) {
            Ok(x) => x,
            Err(e) => {
                error!("malformed tunnel packet from node {src} ({e}); dropped");
                return None;
            }
        };
        let Some(client) = self.owner(t.tunnel_id) else {
            error!("Tunnel id 0x{:x} not registered", t.tunnel_id);
            return None;
        };
        debug!(
            "tunnel 0x{:x} from node {src}: {} bytes to client {client}",
            t.tunnel_id,
            t.data.len()
        );
        let mut h = Header::new(Operation::ReqTunnel, 0, pnn, 0);
        h.generation = generation;
        Some((client, Packet::new(h, Body::ReqTunnel(t)).encode().into()))
    }
}

fn parse(pkt: &[u8]) -> Result<(Header, ReqTunnel), ctdb_protocol::Error> {
    let (hdr, _) = Header::pull(pkt)?;
    let (t, _) = ReqTunnel::pull(pkt.get(HEADER_LEN..).unwrap_or_default())?;
    Ok((hdr, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::header::{CTDB_BROADCAST_ALL, CTDB_CURRENT_NODE};
    use ctdb_protocol::keepalive::tunnel_flags;

    fn tunnel_pkt(dest: u32, src: u32, reqid: u32, id: u64, data: &[u8]) -> Vec<u8> {
        let t = ReqTunnel {
            tunnel_id: id,
            flags: tunnel_flags::REQUEST | tunnel_flags::NOREPLY,
            data: data.to_vec(),
        };
        Packet::new(
            Header::new(Operation::ReqTunnel, dest, src, reqid),
            Body::ReqTunnel(t),
        )
        .encode()
    }

    fn decode(b: &[u8]) -> (Header, ReqTunnel) {
        parse(b).unwrap()
    }

    fn ctx(client: Option<ClientId>) -> ControlCtx {
        ControlCtx {
            srcnode: 0,
            client,
            client_id: client.unwrap_or(0),
        }
    }

    fn ctl(data: ControlRequest, id: u64) -> ReqControl {
        let mut r = ReqControl::new(data);
        r.srvid = id;
        r
    }

    #[test]
    fn one_owner_per_id_and_only_the_owner_deregisters() {
        let mut t = Tunnels::default();
        let reg = ctl(ControlRequest::TunnelRegister, 7);
        let dereg = ctl(ControlRequest::TunnelDeregister, 7);
        assert_eq!(t.control(&ctx(Some(1)), &reg).status, 0);
        assert_eq!(t.control(&ctx(Some(1)), &reg).status, -1);
        assert_eq!(t.control(&ctx(Some(2)), &reg).status, -1);
        assert_eq!(t.control(&ctx(Some(2)), &dereg).status, -1);
        assert_eq!(t.control(&ctx(None), &reg).status, -1);
        assert_eq!(t.owner(7), Some(1));
        assert_eq!(t.control(&ctx(Some(1)), &dereg).status, 0);
        assert_eq!(t.control(&ctx(Some(1)), &dereg).status, -1);
        assert_eq!(t.control(&ctx(Some(2)), &reg).status, 0);
        t.remove_client(2);
        assert!(t.is_empty());
    }

    #[test]
    fn client_packets_go_to_real_nodes_of_registered_tunnels() {
        let mut t = Tunnels::default();
        let p = tunnel_pkt(2, 1, 99, 5, b"hello");
        // Nobody here registered 5.
        assert_eq!(t.from_client(3, &p, 3, 1, 77), None);
        // Any local client's registration lets it through.
        t.register(5, 4);
        let f = t.from_client(3, &p, 3, 1, 77).unwrap();
        assert_eq!(f.dest, 2);
        let (h, body) = decode(&f.bytes);
        assert_eq!(
            (h.destnode, h.srcnode, h.reqid, h.generation),
            (2, 1, 0, 77)
        );
        assert_eq!(body.tunnel_id, 5);
        assert_eq!(body.data, b"hello");
        assert_eq!(body.flags, tunnel_flags::REQUEST | tunnel_flags::NOREPLY);
        // No broadcasts, no "current node", nothing past the nodes file.
        for dest in [3, CTDB_BROADCAST_ALL, CTDB_CURRENT_NODE] {
            assert_eq!(
                t.from_client(3, &tunnel_pkt(dest, 1, 1, 5, b"x"), 3, 1, 77),
                None
            );
        }
        // Garbage is dropped, not a panic.
        assert_eq!(t.from_client(3, &p[..HEADER_LEN + 4], 3, 1, 77), None);
    }

    #[test]
    fn node_packets_reach_the_registered_client_only() {
        let mut t = Tunnels::default();
        let p = tunnel_pkt(1, 0, 0, 9, b"data");
        assert_eq!(t.from_node(0, &p, 1, 5), None);
        t.register(9, 12);
        let (c, b) = t.from_node(0, &p, 1, 5).unwrap();
        assert_eq!(c, 12);
        let (h, body) = decode(&b);
        assert_eq!((h.destnode, h.srcnode, h.reqid, h.generation), (0, 1, 0, 5));
        assert_eq!(body.tunnel_id, 9);
        assert_eq!(body.data, b"data");
        assert_eq!(t.from_node(0, &p[..10], 1, 5), None);
    }
}
