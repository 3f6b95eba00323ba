//! `REQ_KEEPALIVE` and `REQ_TUNNEL`, the two small node-to-node packets.

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer, datan_len};

/// `ctdb_req_keepalive`: sent between nodes when there is no other traffic.
/// An empty keepalive (older senders) has no body at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReqKeepalive {
    pub version: u32,
    pub uptime: u32,
}

impl Marshal for ReqKeepalive {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.version);
        w.u32(self.uptime);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let version = r.u32("keepalive version")?;
        let uptime = r.u32("keepalive uptime")?;
        Ok((ReqKeepalive { version, uptime }, r.pos()))
    }
}

/// Tunnel flags.
pub mod tunnel_flags {
    pub const REQUEST: u32 = 0x0000_0001;
    pub const REPLY: u32 = 0x0000_0002;
    pub const NOREPLY: u32 = 0x0000_0010;
}

/// The tunnel id reserved for tests.
pub const CTDB_TUNNEL_TEST: u64 = 0xFFFF_FFFF_0000_0000;

/// `ctdb_req_tunnel`: opaque data for a registered tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReqTunnel {
    pub tunnel_id: u64,
    pub flags: u32,
    pub data: Vec<u8>,
}

impl Marshal for ReqTunnel {
    fn len(&self) -> usize {
        12 + datan_len(&self.data)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.tunnel_id);
        w.u32(self.flags);
        w.datan(&self.data);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let tunnel_id = r.u64("tunnel id")?;
        let flags = r.u32("tunnel flags")?;
        let data = r.datan("tunnel data")?;
        Ok((
            ReqTunnel {
                tunnel_id,
                flags,
                data,
            },
            r.pos(),
        ))
    }
}
