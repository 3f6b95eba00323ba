//! The recovery family: recovery mode (and the cluster-lock check before
//! NORMAL), the start and end of a recovery, the cluster lock setting,
//! and the recovery daemon's pings and lock latencies.

use std::time::Instant;

use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{debug, error, info, warn};

use super::{AsyncOp, ControlCtx, Core, Outcome};

impl Core {
    /// A recovery-family control, or `None` when `req` is not one.
    pub(super) fn recovery_control(
        &mut self,
        ctx: &ControlCtx,
        req: &ReqControl,
    ) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::GetRecmode => Outcome::status(self.node.recovery_mode as i32),
            Rq::SetRecmode(m) => self.set_recmode(*m),
            Rq::StartRecovery => {
                error!("Recovery has started");
                self.node.last_recovery_started = Timeval::now();
                Outcome::Async(AsyncOp::ReclockConsistency {
                    leader: ctx.srcnode,
                })
            }
            Rq::EndRecovery => {
                error!("Recovery has finished");
                self.end_recovery();
                Outcome::ok(ControlReply::EndRecovery)
            }
            Rq::GetReclockFile => {
                Outcome::ok(ControlReply::GetReclockFile(self.cluster_lock.clone()))
            }
            Rq::RecdPing => {
                self.recd_ping.ping(Instant::now(), &self.tunables);
                Outcome::ok(ControlReply::RecdPing)
            }
            Rq::RecdReclockLatency(l) => {
                self.stats.bump(|s| s.reclock_recd.record(*l));
                Outcome::ok(ControlReply::RecdReclockLatency)
            }
            _ => return None,
        })
    }

    fn set_recmode(&mut self, mode: u32) -> Outcome {
        if mode == self.node.recovery_mode {
            debug!(
                "Recovery mode already set to {}",
                if mode == CTDB_RECOVERY_NORMAL {
                    "NORMAL"
                } else {
                    "ACTIVE"
                }
            );
            return Outcome::ok(ControlReply::SetRecmode);
        }
        if mode != CTDB_RECOVERY_NORMAL && mode != CTDB_RECOVERY_ACTIVE {
            return Outcome::fail(format!("invalid recovery mode {mode}"));
        }
        info!(
            "Recovery mode set to {}",
            if mode == CTDB_RECOVERY_NORMAL {
                "NORMAL"
            } else {
                "ACTIVE"
            }
        );
        if mode == CTDB_RECOVERY_ACTIVE {
            self.node.recovery_mode = CTDB_RECOVERY_ACTIVE;
            return Outcome::ok(ControlReply::SetRecmode);
        }
        match &self.cluster_lock {
            None => {
                self.node.recovery_mode = CTDB_RECOVERY_NORMAL;
                Outcome::ok(ControlReply::SetRecmode)
            }
            Some(l) => Outcome::Async(AsyncOp::CheckClusterLock { lock: l.clone() }),
        }
    }

    /// The result of the cluster lock check for `SET_RECMODE` NORMAL:
    /// `status` is the mutex helper's answer.
    pub fn finish_recmode_normal(&mut self, status: u8) -> ReplyControl {
        match status {
            b'1' => {
                debug!("Recovery lock check OK");
                self.node.recovery_mode = CTDB_RECOVERY_NORMAL;
                ReplyControl::ok(ControlReply::SetRecmode)
            }
            b'2' => {
                warn!("Time out getting recovery lock, allowing recmode set anyway");
                self.node.recovery_mode = CTDB_RECOVERY_NORMAL;
                ReplyControl::ok(ControlReply::SetRecmode)
            }
            b'0' => {
                error!(
                    "ERROR: Daemon able to take recovery lock on \"{}\" during recovery",
                    self.cluster_lock.as_deref().unwrap_or("")
                );
                ReplyControl::error(
                    -1,
                    "Took recovery lock from daemon during recovery - probably a cluster filesystem lock coherence problem",
                )
            }
            _ => {
                error!("Unexpected error when testing recovery lock");
                ReplyControl::error(-1, "Unexpected error when testing recovery lock")
            }
        }
    }

    /// A recovery is over (after the `recovered` event): count it, note
    /// when, and leave FIRST_RECOVERY.
    pub fn end_recovery(&mut self) {
        self.stats.recovery_ended(self.node.last_recovery_started);
        self.node.last_recovery_finished = Timeval::now();
        if self.node.runstate == Runstate::FirstRecovery {
            self.set_runstate(Runstate::Startup);
        }
    }
}
