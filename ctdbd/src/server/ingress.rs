//! Where a packet enters: the ready connections served round-robin within
//! their budgets, a client's packets and a node's packets checked and
//! handed on by operation, connections that end, and the fuzzing entry
//! points that feed the same paths.
use std::net::SocketAddr;

use bytes::BytesMut;
use ctdb_protocol::Marshal as _;
use ctdb_protocol::call::{ReplyError, ReqCall};
use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::header::{CTDB_CURRENT_NODE, HEADER_LEN};
use ctdb_protocol::{Body, Header, Operation, Packet, ReplyControl, ReqControl, ReqMessage};
use tracing::{error, info, warn};

use crate::control::{ClientInfo, ControlCtx};
use crate::event_loop::{Next, Token};
use crate::messaging::ClientId;
use crate::transport::{self};

use super::{CONN_PACKETS, MAX_PACKET, ReplyTo, Sender, Server, TURN_PACKETS};

impl Server {
    /// Serves the connections that are ready, round-robin: at most
    /// [`CONN_PACKETS`] each, [`TURN_PACKETS`] in all.
    pub(super) fn serve_ready(&mut self) {
        let mut budget = TURN_PACKETS;
        for _ in 0..self.ready.len() {
            if budget == 0 {
                break;
            }
            let Some(t) = self.ready.pop() else {
                break;
            };
            let n = match t {
                Token::Client(id) => self.serve_client(id),
                Token::NodeIn { pnn, link } => self.serve_in_link(pnn, link),
            };
            budget = budget.saturating_sub(n.max(1));
        }
    }

    /// Reads and handles client `id`'s packets, up to its budget; returns
    /// how many.
    fn serve_client(&mut self, id: ClientId) -> usize {
        let limit = self.cfg.client_queue_limit;
        match self.clients.get(&id) {
            Some(c) => c.taken(),
            None => return 0,
        }
        let mut n = 0;
        loop {
            let Some(c) = self.clients.get_mut(&id) else {
                return n;
            };
            if n == CONN_PACKETS {
                c.requeue();
                return n;
            }
            match c.next_packet(limit) {
                Next::Packet(pkt) => {
                    n += 1;
                    self.client_packet(id, pkt);
                    self.after_event();
                }
                Next::Pending => return n,
                Next::Closed(error) => {
                    self.client_closed(id, error);
                    return n;
                }
            }
        }
    }

    /// Reads and handles packets of node `pnn`'s incoming connection
    /// `link`, up to its budget; returns how many.
    fn serve_in_link(&mut self, pnn: u32, link: u64) -> usize {
        let mut n = 0;
        loop {
            let Some(l) = self
                .links
                .get_mut(&pnn)
                .and_then(|l| l.in_link.as_mut())
                .filter(|i| i.id == link)
            else {
                return n;
            };
            if n == 0 {
                l.reader.taken();
            }
            if n == CONN_PACKETS {
                l.reader.requeue();
                return n;
            }
            let peer = l.peer;
            match l.reader.next_packet() {
                Next::Packet(pkt) => {
                    n += 1;
                    if self.checked_node_packet(pnn, peer, pkt) {
                        self.after_event();
                    } else {
                        return n;
                    }
                }
                Next::Pending => return n,
                Next::Closed(error) => {
                    self.in_link_closed(pnn, link, error);
                    return n;
                }
            }
        }
    }

    /// Client `id`'s connection ended (or failed).
    fn client_closed(&mut self, id: ClientId, error: Option<String>) {
        if let Some(e) = error {
            warn!("client {id}: {e}; closing its connection");
        }
        self.drop_client(id);
        self.after_event();
    }

    /// Node `pnn`'s incoming connection `link` ended (or failed).
    fn in_link_closed(&mut self, pnn: u32, link: u64, error: Option<String>) {
        let cur = self
            .links
            .get(&pnn)
            .and_then(|l| l.in_link.as_ref())
            .map(|x| (x.id, x.peer));
        if let Some((id, peer)) = cur
            && id == link
        {
            match error {
                Some(e) => {
                    error!("incoming connection from node {pnn} ({peer}): {e}; closing it")
                }
                None => info!("incoming connection from node {pnn} ({peer}) closed"),
            }
            if let Some(l) = self.links.get_mut(&pnn) {
                l.in_link = None;
            }
            self.node_dead(pnn, false);
        }
        self.after_event();
    }

    fn client_packet(&mut self, id: ClientId, mut pkt: BytesMut) {
        self.core.stats.bump(|s| s.client_packets_recv += 1);
        self.with_dbs(|d, _| d.client_spoke(id));
        let hdr = match Header::pull(&pkt) {
            Ok((h, _)) => h,
            Err(e) => {
                error!("client {id}: bad packet ({e}); closing its connection");
                self.drop_client(id);
                return;
            }
        };
        match hdr.operation {
            Operation::ReqControl => {
                self.core.stats.bump(|s| s.client.req_control += 1);
                self.client_control(id, hdr, &mut pkt)
            }
            Operation::ReqMessage => {
                self.core.stats.bump(|s| s.client.req_message += 1);
                self.client_message(id, hdr, &mut pkt)
            }
            Operation::ReqCall => {
                self.core.stats.bump(|s| s.client.req_call += 1);
                match ReqCall::pull(&pkt[HEADER_LEN..]) {
                    Ok((c, _)) => {
                        self.with_dbs(|d, env| d.client_call(env, id, hdr.reqid, c));
                    }
                    Err(e) => {
                        warn!("client {id}: malformed REQ_CALL ({e})");
                        let e = ReplyError {
                            status: -1,
                            msg: format!("malformed call: {e}\0").into_bytes(),
                        };
                        let mut h = Header::new(Operation::ReplyError, 0, self.pnn(), hdr.reqid);
                        h.generation = self.generation();
                        self.send_client(id, Packet::new(h, Body::ReplyError(e)).encode().into());
                    }
                }
            }
            Operation::ReqTunnel => {
                self.core.stats.bump(|s| s.client.req_tunnel += 1);
                let (nodes, pnn, g) = (self.core.node.nodes.len(), self.pnn(), self.generation());
                if let Some(f) = self.core.tunnels.from_client(id, &pkt, nodes, pnn, g) {
                    self.send_node(f.dest, f.bytes);
                }
            }
            op => {
                error!("client {id}: unexpected {op:?} packet; closing its connection");
                self.drop_client(id);
            }
        }
    }

    fn client_message(&mut self, id: ClientId, hdr: Header, pkt: &mut BytesMut) {
        let (srvid, data) = match ReqMessage::raw_payload(&pkt[HEADER_LEN..]) {
            Ok((s, d)) => (s, d.to_vec()),
            Err(e) => {
                error!("client {id}: malformed message ({e}); closing its connection");
                self.drop_client(id);
                return;
            }
        };
        let dest = if hdr.destnode == CTDB_CURRENT_NODE {
            self.pnn()
        } else {
            hdr.destnode
        };
        self.send_message(dest, srvid, &data);
    }

    pub(super) fn node_packet(&mut self, pnn: u32, pkt: BytesMut) {
        if pnn != self.pnn() {
            self.core.stats.bump(|s| s.node_packets_recv += 1);
        }
        if let Some(n) = self.core.node.node_mut(pnn) {
            n.rx_cnt = n.rx_cnt.wrapping_add(1);
        }
        let hdr = match Header::pull(&pkt) {
            Ok((h, _)) => h,
            Err(e) => {
                error!("bad packet from node {pnn} ({e}); tearing the connection down");
                self.node_dead(pnn, true);
                return;
            }
        };
        let srcnode = if self.core.node.valid_pnn(hdr.srcnode) {
            hdr.srcnode
        } else {
            pnn
        };
        match hdr.operation {
            Operation::ReqControl => {
                self.core.stats.bump(|s| s.node.req_control += 1);
                let req = match ReqControl::pull(&pkt[HEADER_LEN..]) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        warn!("malformed control from node {pnn}: {e}");
                        self.reply(
                            ReplyTo::Node {
                                pnn: srcnode,
                                reqid: hdr.reqid,
                            },
                            ReplyControl::error(-1, format!("malformed control: {e}")),
                        );
                        return;
                    }
                };
                let to = if req.flags & CTDB_CTRL_FLAG_NOREPLY != 0 {
                    ReplyTo::Nobody
                } else {
                    ReplyTo::Node {
                        pnn: srcnode,
                        reqid: hdr.reqid,
                    }
                };
                let ctx = ControlCtx {
                    srcnode,
                    client: None,
                    client_id: req.client_id,
                };
                self.local_control(ctx, &req, to);
            }
            Operation::ReplyControl => {
                self.core.stats.bump(|s| s.node.reply_control += 1);
                self.node_reply(hdr, pkt);
            }
            Operation::ReqMessage => {
                self.core.stats.bump(|s| s.node.req_message += 1);
                match ReqMessage::raw_payload(&pkt[HEADER_LEN..]) {
                    Ok((srvid, data)) => {
                        let data = data.to_vec();
                        self.deliver_local(srvid, &data, Sender::Peer);
                    }
                    Err(e) => warn!("malformed message from node {pnn}: {e}"),
                }
            }
            Operation::ReqKeepalive => {
                self.core.stats.bump(|s| s.keepalive_packets_recv += 1);
                self.check_keepalive(pnn, &pkt);
            }
            Operation::ReqCall
            | Operation::ReplyCall
            | Operation::ReqDmaster
            | Operation::ReplyDmaster
            | Operation::ReplyError => {
                self.core.stats.bump(|s| match hdr.operation {
                    Operation::ReqCall => s.node.req_call += 1,
                    Operation::ReplyCall => s.node.reply_call += 1,
                    Operation::ReqDmaster => s.node.req_dmaster += 1,
                    Operation::ReplyDmaster => s.node.reply_dmaster += 1,
                    _ => s.node.reply_error += 1,
                });
                let b = pkt.freeze();
                self.with_dbs(|d, env| d.node_packet(env, b));
            }
            Operation::ReqTunnel => {
                self.core.stats.bump(|s| s.node.req_tunnel += 1);
                let (me, g) = (self.pnn(), self.generation());
                if let Some((id, b)) = self.core.tunnels.from_node(pnn, &pkt, me, g) {
                    self.send_client(id, b);
                }
            }
        }
    }

    /// Checks a packet from node `pnn` (at `peer`) and handles it, or
    /// closes the node's connection; `false` if it was closed.
    fn checked_node_packet(&mut self, pnn: u32, peer: SocketAddr, pkt: BytesMut) -> bool {
        let nodes = &self.core.node;
        let is_node = |p: u32| nodes.node(p).is_some_and(|n| !n.is_deleted());
        match transport::check_packet(pnn, &pkt, is_node) {
            Ok(_) => {
                if let Some(i) = self.links.get_mut(&pnn).and_then(|l| l.in_link.as_mut()) {
                    i.proven = true;
                }
                self.node_packet(pnn, pkt);
                true
            }
            Err(e) => {
                self.core.stats.bump(|s| s.node_packets_recv += 1);
                error!("node {pnn} ({peer}): {e}; closing its connection");
                self.node_dead(pnn, true);
                // Not connected (yet): node_dead left the link alone.
                self.close_in_link(pnn);
                false
            }
        }
    }

    /// For fuzzing: `bytes` as they would arrive on node `pnn`'s incoming
    /// connection, framed and checked as the reader and the loop do, until
    /// the stream ends or the connection would be closed.
    #[doc(hidden)]
    pub fn fuzz_node_stream(&mut self, pnn: u32, bytes: &[u8], chunk: usize) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 4379));
        let mut f = ctdb_protocol::framing::Framer::new(MAX_PACKET);
        for c in bytes.chunks(chunk.max(1)) {
            f.push(c);
            loop {
                match f.next_packet() {
                    Ok(Some(pkt)) => {
                        if !self.checked_node_packet(pnn, peer, pkt) {
                            return;
                        }
                        self.after_event();
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// For fuzzing: `bytes` as they would arrive from client `id`, framed
    /// as its reader frames them and handed to the loop, until the stream
    /// ends or the connection would be closed.
    #[doc(hidden)]
    pub fn fuzz_client_stream(&mut self, id: ClientId, bytes: &[u8], chunk: usize) {
        self.core.clients.entry(id).or_insert(ClientInfo {
            pid: 1,
            notify: Vec::new(),
        });
        let mut f = ctdb_protocol::framing::Framer::new(MAX_PACKET);
        for c in bytes.chunks(chunk.max(1)) {
            f.push(c);
            loop {
                match f.next_packet() {
                    Ok(Some(pkt)) => {
                        self.client_packet(id, pkt);
                        self.after_event();
                        if !self.core.clients.contains_key(&id) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.client_closed(id, Some("framing".into()));
                        return;
                    }
                }
            }
        }
        self.client_closed(id, None);
    }
}
