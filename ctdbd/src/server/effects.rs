//! What the other layers ask the loop to do: the database layer's effects
//! (packets, messages, replies, the controls it sends to nodes, "enter
//! recovery"), the public-address layer's, and the monitor's; and the
//! database layer learning of recovery mode changes.
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::header::{CTDB_BROADCAST_ACTIVE, CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED};
use ctdb_protocol::types::CTDB_RECOVERY_ACTIVE;
use ctdb_protocol::{Body, Header, Operation, Packet, ReqControl};
use tracing::error;

use crate::db::{Databases, Effect, Env};

use super::{Pending, PendingKind, Sender, Server};

impl Server {
    pub(super) fn monitor_actions(&mut self, acts: Vec<crate::monitor::Action>) {
        for a in acts {
            match a {
                crate::monitor::Action::Reply(to, r) => self.reply(to, r),
                crate::monitor::Action::BroadcastStartup => self.broadcast_startup(),
                crate::monitor::Action::TakeoverDone(tag, st) => {
                    let e = self.takeover.event_done(&mut self.core, tag, st);
                    self.takeover_effects(e);
                }
            }
        }
    }

    /// Carries out what the public-address layer asked for.
    pub(super) fn takeover_effects(&mut self, effects: Vec<crate::takeover::Effect>) {
        use crate::takeover::Effect as E;
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(e) = queue.pop_front() {
            match e {
                E::Reply(to, r) => self.reply(to, r),
                E::Message { dest, srvid, data } => self.send_message(dest, srvid, &data),
                E::Control { dest, req } => {
                    let targets = if matches!(
                        dest,
                        CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
                    ) {
                        self.broadcast_targets(dest)
                    } else {
                        vec![dest]
                    };
                    for pnn in targets {
                        self.db_control(pnn, req.clone(), None);
                    }
                }
                E::RunEvent { event, args, tag } => {
                    if !self.monitor.run_ip_event(&self.core, event, &args, tag) {
                        queue.extend(self.takeover.event_done(&mut self.core, tag, -1));
                    }
                }
            }
        }
    }

    /// The database layer and what it sees of the node, for start-up
    /// (attaching the databases found on disk). What it asks for is
    /// carried out once the loop runs.
    pub fn databases(&mut self) -> (&mut Databases, Env<'_>) {
        let env = Env {
            node: &self.core.node,
            tunables: &self.core.tunables,
            clients: &self.core.clients,
        };
        (&mut self.dbs, env)
    }

    /// Runs `f` on the database layer, then carries out what it asked for.
    pub(super) fn with_dbs<R>(&mut self, f: impl FnOnce(&mut Databases, &Env) -> R) -> R {
        let r = {
            let (d, env) = self.databases();
            f(d, &env)
        };
        self.run_db_effects();
        r
    }

    /// Carries out the database layer's effects (which may produce more).
    fn run_db_effects(&mut self) {
        loop {
            let effects = {
                let (d, env) = self.databases();
                if d.has_ready() {
                    d.run_ready(&env);
                }
                d.take_effects()
            };
            if effects.is_empty() {
                break;
            }
            for e in effects {
                self.db_effect(e);
            }
        }
    }

    fn db_effect(&mut self, e: Effect) {
        match e {
            Effect::ToNode(pnn, b) => self.send_node(pnn, b),
            Effect::ToClient(id, b) => self.send_client(id, b),
            // Records a client asked for (traverse data, pulled records):
            // held to the packet limit only (see `client_full`).
            Effect::Message { dest, srvid, data } => {
                self.send_message_as(dest, srvid, &data, Sender::Daemon)
            }
            Effect::Reply(to, r) => self.reply(to, r),
            Effect::Control { dest, req, tag } => self.db_control(dest, req, tag),
            Effect::RecoveryActive(why) => {
                if !self.core.node.in_recovery() {
                    error!("{why}: setting recovery mode to ACTIVE");
                    self.core.node.recovery_mode = CTDB_RECOVERY_ACTIVE;
                }
            }
        }
    }

    /// Sends a control for the database layer.
    fn db_control(&mut self, dest: u32, req: ReqControl, tag: Option<u64>) {
        let connected = dest == self.pnn()
            || self
                .core
                .node
                .node(dest)
                .is_some_and(|n| !n.is_deleted() && n.is_connected());
        if !connected {
            if let Some(tag) = tag {
                self.with_dbs(|d, env| {
                    d.control_reply(env, tag, Err("node is disconnected".to_owned()))
                });
            }
            return;
        }
        let reqid = match tag {
            Some(tag) => {
                let r = self.new_reqid();
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
                self.pending.insert(
                    r,
                    Pending {
                        dest,
                        deadline,
                        kind: PendingKind::Db {
                            tag,
                            opcode: req.opcode(),
                        },
                    },
                );
                r
            }
            None => 0,
        };
        let mut h = Header::new(Operation::ReqControl, dest, self.pnn(), reqid);
        h.generation = self.generation();
        let b: Bytes = Packet::new(h, Body::ReqControl(req)).encode().into();
        self.send_node(dest, b);
    }

    /// The database layer learns about recovery mode changes, and that
    /// this node became inactive.
    pub(super) fn db_recmode_check(&mut self) {
        if self.core.node.take_became_inactive() {
            self.with_dbs(|d, _| d.node_inactive());
        }
        let now = self.core.node.recovery_mode;
        if now != self.db_recmode {
            self.db_recmode = now;
            if !self.core.node.in_recovery() {
                self.with_dbs(|d, env| d.recmode_normal(env));
            }
        }
    }
}
