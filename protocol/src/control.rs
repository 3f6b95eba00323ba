//! Controls: `REQ_CONTROL` and `REPLY_CONTROL`, and the typed payload of
//! every control CTDB 4.17 defines and has not marked obsolete.
//!
//! The table at the bottom of this file is the whole mapping: opcode number,
//! request payload type, reply payload type. A reply does not carry its
//! opcode, so decoding one needs the opcode of the request it answers.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, cstrn_len, wire_u32};
use crate::types::*;

/// Control flag: the sender wants no reply.
pub const CTDB_CTRL_FLAG_NOREPLY: u32 = 0x0000_0001;
/// Bits of the flags whose meaning depends on the opcode.
pub const CTDB_CTRL_FLAG_OPCODE_SPECIFIC: u32 = 0xFFFF_0000;
/// `GET_PUBLIC_IPS`: only addresses this node can host.
pub const CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE: u32 = 0x0001_0000;
/// `DB_ATTACH*`: the attach is part of a recovery.
pub const CTDB_CTRL_FLAG_ATTACH_RECOVERY: u32 = 0x0002_0000;

/// The name of a tunable as `GET_TUNABLE` carries it: a length-prefixed
/// string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunableName(pub String);

impl Marshal for TunableName {
    fn len(&self) -> usize {
        cstrn_len(Some(&self.0))
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.cstrn(Some(&self.0));
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let s = r.cstrn("tunable name")?.unwrap_or_default();
        Ok((TunableName(s), r.pos()))
    }
}

/// Expands to the pattern for one payload variant, binding the payload to
/// `$v` when there is one.
macro_rules! payload_pat {
    ($enum:ident, $name:ident, $v:ident) => {
        $enum::$name
    };
    ($enum:ident, $name:ident, $v:ident, $t:ty) => {
        $enum::$name($v)
    };
}

macro_rules! payload_len {
    ($v:ident) => {
        0
    };
    ($v:ident, $t:ty) => {
        Marshal::len($v)
    };
}

macro_rules! payload_push {
    ($v:ident, $buf:ident) => {
        0
    };
    ($v:ident, $buf:ident, $t:ty) => {
        Marshal::push($v, $buf)
    };
}

#[cfg(any(test, feature = "random"))]
macro_rules! payload_random {
    ($enum:ident, $name:ident, $r:ident) => {
        $enum::$name
    };
    ($enum:ident, $name:ident, $r:ident, $t:ty) => {
        $enum::$name(<$t as crate::random::Random>::random($r))
    };
}

macro_rules! payload_pull {
    ($enum:ident, $name:ident, $buf:ident) => {
        ($enum::$name, 0)
    };
    ($enum:ident, $name:ident, $buf:ident, $t:ty) => {{
        let (v, n) = <$t as Marshal>::pull($buf)?;
        ($enum::$name(v), n)
    }};
}

/// Declares [`Opcode`], [`ControlRequest`] and [`ControlReply`] from one
/// table of `Name = number, [request type], [reply type]`; an empty bracket
/// means the control carries no data in that direction.
macro_rules! controls {
    ($($name:ident = $num:literal, [$($rq:ty)?], [$($rp:ty)?];)*) => {
        /// A control opcode (`ctdb_controls`), without the obsolete ones.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum Opcode {
            $($name = $num,)*
        }

        impl Opcode {
            /// Every opcode, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            pub fn from_u32(v: u32) -> Result<Self> {
                match v {
                    $($num => Ok(Opcode::$name),)*
                    _ => Err(Error::UnknownOpcode(v)),
                }
            }

            /// The name CTDB uses, without its `CTDB_CONTROL_` prefix.
            pub fn name(self) -> &'static str {
                match self {
                    $(Opcode::$name => stringify!($name),)*
                }
            }
        }

        /// The typed data of a control request.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ControlRequest {
            $($name $(($rq))?,)*
        }

        impl ControlRequest {
            pub fn opcode(&self) -> Opcode {
                match self {
                    $(payload_pat!(ControlRequest, $name, _v $(, $rq)?) => Opcode::$name,)*
                }
            }

            /// Size of the request data.
            pub fn data_len(&self) -> usize {
                match self {
                    $(payload_pat!(ControlRequest, $name, v $(, $rq)?) => payload_len!(v $(, $rq)?),)*
                }
            }

            /// Writes the request data; returns its size.
            pub fn push_data(&self, buf: &mut [u8]) -> usize {
                match self {
                    $(payload_pat!(ControlRequest, $name, v $(, $rq)?) => payload_push!(v, buf $(, $rq)?),)*
                }
            }

            /// Decodes request data for `opcode` from the front of `buf`.
            pub fn pull_data(opcode: Opcode, buf: &[u8]) -> Result<(Self, usize)> {
                Ok(match opcode {
                    $(Opcode::$name => payload_pull!(ControlRequest, $name, buf $(, $rq)?),)*
                })
            }

            /// Random request data for `opcode`.
            #[cfg(any(test, feature = "random"))]
            pub fn random_for(opcode: Opcode, r: &mut crate::random::Rng) -> Self {
                match opcode {
                    $(Opcode::$name => payload_random!(ControlRequest, $name, r $(, $rq)?),)*
                }
            }
        }

        /// The typed data of a successful control reply.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ControlReply {
            $($name $(($rp))?,)*
        }

        impl ControlReply {
            pub fn opcode(&self) -> Opcode {
                match self {
                    $(payload_pat!(ControlReply, $name, _v $(, $rp)?) => Opcode::$name,)*
                }
            }

            /// Size of the reply data.
            pub fn data_len(&self) -> usize {
                match self {
                    $(payload_pat!(ControlReply, $name, v $(, $rp)?) => payload_len!(v $(, $rp)?),)*
                }
            }

            /// Writes the reply data; returns its size.
            pub fn push_data(&self, buf: &mut [u8]) -> usize {
                match self {
                    $(payload_pat!(ControlReply, $name, v $(, $rp)?) => payload_push!(v, buf $(, $rp)?),)*
                }
            }

            /// Decodes reply data for `opcode` from the front of `buf`.
            pub fn pull_data(opcode: Opcode, buf: &[u8]) -> Result<(Self, usize)> {
                Ok(match opcode {
                    $(Opcode::$name => payload_pull!(ControlReply, $name, buf $(, $rp)?),)*
                })
            }

            /// Random reply data for `opcode`.
            #[cfg(any(test, feature = "random"))]
            pub fn random_for(opcode: Opcode, r: &mut crate::random::Rng) -> Self {
                match opcode {
                    $(Opcode::$name => payload_random!(ControlReply, $name, r $(, $rp)?),)*
                }
            }
        }
    };
}

controls! {
    ProcessExists = 0, [i32], [];
    Statistics = 1, [], [Box<Statistics>];
    Ping = 3, [], [];
    GetDbPath = 4, [u32], [String];
    GetVnnMap = 5, [], [VnnMap];
    SetVnnMap = 6, [VnnMap], [];
    GetDebug = 7, [], [u32];
    SetDebug = 8, [u32], [];
    GetDbMap = 9, [], [DbidMap];
    GetRecmode = 15, [], [];
    SetRecmode = 16, [u32], [];
    StatisticsReset = 17, [], [];
    DbAttach = 18, [String], [u32];
    TraverseStart = 20, [TraverseStart], [];
    TraverseAll = 21, [TraverseAll], [];
    TraverseData = 22, [RecData], [];
    RegisterSrvid = 23, [], [];
    DeregisterSrvid = 24, [], [];
    GetDbName = 25, [u32], [String];
    EnableSeqnum = 26, [u32], [];
    UpdateSeqnum = 27, [u32], [];
    DumpMemory = 29, [], [String];
    GetPid = 30, [], [];
    Freeze = 33, [], [];
    GetPnn = 35, [], [];
    Shutdown = 36, [], [];
    TcpClient = 44, [Connection], [];
    TcpAdd = 45, [Connection], [];
    TcpRemove = 46, [Connection], [];
    Startup = 47, [], [];
    SetTunable = 48, [Tunable], [];
    GetTunable = 49, [TunableName], [u32];
    ListTunables = 50, [], [VarList];
    ModifyFlags = 52, [NodeFlagChange], [];
    GetAllTunables = 53, [], [Box<TunableList>];
    GetTcpTickleList = 55, [SockAddr], [TickleList];
    SetTcpTickleList = 56, [TickleList], [];
    DbAttachPersistent = 61, [String], [u32];
    UpdateRecord = 63, [RecBuffer], [];
    SendGratuitousArp = 64, [AddrInfo], [];
    WipeDatabase = 67, [TransDb], [];
    Uptime = 69, [], [Uptime];
    StartRecovery = 70, [], [];
    EndRecovery = 71, [], [];
    ReloadNodesFile = 72, [], [];
    TryDeleteRecords = 74, [RecBuffer], [RecBuffer];
    AddPublicIp = 77, [AddrInfo], [];
    DelPublicIp = 78, [AddrInfo], [];
    GetCapabilities = 80, [], [u32];
    RecdPing = 87, [], [];
    ReleaseIp = 88, [PublicIp], [];
    TakeoverIp = 89, [PublicIp], [];
    GetPublicIps = 90, [], [PublicIpList];
    GetNodemap = 91, [], [NodeMap];
    TraverseKill = 97, [TraverseStart], [];
    RecdReclockLatency = 98, [f64], [];
    GetReclockFile = 99, [], [Option<String>];
    StopNode = 101, [], [];
    ContinueNode = 102, [], [];
    SetLmasterRole = 104, [u32], [];
    SetRecmasterRole = 105, [u32], [];
    SetBanState = 109, [BanState], [];
    GetBanState = 110, [], [BanState];
    RegisterNotify = 114, [NotifyData], [];
    DeregisterNotify = 115, [u64], [];
    Trans3Commit = 119, [RecBuffer], [];
    GetDbSeqnum = 120, [DbSeqnumRequest], [u64];
    DbSetHealthy = 121, [u32], [];
    DbGetHealth = 122, [u32], [Option<String>];
    GetPublicIpInfo = 123, [SockAddr], [PublicIpInfo];
    GetIfaces = 124, [], [IfaceList];
    SetIfaceLinkState = 125, [Iface], [];
    TcpAddDelayedUpdate = 126, [Connection], [];
    GetStatHistory = 127, [], [StatisticsList];
    ScheduleForDeletion = 128, [KeyData], [];
    SetDbReadonly = 129, [u32], [];
    TraverseStartExt = 131, [TraverseStartExt], [];
    GetDbStatistics = 132, [u32], [Box<DbStatistics>];
    SetDbSticky = 133, [u32], [];
    ReloadPublicIps = 134, [], [];
    TraverseAllExt = 135, [TraverseAllExt], [];
    Ipreallocated = 137, [], [];
    GetRunstate = 138, [], [Runstate];
    DbDetach = 139, [u32], [];
    GetNodesFile = 140, [], [NodeMap];
    DbFreeze = 141, [u32], [];
    DbThaw = 142, [u32], [];
    DbTransactionStart = 143, [TransDb], [];
    DbTransactionCommit = 144, [TransDb], [];
    DbTransactionCancel = 145, [u32], [];
    DbPull = 146, [PullDbExt], [u32];
    DbPushStart = 147, [PullDbExt], [];
    DbPushConfirm = 148, [u32], [u32];
    DbOpenFlags = 149, [u32], [i32];
    DbAttachReplicated = 150, [String], [u32];
    CheckPidSrvid = 151, [PidSrvid], [];
    TunnelRegister = 152, [], [];
    TunnelDeregister = 153, [], [];
    VacuumFetch = 154, [RecBuffer], [];
    DbVacuum = 155, [DbVacuum], [];
    EchoData = 156, [EchoData], [EchoData];
    DisableNode = 157, [], [];
    EnableNode = 158, [], [];
    // ctdb-rs extensions, numbered far from CTDB's own opcodes.
    DbAttachExt = 0x5253_0001, [DbAttachExt], [u32];
    // Incremental catch-up of persistent databases (issue 21).
    DbChangelogInfo = 0x5253_0010, [u32], [Box<ChangelogInfo>];
    DbChangesPull = 0x5253_0011, [ChangesPull], [ChangesChunk];
    // Partially replicated volatile databases (issue 21, types/replica.rs).
    DbSyncRecord = 0x5253_0020, [KeyData], [u32];
    DbReplicaStore = 0x5253_0021, [ReplicaStore], [];
    DbReplicaStatus = 0x5253_0022, [u32], [Box<ReplicaStatus>];
    // Read-your-writes (issue 21): answered once a database reached a point.
    DbWaitSeqnum = 0x5253_0030, [DbWaitSeqnum], [u64];
}

/// Decodes exactly `buf` as a payload: the payload must use every byte.
fn pull_exact<T>(
    buf: &[u8],
    what: &'static str,
    pull: impl FnOnce(&[u8]) -> Result<(T, usize)>,
) -> Result<T> {
    let (v, n) = pull(buf)?;
    if n != buf.len() {
        return Err(Error::Inconsistent {
            what,
            declared: buf.len(),
            actual: n,
        });
    }
    Ok(v)
}

/// `ctdb_req_control`: the body of a `REQ_CONTROL` packet.
///
/// On the wire: opcode, 4 bytes of padding, srvid, client id, flags, data
/// length, data. `srvid` is the srvid for `REGISTER_SRVID` and
/// `DEREGISTER_SRVID` and otherwise 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ReqControl {
    pub srvid: u64,
    pub client_id: u32,
    pub flags: u32,
    pub data: ControlRequest,
}

const REQ_CONTROL_FIXED: usize = 28;

impl ReqControl {
    pub fn new(data: ControlRequest) -> Self {
        ReqControl {
            srvid: 0,
            client_id: 0,
            flags: 0,
            data,
        }
    }

    pub fn opcode(&self) -> Opcode {
        self.data.opcode()
    }

    /// Reads the opcode of an encoded request without decoding the rest.
    pub fn peek_opcode(body: &[u8]) -> Result<u32> {
        Reader::new(body).u32("control opcode")
    }
}

impl Marshal for ReqControl {
    fn len(&self) -> usize {
        REQ_CONTROL_FIXED + self.data.data_len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let dlen = self.data.data_len();
        let mut w = Writer::new(buf);
        w.u32(self.opcode() as u32);
        w.pad(4);
        w.u64(self.srvid);
        w.u32(self.client_id);
        w.u32(self.flags);
        w.u32(wire_u32(dlen));
        let pos = w.pos();
        let n = self.data.push_data(&mut buf[pos..]);
        debug_assert_eq!(n, dlen);
        pos + n
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let opcode = Opcode::from_u32(r.u32("control opcode")?)?;
        r.pad(4, "control padding")?;
        let srvid = r.u64("control srvid")?;
        let client_id = r.u32("control client_id")?;
        let flags = r.u32("control flags")?;
        let dlen = r.u32("control data length")? as usize;
        let body = r.bytes(dlen, "control data")?;
        let data = pull_exact(body, "control data", |b| {
            ControlRequest::pull_data(opcode, b)
        })?;
        Ok((
            ReqControl {
                srvid,
                client_id,
                flags,
                data,
            },
            r.pos(),
        ))
    }
}

/// Bytes of an error message on the wire: CTDB's daemon sends the text
/// without a terminating NUL (its length is `strlen`), and so do we.
fn errmsg_len(m: &Option<String>) -> usize {
    m.as_ref().map_or(0, String::len)
}

/// An error message is read up to a NUL or the end of its region, so both
/// the daemon's unterminated form and the client library's terminated one
/// are understood.
fn errmsg_pull(b: &[u8]) -> Result<Option<String>> {
    if b.is_empty() {
        return Ok(None);
    }
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end])
        .map(|s| Some(s.to_owned()))
        .map_err(|_| Error::Invalid {
            what: "reply errmsg",
            why: "not UTF-8",
        })
}

/// `ctdb_reply_control`: the body of a `REPLY_CONTROL` packet.
///
/// On the wire: status, data length, error-message length, data, error
/// message. `data` is present when the reply carries data; a successful
/// reply always does (for controls without reply data it is the empty
/// variant), a failed one usually does not. Many controls return their
/// answer in `status` itself (`GET_PNN`, `GET_PID`, `GET_RECMODE`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyControl {
    pub status: i32,
    pub data: Option<ControlReply>,
    pub errmsg: Option<String>,
}

const REPLY_CONTROL_FIXED: usize = 12;

impl ReplyControl {
    /// A successful reply carrying `data`.
    pub fn ok(data: ControlReply) -> Self {
        ReplyControl {
            status: 0,
            data: Some(data),
            errmsg: None,
        }
    }

    /// A reply whose answer is its status and that carries no data.
    pub fn status(status: i32) -> Self {
        ReplyControl {
            status,
            data: None,
            errmsg: None,
        }
    }

    /// A failed reply with a message.
    pub fn error(status: i32, msg: impl Into<String>) -> Self {
        ReplyControl {
            status,
            data: None,
            errmsg: Some(msg.into()),
        }
    }

    /// Decodes a reply to a request with `opcode`.
    pub fn pull_for(opcode: Opcode, buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let status = r.i32("reply status")?;
        let dlen = r.u32("reply data length")? as usize;
        let elen = r.u32("reply errmsg length")? as usize;
        let body = r.bytes(dlen, "reply data")?;
        let data = if dlen > 0 || status == 0 {
            Some(pull_exact(body, "reply data", |b| {
                ControlReply::pull_data(opcode, b)
            })?)
        } else {
            None
        };
        let errmsg = errmsg_pull(r.bytes(elen, "reply errmsg")?)?;
        Ok((
            ReplyControl {
                status,
                data,
                errmsg,
            },
            r.pos(),
        ))
    }

    /// Size of the encoding.
    pub fn len(&self) -> usize {
        REPLY_CONTROL_FIXED
            + self.data.as_ref().map_or(0, ControlReply::data_len)
            + errmsg_len(&self.errmsg)
    }

    /// Never true: a reply has at least its fixed fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the encoding; returns its size.
    pub fn push(&self, buf: &mut [u8]) -> usize {
        let dlen = self.data.as_ref().map_or(0, ControlReply::data_len);
        let mut w = Writer::new(buf);
        w.i32(self.status);
        w.u32(wire_u32(dlen));
        w.u32(wire_u32(errmsg_len(&self.errmsg)));
        let pos = w.pos();
        let n = match &self.data {
            Some(d) => d.push_data(&mut buf[pos..]),
            None => 0,
        };
        let mut w = Writer::new(&mut buf[pos + n..]);
        if let Some(m) = &self.errmsg {
            w.bytes(m.as_bytes());
        }
        pos + n + w.pos()
    }
}
