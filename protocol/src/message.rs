//! Messages: `REQ_MESSAGE`, the well-known srvids, and the typed payloads
//! that travel on them.

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer, wire_u32};
use crate::types::*;

/// Well-known srvids and srvid ranges.
pub mod srvid {
    /// Every message.
    pub const ALL: u64 = !0;
    /// Prefix of the srvids record chunks travel on during recovery
    /// (`DB_PULL` / `DB_PUSH_START`).
    pub const RECOVERY: u64 = 0xF001_0000_0000_0000;
    /// Ban credits for a node.
    pub const BANNING: u64 = 0xF002_0000_0000_0000;
    /// Leader election bids.
    pub const ELECTION: u64 = 0xF100_0000_0000_0000;
    /// "I am the leader."
    pub const LEADER: u64 = 0xF101_0000_0000_0000;
    /// The cluster was reconfigured.
    pub const RECONFIGURE: u64 = 0xF200_0000_0000_0000;
    pub const RELEASE_IP: u64 = 0xF300_0000_0000_0000;
    pub const TAKE_IP: u64 = 0xF301_0000_0000_0000;
    /// Obsolete: node flags to the recovery daemon.
    pub const SET_NODE_FLAGS: u64 = 0xF400_0000_0000_0000;
    pub const RECD_UPDATE_IP: u64 = 0xF500_0000_0000_0000;
    pub const VACUUM_FETCH: u64 = 0xF700_0000_0000_0000;
    pub const DETACH_DATABASE: u64 = 0xF701_0000_0000_0000;
    pub const MEM_DUMP: u64 = 0xF800_0000_0000_0000;
    pub const GETLOG: u64 = 0xF801_0000_0000_0000;
    pub const CLEARLOG: u64 = 0xF802_0000_0000_0000;
    pub const PUSH_NODE_FLAGS: u64 = 0xF900_0000_0000_0000;
    pub const RELOAD_NODES: u64 = 0xFA00_0000_0000_0000;
    pub const TAKEOVER_RUN: u64 = 0xFB00_0000_0000_0000;
    pub const REBALANCE_NODE: u64 = 0xFB01_0000_0000_0000;
    pub const DISABLE_TAKEOVER_RUNS: u64 = 0xFB03_0000_0000_0000;
    pub const DISABLE_RECOVERIES: u64 = 0xFB04_0000_0000_0000;
    pub const DISABLE_IP_CHECK: u64 = 0xFC00_0000_0000_0000;
    /// Ranges reserved by the top 8 bits.
    pub const PID_RANGE: u64 = 0x0000_0000_0000_0000;
    pub const SAMBA_NOTIFY: u64 = 0xFE00_0000_0000_0000;
    pub const SAMBA_RANGE: u64 = 0xFE00_0000_0000_0000;
    pub const NFSD_RANGE: u64 = 0xEE00_0000_0000_0000;
    pub const ISCSID_RANGE: u64 = 0xDE00_0000_0000_0000;
    pub const TOOL_RANGE: u64 = 0xCE00_0000_0000_0000;
    pub const CLIENT_RANGE: u64 = 0xBE00_0000_0000_0000;
    pub const TEST_RANGE: u64 = 0xAE00_0000_0000_0000;
    /// Mask selecting a srvid's 16-bit prefix (the recovery prefix is 16 bits).
    pub const PREFIX16_MASK: u64 = 0xFFFF_0000_0000_0000;
}

/// The payload of a message, typed by its srvid.
///
/// Well-known srvids carry CTDB structures; the recovery srvids carry
/// record buffers. Any other srvid belongs to the application that
/// registered it, whose bytes are [`MessageData::Data`] (traverse clients
/// decode theirs with [`RecData`]).
#[derive(Debug, Clone, PartialEq)]
pub enum MessageData {
    Banning(u32),
    Election(ElectionMessage),
    Leader(u32),
    Reconfigure,
    ReleaseIp(String),
    TakeIp(String),
    SetNodeFlags(NodeFlagChange),
    RecdUpdateIp(PublicIp),
    VacuumFetch(RecBuffer),
    DetachDatabase(u32),
    MemDump(SrvidMessage),
    GetLog,
    ClearLog,
    PushNodeFlags(NodeFlagChange),
    ReloadNodes,
    TakeoverRun(SrvidMessage),
    RebalanceNode(u32),
    DisableTakeoverRuns(DisableMessage),
    DisableRecoveries(DisableMessage),
    DisableIpCheck(u32),
    /// A chunk of records during recovery (srvid prefix `RECOVERY`).
    RecoveryRecords(RecBuffer),
    /// Application data on any other srvid.
    Data(Vec<u8>),
}

fn pull_as<T: Marshal>(
    buf: &[u8],
    f: impl FnOnce(T) -> MessageData,
) -> Result<(MessageData, usize)> {
    let (v, n) = T::pull(buf)?;
    Ok((f(v), n))
}

impl MessageData {
    /// Size of the encoding.
    pub fn data_len(&self) -> usize {
        use MessageData::*;
        match self {
            Banning(v) | Leader(v) | DetachDatabase(v) | RebalanceNode(v) | DisableIpCheck(v) => {
                v.len()
            }
            Election(m) => m.len(),
            Reconfigure | GetLog | ClearLog | ReloadNodes => 0,
            ReleaseIp(s) | TakeIp(s) => Marshal::len(s),
            SetNodeFlags(f) | PushNodeFlags(f) => f.len(),
            RecdUpdateIp(ip) => ip.len(),
            VacuumFetch(b) | RecoveryRecords(b) => b.len(),
            MemDump(m) | TakeoverRun(m) => m.len(),
            DisableTakeoverRuns(m) | DisableRecoveries(m) => m.len(),
            Data(d) => d.len(),
        }
    }

    /// Writes the encoding; returns its size.
    pub fn push_data(&self, buf: &mut [u8]) -> usize {
        use MessageData::*;
        match self {
            Banning(v) | Leader(v) | DetachDatabase(v) | RebalanceNode(v) | DisableIpCheck(v) => {
                v.push(buf)
            }
            Election(m) => m.push(buf),
            Reconfigure | GetLog | ClearLog | ReloadNodes => 0,
            ReleaseIp(s) | TakeIp(s) => s.push(buf),
            SetNodeFlags(f) | PushNodeFlags(f) => f.push(buf),
            RecdUpdateIp(ip) => ip.push(buf),
            VacuumFetch(b) | RecoveryRecords(b) => b.push(buf),
            MemDump(m) | TakeoverRun(m) => m.push(buf),
            DisableTakeoverRuns(m) | DisableRecoveries(m) => m.push(buf),
            Data(d) => {
                buf[..d.len()].copy_from_slice(d);
                d.len()
            }
        }
    }

    /// Decodes the payload of a message sent to `srvid`.
    pub fn pull_data(id: u64, buf: &[u8]) -> Result<(Self, usize)> {
        use MessageData::*;
        match id {
            srvid::BANNING => pull_as(buf, Banning),
            srvid::ELECTION => pull_as(buf, Election),
            srvid::LEADER => pull_as(buf, Leader),
            srvid::RECONFIGURE => Ok((Reconfigure, 0)),
            srvid::RELEASE_IP => pull_as(buf, ReleaseIp),
            srvid::TAKE_IP => pull_as(buf, TakeIp),
            srvid::SET_NODE_FLAGS => pull_as(buf, SetNodeFlags),
            srvid::RECD_UPDATE_IP => pull_as(buf, RecdUpdateIp),
            srvid::VACUUM_FETCH => pull_as(buf, VacuumFetch),
            srvid::DETACH_DATABASE => pull_as(buf, DetachDatabase),
            srvid::MEM_DUMP => pull_as(buf, MemDump),
            srvid::GETLOG => Ok((GetLog, 0)),
            srvid::CLEARLOG => Ok((ClearLog, 0)),
            srvid::PUSH_NODE_FLAGS => pull_as(buf, PushNodeFlags),
            srvid::RELOAD_NODES => Ok((ReloadNodes, 0)),
            srvid::TAKEOVER_RUN => pull_as(buf, TakeoverRun),
            srvid::REBALANCE_NODE => pull_as(buf, RebalanceNode),
            srvid::DISABLE_TAKEOVER_RUNS => pull_as(buf, DisableTakeoverRuns),
            srvid::DISABLE_RECOVERIES => pull_as(buf, DisableRecoveries),
            srvid::DISABLE_IP_CHECK => pull_as(buf, DisableIpCheck),
            id if id & srvid::PREFIX16_MASK == srvid::RECOVERY => pull_as(buf, RecoveryRecords),
            _ => Ok((Data(buf.to_vec()), buf.len())),
        }
    }
}

/// `ctdb_req_message`: deliver `data` to whoever registered `srvid`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReqMessage {
    pub srvid: u64,
    pub data: MessageData,
}

impl ReqMessage {
    /// A message with application bytes.
    pub fn data(srvid: u64, data: Vec<u8>) -> Self {
        ReqMessage {
            srvid,
            data: MessageData::Data(data),
        }
    }

    /// Reads the srvid of an encoded message without decoding the rest.
    pub fn peek_srvid(body: &[u8]) -> Result<u64> {
        Reader::new(body).u64("message srvid")
    }

    /// The raw payload of an encoded message, without typing it.
    pub fn raw_payload(body: &[u8]) -> Result<(u64, &[u8])> {
        let mut r = Reader::new(body);
        let id = r.u64("message srvid")?;
        let n = r.u32("message data length")? as usize;
        Ok((id, r.bytes(n, "message data")?))
    }
}

impl Marshal for ReqMessage {
    fn len(&self) -> usize {
        12 + self.data.data_len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let dlen = self.data.data_len();
        let mut w = Writer::new(buf);
        w.u64(self.srvid);
        w.u32(wire_u32(dlen));
        let pos = w.pos();
        pos + self.data.push_data(&mut buf[pos..])
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let (id, payload) = ReqMessage::raw_payload(buf)?;
        let (data, n) = MessageData::pull_data(id, payload)?;
        if n != payload.len() {
            return Err(crate::Error::Inconsistent {
                what: "message data",
                declared: payload.len(),
                actual: n,
            });
        }
        Ok((ReqMessage { srvid: id, data }, 12 + payload.len()))
    }
}
