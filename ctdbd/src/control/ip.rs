//! The public-address family, where no address layer answers it.
//!
//! The daemon hands these controls to [`crate::takeover`] before the core
//! sees them; an embedder without an address layer (the fake daemon,
//! which answers most of them itself) gets these answers: no addresses,
//! no interfaces, nothing to do for the events that would run scripts,
//! and a clear refusal of the rest.

use ctdb_protocol::types::{IfaceList, PublicIpList};
use ctdb_protocol::{ControlReply, ControlRequest, ReqControl};

use super::{Core, Outcome};

impl Core {
    /// A public-address control, or `None` when `req` is not one.
    pub(super) fn ip_control(&mut self, req: &ReqControl) -> Option<Outcome> {
        use ControlRequest as Rq;
        Some(match &req.data {
            Rq::GetPublicIps => Outcome::ok(ControlReply::GetPublicIps(PublicIpList::default())),
            Rq::GetIfaces => Outcome::ok(ControlReply::GetIfaces(IfaceList::default())),
            Rq::Ipreallocated => Outcome::ok(ControlReply::Ipreallocated),
            Rq::ReloadPublicIps => Outcome::ok(ControlReply::ReloadPublicIps),
            Rq::TcpClient(_)
            | Rq::TcpAdd(_)
            | Rq::TcpRemove(_)
            | Rq::TcpAddDelayedUpdate(_)
            | Rq::GetTcpTickleList(_)
            | Rq::SetTcpTickleList(_)
            | Rq::SendGratuitousArp(_)
            | Rq::AddPublicIp(_)
            | Rq::DelPublicIp(_)
            | Rq::ReleaseIp(_)
            | Rq::TakeoverIp(_)
            | Rq::GetPublicIpInfo(_)
            | Rq::SetIfaceLinkState(_) => Outcome::fail(format!(
                "{}: IP failover is not supported by this ctdbd",
                req.opcode().name()
            )),
            _ => return None,
        })
    }
}
