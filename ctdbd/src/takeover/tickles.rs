//! TCP connections to public addresses, kept so that the node taking an
//! address over can "tickle" them: a bare ACK from the address makes the
//! client answer, the new host (which knows nothing of the connection)
//! answers that with a reset, and the client reconnects at once instead
//! of waiting for its retransmissions to time out.
//!
//! Clients (Samba's smbd) register their connections with `TCP_CLIENT`;
//! the daemon tells every node (`TCP_ADD`), each keeps the list per
//! address, and the hosting node sends its whole list to every node
//! every `TickleUpdateInterval` when it changed (`SET_TCP_TICKLE_LIST`).

use ctdb_protocol::ControlRequest;
use ctdb_protocol::header::{CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED};
use ctdb_protocol::types::{Connection, SockAddr, TickleList};
use tracing::{debug, error};

use super::addresses::{Vnn, canonical_ip, sock};
use super::{Effect, Takeover};
use crate::control::{ControlCtx, Core};

/// The same connection (addresses and ports, IPv4-mapped counting as
/// IPv4).
fn same_conn(a: &Connection, b: &Connection) -> bool {
    same_sockaddr(&a.src, &b.src) && same_sockaddr(&a.dst, &b.dst)
}

fn same_sockaddr(a: &SockAddr, b: &SockAddr) -> bool {
    canonical_ip(a) == canonical_ip(b) && a.port() == b.port()
}

/// A connection with IPv4-mapped addresses made IPv4.
fn canonical_conn(c: &Connection) -> Connection {
    let canon = |a: &SockAddr| match canonical_ip(a) {
        Some(ip) => SockAddr::from(std::net::SocketAddr::new(ip, a.port())),
        None => *a,
    };
    Connection {
        src: canon(&c.src),
        dst: canon(&c.dst),
    }
}

/// Forgets one connection of an address's list.
pub fn remove_connection(v: &mut Vnn, c: &Connection) {
    match v.tcp.iter().position(|x| same_conn(x, c)) {
        None => debug!(
            "Trying to remove tickle that doesn't exist {}:{}",
            c.dst,
            c.dst.port()
        ),
        Some(i) => {
            // CTDB moves the last entry into the hole.
            v.tcp.swap_remove(i);
            v.tcp_update_needed = true;
            debug!("Removed tickle info for {}:{}", c.src, c.src.port());
        }
    }
}

impl Takeover {
    /// `TCP_CLIENT`: a local client serves a connection to a public
    /// address hosted here. Returns the status and what to send.
    pub(super) fn tcp_client(
        &mut self,
        core: &Core,
        ctx: &ControlCtx,
        c: &Connection,
    ) -> (i32, Vec<Effect>) {
        if self.addrs.vnns.is_empty() {
            return (0, Vec::new());
        }
        let conn = canonical_conn(c);
        let pid = ctx
            .client
            .and_then(|id| core.clients.get(&id))
            .map_or(0, |i| i.pid);
        let Some(idx) = self.addrs.find_sock(&conn.dst) else {
            match conn.dst {
                SockAddr::V4(a) if a.ip().is_loopback() => {}
                SockAddr::V4(_) | SockAddr::V6(_) => error!(
                    "Could not register TCP connection from {} to {} (not a public address) (port {}) (client_id {} pid {pid}).",
                    conn.src,
                    conn.dst,
                    conn.dst.port(),
                    ctx.client_id
                ),
                SockAddr::Unspec => error!("Unknown family type 0"),
            }
            return (0, Vec::new());
        };
        if self.addrs.vnns[idx].pnn != core.node.pnn {
            error!(
                "Attempt to register tcp client for IP {} we don't hold - failing (client_id {} pid {pid})",
                conn.dst, ctx.client_id
            );
            return (-1, Vec::new());
        }
        if let Some(id) = ctx.client {
            self.client_conns.entry(id).or_default().push(conn);
        }
        debug!(
            "registered tcp client for {}->{}:{} (client_id {} pid {pid})",
            conn.dst.port(),
            conn.src,
            conn.src.port(),
            ctx.client_id
        );
        (
            0,
            vec![Effect::noreply(
                CTDB_BROADCAST_CONNECTED,
                ControlRequest::TcpAdd(conn),
            )],
        )
    }

    /// `TCP_ADD` (and `TCP_ADD_DELAYED_UPDATE`, which also marks the list
    /// for the next update).
    pub(super) fn tcp_add(&mut self, c: &Connection, update: bool) -> i32 {
        if self.addrs.vnns.is_empty() {
            return 0;
        }
        let Some(idx) = self.addrs.find_sock(&c.dst) else {
            debug!(
                "got TCP_ADD control for an address which is not a public address '{}'",
                c.dst
            );
            return -1;
        };
        let v = &mut self.addrs.vnns[idx];
        if v.tcp.iter().any(|x| same_conn(x, c)) {
            debug!(
                "Already had tickle info for {}:{} for vnn:{}",
                c.dst,
                c.dst.port(),
                v.pnn
            );
            return 0;
        }
        v.tcp.push(*c);
        debug!(
            "Added tickle info for {}:{} from vnn {}",
            c.dst,
            c.dst.port(),
            v.pnn
        );
        if update {
            v.tcp_update_needed = true;
        }
        0
    }

    /// `TCP_REMOVE`.
    pub(super) fn tcp_remove(&mut self, c: &Connection) -> i32 {
        if self.addrs.vnns.is_empty() {
            return 0;
        }
        match self.addrs.find_sock(&c.dst) {
            None => error!("unable to find public address {}", c.dst),
            Some(idx) => remove_connection(&mut self.addrs.vnns[idx], c),
        }
        0
    }

    /// `GET_TCP_TICKLE_LIST`: the connections to an address (to one
    /// port of it if the address has one). `None`: not a public address.
    pub(super) fn tickle_list(&self, a: &SockAddr) -> Option<TickleList> {
        let Some(idx) = self.addrs.find_sock(a) else {
            error!("Could not get tcp tickle list, '{a}' is not a public address");
            return None;
        };
        let port = a.port();
        let conns = self.addrs.vnns[idx]
            .tcp
            .iter()
            .filter(|c| port == 0 || c.dst.port() == port)
            .copied()
            .collect();
        Some(TickleList { addr: *a, conns })
    }

    /// `SET_TCP_TICKLE_LIST`: the hosting node's list for an address.
    pub(super) fn set_tickle_list(&mut self, core: &Core, l: &TickleList) -> i32 {
        debug!("Received tickle update for public address {}", l.addr);
        let Some(idx) = self.addrs.find_sock(&l.addr) else {
            debug!(
                "Could not set tcp tickle list, '{}' is not a public address",
                l.addr
            );
            return 1;
        };
        let v = &mut self.addrs.vnns[idx];
        if v.pnn == core.node.pnn {
            debug!(
                "Ignoring redundant set tcp tickle list, this node hosts '{}'",
                l.addr
            );
            return 0;
        }
        v.tcp = l.conns.clone();
        0
    }

    /// Sends the tickle list of every address hosted here to every node:
    /// those that changed, or all (`force`).
    pub(super) fn send_tickles_for_all(&mut self, core: &Core, force: bool) -> Vec<Effect> {
        let mut out = Vec::new();
        for v in &mut self.addrs.vnns {
            if v.pnn != core.node.pnn || (!force && !v.tcp_update_needed) {
                continue;
            }
            out.push(Effect::noreply(
                CTDB_BROADCAST_ALL,
                ControlRequest::SetTcpTickleList(TickleList {
                    addr: sock(v.addr),
                    conns: v.tcp.clone(),
                }),
            ));
            debug!("Sent tickle update for ip {}", v.addr);
            v.tcp_update_needed = false;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, SocketAddr};

    fn conn(c: &str, s: &str) -> Connection {
        Connection {
            src: SockAddr::from(c.parse::<SocketAddr>().unwrap()),
            dst: SockAddr::from(s.parse::<SocketAddr>().unwrap()),
        }
    }

    #[test]
    fn tickle_lists_add_remove_and_filter_by_port() {
        let mut t = Takeover::empty();
        t.addrs.add("127.0.0.1".parse().unwrap(), 8, "lo").unwrap();
        let a = conn("10.1.1.1:40000", "127.0.0.1:445");
        let b = conn("10.1.1.2:40001", "127.0.0.1:2049");
        assert_eq!(t.tcp_add(&a, false), 0);
        assert_eq!(t.tcp_add(&a, false), 0);
        assert_eq!(t.tcp_add(&b, true), 0);
        assert!(t.addrs.vnns[0].tcp_update_needed);
        assert_eq!(t.tcp_add(&conn("10.1.1.1:1", "10.9.9.9:1"), false), -1);
        let all = t
            .tickle_list(&SockAddr::from("127.0.0.1".parse::<IpAddr>().unwrap()))
            .unwrap();
        assert_eq!(all.conns, vec![a, b]);
        let smb = t
            .tickle_list(&SockAddr::from(
                "127.0.0.1:445".parse::<SocketAddr>().unwrap(),
            ))
            .unwrap();
        assert_eq!(smb.conns, vec![a]);
        assert_eq!(t.tcp_remove(&a), 0);
        assert_eq!(t.addrs.vnns[0].tcp, vec![b]);
        assert!(
            t.tickle_list(&SockAddr::from("10.9.9.9".parse::<IpAddr>().unwrap()))
                .is_none()
        );
    }
}
