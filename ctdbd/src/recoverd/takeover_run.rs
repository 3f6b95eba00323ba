//! Takeover runs: where the public addresses go, decided by the leader
//! through the takeover helper, as CTDB 4.17's recovery daemon does it.
//!
//! * The leader runs one after every recovery, when asked
//!   (`TAKEOVER_RUN` messages: `ctdb ipreallocate`, `ctdb disable`, a
//!   node whose health changed...) and again while the last one failed.
//!   It first tells every connected node to hold its own takeover-run
//!   requests (`DISABLE_TAKEOVER_RUNS`, 60 s), runs
//!   `ctdb_takeover_helper <write fd> <socket> [rebalance nodes]`
//!   (`CTDB_TAKEOVER_HELPER`, or in the helper directory), which reads
//!   the nodes' addresses, computes the allocation and sends
//!   `RELEASE_IP`, `TAKEOVER_IP` and `IPREALLOCATED`, then lifts the hold
//!   and answers the requests with its pnn (or -1).
//! * Every node, once a second in normal recovery mode, compares what it
//!   hosts with what is on its interfaces, and asks for a takeover run
//!   when they disagree, when an address it could host is hosted nowhere,
//!   or when its interfaces changed.
//! * `DISABLE_TAKEOVER_RUNS` / `DISABLE_IP_CHECK` (the tool's `moveip`
//!   and the leader's hold) stop both for a while; `REBALANCE_NODE`
//!   names nodes the next run may move addresses onto.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{DisableMessage, IfaceList, SrvidMessage};
use ctdb_protocol::{ControlReply, ControlRequest, Marshal};
use tracing::{debug, error, info, warn};

use super::Recoverd;
use super::helper::{HelperEnd, StatusPipe};
use crate::takeover::addresses::{canonical_ip, have_ip};

/// `GET_PUBLIC_IPS` flag: only the addresses the node could host now.
const ONLY_AVAILABLE: u32 = 0x0001_0000;

/// The leader's hold on the nodes' own takeover-run requests while it
/// runs one.
const HOLD: u32 = 60;

/// The takeover helper: `CTDB_TAKEOVER_HELPER`, else
/// `ctdb_takeover_helper` in the helper directory.
pub fn takeover_helper_path(helper_dir: &std::path::Path) -> PathBuf {
    std::env::var_os("CTDB_TAKEOVER_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| helper_dir.join("ctdb_takeover_helper"))
}

/// Takeover-run state of the recovery daemon.
#[derive(Debug, Default)]
pub struct TakeoverRuns {
    disabled_until: Option<Instant>,
    /// The last run failed: run again at the next check.
    need_run: bool,
    /// Nodes the next run may move addresses onto (`REBALANCE_NODE`).
    rebalance: Vec<u32>,
    /// The local interfaces at the last check.
    ifaces: Option<IfaceList>,
}

impl TakeoverRuns {
    fn disabled(&mut self) -> bool {
        match self.disabled_until {
            Some(t) if Instant::now() >= t => {
                info!("Reenabling takeover runs after timeout");
                self.disabled_until = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Holds takeover runs for `timeout` seconds (0: lifts the hold).
    fn disable(&mut self, timeout: u32) {
        if timeout == 0 {
            info!("Reenabling takeover runs");
            self.disabled_until = None;
            return;
        }
        info!("Disabling takeover runs for {timeout} seconds");
        self.disabled_until = Some(Instant::now() + Duration::from_secs(u64::from(timeout)));
    }
}

impl Recoverd {
    /// The takeover-run messages; false if `m` is not one of them.
    pub(super) fn takeover_message(&mut self, id: u64, data: &[u8]) -> bool {
        match id {
            srvid::DISABLE_TAKEOVER_RUNS => {
                let Ok((d, _)) = DisableMessage::pull(data) else {
                    error!("Wrong size for data :{} expecting 24", data.len());
                    return true;
                };
                self.takeover.disable(d.timeout);
                self.srvid_reply(d.pnn, d.srvid, self.pnn as i32);
            }
            srvid::DISABLE_IP_CHECK => match u32::pull(data) {
                Ok((t, _)) => self.takeover.disable(t),
                Err(_) => error!("Wrong size for data :{} expecting 4", data.len()),
            },
            srvid::REBALANCE_NODE => match u32::pull(data) {
                Ok((pnn, _)) => {
                    if self.is_leader() {
                        info!("Setting up rebalance of IPs to node {pnn}");
                        self.takeover.rebalance.push(pnn);
                    }
                }
                Err(_) => error!("Wrong size for data :{} expecting 4", data.len()),
            },
            _ => return false,
        }
        true
    }

    /// The leader's check at the end of its loop: a run if one was asked
    /// for or the last one failed, unless runs are held.
    pub(super) async fn takeover_run_checks(&mut self) {
        if self.takeover.disabled() {
            return;
        }
        if self.takeover_requests.is_empty() && !self.takeover.need_run {
            return;
        }
        let requests = std::mem::take(&mut self.takeover_requests);
        let result = if self.do_takeover_run().await {
            self.pnn as i32
        } else {
            -1
        };
        for r in requests {
            self.srvid_reply(r.pnn, r.srvid, result);
        }
    }

    /// One takeover run; true if the helper succeeded.
    pub(super) async fn do_takeover_run(&mut self) -> bool {
        info!("Takeover run starting");
        if self.takeover.disabled() {
            info!("Unable to begin - takeover runs are disabled");
            self.takeover.need_run = true;
            info!("Takeover run unsuccessful");
            return false;
        }
        let nodes = self.connected_nodes();
        let hold = |timeout: u32| DisableMessage {
            pnn: CTDB_UNKNOWN_PNN,
            srvid: 0,
            timeout,
        };
        for &n in &nodes {
            self.send(n, srvid::DISABLE_TAKEOVER_RUNS, &hold(HOLD).to_bytes());
        }
        let rebalance = self.takeover.rebalance.clone();
        let ok = self.run_takeover_helper(&rebalance).await;
        for &n in &nodes {
            self.send(n, srvid::DISABLE_TAKEOVER_RUNS, &hold(0).to_bytes());
        }
        if ok {
            if self.takeover.rebalance == rebalance {
                self.takeover.rebalance.clear();
            } else {
                warn!("Rebalance target nodes changed during takeover run - not clearing");
            }
        } else {
            error!("ctdb_takeover_run() failed");
        }
        self.takeover.need_run = !ok;
        info!(
            "Takeover run {}",
            if ok {
                "completed successfully"
            } else {
                "unsuccessful"
            }
        );
        ok
    }

    /// Runs the takeover helper and reads the status it writes.
    async fn run_takeover_helper(&mut self, rebalance: &[u32]) -> bool {
        const WHAT: &str = "takeover helper";
        let prog = takeover_helper_path(&self.cfg.helper_dir);
        let Some(pipe) = StatusPipe::new(WHAT) else {
            return false;
        };
        let mut cmd = crate::cluster_mutex::dying_with_us(&prog);
        cmd.arg(pipe.write_fd()).arg(&self.cfg.socket);
        if !rebalance.is_empty() {
            let list: Vec<String> = rebalance.iter().map(u32::to_string).collect();
            cmd.arg(list.join(","));
        }
        if self.cfg.failover_disabled {
            cmd.env("CTDB_DISABLE_IP_FAILOVER", "1");
        }
        // The helper's own stages are bounded by 3 x TakeoverTimeout;
        // allow for its start and reads on top.
        let limit = Duration::from_secs(u64::from(self.tunables.takeover_timeout.max(1)) * 4 + 10);
        match self.run_status_helper(WHAT, cmd, pipe, limit).await {
            HelperEnd::Exited {
                success,
                status: Some(st),
            } => {
                if st != 0 {
                    debug!("takeover helper reported {st}");
                }
                success && st == 0
            }
            _ => false,
        }
    }

    /// Every node's check of its own addresses (CTDB's
    /// `verify_local_ip_allocation`); asks the leader for a takeover run
    /// when something is off.
    pub(super) async fn verify_local_ip_allocation(&mut self) {
        if !self.is_leader() {
            // Only the leader acts on these.
            self.takeover_requests.clear();
            self.takeover.rebalance.clear();
        }
        if self.cfg.failover_disabled || self.takeover.disabled() {
            return;
        }
        let c = self.client.clone();
        let mut need = false;
        match c.get_ifaces(CTDB_CURRENT_NODE).await {
            Ok(now) => {
                match &self.takeover.ifaces {
                    None => {
                        info!("Initial interface fetched");
                        need = true;
                    }
                    Some(old) if old.ifaces.len() != now.ifaces.len() => {
                        info!(
                            "Interface count changed from {} to {}",
                            old.ifaces.len(),
                            now.ifaces.len()
                        );
                        need = true;
                    }
                    Some(old) => {
                        for (i, (a, b)) in old.ifaces.iter().zip(&now.ifaces).enumerate() {
                            if a.name != b.name {
                                info!("Interface in slot {i} changed: {} => {}", a.name, b.name);
                                need = true;
                                break;
                            }
                            if a.link_state != b.link_state {
                                info!(
                                    "Interface {} changed state: {} => {}",
                                    a.name, a.link_state, b.link_state
                                );
                                need = true;
                                break;
                            }
                        }
                    }
                }
                self.takeover.ifaces = Some(now);
            }
            Err(e) => {
                error!("Unable to get interfaces from local node {}: {e}", self.pnn);
                need = true;
            }
        }
        let my_flags = self
            .nodemap
            .nodes
            .iter()
            .find(|n| n.pnn == self.pnn)
            .map_or(0, |n| n.flags);
        let available = c
            .control_flags(
                CTDB_CURRENT_NODE,
                ControlRequest::GetPublicIps,
                ONLY_AVAILABLE,
            )
            .await;
        match available.map(|r| r.data) {
            Ok(Some(ControlReply::GetPublicIps(l))) => {
                for ip in &l.ips {
                    if ip.pnn == CTDB_UNKNOWN_PNN && my_flags == 0 {
                        warn!("Unassigned IP {} can be served by this node", ip.addr);
                        need = true;
                    }
                }
            }
            _ => {
                error!("Unable to retrieve available public IPs");
                return;
            }
        }
        let known = c.get_public_ips(CTDB_CURRENT_NODE).await;
        let Ok(known) = known else {
            error!("Unable to retrieve known public IPs");
            return;
        };
        for ip in &known.ips {
            let Some(addr) = canonical_ip(&ip.addr) else {
                continue;
            };
            let on_iface = have_ip(addr);
            if ip.pnn == self.pnn && !on_iface {
                error!("Assigned IP {addr} not on an interface");
                need = true;
            } else if ip.pnn != self.pnn && on_iface {
                error!("IP {addr} incorrectly on an interface");
                need = true;
            }
        }
        if need {
            info!("Trigger takeoverrun");
            let rd = SrvidMessage {
                pnn: self.pnn,
                srvid: 0,
            };
            self.send(
                CTDB_BROADCAST_CONNECTED,
                srvid::TAKEOVER_RUN,
                &rd.to_bytes(),
            );
        }
    }
}
