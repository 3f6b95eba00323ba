//! Errors a client call can end in.

use ctdb_protocol::Opcode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ctdb_protocol::Error),
    #[error("connection to the daemon closed")]
    Disconnected,
    #[error("{what} timed out")]
    Timeout {
        what: String,
        /// The control that timed out, if it was a control.
        opcode: Option<Opcode>,
    },
    #[error("control {} failed on node {node} with status {status}{}", opcode.name(), errmsg.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    ControlFailed {
        opcode: Opcode,
        node: u32,
        status: i32,
        errmsg: Option<String>,
    },
    #[error("unexpected reply to control {}", .0.name())]
    UnexpectedReply(Opcode),
    #[error("call failed with status {status}: {msg}")]
    CallFailed { status: i32, msg: String },
    /// A `DB_WAIT_SEQNUM` ([`crate::db::seqwait`]) ended at its deadline
    /// without the database reaching the point.
    #[error("waiting on node {node} timed out: {msg}")]
    WaitTimedOut { node: u32, msg: String },
    /// The node does not know a ctdb-rs extension control (a CTDB 4.17
    /// daemon answers unknown controls with status -1 and no message).
    #[error(
        "node {node} does not support {what} (a ctdb-rs extension; CTDB 4.17 daemons answer it with status {status})"
    )]
    NotSupported {
        node: u32,
        what: &'static str,
        status: i32,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;
