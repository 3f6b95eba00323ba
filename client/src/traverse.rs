//! Traversing a database through the daemon (`TRAVERSE_START_EXT`): the
//! daemon sends each record as a message to a srvid of ours, then an empty
//! record to mark the end.

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{LtdbHeader, RecData, TraverseStartExt};
use ctdb_protocol::{ControlRequest, Marshal};
use tokio::sync::mpsc;

use crate::connection::{Client, Message};
use crate::error::{ClientError, Result};

/// One record of a traverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraverseRecord {
    pub header: LtdbHeader,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
}

/// A traverse under way; records come from [`Traverse::next`].
pub struct Traverse {
    client: Client,
    srvid: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    done: bool,
}

impl Client {
    /// Traverses database `db_id` cluster-wide, through the local daemon.
    /// With `with_empty`, records whose data is empty are included.
    pub async fn traverse(&self, db_id: u32, with_empty: bool) -> Result<Traverse> {
        let id = srvid::CLIENT_RANGE | (std::process::id() as u64) << 16 | next_traverse_id();
        let rx = self.register_srvid(id).await?;
        let start = TraverseStartExt {
            db_id,
            reqid: 0,
            srvid: id,
            withemptyrecords: with_empty,
        };
        if let Err(e) = self
            .control(CTDB_CURRENT_NODE, ControlRequest::TraverseStartExt(start))
            .await
        {
            let _ = self.deregister_srvid(id).await;
            return Err(e);
        }
        Ok(Traverse {
            client: self.clone(),
            srvid: id,
            rx,
            done: false,
        })
    }
}

fn next_traverse_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) & 0xFFFF
}

impl Traverse {
    /// The next record, or `None` at the end. Waits at most the client's
    /// timeout for each record.
    pub async fn next(&mut self) -> Option<Result<TraverseRecord>> {
        if self.done {
            return None;
        }
        let msg = match tokio::time::timeout(self.client.timeout(), self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Some(Err(ClientError::Disconnected)),
            Err(_) => {
                self.done = true;
                return Some(Err(ClientError::Timeout {
                    what: "traverse".into(),
                    opcode: None,
                }));
            }
        };
        let rec = match RecData::pull(&msg.data) {
            Ok((r, _)) => r,
            Err(e) => return Some(Err(e.into())),
        };
        if rec.key.is_empty() && rec.data.is_empty() {
            self.done = true;
            let _ = self.client.deregister_srvid(self.srvid).await;
            return None;
        }
        Some(match rec.header() {
            Ok((header, data)) => Ok(TraverseRecord {
                header,
                key: rec.key.clone(),
                data: data.to_vec(),
            }),
            Err(e) => Err(e.into()),
        })
    }

    /// Every remaining record.
    pub async fn collect(mut self) -> Result<Vec<TraverseRecord>> {
        let mut v = Vec::new();
        while let Some(r) = self.next().await {
            v.push(r?);
        }
        Ok(v)
    }
}
