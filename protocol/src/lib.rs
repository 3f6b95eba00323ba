//! CTDB protocol version 1, as CTDB 4.17 speaks it, with explicit
//! marshalling.
//!
//! Every wire type implements [`Marshal`]: `len` (bytes needed), `push`
//! (into a caller's buffer) and `pull` (from a byte slice, returning the
//! value and the bytes consumed). Layout, alignment and padding follow
//! CTDB's 64-bit Linux structures byte for byte; `pull` returns an
//! [`Error`] for anything that does not fit, and never panics.
//!
//! Where things are:
//!
//! * [`marshal`]: the trait and the reader/writer cursors;
//! * [`header`]: the 32-byte packet header and the operations;
//! * [`types`]: the structures carried by controls and messages;
//! * [`control`]: every control's request and reply data;
//! * [`call`]: record calls and migration (`REQ_CALL` ... `REPLY_DMASTER`);
//! * [`message`]: messages and the well-known srvids;
//! * [`keepalive`]: keepalives and tunnels;
//! * [`packet`]: a header plus a typed body;
//! * [`framing`]: packets on a byte stream, for tokio;
//! * [`backup`]: the `ctdb backupdb` file format;
//! * [`stdio`]: how every program of the workspace ends when its output
//!   is closed (not protocol, but the one crate they all use).

pub mod backup;
pub mod call;
pub mod control;
pub mod error;
pub mod event;
pub mod framing;
pub mod header;
pub mod keepalive;
pub mod marshal;
pub mod message;
pub mod packet;
pub mod stdio;
pub mod types;

#[cfg(any(test, feature = "random"))]
pub mod random;

pub use control::{ControlReply, ControlRequest, Opcode, ReplyControl, ReqControl};
pub use error::{Error, Result};
pub use header::{Header, Operation};
pub use marshal::Marshal;
pub use message::{MessageData, ReqMessage};
pub use packet::{Body, Packet};

#[cfg(test)]
mod proptests;
