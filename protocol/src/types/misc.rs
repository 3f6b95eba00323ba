//! The remaining small structures: notify and echo data, pid/srvid pairs,
//! event-script status, g_lock records, and the messages the leader and the
//! admin tool exchange.

use super::Timeval;
use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer, datan_len, wire_u32};

/// `ctdb_notify_data`: a srvid and data to send to it when the registering
/// client disconnects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifyData {
    pub srvid: u64,
    pub data: Vec<u8>,
}

impl Marshal for NotifyData {
    fn len(&self) -> usize {
        8 + datan_len(&self.data)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.srvid);
        w.datan(&self.data);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let srvid = r.u64("notify srvid")?;
        let data = r.datan("notify data")?;
        Ok((NotifyData { srvid, data }, r.pos()))
    }
}

/// `ctdb_echo_data`: `ECHO_DATA` replies with the same bytes after
/// `timeout` milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EchoData {
    pub timeout: u32,
    pub buf: Vec<u8>,
}

impl Marshal for EchoData {
    fn len(&self) -> usize {
        4 + datan_len(&self.buf)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.timeout);
        w.datan(&self.buf);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let timeout = r.u32("echo timeout")?;
        let data = r.datan("echo data")?;
        Ok((EchoData { timeout, buf: data }, r.pos()))
    }
}

/// `ctdb_pid_srvid`: a process id (4 bytes) and a srvid (8), unpadded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PidSrvid {
    pub pid: i32,
    pub srvid: u64,
}

impl Marshal for PidSrvid {
    fn len(&self) -> usize {
        12
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i32(self.pid);
        w.u64(self.srvid);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pid = r.i32("pid_srvid pid")?;
        let srvid = r.u64("pid_srvid srvid")?;
        Ok((PidSrvid { pid, srvid }, r.pos()))
    }
}

/// Size of an event script name array.
pub const MAX_SCRIPT_NAME: usize = 32;
/// Size of an event script output array.
pub const MAX_SCRIPT_OUTPUT: usize = 512;

/// `ctdb_script`: one event script run (obsolete status control only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Script {
    pub name: String,
    pub start: Timeval,
    pub finished: Timeval,
    pub status: i32,
    pub output: String,
}

impl Marshal for Script {
    fn len(&self) -> usize {
        MAX_SCRIPT_NAME + 2 * Timeval::WIRE_SIZE + 4 + MAX_SCRIPT_OUTPUT + 4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.chararray(&self.name, MAX_SCRIPT_NAME);
        w.put(&self.start);
        w.put(&self.finished);
        w.i32(self.status);
        w.chararray(&self.output, MAX_SCRIPT_OUTPUT);
        w.pad(4);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let name = r.chararray(MAX_SCRIPT_NAME, "script name")?;
        let start = r.get()?;
        let finished = r.get()?;
        let status = r.i32("script status")?;
        let output = r.chararray(MAX_SCRIPT_OUTPUT, "script output")?;
        r.pad(4, "script padding")?;
        Ok((
            Script {
                name,
                start,
                finished,
                status,
                output,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_script_list`: a count, 4 bytes of padding, the scripts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScriptList {
    pub scripts: Vec<Script>,
}

impl Marshal for ScriptList {
    fn len(&self) -> usize {
        8 + self.scripts.iter().map(|s| s.len()).sum::<usize>()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(wire_u32(self.scripts.len()));
        w.pad(4);
        for s in &self.scripts {
            w.put(s);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let n = r.u32("script list count")? as usize;
        r.pad(4, "script list padding")?;
        r.check_count(n, 584, "script list count")?;
        let mut scripts = Vec::with_capacity(n);
        for _ in 0..n {
            scripts.push(r.get()?);
        }
        Ok((ScriptList { scripts }, r.pos()))
    }
}

/// `ctdb_server_id` (Samba's `server_id`): who holds a g_lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServerId {
    pub pid: u64,
    pub task_id: u32,
    pub vnn: u32,
    pub unique_id: u64,
}

impl Marshal for ServerId {
    fn len(&self) -> usize {
        24
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.pid);
        w.u32(self.task_id);
        w.u32(self.vnn);
        w.u64(self.unique_id);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        Ok((
            ServerId {
                pid: r.u64("server_id pid")?,
                task_id: r.u32("server_id task_id")?,
                vnn: r.u32("server_id vnn")?,
                unique_id: r.u64("server_id unique_id")?,
            },
            r.pos(),
        ))
    }
}

/// A g_lock holder's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GLockType {
    #[default]
    Read,
    Write,
}

/// `ctdb_g_lock`: one holder of a global lock (type, padding, holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GLock {
    pub kind: GLockType,
    pub sid: ServerId,
}

impl GLock {
    pub const WIRE_SIZE: usize = 32;
}

impl Marshal for GLock {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(match self.kind {
            GLockType::Read => 0,
            GLockType::Write => 1,
        });
        w.pad(4);
        w.put(&self.sid);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let kind = match r.u32("g_lock type")? {
            0 => GLockType::Read,
            1 => GLockType::Write,
            _ => {
                return Err(crate::Error::Invalid {
                    what: "g_lock type",
                    why: "neither read nor write",
                });
            }
        };
        r.pad(4, "g_lock padding")?;
        let sid = r.get()?;
        Ok((GLock { kind, sid }, r.pos()))
    }
}

/// `ctdb_g_lock_list`: the holders of a global lock, as stored in a
/// `g_lock.tdb` record. There is no count: the record holds as many
/// [`GLock`]s as fit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GLockList {
    pub locks: Vec<GLock>,
}

impl Marshal for GLockList {
    fn len(&self) -> usize {
        self.locks.len() * GLock::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        for l in &self.locks {
            w.put(l);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let n = buf.len() / GLock::WIRE_SIZE;
        let mut locks = Vec::with_capacity(n);
        for _ in 0..n {
            locks.push(r.get()?);
        }
        Ok((GLockList { locks }, r.pos()))
    }
}

/// `ctdb_election_message`: a node's bid in a leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ElectionMessage {
    pub num_connected: u32,
    pub priority_time: Timeval,
    pub pnn: u32,
    pub node_flags: u32,
}

impl Marshal for ElectionMessage {
    fn len(&self) -> usize {
        32
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.num_connected);
        w.pad(4);
        w.put(&self.priority_time);
        w.u32(self.pnn);
        w.u32(self.node_flags);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let num_connected = r.u32("election num_connected")?;
        r.pad(4, "election padding")?;
        let priority_time = r.get()?;
        let pnn = r.u32("election pnn")?;
        let node_flags = r.u32("election node_flags")?;
        Ok((
            ElectionMessage {
                num_connected,
                priority_time,
                pnn,
                node_flags,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_srvid_message`: "do this and reply to `srvid` on node `pnn`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SrvidMessage {
    pub pnn: u32,
    pub srvid: u64,
}

impl Marshal for SrvidMessage {
    fn len(&self) -> usize {
        16
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.pad(4);
        w.u64(self.srvid);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("srvid message pnn")?;
        r.pad(4, "srvid message padding")?;
        let srvid = r.u64("srvid message srvid")?;
        Ok((SrvidMessage { pnn, srvid }, r.pos()))
    }
}

/// `ctdb_disable_message`: disable takeover runs or recoveries for
/// `timeout` seconds, replying to `srvid` on node `pnn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisableMessage {
    pub pnn: u32,
    pub srvid: u64,
    pub timeout: u32,
}

impl Marshal for DisableMessage {
    fn len(&self) -> usize {
        24
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.pad(4);
        w.u64(self.srvid);
        w.u32(self.timeout);
        w.pad(4);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("disable message pnn")?;
        r.pad(4, "disable message padding")?;
        let srvid = r.u64("disable message srvid")?;
        let timeout = r.u32("disable message timeout")?;
        r.pad(4, "disable message padding")?;
        Ok((
            DisableMessage {
                pnn,
                srvid,
                timeout,
            },
            r.pos(),
        ))
    }
}
