//! The node's view of the cluster: the node map with CTDB's flags, this
//! node's capabilities, run state, recovery mode, vnn map, ban, and the
//! administrative state changes (ban/unban, stop/continue,
//! disable/enable, flag updates pushed by the leader, nodes-file reload).
//!
//! Pure state with no I/O, so the fake daemon and tests can drive it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ctdb_protocol::header::INVALID_GENERATION;
use ctdb_protocol::types::{
    BanState, CTDB_RECOVERY_ACTIVE, CTDB_RECOVERY_NORMAL, NodeAndFlags, NodeFlagChange, NodeMap,
    Runstate, SockAddr, Timeval, VnnMap, capabilities, node_flags,
};

use crate::config::NodeEntry;

/// One node of the nodes file.
#[derive(Debug, Clone)]
pub struct Node {
    pub pnn: u32,
    /// `None` for a deleted node.
    pub addr: Option<SocketAddr>,
    pub flags: u32,
    /// Packets received since the last keepalive check.
    pub rx_cnt: u32,
    /// Keepalive intervals in a row with nothing received.
    pub dead_count: u32,
}

impl Node {
    pub fn is_deleted(&self) -> bool {
        self.flags & node_flags::DELETED != 0
    }
    pub fn is_connected(&self) -> bool {
        self.flags & node_flags::DISCONNECTED == 0
    }
    pub fn is_inactive(&self) -> bool {
        self.flags & node_flags::INACTIVE != 0
    }
}

fn entry_to_node(pnn: u32, e: &NodeEntry) -> Node {
    Node {
        pnn,
        addr: e.sockaddr(),
        flags: if e.is_deleted() {
            node_flags::DELETED | node_flags::DISCONNECTED
        } else {
            node_flags::UNHEALTHY | node_flags::DISCONNECTED
        },
        rx_cnt: 0,
        dead_count: 0,
    }
}

/// An active ban of this node.
#[derive(Debug, Clone, Copy)]
pub struct Ban {
    pub state: BanState,
    pub until: Instant,
}

/// Why an administrative request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("SET_BAN_STATE for node {0} refused: not this node")]
    NotThisNode(u32),
    #[error("node {0} is invalid")]
    InvalidNode(u32),
    #[error("attempt to set vnnmap when not in recovery")]
    NotInRecovery,
}

/// The node map and this node's state.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub pnn: u32,
    pub nodes: Vec<Node>,
    pub capabilities: u32,
    pub runstate: Runstate,
    pub recovery_mode: u32,
    pub vnnmap: VnnMap,
    pub ban: Option<Ban>,
    pub start_time: Timeval,
    pub last_recovery_started: Timeval,
    pub last_recovery_finished: Timeval,
    /// Set when this node became inactive, until the database layer is
    /// told ([`NodeState::take_became_inactive`]).
    became_inactive: bool,
}

impl NodeState {
    /// The state of a daemon just started as node `pnn` of `entries`:
    /// every other node disconnected and unhealthy, this node connected
    /// but unhealthy until it has recovered and started up, in recovery
    /// mode, with a vnn map of every node and an invalid generation.
    pub fn new(pnn: u32, entries: &[NodeEntry], caps: u32) -> NodeState {
        let mut nodes: Vec<Node> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| entry_to_node(i as u32, e))
            .collect();
        if let Some(me) = nodes.get_mut(pnn as usize) {
            me.flags &= !node_flags::DISCONNECTED;
        }
        let map = nodes
            .iter()
            .filter(|n| !n.is_deleted())
            .map(|n| n.pnn)
            .collect();
        NodeState {
            pnn,
            nodes,
            capabilities: caps,
            runstate: Runstate::Init,
            recovery_mode: CTDB_RECOVERY_ACTIVE,
            vnnmap: VnnMap {
                generation: INVALID_GENERATION,
                map,
            },
            ban: None,
            start_time: Timeval::now(),
            last_recovery_started: Timeval::default(),
            last_recovery_finished: Timeval::default(),
            became_inactive: false,
        }
    }

    /// The capabilities CTDB gives a node from its configuration.
    pub fn capabilities_from_config(leader: bool, lmaster: bool) -> u32 {
        let mut c = capabilities::FEATURES;
        if leader {
            c |= capabilities::RECMASTER;
        }
        if lmaster {
            c |= capabilities::LMASTER;
        }
        c
    }

    pub fn me(&self) -> &Node {
        &self.nodes[self.pnn as usize]
    }

    fn me_mut(&mut self) -> &mut Node {
        let pnn = self.pnn as usize;
        &mut self.nodes[pnn]
    }

    pub fn my_flags(&self) -> u32 {
        self.me().flags
    }

    pub fn node(&self, pnn: u32) -> Option<&Node> {
        self.nodes.get(pnn as usize)
    }

    pub fn node_mut(&mut self, pnn: u32) -> Option<&mut Node> {
        self.nodes.get_mut(pnn as usize)
    }

    /// A PNN that names a node of the nodes file (deleted or not).
    pub fn valid_pnn(&self, pnn: u32) -> bool {
        (pnn as usize) < self.nodes.len()
    }

    /// The PNN of the (non-deleted) node with address `ip`.
    pub fn pnn_of(&self, ip: std::net::IpAddr) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.addr.map(|a| a.ip()) == Some(ip))
            .map(|n| n.pnn)
    }

    pub fn num_connected(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.is_connected())
            .count()
    }

    /// `GET_NODEMAP`.
    pub fn nodemap(&self) -> NodeMap {
        NodeMap {
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeAndFlags {
                    pnn: n.pnn,
                    flags: n.flags,
                    addr: n.addr.map(SockAddr::from).unwrap_or_else(|| {
                        SockAddr::from(std::net::SocketAddr::new(
                            std::net::Ipv4Addr::UNSPECIFIED.into(),
                            crate::config::CTDB_PORT,
                        ))
                    }),
                })
                .collect(),
        }
    }

    /// The link to node `pnn` came up (both directions).
    /// Returns true if that changed its state.
    pub fn node_connected(&mut self, pnn: u32) -> bool {
        match self.node_mut(pnn) {
            Some(n) if !n.is_connected() => {
                n.flags &= !node_flags::DISCONNECTED;
                n.dead_count = 0;
                true
            }
            _ => false,
        }
    }

    /// Node `pnn` is dead: disconnected and (until told otherwise)
    /// unhealthy. Returns true if that changed its state.
    pub fn node_dead(&mut self, pnn: u32) -> bool {
        if pnn == self.pnn {
            return false;
        }
        match self.node_mut(pnn) {
            Some(n) if n.is_connected() => {
                n.flags |= node_flags::DISCONNECTED | node_flags::UNHEALTHY;
                n.rx_cnt = 0;
                n.dead_count = 0;
                true
            }
            _ => false,
        }
    }

    /// This node becomes inactive (banned or stopped): invalid generation
    /// and recovery mode, so it serves no database traffic; the database
    /// layer is to invalidate its databases' generations too
    /// ([`NodeState::take_became_inactive`]).
    fn become_inactive(&mut self) {
        self.vnnmap.generation = INVALID_GENERATION;
        self.recovery_mode = CTDB_RECOVERY_ACTIVE;
        self.became_inactive = true;
    }

    /// Whether this node became inactive since the last call: the event
    /// loop then tells the database layer
    /// ([`crate::db::Databases::node_inactive`]).
    pub fn take_became_inactive(&mut self) -> bool {
        std::mem::take(&mut self.became_inactive)
    }

    /// `SET_BAN_STATE`: bans this node for `time` seconds (0 lifts the
    /// ban). Returns the new ban, if any.
    pub fn set_ban(
        &mut self,
        b: BanState,
        bans_enabled: bool,
        now: Instant,
    ) -> Result<Option<Ban>, NodeError> {
        if b.pnn != self.pnn {
            return Err(NodeError::NotThisNode(b.pnn));
        }
        let already = self.ban.take().is_some();
        if b.time == 0 {
            self.me_mut().flags &= !node_flags::BANNED;
            return Ok(None);
        }
        if !bans_enabled {
            return Ok(None);
        }
        let ban = Ban {
            state: b,
            until: now + Duration::from_secs(u64::from(b.time)),
        };
        self.ban = Some(ban);
        self.me_mut().flags |= node_flags::BANNED;
        if !already {
            self.become_inactive();
        }
        Ok(Some(ban))
    }

    /// `GET_BAN_STATE`.
    pub fn ban_state(&self) -> BanState {
        self.ban.map(|b| b.state).unwrap_or(BanState {
            pnn: self.pnn,
            time: 0,
        })
    }

    /// Lifts an expired ban; returns true if one was lifted.
    pub fn expire_ban(&mut self, now: Instant) -> bool {
        match self.ban {
            Some(b) if now >= b.until => {
                self.ban = None;
                self.me_mut().flags &= !node_flags::BANNED;
                true
            }
            _ => false,
        }
    }

    /// `STOP_NODE`.
    pub fn stop(&mut self) {
        self.me_mut().flags |= node_flags::STOPPED;
        self.become_inactive();
    }

    /// `CONTINUE_NODE`.
    pub fn cont(&mut self) {
        self.me_mut().flags &= !node_flags::STOPPED;
    }

    /// `DISABLE_NODE`.
    pub fn disable(&mut self) {
        self.me_mut().flags |= node_flags::PERMANENTLY_DISABLED;
    }

    /// `ENABLE_NODE`.
    pub fn enable(&mut self) {
        self.me_mut().flags &= !node_flags::PERMANENTLY_DISABLED;
    }

    /// This node is healthy (or not), as monitoring would find.
    pub fn set_healthy(&mut self, healthy: bool) {
        if healthy {
            self.me_mut().flags &= !node_flags::UNHEALTHY;
        } else {
            self.me_mut().flags |= node_flags::UNHEALTHY;
        }
    }

    /// `MODIFY_FLAGS`: the leader tells us another node's flags. Our own
    /// flags and the connection state we observe ourselves are not
    /// overridden. Returns the old and new flags if they changed.
    pub fn modify_flags(&mut self, c: NodeFlagChange) -> Result<Option<(u32, u32)>, NodeError> {
        if c.pnn == self.pnn {
            return Ok(None);
        }
        let runstate = self.runstate;
        let n = self.node_mut(c.pnn).ok_or(NodeError::InvalidNode(c.pnn))?;
        if !n.is_connected() {
            return Ok(None);
        }
        let old = n.flags;
        n.flags = (old & node_flags::DISCONNECTED) | (c.new_flags & !node_flags::DISCONNECTED);
        if n.flags == old {
            return Ok(None);
        }
        let new = n.flags;
        if new == 0 && runstate <= Runstate::Startup {
            self.recovery_mode = CTDB_RECOVERY_ACTIVE;
        }
        Ok(Some((old, new)))
    }

    /// `SETVNNMAP` (only in recovery).
    pub fn set_vnnmap(&mut self, m: VnnMap) -> Result<(), NodeError> {
        if self.recovery_mode != CTDB_RECOVERY_ACTIVE {
            return Err(NodeError::NotInRecovery);
        }
        self.vnnmap = m;
        Ok(())
    }

    pub fn in_recovery(&self) -> bool {
        self.recovery_mode != CTDB_RECOVERY_NORMAL
    }

    /// Replaces the node list after a nodes-file reload, keeping the
    /// state of nodes whose address did not change. Returns the PNNs of
    /// new or changed nodes (to connect to).
    pub fn reload(&mut self, entries: &[NodeEntry]) -> Vec<u32> {
        let mut changed = Vec::new();
        let mut nodes = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let pnn = i as u32;
            let fresh = entry_to_node(pnn, e);
            match self.nodes.get(i) {
                Some(old) if old.addr == fresh.addr && old.is_deleted() == fresh.is_deleted() => {
                    nodes.push(old.clone())
                }
                _ => {
                    if !fresh.is_deleted() && pnn != self.pnn {
                        changed.push(pnn);
                    }
                    nodes.push(fresh)
                }
            }
        }
        self.nodes = nodes;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<NodeEntry> {
        (0..n)
            .map(|i| NodeEntry {
                addr: Some(format!("127.0.0.{}", i + 1).parse().unwrap()),
            })
            .collect()
    }

    #[test]
    fn starts_like_ctdb() {
        let s = NodeState::new(1, &entries(3), capabilities::DEFAULT);
        assert_eq!(
            s.nodes[0].flags,
            node_flags::DISCONNECTED | node_flags::UNHEALTHY
        );
        assert_eq!(s.nodes[1].flags, node_flags::UNHEALTHY);
        assert_eq!(s.vnnmap.generation, INVALID_GENERATION);
        assert_eq!(s.vnnmap.map, vec![0, 1, 2]);
        assert_eq!(s.nodemap().nodes[2].addr.port(), 4379);
    }

    #[test]
    fn becoming_inactive_is_reported_once_per_ban_or_stop() {
        let mut s = NodeState::new(0, &entries(2), capabilities::DEFAULT);
        let now = Instant::now();
        assert!(!s.take_became_inactive());
        s.set_ban(BanState { pnn: 0, time: 5 }, true, now).unwrap();
        assert!(s.take_became_inactive());
        assert!(!s.take_became_inactive());
        // Banned again while banned: not inactive anew.
        s.set_ban(BanState { pnn: 0, time: 9 }, true, now).unwrap();
        assert!(!s.take_became_inactive());
        s.stop();
        assert!(s.take_became_inactive());
    }

    #[test]
    fn ban_and_expiry() {
        let mut s = NodeState::new(0, &entries(2), capabilities::DEFAULT);
        let now = Instant::now();
        assert!(s.set_ban(BanState { pnn: 1, time: 5 }, true, now).is_err());
        s.set_ban(BanState { pnn: 0, time: 5 }, true, now).unwrap();
        assert_ne!(s.my_flags() & node_flags::BANNED, 0);
        assert!(s.in_recovery());
        assert_eq!(s.ban_state().time, 5);
        assert!(!s.expire_ban(now + Duration::from_secs(4)));
        assert!(s.expire_ban(now + Duration::from_secs(5)));
        assert_eq!(s.my_flags() & node_flags::BANNED, 0);
        // Bans disabled: nothing happens.
        s.set_ban(BanState { pnn: 0, time: 5 }, false, now).unwrap();
        assert_eq!(s.my_flags() & node_flags::BANNED, 0);
    }

    #[test]
    fn modify_flags_keeps_our_own_view() {
        let mut s = NodeState::new(0, &entries(3), capabilities::DEFAULT);
        // Disconnected node: ignored.
        let c = NodeFlagChange {
            pnn: 1,
            new_flags: 0,
            old_flags: 0,
        };
        assert_eq!(s.modify_flags(c).unwrap(), None);
        s.node_connected(1);
        assert_eq!(s.modify_flags(c).unwrap(), Some((node_flags::UNHEALTHY, 0)));
        // Cannot mark a connected node disconnected.
        let c = NodeFlagChange {
            pnn: 1,
            new_flags: node_flags::DISCONNECTED | node_flags::STOPPED,
            old_flags: 0,
        };
        s.modify_flags(c).unwrap();
        assert_eq!(s.nodes[1].flags, node_flags::STOPPED);
        assert!(s.modify_flags(NodeFlagChange { pnn: 9, ..c }).is_err());
    }

    #[test]
    fn stop_disable_and_reload() {
        let mut s = NodeState::new(0, &entries(3), capabilities::DEFAULT);
        s.recovery_mode = CTDB_RECOVERY_NORMAL;
        s.stop();
        assert!(s.me().is_inactive() && s.in_recovery());
        s.cont();
        s.disable();
        assert_eq!(
            s.my_flags() & node_flags::PERMANENTLY_DISABLED,
            node_flags::PERMANENTLY_DISABLED
        );
        s.enable();
        let mut e = entries(4);
        e[2].addr = None;
        let changed = s.reload(&e);
        assert_eq!(changed, vec![3]);
        assert!(s.nodes[2].is_deleted());
    }
}
