//! Answering controls from the scripted state, and applying the ones that
//! change it.
//!
//! Each handler returns the reply to send, or `None` for no reply (a fake
//! timeout, a deferred reply, or a control that never answers).

use std::time::Duration;

use ctdb_protocol::control::CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE;
use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Header, ReplyControl, ReqControl};

use crate::daemon::{Daemon, Effects, Later};
use crate::db::{Database, db_id_for, tdb_flags_for};
use crate::state::{CTDB_PORT, FailKind, KnownIp, parse_ip};
use crate::tunables::Tunables;

const ENOENT: i32 = 2;
const EINVAL: i32 = 22;

fn not_found() -> ReplyControl {
    ReplyControl::error(ENOENT, "Database not found")
}

/// Handles one control addressed to node `h.destnode` (already resolved to
/// a real node number) from client `client`.
pub fn handle(d: &mut Daemon, fx: &mut Effects, client: u64, h: &Header, req: &ReqControl) {
    let opcode = req.opcode() as u32;
    if let Some(f) = d.st.control_fail(opcode, h.destnode) {
        tracing::error!(
            "Control {opcode} fake {} on node {}",
            if f.kind == FailKind::Timeout {
                "timeout"
            } else {
                "error"
            },
            h.destnode
        );
        if f.kind == FailKind::Error {
            let r = ReplyControl::error(-1, f.comment.clone());
            d.reply(fx, client, h, r);
        }
        return;
    }
    let reply = control(d, fx, client, h, req);
    let noreply = req.flags & ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY != 0;
    if let Some(r) = reply
        && !noreply
    {
        d.reply(fx, client, h, r);
    }
}

/// A control whose opcode this build does not know.
pub fn unknown(d: &Daemon, fx: &mut Effects, client: u64, h: &Header, opcode: u32, flags: u32) {
    if let Some(f) = d.st.control_fail(opcode, h.destnode) {
        if f.kind == FailKind::Error {
            d.reply(fx, client, h, ReplyControl::error(-1, f.comment.clone()));
        }
        return;
    }
    if flags & ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY == 0 {
        d.reply(fx, client, h, ReplyControl::error(-1, "Not implemented"));
    }
}

fn control(
    d: &mut Daemon,
    fx: &mut Effects,
    client: u64,
    h: &Header,
    req: &ReqControl,
) -> Option<ReplyControl> {
    let dest = h.destnode;
    let node = dest as usize;
    Some(match &req.data {
        Q::ProcessExists(pid) => {
            if d.clients.values().any(|c| c.pid == *pid) {
                let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None);
                ReplyControl::status(if alive.is_ok() { 0 } else { -1 })
            } else {
                ReplyControl::error(-1, "No client for PID")
            }
        }
        Q::CheckPidSrvid(ps) => {
            let ids: Vec<u64> = d
                .clients
                .iter()
                .filter(|(_, c)| c.pid == ps.pid)
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                ReplyControl::error(-1, "No client for PID")
            } else if ids
                .iter()
                .any(|id| d.srvids.get(&ps.srvid).is_some_and(|v| v.contains(id)))
            {
                ReplyControl::status(0)
            } else {
                ReplyControl::error(-1, "No client for PID and SRVID")
            }
        }
        Q::Statistics => {
            let mut s = Box::<Statistics>::default();
            s.num_clients = d.num_clients() as u32;
            s.statistics_start_time = d.start_time;
            s.statistics_current_time = Timeval::now();
            ReplyControl::ok(R::Statistics(s))
        }
        Q::StatisticsReset => ReplyControl::ok(R::StatisticsReset),
        Q::GetStatHistory => ReplyControl::ok(R::GetStatHistory(StatisticsList::default())),
        Q::Ping => ReplyControl::status(d.num_clients() as i32),
        Q::GetDbPath(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::GetDbPath(db.path.display().to_string())),
            None => not_found(),
        },
        Q::GetDbName(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::GetDbName(db.name.clone())),
            None => not_found(),
        },
        Q::GetVnnMap => ReplyControl::ok(R::GetVnnMap(VnnMap {
            generation: d.st.generation,
            map: d.st.vnnmap.clone(),
        })),
        Q::GetDebug => ReplyControl::ok(R::GetDebug(d.log_level)),
        Q::SetDebug(l) => {
            d.log_level = *l;
            ReplyControl::ok(R::SetDebug)
        }
        Q::GetDbMap => ReplyControl::ok(R::GetDbMap(DbidMap {
            dbs: d
                .dbs
                .iter()
                .map(|db| Dbid {
                    db_id: db.id,
                    flags: db.flags,
                })
                .collect(),
        })),
        Q::GetRecmode => ReplyControl::status(d.recmode as i32),
        Q::SetRecmode(mode) => {
            if *mode == CTDB_RECOVERY_NORMAL {
                ReplyControl::error(-1, "Client cannot set recmode to NORMAL")
            } else {
                d.recmode = CTDB_RECOVERY_ACTIVE;
                fx.later.push(Later::Recovery {
                    client,
                    reply_to: *h,
                });
                return None;
            }
        }
        Q::DbAttach(name) => attach(d, name, 0),
        Q::DbAttachPersistent(name) => attach(d, name, db_flags::PERSISTENT),
        Q::DbAttachReplicated(name) => attach(d, name, db_flags::REPLICATED),
        Q::DbDetach(id) => match d.dbs.iter().position(|db| db.id == *id) {
            Some(i) if d.dbs[i].is_volatile() => {
                d.dbs.remove(i);
                ReplyControl::ok(R::DbDetach)
            }
            Some(_) => ReplyControl::error(-1, "Detach on persistent database"),
            None => ReplyControl::ok(R::DbDetach),
        },
        Q::RegisterSrvid => {
            let v = d.srvids.entry(req.srvid).or_default();
            if !v.contains(&client) {
                v.push(client);
            }
            // Tell a new leader listener at once rather than within the
            // next second (the reference broadcasts only on its timer).
            if req.srvid == ctdb_protocol::message::srvid::LEADER
                && d.st.leader != ctdb_protocol::header::CTDB_UNKNOWN_PNN
            {
                let leader = d.st.leader;
                let reply = ReplyControl::ok(R::RegisterSrvid);
                d.reply(fx, client, h, reply);
                let mut mh = ctdb_protocol::Header::new(
                    ctdb_protocol::Operation::ReqMessage,
                    d.st.pnn,
                    leader,
                    0,
                );
                mh.generation = d.st.generation;
                fx.send.push((
                    client,
                    ctdb_protocol::Packet::new(
                        mh,
                        ctdb_protocol::Body::ReqMessage(ctdb_protocol::ReqMessage::data(
                            req.srvid,
                            leader.to_le_bytes().to_vec(),
                        )),
                    )
                    .encode(),
                ));
                return None;
            }
            ReplyControl::ok(R::RegisterSrvid)
        }
        Q::DeregisterSrvid => {
            let found = d
                .srvids
                .get_mut(&req.srvid)
                .map(|v| {
                    let n = v.len();
                    v.retain(|c| *c != client);
                    n != v.len()
                })
                .unwrap_or(false);
            if found {
                ReplyControl::ok(R::DeregisterSrvid)
            } else {
                ReplyControl::error(-1, "srvid not registered")
            }
        }
        Q::DumpMemory => ReplyControl::ok(R::DumpMemory(format!(
            "fake_ctdbd memory: {} clients, {} databases\n",
            d.num_clients(),
            d.dbs.len()
        ))),
        Q::GetPid => ReplyControl::status(std::process::id() as i32),
        Q::GetPnn => ReplyControl::status(dest as i32),
        Q::Shutdown => {
            fx.shutdown = true;
            return None;
        }
        Q::SetTunable(t) => match d.tunables.set(&t.name, t.value) {
            None => ReplyControl::status(-1),
            Some(true) => ReplyControl::status(1),
            Some(false) => ReplyControl::ok(R::SetTunable),
        },
        Q::GetTunable(name) => match d.tunables.get(&name.0) {
            Some(v) => ReplyControl::ok(R::GetTunable(v)),
            None => ReplyControl::status(-1),
        },
        Q::ListTunables => ReplyControl::ok(R::ListTunables(VarList {
            vars: Tunables::names(),
        })),
        Q::GetAllTunables => ReplyControl::ok(R::GetAllTunables(Box::new(d.tunables.list()))),
        Q::ModifyFlags(c) => modify_flags(d, c),
        Q::Uptime => ReplyControl::ok(R::Uptime(Uptime {
            current_time: Timeval::now(),
            ctdbd_start_time: d.start_time,
            last_recovery_started: d.recovery_start,
            last_recovery_finished: d.recovery_end,
        })),
        Q::ReloadNodesFile => reload_nodes(d, dest),
        Q::GetNodesFile => match crate::nodes::read_nodes_file(dest) {
            Some(m) => ReplyControl::ok(R::GetNodesFile(m)),
            None => ReplyControl::error(-1, "Failed to read nodes file"),
        },
        Q::GetCapabilities => {
            let n = &d.st.nodes[node];
            if n.flags & crate::state::NODE_FLAGS_FAKE_TIMEOUT != 0 {
                return None;
            }
            ReplyControl::ok(R::GetCapabilities(n.capabilities))
        }
        Q::SetLmasterRole(on) => {
            set_cap(d, node, capabilities::LMASTER, *on != 0);
            ReplyControl::ok(R::SetLmasterRole)
        }
        Q::SetRecmasterRole(on) => {
            set_cap(d, node, capabilities::RECMASTER, *on != 0);
            ReplyControl::ok(R::SetRecmasterRole)
        }
        Q::GetNodemap => ReplyControl::ok(R::GetNodemap(NodeMap {
            nodes: d
                .st
                .nodes
                .iter()
                .map(|n| NodeAndFlags {
                    pnn: n.pnn,
                    flags: n.flags,
                    addr: n.addr,
                })
                .collect(),
        })),
        Q::GetReclockFile => ReplyControl::ok(R::GetReclockFile(d.st.reclock.clone())),
        Q::StopNode => {
            d.st.nodes[node].flags |= node_flags::STOPPED;
            ReplyControl::ok(R::StopNode)
        }
        Q::ContinueNode => {
            d.st.nodes[node].flags &= !node_flags::STOPPED;
            ReplyControl::ok(R::ContinueNode)
        }
        Q::DisableNode => {
            d.st.nodes[node].flags |= node_flags::PERMANENTLY_DISABLED;
            ReplyControl::ok(R::DisableNode)
        }
        Q::EnableNode => {
            d.st.nodes[node].flags &= !node_flags::PERMANENTLY_DISABLED;
            ReplyControl::ok(R::EnableNode)
        }
        Q::SetBanState(b) => {
            if b.pnn != dest {
                // CTDB's fake daemon never answers this case.
                return None;
            }
            if b.time == 0 {
                d.st.nodes[node].flags &= !node_flags::BANNED;
                d.ban_serial.remove(&dest);
            } else {
                let serial = d.next_serial();
                d.ban_serial.insert(dest, serial);
                d.st.nodes[node].flags |= node_flags::BANNED;
                d.st.generation = ctdb_protocol::header::INVALID_GENERATION;
                fx.later.push(Later::Unban {
                    pnn: dest,
                    serial,
                    after: Duration::from_secs(b.time as u64),
                });
            }
            ReplyControl::ok(R::SetBanState)
        }
        Q::GetBanState => {
            let banned = d.st.nodes[node].flags & node_flags::BANNED != 0;
            ReplyControl::ok(R::GetBanState(BanState {
                pnn: dest,
                time: if banned { 1 } else { 0 },
            }))
        }
        Q::Trans3Commit(rb) => match d.db(rb.db_id) {
            None => ReplyControl::error(-1, "Unknown database"),
            Some(db) if db.is_volatile() => {
                ReplyControl::error(-1, "Transactions on volatile database")
            }
            Some(db) => match db.commit(rb) {
                Ok(()) => ReplyControl::ok(R::Trans3Commit),
                Err(e) => {
                    tracing::info!("transaction failed: {e}");
                    ReplyControl::error(-1, "Transaction failed")
                }
            },
        },
        Q::GetDbSeqnum(r) => match d.db(r.db_id) {
            None => not_found(),
            Some(db) => match db.seqnum() {
                Ok(s) => ReplyControl::ok(R::GetDbSeqnum(s)),
                Err(_) => ReplyControl::error(-1, "Failed to get seqnum"),
            },
        },
        Q::DbGetHealth(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbGetHealth(None)),
            None => not_found(),
        },
        Q::DbSetHealthy(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbSetHealthy),
            None => not_found(),
        },
        Q::GetDbStatistics(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::GetDbStatistics(Box::default())),
            None => not_found(),
        },
        Q::DbOpenFlags(id) => match d.db(*id) {
            Some(db) => ReplyControl::ok(R::DbOpenFlags(tdb_flags_for(db.flags) as i32)),
            None => not_found(),
        },
        Q::SetDbReadonly(id) => set_db_flag(d, *id, db_flags::READONLY, "READONLY"),
        Q::SetDbSticky(id) => set_db_flag(d, *id, db_flags::STICKY, "STICKY"),
        Q::GetIfaces => ReplyControl::ok(R::GetIfaces(iface_list(d))),
        Q::SetIfaceLinkState(i) => set_iface_link(d, i),
        Q::GetPublicIps => {
            let ips = match &d.st.known_ips {
                None => PublicIpList::default(),
                Some(k) => {
                    let n = &d.st.nodes[node];
                    let only_avail = req.flags & CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE != 0;
                    if only_avail
                        && (d.st.runstate != Runstate::Running
                            || n.flags & (node_flags::INACTIVE | node_flags::DISABLED) != 0)
                    {
                        PublicIpList::default()
                    } else {
                        PublicIpList {
                            ips: k[node]
                                .iter()
                                .map(|ip| PublicIp {
                                    pnn: ip.pnn,
                                    addr: ip.addr,
                                })
                                .collect(),
                        }
                    }
                }
            };
            ReplyControl::ok(R::GetPublicIps(ips))
        }
        Q::GetPublicIpInfo(addr) => {
            let known = d.st.known_ips.as_ref().map(|k| &k[node]);
            match known.and_then(|k| k.iter().find(|ip| ip.addr.ip() == addr.ip())) {
                None => {
                    tracing::error!("GET_PUBLIC_IP_INFO: not known public IP {addr}");
                    ReplyControl::error(-1, "Unknown address")
                }
                Some(ip) => ReplyControl::ok(R::GetPublicIpInfo(PublicIpInfo {
                    ip: PublicIp {
                        pnn: ip.pnn,
                        addr: ip.addr,
                    },
                    active_idx: 0,
                    ifaces: iface_list(d),
                })),
            }
        }
        Q::ReleaseIp(ip) => release_ip(d, dest, ip)?,
        Q::TakeoverIp(ip) => {
            if let Some(t) = known_ip_mut(d, node, &ip.addr)
                && t.pnn != dest
            {
                t.pnn = ip.pnn;
            }
            ReplyControl::ok(R::TakeoverIp)
        }
        Q::AddPublicIp(a) => {
            let k =
                d.st.known_ips
                    .get_or_insert_with(|| vec![Vec::new(); d.st.nodes.len()]);
            if !k[node].iter().any(|ip| ip.addr.ip() == a.addr.ip()) {
                k[node].push(KnownIp {
                    addr: a.addr,
                    pnn: ctdb_protocol::header::CTDB_UNKNOWN_PNN,
                });
            }
            ReplyControl::ok(R::AddPublicIp)
        }
        Q::DelPublicIp(a) => {
            if let Some(k) = d.st.known_ips.as_mut() {
                k[node].retain(|ip| ip.addr.ip() != a.addr.ip());
            }
            ReplyControl::ok(R::DelPublicIp)
        }
        Q::SendGratuitousArp(_) => ReplyControl::ok(R::SendGratuitousArp),
        Q::ReloadPublicIps => ReplyControl::ok(R::ReloadPublicIps),
        Q::Ipreallocated => ReplyControl::ok(R::Ipreallocated),
        Q::GetRunstate => ReplyControl::ok(R::GetRunstate(d.st.runstate)),
        Q::GetTcpTickleList(addr) => {
            let conns = d
                .tickles
                .get(&(dest, ip_key(addr)))
                .cloned()
                .unwrap_or_default();
            ReplyControl::ok(R::GetTcpTickleList(TickleList { addr: *addr, conns }))
        }
        Q::TcpAddDelayedUpdate(c) | Q::TcpAdd(c) => {
            let v = d.tickles.entry((dest, ip_key(&c.dst))).or_default();
            if !v.contains(c) {
                v.push(*c);
            }
            ReplyControl::ok(R::TcpAddDelayedUpdate)
        }
        Q::TcpRemove(c) => {
            if let Some(v) = d.tickles.get_mut(&(dest, ip_key(&c.dst))) {
                v.retain(|x| x != c);
            }
            ReplyControl::ok(R::TcpRemove)
        }
        Q::SetTcpTickleList(t) => {
            d.tickles.insert((dest, ip_key(&t.addr)), t.conns.clone());
            ReplyControl::ok(R::SetTcpTickleList)
        }
        Q::TraverseStartExt(t) => {
            traverse(
                d,
                fx,
                client,
                h,
                t.db_id,
                t.reqid,
                t.srvid,
                t.withemptyrecords,
            );
            return None;
        }
        Q::DbFreeze(id) => match d.db_mut(*id) {
            Some(db) => {
                db.frozen = true;
                ReplyControl::ok(R::DbFreeze)
            }
            None => not_found(),
        },
        Q::DbThaw(id) => match d.db_mut(*id) {
            Some(db) => {
                db.frozen = false;
                ReplyControl::ok(R::DbThaw)
            }
            None => not_found(),
        },
        Q::DbTransactionStart(t) | Q::DbTransactionCommit(t) => match d.db(t.db_id) {
            Some(db) if db.frozen => ReplyControl::ok(R::DbTransactionStart),
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbTransactionCancel(id) => match d.db(*id) {
            Some(_) => ReplyControl::ok(R::DbTransactionCancel),
            None => not_found(),
        },
        Q::WipeDatabase(t) => match d.db(t.db_id) {
            Some(db) if db.frozen => match db.wipe() {
                Ok(()) => ReplyControl::ok(R::WipeDatabase),
                Err(_) => ReplyControl::error(-1, "Failed to wipe database"),
            },
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbPushStart(p) => match d.db_mut(p.db_id) {
            Some(db) if db.frozen => {
                let push = db.push.get_or_insert_with(|| crate::db::Push {
                    srvid: p.srvid,
                    counts: Default::default(),
                });
                push.srvid = p.srvid;
                push.counts.insert(dest, 0);
                ReplyControl::ok(R::DbPushStart)
            }
            Some(_) => ReplyControl::error(-1, "Database not frozen"),
            None => not_found(),
        },
        Q::DbPushConfirm(id) => match d.db_mut(*id) {
            Some(db) => match db.push.as_mut().and_then(|p| p.counts.remove(&dest)) {
                Some(n) => {
                    if db.push.as_ref().is_some_and(|p| p.counts.is_empty()) {
                        db.push = None;
                    }
                    ReplyControl::ok(R::DbPushConfirm(n))
                }
                None => ReplyControl::error(-1, "No push in progress"),
            },
            None => not_found(),
        },
        Q::DbPull(p) => match d.db(p.db_id) {
            Some(db) => {
                let recs = db.records(true).unwrap_or_default();
                let mut rb = RecBuffer::new(p.db_id);
                for (k, v) in &recs {
                    rb.add(0, None, k, v);
                }
                let mut buf = vec![0u8; ctdb_protocol::Marshal::len(&rb)];
                ctdb_protocol::Marshal::push(&rb, &mut buf);
                d.message_to(fx, client, h, p.srvid, buf);
                ReplyControl::ok(R::DbPull(rb.count()))
            }
            None => not_found(),
        },
        Q::ScheduleForDeletion(_) => ReplyControl::ok(R::ScheduleForDeletion),
        Q::EchoData(e) => ReplyControl::ok(R::EchoData(e.clone())),
        _ => ReplyControl::error(-1, "Not implemented"),
    })
}

fn attach(d: &mut Daemon, name: &str, flags: u8) -> ReplyControl {
    let id = match d.dbs.iter().find(|db| db.name == name) {
        Some(db) => db.id,
        None => {
            let id = db_id_for(name);
            match Database::open(&d.dbdir, id, name, flags, 0) {
                Ok(db) => {
                    d.dbs.push(db);
                    id
                }
                Err(e) => {
                    tracing::error!("tdb_open {name}: {e}");
                    return ReplyControl::error(-1, "Failed to attach database");
                }
            }
        }
    };
    let data = if flags & db_flags::PERSISTENT != 0 {
        R::DbAttachPersistent(id)
    } else if flags & db_flags::REPLICATED != 0 {
        R::DbAttachReplicated(id)
    } else {
        R::DbAttach(id)
    };
    ReplyControl::ok(data)
}

fn modify_flags(d: &mut Daemon, c: &NodeFlagChange) -> ReplyControl {
    let pd = node_flags::PERMANENTLY_DISABLED;
    if c.old_flags & !pd != 0 || c.new_flags & !pd != 0 {
        return ReplyControl::error(EINVAL, "Failed to MODIFY_FLAGS");
    }
    let Some(n) = d.st.nodes.get_mut(c.pnn as usize) else {
        return ReplyControl::error(EINVAL, "Failed to MODIFY_FLAGS");
    };
    if n.flags & c.old_flags & pd == 0 && c.new_flags & pd != 0 {
        n.flags |= pd;
    } else if n.flags & c.old_flags & pd != 0 && c.new_flags & pd == 0 {
        n.flags &= !pd;
    }
    ReplyControl::ok(R::ModifyFlags)
}

fn reload_nodes(d: &mut Daemon, dest: u32) -> ReplyControl {
    let Some(file) = crate::nodes::read_nodes_file(dest) else {
        return ReplyControl::error(-1, "Memory error");
    };
    for (i, f) in file.nodes.iter().enumerate() {
        if let Some(n) = d.st.nodes.get(i)
            && n.addr.ip() == f.addr.ip()
        {
            continue;
        }
        if f.flags & node_flags::DELETED != 0 {
            if let Some(n) = d.st.nodes.get_mut(i) {
                n.flags |= node_flags::DELETED;
                n.addr = parse_ip("0.0.0.0", CTDB_PORT).unwrap();
            }
            continue;
        }
        if let Some(n) = d.st.nodes.get_mut(i)
            && n.flags & node_flags::DELETED != 0
        {
            n.flags &= !node_flags::DELETED;
            n.addr = f.addr;
            continue;
        }
        d.st.nodes.push(crate::state::Node {
            pnn: f.pnn,
            addr: f.addr,
            flags: 0,
            capabilities: capabilities::DEFAULT,
            recovery_disabled: 0,
        });
    }
    ReplyControl::ok(R::ReloadNodesFile)
}

fn set_cap(d: &mut Daemon, node: usize, cap: u32, on: bool) {
    let n = &mut d.st.nodes[node];
    if on {
        n.capabilities |= cap;
    } else {
        n.capabilities &= !cap;
    }
}

fn set_db_flag(d: &mut Daemon, id: u32, flag: u8, what: &str) -> ReplyControl {
    match d.db_mut(id) {
        None => not_found(),
        Some(db) if db.flags & db_flags::PERSISTENT != 0 => {
            ReplyControl::error(EINVAL, format!("Can not set {what} on persistent db"))
        }
        Some(db) => {
            db.flags |= flag;
            ReplyControl::ok(if flag == db_flags::STICKY {
                R::SetDbSticky
            } else {
                R::SetDbReadonly
            })
        }
    }
}

fn iface_list(d: &Daemon) -> IfaceList {
    IfaceList {
        ifaces: d
            .st
            .ifaces
            .iter()
            .map(|i| Iface {
                name: i.name.clone(),
                link_state: i.link_up as u16,
                references: i.references,
            })
            .collect(),
    }
}

fn set_iface_link(d: &mut Daemon, i: &Iface) -> ReplyControl {
    let up = match i.link_state {
        0 => false,
        1 => true,
        _ => return ReplyControl::error(-1, "invalid link state"),
    };
    if i.references != 0 {
        return ReplyControl::error(-1, "references should be 0");
    }
    match d.st.ifaces.iter_mut().find(|x| x.name == i.name) {
        None => ReplyControl::error(-1, "interface not found"),
        Some(x) => {
            x.link_up = up;
            ReplyControl::ok(R::SetIfaceLinkState)
        }
    }
}

fn known_ip_mut<'a>(d: &'a mut Daemon, node: usize, addr: &SockAddr) -> Option<&'a mut KnownIp> {
    d.st.known_ips
        .as_mut()?
        .get_mut(node)?
        .iter_mut()
        .find(|ip| ip.addr.ip() == addr.ip())
}

fn release_ip(d: &mut Daemon, dest: u32, ip: &PublicIp) -> Option<ReplyControl> {
    let Some(t) = known_ip_mut(d, dest as usize, &ip.addr) else {
        return Some(ReplyControl::ok(R::ReleaseIp));
    };
    if t.pnn != dest && dest == ip.pnn {
        return Some(ReplyControl::error(-1, "RELEASE_IP to TAKE_IP node"));
    }
    t.pnn = ip.pnn;
    Some(ReplyControl::ok(R::ReleaseIp))
}

fn ip_key(a: &SockAddr) -> String {
    a.to_string()
}

/// `TRAVERSE_START_EXT`: every record as a message, then the reply, then an
/// empty record to mark the end.
#[allow(clippy::too_many_arguments)]
fn traverse(
    d: &Daemon,
    fx: &mut Effects,
    client: u64,
    h: &Header,
    db_id: u32,
    reqid: u32,
    srvid: u64,
    with_empty: bool,
) {
    let Some(db) = d.db(db_id) else {
        d.reply(fx, client, h, ReplyControl::error(-1, "Unknown database"));
        return;
    };
    let recs = match db.records(with_empty) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("traverse of {}: {e}", db.name);
            d.reply(fx, client, h, ReplyControl::error(-1, "Memory error"));
            return;
        }
    };
    for (k, v) in recs {
        let rec = RecData {
            reqid,
            key: k,
            data: v,
        };
        let mut buf = vec![0u8; ctdb_protocol::Marshal::len(&rec)];
        ctdb_protocol::Marshal::push(&rec, &mut buf);
        d.message_to(fx, client, h, srvid, buf);
    }
    d.reply(fx, client, h, ReplyControl::ok(R::TraverseStartExt));
    let end = RecData {
        reqid,
        key: Vec::new(),
        data: Vec::new(),
    };
    let mut buf = vec![0u8; ctdb_protocol::Marshal::len(&end)];
    ctdb_protocol::Marshal::push(&end, &mut buf);
    d.message_to(fx, client, h, srvid, buf);
}
