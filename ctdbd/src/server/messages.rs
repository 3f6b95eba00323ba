//! Local clients and messages: a client accepted, sent to and forgotten
//! (its notify messages sent then), messages routed to nodes and
//! broadcasts, delivered to the clients registered for their srvid (or to
//! the database layer), and dropped for a client that does not read.
use bytes::Bytes;
use ctdb_protocol::header::{
    CTDB_BROADCAST_ACTIVE, CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED, CTDB_MULTICAST,
};
use ctdb_protocol::{Body, Header, Operation, Packet, ReqMessage};
use tokio::net::UnixStream;
use tracing::{debug, error, trace, warn};

use crate::control::ClientInfo;
use crate::messaging::ClientId;

use super::{PendingKind, Server};

/// Who a message for local clients comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sender {
    /// A client (here or on another node) or another daemon.
    Peer,
    /// This daemon, with records a client asked for.
    Daemon,
}

/// Encodes a `REQ_MESSAGE` with raw payload bytes.
pub(super) fn message_bytes(h: Header, srvid: u64, data: &[u8]) -> Bytes {
    let p = Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data.to_vec())));
    p.encode().into()
}

impl Server {
    pub(super) fn client_accepted(&mut self, stream: UnixStream) {
        let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
        let id = self.next_client;
        self.next_client = self.next_client.wrapping_add(1).max(1);
        let sock = match crate::clients::serve(id, stream, &self.ready) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot serve client with pid:{pid}: {e}");
                return;
            }
        };
        debug!("Connected client with pid:{pid}");
        self.clients.insert(id, sock);
        self.core.clients.insert(
            id,
            ClientInfo {
                pid,
                notify: Vec::new(),
            },
        );
    }

    /// Closes a client's connection and forgets it.
    pub(super) fn drop_client(&mut self, id: ClientId) {
        if let Some(c) = self.clients.remove(&id) {
            c.close();
        }
        self.core.srvids.remove_client(id);
        self.core.tunnels.remove_client(id);
        self.pending
            .retain(|_, p| !matches!(p.kind, PendingKind::Forward { id: i, .. } if i == id));
        self.with_dbs(|d, env| d.client_gone(env, id));
        self.takeover.client_gone(&self.core, id);
        if let Some(info) = self.core.clients.remove(&id) {
            for n in info.notify {
                self.send_message(CTDB_BROADCAST_CONNECTED, n.srvid, &n.data);
            }
        }
    }

    pub(super) fn send_client(&mut self, id: ClientId, bytes: Bytes) {
        if let Some(c) = self.clients.get(&id) {
            if c.queue(bytes) {
                self.dirty_clients.push(id);
            }
            self.core.stats.bump(|s| s.client_packets_sent += 1);
        }
    }

    /// The nodes a broadcast to `dest` reaches (this node included).
    pub(super) fn broadcast_targets(&self, dest: u32) -> Vec<u32> {
        let nodes = &self.core.node.nodes;
        match dest {
            CTDB_BROADCAST_ALL => nodes
                .iter()
                .filter(|n| !n.is_deleted())
                .map(|n| n.pnn)
                .collect(),
            CTDB_BROADCAST_ACTIVE => {
                let mut v: Vec<u32> = self.core.node.vnnmap.map.clone();
                v.sort_unstable();
                v.dedup();
                v
            }
            CTDB_BROADCAST_CONNECTED => nodes
                .iter()
                .filter(|n| !n.is_deleted() && n.is_connected())
                .map(|n| n.pnn)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sends a message to `srvid` on node `dest` (or a broadcast).
    pub fn send_message(&mut self, dest: u32, srvid: u64, data: &[u8]) {
        self.send_message_as(dest, srvid, data, Sender::Peer);
    }

    pub(super) fn send_message_as(&mut self, dest: u32, srvid: u64, data: &[u8], from: Sender) {
        let targets = if matches!(
            dest,
            CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
        ) {
            self.broadcast_targets(dest)
        } else if dest == CTDB_MULTICAST {
            Vec::new()
        } else {
            vec![dest]
        };
        for pnn in targets {
            if pnn == self.pnn() {
                self.deliver_local(srvid, data, from);
            } else if self.core.node.valid_pnn(pnn) {
                let mut h = Header::new(Operation::ReqMessage, pnn, self.pnn(), 0);
                h.generation = self.generation();
                let b = message_bytes(h, srvid, data);
                self.send_node(pnn, b);
            } else {
                error!("Failed to send message to unknown node {pnn}");
            }
        }
    }

    /// Delivers a message to the local clients registered for `srvid`
    /// (or to the database layer, for the srvids it listens on).
    pub(super) fn deliver_local(&mut self, srvid: u64, data: &[u8], from: Sender) {
        if self.with_dbs(|d, env| d.message(env, srvid, data)) {
            return;
        }
        let recipients = self.core.srvids.recipients(srvid);
        if recipients.is_empty() {
            trace!("no client registered for srvid 0x{srvid:x}");
            return;
        }
        let mut h = Header::new(Operation::ReqMessage, 0, self.pnn(), 0);
        h.generation = self.generation();
        let b = message_bytes(h, srvid, data);
        for id in recipients {
            if self.client_full(id, srvid, b.len(), from) {
                continue;
            }
            self.send_client(id, b.clone());
        }
    }

    /// Whether a message for client `id` must be dropped: more packets
    /// than `MaxQueueDropMsg`, or more bytes than the client queue limit,
    /// wait to be written to it. The first drop of a run is logged, the
    /// run's total when it ends; drops are counted.
    ///
    /// Records a client asked for are held to the packet limit only, as
    /// CTDB holds every message: those this daemon produces (traverse
    /// data, pulled records) and pulled records from other nodes (srvids
    /// of the recovery range). A client may read them slowly on purpose
    /// (a recovery helper reads only as fast as it stores), and one
    /// dropped would fail its traverse or recovery.
    pub(super) fn client_full(
        &mut self,
        id: ClientId,
        srvid: u64,
        len: usize,
        from: Sender,
    ) -> bool {
        let Some(c) = self.clients.get(&id) else {
            return false;
        };
        let max_packets = self.core.tunables.max_queue_depth_drop_msg as usize;
        let (packets, bytes) = (c.queued(), c.queued_bytes());
        let recovery = srvid & ctdb_protocol::message::srvid::PREFIX16_MASK
            == ctdb_protocol::message::srvid::RECOVERY;
        let bytes_limited = from == Sender::Peer && !recovery;
        let full = (max_packets != 0 && packets >= max_packets)
            || (bytes_limited && bytes >= self.cfg.client_queue_limit);
        if !full {
            if let Some((n, b)) = c.end_drops() {
                warn!("client {id}: reading again; {n} messages ({b} bytes) were dropped for it");
            }
            return false;
        }
        if c.count_drop(len) {
            let pid = self.core.clients.get(&id).map_or(0, |i| i.pid);
            warn!(
                "client {id} (pid {pid}) does not read: {packets} packets ({bytes} bytes) queued; dropping messages for it (first for srvid 0x{srvid:x})"
            );
        }
        let d = &mut self.core.stats.client_drops;
        d.messages += 1;
        d.bytes += len as u64;
        true
    }
}
