//! The scripted cluster as `ctdbd` sees it: every scripted node is a
//! [`ctdbd::control::Core`] (the daemon's own control state and dispatch),
//! and one [`ctdbd::node::NodeState`] holds the cluster's view of the
//! nodes (addresses, links, the nodes file).
//!
//! A node's flags are split between the two, as in a real cluster:
//!
//! * the flags a node's daemon changes itself ([`OWN_FLAGS`]: stopped,
//!   disabled, banned, unhealthy) live in that node's core and change only
//!   through the daemon's control handlers;
//! * link and membership flags (disconnected, deleted) and the fake
//!   `TIMEOUT` marker live in the cluster view.
//!
//! What a real cluster keeps consistent through recoveries (the vnn map,
//! the recovery mode and times) is kept once here, as CTDB's fake daemon
//! does, and loaded into a node's core before it answers a control.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ctdb_protocol::types::{
    NodeMap, NotifyData, Runstate, Timeval, VnnMap, capabilities, node_flags,
};
use ctdbd::config::{NodeEntry, load_nodes};
use ctdbd::control::{ClientInfo, Core};
use ctdbd::logging::{DEBUG_ERR, LogControl};
use ctdbd::messaging::ClientId;
use ctdbd::node::NodeState;

use crate::state::ClusterState;

/// The flags a node's own daemon sets and clears.
pub const OWN_FLAGS: u32 = node_flags::UNHEALTHY
    | node_flags::PERMANENTLY_DISABLED
    | node_flags::BANNED
    | node_flags::STOPPED;

/// Every scripted node and the state they share.
pub struct Cluster {
    /// Addresses, link flags and the fake `TIMEOUT` marker of every node;
    /// its PNN is the current node's.
    pub view: NodeState,
    /// One daemon core per node, by PNN.
    pub cores: Vec<Core>,
    /// Per node: recoveries are disabled until this serial's timer expires
    /// (0: not disabled).
    pub recovery_disabled: Vec<u64>,
    pub vnnmap: VnnMap,
    pub recmode: u32,
    pub recovery_started: Timeval,
    pub recovery_finished: Timeval,
}

/// The nodes file node `pnn` reads: `$CTDB_BASE/nodes.<pnn>` if present,
/// else `$CTDB_BASE/nodes` (CTDB's fake daemon reads them so, at every
/// request).
pub fn nodes_file_for(pnn: u32) -> PathBuf {
    let Some(base) = std::env::var_os("CTDB_BASE") else {
        return PathBuf::from("/nonexistent/CTDB_BASE-is-not-set/nodes");
    };
    let base = PathBuf::from(base);
    let specific = base.join(format!("nodes.{pnn}"));
    if specific.exists() {
        specific
    } else {
        base.join("nodes")
    }
}

/// A fresh daemon core for node `pnn` of `entries`.
fn new_core(
    pnn: u32,
    entries: &[NodeEntry],
    own_flags: u32,
    caps: u32,
    runstate: Runstate,
    reclock: Option<String>,
) -> Core {
    let mut node = NodeState::new(pnn, entries, caps);
    if let Some(me) = node.node_mut(pnn) {
        me.flags = own_flags & OWN_FLAGS;
    }
    node.runstate = runstate;
    Core::new(
        node,
        ctdbd::tunables::defaults(),
        LogControl::detached(DEBUG_ERR),
        reclock,
        nodes_file_for(pnn),
    )
}

impl Cluster {
    /// The cluster a script describes.
    pub fn new(st: &ClusterState, generation: u32) -> Cluster {
        let entries: Vec<NodeEntry> = st
            .nodes
            .iter()
            .map(|n| NodeEntry {
                addr: n.addr.ip().filter(|_| n.flags & node_flags::DELETED == 0),
            })
            .collect();
        let mut view = NodeState::new(st.pnn, &entries, 0);
        for (v, n) in view.nodes.iter_mut().zip(&st.nodes) {
            v.flags = n.flags & !OWN_FLAGS;
        }
        let cores = st
            .nodes
            .iter()
            .map(|n| {
                new_core(
                    n.pnn,
                    &entries,
                    n.flags,
                    n.capabilities,
                    st.runstate,
                    st.reclock.clone(),
                )
            })
            .collect();
        let now = Timeval::now();
        Cluster {
            view,
            cores,
            recovery_disabled: vec![0; st.nodes.len()],
            vnnmap: VnnMap {
                generation,
                map: st.vnnmap.clone(),
            },
            recmode: ctdb_protocol::types::CTDB_RECOVERY_NORMAL,
            recovery_started: now,
            recovery_finished: now,
        }
    }

    pub fn len(&self) -> u32 {
        self.view.nodes.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.view.nodes.is_empty()
    }

    /// Node `pnn`'s flags as the node map shows them.
    pub fn flags(&self, pnn: u32) -> u32 {
        let link = self.view.node(pnn).map_or(0, |n| n.flags & !OWN_FLAGS);
        let own = self
            .cores
            .get(pnn as usize)
            .map_or(0, |c| c.node.my_flags() & OWN_FLAGS);
        link | own
    }

    /// `GET_NODEMAP`.
    pub fn nodemap(&self) -> NodeMap {
        let mut m = self.view.nodemap();
        for n in &mut m.nodes {
            n.flags = self.flags(n.pnn);
        }
        m
    }

    /// Node `pnn`'s core, with the cluster-wide state loaded into it.
    pub fn core(&mut self, pnn: u32) -> &mut Core {
        let c = &mut self.cores[pnn as usize];
        c.node.vnnmap = self.vnnmap.clone();
        c.node.recovery_mode = self.recmode;
        c.node.last_recovery_started = self.recovery_started;
        c.node.last_recovery_finished = self.recovery_finished;
        c.nodes_file = nodes_file_for(pnn);
        c
    }

    /// Whether node `pnn` never answers `GET_CAPABILITIES`.
    pub fn fake_timeout(&self, pnn: u32) -> bool {
        self.view
            .node(pnn)
            .is_some_and(|n| n.flags & crate::state::NODE_FLAGS_FAKE_TIMEOUT != 0)
    }

    /// A client connected: every node counts it (they are all served by
    /// this one daemon).
    pub fn add_client(&mut self, id: ClientId, pid: i32) {
        for c in &mut self.cores {
            c.clients.insert(
                id,
                ClientInfo {
                    pid,
                    notify: Vec::new(),
                },
            );
        }
    }

    /// A client went away: forgets it everywhere; returns the messages
    /// it asked to be sent when it goes (`REGISTER_NOTIFY`).
    pub fn remove_client(&mut self, id: ClientId) -> Vec<NotifyData> {
        let mut notify = Vec::new();
        for c in &mut self.cores {
            if let Some(ci) = c.clients.remove(&id) {
                notify.extend(ci.notify);
            }
            c.srvids.remove_client(id);
        }
        notify
    }

    /// The clients that registered for messages to `srvid`, on any node.
    pub fn recipients(&self, srvid: u64) -> BTreeSet<ClientId> {
        self.cores
            .iter()
            .flat_map(|c| c.srvids.recipients(srvid))
            .collect()
    }

    /// `RELOAD_NODES_FILE` on node `pnn`: the cluster takes the nodes
    /// file's node list. Nodes new to the cluster join at once (connected,
    /// healthy, default capabilities), as in CTDB's fake daemon.
    pub fn reload_nodes(&mut self, pnn: u32) -> Result<(), ctdbd::config::ConfigError> {
        let entries = load_nodes(&nodes_file_for(pnn))?;
        // The fake never forgets a node: a shorter file leaves the rest.
        let mut all = entries.clone();
        for n in self.view.nodes.iter().skip(entries.len()) {
            all.push(NodeEntry {
                addr: n.addr.map(|a| a.ip()),
            });
        }
        let joined = self.view.reload(&all);
        let me = self.view.pnn as usize;
        let runstate = self.cores[me].node.runstate;
        let reclock = self.cores[me].cluster_lock.clone();
        let clients = self.cores[me].clients.clone();
        for p in joined {
            if let Some(n) = self.view.node_mut(p) {
                n.flags &= !(node_flags::DISCONNECTED | node_flags::UNHEALTHY);
            }
            let mut core = new_core(p, &all, 0, capabilities::DEFAULT, runstate, reclock.clone());
            core.clients = clients.clone();
            match self.cores.get_mut(p as usize) {
                Some(c) => *c = core,
                None => self.cores.push(core),
            }
        }
        self.recovery_disabled.resize(self.view.nodes.len(), 0);
        Ok(())
    }

    /// Whether some node has recoveries disabled.
    pub fn recoveries_disabled(&self) -> bool {
        self.recovery_disabled.iter().any(|&s| s != 0)
    }
}
