//! Read-your-writes across nodes (ctdb-rs extension, `DB_WAIT_SEQNUM`).
//!
//! A writer's commit returns the point it reached ([`CommitPoint`]:
//! [`Transaction::commit_seq`](super::Transaction::commit_seq) for classic
//! and in-memory databases, the database sequence number after the commit;
//! [`KeyedTransaction::commit_point`](super::KeyedTransaction::commit_point)
//! for keyed databases, each written key with its new rsn). The writer
//! hands it to a reader on another node, which calls
//! [`Db::wait_for`] (or [`Db::wait_seqnum`]); its node answers once its
//! copy has reached the point, and the reader's next read of the local copy
//! sees the write or a later one. [`Db::wait_generation`] waits for a
//! recovery generation instead.
//!
//! Errors: a point not reached in time is [`ClientError::WaitTimedOut`]; a
//! node that does not know the control (a CTDB 4.17 daemon) is
//! [`ClientError::NotSupported`].

use std::time::Duration;

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{
    DbWaitSeqnum, SEQWAIT_ERR_PREFIX, SEQWAIT_TIMEOUT_STATUS, SeqWaitTarget,
};
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReqControl};

use super::{DB_SEQNUM_KEY, Db};
use crate::DbKind;
use crate::error::{ClientError, Result};

/// The point a commit reached, to hand to a reader on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitPoint {
    /// A classic or in-memory database's sequence number after the commit.
    Seqnum(u64),
    /// A keyed database's written keys, each with the rsn the commit gave
    /// it (a keyed database has no database-wide sequence number).
    Keys(Vec<(Vec<u8>, u64)>),
}

impl CommitPoint {
    /// The sequence number, for a classic or in-memory commit.
    pub fn seqnum(&self) -> Option<u64> {
        match self {
            CommitPoint::Seqnum(s) => Some(*s),
            CommitPoint::Keys(_) => None,
        }
    }
}

/// Time given to the daemon's answer beyond the wait itself.
const REPLY_SLACK: Duration = Duration::from_secs(10);

impl Db {
    /// This node's copy's database sequence number (0 when it has none).
    pub fn local_seqnum(&self) -> Result<u64> {
        match self.fetch_local(DB_SEQNUM_KEY)? {
            Some((_, v)) if v.len() == 8 => Ok(u64::from_le_bytes(v.try_into().unwrap_or([0; 8]))),
            Some((_, v)) if v.is_empty() => Ok(0),
            None => Ok(0),
            Some(_) => Err(ClientError::Other(
                "database sequence number is corrupt".into(),
            )),
        }
    }

    /// Waits until this node's copy has reached `point`; returns the value
    /// reached (the sequence number, or the lowest rsn of the keys).
    pub async fn wait_for(&self, point: &CommitPoint, timeout: Duration) -> Result<u64> {
        let target = match point {
            CommitPoint::Seqnum(s) => SeqWaitTarget::DbSeqnum(*s),
            CommitPoint::Keys(ks) => SeqWaitTarget::Keys(ks.clone()),
        };
        self.wait_target(target, timeout).await
    }

    /// Waits until this node's copy has sequence number `seqnum` or higher
    /// (classic and in-memory databases); returns the one reached.
    pub async fn wait_seqnum(&self, seqnum: u64, timeout: Duration) -> Result<u64> {
        self.wait_target(SeqWaitTarget::DbSeqnum(seqnum), timeout)
            .await
    }

    /// Waits until this node has finished the recovery of `generation`
    /// (the generation of `GET_VNNMAP` on the writer's node).
    pub async fn wait_generation(&self, generation: u32, timeout: Duration) -> Result<u32> {
        self.wait_target(SeqWaitTarget::Generation(generation), timeout)
            .await
            .map(|g| g as u32)
    }

    async fn wait_target(&self, target: SeqWaitTarget, timeout: Duration) -> Result<u64> {
        if !matches!(
            self.kind(),
            DbKind::Persistent | DbKind::InMemory | DbKind::Keyed
        ) {
            return Err(ClientError::Other(format!(
                "{} is not a persistent database: it has no sequence numbers to wait for",
                self.name
            )));
        }
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let req = ReqControl::new(ControlRequest::DbWaitSeqnum(DbWaitSeqnum {
            db_id: self.id,
            timeout_ms,
            target,
        }));
        let client = self.client.with_timeout(timeout + REPLY_SLACK);
        let node = self.client.pnn();
        let r = client.control_raw(CTDB_CURRENT_NODE, req).await?;
        let ours = r
            .errmsg
            .as_deref()
            .is_some_and(|m| m.starts_with(SEQWAIT_ERR_PREFIX));
        match r {
            r if r.status == 0 => match r.data {
                Some(ControlReply::DbWaitSeqnum(v)) => Ok(v),
                _ => Err(ClientError::UnexpectedReply(Opcode::DbWaitSeqnum)),
            },
            r if ours && r.status == SEQWAIT_TIMEOUT_STATUS => Err(ClientError::WaitTimedOut {
                node,
                msg: r.errmsg.unwrap_or_default(),
            }),
            r if ours => Err(ClientError::ControlFailed {
                opcode: Opcode::DbWaitSeqnum,
                node,
                status: r.status,
                errmsg: r.errmsg,
            }),
            r => Err(ClientError::NotSupported {
                node,
                what: "DB_WAIT_SEQNUM (read-your-writes)",
                status: r.status,
            }),
        }
    }
}
