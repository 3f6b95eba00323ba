//! Where node links are managed: the outgoing connection to every other
//! node and the incoming one from it, a node becoming connected or dead
//! (and what waited on it failing), sending to a node (or to this node, on
//! the next turn), keepalives (sent, counted, version-checked) and the
//! `STARTUP` broadcast.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, HEADER_LEN};
use ctdb_protocol::keepalive::ReqKeepalive;
use ctdb_protocol::{Body, ControlRequest, Header, Operation, Packet, ReqControl};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::transport::{self, InLink, OutCmd, OutLink};

use super::Server;
use super::held::{Held, NotHeld};

/// The keepalive version CTDB 4.17 sends: (major << 16) | minor.
pub const KEEPALIVE_VERSION: u32 = (4 << 16) | 17;

/// The version this node sends and checks keepalives with:
/// [`KEEPALIVE_VERSION`], or `CTDB_TEST_SAMBA_VERSION` when set to a
/// positive number (CTDB's way to test the mixed-version check).
pub fn keepalive_version() -> u32 {
    static V: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *V.get_or_init(|| match std::env::var("CTDB_TEST_SAMBA_VERSION") {
        Err(_) => KEEPALIVE_VERSION,
        Ok(t) => match t.trim().parse::<i64>() {
            Ok(v) if v > 0 && v <= i64::from(u32::MAX) => v as u32,
            _ => {
                warn!("Failed to parse env var: CTDB_TEST_SAMBA_VERSION={t}");
                KEEPALIVE_VERSION
            }
        },
    })
}

/// The links to one other node.
#[derive(Default)]
pub(super) struct NodeLinks {
    /// The connector's command queue.
    pub(super) out: Option<mpsc::UnboundedSender<OutCmd>>,
    pub(super) out_up: bool,
    /// The outgoing connection, while up.
    pub(super) link: Option<OutLink>,
    pub(super) in_link: Option<InLink>,
    /// Record packets waiting for the outgoing connection ([`super::held`]).
    pub(super) held: Held,
}

impl NodeLinks {
    /// Forgets the outgoing connection (shutting it down).
    pub(super) fn drop_link(&mut self) {
        if let Some(l) = self.link.take() {
            l.close();
        }
    }
}

impl Server {
    /// Starts the outgoing link to every other node.
    pub fn start_transport(&mut self) {
        let others: Vec<u32> = self
            .core
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.pnn != self.pnn())
            .map(|n| n.pnn)
            .collect();
        for pnn in others {
            self.start_out_link(pnn);
        }
        self.next_keepalive = Instant::now() + self.keepalive_interval();
        info!("Keepalive monitoring has been started");
    }

    pub(super) fn start_out_link(&mut self, pnn: u32) {
        let Some(peer) = self.core.node.node(pnn).and_then(|n| n.addr) else {
            return;
        };
        let tx = transport::spawn_connector(pnn, self.cfg.my_addr.ip(), peer, self.events());
        let l = self.links.entry(pnn).or_default();
        l.out = Some(tx);
        l.out_up = false;
    }

    pub(super) fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.core.tunables.keepalive_interval.max(1)))
    }

    pub(super) fn node_accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        let Some(pnn) = self
            .core
            .node
            .pnn_of(peer.ip())
            .filter(|p| *p != self.pnn())
        else {
            error!("Refused connection from unknown node {}", peer.ip());
            return;
        };
        if self.links.get(&pnn).is_some_and(|l| l.in_link.is_some()) {
            // The node's link is up: whoever this is, it is not the node.
            error!("Incoming queue active, rejecting connection from {peer} (node {pnn})");
            return;
        }
        let id = self.next_link;
        self.next_link += 1;
        let reader = match transport::in_reader(pnn, id, stream, &self.ready) {
            Ok(r) => r,
            Err(e) => {
                error!("cannot serve connection from {peer} (node {pnn}): {e}");
                return;
            }
        };
        self.links.entry(pnn).or_default().in_link = Some(InLink {
            id,
            peer,
            reader,
            accepted: Instant::now(),
            proven: false,
        });
        self.maybe_connected(pnn);
    }

    /// The outgoing connection to `pnn` is up: what was kept for it goes
    /// first.
    pub(super) fn node_out_up(&mut self, pnn: u32, link: OutLink) {
        let generation = self.generation();
        let Some(l) = self.links.get_mut(&pnn) else {
            link.close();
            return;
        };
        l.out_up = true;
        l.drop_link();
        let kept = l.held.take(generation, Instant::now());
        if !kept.send.is_empty() || kept.dropped > 0 {
            info!(
                "outgoing connection to node {pnn} up: sending {} record packets kept for it ({} not sent: over the bounds, too old, or of a past generation)",
                kept.send.len(),
                kept.dropped
            );
            let n = kept.send.len() as u32;
            let mut dirty = false;
            for b in kept.send {
                dirty |= link.queue(b);
            }
            if dirty {
                self.dirty_nodes.push(pnn);
            }
            self.core
                .stats
                .bump(|s| s.node_packets_sent = s.node_packets_sent.wrapping_add(n));
        }
        l.link = Some(link);
        self.maybe_connected(pnn);
    }

    /// Forgets kept packets that waited too long.
    pub(super) fn expire_held(&mut self, now: Instant) {
        for l in self.links.values_mut() {
            l.held.expire(now);
        }
    }

    pub(super) fn close_in_link(&mut self, pnn: u32) {
        if let Some(i) = self.links.get_mut(&pnn).and_then(|l| l.in_link.take()) {
            i.close();
        }
    }

    /// Incoming connections that sent nothing within the keepalive limit
    /// are closed: a real node speaks within a keepalive interval of both
    /// directions being up, a squatter would hold the node's place.
    pub(super) fn expire_silent_links(&mut self, now: Instant) {
        let limit = Duration::from_secs(u64::from(
            self.core
                .tunables
                .keepalive_interval
                .max(1)
                .saturating_mul(self.core.tunables.keepalive_limit.max(1)),
        ));
        let silent: Vec<(u32, SocketAddr)> = self
            .links
            .iter()
            .filter_map(|(p, l)| l.in_link.as_ref().map(|i| (*p, i)))
            .filter(|(_, i)| !i.proven && now.duration_since(i.accepted) > limit)
            .map(|(p, i)| (p, i.peer))
            .collect();
        for (pnn, peer) in silent {
            error!(
                "node {pnn} ({peer}): nothing received within {} s of connecting; closing its connection",
                limit.as_secs()
            );
            self.close_in_link(pnn);
            self.node_dead(pnn, true);
        }
    }

    pub(super) fn maybe_connected(&mut self, pnn: u32) {
        let up = self
            .links
            .get(&pnn)
            .is_some_and(|l| l.out_up && l.in_link.is_some());
        if up && self.core.node.node_connected(pnn) {
            let name = self.node_name(pnn);
            error!(
                "connected to {name} - {} connected",
                self.core.node.num_connected()
            );
        }
    }

    fn node_name(&self, pnn: u32) -> String {
        self.core
            .node
            .node(pnn)
            .and_then(|n| n.addr)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("node {pnn}"))
    }

    /// Node `pnn` is gone: mark it, fail what waits on it, and tear its
    /// links down so both sides reconnect cleanly.
    pub(super) fn node_dead(&mut self, pnn: u32, teardown_in: bool) {
        if let Some(l) = self.links.get_mut(&pnn) {
            if teardown_in && let Some(i) = l.in_link.take() {
                i.close();
            }
            if l.out_up {
                l.out_up = false;
                l.drop_link();
                if let Some(tx) = &l.out {
                    let _ = tx.send(OutCmd::Restart);
                }
            }
        }
        if self.core.node.node_dead(pnn) {
            let name = self.node_name(pnn);
            error!(
                "node {name} is dead: {} connected",
                self.core.node.num_connected()
            );
            let failed: Vec<u32> = self
                .pending
                .iter()
                .filter(|(_, p)| p.dest == pnn)
                .map(|(r, _)| *r)
                .collect();
            for r in failed {
                self.fail_pending(r, "node is disconnected");
            }
        }
    }

    pub(super) fn send_node(&mut self, pnn: u32, bytes: Bytes) {
        if pnn == self.pnn() {
            // Our own packets loop back on the next turn (counted as sent,
            // as CTDB counts what it queues to itself; not as received).
            self.core.stats.bump(|s| s.node_packets_sent += 1);
            self.loopback.push(BytesMut::from(&bytes[..]));
            return;
        }
        let Some(l) = self.links.get_mut(&pnn) else {
            debug!("no link to node {pnn}, dropping packet");
            return;
        };
        if !l.out_up {
            match l.held.hold(bytes, Instant::now()) {
                Ok(()) => debug!("no outgoing connection to node {pnn} yet, packet kept"),
                Err(NotHeld::NotWorth | NotHeld::StillFull) => {
                    debug!("no outgoing connection to node {pnn}, dropping packet")
                }
                Err(NotHeld::Full) => warn!(
                    "no outgoing connection to node {pnn} and its queue of kept packets is full: dropping record packets until it is up"
                ),
            }
            return;
        }
        if let Some(link) = &l.link {
            if link.queue(bytes) {
                self.dirty_nodes.push(pnn);
            }
            self.core.stats.bump(|s| s.node_packets_sent += 1);
        }
    }

    pub(super) fn check_keepalive(&mut self, pnn: u32, pkt: &[u8]) {
        if self.core.tunables.allow_mixed_versions == 1 {
            return;
        }
        let body = &pkt[HEADER_LEN..];
        let Ok((k, _)) = <ReqKeepalive as ctdb_protocol::Marshal>::pull(body) else {
            error!("Keepalive version missing from node {pnn}");
            return;
        };
        let mine = keepalive_version();
        if k.version != mine {
            let my_uptime = self.core.start_instant.elapsed().as_secs() as u32;
            if k.uptime > my_uptime || (k.uptime == my_uptime && k.version > mine) {
                error!(
                    "Keepalive version mismatch 0x{mine:08x} != 0x{:08x} from node {pnn}",
                    k.version
                );
                error!("CTDB Cluster with mixed versions, cannot continue");
                self.shutdown = true;
            }
        }
    }

    pub(super) fn keepalive_round(&mut self) {
        let limit = self.core.tunables.keepalive_limit;
        let others: Vec<u32> = self
            .core
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.pnn != self.pnn())
            .map(|n| n.pnn)
            .collect();
        for pnn in others {
            let Some(n) = self.core.node.node_mut(pnn) else {
                continue;
            };
            if !n.is_connected() {
                continue;
            }
            if n.rx_cnt == 0 {
                n.dead_count += 1;
            } else {
                n.dead_count = 0;
            }
            n.rx_cnt = 0;
            if n.dead_count >= limit {
                info!("dead count reached for node {pnn}");
                self.node_dead(pnn, true);
                continue;
            }
            self.send_keepalive(pnn);
        }
    }

    fn send_keepalive(&mut self, pnn: u32) {
        let mut h = Header::new(Operation::ReqKeepalive, pnn, self.pnn(), 0);
        h.generation = self.generation();
        let k = ReqKeepalive {
            version: keepalive_version(),
            uptime: self.core.start_instant.elapsed().as_secs() as u32,
        };
        let b: Bytes = Packet::new(h, Body::ReqKeepalive(Some(k))).encode().into();
        self.core.stats.bump(|s| s.keepalive_packets_sent += 1);
        self.send_node(pnn, b);
    }

    /// Tells the other nodes this node has started up (after its
    /// `startup` event, [`crate::monitor`]).
    pub(super) fn broadcast_startup(&mut self) {
        let mut req = ReqControl::new(ControlRequest::Startup);
        req.flags = CTDB_CTRL_FLAG_NOREPLY;
        for pnn in self.broadcast_targets(CTDB_BROADCAST_CONNECTED) {
            if pnn == self.pnn() {
                continue;
            }
            let mut h = Header::new(Operation::ReqControl, pnn, self.pnn(), 0);
            h.generation = self.generation();
            let b: Bytes = Packet::new(h, Body::ReqControl(req.clone()))
                .encode()
                .into();
            self.send_node(pnn, b);
        }
    }
}
