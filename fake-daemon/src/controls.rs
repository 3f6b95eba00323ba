//! Where a control sent to a scripted node is answered.
//!
//! In order:
//!
//! 1. a failure the script asks for (CONTROLFAILS) replaces the answer;
//! 2. database controls go to the fake's database layer ([`crate::dbctl`]),
//!    address controls to [`crate::ips`];
//! 3. what the fake keeps for the whole cluster is answered here: the vnn
//!    map and recovery mode (with the simulated recovery), the node map,
//!    nodes-file reloads, the scripted `GET_CAPABILITIES` timeout;
//! 4. everything else is answered by the addressed node's daemon core,
//!    `ctdbd`'s own control dispatch ([`ctdbd::control::Core::handle`]):
//!    tunables, debug level, statistics, uptime, ping, pids, capabilities
//!    and roles, stop/continue/disable/enable, bans, run state, srvid and
//!    notify registrations, nodes file, ...

use std::time::Duration;

use ctdb_protocol::types::*;
use ctdb_protocol::{
    Body, ControlReply as R, ControlRequest as Q, Header, Operation, Packet, ReplyControl,
    ReqControl, ReqMessage,
};
use ctdbd::control::{AsyncOp, ControlCtx, Outcome};
use ctdbd::messaging::ClientId;

use crate::daemon::{Daemon, Effects, Later};
use crate::state::FailKind;

/// Handles one control addressed to node `h.destnode` (already resolved to
/// a real node number) from client `client`.
pub fn handle(d: &mut Daemon, fx: &mut Effects, client: ClientId, h: &Header, req: &ReqControl) {
    let opcode = req.opcode() as u32;
    crate::ips::log_control(d, h, req);
    if scripted_failure(d, fx, client, h, opcode) {
        return;
    }
    let reply = control(d, fx, client, h, req);
    if let Some(r) = reply
        && ctdbd::control::wants_reply(req)
    {
        d.reply(fx, client, h, r);
    }
}

/// A control whose opcode or data this build cannot decode.
pub fn unknown(
    d: &Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    opcode: u32,
    flags: u32,
) {
    if scripted_failure(d, fx, client, h, opcode) {
        return;
    }
    if flags & ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY == 0 {
        d.reply(fx, client, h, ReplyControl::error(-1, "Not implemented"));
    }
}

/// Applies a CONTROLFAILS line for `opcode` on the destination node, if
/// there is one: an error reply, or no reply at all.
fn scripted_failure(
    d: &Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    opcode: u32,
) -> bool {
    let Some(f) = d.st.control_fail(opcode, h.destnode) else {
        return false;
    };
    let timeout = f.kind == FailKind::Timeout;
    tracing::error!(
        "Control {opcode} fake {} on node {}",
        if timeout { "timeout" } else { "error" },
        h.destnode
    );
    if !timeout {
        d.reply(fx, client, h, ReplyControl::error(-1, f.comment.clone()));
    }
    true
}

fn control(
    d: &mut Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    req: &ReqControl,
) -> Option<ReplyControl> {
    if crate::dbctl::handles(req) {
        return crate::dbctl::control(d, fx, client, h, req);
    }
    if crate::ips::handles(req) {
        return Some(crate::ips::control(d, h, req));
    }
    let dest = h.destnode;
    match &req.data {
        Q::GetVnnMap => Some(ReplyControl::ok(R::GetVnnMap(d.cluster.vnnmap.clone()))),
        Q::SetVnnMap(m) => Some(if d.cluster.recmode == CTDB_RECOVERY_ACTIVE {
            d.cluster.vnnmap = m.clone();
            ReplyControl::ok(R::SetVnnMap)
        } else {
            ReplyControl::error(-1, "attempt to set vnnmap when not in recovery")
        }),
        Q::GetRecmode => Some(ReplyControl::status(d.cluster.recmode as i32)),
        Q::SetRecmode(mode) => {
            if *mode == CTDB_RECOVERY_NORMAL {
                return Some(ReplyControl::error(
                    -1,
                    "Client cannot set recmode to NORMAL",
                ));
            }
            d.cluster.recmode = CTDB_RECOVERY_ACTIVE;
            fx.later.push(Later::Recovery {
                client,
                reply_to: *h,
            });
            None
        }
        Q::GetNodemap => Some(ReplyControl::ok(R::GetNodemap(d.cluster.nodemap()))),
        Q::ReloadNodesFile => Some(match d.cluster.reload_nodes(dest) {
            Ok(()) => ReplyControl::ok(R::ReloadNodesFile),
            Err(e) => {
                tracing::error!("Failed to reload nodes file: {e}");
                ReplyControl::error(-1, "Memory error")
            }
        }),
        Q::GetCapabilities if d.cluster.fake_timeout(dest) => None,
        _ => core_control(d, fx, client, h, req),
    }
}

/// A control for the addressed node's daemon core.
fn core_control(
    d: &mut Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    req: &ReqControl,
) -> Option<ReplyControl> {
    let dest = h.destnode;
    let ctx = ControlCtx {
        srcnode: h.srcnode,
        client: Some(client),
        client_id: req.client_id,
    };
    let outcome = d.cluster.core(dest).handle(&ctx, req, None);
    match (&req.data, &outcome) {
        (Q::SetBanState(b), Outcome::Reply(r))
            if r.status == 0
                && b.time != 0
                && d.cluster.cores[dest as usize].node.ban.is_some() =>
        {
            // A ban ends the current generation, as in CTDB's fake.
            d.cluster.vnnmap.generation = ctdb_protocol::header::INVALID_GENERATION;
            fx.later.push(Later::ExpireBan {
                pnn: dest,
                after: Duration::from_secs(u64::from(b.time)),
            });
        }
        (Q::RegisterSrvid, Outcome::Reply(r))
            if r.status == 0 && tell_leader_at_once(d, fx, client, h, req.srvid) =>
        {
            return None;
        }
        _ => {}
    }
    match outcome {
        Outcome::Reply(r) => Some(r),
        Outcome::Async(AsyncOp::Shutdown) => {
            // As CTDB's fake: no reply, the daemon stops.
            fx.shutdown = true;
            None
        }
        Outcome::Async(AsyncOp::Echo { delay, data }) => {
            fx.later.push(Later::Echo {
                client,
                reply_to: *h,
                delay,
                data,
            });
            None
        }
        // There is no cluster lock to check in a fake cluster.
        Outcome::Async(AsyncOp::CheckClusterLock { .. } | AsyncOp::ReclockConsistency { .. }) => {
            Some(ReplyControl::status(0))
        }
    }
}

/// A new `LEADER` listener hears who the leader is at once, rather than
/// within the next second (the reference broadcasts only on its timer):
/// the registration's reply goes first, then the message. Returns whether
/// it sent them.
fn tell_leader_at_once(
    d: &Daemon,
    fx: &mut Effects,
    client: ClientId,
    h: &Header,
    id: u64,
) -> bool {
    let leader = d.st.leader;
    if id != ctdb_protocol::message::srvid::LEADER
        || leader == ctdb_protocol::header::CTDB_UNKNOWN_PNN
    {
        return false;
    }
    d.reply(fx, client, h, ReplyControl::ok(R::RegisterSrvid));
    let mut mh = Header::new(Operation::ReqMessage, d.pnn(), leader, 0);
    mh.generation = d.generation();
    let msg = ReqMessage::data(id, leader.to_le_bytes().to_vec());
    fx.send
        .push((client, Packet::new(mh, Body::ReqMessage(msg)).encode()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::Opcode;
    use ctdb_protocol::control::TunableName;

    const SCRIPT: &str = "NODEMAP
0 10.0.0.1 0x0 CURRENT RECMASTER
1 10.0.0.2 0x0
2 10.0.0.3 0x1

VNNMAP
654321
0
1

CONTROLFAILS
";

    fn daemon(dir: &std::path::Path) -> Daemon {
        let fail = format!(
            "{} 0 ERROR fake nodes-file failure\n",
            Opcode::GetNodesFile as u32
        );
        let st = crate::state::ClusterState::parse(&format!("{SCRIPT}{fail}")).unwrap();
        let mut d = Daemon::new(st, dir.to_owned()).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        d.add_client(1, std::process::id() as i32, tx);
        d
    }

    /// Sends `q` to node `dest`; returns the reply, if one was sent.
    fn run(d: &mut Daemon, dest: u32, q: ControlRequest) -> Option<ReplyControl> {
        let op = q.opcode();
        let req = ReqControl::new(q);
        let h = Header::new(Operation::ReqControl, dest, 0, 7);
        let mut fx = Effects::default();
        handle(d, &mut fx, 1, &h, &req);
        let (_, pkt) = fx.send.pop()?;
        match Packet::decode(&pkt, |_| Some(op)).unwrap().body {
            Body::ReplyControl(r) => Some(r),
            other => panic!("{other:?}"),
        }
    }

    use ctdb_protocol::ControlRequest;

    #[test]
    fn node_controls_go_to_the_addressed_nodes_core() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = daemon(dir.path());
        let set = ControlRequest::SetTunable(Tunable {
            name: "RecoverTimeout".into(),
            value: 12,
        });
        assert_eq!(run(&mut d, 1, set).unwrap().status, 0);
        let get = |d: &mut Daemon, n| {
            let q = ControlRequest::GetTunable(TunableName("recovertimeout".into()));
            run(d, n, q).unwrap().data
        };
        assert_eq!(get(&mut d, 1), Some(R::GetTunable(12)));
        assert_eq!(get(&mut d, 0), Some(R::GetTunable(30)));
        assert_eq!(
            run(&mut d, 1, ControlRequest::GetPnn).unwrap().status,
            1,
            "GET_PNN answers with the addressed node"
        );

        // Stopping node 1 shows in every node's node map.
        assert_eq!(run(&mut d, 1, ControlRequest::StopNode).unwrap().status, 0);
        let Some(R::GetNodemap(m)) = run(&mut d, 0, ControlRequest::GetNodemap).unwrap().data
        else {
            panic!()
        };
        let flags: Vec<u32> = m.nodes.iter().map(|n| n.flags).collect();
        assert_eq!(
            flags,
            vec![0, node_flags::STOPPED, node_flags::DISCONNECTED]
        );
    }

    #[test]
    fn bans_invalidate_the_generation_and_set_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = daemon(dir.path());
        let ban = ControlRequest::SetBanState(BanState { pnn: 1, time: 60 });
        assert_eq!(run(&mut d, 1, ban).unwrap().status, 0);
        assert_eq!(d.generation(), ctdb_protocol::header::INVALID_GENERATION);
        assert_ne!(d.cluster.flags(1) & node_flags::BANNED, 0);
        let unban = ControlRequest::SetBanState(BanState { pnn: 1, time: 0 });
        assert_eq!(run(&mut d, 1, unban).unwrap().status, 0);
        assert_eq!(d.cluster.flags(1), 0);
    }

    #[test]
    fn scripted_failures_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = daemon(dir.path());
        let r = run(&mut d, 0, ControlRequest::GetNodesFile).unwrap();
        assert_eq!(r.status, -1);
        assert_eq!(r.errmsg.as_deref(), Some("fake nodes-file failure"));
        // Not on node 1: there the core answers (no CTDB_BASE nodes file).
        assert!(
            run(&mut d, 1, ControlRequest::GetNodesFile)
                .unwrap()
                .errmsg
                .is_none()
        );
    }
}
