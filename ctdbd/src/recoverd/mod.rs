//! The recovery daemon: leadership and cluster health, as CTDB 4.17's
//! `ctdb-recoverd` does it.
//!
//! It is a process of its own, as CTDB's is: the daemon starts
//! `ctdbd --recoverd ...` ([`process`]), which runs [`child`] and talks to
//! the daemon exactly as CTDB's recovery daemon does, as a client of the
//! daemon's socket (so it never touches daemon state directly, can never
//! block the event loop, and a fault of either side stays on its side):
//!
//! * [`leader`]: who leads. With a cluster lock, whoever takes the lock
//!   (through the mutex helper) leads; without one, an election by
//!   messages. The leader says so every second (`LEADER` broadcast); a node
//!   that hears no leader for `leader timeout` seconds forces an election.
//! * this module: the once-a-second check. On every node: follow the local
//!   daemon's state (inactive nodes go into recovery mode). On the leader:
//!   compare every node's node map, flags, recovery mode and vnn map, and
//!   recover when they disagree.
//! * [`recovery`]: a recovery, run by the leader through the recovery
//!   helper (`ctdb_recovery_helper <write fd> <socket> <generation>`), and
//!   the banning of nodes that keep causing recoveries.

mod child;
mod helper;
mod leader;
mod process;
mod recovery;
mod takeover_run;

pub use child::{CHILD_ARG, child_main};
pub use process::{RecoverdProcess, forward_signal};
pub use recovery::{new_generation, recovery_helper_path};
pub use takeover_run::takeover_helper_path;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_client::{Client, Message};
use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{
    CTDB_RECOVERY_ACTIVE, CTDB_RECOVERY_NORMAL, DisableMessage, NodeFlagChange, NodeMap,
    SrvidMessage, Timeval, TunableList, capabilities, node_flags,
};
use ctdb_protocol::{ControlRequest, Marshal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::cluster_mutex::HeldMutex;

/// What the recovery daemon needs to know.
pub struct RecoverdConfig {
    pub socket: PathBuf,
    pub pnn: u32,
    /// The cluster lock setting, if any.
    pub cluster_lock: Option<String>,
    /// `[cluster] leader timeout`.
    pub leader_timeout: Duration,
    /// Where CTDB's helpers live.
    pub helper_dir: PathBuf,
    /// The recovery helper to run.
    pub recovery_helper: PathBuf,
    /// `CTDB_DBDIR_STATE` for the helper.
    pub state_dir: PathBuf,
    /// The daemon's log file (helpers' stderr).
    pub log_file: Option<crate::logging::LogFile>,
    /// Environment for helpers (`CTDB_LOGGING`, `CTDB_DEBUGLEVEL`).
    pub helper_env: Vec<(String, String)>,
    /// `[failover] disabled`: takeover runs only run `ipreallocated`.
    pub failover_disabled: bool,
}

/// Ban credits of one node.
struct Culprit {
    count: u32,
    last: Instant,
}

/// The recovery daemon's state.
pub struct Recoverd {
    cfg: RecoverdConfig,
    client: Client,
    /// This process's log level, which follows the daemon's.
    log: Option<crate::logging::LogControl>,
    pnn: u32,
    tunables: TunableList,
    nodemap: NodeMap,
    node_flags: u32,
    caps: HashMap<u32, u32>,
    leader: u32,
    election_in_progress: bool,
    lock: Option<HeldMutex>,
    /// Lock elections lost in a row (see `leader::Recoverd::leader_timeout_len`).
    lock_failures: u32,
    priority_time: Timeval,
    leader_timeout_at: Option<Instant>,
    election_timeout_at: Option<Instant>,
    send_election_at: Option<Instant>,
    need_recovery: bool,
    recoveries_disabled_until: Option<Instant>,
    culprits: HashMap<u32, Culprit>,
    last_culprit: u32,
    takeover_requests: Vec<SrvidMessage>,
    /// Takeover runs ([`takeover_run`]).
    takeover: takeover_run::TakeoverRuns,
    frozen_on_inactive: bool,
    /// Since when a recovery has been waiting for active nodes to be
    /// connected to each other (`recovery::Recoverd::links_coming_up`).
    links_waiting_since: Option<Instant>,
    /// A recovery ran while some active nodes were not connected to each
    /// other: recover again once they are
    /// (`recovery::Recoverd::note_links_after_recovery`).
    recover_once_links_up: bool,
    /// `CTDB_SRVID_BANNING` messages (culprits reported by helpers), kept
    /// apart so a recovery can take the reports of its own helper at once.
    banning: mpsc::UnboundedReceiver<Message>,
}

/// The active (not inactive) nodes of `map`.
fn active_in(map: &NodeMap) -> Vec<u32> {
    map.nodes
        .iter()
        .filter(|n| n.flags & node_flags::INACTIVE == 0)
        .map(|n| n.pnn)
        .collect()
}

impl Recoverd {
    fn is_leader(&self) -> bool {
        self.leader == self.pnn
    }

    fn my_caps(&self) -> u32 {
        self.caps
            .get(&self.pnn)
            .copied()
            .unwrap_or(capabilities::DEFAULT)
    }

    fn can_be_leader(&self) -> bool {
        self.node_flags & node_flags::INACTIVE == 0 && self.my_caps() & capabilities::RECMASTER != 0
    }

    fn cluster_lock_enabled(&self) -> bool {
        self.cfg.cluster_lock.is_some()
    }

    /// Connected nodes of the last node map (this node included).
    fn connected_nodes(&self) -> Vec<u32> {
        self.nodemap
            .nodes
            .iter()
            .filter(|n| n.flags & (node_flags::DISCONNECTED | node_flags::DELETED) == 0)
            .map(|n| n.pnn)
            .collect()
    }

    /// Active (connected, not banned or stopped) nodes.
    fn active_nodes(&self) -> Vec<u32> {
        active_in(&self.nodemap)
    }

    /// The node maps of `pnns` by pnn, and the nodes that did not answer
    /// with one (in `pnns`' order).
    async fn remote_nodemaps(&self, pnns: &[u32]) -> (HashMap<u32, NodeMap>, Vec<u32>) {
        let mut maps = HashMap::new();
        let mut failed = Vec::new();
        for (n, r) in self
            .client
            .control_many(pnns, ControlRequest::GetNodemap)
            .await
        {
            match r.map(|r| r.data) {
                Ok(Some(ctdb_protocol::ControlReply::GetNodemap(m))) => {
                    maps.insert(n, m);
                }
                _ => failed.push(n),
            }
        }
        (maps, failed)
    }

    fn send(&self, dest: u32, id: u64, data: &[u8]) {
        if let Err(e) = self.client.send_message(dest, id, data) {
            warn!("failed to send message 0x{id:x} to {dest}: {e}");
        }
    }

    async fn on_message(&mut self, m: Message) {
        if self.takeover_message(m.srvid, &m.data) {
            return;
        }
        match m.srvid {
            srvid::LEADER => {
                let Ok((pnn, _)) = u32::pull(&m.data) else {
                    warn!("Unable to parse leader broadcast");
                    return;
                };
                self.leader_message(pnn).await;
            }
            srvid::ELECTION => self.election_message(&m.data).await,
            srvid::TAKEOVER_RUN => {
                if let Ok((r, _)) = SrvidMessage::pull(&m.data) {
                    self.takeover_requests.push(r);
                }
            }
            srvid::PUSH_NODE_FLAGS => {
                if let Ok((c, _)) = NodeFlagChange::pull(&m.data) {
                    self.push_flags(c).await;
                }
            }
            srvid::DISABLE_RECOVERIES => {
                if let Ok((d, _)) = DisableMessage::pull(&m.data) {
                    if d.timeout > 0 {
                        self.recoveries_disabled_until =
                            Some(Instant::now() + Duration::from_secs(u64::from(d.timeout)));
                    } else {
                        self.recoveries_disabled_until = None;
                    }
                    self.srvid_reply(d.pnn, d.srvid, self.pnn as i32);
                }
            }
            srvid::MEM_DUMP => {
                if let Ok((r, _)) = SrvidMessage::pull(&m.data) {
                    let (n, c, t) = (
                        self.nodemap.nodes.len(),
                        self.culprits.len(),
                        self.takeover_requests.len(),
                    );
                    let mut text = crate::memory::recoverd_report(n, c, t).into_bytes();
                    text.push(0);
                    self.send(r.pnn, r.srvid, &text);
                }
            }
            srvid::SET_NODE_FLAGS => {
                warn!(
                    "SRVID CTDB_SRVID_SET_NODE_FLAGS (0x{:x}) is obsolete",
                    m.srvid
                );
            }
            _ => debug!("recovery daemon ignores message 0x{:x}", m.srvid),
        }
    }

    /// `CTDB_SRVID_BANNING`: a helper names a node that made its work
    /// fail; the leader gives it as many credits as there are nodes (a
    /// second report before a recovery succeeds bans it). Returns the node.
    fn banning_message(&mut self, data: &[u8]) -> Option<u32> {
        if !self.is_leader() {
            return None;
        }
        let Ok((pnn, _)) = u32::pull(data) else {
            warn!("Unable to parse banning credits message");
            return None;
        };
        let n = self.nodemap.nodes.len() as u32;
        info!("Node {pnn} assigned banning credits");
        self.set_culprit_count(pnn, n);
        Some(pnn)
    }

    /// Takes the culprits a helper that just ended reported: a round trip
    /// to the daemon brings in every message it passed on before, in
    /// order. Returns the nodes named.
    async fn take_banning_reports(&mut self) -> Vec<u32> {
        let _ = self
            .client
            .control(CTDB_CURRENT_NODE, ControlRequest::GetPnn)
            .await;
        let mut named = Vec::new();
        while let Ok(m) = self.banning.try_recv() {
            named.extend(self.banning_message(&m.data));
        }
        named
    }

    /// Replies to a request made with a `ctdb_srvid_message`.
    fn srvid_reply(&self, pnn: u32, id: u64, result: i32) {
        if id == 0 {
            return;
        }
        self.send(pnn, id, &result.to_le_bytes());
    }

    /// `PUSH_NODE_FLAGS`: send a node's flags, as the leader has them, to
    /// every connected node.
    async fn push_flags(&mut self, c: NodeFlagChange) {
        if self.leader == CTDB_UNKNOWN_PNN {
            return;
        }
        let Ok(map) = self.client.get_nodemap(self.leader).await else {
            error!("Unable to get nodemap from node {}", self.leader);
            return;
        };
        if c.pnn as usize >= map.nodes.len() {
            return;
        }
        let nodes: Vec<u32> = map
            .nodes
            .iter()
            .filter(|n| n.flags & (node_flags::DISCONNECTED | node_flags::DELETED) == 0)
            .map(|n| n.pnn)
            .collect();
        for (n, r) in self
            .client
            .control_many(&nodes, ControlRequest::ModifyFlags(c))
            .await
        {
            if let Err(e) = r {
                error!("ctdb_control to modify node flags failed on {n}: {e}");
            }
        }
    }

    /// Remembers node `pnn` as the cause of trouble.
    fn set_culprit_count(&mut self, pnn: u32, count: u32) {
        if !self.nodemap.nodes.iter().any(|n| n.pnn == pnn) {
            warn!("Unknown culprit node {pnn}");
            return;
        }
        if self.node_flags & node_flags::INACTIVE != 0 {
            warn!("This node is INACTIVE, cannot set culprit node {pnn}");
            return;
        }
        let grace = Duration::from_secs(u64::from(self.tunables.recovery_grace_period));
        let now = Instant::now();
        let c = self.culprits.entry(pnn).or_insert(Culprit {
            count: 0,
            last: now,
        });
        if c.count > 0 && now.duration_since(c.last) > grace {
            c.count = 0;
        }
        c.count += count;
        c.last = now;
        self.last_culprit = pnn;
    }

    fn set_culprit(&mut self, pnn: u32) {
        self.set_culprit_count(pnn, 1);
    }

    /// Bans nodes with too many credits; returns true if this node was
    /// among them.
    async fn ban_misbehaving_nodes(&mut self) -> bool {
        let limit = 2 * self.nodemap.nodes.len() as u32;
        let bad: Vec<u32> = self
            .culprits
            .iter()
            .filter(|(_, c)| c.count >= limit.max(1))
            .map(|(p, _)| *p)
            .collect();
        let mut self_ban = false;
        for pnn in bad {
            let count = self.culprits.get(&pnn).map_or(0, |c| c.count);
            info!("Node {pnn} reached {count} banning credits");
            // Banning the last active node helps nobody: a cluster where
            // every node is banned serves nothing.
            let others_active = self
                .nodemap
                .nodes
                .iter()
                .any(|n| n.pnn != pnn && n.flags & node_flags::INACTIVE == 0);
            if !others_active {
                warn!("Not banning node {pnn}: it is the last active node");
                if let Some(c) = self.culprits.get_mut(&pnn) {
                    c.count = 0;
                }
                continue;
            }
            self.ban_node(pnn).await;
            if let Some(c) = self.culprits.get_mut(&pnn) {
                c.count = 0;
            }
            if pnn == self.pnn {
                self_ban = true;
            }
        }
        self_ban
    }

    async fn ban_node(&mut self, pnn: u32) {
        let time = self.tunables.recovery_ban_period;
        info!("Banning node {pnn} for {time} seconds");
        let b = ctdb_protocol::types::BanState { pnn, time };
        if let Err(e) = self.client.set_ban_state(pnn, b).await {
            error!("Failed to ban node {pnn}: {e}");
        }
    }

    /// Capabilities of every connected node.
    async fn update_capabilities(&mut self) -> bool {
        let nodes = self.connected_nodes();
        let mut caps = HashMap::new();
        for (n, r) in self
            .client
            .control_many(&nodes, ControlRequest::GetCapabilities)
            .await
        {
            match r.map(|r| r.data) {
                Ok(Some(ctdb_protocol::ControlReply::GetCapabilities(c))) => {
                    caps.insert(n, c);
                }
                Ok(_) => {
                    error!("Failed to get node capabilities from node {n}");
                    return false;
                }
                Err(e) => {
                    error!("Failed to get node capabilities from node {n}: {e}");
                    return false;
                }
            }
        }
        if !caps.contains_key(&self.pnn) {
            error!("Capabilities don't include current node.");
            return false;
        }
        self.caps = caps;
        true
    }

    /// The check run every `RecoverInterval` seconds.
    async fn main_loop(&mut self) {
        if let Err(e) = self.main_loop_inner().await {
            debug!("main loop: {e}");
        }
    }

    async fn main_loop_inner(&mut self) -> Result<(), ctdb_client::ClientError> {
        let c = self.client.clone();
        c.control(CTDB_CURRENT_NODE, ControlRequest::RecdPing)
            .await?;
        if self.election_in_progress {
            return Ok(());
        }
        // Log at the daemon's level (`ctdb setdebug`), as CTDB's does.
        if let Some(log) = &self.log
            && let Ok(r) = c.control(CTDB_CURRENT_NODE, ControlRequest::GetDebug).await
            && let Some(ctdb_protocol::ControlReply::GetDebug(level)) = r.data
            && level as i32 != log.level()
        {
            log.set_level(level as i32);
        }
        if self.leader_timeout_at.is_none() {
            self.leader_timeout_at = Some(Instant::now() + self.cfg.leader_timeout);
        }
        self.tunables = *c.get_all_tunables(CTDB_CURRENT_NODE).await?;
        let _runstate = c.get_runstate(CTDB_CURRENT_NODE).await?;
        self.nodemap = c.get_nodemap(self.pnn).await?;
        self.node_flags = self
            .nodemap
            .nodes
            .get(self.pnn as usize)
            .map_or(0, |n| n.flags);
        if self.ban_misbehaving_nodes().await {
            info!("This node was banned, restart main_loop");
            return Ok(());
        }
        let recmode = c.get_recmode(CTDB_CURRENT_NODE).await?;
        if self.node_flags & node_flags::INACTIVE != 0 {
            // Stopped or banned: stay out of the way, in recovery mode.
            self.priority_time = Timeval::now();
            if recmode == CTDB_RECOVERY_NORMAL {
                error!(
                    "Node is stopped or banned but recovery mode is not active. Activate recovery mode and lock databases"
                );
                c.set_recmode(CTDB_CURRENT_NODE, CTDB_RECOVERY_ACTIVE)
                    .await?;
            }
            if !self.frozen_on_inactive {
                c.control(CTDB_CURRENT_NODE, ControlRequest::Freeze).await?;
                self.frozen_on_inactive = true;
            }
            if self.is_leader() {
                self.leader = CTDB_UNKNOWN_PNN;
            }
            self.release_cluster_lock();
            return Ok(());
        }
        self.frozen_on_inactive = false;
        if !self.update_capabilities().await {
            return Ok(());
        }
        if recmode == CTDB_RECOVERY_NORMAL {
            self.verify_local_ip_allocation().await;
        }
        if !self.is_leader() {
            return Ok(());
        }
        self.leader_checks().await
    }

    /// The leader's checks; any disagreement starts a recovery.
    async fn leader_checks(&mut self) -> Result<(), ctdb_client::ClientError> {
        let c = self.client.clone();
        // Remote node maps.
        let remotes: Vec<u32> = self
            .connected_nodes()
            .into_iter()
            .filter(|p| *p != self.pnn)
            .collect();
        let (remote_maps, failed) = self.remote_nodemaps(&remotes).await;
        if let Some(&n) = failed.first() {
            error!("Failed to read remote nodemap from node {n}");
            self.set_culprit(n);
            return Ok(());
        }
        self.update_flags(&remote_maps).await?;
        let vnnmap = c.get_vnnmap(self.pnn).await?;
        if self.recover_if_links_now_up(&remote_maps).await {
            return Ok(());
        }
        if self.need_recovery {
            self.do_recovery().await;
            return Ok(());
        }
        // Every active node must be in normal mode.
        let active = self.active_nodes();
        let modes = futures::future::join_all(active.iter().map(|&n| {
            let c = c.clone();
            async move { (n, c.control_status(n, ControlRequest::GetRecmode).await) }
        }))
        .await;
        for (n, r) in modes {
            match r {
                Ok(r) if r == CTDB_RECOVERY_NORMAL as i32 => {}
                Ok(_) => {
                    info!("Node {n} is in recovery mode, recovery needed");
                    self.do_recovery().await;
                    return Ok(());
                }
                Err(e) => {
                    error!("Failed to get recmode from node {n}: {e}");
                    return Ok(());
                }
            }
        }
        if self.cluster_lock_enabled() && self.lock.is_none() {
            error!("Failed cluster lock sanity check");
            self.set_culprit(self.pnn);
            self.do_recovery().await;
            return Ok(());
        }
        if self
            .recoveries_disabled_until
            .is_some_and(|t| Instant::now() < t)
        {
            self.takeover_run_checks().await;
            return Ok(());
        }
        let nodemap = self.nodemap.clone();
        for n in &nodemap.nodes {
            if n.pnn == self.pnn || n.flags & node_flags::INACTIVE != 0 {
                continue;
            }
            let Some(rm) = remote_maps.get(&n.pnn) else {
                continue;
            };
            if rm.nodes.len() != nodemap.nodes.len() {
                error!(
                    "Remote node:{} has different node count. {} vs {} of the local node",
                    n.pnn,
                    rm.nodes.len(),
                    nodemap.nodes.len()
                );
                self.set_culprit(n.pnn);
                self.do_recovery().await;
                return Ok(());
            }
            if rm
                .nodes
                .iter()
                .zip(&nodemap.nodes)
                .any(|(a, b)| a.pnn != b.pnn)
            {
                error!("Remote node:{} has different nodemap pnns", n.pnn);
                self.set_culprit(n.pnn);
                self.do_recovery().await;
                return Ok(());
            }
        }
        let lmasters: Vec<u32> = nodemap
            .nodes
            .iter()
            .filter(|n| n.flags & node_flags::INACTIVE == 0)
            .filter(|n| {
                self.caps
                    .get(&n.pnn)
                    .is_some_and(|c| c & capabilities::LMASTER != 0)
            })
            .map(|n| n.pnn)
            .collect();
        if vnnmap.map.len() != lmasters.len() {
            error!(
                "The vnnmap count is different from the number of active lmaster nodes: {} vs {}",
                vnnmap.map.len(),
                lmasters.len()
            );
            self.set_culprit(self.pnn);
            self.do_recovery().await;
            return Ok(());
        }
        for p in &lmasters {
            if *p != self.pnn && !vnnmap.map.contains(p) {
                error!("Active LMASTER node {p} is not in the vnnmap");
                self.set_culprit(*p);
                self.do_recovery().await;
                return Ok(());
            }
        }
        for n in &nodemap.nodes {
            if n.pnn == self.pnn || n.flags & node_flags::INACTIVE != 0 {
                continue;
            }
            let rv = match c.get_vnnmap(n.pnn).await {
                Ok(v) => v,
                Err(e) => {
                    error!("Unable to get vnnmap from remote node {}: {e}", n.pnn);
                    return Ok(());
                }
            };
            if rv.generation != vnnmap.generation {
                error!(
                    "Remote node {} has different generation of vnnmap. {} vs {} (ours)",
                    n.pnn, rv.generation, vnnmap.generation
                );
                self.set_culprit(n.pnn);
                self.do_recovery().await;
                return Ok(());
            }
            if rv.map != vnnmap.map {
                error!("Remote node {} has different vnnmap.", n.pnn);
                self.set_culprit(n.pnn);
                self.do_recovery().await;
                return Ok(());
            }
        }
        self.takeover_run_checks().await;
        Ok(())
    }

    /// Makes every node agree on every node's flags (the leader's view of
    /// a node is what that node says about itself).
    async fn update_flags(
        &mut self,
        remote_maps: &HashMap<u32, NodeMap>,
    ) -> Result<(), ctdb_client::ClientError> {
        let n = self.nodemap.nodes.len();
        for j in 0..n {
            let mut local = self.nodemap.nodes[j].flags;
            let pnn = self.nodemap.nodes[j].pnn;
            if local & node_flags::DISCONNECTED != 0 {
                continue;
            }
            let mut push = false;
            if pnn != self.pnn {
                let Some(rm) = remote_maps.get(&pnn) else {
                    continue;
                };
                let remote = rm.nodes.get(j).map_or(local, |x| x.flags);
                if remote != local {
                    info!(
                        "Remote node {pnn} had flags 0x{remote:x}, local had 0x{local:x} - updating local"
                    );
                    self.nodemap.nodes[j].flags = remote;
                    local = remote;
                    push = true;
                }
            }
            if !push {
                push = remote_maps
                    .iter()
                    .any(|(p, rm)| *p != pnn && rm.nodes.get(j).is_some_and(|x| x.flags != local));
            }
            if push {
                info!("Pushing updated flags for node {pnn} (0x{local:x})");
                self.update_flags_on_all_nodes(pnn, local).await;
            }
        }
        Ok(())
    }

    async fn update_flags_on_all_nodes(&mut self, pnn: u32, flags: u32) -> bool {
        let old = self
            .nodemap
            .nodes
            .iter()
            .find(|n| n.pnn == pnn)
            .map_or(0, |n| n.flags);
        let change = NodeFlagChange {
            pnn,
            new_flags: flags,
            old_flags: old,
        };
        let nodes = self.connected_nodes();
        let mut ok = true;
        for (n, r) in self
            .client
            .control_many(&nodes, ControlRequest::ModifyFlags(change))
            .await
        {
            if let Err(e) = r {
                error!("Unable to update flags on node {n}: {e}");
                ok = false;
            }
        }
        ok
    }

    /// Tells every connected node who leads.
    fn leader_broadcast_send(&self, leader: u32) {
        self.send(
            CTDB_BROADCAST_CONNECTED,
            srvid::LEADER,
            &leader.to_le_bytes(),
        );
    }
}
