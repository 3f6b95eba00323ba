//! The packet header every CTDB packet starts with, and the operations.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer};

/// `CTDB` as a little-endian u32.
pub const CTDB_MAGIC: u32 = 0x4354_4442;
/// The only protocol version there is.
pub const CTDB_PROTOCOL: u32 = 1;
/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 32;
/// Packets are padded to a multiple of this on the wire.
pub const CTDB_DS_ALIGNMENT: usize = 8;

/// On the unix socket: the daemon the client is talking to.
pub const CTDB_CURRENT_NODE: u32 = 0xF000_0001;
/// Every node in the cluster, connected or not.
pub const CTDB_BROADCAST_ALL: u32 = 0xF000_0002;
/// Every node in the current vnn map.
pub const CTDB_BROADCAST_ACTIVE: u32 = 0xF000_0003;
/// Every connected node.
pub const CTDB_BROADCAST_CONNECTED: u32 = 0xF000_0004;
/// Selected connected nodes.
pub const CTDB_MULTICAST: u32 = 0xF000_0005;
/// "No node".
pub const CTDB_UNKNOWN_PNN: u32 = 0xFFFF_FFFF;

/// The generation of a cluster that has not recovered yet.
pub const INVALID_GENERATION: u32 = 1;

/// The kind of a packet (`ctdb_operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Operation {
    ReqCall = 0,
    ReplyCall = 1,
    ReqDmaster = 2,
    ReplyDmaster = 3,
    ReplyError = 4,
    ReqMessage = 5,
    ReqControl = 7,
    ReplyControl = 8,
    ReqKeepalive = 9,
    ReqTunnel = 10,
}

impl Operation {
    pub fn from_u32(v: u32) -> Result<Self> {
        use Operation::*;
        Ok(match v {
            0 => ReqCall,
            1 => ReplyCall,
            2 => ReqDmaster,
            3 => ReplyDmaster,
            4 => ReplyError,
            5 => ReqMessage,
            7 => ReqControl,
            8 => ReplyControl,
            9 => ReqKeepalive,
            10 => ReqTunnel,
            _ => return Err(Error::UnknownOperation(v)),
        })
    }
}

/// The 32-byte header (`ctdb_req_header`).
///
/// `length` counts the whole packet including this header and the trailing
/// alignment padding. Magic and version are checked on `pull` and always
/// written as [`CTDB_MAGIC`] and [`CTDB_PROTOCOL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub generation: u32,
    pub operation: Operation,
    pub destnode: u32,
    pub srcnode: u32,
    pub reqid: u32,
}

impl Header {
    /// A header for a new packet; `length` is filled in when it is encoded.
    pub fn new(operation: Operation, destnode: u32, srcnode: u32, reqid: u32) -> Self {
        Header {
            length: 0,
            generation: 0,
            operation,
            destnode,
            srcnode,
            reqid,
        }
    }

    /// Reads only the length field of a packet at the front of `buf`, as the
    /// framing layer does before it has the whole packet.
    pub fn peek_length(buf: &[u8]) -> Option<u32> {
        buf.get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Marshal for Header {
    fn len(&self) -> usize {
        HEADER_LEN
    }

    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.length);
        w.u32(CTDB_MAGIC);
        w.u32(CTDB_PROTOCOL);
        w.u32(self.generation);
        w.u32(self.operation as u32);
        w.u32(self.destnode);
        w.u32(self.srcnode);
        w.u32(self.reqid);
        w.pos()
    }

    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let length = r.u32("header length")?;
        let magic = r.u32("header magic")?;
        let version = r.u32("header version")?;
        let generation = r.u32("header generation")?;
        let operation = r.u32("header operation")?;
        let destnode = r.u32("header destnode")?;
        let srcnode = r.u32("header srcnode")?;
        let reqid = r.u32("header reqid")?;
        if magic != CTDB_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        if version != CTDB_PROTOCOL {
            return Err(Error::BadVersion(version));
        }
        if (length as usize) < HEADER_LEN {
            return Err(Error::BadLength {
                length,
                why: "shorter than a header",
            });
        }
        let operation = Operation::from_u32(operation)?;
        Ok((
            Header {
                length,
                generation,
                operation,
                destnode,
                srcnode,
                reqid,
            },
            r.pos(),
        ))
    }
}
