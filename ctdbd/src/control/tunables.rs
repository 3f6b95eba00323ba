//! The settings family: tunables (`ctdb setvar`, `getvar`, `listvars`)
//! and the debug level.

use ctdb_protocol::types::VarList;
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::warn;

use super::{Core, Outcome};
use crate::tunables;

impl Core {
    /// A tunables or debug-level control, or `None` when `req` is not one.
    pub(super) fn tunables_control(&mut self, req: &ReqControl) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::SetTunable(t) => match tunables::set(&mut self.tunables, &t.name, t.value) {
                tunables::SetOutcome::Set => Outcome::ok(ControlReply::SetTunable),
                tunables::SetOutcome::Obsolete => {
                    warn!("Setting obsolete tunable \"{}\"", t.name);
                    Outcome::Reply(ReplyControl {
                        status: 1,
                        data: Some(ControlReply::SetTunable),
                        errmsg: None,
                    })
                }
                tunables::SetOutcome::Unknown => Outcome::status(-1),
            },
            Rq::GetTunable(n) => match tunables::get(&self.tunables, &n.0) {
                Some(v) => Outcome::ok(ControlReply::GetTunable(v)),
                None => Outcome::status(-libc::EINVAL),
            },
            Rq::ListTunables => {
                // CTDB sends the names with a leading ':'.
                let mut vars = vec![String::new()];
                vars.extend(tunables::names().map(str::to_owned));
                Outcome::ok(ControlReply::ListTunables(VarList { vars }))
            }
            Rq::GetAllTunables => {
                Outcome::ok(ControlReply::GetAllTunables(Box::new(self.tunables)))
            }
            Rq::GetDebug => Outcome::ok(ControlReply::GetDebug(self.log.level() as u32)),
            Rq::SetDebug(l) => {
                self.log.set_level(*l as i32);
                Outcome::ok(ControlReply::SetDebug)
            }
            _ => return None,
        })
    }
}
