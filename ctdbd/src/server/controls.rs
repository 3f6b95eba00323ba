//! Where controls are dispatched: a client's control for this node, for
//! another node (forwarded, its reply relayed back) or for all of them; a
//! control for this node routed by family (database controls to the
//! database layer, public addresses to [`crate::takeover`], the rest to
//! [`Core::handle`]), the work an answer must wait for
//! ([`AsyncOp`]), replies, and the requests this daemon waits on from
//! other nodes.
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ctdb_protocol::Marshal as _;
use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::header::{
    CTDB_BROADCAST_ACTIVE, CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE,
    HEADER_LEN,
};
use ctdb_protocol::{
    Body, ControlReply, ControlRequest, Header, Opcode, Operation, Packet, ReplyControl, ReqControl,
};
use tracing::{debug, error, warn};

use crate::cluster_mutex;
use crate::control::{AsyncOp, ControlCtx, Outcome};
use crate::messaging::ClientId;

use super::{Event, ReplyTo, Server};

/// A request this daemon sent to another node and is waiting on.
pub(super) struct Pending {
    pub(super) dest: u32,
    pub(super) deadline: Instant,
    pub(super) kind: PendingKind,
}

pub(super) enum PendingKind {
    /// A client's control forwarded to another node.
    Forward { id: ClientId, reqid: u32 },
    /// `START_RECOVERY`'s question to the leader about its cluster lock.
    ReclockCheck { to: ReplyTo },
    /// A control the database layer sent; its reply goes back there.
    Db { tag: u64, opcode: Opcode },
}

impl Server {
    pub(super) fn client_control(&mut self, id: ClientId, hdr: Header, pkt: &mut BytesMut) {
        let body = &pkt[HEADER_LEN..];
        let req = match ReqControl::pull(body) {
            Ok((r, _)) => r,
            Err(e) => {
                // Readable enough to answer: refuse this one control.
                warn!("client {id}: malformed control ({e})");
                let noreply = body.len() >= 24
                    && u32::from_le_bytes([body[20], body[21], body[22], body[23]])
                        & CTDB_CTRL_FLAG_NOREPLY
                        != 0;
                if !noreply {
                    self.reply(
                        ReplyTo::Client {
                            id,
                            reqid: hdr.reqid,
                        },
                        ReplyControl::error(-1, format!("malformed control: {e}")),
                    );
                }
                return;
            }
        };
        let dest = if hdr.destnode == CTDB_CURRENT_NODE {
            self.pnn()
        } else {
            hdr.destnode
        };
        let noreply = req.flags & CTDB_CTRL_FLAG_NOREPLY != 0;
        let to = if noreply {
            ReplyTo::Nobody
        } else {
            ReplyTo::Client {
                id,
                reqid: hdr.reqid,
            }
        };
        if dest == self.pnn() {
            // CTDB queues a client's control to its own node as a node
            // packet, and the reply too: node_packets_sent counts both,
            // node.req_control and node.reply_control count them as they
            // come back in (node_packets_recv does not).
            self.core.stats.bump(|s| {
                s.node_packets_sent += 1;
                s.node.req_control += 1;
                if !noreply {
                    s.node_packets_sent += 1;
                    s.node.reply_control += 1;
                }
            });
            let ctx = ControlCtx {
                srcnode: self.pnn(),
                client: Some(id),
                client_id: id,
            };
            self.local_control(ctx, &req, to);
            return;
        }
        if matches!(
            dest,
            CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
        ) {
            if !noreply {
                self.reply(
                    to,
                    ReplyControl::error(-1, "broadcast control without NOREPLY"),
                );
                return;
            }
            for pnn in self.broadcast_targets(dest) {
                if pnn == self.pnn() {
                    self.core.stats.bump(|s| {
                        s.node_packets_sent += 1;
                        s.node.req_control += 1;
                    });
                    let ctx = ControlCtx {
                        srcnode: self.pnn(),
                        client: Some(id),
                        client_id: id,
                    };
                    self.local_control(ctx, &req, ReplyTo::Nobody);
                } else {
                    let b = self.forward_bytes(pkt, pnn, 0, Some(id));
                    self.send_node(pnn, b);
                }
            }
            return;
        }
        let connected = self
            .core
            .node
            .node(dest)
            .is_some_and(|n| !n.is_deleted() && n.is_connected());
        if !connected {
            self.reply(
                to,
                ReplyControl::error(-1, "ctdb_control to disconnected node"),
            );
            return;
        }
        let reqid = if noreply {
            0
        } else {
            let r = self.new_reqid();
            let deadline = Instant::now()
                + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
            self.pending.insert(
                r,
                Pending {
                    dest,
                    deadline,
                    kind: PendingKind::Forward {
                        id,
                        reqid: hdr.reqid,
                    },
                },
            );
            r
        };
        let b = self.forward_bytes(pkt, dest, reqid, Some(id));
        self.send_node(dest, b);
    }

    /// A copy of packet `pkt` re-addressed from this node to `dest`.
    fn forward_bytes(
        &self,
        pkt: &BytesMut,
        dest: u32,
        reqid: u32,
        client_id: Option<ClientId>,
    ) -> Bytes {
        let mut b = pkt.clone();
        b[12..16].copy_from_slice(&self.generation().to_le_bytes());
        b[20..24].copy_from_slice(&dest.to_le_bytes());
        b[24..28].copy_from_slice(&self.pnn().to_le_bytes());
        if reqid != 0 {
            b[28..32].copy_from_slice(&reqid.to_le_bytes());
        }
        if let Some(c) = client_id
            && b.len() >= 52
        {
            b[48..52].copy_from_slice(&c.to_le_bytes());
        }
        b.freeze()
    }

    pub(super) fn new_reqid(&mut self) -> u32 {
        loop {
            let r = self.next_reqid;
            self.next_reqid = self.next_reqid.wrapping_add(1);
            if r != 0 && !self.pending.contains_key(&r) {
                return r;
            }
        }
    }

    /// Answers a control addressed to this node, by family: database
    /// controls go to the database layer, public-address ones to
    /// [`crate::takeover`], `END_RECOVERY` waits for the `recovered`
    /// event, and the rest is [`Core::handle`]'s (`SET_RECMODE` to NORMAL
    /// first checks the databases' generations; `STARTUP` also tells the
    /// address layer).
    pub(super) fn local_control(&mut self, ctx: ControlCtx, req: &ReqControl, to: ReplyTo) {
        let op = req.opcode();
        self.core.stats.control_started(&to, op);
        if crate::db::controls::handles(op) {
            self.with_dbs(|d, env| d.control(env, ctx, req, to));
            self.after_event();
            return;
        }
        if crate::takeover::Takeover::handles(op) {
            let e = self.takeover.control(&mut self.core, &ctx, req, to);
            self.takeover_effects(e);
            self.after_event();
            return;
        }
        if op == Opcode::Startup {
            let e = self.takeover.node_startup(&self.core);
            self.takeover_effects(e);
        }
        if op == Opcode::EndRecovery {
            // Trans3 commits waiting for the recovery finish first; the
            // reply waits for the "recovered" event.
            self.db_recmode_check();
            self.with_dbs(|d, env| d.end_recovery(env));
            let acts = self.monitor.end_recovery(&self.core, to);
            self.monitor_actions(acts);
            self.after_event();
            return;
        }
        if let ControlRequest::SetRecmode(m) = &req.data
            && *m == ctdb_protocol::types::CTDB_RECOVERY_NORMAL
            && self.core.node.in_recovery()
            && let Err(e) = self.with_dbs(|d, env| d.check_generations(env))
        {
            self.reply(to, ReplyControl::error(-1, e));
            return;
        }
        match self.core.handle(&ctx, req, Some(&self.dbs)) {
            Outcome::Reply(r) => self.reply(to, r),
            Outcome::Async(op) => self.start_async(op, to),
        }
        self.after_event();
    }

    fn start_async(&mut self, op: AsyncOp, to: ReplyTo) {
        match op {
            AsyncOp::Shutdown => {
                self.reply(to, ReplyControl::ok(ControlReply::Shutdown));
                self.shutdown = true;
            }
            AsyncOp::Echo { delay, data } if delay.is_zero() => {
                self.reply(to, ReplyControl::ok(ControlReply::EchoData(data)));
            }
            AsyncOp::Echo { delay, data } => {
                // Held data counts against the client's queue limit, or a
                // client could park any amount of it here.
                if let ReplyTo::Client { id, .. } = to {
                    let held: usize = self
                        .echoes
                        .iter()
                        .filter(|e| matches!(e.1, ReplyTo::Client { id: i, .. } if i == id))
                        .map(|e| e.2.buf.len())
                        .sum();
                    if held + data.buf.len() > self.cfg.client_queue_limit {
                        self.reply(
                            to,
                            ReplyControl::error(-1, "too much echo data waiting for this client"),
                        );
                        return;
                    }
                }
                self.echoes.push((Instant::now() + delay, to, data));
            }
            AsyncOp::CheckClusterLock { lock } => {
                let ev = self.events();
                let dir = self.cfg.helper_dir.clone();
                let log = self.cfg.log_file.as_ref().and_then(|f| f.try_clone().ok());
                let env = self.cfg.helper_env.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let (st, held) = cluster_mutex::take(
                        &lock,
                        &dir,
                        log.as_ref(),
                        &env,
                        Duration::from_secs(5),
                    )
                    .await;
                    if let Some(h) = held {
                        h.release();
                    }
                    let _ = ev
                        .send(Event::LockChecked {
                            to,
                            status: st.as_byte(),
                            latency: started.elapsed().as_secs_f64(),
                        })
                        .await;
                });
            }
            AsyncOp::ReclockConsistency { leader } => {
                let ok_now = leader == self.pnn()
                    || !self
                        .core
                        .node
                        .node(leader)
                        .is_some_and(|n| n.is_connected());
                if ok_now {
                    let acts = self.monitor.start_recovery(&self.core, to);
                    self.monitor_actions(acts);
                    return;
                }
                let reqid = self.new_reqid();
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
                self.pending.insert(
                    reqid,
                    Pending {
                        dest: leader,
                        deadline,
                        kind: PendingKind::ReclockCheck { to },
                    },
                );
                let mut h = Header::new(Operation::ReqControl, leader, self.pnn(), reqid);
                h.generation = self.generation();
                let p = Packet::new(
                    h,
                    Body::ReqControl(ReqControl::new(ControlRequest::GetReclockFile)),
                );
                self.send_node(leader, p.encode().into());
            }
        }
    }

    fn reclock_checked(&mut self, to: ReplyTo, reply: Result<ReplyControl, String>) {
        let remote = match reply {
            Ok(r) if r.status == 0 => match r.data {
                Some(ControlReply::GetReclockFile(s)) => s,
                _ => None,
            },
            Ok(r) => {
                error!("GET_RECLOCK failed");
                self.reply(to, r);
                return;
            }
            Err(e) => {
                error!("GET_RECLOCK failed: {e}");
                self.reply(to, ReplyControl::error(-1, e));
                return;
            }
        };
        if remote != self.core.cluster_lock {
            error!(
                "Recovery lock configuration inconsistent: recmaster has {}, this node has {}, shutting down",
                remote.as_deref().unwrap_or("NULL"),
                self.core.cluster_lock.as_deref().unwrap_or("NULL")
            );
            self.reply(to, ReplyControl::status(-1));
            self.shutdown = true;
            return;
        }
        let acts = self.monitor.start_recovery(&self.core, to);
        self.monitor_actions(acts);
    }

    /// Sends a control reply.
    pub(super) fn reply(&mut self, to: ReplyTo, r: ReplyControl) {
        self.core.stats.control_answered(&to);
        let (dest, reqid) = match to {
            ReplyTo::Nobody => return,
            ReplyTo::Client { reqid, .. } => (0, reqid),
            ReplyTo::Node { pnn, reqid } => (pnn, reqid),
        };
        let mut h = Header::new(Operation::ReplyControl, dest, self.pnn(), reqid);
        h.generation = self.generation();
        let bytes: Bytes = Packet::new(h, Body::ReplyControl(r)).encode().into();
        match to {
            ReplyTo::Client { id, .. } => self.send_client(id, bytes),
            ReplyTo::Node { pnn, .. } => self.send_node(pnn, bytes),
            ReplyTo::Nobody => {}
        }
    }

    pub(super) fn node_reply(&mut self, hdr: Header, pkt: BytesMut) {
        let Some(p) = self.pending.remove(&hdr.reqid) else {
            debug!("reply with unknown reqid {} dropped", hdr.reqid);
            return;
        };
        if p.dest != hdr.srcnode {
            warn!(
                "reply to reqid {} from node {} dropped: the request went to node {}",
                hdr.reqid, hdr.srcnode, p.dest
            );
            self.pending.insert(hdr.reqid, p);
            return;
        }
        match p.kind {
            PendingKind::Forward { id, reqid } => {
                // Relayed as this daemon's own reply, as CTDB does.
                let mut b = pkt;
                b[12..16].copy_from_slice(&self.generation().to_le_bytes());
                b[20..24].copy_from_slice(&0u32.to_le_bytes());
                b[24..28].copy_from_slice(&self.pnn().to_le_bytes());
                b[28..32].copy_from_slice(&reqid.to_le_bytes());
                self.send_client(id, b.freeze());
            }
            PendingKind::ReclockCheck { to } => {
                let r = ReplyControl::pull_for(Opcode::GetReclockFile, &pkt[HEADER_LEN..])
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string());
                self.reclock_checked(to, r);
            }
            PendingKind::Db { tag, opcode } => {
                let r = ReplyControl::pull_for(opcode, &pkt[HEADER_LEN..])
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string());
                self.with_dbs(|d, env| d.control_reply(env, tag, r));
            }
        }
    }

    pub(super) fn fail_pending(&mut self, reqid: u32, why: &str) {
        let Some(p) = self.pending.remove(&reqid) else {
            return;
        };
        match p.kind {
            PendingKind::Forward { id, reqid } => {
                self.reply(ReplyTo::Client { id, reqid }, ReplyControl::error(-1, why));
            }
            PendingKind::ReclockCheck { to } => self.reclock_checked(to, Err(why.to_owned())),
            PendingKind::Db { tag, .. } => {
                self.with_dbs(|d, env| d.control_reply(env, tag, Err(why.to_owned())));
            }
        }
    }
}
