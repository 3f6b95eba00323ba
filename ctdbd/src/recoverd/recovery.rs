//! A recovery, run by the leader: make every node's flags agree, then run
//! the recovery helper, which freezes, rebuilds and thaws the databases
//! on every active node and installs a new vnn map with a new generation.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE, INVALID_GENERATION};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{NodeMap, node_flags};
use tracing::{error, info, warn};

use super::Recoverd;
use super::helper::{HelperEnd, StatusPipe};

/// The recovery helper: `CTDB_RECOVERY_HELPER`, else
/// `ctdb_recovery_helper` in the helper directory.
pub fn recovery_helper_path(helper_dir: &std::path::Path) -> PathBuf {
    std::env::var_os("CTDB_RECOVERY_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| helper_dir.join("ctdb_recovery_helper"))
}

/// A new random generation (never the invalid one).
pub fn new_generation() -> u32 {
    let mut b = [0u8; 4];
    loop {
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .is_ok();
        let g = if ok {
            u32::from_le_bytes(b)
        } else {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.subsec_nanos() ^ std::process::id()
        };
        // CTDB's generations come from random(): 31 bits.
        let g = g & 0x7fff_ffff;
        if g != INVALID_GENERATION && g != 0 {
            return g;
        }
    }
}

/// How long a recovery waits for the active nodes to be connected to each
/// other before it goes ahead anyway (as CTDB always does).
const LINKS_GRACE: Duration = Duration::from_secs(5);

/// The pairs `(a, b)` of active nodes where `a`'s node map (in `maps`)
/// shows `b` disconnected: `a` has no connection to `b` yet, so whatever
/// `a` sends `b` is dropped. `active` as the leader sees them (the leader
/// itself among them; it is connected to every other by definition).
fn unconnected_pairs(active: &[u32], maps: &HashMap<u32, NodeMap>) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    for &a in active {
        let Some(m) = maps.get(&a) else {
            continue;
        };
        for &b in active {
            if a != b
                && m.nodes
                    .iter()
                    .any(|n| n.pnn == b && n.flags & node_flags::DISCONNECTED != 0)
            {
                pairs.push((a, b));
            }
        }
    }
    pairs
}

impl Recoverd {
    /// Whether the recovery should wait because an active node is not yet
    /// connected to another active node: for at most [`LINKS_GRACE`] per
    /// recovery.
    ///
    /// A node that has just started connects to each of the others in
    /// turn; the leader may see it connected, and recover with it, before
    /// some other node's connection to it is up. Then the first record
    /// calls after the thaw between those two (the calls resent at the
    /// thaw among them) are dropped by the sender, CTDB's daemon as ours,
    /// and their clients wait until they time out: a g_lock holder's call
    /// lost that way stalled every waiter behind it for 60 s in the
    /// rolling-upgrade test. Recovering once the links are up avoids it;
    /// a node that stays unconnected to another (a one-way partition)
    /// gets the recovery after the grace, as CTDB gives it at once.
    async fn links_coming_up(&mut self) -> bool {
        let pairs = self.unconnected_now().await;
        let Some(&(a, b)) = pairs.first() else {
            self.links_waiting_since = None;
            return false;
        };
        let since = *self.links_waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() < LINKS_GRACE {
            info!("Recovery waits: node {a} is not yet connected to node {b}");
            return true;
        }
        warn!(
            "Recovering although node {a} is still not connected to node {b} after {} seconds",
            LINKS_GRACE.as_secs()
        );
        false
    }

    /// After a recovery: whether it ran while some active node was not
    /// connected to another. The wait above cannot see a node that
    /// connects to the leader between its check and the helper's start
    /// (the helper takes the active nodes as it finds them), and goes
    /// ahead after its grace; what the unconnected pairs sent each other
    /// after the thaw was dropped. Then [`Self::recover_if_links_now_up`]
    /// recovers once more when the links are up, and that recovery's thaw
    /// resends the calls that are still waiting.
    pub(super) async fn note_links_after_recovery(&mut self) {
        let pairs = self.unconnected_now().await;
        if let Some(&(a, b)) = pairs.first() {
            info!(
                "Recovered while node {a} was not connected to node {b}: recovering again once it is"
            );
            self.recover_once_links_up = true;
        }
    }

    /// The follow-up recovery of [`Self::note_links_after_recovery`], when
    /// it is due and the links are up (by `remote_maps`, the node maps the
    /// leader's checks have just read); whether it ran.
    pub(super) async fn recover_if_links_now_up(
        &mut self,
        remote_maps: &HashMap<u32, NodeMap>,
    ) -> bool {
        if !self.recover_once_links_up
            || !unconnected_pairs(&self.active_nodes(), remote_maps).is_empty()
        {
            return false;
        }
        self.recover_once_links_up = false;
        info!(
            "Every active node is connected to every other now: recovery, to resend what was dropped"
        );
        self.do_recovery().await;
        true
    }

    /// The pairs of active nodes not connected yet ([`unconnected_pairs`]),
    /// from every active node's node map; a node that does not answer
    /// holds nothing up.
    async fn unconnected_now(&mut self) -> Vec<(u32, u32)> {
        // The daemon's own map, fresher than the one the checks read: a
        // node may have connected since.
        let Ok(nodemap) = self.client.get_nodemap(CTDB_CURRENT_NODE).await else {
            return Vec::new();
        };
        let active = super::active_in(&nodemap);
        let others: Vec<u32> = active.iter().copied().filter(|&p| p != self.pnn).collect();
        let (maps, _silent) = self.remote_nodemaps(&others).await;
        unconnected_pairs(&active, &maps)
    }

    /// Recovers the cluster; on failure the next check tries again.
    pub(super) async fn do_recovery(&mut self) {
        info!("Starting do_recovery");
        if !self.is_leader() {
            info!("Leader changed to {}, aborting recovery", self.leader);
            return;
        }
        self.need_recovery = true;
        if self.election_in_progress {
            error!("do_recovery called while election in progress - try again later");
            return;
        }
        if self.ban_misbehaving_nodes().await {
            info!("This node was banned, aborting recovery");
            return;
        }
        if self.cluster_lock_enabled() && self.lock.is_none() {
            if !self.is_leader() {
                self.need_recovery = false;
                return;
            }
            error!("Cluster lock not held - abort recovery, ban node");
            let pnn = self.pnn;
            self.ban_node(pnn).await;
            return;
        }
        if self.cluster_lock_enabled() && !self.cluster_lock_still_held().await {
            return;
        }
        info!(
            "Recovery initiated due to problem with node {}",
            self.last_culprit
        );
        if !self.update_capabilities().await {
            error!("Unable to update node capabilities.");
            return;
        }
        if self.links_coming_up().await {
            // The next check tries again (`need_recovery` stays set).
            return;
        }
        // Everyone gets the flags we have.
        let nodes = self.nodemap.nodes.clone();
        for n in &nodes {
            if n.flags & node_flags::DISCONNECTED != 0 {
                continue;
            }
            if !self.update_flags_on_all_nodes(n.pnn, n.flags).await {
                if n.flags & node_flags::INACTIVE != 0 {
                    warn!("Unable to update flags on inactive node {}", n.pnn);
                } else {
                    error!("Unable to update flags on all nodes for node {}", n.pnn);
                    return;
                }
            }
        }
        info!("Recovery - updated flags");
        let started = Instant::now();
        if !self.run_recovery_helper().await {
            error!("Recovery helper failed");
            // The helper names the node at fault (a BANNING message, which
            // gave it credits). Only a failure nobody was named for counts
            // against this node: a leader whose recoveries keep failing for
            // no known reason gets banned, so that another node takes over.
            let named = self.take_banning_reports().await;
            if named.is_empty() {
                let pnn = self.pnn;
                self.set_culprit(pnn);
            } else {
                info!("Recovery failed because of node(s) {named:?}");
            }
            return;
        }
        // At once: a link that comes up later than this was down for
        // the calls resent at the thaw.
        self.note_links_after_recovery().await;
        self.do_takeover_run().await;
        self.send(CTDB_BROADCAST_CONNECTED, srvid::RECONFIGURE, &[]);
        info!(
            "Recovery complete in {:.3} seconds",
            started.elapsed().as_secs_f64()
        );
        self.need_recovery = false;
        self.links_waiting_since = None;
        info!("Resetting ban count to 0 for all nodes");
        self.culprits.clear();
        let t = self.tunables.rerecovery_timeout;
        info!(
            "Just finished a recovery. New recoveries will now be suppressed for the rerecovery timeout ({t} seconds)"
        );
        self.recoveries_disabled_until = Some(Instant::now() + Duration::from_secs(u64::from(t)));
    }

    /// Runs `ctdb_recovery_helper <write fd> <socket> <generation>` and
    /// reads the status it writes to that fd (nothing means failure).
    async fn run_recovery_helper(&mut self) -> bool {
        const WHAT: &str = "recovery helper";
        let prog = self.cfg.recovery_helper.clone();
        let generation = new_generation();
        let Some(pipe) = StatusPipe::new(WHAT) else {
            return false;
        };
        let mut cmd = crate::cluster_mutex::dying_with_us(&prog);
        cmd.arg(pipe.write_fd())
            .arg(&self.cfg.socket)
            .arg(generation.to_string())
            .env("CTDB_DBDIR_STATE", &self.cfg.state_dir);
        info!(
            "Running recovery helper {} with generation {generation}",
            prog.display()
        );
        let limit = Duration::from_secs(u64::from(self.tunables.recover_timeout.max(1)) * 4);
        match self.run_status_helper(WHAT, cmd, pipe, limit).await {
            HelperEnd::Exited {
                success: true,
                status: Some(0),
            } => true,
            HelperEnd::Exited {
                success: true,
                status: Some(st),
            } => {
                error!("recovery helper reported {st}");
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use ctdb_protocol::types::NodeAndFlags;

    use super::*;

    fn map(flags: &[u32]) -> NodeMap {
        NodeMap {
            nodes: flags
                .iter()
                .enumerate()
                .map(|(pnn, &flags)| NodeAndFlags {
                    pnn: pnn as u32,
                    flags,
                    addr: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn unconnected_pairs_are_those_an_active_node_sees_disconnected() {
        const D: u32 = node_flags::DISCONNECTED;
        const B: u32 = node_flags::BANNED;
        // Node 0 leads. Node 2 has yet to connect to the restarted node 1;
        // node 3 is banned (not active) and sees everyone disconnected.
        let maps: HashMap<u32, NodeMap> = [
            (1, map(&[0, 0, 0, B])),
            (2, map(&[0, D, 0, B])),
            (3, map(&[D, D, D, B])),
        ]
        .into();
        assert_eq!(unconnected_pairs(&[0, 1, 2], &maps), vec![(2, 1)]);
        // Once its link is up: nothing to wait for. A node whose map is
        // missing (it did not answer) holds nothing up either.
        let maps: HashMap<u32, NodeMap> = [(1, map(&[0, 0, 0, B])), (2, map(&[0, 0, 0, B]))].into();
        assert!(unconnected_pairs(&[0, 1, 2], &maps).is_empty());
        let maps: HashMap<u32, NodeMap> = [(1, map(&[D, 0, 0, 0]))].into();
        assert_eq!(unconnected_pairs(&[0, 1, 2], &maps), vec![(1, 0)]);
    }
}
