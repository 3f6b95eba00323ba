//! The local-clients family: what a client registers here (srvids,
//! notify records, tunnel ids), questions about clients
//! (`PROCESS_EXISTS`, `CHECK_PID_SRVID`, `PING`'s count) and `ECHO_DATA`.

use std::time::Duration;

use ctdb_protocol::{ControlReply, ControlRequest, ReqControl};

use super::{AsyncOp, ControlCtx, Core, Outcome};

impl Core {
    /// A local-clients control, or `None` when `req` is not one.
    pub(super) fn clients_control(
        &mut self,
        ctx: &ControlCtx,
        req: &ReqControl,
    ) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::Ping => Outcome::status(self.num_clients() as i32),
            Rq::ProcessExists(pid) => self.process_exists(*pid),
            Rq::RegisterSrvid => match ctx.client {
                Some(c) => {
                    self.srvids.register(req.srvid, c);
                    Outcome::ok(ControlReply::RegisterSrvid)
                }
                None => Outcome::fail("REGISTER_SRVID from a remote node"),
            },
            Rq::DeregisterSrvid => match ctx.client {
                Some(c) if self.srvids.deregister(req.srvid, c) => {
                    Outcome::ok(ControlReply::DeregisterSrvid)
                }
                _ => Outcome::status(-1),
            },
            Rq::CheckPidSrvid(p) => {
                let found = self
                    .clients
                    .iter()
                    .any(|(id, c)| c.pid == p.pid && self.srvids.is_registered(p.srvid, *id));
                Outcome::status(if found { 0 } else { -1 })
            }
            Rq::RegisterNotify(n) => match ctx.client.and_then(|c| self.clients.get_mut(&c)) {
                Some(ci) => {
                    ci.notify.retain(|x| x.srvid != n.srvid);
                    ci.notify.push(n.clone());
                    Outcome::ok(ControlReply::RegisterNotify)
                }
                None => Outcome::status(-1),
            },
            Rq::DeregisterNotify(id) => match ctx.client.and_then(|c| self.clients.get_mut(&c)) {
                Some(ci) if ci.notify.iter().any(|x| x.srvid == *id) => {
                    ci.notify.retain(|x| x.srvid != *id);
                    Outcome::ok(ControlReply::DeregisterNotify)
                }
                _ => Outcome::status(-1),
            },
            Rq::TunnelRegister | Rq::TunnelDeregister => {
                Outcome::Reply(self.tunnels.control(ctx, req))
            }
            Rq::EchoData(d) => Outcome::Async(AsyncOp::Echo {
                delay: Duration::from_millis(u64::from(d.timeout)),
                data: d.clone(),
            }),
            _ => return None,
        })
    }

    /// `PROCESS_EXISTS`: only a live client process of this node exists
    /// (the recovery daemon is one, with its own pid, as CTDB's). The
    /// metrics responder connects as a client under the daemon's own pid;
    /// the daemon is not a client of itself.
    ///
    /// On an inactive node (banned, stopped) CTDB 4.17 answers that the
    /// client does not exist and closes its connection (the first client
    /// with that pid in its list, where new clients go first: the newest),
    /// so that Samba elsewhere takes back what the process held here
    /// (`ctdb_control_process_exists`); so does this daemon.
    fn process_exists(&mut self, pid: i32) -> Outcome {
        if pid == std::process::id() as i32 {
            return Outcome::status(-1);
        }
        let Some(id) = (self.clients.iter())
            .rev()
            .find(|(_, c)| c.pid == pid)
            .map(|(id, _)| *id)
        else {
            return Outcome::status(-1);
        };
        if self.node.me().is_inactive() {
            tracing::info!("Killing client with pid:{pid} on banned/stopped node");
            self.pending_drops.push(id);
            return Outcome::status(-1);
        }
        let alive =
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        Outcome::status(if alive { 0 } else { -1 })
    }
}
