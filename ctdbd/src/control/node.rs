//! The node family: the node map and this node's place in it (flags,
//! bans, stop/disable, roles, run state, the nodes file), and the
//! daemon's own lifecycle (`STARTUP`, `SHUTDOWN`, `UPTIME`, `GET_PID`).

use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply, ControlRequest, ReqControl};
use std::time::Instant;
use tracing::{debug, error, info, warn};

use super::{AsyncOp, ControlCtx, Core, Outcome};
use crate::node::NodeState;

impl Core {
    /// A node-family control, or `None` when `req` is not one.
    pub(super) fn node_control(&mut self, ctx: &ControlCtx, req: &ReqControl) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::GetPnn => Outcome::status(self.node.pnn as i32),
            Rq::GetPid => Outcome::status(std::process::id() as i32),
            Rq::GetNodemap => Outcome::ok(ControlReply::GetNodemap(self.node.nodemap())),
            Rq::GetVnnMap => Outcome::ok(ControlReply::GetVnnMap(self.node.vnnmap.clone())),
            Rq::SetVnnMap(m) => match self.node.set_vnnmap(m.clone()) {
                Ok(()) => Outcome::ok(ControlReply::SetVnnMap),
                Err(e) => {
                    error!("{e}");
                    Outcome::fail(e.to_string())
                }
            },
            Rq::ModifyFlags(c) => match self.node.modify_flags(*c) {
                Ok(Some((old, new))) => {
                    info!("Node {} has changed flags - 0x{old:x} -> 0x{new:x}", c.pnn);
                    Outcome::ok(ControlReply::ModifyFlags)
                }
                Ok(None) => Outcome::ok(ControlReply::ModifyFlags),
                Err(e) => {
                    error!("{e}");
                    Outcome::status(-1)
                }
            },
            Rq::StopNode => {
                error!("Stopping node");
                self.node.stop();
                Outcome::ok(ControlReply::StopNode)
            }
            Rq::ContinueNode => {
                error!("Continue node");
                self.node.cont();
                Outcome::ok(ControlReply::ContinueNode)
            }
            Rq::DisableNode => {
                error!("Disable node");
                self.node.disable();
                Outcome::ok(ControlReply::DisableNode)
            }
            Rq::EnableNode => {
                error!("Enable node");
                self.node.enable();
                Outcome::ok(ControlReply::EnableNode)
            }
            Rq::SetBanState(b) => {
                let enabled = self.tunables.enable_bans != 0;
                match self.node.set_ban(*b, enabled, Instant::now()) {
                    Ok(Some(_)) => {
                        error!("Banning this node for {} seconds", b.time);
                        Outcome::ok(ControlReply::SetBanState)
                    }
                    Ok(None) => {
                        if b.time == 0 {
                            error!("Unbanning this node");
                        } else {
                            error!("Bans are disabled - ignoring ban of node {}", b.pnn);
                        }
                        Outcome::ok(ControlReply::SetBanState)
                    }
                    Err(e) => {
                        warn!("{e}");
                        Outcome::status(-1)
                    }
                }
            }
            Rq::GetBanState => Outcome::ok(ControlReply::GetBanState(self.node.ban_state())),
            Rq::GetCapabilities => {
                Outcome::ok(ControlReply::GetCapabilities(self.node.capabilities))
            }
            Rq::SetLmasterRole(v) => {
                self.set_cap(capabilities::LMASTER, *v != 0);
                Outcome::ok(ControlReply::SetLmasterRole)
            }
            Rq::SetRecmasterRole(v) => {
                self.set_cap(capabilities::RECMASTER, *v != 0);
                Outcome::ok(ControlReply::SetRecmasterRole)
            }
            Rq::GetRunstate => Outcome::ok(ControlReply::GetRunstate(self.node.runstate)),
            Rq::GetNodesFile => self.nodes_file(),
            Rq::ReloadNodesFile => self.reload_nodes(),
            Rq::Uptime => Outcome::ok(ControlReply::Uptime(Uptime {
                current_time: Timeval::now(),
                ctdbd_start_time: self.node.start_time,
                last_recovery_started: self.node.last_recovery_started,
                last_recovery_finished: self.node.last_recovery_finished,
            })),
            Rq::Startup => {
                debug!("node {} started up", ctx.srcnode);
                Outcome::ok(ControlReply::Startup)
            }
            Rq::Shutdown => {
                info!("Received SHUTDOWN command.");
                Outcome::Async(AsyncOp::Shutdown)
            }
            _ => return None,
        })
    }

    fn set_cap(&mut self, cap: u32, on: bool) {
        if on {
            self.node.capabilities |= cap;
        } else {
            self.node.capabilities &= !cap;
        }
    }

    pub fn set_runstate(&mut self, r: Runstate) {
        if self.node.runstate != r {
            info!("Set runstate to {} ({})", r.name(), r as u32);
            self.node.runstate = r;
        }
    }

    /// `GET_NODES_FILE`: the nodes file as a node map, only the deleted
    /// flag kept.
    fn nodes_file(&self) -> Outcome {
        match crate::config::load_nodes(&self.nodes_file) {
            Ok(entries) => {
                let tmp = NodeState::new(0, &entries, 0);
                let mut map = tmp.nodemap();
                for n in &mut map.nodes {
                    n.flags &= node_flags::DELETED;
                }
                Outcome::ok(ControlReply::GetNodesFile(map))
            }
            Err(e) => {
                error!("Failed to read nodes file: {e}");
                Outcome::status(-1)
            }
        }
    }

    fn reload_nodes(&mut self) -> Outcome {
        match crate::config::load_nodes(&self.nodes_file) {
            Ok(entries) => {
                if (self.node.pnn as usize) >= entries.len()
                    || entries[self.node.pnn as usize].addr != self.node.me().addr.map(|a| a.ip())
                {
                    error!("Reloaded nodes file changes this node's address - ignoring");
                    return Outcome::status(-1);
                }
                info!("Reloading nodes file");
                let changed = self.node.reload(&entries);
                self.reloaded = Some(changed);
                self.pending_messages.push((
                    self.node.pnn,
                    ctdb_protocol::message::srvid::RELOAD_NODES,
                    Vec::new(),
                ));
                Outcome::ok(ControlReply::ReloadNodesFile)
            }
            Err(e) => {
                error!("Failed to read nodes file: {e}");
                Outcome::status(-1)
            }
        }
    }
}
