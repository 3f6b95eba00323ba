//! The public-address controls, answered as CTDB 4.17 answers them.

use std::net::IpAddr;
use std::time::Instant;

use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{
    AddrInfo, Iface, IfaceList, PublicIp, PublicIpInfo, PublicIpList, Runstate,
};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{debug, error, info, warn};

use super::addresses::{self, canonical_ip, sock};
use super::{Announce, Effect, Pending, Takeover, addr_cstring, control_status, iface_str};
use crate::control::{ControlCtx, Core};
use crate::monitor::ScriptEvent;
use crate::server::ReplyTo;

/// `GET_PUBLIC_IPS` with this control flag lists only the addresses this
/// node could host now.
pub const PUBLIC_IP_FLAGS_ONLY_AVAILABLE: u32 = 0x0001_0000;

fn reply(to: ReplyTo, r: ReplyControl) -> Vec<Effect> {
    vec![Effect::Reply(to, r)]
}

fn ok(to: ReplyTo, d: ControlReply) -> Vec<Effect> {
    reply(to, ReplyControl::ok(d))
}

fn status(to: ReplyTo, s: i32) -> Vec<Effect> {
    reply(to, control_status(s))
}

impl Takeover {
    /// Answers a control of [`Takeover::handles`].
    pub fn control(
        &mut self,
        core: &mut Core,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
    ) -> Vec<Effect> {
        use ControlRequest as Rq;
        match &req.data {
            Rq::GetPublicIps => {
                let only = req.flags & PUBLIC_IP_FLAGS_ONLY_AVAILABLE != 0;
                let running = core.node.runstate == Runstate::Running;
                let flags = core.node.my_flags();
                let ips = (0..self.addrs.vnns.len())
                    .filter(|&i| !only || self.addrs.available(i, running, flags))
                    .map(|i| {
                        let v = &self.addrs.vnns[i];
                        PublicIp {
                            pnn: v.pnn,
                            addr: sock(v.addr),
                        }
                    })
                    .collect();
                ok(to, ControlReply::GetPublicIps(PublicIpList { ips }))
            }
            Rq::GetPublicIpInfo(a) => match self.addrs.find_sock(a) {
                None => {
                    error!("Could not get public ip info, '{a}'not a public address");
                    status(to, -1)
                }
                Some(idx) => {
                    let v = &self.addrs.vnns[idx];
                    let mut info = PublicIpInfo {
                        ip: PublicIp {
                            pnn: v.pnn,
                            addr: sock(v.addr),
                        },
                        active_idx: u32::MAX,
                        ifaces: IfaceList::default(),
                    };
                    for (i, name) in v.ifaces.iter().enumerate() {
                        if v.iface.as_ref() == Some(name) {
                            info.active_idx = i as u32;
                        }
                        let (up, refs) = self
                            .addrs
                            .iface(name)
                            .map_or((false, 0), |x| (x.link_up, x.references));
                        info.ifaces.ifaces.push(Iface {
                            name: name.clone(),
                            link_state: u16::from(up),
                            references: refs,
                        });
                    }
                    ok(to, ControlReply::GetPublicIpInfo(info))
                }
            },
            Rq::GetIfaces => {
                let ifaces = self
                    .addrs
                    .ifaces
                    .iter()
                    .map(|i| Iface {
                        name: i.name.clone(),
                        link_state: u16::from(i.link_up),
                        references: i.references,
                    })
                    .collect();
                ok(to, ControlReply::GetIfaces(IfaceList { ifaces }))
            }
            Rq::SetIfaceLinkState(i) => {
                let up = match i.link_state {
                    0 => false,
                    1 => true,
                    s => {
                        error!("link_state[{s}] invalid");
                        return status(to, -1);
                    }
                };
                if i.references != 0 {
                    error!("references[{}] should be 0", i.references);
                    return status(to, -1);
                }
                let old = self.addrs.iface(&i.name).map(|x| x.link_up);
                match self.addrs.set_link(&i.name, up) {
                    None => status(to, -1),
                    Some(false) => status(to, 0),
                    Some(true) => {
                        let s = |b: bool| if b { "up" } else { "down" };
                        error!(
                            "iface[{}] has changed it's link status {} => {}",
                            i.name,
                            s(old.unwrap_or(!up)),
                            s(up)
                        );
                        status(to, 0)
                    }
                }
            }
            Rq::AddPublicIp(a) => status(to, self.add_public_ip(a)),
            Rq::DelPublicIp(a) => status(to, self.del_public_ip(core, a)),
            Rq::ReloadPublicIps => self.reload(core, to),
            Rq::SendGratuitousArp(a) => {
                let Some(ip) = canonical_ip(&a.addr) else {
                    return status(to, -1);
                };
                self.announces.push(Announce {
                    ip,
                    iface: Some(a.iface.clone().unwrap_or_default()),
                    conns: Vec::new(),
                    sent: 0,
                    next: Instant::now(),
                    generation: u64::MAX,
                });
                self.announce_due(Instant::now());
                status(to, 0)
            }
            Rq::TakeoverIp(p) => self.takeover_ip(core, p, to),
            Rq::ReleaseIp(p) => self.release_ip(core, p, to),
            Rq::Ipreallocated => {
                debug!("Running \"ipreallocated\" event");
                let tag = self.tag(Pending::Ipreallocated { to });
                vec![Effect::RunEvent {
                    event: ScriptEvent::Ipreallocated,
                    args: String::new(),
                    tag,
                }]
            }
            Rq::TcpClient(c) => {
                let s = self.tcp_client(core, ctx, c);
                let mut out = s.1;
                out.extend(status(to, s.0));
                out
            }
            Rq::TcpAdd(c) => status(to, self.tcp_add(c, false)),
            Rq::TcpAddDelayedUpdate(c) => status(to, self.tcp_add(c, true)),
            Rq::TcpRemove(c) => status(to, self.tcp_remove(c)),
            Rq::GetTcpTickleList(a) => match self.tickle_list(a) {
                Some(l) => ok(to, ControlReply::GetTcpTickleList(l)),
                None => status(to, 1),
            },
            Rq::SetTcpTickleList(l) => status(to, self.set_tickle_list(core, l)),
            _ => status(to, -1),
        }
    }

    fn add_public_ip(&mut self, a: &AddrInfo) -> i32 {
        let Some(ip) = canonical_ip(&a.addr) else {
            error!("Failed to add public address");
            return -1;
        };
        info!("Add IP {ip}");
        match self
            .addrs
            .add(ip, a.mask, a.iface.as_deref().unwrap_or_default())
        {
            Ok(()) => 0,
            Err(e) => {
                error!("{e}");
                error!("Failed to add public address");
                -1
            }
        }
    }

    fn del_public_ip(&mut self, core: &Core, a: &AddrInfo) -> i32 {
        let ip = canonical_ip(&a.addr);
        info!("Delete IP {}", a.addr);
        let Some(idx) = ip.and_then(|ip| self.addrs.find(ip)) else {
            error!("Delete IP of unknown public IP address {}", a.addr);
            return -1;
        };
        if self.addrs.vnns[idx].pnn == core.node.pnn {
            // Hosted here: deleted once the next takeover run releases it.
            self.addrs.vnns[idx].delete_pending = true;
        } else {
            self.addrs.delete(idx, core.node.pnn);
        }
        0
    }

    /// `RELOAD_PUBLIC_IPS`: the file again; addresses gone from it are
    /// deleted, new ones added, and if there were new ones the leader is
    /// asked to rebalance onto this node.
    fn reload(&mut self, core: &Core, to: ReplyTo) -> Vec<Effect> {
        let entries = match addresses::read_file(&self.file) {
            Ok(Some(e)) => e,
            Ok(None) => {
                warn!(
                    "Not loading public addresses, no file {}",
                    self.file.display()
                );
                Vec::new()
            }
            Err(e) => {
                error!("{e}");
                error!("Failed to re-read public addresses file");
                return status(to, -1);
            }
        };
        let mut out = Vec::new();
        let mut failed = false;
        let current: Vec<IpAddr> = self.addrs.vnns.iter().map(|v| v.addr).collect();
        for ip in &current {
            if !entries.iter().any(|(e, _, _)| e == ip) {
                info!("IP {ip} no longer configured, deleting it");
                let a = AddrInfo {
                    addr: sock(*ip),
                    mask: 0,
                    iface: None,
                };
                failed |= self.del_public_ip(core, &a) != 0;
            }
        }
        let mut first_add = true;
        // The file's order, added one by one as CTDB's reload does.
        for (ip, mask, ifaces) in entries.iter().rev() {
            if current.contains(ip) {
                continue;
            }
            info!("New IP {ip} configured, adding it");
            if first_add {
                out.push(Effect::Message {
                    dest: CTDB_BROADCAST_CONNECTED,
                    srvid: srvid::REBALANCE_NODE,
                    data: core.node.pnn.to_le_bytes().to_vec(),
                });
                first_add = false;
            }
            let a = AddrInfo {
                addr: sock(*ip),
                mask: *mask,
                iface: Some(ifaces.clone()),
            };
            failed |= self.add_public_ip(&a) != 0;
        }
        if failed {
            error!("Add/delete IPs failed");
            error!("Failed to reload ips on local node");
        }
        out.extend(status(to, if failed { 1 } else { 0 }));
        out
    }

    /// `TAKEOVER_IP`: host the address here (takeip), or move it to a
    /// better interface (updateip), or nothing if it is already here.
    fn takeover_ip(&mut self, core: &mut Core, p: &PublicIp, to: ReplyTo) -> Vec<Effect> {
        let me = core.node.pnn;
        if p.pnn != me {
            error!(
                "takeoverip called for an ip '{}' with pnn {}, but we're node {me}",
                p.addr, p.pnn as i32
            );
            return status(to, -1);
        }
        let Some(idx) = self.addrs.find_sock(&p.addr) else {
            debug!(
                "takeoverip called for an ip '{}' that is not a public address",
                p.addr
            );
            return status(to, 0);
        };
        let ip = self.addrs.vnns[idx].addr;
        let mask = self.addrs.vnns[idx].mask;
        let have_ip = !self.failover_disabled && addresses::have_ip(ip);
        let Some(best) = self.addrs.best_iface(idx) else {
            error!(
                "takeoverip of IP {ip}/{mask} failed to finda usable interface (old {}, have_ip {})",
                iface_str(&self.addrs.vnns[idx].iface),
                u8::from(have_ip)
            );
            return status(to, -1);
        };
        let vnn_pnn = self.addrs.vnns[idx].pnn;
        if vnn_pnn != me && have_ip && vnn_pnn != CTDB_UNKNOWN_PNN {
            error!(
                "takeoverip of IP {ip} is known to the kernel, and we have it on iface[{}], but it was assigned to node {vnn_pnn}and we are node {me}, banning ourself",
                iface_str(&self.addrs.vnns[idx].iface)
            );
            Self::ban_self(core);
            return status(to, -1);
        }
        let mut do_updateip = false;
        if vnn_pnn == CTDB_UNKNOWN_PNN && have_ip {
            warn!("Doing updateip for IP {ip} already on an interface");
            do_updateip = true;
        }
        if let Some(cur) = self.addrs.vnns[idx].iface.clone()
            && cur != best
        {
            let (cur_up, cur_refs) = self
                .addrs
                .iface(&cur)
                .map_or((false, 0), |i| (i.link_up, i.references));
            let best_refs = self.addrs.iface(&best).map_or(0, |i| i.references);
            if !cur_up || cur_refs > best_refs + 1 {
                do_updateip = true;
            }
        }
        if !have_ip {
            if do_updateip {
                self.addrs.unassign(idx, me);
            }
            return self.do_takeip(core, idx, to);
        }
        if do_updateip {
            return self.do_updateip(core, idx, to);
        }
        debug!(
            "Redundant takeover of IP {ip}/{mask} on interface {} (ip already held)",
            iface_str(&self.addrs.vnns[idx].iface)
        );
        status(to, 0)
    }

    fn do_takeip(&mut self, core: &Core, idx: usize, to: ReplyTo) -> Vec<Effect> {
        let (ip, mask) = (self.addrs.vnns[idx].addr, self.addrs.vnns[idx].mask);
        if self.addrs.vnns[idx].update_in_flight {
            info!("Takeover of IP {ip}/{mask} rejected update for this IP already in flight");
            return status(to, -1);
        }
        if !self.addrs.assign(idx, core.node.pnn) {
            error!("Takeover of IP {ip}/{mask} failed to assign a usable interface");
            return status(to, -1);
        }
        let v = &mut self.addrs.vnns[idx];
        v.update_in_flight = true;
        let iface = iface_str(&v.iface).to_owned();
        info!("Takeover of IP {ip}/{mask} on interface {iface}");
        let tag = self.tag(Pending::TakeIp { ip, to });
        vec![Effect::RunEvent {
            event: ScriptEvent::TakeIp,
            args: format!("{iface} {ip} {mask}"),
            tag,
        }]
    }

    pub(super) fn takeip_done(
        &mut self,
        core: &mut Core,
        ip: IpAddr,
        st: i32,
        to: ReplyTo,
    ) -> Vec<Effect> {
        let Some(idx) = self.addrs.find(ip) else {
            return status(to, -1);
        };
        self.addrs.vnns[idx].update_in_flight = false;
        if st != 0 {
            if st == libc::ETIMEDOUT {
                Self::ban_self(core);
            }
            error!(
                "Failed to takeover IP {ip} on interface {}",
                iface_str(&self.addrs.vnns[idx].iface)
            );
            return status(to, st);
        }
        // Announce the address, and tickle the connections the previous
        // host had, so their clients reconnect at once.
        let v = &mut self.addrs.vnns[idx];
        let conns = std::mem::take(&mut v.tcp);
        if !conns.is_empty() {
            v.tcp_update_needed = true;
        }
        let generation = v.announce_gen;
        self.announces.push(Announce {
            ip,
            iface: None,
            conns,
            sent: 0,
            next: Instant::now(),
            generation,
        });
        self.announce_due(Instant::now());
        debug!("sending TAKE_IP for '{ip}'");
        vec![
            Effect::Message {
                dest: core.node.pnn,
                srvid: srvid::TAKE_IP,
                data: addr_cstring(ip),
            },
            Effect::Reply(to, control_status(0)),
        ]
    }

    fn do_updateip(&mut self, core: &Core, idx: usize, to: ReplyTo) -> Vec<Effect> {
        let (ip, mask) = (self.addrs.vnns[idx].addr, self.addrs.vnns[idx].mask);
        if self.addrs.vnns[idx].update_in_flight {
            info!("Update of IP {ip}/{mask} rejected update for this IP already in flight");
            return status(to, -1);
        }
        let old = self.addrs.vnns[idx].iface.clone();
        self.addrs.unassign(idx, core.node.pnn);
        if !self.addrs.assign(idx, core.node.pnn) {
            error!(
                "Update of IP {ip}/{mask} failed to assign a usable interface (old iface '{}')",
                iface_str(&old)
            );
            return status(to, -1);
        }
        let new = self.addrs.vnns[idx].iface.clone();
        if old == new {
            return status(to, 0);
        }
        self.addrs.vnns[idx].update_in_flight = true;
        info!(
            "Update of IP {ip}/{mask} from interface {} to {}",
            iface_str(&old),
            iface_str(&new)
        );
        let args = format!("{} {} {ip} {mask}", iface_str(&old), iface_str(&new));
        let tag = self.tag(Pending::UpdateIp { ip, old, to });
        vec![Effect::RunEvent {
            event: ScriptEvent::UpdateIp,
            args,
            tag,
        }]
    }

    pub(super) fn updateip_done(
        &mut self,
        core: &mut Core,
        ip: IpAddr,
        old: Option<String>,
        st: i32,
        to: ReplyTo,
    ) -> Vec<Effect> {
        let Some(idx) = self.addrs.find(ip) else {
            return status(to, -1);
        };
        self.addrs.vnns[idx].update_in_flight = false;
        if st != 0 {
            if st == libc::ETIMEDOUT {
                Self::ban_self(core);
            }
            error!(
                "Failed update of IP {ip} from interface {} to {}",
                iface_str(&old),
                iface_str(&self.addrs.vnns[idx].iface)
            );
            // Back to the old interface; the next takeover run fixes it.
            self.addrs.unassign(idx, core.node.pnn);
            self.addrs.reassign_to(idx, old);
            return status(to, st);
        }
        status(to, 0)
    }

    /// `RELEASE_IP`: sent to every node that should not host the
    /// address; only the one that has it runs `releaseip`, the others
    /// just note where it goes.
    fn release_ip(&mut self, core: &Core, p: &PublicIp, to: ReplyTo) -> Vec<Effect> {
        let Some(idx) = self.addrs.find_sock(&p.addr) else {
            debug!(
                "releaseip called for an ip '{}' that is not a public address",
                p.addr
            );
            return status(to, 0);
        };
        let me = core.node.pnn;
        let v = &mut self.addrs.vnns[idx];
        let (ip, mask) = (v.addr, v.mask);
        // Any announcement still running for it stops.
        v.announce_gen += 1;
        if !self.failover_disabled {
            if !addresses::have_ip(ip) {
                debug!(
                    "Redundant release of IP {ip}/{mask} on interface {} (ip not held)",
                    iface_str(&v.iface)
                );
                v.pnn = p.pnn;
                self.addrs.unassign(idx, me);
                return status(to, 0);
            }
        } else if v.iface.is_none() {
            debug!("Redundant release of IP {ip}/{mask} (ip not held)");
            v.pnn = p.pnn;
            return status(to, 0);
        }
        if v.update_in_flight {
            info!("Release of IP {ip}/{mask} rejected update for this IP already in flight");
            return status(to, -1);
        }
        let iface = iface_str(&v.iface).to_owned();
        info!(
            "Release of IP {ip}/{mask} on interface {iface}  node:{}",
            p.pnn as i32
        );
        v.update_in_flight = true;
        let tag = self.tag(Pending::ReleaseIp {
            ip,
            target: p.pnn,
            to,
        });
        vec![Effect::RunEvent {
            event: ScriptEvent::ReleaseIp,
            args: format!("{iface} {ip} {mask}"),
            tag,
        }]
    }

    pub(super) fn releaseip_done(
        &mut self,
        core: &mut Core,
        ip: IpAddr,
        target: u32,
        to: ReplyTo,
    ) -> Vec<Effect> {
        let Some(idx) = self.addrs.find(ip) else {
            return status(to, 0);
        };
        self.addrs.vnns[idx].update_in_flight = false;
        if !self.failover_disabled && addresses::have_ip(ip) {
            error!("IP {ip} still hosted during release IP callback, failing");
            return status(to, -1);
        }
        self.addrs.vnns[idx].pnn = target;
        let mut out = Vec::new();
        self.release_ip_post(core, idx, &mut out);
        out.extend(status(to, 0));
        out
    }
}
