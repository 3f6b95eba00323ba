//! Where a control addressed to this node is answered.
//!
//! [`Core`] is the daemon state that controls read and change (node map,
//! tunables, statistics, srvid registrations, clients' pids) without any
//! sockets. [`Core::handle`] answers one control: most are answered at
//! once ([`Outcome::Reply`]); a few need the event loop to do something
//! first ([`Outcome::Async`]) and reply later.
//!
//! The controls by family, each in a room of its own:
//!
//! * [`node`]: the node map, flags, bans, stop/disable, roles, run state,
//!   the nodes file, `STARTUP`, `SHUTDOWN`, `UPTIME`, `GET_PNN`/`GET_PID`;
//! * [`recovery`]: recovery mode (and the cluster-lock check before
//!   NORMAL), `START_RECOVERY`/`END_RECOVERY`, the cluster lock setting,
//!   the recovery daemon's pings;
//! * [`tunables`]: tunables and the debug level;
//! * [`clients`]: srvid, notify and tunnel registrations, `PROCESS_EXISTS`,
//!   `CHECK_PID_SRVID`, `PING`, `ECHO_DATA`;
//! * [`stats`]: statistics, their history and reset, `DUMP_MEMORY`;
//! * [`ip`]: public-address controls where no address layer answers them
//!   (the daemon's is [`crate::takeover`]).
//!
//! Database controls ([`crate::db::controls::handles`]) are not answered
//! here: the event loop hands them to the database layer
//! ([`crate::db::Databases::control`]), and the core refuses one that
//! reaches it with a clear error. How the daemon routes a control between
//! the database layer, the address layer and this core is
//! [`crate::server`]'s `controls` room.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply, Opcode, ReplyControl, ReqControl};
use tracing::error;

use crate::db::Databases;
use crate::logging::LogControl;
use crate::messaging::{ClientId, SrvidRegistry};
use crate::node::NodeState;
use crate::stats::Stats;

mod clients;
mod ip;
mod node;
mod recovery;
mod stats;
mod tunables;

/// Who sent a control.
#[derive(Debug, Clone, Copy)]
pub struct ControlCtx {
    /// The node it came from (this node for local clients).
    pub srcnode: u32,
    /// The local client connection it came from, if any.
    pub client: Option<ClientId>,
    /// The client id in the request (CTDB's daemons put the originating
    /// client's id there when forwarding).
    pub client_id: u32,
}

/// Work the event loop must do before a control can be answered.
#[derive(Debug, Clone, PartialEq)]
pub enum AsyncOp {
    /// `SET_RECMODE` to NORMAL with a cluster lock: check (by trying to
    /// take it, expecting contention) that the leader holds the lock.
    CheckClusterLock { lock: String },
    /// `START_RECOVERY`: compare our cluster lock setting with the
    /// leader's (`GET_RECLOCK_FILE` to `leader`).
    ReclockConsistency { leader: u32 },
    /// `SHUTDOWN`: reply, then shut down.
    Shutdown,
    /// `ECHO_DATA`: reply with the data after a delay.
    Echo { delay: Duration, data: EchoData },
}

/// How a control is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reply(ReplyControl),
    Async(AsyncOp),
}

impl Outcome {
    fn ok(d: ControlReply) -> Outcome {
        Outcome::Reply(ReplyControl::ok(d))
    }
    fn status(s: i32) -> Outcome {
        Outcome::Reply(ReplyControl::status(s))
    }
    fn fail(msg: impl Into<String>) -> Outcome {
        Outcome::Reply(ReplyControl::error(-1, msg))
    }
}

/// Controls that belong to the database layer.
pub fn is_db_control(op: Opcode) -> bool {
    use Opcode::*;
    matches!(
        op,
        GetDbPath
            | DbAttach
            | DbAttachPersistent
            | DbAttachReplicated
            | DbAttachExt
            | DbSyncRecord
            | DbReplicaStore
            | DbReplicaStatus
            | DbWaitSeqnum
            | TraverseStart
            | TraverseAll
            | TraverseData
            | GetDbName
            | EnableSeqnum
            | UpdateSeqnum
            | UpdateRecord
            | WipeDatabase
            | TryDeleteRecords
            | Trans3Commit
            | GetDbSeqnum
            | DbSetHealthy
            | DbGetHealth
            | ScheduleForDeletion
            | SetDbReadonly
            | TraverseStartExt
            | GetDbStatistics
            | SetDbSticky
            | TraverseAllExt
            | DbDetach
            | DbFreeze
            | DbThaw
            | DbTransactionStart
            | DbTransactionCommit
            | DbTransactionCancel
            | DbPull
            | DbPushStart
            | DbPushConfirm
            | DbOpenFlags
            | TraverseKill
            | VacuumFetch
            | DbVacuum
            | DbChangelogInfo
            | DbChangesPull
    )
}

/// What the daemon knows about a local client.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub pid: i32,
    /// `REGISTER_NOTIFY` data, sent when the client goes away.
    pub notify: Vec<NotifyData>,
}

/// Daemon state reachable from controls.
pub struct Core {
    pub node: NodeState,
    pub tunables: TunableList,
    pub stats: Stats,
    pub log: LogControl,
    pub srvids: SrvidRegistry,
    /// Tunnel ids registered by local clients.
    pub tunnels: crate::tunnel::Tunnels,
    pub clients: BTreeMap<ClientId, ClientInfo>,
    /// The cluster lock setting (`[cluster] cluster lock`).
    pub cluster_lock: Option<String>,
    pub nodes_file: PathBuf,
    /// When the daemon started (keepalive uptime).
    pub start_instant: Instant,
    /// Set when a nodes-file reload changed nodes: the PNNs to connect to.
    pub reloaded: Option<Vec<u32>>,
    /// Messages a control asked to send, `(dest, srvid, data)`, sent by
    /// the event loop once the control is answered.
    pub pending_messages: Vec<(u32, u64, Vec<u8>)>,
    /// Local clients a control asked to disconnect (`PROCESS_EXISTS` on
    /// an inactive node), dropped by the event loop once it is answered.
    pub pending_drops: Vec<ClientId>,
    /// The recovery daemon's pings (`RecdPingTimeout`).
    pub recd_ping: crate::recd_ping::RecdPing,
}

impl Core {
    pub fn new(
        node: NodeState,
        tunables: TunableList,
        log: LogControl,
        cluster_lock: Option<String>,
        nodes_file: PathBuf,
    ) -> Core {
        Core {
            node,
            tunables,
            stats: Stats::new(),
            log,
            srvids: SrvidRegistry::default(),
            tunnels: Default::default(),
            clients: BTreeMap::new(),
            cluster_lock,
            nodes_file,
            start_instant: Instant::now(),
            reloaded: None,
            pending_messages: Vec::new(),
            pending_drops: Vec::new(),
            recd_ping: Default::default(),
        }
    }

    pub fn num_clients(&self) -> u32 {
        self.clients.len() as u32
    }

    /// Answers a control addressed to this node.
    ///
    /// `dbs` is the daemon's database layer, read by `STATISTICS` (whether
    /// every database is frozen) and `DUMP_MEMORY` (its areas); an embedder
    /// that keeps its databases elsewhere (the fake daemon) passes `None`.
    /// Database controls themselves are the layer's
    /// ([`crate::db::controls::handles`]): the core refuses them.
    pub fn handle(
        &mut self,
        ctx: &ControlCtx,
        req: &ReqControl,
        dbs: Option<&Databases>,
    ) -> Outcome {
        let op = req.opcode();
        if crate::db::controls::handles(op) {
            return Outcome::fail(format!(
                "{}: a database control, answered by the database layer",
                op.name()
            ));
        }
        self.node_control(ctx, req)
            .or_else(|| self.recovery_control(ctx, req))
            .or_else(|| self.tunables_control(req))
            .or_else(|| self.clients_control(ctx, req))
            .or_else(|| self.stats_control(req, dbs))
            .or_else(|| self.ip_control(req))
            .unwrap_or_else(|| {
                error!("Unknown CTDB control opcode {}", op as u32);
                Outcome::status(-1)
            })
    }
}

/// Whether a control wants a reply.
pub fn wants_reply(req: &ReqControl) -> bool {
    req.flags & CTDB_CTRL_FLAG_NOREPLY == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeEntry;
    use crate::tunables;
    use ctdb_protocol::ControlRequest;

    fn core() -> Core {
        let entries: Vec<NodeEntry> = (1..=3)
            .map(|i| NodeEntry {
                addr: Some(format!("127.0.0.{i}").parse().unwrap()),
            })
            .collect();
        Core::new(
            NodeState::new(1, &entries, capabilities::DEFAULT),
            tunables::defaults(),
            LogControl::detached(3),
            Some("/tmp/lock".into()),
            PathBuf::from("/nonexistent/nodes"),
        )
    }

    fn ctx() -> ControlCtx {
        ControlCtx {
            srcnode: 1,
            client: Some(7),
            client_id: 7,
        }
    }

    fn run(c: &mut Core, d: ControlRequest) -> Outcome {
        c.handle(&ctx(), &ReqControl::new(d), None)
    }

    #[test]
    fn status_answers() {
        let mut c = core();
        c.clients.insert(7, ClientInfo::default());
        assert_eq!(run(&mut c, ControlRequest::GetPnn), Outcome::status(1));
        assert_eq!(run(&mut c, ControlRequest::Ping), Outcome::status(1));
        assert_eq!(run(&mut c, ControlRequest::GetRecmode), Outcome::status(1));
    }

    #[test]
    fn tunables_through_controls() {
        let mut c = core();
        let o = run(
            &mut c,
            ControlRequest::SetTunable(Tunable {
                name: "RecoverTimeout".into(),
                value: 12,
            }),
        );
        assert_eq!(o, Outcome::ok(ControlReply::SetTunable));
        assert_eq!(
            run(
                &mut c,
                ControlRequest::GetTunable(ctdb_protocol::control::TunableName(
                    "recovertimeout".into()
                ))
            ),
            Outcome::ok(ControlReply::GetTunable(12))
        );
        let Outcome::Reply(r) = run(
            &mut c,
            ControlRequest::SetTunable(Tunable {
                name: "Nope".into(),
                value: 1,
            }),
        ) else {
            panic!()
        };
        assert_eq!(r.status, -1);
    }

    #[test]
    fn recmode_normal_needs_the_lock_check() {
        let mut c = core();
        assert_eq!(
            run(&mut c, ControlRequest::SetRecmode(CTDB_RECOVERY_NORMAL)),
            Outcome::Async(AsyncOp::CheckClusterLock {
                lock: "/tmp/lock".into()
            })
        );
        assert_eq!(c.finish_recmode_normal(b'0').status, -1);
        assert!(c.node.in_recovery());
        assert_eq!(c.finish_recmode_normal(b'1').status, 0);
        assert!(!c.node.in_recovery());
    }

    #[test]
    fn db_controls_are_left_to_the_database_layer() {
        let mut c = core();
        for d in [
            ControlRequest::DbAttach("x.tdb".into()),
            ControlRequest::GetDbMap,
            ControlRequest::Freeze,
        ] {
            let Outcome::Reply(r) = run(&mut c, d) else {
                panic!()
            };
            assert_eq!(r.status, -1);
            assert!(r.errmsg.unwrap().contains("answered by the database layer"));
        }
    }

    #[test]
    fn srvid_registration_and_check_pid() {
        let mut c = core();
        c.clients.insert(
            7,
            ClientInfo {
                pid: 42,
                notify: Vec::new(),
            },
        );
        let mut r = ReqControl::new(ControlRequest::RegisterSrvid);
        r.srvid = 99;
        assert!(matches!(c.handle(&ctx(), &r, None), Outcome::Reply(x) if x.status == 0));
        assert_eq!(
            run(
                &mut c,
                ControlRequest::CheckPidSrvid(PidSrvid { pid: 42, srvid: 99 })
            ),
            Outcome::status(0)
        );
        assert_eq!(
            run(
                &mut c,
                ControlRequest::CheckPidSrvid(PidSrvid { pid: 42, srvid: 98 })
            ),
            Outcome::status(-1)
        );
    }
}
