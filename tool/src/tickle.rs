//! Sending a TCP "tickle" ACK (`ctdb tickle`): an empty ACK with sequence
//! numbers 0 from `src` to `dst`, which makes the receiver answer with its
//! real sequence numbers (or a reset), through a raw socket.

use std::net::IpAddr;

use ctdb_protocol::types::SockAddr;

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte TCP header: ACK, sequence and ack numbers 0, window 1234.
fn tcp_header(sport: u16, dport: u16) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x10;
    t[14..16].copy_from_slice(&1234u16.to_be_bytes());
    t
}

/// Sends one tickle ACK; returns an errno on failure.
pub fn send_tickle(src: &SockAddr, dst: &SockAddr) -> Result<(), i32> {
    let (Some(sip), Some(dip)) = (src.ip(), dst.ip()) else {
        return Err(22);
    };
    let mut tcp = tcp_header(src.port(), dst.port());
    let (family, pseudo_sum) = match (sip, dip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = Vec::new();
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, 6, 0, 20]);
            (libc::AF_INET, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = Vec::new();
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&20u32.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 6]);
            (libc::AF_INET6, p)
        }
        _ => return Err(22),
    };
    let mut all = pseudo_sum;
    all.extend_from_slice(&tcp);
    let sum = checksum(&all, 0);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let sock = socket2::Socket::new(
        socket2::Domain::from(family),
        socket2::Type::RAW,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| e.raw_os_error().unwrap_or(1))?;
    let to: std::net::SocketAddr = std::net::SocketAddr::new(dip, 0);
    sock.send_to(&tcp, &to.into())
        .map_err(|e| e.raw_os_error().unwrap_or(1))?;
    Ok(())
}
