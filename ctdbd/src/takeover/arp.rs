//! On the wire: gratuitous ARPs for an address that arrived on this node
//! (so the network sends its packets here), and tickle ACKs for the
//! connections its clients had to the previous host (CTDB's
//! `ctdb_sys_send_arp` and `ctdb_sys_send_tcp`).
//!
//! IPv4 only: IPv6 neighbour advertisements and IPv6 tickles are logged
//! as not sent.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use ctdb_protocol::types::{Connection, SockAddr};
use tracing::{debug, error, info};

use super::{ARP_INTERVAL, ARP_REPEAT, Takeover};

impl Takeover {
    /// Sends the announcements that are due: a gratuitous ARP each time,
    /// and the tickle ACKs of a takeover, [`ARP_REPEAT`] times
    /// [`ARP_INTERVAL`] apart. An address released meanwhile is no
    /// longer announced.
    pub(super) fn announce_due(&mut self, now: Instant) {
        let mut keep = Vec::new();
        for mut a in std::mem::take(&mut self.announces) {
            let iface = match &a.iface {
                Some(i) => Some(i.clone()),
                None => match self.addrs.find(a.ip) {
                    Some(idx)
                        if self.addrs.vnns[idx].announce_gen == a.generation
                            && self.addrs.vnns[idx].iface.is_some() =>
                    {
                        self.addrs.vnns[idx].iface.clone()
                    }
                    _ => {
                        debug!("Cancelling ARP send for released IP {}", a.ip);
                        continue;
                    }
                },
            };
            if a.next > now {
                keep.push(a);
                continue;
            }
            let iface = iface.unwrap_or_default();
            if let Err(e) = send_arp(a.ip, &iface) {
                error!("Failed to send ARP on interface {iface}: {e}");
            }
            for c in &a.conns {
                info!(
                    "Send TCP tickle ACK: {}:{} -> {}:{}",
                    c.src,
                    c.src.port(),
                    c.dst,
                    c.dst.port()
                );
                if let Err(e) = send_tickle_ack(c) {
                    error!(
                        "Failed to send TCP tickle ACK: {}:{} -> {}:{}: {e}",
                        c.src,
                        c.src.port(),
                        c.dst,
                        c.dst.port()
                    );
                }
            }
            a.sent += 1;
            if a.sent < ARP_REPEAT {
                a.next = now + ARP_INTERVAL;
                keep.push(a);
            }
        }
        self.announces = keep;
    }

    /// When the next announcement is due.
    pub fn next_announce(&self) -> Option<Instant> {
        self.announces.iter().map(|a| a.next).min()
    }
}

/// Gratuitous ARP request and reply for `ip` on `iface`.
pub fn send_arp(ip: IpAddr, iface: &str) -> std::io::Result<()> {
    let IpAddr::V4(ip) = ip else {
        debug!("IPv6 neighbour advertisement for {ip} not sent (not supported)");
        return Ok(());
    };
    let mac = iface_mac(iface)?;
    if mac == [0; 6] {
        // Loopback and other interfaces without a hardware address.
        return Ok(());
    }
    let index = super::addresses::iface_index(iface).ok_or(std::io::ErrorKind::NotFound)?;
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    for op in [1u16, 2u16] {
        let frame = arp_frame(mac, ip, op);
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: frame and sll are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn iface_mac(iface: &str) -> std::io::Result<[u8; 6]> {
    if iface.contains('/') || iface.is_empty() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Ok([0; 6]);
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| std::io::ErrorKind::InvalidData)?;
    }
    Ok(mac)
}

/// An Ethernet frame with an ARP request (`op` 1) or reply (2) saying
/// `ip` is at `mac`, to everyone.
fn arp_frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&(libc::ETH_P_ARP as u16).to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    if op == 2 {
        f.extend_from_slice(&mac);
    } else {
        f.extend_from_slice(&[0; 6]);
    }
    f.extend_from_slice(&ip.octets());
    f
}

/// A bare ACK (sequence and acknowledgement 0) from the public address
/// to the client of connection `c` (`c.src` is the client, `c.dst` the
/// public address).
pub fn send_tickle_ack(c: &Connection) -> std::io::Result<()> {
    let (SockAddr::V4(client), SockAddr::V4(server)) = (c.src, c.dst) else {
        debug!("tickle ACK for {} not sent (IPv6 not supported)", c.src);
        return Ok(());
    };
    let pkt = tcp_ack_packet(server, client);
    // SAFETY: a plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(client.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: pkt and sin are valid for the lengths given.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn tcp_ack_packet(from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 255;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&from.ip().octets());
    p[16..20].copy_from_slice(&to.ip().octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = 20;
    p[t..t + 2].copy_from_slice(&from.port().to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&to.port().to_be_bytes());
    p[t + 12] = 5 << 4;
    p[t + 13] = 0x10; // ACK
    p[t + 14..t + 16].copy_from_slice(&1234u16.to_be_bytes());
    let mut pseudo = 0u32;
    for w in from
        .ip()
        .octets()
        .chunks(2)
        .chain(to.ip().octets().chunks(2))
    {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += libc::IPPROTO_TCP as u32 + 20;
    let sum = checksum(&p[t..], pseudo);
    p[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for w in data.chunks(2) {
        let v = if w.len() == 2 {
            u16::from_be_bytes([w[0], w[1]])
        } else {
            u16::from_be_bytes([w[0], 0])
        };
        sum += u32::from(v);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_have_valid_checksums() {
        let p = tcp_ack_packet(
            "192.0.2.10:445".parse().unwrap(),
            "192.0.2.99:40000".parse().unwrap(),
        );
        assert_eq!(checksum(&p[..20], 0), 0);
        let mut pseudo = 0u32;
        for w in p[12..20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        pseudo += 6 + 20;
        assert_eq!(checksum(&p[20..], pseudo), 0);
        let f = arp_frame([2, 0, 0, 0, 0, 1], "192.0.2.10".parse().unwrap(), 1);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[28..32], &[192, 0, 2, 10]);
        assert_eq!(&f[38..42], &[192, 0, 2, 10]);
    }
}
