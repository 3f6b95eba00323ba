//! Partially replicated volatile databases (ctdb-rs extension,
//! [`DbKind::PartiallyReplicated`](crate::DbKind::PartiallyReplicated)):
//! a volatile database whose records can be *synced*, so that their value
//! survives the loss of any one node.
//!
//! [`Db::sync`] asks this node to copy the record to its replica node
//! (`DB_SYNC_RECORD`); it returns once the copy is stored there. The
//! record must be mastered on this node: when it is not (another node
//! took it since it was written here), it is migrated back here first, as
//! [`Db::fetch`] does, and synced then. So after `sync` returns, the
//! record's value as it was at that moment (or a later one) survives the
//! failure of any single node; see the daemon's README for exactly what
//! is guaranteed.

use std::time::Duration;

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{KeyData, REPLICA_ERR_PREFIX, ReplicaStatus, SYNC_NOT_DMASTER};
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReqControl};

use super::Db;
use crate::connection::Client;
use crate::error::{ClientError, Result};

/// How often a sync is tried before its error is returned: the record
/// taken away between the migration here and the sync, or a recovery
/// (the replica node refuses copies of another generation).
const SYNC_ATTEMPTS: u32 = 40;

impl Db {
    /// Copies record `key` to its replica node and returns that node's
    /// pnn once it holds the copy. Migrates the record here first when
    /// another node masters it. Must not be called while this process
    /// holds the record's lock (the daemon waits for the lock).
    pub async fn sync(&self, key: &[u8]) -> Result<u32> {
        let mut pause = Duration::from_millis(10);
        let mut last = None;
        for _ in 0..SYNC_ATTEMPTS {
            let req = ReqControl::new(ControlRequest::DbSyncRecord(KeyData {
                db_id: self.id,
                header: Default::default(),
                key: key.to_vec(),
            }));
            let r = self.client.control_raw(CTDB_CURRENT_NODE, req).await?;
            match (r.status, r.data, r.errmsg) {
                (0, Some(ControlReply::DbSyncRecord(pnn)), None) => return Ok(pnn),
                (SYNC_NOT_DMASTER, _, None) => {
                    // Mastered elsewhere: bring it here, then sync.
                    self.fetch(key).await?;
                }
                (status, _, errmsg) => {
                    let retry = errmsg.as_deref().is_some_and(|m| {
                        m.starts_with(REPLICA_ERR_PREFIX)
                            && (m.contains("did not store") || m.contains("generation"))
                    });
                    let e = ClientError::ControlFailed {
                        opcode: Opcode::DbSyncRecord,
                        node: CTDB_CURRENT_NODE,
                        status,
                        errmsg,
                    };
                    if !retry {
                        return Err(e);
                    }
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Other(format!(
                "sync of a record of {}: it kept migrating away",
                self.name
            ))
        }))
    }

    /// Stores `data` as the value of `key` (migrating it here) and syncs
    /// it ([`Db::sync`]); returns the replica node.
    pub async fn store_synced(&self, key: &[u8], data: &[u8]) -> Result<u32> {
        self.store(key, data).await?;
        self.sync(key).await
    }
}

impl Client {
    /// `DB_REPLICA_STATUS`: node `dest`'s view of partially replicated
    /// database `db_id`.
    pub async fn replica_status(&self, dest: u32, db_id: u32) -> Result<ReplicaStatus> {
        let r = self
            .control(dest, ControlRequest::DbReplicaStatus(db_id))
            .await?;
        match r.data {
            Some(ControlReply::DbReplicaStatus(s)) => Ok(*s),
            _ => Err(ClientError::UnexpectedReply(Opcode::DbReplicaStatus)),
        }
    }
}
