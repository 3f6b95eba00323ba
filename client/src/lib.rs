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
pub use db::{CommitPoint, Db, LockedRecord, Transaction, Update};
pub use error::{ClientError, Result};
pub use paths::Paths;
pub use traverse::{Traverse, TraverseRecord};
pub use tunnel::{Tunnel, TunnelPacket};

/// The kinds of database: CTDB's three, and ctdb-rs's in-memory persistent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    /// Records live on the node that last used them and migrate on demand.
    Volatile,
    /// Every node holds every record; changes are cluster-wide transactions.
    Persistent,
    /// Every node holds every record; changes are replicated without
    /// persistent transactions.
    Replicated,
    /// ctdb-rs extension: persistent (every node holds every record,
    /// changes are cluster-wide transactions) but kept in memory only,
    /// never synced to disk; it survives as long as one node stays up.
    /// Attached with `DB_ATTACH_EXT`, which CTDB 4.17 refuses.
    InMemory,
    /// ctdb-rs extension: every node holds every record, on disk, and
    /// transactions lock the keys they name ([`db::KeyedTransaction`]):
    /// transactions on disjoint keys commit concurrently. Recovered per
    /// record (highest rsn wins). Attached with `DB_ATTACH_EXT`.
    Keyed,
    /// ctdb-rs extension: volatile, and each record can be synced to a
    /// second node ([`Db::sync`]), so its synced value survives the loss of
    /// one node. Attached with `DB_ATTACH_EXT`.
    PartiallyReplicated,
}

impl DbKind {
    /// The database flags a database of this kind has in `GET_DBMAP`.
    pub fn flags(self) -> u8 {
        use ctdb_protocol::types::db_flags;
        match self {
            DbKind::Volatile => 0,
            DbKind::Persistent => db_flags::PERSISTENT,
            DbKind::Replicated => db_flags::REPLICATED,
            DbKind::InMemory => db_flags::PERSISTENT | db_flags::INMEMORY,
            DbKind::Keyed => db_flags::KEYED,
            DbKind::PartiallyReplicated => db_flags::PARTIAL_REPLICA,
        }
    }

    /// Records live on one node and migrate (`fetch_lock`): volatile and
    /// partially replicated databases.
    pub fn migrates(self) -> bool {
        matches!(self, DbKind::Volatile | DbKind::PartiallyReplicated)
    }

    /// Has a persistent database's cluster-wide transactions.
    pub fn transactional(self) -> bool {
        matches!(self, DbKind::Persistent | DbKind::InMemory)
    }

    /// The kind a database's `ctdb_dbid` flags describe.
    pub fn from_flags(flags: u8) -> DbKind {
        use ctdb_protocol::types::db_flags;
        if flags & db_flags::KEYED != 0 {
            DbKind::Keyed
        } else if flags & db_flags::PARTIAL_REPLICA != 0 {
            DbKind::PartiallyReplicated
        } else if flags & db_flags::INMEMORY != 0 {
            DbKind::InMemory
        } else if flags & db_flags::PERSISTENT != 0 {
            DbKind::Persistent
        } else if flags & db_flags::REPLICATED != 0 {
            DbKind::Replicated
        } else {
            DbKind::Volatile
        }
    }
}
