//! Where a control addressed to this node is answered.
//!
//! [`Core`] is the daemon state that controls read and change (node map,
//! tunables, statistics, srvid registrations, clients' pids) without any
//! sockets. [`Core::handle`] answers one control: most are answered at
//! once ([`Outcome::Reply`]); a few need the event loop to do something
//! first ([`Outcome::Async`]) and reply later.
//!
//! Database controls are not answered here: the event loop hands them to
//! the database layer ([`crate::db::Databases::control`]), and the core
//! refuses one that reaches it with a clear error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReplyControl, ReqControl};
use tracing::{debug, error, info, warn};

use crate::db::Databases;
use crate::logging::LogControl;
use crate::messaging::{ClientId, SrvidRegistry};
use crate::node::NodeState;
use crate::stats::Stats;
use crate::tunables;

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
        use ControlRequest as Rq;
        if crate::db::controls::handles(req.opcode()) {
            return Outcome::fail(format!(
                "{}: a database control, answered by the database layer",
                req.opcode().name()
            ));
        }
        let pnn = self.node.pnn;
        match &req.data {
            Rq::ProcessExists(pid) => self.process_exists(*pid),
            Rq::Statistics => {
                let mut s = (self.stats).snapshot(self.num_clients(), self.node.in_recovery());
                s.frozen = u32::from(dbs.is_some_and(Databases::all_frozen));
                Outcome::ok(ControlReply::Statistics(Box::new(s)))
            }
            Rq::Ping => Outcome::status(self.num_clients() as i32),
            Rq::GetVnnMap => Outcome::ok(ControlReply::GetVnnMap(self.node.vnnmap.clone())),
            Rq::SetVnnMap(m) => match self.node.set_vnnmap(m.clone()) {
                Ok(()) => Outcome::ok(ControlReply::SetVnnMap),
                Err(e) => {
                    error!("{e}");
                    Outcome::fail(e.to_string())
                }
            },
            Rq::GetDebug => Outcome::ok(ControlReply::GetDebug(self.log.level() as u32)),
            Rq::SetDebug(l) => {
                self.log.set_level(*l as i32);
                Outcome::ok(ControlReply::SetDebug)
            }
            Rq::GetNodemap => Outcome::ok(ControlReply::GetNodemap(self.node.nodemap())),
            Rq::GetRecmode => Outcome::status(self.node.recovery_mode as i32),
            Rq::SetRecmode(m) => self.set_recmode(*m),
            Rq::StatisticsReset => {
                self.stats.reset();
                Outcome::ok(ControlReply::StatisticsReset)
            }
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
            Rq::DumpMemory => {
                Outcome::ok(ControlReply::DumpMemory(crate::memory::report(self, dbs)))
            }
            Rq::GetPid => Outcome::status(std::process::id() as i32),
            Rq::GetPnn => Outcome::status(pnn as i32),
            Rq::Shutdown => {
                info!("Received SHUTDOWN command.");
                Outcome::Async(AsyncOp::Shutdown)
            }
            Rq::Startup => {
                debug!("node {} started up", ctx.srcnode);
                Outcome::ok(ControlReply::Startup)
            }
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
            Rq::GetAllTunables => {
                Outcome::ok(ControlReply::GetAllTunables(Box::new(self.tunables)))
            }
            Rq::Uptime => Outcome::ok(ControlReply::Uptime(Uptime {
                current_time: Timeval::now(),
                ctdbd_start_time: self.node.start_time,
                last_recovery_started: self.node.last_recovery_started,
                last_recovery_finished: self.node.last_recovery_finished,
            })),
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
            Rq::ReloadNodesFile => self.reload_nodes(),
            Rq::GetCapabilities => {
                Outcome::ok(ControlReply::GetCapabilities(self.node.capabilities))
            }
            Rq::RecdPing => {
                self.recd_ping.ping(Instant::now(), &self.tunables);
                Outcome::ok(ControlReply::RecdPing)
            }
            Rq::RecdReclockLatency(l) => {
                self.stats.bump(|s| s.reclock_recd.record(*l));
                Outcome::ok(ControlReply::RecdReclockLatency)
            }
            Rq::GetReclockFile => {
                Outcome::ok(ControlReply::GetReclockFile(self.cluster_lock.clone()))
            }
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
            Rq::SetLmasterRole(v) => {
                self.set_cap(capabilities::LMASTER, *v != 0);
                Outcome::ok(ControlReply::SetLmasterRole)
            }
            Rq::SetRecmasterRole(v) => {
                self.set_cap(capabilities::RECMASTER, *v != 0);
                Outcome::ok(ControlReply::SetRecmasterRole)
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
            Rq::GetPublicIps => Outcome::ok(ControlReply::GetPublicIps(PublicIpList::default())),
            Rq::GetIfaces => Outcome::ok(ControlReply::GetIfaces(IfaceList::default())),
            Rq::GetStatHistory => Outcome::ok(ControlReply::GetStatHistory(self.stats.history())),
            Rq::GetRunstate => Outcome::ok(ControlReply::GetRunstate(self.node.runstate)),
            Rq::GetNodesFile => match crate::config::load_nodes(&self.nodes_file) {
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
            },
            Rq::CheckPidSrvid(p) => {
                let found = self
                    .clients
                    .iter()
                    .any(|(id, c)| c.pid == p.pid && self.srvids.is_registered(p.srvid, *id));
                Outcome::status(if found { 0 } else { -1 })
            }
            Rq::EchoData(d) => Outcome::Async(AsyncOp::Echo {
                delay: Duration::from_millis(u64::from(d.timeout)),
                data: d.clone(),
            }),
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
            // IP failover is not part of this daemon yet: nothing to do
            // for the events that would run its scripts.
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
            Rq::TunnelRegister | Rq::TunnelDeregister => {
                Outcome::Reply(self.tunnels.control(ctx, req))
            }
            _ => {
                error!("Unknown CTDB control opcode {}", req.opcode() as u32);
                Outcome::status(-1)
            }
        }
    }

    fn set_cap(&mut self, cap: u32, on: bool) {
        if on {
            self.node.capabilities |= cap;
        } else {
            self.node.capabilities &= !cap;
        }
    }

    /// `PROCESS_EXISTS`: only a live client process of this node exists.
    /// The in-process recovery daemon connects as a client under the
    /// daemon's own pid; the daemon is not a client of itself.
    fn process_exists(&mut self, pid: i32) -> Outcome {
        if pid == std::process::id() as i32 || !self.clients.values().any(|c| c.pid == pid) {
            return Outcome::status(-1);
        }
        if self.node.me().is_inactive() {
            return Outcome::status(-1);
        }
        let alive =
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        Outcome::status(if alive { 0 } else { -1 })
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

    pub fn set_runstate(&mut self, r: Runstate) {
        if self.node.runstate != r {
            info!("Set runstate to {} ({})", r.name(), r as u32);
            self.node.runstate = r;
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

/// Whether a control wants a reply.
pub fn wants_reply(req: &ReqControl) -> bool {
    req.flags & CTDB_CTRL_FLAG_NOREPLY == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeEntry;

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
