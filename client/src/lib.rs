//! A client for CTDB daemons, ours or the reference one.
//!
//! [`Client`] is one connection to a daemon's unix socket: controls to any
//! node (typed wrappers in [`controls`]), messages to and from srvids,
//! record calls, traverses, and tunnels ([`tunnel`]). Database access (attach, record locks,
//! persistent transactions) builds on these.

pub mod connection;
pub mod controls;
pub mod db;
pub mod error;
pub mod paths;
pub mod traverse;
pub mod tunnel;
pub mod unix_io;

pub use connection::{Client, DEFAULT_TIMEOUT, Message};
pub use db::{Db, LockedRecord, Transaction, Update};
pub use error::{ClientError, Result};
pub use paths::Paths;
pub use traverse::{Traverse, TraverseRecord};
pub use tunnel::{Tunnel, TunnelPacket};

/// The three kinds of CTDB database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    /// Records live on the node that last used them and migrate on demand.
    Volatile,
    /// Every node holds every record; changes are cluster-wide transactions.
    Persistent,
    /// Every node holds every record; changes are replicated without
    /// persistent transactions.
    Replicated,
}

impl DbKind {
    /// The kind a database's `ctdb_dbid` flags describe.
    pub fn from_flags(flags: u8) -> DbKind {
        use ctdb_protocol::types::db_flags;
        if flags & db_flags::PERSISTENT != 0 {
            DbKind::Persistent
        } else if flags & db_flags::REPLICATED != 0 {
            DbKind::Replicated
        } else {
            DbKind::Volatile
        }
    }
}
