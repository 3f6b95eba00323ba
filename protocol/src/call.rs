//! Record calls and record migration: `REQ_CALL`, `REPLY_CALL`,
//! `REPLY_ERROR`, `REQ_DMASTER`, `REPLY_DMASTER`.

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer, datan_len, wire_u32};

/// Call ids of the calls the daemon knows.
pub mod call_id {
    /// Do nothing but make this node the record's data master.
    pub const NULL_FUNC: u32 = 0xFF00_0001;
    /// Return the record's data.
    pub const FETCH_FUNC: u32 = 0xFF00_0002;
    /// Return the record's data with its CTDB header in front.
    pub const FETCH_WITH_HEADER_FUNC: u32 = 0xFF00_0003;
}

/// Call flags in [`ReqCall::flags`].
pub mod call_flags {
    /// Migrate the record to the caller.
    pub const IMMEDIATE_MIGRATION: u32 = 0x0000_0001;
    /// A migration requested by vacuuming.
    pub const VACUUM_MIGRATION: u32 = 0x0000_0002;
    /// A read-only delegation is enough.
    pub const WANT_READONLY: u32 = 0x0000_0004;
}

/// `ctdb_req_call`: run a call on a record (in practice: fetch it, or
/// migrate it here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReqCall {
    pub flags: u32,
    pub db_id: u32,
    pub callid: u32,
    pub hopcount: u32,
    pub key: Vec<u8>,
    pub calldata: Vec<u8>,
}

impl Marshal for ReqCall {
    fn len(&self) -> usize {
        24 + self.key.len() + self.calldata.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.flags);
        w.u32(self.db_id);
        w.u32(self.callid);
        w.u32(self.hopcount);
        w.u32(wire_u32(self.key.len()));
        w.u32(wire_u32(self.calldata.len()));
        w.bytes(&self.key);
        w.bytes(&self.calldata);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let flags = r.u32("call flags")?;
        let db_id = r.u32("call db_id")?;
        let callid = r.u32("call callid")?;
        let hopcount = r.u32("call hopcount")?;
        let klen = r.u32("call key length")? as usize;
        let dlen = r.u32("call data length")? as usize;
        let key = r.bytes(klen, "call key")?.to_vec();
        let calldata = r.bytes(dlen, "call data")?.to_vec();
        Ok((
            ReqCall {
                flags,
                db_id,
                callid,
                hopcount,
                key,
                calldata,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_reply_call`: the call's status and returned data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyCall {
    pub status: i32,
    pub data: Vec<u8>,
}

impl Marshal for ReplyCall {
    fn len(&self) -> usize {
        4 + datan_len(&self.data)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i32(self.status);
        w.datan(&self.data);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let status = r.i32("reply call status")?;
        let data = r.datan("reply call data")?;
        Ok((ReplyCall { status, data }, r.pos()))
    }
}

/// `ctdb_reply_error`: a call failed; status and a message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyError {
    pub status: i32,
    pub msg: Vec<u8>,
}

impl Marshal for ReplyError {
    fn len(&self) -> usize {
        4 + datan_len(&self.msg)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i32(self.status);
        w.datan(&self.msg);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let status = r.i32("reply error status")?;
        let msg = r.datan("reply error message")?;
        Ok((ReplyError { status, msg }, r.pos()))
    }
}

/// `ctdb_req_dmaster`: the old data master sends a record to its lmaster,
/// which will pass it on to the new data master `dmaster`.
///
/// CTDB's daemon appends the record's header flags after the data, and a
/// receiver reads them when the packet is long enough to hold them (else
/// they are 0). We always send them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReqDmaster {
    pub db_id: u32,
    pub rsn: u64,
    pub dmaster: u32,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub record_flags: u32,
}

impl Marshal for ReqDmaster {
    fn len(&self) -> usize {
        28 + self.key.len() + self.data.len() + 4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.pad(4);
        w.u64(self.rsn);
        w.u32(self.dmaster);
        w.u32(wire_u32(self.key.len()));
        w.u32(wire_u32(self.data.len()));
        w.bytes(&self.key);
        w.bytes(&self.data);
        w.u32(self.record_flags);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("dmaster db_id")?;
        r.pad(4, "dmaster padding")?;
        let rsn = r.u64("dmaster rsn")?;
        let dmaster = r.u32("dmaster dmaster")?;
        let klen = r.u32("dmaster key length")? as usize;
        let dlen = r.u32("dmaster data length")? as usize;
        let key = r.bytes(klen, "dmaster key")?.to_vec();
        let data = r.bytes(dlen, "dmaster data")?.to_vec();
        let record_flags = get_flags(&mut r)?;
        Ok((
            ReqDmaster {
                db_id,
                rsn,
                dmaster,
                key,
                data,
                record_flags,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_reply_dmaster`: the record itself, sent by its lmaster to its new
/// data master; as in [`ReqDmaster`], optionally followed by the record's
/// header flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyDmaster {
    pub db_id: u32,
    pub rsn: u64,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub record_flags: u32,
}

/// The trailing record flags, when at least four bytes follow the data.
fn get_flags(r: &mut Reader<'_>) -> Result<u32> {
    if r.remaining() >= 4 {
        r.u32("record flags")
    } else {
        Ok(0)
    }
}

impl Marshal for ReplyDmaster {
    fn len(&self) -> usize {
        24 + self.key.len() + self.data.len() + 4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.pad(4);
        w.u64(self.rsn);
        w.u32(wire_u32(self.key.len()));
        w.u32(wire_u32(self.data.len()));
        w.bytes(&self.key);
        w.bytes(&self.data);
        w.u32(self.record_flags);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("reply dmaster db_id")?;
        r.pad(4, "reply dmaster padding")?;
        let rsn = r.u64("reply dmaster rsn")?;
        let klen = r.u32("reply dmaster key length")? as usize;
        let dlen = r.u32("reply dmaster data length")? as usize;
        let key = r.bytes(klen, "reply dmaster key")?.to_vec();
        let data = r.bytes(dlen, "reply dmaster data")?.to_vec();
        let record_flags = get_flags(&mut r)?;
        Ok((
            ReplyDmaster {
                db_id,
                rsn,
                key,
                data,
                record_flags,
            },
            r.pos(),
        ))
    }
}
