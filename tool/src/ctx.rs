//! A connected tool run: the client, which node the command is for, the
//! node map as far as it was fetched, and the leader as last announced.
//!
//! Controls go through [`Ctx::ctrl`], which reports failures on stderr the
//! way CTDB's client library does (`Control GET_NODEMAP failed, ret=-1`) and
//! returns the failure as the errno-like code the command exits with.

use std::time::Duration;

use ctdb_client::{Client, ClientError, Message};
use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{NodeAndFlags, NodeMap, node_flags};
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReplyControl, ReqControl};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::options::Options;

/// `ETIMEDOUT`.
pub const ETIMEDOUT: i32 = 110;

/// The srvids the tool allocates from (`SRVID_CTDB_TOOL`).
pub const SRVID_CTDB_TOOL: u64 = srvid::TOOL_RANGE | 0x0001_0000_0000_0000;
/// The srvid `restoredb` pushes records on (`SRVID_CTDB_PUSHDB`).
pub const SRVID_CTDB_PUSHDB: u64 = srvid::TOOL_RANGE | 0x0002_0000_0000_0000;

/// The name CTDB's client library uses for a control in its messages.
pub fn ctrl_name(op: Opcode) -> String {
    match op {
        Opcode::GetDbPath => return "GETDBPATH".into(),
        Opcode::GetVnnMap => return "GETVNNMAP".into(),
        Opcode::GetDbMap => return "GET_DBMAP".into(),
        Opcode::GetDbName => return "GET_DBNAME".into(),
        Opcode::SetDbReadonly => return "SET_DB_READONY".into(),
        Opcode::SetLmasterRole => return "SET_LMASTERROLE".into(),
        Opcode::SetRecmasterRole => return "SET_RECMASTERROLE".into(),
        _ => {}
    }
    let mut s = String::new();
    let name = op.name();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

/// Reports a client-library error as CTDB's library would and turns it
/// into an exit code.
pub fn report(e: &ClientError, op: Opcode, dest: u32) -> i32 {
    match e {
        ClientError::Timeout { .. } => {
            eprintln!(
                "Control {} failed to node {dest}, ret={ETIMEDOUT}",
                ctrl_name(op)
            );
            ETIMEDOUT
        }
        ClientError::ControlFailed { opcode, status, .. } => {
            eprintln!("Control {} failed, ret={status}", ctrl_name(*opcode));
            *status
        }
        ClientError::Disconnected => disconnected(),
        other => {
            eprintln!("{other}");
            1
        }
    }
}

/// The daemon went away: CTDB's client library exits at once.
pub fn disconnected() -> ! {
    crate::limit::wait_if_fired();
    std::process::exit(1)
}

/// Why a quiet control failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlError {
    Transport(i32),
    Status(i32),
}

impl CtrlError {
    pub fn code(self) -> i32 {
        match self {
            CtrlError::Transport(e) | CtrlError::Status(e) => e,
        }
    }
}

/// A tool run against a daemon.
pub struct Ctx {
    pub opts: Options,
    pub client: Client,
    /// The node the tool is connected to.
    pub pnn: u32,
    /// The node the command is for (`-n`, else `pnn`).
    pub cmd_pnn: u32,
    nodemap: Option<NodeMap>,
    leader: u32,
    leader_rx: Option<UnboundedReceiver<Message>>,
    srvid: u64,
}

impl Ctx {
    pub fn new(opts: Options, client: Client) -> Ctx {
        let pnn = client.pnn();
        let offset = (std::process::id() as u64) & 0xFFFF;
        Ctx {
            opts,
            client,
            pnn,
            cmd_pnn: pnn,
            nodemap: None,
            leader: CTDB_UNKNOWN_PNN,
            leader_rx: None,
            srvid: SRVID_CTDB_TOOL | (offset << 16),
        }
    }

    /// The control timeout (`-t`).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.opts.timelimit.max(0) as u64)
    }

    /// A fresh srvid for a reply.
    pub fn next_srvid(&mut self) -> u64 {
        self.srvid += 1;
        self.srvid
    }

    /// Sends a control and returns its reply data; on failure prints what
    /// CTDB's library prints and returns the error code.
    pub async fn ctrl(&self, dest: u32, req: ControlRequest) -> Result<Option<ControlReply>, i32> {
        self.ctrl_flags(dest, req, 0).await
    }

    /// [`Ctx::ctrl`] with control flags.
    pub async fn ctrl_flags(
        &self,
        dest: u32,
        req: ControlRequest,
        flags: u32,
    ) -> Result<Option<ControlReply>, i32> {
        let mut rc = ReqControl::new(req);
        rc.flags = flags;
        self.ctrl_reply(dest, rc, |status| status == 0)
            .await
            .map(|r| r.data)
    }

    /// A control whose answer is its status: negative statuses are
    /// failures when `negative_fails`.
    pub async fn ctrl_status(
        &self,
        dest: u32,
        req: ControlRequest,
        negative_fails: bool,
    ) -> Result<i32, i32> {
        self.ctrl_reply(dest, ReqControl::new(req), |status| {
            status >= 0 || !negative_fails
        })
        .await
        .map(|r| r.status)
    }

    /// Sends `rc` to `dest`: its reply if `succeeded` says so of the
    /// reply's status; else the failure, printed as CTDB's library prints
    /// it, as its code.
    async fn ctrl_reply(
        &self,
        dest: u32,
        rc: ReqControl,
        succeeded: impl Fn(i32) -> bool,
    ) -> Result<ReplyControl, i32> {
        let op = rc.opcode();
        match self.client.control_raw(dest, rc).await {
            Ok(r) if succeeded(r.status) => Ok(r),
            Ok(r) => {
                eprintln!("Control {} failed, ret={}", ctrl_name(op), r.status);
                Err(r.status)
            }
            Err(ClientError::Timeout { .. }) => {
                eprintln!(
                    "Control {} failed to node {dest}, ret={ETIMEDOUT}",
                    ctrl_name(op)
                );
                Err(ETIMEDOUT)
            }
            Err(ClientError::Disconnected) => disconnected(),
            Err(e) => {
                eprintln!(
                    "Control {} failed to node {dest}, ret=-1 ({e})",
                    ctrl_name(op)
                );
                Err(-1)
            }
        }
    }

    /// Sends the same control to several nodes at once; the first failure
    /// (in node order) is the result, as CTDB's `control_multi` reports.
    pub async fn ctrl_multi(
        &self,
        nodes: &[u32],
        req: ControlRequest,
    ) -> Result<Vec<Option<ControlReply>>, i32> {
        let mut out = Vec::new();
        let mut err = None;
        for r in self.ctrl_each(nodes, req).await {
            match r {
                Ok(d) => out.push(d),
                Err(e) => {
                    err.get_or_insert(e.code());
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Sends the same control to several nodes at once, quietly; each
    /// node's result, in node order.
    pub async fn ctrl_each(
        &self,
        nodes: &[u32],
        req: ControlRequest,
    ) -> Vec<Result<Option<ControlReply>, CtrlError>> {
        let futs = nodes.iter().map(|&n| {
            let req = req.clone();
            async move { self.ctrl_quiet(n, req).await }
        });
        futures::future::join_all(futs).await
    }

    /// Sends a control without reporting failures: the error says whether
    /// the control could not be sent or answered (`Transport`) or the
    /// daemon answered with a failure status (`Status`).
    pub async fn ctrl_quiet(
        &self,
        dest: u32,
        req: ControlRequest,
    ) -> Result<Option<ControlReply>, CtrlError> {
        match self.client.control_raw(dest, ReqControl::new(req)).await {
            Ok(r) if r.status == 0 => Ok(r.data),
            Ok(r) => Err(CtrlError::Status(r.status)),
            Err(ClientError::Timeout { .. }) => Err(CtrlError::Transport(ETIMEDOUT)),
            Err(ClientError::Disconnected) => disconnected(),
            Err(_) => Err(CtrlError::Transport(-1)),
        }
    }

    /// Starts listening for leader announcements.
    pub async fn setup_leader_handler(&mut self) -> bool {
        match self.client.register_srvid(srvid::LEADER).await {
            Ok(rx) => {
                self.leader_rx = Some(rx);
                true
            }
            Err(_) => false,
        }
    }

    fn drain_leader(&mut self) {
        if let Some(rx) = self.leader_rx.as_mut() {
            while let Ok(m) = rx.try_recv() {
                if m.data.len() >= 4 {
                    self.leader = u32::from_le_bytes(m.data[..4].try_into().unwrap());
                }
            }
        }
    }

    /// The leader, waiting up to the timeout for an announcement;
    /// `CTDB_UNKNOWN_PNN` if none came.
    pub async fn get_leader(&mut self) -> u32 {
        self.drain_leader();
        if self.leader != CTDB_UNKNOWN_PNN {
            return self.leader;
        }
        let timeout = self.timeout();
        if let Some(rx) = self.leader_rx.as_mut() {
            let deadline = tokio::time::Instant::now() + timeout;
            while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if m.data.len() >= 4 {
                    self.leader = u32::from_le_bytes(m.data[..4].try_into().unwrap());
                    break;
                }
            }
        }
        self.leader
    }

    /// The node map, from the connected node unless it is banned, in which
    /// case from the next node that is not (as the reference does).
    pub async fn get_nodemap(&mut self, force: bool) -> Option<NodeMap> {
        if force {
            self.nodemap = None;
        }
        if let Some(m) = &self.nodemap {
            return Some(m.clone());
        }
        let mut current = self.pnn;
        loop {
            let m = match self.ctrl(current, ControlRequest::GetNodemap).await {
                Ok(Some(ControlReply::GetNodemap(m))) => m,
                _ => {
                    eprintln!("Failed to get nodemap from node {current}");
                    return None;
                }
            };
            let banned =
                node_by_pnn(&m, current).is_some_and(|n| n.flags & node_flags::BANNED != 0);
            if !banned {
                self.nodemap = Some(m.clone());
                return Some(m);
            }
            let num = m.nodes.len() as u32;
            loop {
                current = (current + 1) % num.max(1);
                let n = node_by_pnn(&m, current);
                if n.is_some_and(|n| {
                    n.flags & (node_flags::DELETED | node_flags::DISCONNECTED) == 0
                }) || current == self.pnn
                {
                    break;
                }
            }
            if current == self.pnn {
                eprintln!("Warning: All nodes are banned.");
                return None;
            }
        }
    }
}

/// The entry of node `pnn`.
pub fn node_by_pnn(m: &NodeMap, pnn: u32) -> Option<&NodeAndFlags> {
    m.nodes.iter().find(|n| n.pnn == pnn)
}

/// Nodes that are neither inactive nor deleted, except `except`.
pub fn active_nodes(m: &NodeMap, except: u32) -> Vec<u32> {
    m.nodes
        .iter()
        .filter(|n| n.flags & node_flags::INACTIVE == 0 && n.pnn != except)
        .map(|n| n.pnn)
        .collect()
}

/// Nodes that are not disconnected, except `except`.
pub fn connected_nodes(m: &NodeMap, except: u32) -> Vec<u32> {
    m.nodes
        .iter()
        .filter(|n| n.flags & node_flags::DISCONNECTED == 0 && n.pnn != except)
        .map(|n| n.pnn)
        .collect()
}
