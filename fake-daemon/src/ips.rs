//! Public addresses, interfaces and tickle lists, from the script's
//! PUBLICIPS and IFACES sections (ctdbd does no IP failover yet, so there
//! is nothing of the daemon's to share here).
//!
//! What a takeover helper sends (`GET_PUBLIC_IPS`, `RELEASE_IP`,
//! `TAKEOVER_IP`, `IPREALLOCATED`) is answered as CTDB's fake daemon answers
//! it, so CTDB's helper and ours can run against the same script. With
//! `FAKE_CTDBD_CONTROL_LOG=FILE`, every `RELEASE_IP`, `TAKEOVER_IP` and
//! `IPREALLOCATED` received (before any scripted failure applies) and every
//! `CTDB_SRVID_BANNING` message is appended to FILE, one line each:
//!
//! ```text
//! RELEASE_IP <dest> <address> <new host>
//! TAKEOVER_IP <dest> <address> <new host>
//! IPREALLOCATED <dest>
//! BANNING <dest> <node named>
//! ```
//!
//! (`<new host>` as a signed number: -1 for none.)

use ctdb_protocol::control::CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE;
use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::types::*;
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Header, ReplyControl, ReqControl};

use crate::daemon::Daemon;
use crate::state::KnownIp;

/// Whether this module answers `req`.
pub fn handles(req: &ReqControl) -> bool {
    matches!(
        req.data,
        Q::GetIfaces
            | Q::SetIfaceLinkState(_)
            | Q::GetPublicIps
            | Q::GetPublicIpInfo(_)
            | Q::ReleaseIp(_)
            | Q::TakeoverIp(_)
            | Q::AddPublicIp(_)
            | Q::DelPublicIp(_)
            | Q::SendGratuitousArp(_)
            | Q::GetTcpTickleList(_)
            | Q::TcpAdd(_)
            | Q::TcpAddDelayedUpdate(_)
            | Q::TcpRemove(_)
            | Q::SetTcpTickleList(_)
            | Q::Ipreallocated
    )
}

/// Writes an address control to the control log.
pub fn log_control(d: &mut Daemon, h: &Header, req: &ReqControl) {
    if d.control_log.is_none() {
        return;
    }
    let dest = h.destnode;
    match &req.data {
        Q::ReleaseIp(ip) => d.log_control(format_args!(
            "RELEASE_IP {dest} {} {}",
            ip.addr, ip.pnn as i32
        )),
        Q::TakeoverIp(ip) => d.log_control(format_args!(
            "TAKEOVER_IP {dest} {} {}",
            ip.addr, ip.pnn as i32
        )),
        Q::Ipreallocated => d.log_control(format_args!("IPREALLOCATED {dest}")),
        _ => {}
    }
}

/// Answers an address control sent to node `h.destnode`.
pub fn control(d: &mut Daemon, h: &Header, req: &ReqControl) -> ReplyControl {
    let dest = h.destnode;
    let node = dest as usize;
    match &req.data {
        Q::GetIfaces => ReplyControl::ok(R::GetIfaces(iface_list(d))),
        Q::SetIfaceLinkState(i) => set_iface_link(d, i),
        Q::GetPublicIps => {
            let only_avail = req.flags & CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE != 0;
            let unavailable = d.cluster.core(dest).node.runstate != Runstate::Running
                || d.cluster.flags(dest) & (node_flags::INACTIVE | node_flags::DISABLED) != 0;
            let ips = match known(d, node) {
                Some(k) if !(only_avail && unavailable) => PublicIpList {
                    ips: k
                        .iter()
                        .map(|ip| PublicIp {
                            pnn: ip.pnn,
                            addr: ip.addr,
                        })
                        .collect(),
                },
                _ => PublicIpList::default(),
            };
            ReplyControl::ok(R::GetPublicIps(ips))
        }
        Q::GetPublicIpInfo(addr) => {
            match known(d, node).and_then(|k| k.iter().find(|ip| ip.addr.ip() == addr.ip())) {
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
        Q::ReleaseIp(ip) => release_ip(d, dest, ip),
        Q::TakeoverIp(ip) => {
            if let Some(t) = known_ip_mut(d, node, &ip.addr)
                && t.pnn != dest
            {
                t.pnn = ip.pnn;
            }
            ReplyControl::ok(R::TakeoverIp)
        }
        Q::AddPublicIp(a) => {
            let n = d.cluster.len() as usize;
            let k = d.st.known_ips.get_or_insert_with(Vec::new);
            if k.len() < n {
                k.resize(n, Vec::new());
            }
            if let Some(k) = k.get_mut(node)
                && !k.iter().any(|ip| ip.addr.ip() == a.addr.ip())
            {
                k.push(KnownIp {
                    addr: a.addr,
                    pnn: CTDB_UNKNOWN_PNN,
                });
            }
            ReplyControl::ok(R::AddPublicIp)
        }
        Q::DelPublicIp(a) => {
            if let Some(k) = d.st.known_ips.as_mut().and_then(|k| k.get_mut(node)) {
                k.retain(|ip| ip.addr.ip() != a.addr.ip());
            }
            ReplyControl::ok(R::DelPublicIp)
        }
        Q::SendGratuitousArp(_) => ReplyControl::ok(R::SendGratuitousArp),
        // Always succeeds, as in CTDB's fake daemon.
        Q::Ipreallocated => ReplyControl::ok(R::Ipreallocated),
        Q::GetTcpTickleList(addr) => {
            let conns = d
                .tickles
                .get(&(dest, addr.to_string()))
                .cloned()
                .unwrap_or_default();
            ReplyControl::ok(R::GetTcpTickleList(TickleList { addr: *addr, conns }))
        }
        Q::TcpAddDelayedUpdate(c) | Q::TcpAdd(c) => {
            let v = d.tickles.entry((dest, c.dst.to_string())).or_default();
            if !v.contains(c) {
                v.push(*c);
            }
            ReplyControl::ok(R::TcpAddDelayedUpdate)
        }
        Q::TcpRemove(c) => {
            if let Some(v) = d.tickles.get_mut(&(dest, c.dst.to_string())) {
                v.retain(|x| x != c);
            }
            ReplyControl::ok(R::TcpRemove)
        }
        Q::SetTcpTickleList(t) => {
            d.tickles
                .insert((dest, t.addr.to_string()), t.conns.clone());
            ReplyControl::ok(R::SetTcpTickleList)
        }
        _ => ReplyControl::error(-1, "Not implemented"),
    }
}

/// The public addresses node `node` knows (None: no PUBLICIPS section).
fn known(d: &Daemon, node: usize) -> Option<&[KnownIp]> {
    let k = d.st.known_ips.as_ref()?;
    Some(k.get(node).map_or(&[][..], Vec::as_slice))
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

fn release_ip(d: &mut Daemon, dest: u32, ip: &PublicIp) -> ReplyControl {
    let Some(t) = known_ip_mut(d, dest as usize, &ip.addr) else {
        return ReplyControl::ok(R::ReleaseIp);
    };
    if t.pnn != dest && dest == ip.pnn {
        return ReplyControl::error(-1, "RELEASE_IP to TAKE_IP node");
    }
    t.pnn = ip.pnn;
    ReplyControl::ok(R::ReleaseIp)
}
