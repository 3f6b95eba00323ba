//! Socket addresses and the public-IP, connection and interface types built
//! on them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::counted_list;
use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, cstrn_len, wire_u32};

const AF_UNSPEC: u16 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `ctdb_sock_addr`: a union of `sockaddr_in` and `sockaddr_in6`, always
/// 28 bytes on the wire. The family is in host order, the port in network
/// order, as the kernel structures have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SockAddr {
    /// An all-zero address (family `AF_UNSPEC`).
    #[default]
    Unspec,
    V4(SocketAddrV4),
    V6(SocketAddrV6),
}

impl SockAddr {
    pub const WIRE_SIZE: usize = 28;

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            SockAddr::Unspec => None,
            SockAddr::V4(a) => Some(IpAddr::V4(*a.ip())),
            SockAddr::V6(a) => Some(IpAddr::V6(*a.ip())),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            SockAddr::Unspec => 0,
            SockAddr::V4(a) => a.port(),
            SockAddr::V6(a) => a.port(),
        }
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(a) => SockAddr::V4(a),
            SocketAddr::V6(a) => SockAddr::V6(a),
        }
    }
}

impl From<IpAddr> for SockAddr {
    fn from(ip: IpAddr) -> Self {
        SocketAddr::new(ip, 0).into()
    }
}

impl std::fmt::Display for SockAddr {
    /// The address only, as CTDB's tool prints node and public addresses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("0.0.0.0"),
        }
    }
}

impl Marshal for SockAddr {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        match self {
            SockAddr::Unspec => w.pad(Self::WIRE_SIZE),
            SockAddr::V4(a) => {
                w.u16(AF_INET);
                w.bytes(&a.port().to_be_bytes());
                w.bytes(&a.ip().octets());
                w.pad(Self::WIRE_SIZE - 8);
            }
            SockAddr::V6(a) => {
                w.u16(AF_INET6);
                w.bytes(&a.port().to_be_bytes());
                w.bytes(&a.flowinfo().to_be_bytes());
                w.bytes(&a.ip().octets());
                w.u32(a.scope_id());
            }
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let b = r.bytes(Self::WIRE_SIZE, "sock_addr")?;
        let family = u16::from_le_bytes([b[0], b[1]]);
        let port = u16::from_be_bytes([b[2], b[3]]);
        let a = match family {
            AF_UNSPEC => SockAddr::Unspec,
            AF_INET => {
                let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
                SockAddr::V4(SocketAddrV4::new(ip, port))
            }
            AF_INET6 => {
                let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[8..24]);
                let scope = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
                SockAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, flow, scope))
            }
            _ => {
                return Err(Error::Invalid {
                    what: "sock_addr",
                    why: "unknown address family",
                });
            }
        };
        Ok((a, r.pos()))
    }
}

/// `ctdb_connection`: one TCP connection, server side then client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Connection {
    pub src: SockAddr,
    pub dst: SockAddr,
}

impl Marshal for Connection {
    fn len(&self) -> usize {
        2 * SockAddr::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.put(&self.src);
        w.put(&self.dst);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let src = r.get()?;
        let dst = r.get()?;
        Ok((Connection { src, dst }, r.pos()))
    }
}

/// `ctdb_connection_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionList {
    pub conns: Vec<Connection>,
}
counted_list!(ConnectionList, conns, Connection, 56, "connection list");

/// `ctdb_tickle_list`: the connections to one public address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TickleList {
    pub addr: SockAddr,
    pub conns: Vec<Connection>,
}

impl Marshal for TickleList {
    fn len(&self) -> usize {
        SockAddr::WIRE_SIZE + 4 + self.conns.len() * 2 * SockAddr::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.put(&self.addr);
        w.u32(wire_u32(self.conns.len()));
        for c in &self.conns {
            w.put(c);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let addr = r.get()?;
        let list: ConnectionList = r.get()?;
        let conns = list.conns;
        Ok((TickleList { addr, conns }, r.pos()))
    }
}

/// `ctdb_addr_info`: an address with its netmask bits and interface names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddrInfo {
    pub addr: SockAddr,
    pub mask: u32,
    pub iface: Option<String>,
}

impl Marshal for AddrInfo {
    fn len(&self) -> usize {
        SockAddr::WIRE_SIZE + 4 + cstrn_len(self.iface.as_deref())
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.put(&self.addr);
        w.u32(self.mask);
        w.cstrn(self.iface.as_deref());
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let addr = r.get()?;
        let mask = r.u32("addr_info mask")?;
        let iface = r.cstrn("addr_info iface")?;
        Ok((AddrInfo { addr, mask, iface }, r.pos()))
    }
}

/// `ctdb_public_ip`: a public address and the node hosting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublicIp {
    pub pnn: u32,
    pub addr: SockAddr,
}

impl Marshal for PublicIp {
    fn len(&self) -> usize {
        4 + SockAddr::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.put(&self.addr);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("public_ip pnn")?;
        let addr = r.get()?;
        Ok((PublicIp { pnn, addr }, r.pos()))
    }
}

/// `ctdb_public_ip_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublicIpList {
    pub ips: Vec<PublicIp>,
}
counted_list!(PublicIpList, ips, PublicIp, 32, "public ip list");

/// Size of an interface name array (`IFNAMSIZ + 2`).
pub const CTDB_IFACE_NAME_SIZE: usize = 18;

/// `ctdb_iface`: a network interface, its link state and how many public
/// addresses use it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Iface {
    /// At most 17 bytes.
    pub name: String,
    pub link_state: u16,
    pub references: u32,
}

impl Marshal for Iface {
    fn len(&self) -> usize {
        CTDB_IFACE_NAME_SIZE + 2 + 4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.chararray(&self.name, CTDB_IFACE_NAME_SIZE);
        w.u16(self.link_state);
        w.u32(self.references);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let name = r.chararray(CTDB_IFACE_NAME_SIZE, "iface name")?;
        let link_state = r.u16("iface link state")?;
        let references = r.u32("iface references")?;
        Ok((
            Iface {
                name,
                link_state,
                references,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_iface_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfaceList {
    pub ifaces: Vec<Iface>,
}
counted_list!(IfaceList, ifaces, Iface, 24, "iface list");

/// `ctdb_public_ip_info`: one public address with the interfaces that can
/// carry it and which of them is active.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublicIpInfo {
    pub ip: PublicIp,
    pub active_idx: u32,
    pub ifaces: IfaceList,
}

impl Marshal for PublicIpInfo {
    fn len(&self) -> usize {
        self.ip.len() + 4 + self.ifaces.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.put(&self.ip);
        w.u32(self.active_idx);
        w.put(&self.ifaces);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let ip = r.get()?;
        let active_idx = r.u32("public_ip_info active_idx")?;
        let ifaces = r.get()?;
        Ok((
            PublicIpInfo {
                ip,
                active_idx,
                ifaces,
            },
            r.pos(),
        ))
    }
}
