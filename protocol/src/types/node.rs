//! Nodes: the node map and its flags, the vnn map, capabilities, bans and
//! run states.

use super::{SockAddr, counted_list};
use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, wire_u32};

/// Node flags, as carried in [`NodeAndFlags::flags`].
pub mod node_flags {
    /// The node is not connected to us.
    pub const DISCONNECTED: u32 = 0x0000_0001;
    /// Monitoring says the node is unhealthy.
    pub const UNHEALTHY: u32 = 0x0000_0002;
    /// An administrator disabled the node.
    pub const PERMANENTLY_DISABLED: u32 = 0x0000_0004;
    /// The node is banned.
    pub const BANNED: u32 = 0x0000_0008;
    /// The node is deleted from the nodes file.
    pub const DELETED: u32 = 0x0000_0010;
    /// An administrator stopped the node.
    pub const STOPPED: u32 = 0x0000_0020;
    /// Disabled for either reason.
    pub const DISABLED: u32 = UNHEALTHY | PERMANENTLY_DISABLED;
    /// Not taking part in the cluster.
    pub const INACTIVE: u32 = DELETED | DISCONNECTED | BANNED | STOPPED;
}

/// Node capabilities (`GET_CAPABILITIES`).
pub mod capabilities {
    /// The node may become leader (historically "recovery master").
    pub const RECMASTER: u32 = 0x0000_0001;
    /// The node may be lmaster for records.
    pub const LMASTER: u32 = 0x0000_0002;
    /// Obsolete LVS capability.
    pub const LVS: u32 = 0x0000_0004;
    /// Obsolete NAT gateway capability.
    pub const NATGW: u32 = 0x0000_0008;
    /// Supports per-database parallel recovery.
    pub const PARALLEL_RECOVERY: u32 = 0x0001_0000;
    /// Supports fragmented controls.
    pub const FRAGMENTED_CONTROLS: u32 = 0x0002_0000;
    pub const FEATURES: u32 = PARALLEL_RECOVERY | FRAGMENTED_CONTROLS;
    pub const DEFAULT: u32 = RECMASTER | LMASTER | FEATURES;
}

/// Recovery modes (`GET_RECMODE` / `SET_RECMODE`).
pub const CTDB_RECOVERY_NORMAL: u32 = 0;
pub const CTDB_RECOVERY_ACTIVE: u32 = 1;

/// `ctdb_node_and_flags`: one entry of the node map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeAndFlags {
    pub pnn: u32,
    pub flags: u32,
    pub addr: SockAddr,
}

impl Marshal for NodeAndFlags {
    fn len(&self) -> usize {
        8 + SockAddr::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.u32(self.flags);
        w.put(&self.addr);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("node pnn")?;
        let flags = r.u32("node flags")?;
        let addr = r.get()?;
        Ok((NodeAndFlags { pnn, flags, addr }, r.pos()))
    }
}

/// `ctdb_node_map`: every node with its flags (`GET_NODEMAP`,
/// `GET_NODES_FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeMap {
    pub nodes: Vec<NodeAndFlags>,
}
counted_list!(NodeMap, nodes, NodeAndFlags, 36, "node map");

/// `ctdb_node_flag_change`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeFlagChange {
    pub pnn: u32,
    pub new_flags: u32,
    pub old_flags: u32,
}

impl Marshal for NodeFlagChange {
    fn len(&self) -> usize {
        12
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.u32(self.new_flags);
        w.u32(self.old_flags);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("flag change pnn")?;
        let new_flags = r.u32("flag change new")?;
        let old_flags = r.u32("flag change old")?;
        Ok((
            NodeFlagChange {
                pnn,
                new_flags,
                old_flags,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_vnn_map`: the generation and the lmaster of each hash bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VnnMap {
    pub generation: u32,
    pub map: Vec<u32>,
}

impl Marshal for VnnMap {
    fn len(&self) -> usize {
        8 + 4 * self.map.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.generation);
        w.u32(wire_u32(self.map.len()));
        for &pnn in &self.map {
            w.u32(pnn);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let generation = r.u32("vnnmap generation")?;
        let n = r.count(4, "vnnmap size")?;
        let mut map = Vec::with_capacity(n);
        for _ in 0..n {
            map.push(r.u32("vnnmap entry")?);
        }
        Ok((VnnMap { generation, map }, r.pos()))
    }
}

/// `ctdb_ban_state`: ban a node for `time` seconds (0 lifts the ban).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BanState {
    pub pnn: u32,
    pub time: u32,
}

impl Marshal for BanState {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.pnn);
        w.u32(self.time);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let pnn = r.u32("ban pnn")?;
        let time = r.u32("ban time")?;
        Ok((BanState { pnn, time }, r.pos()))
    }
}

/// `ctdb_runstate`: where a daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u32)]
pub enum Runstate {
    #[default]
    Unknown = 0,
    Init = 1,
    Setup = 2,
    FirstRecovery = 3,
    Startup = 4,
    Running = 5,
    Shutdown = 6,
}

impl Runstate {
    pub fn from_u32(v: u32) -> Option<Self> {
        use Runstate::*;
        Some(match v {
            0 => Unknown,
            1 => Init,
            2 => Setup,
            3 => FirstRecovery,
            4 => Startup,
            5 => Running,
            6 => Shutdown,
            _ => return None,
        })
    }

    /// The name the `ctdb` tool prints.
    pub fn name(self) -> &'static str {
        use Runstate::*;
        match self {
            Unknown => "UNKNOWN",
            Init => "INIT",
            Setup => "SETUP",
            FirstRecovery => "FIRST_RECOVERY",
            Startup => "STARTUP",
            Running => "RUNNING",
            Shutdown => "SHUTDOWN",
        }
    }
}

impl Marshal for Runstate {
    fn len(&self) -> usize {
        4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        Writer::new(buf).u32(*self as u32);
        4
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let v = Reader::new(buf).u32("runstate")?;
        let s = Runstate::from_u32(v).ok_or(Error::Invalid {
            what: "runstate",
            why: "unknown run state",
        })?;
        Ok((s, 4))
    }
}
