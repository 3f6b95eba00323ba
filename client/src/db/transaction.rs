//! Cluster-wide transactions on persistent (and replicated) databases.
//!
//! As CTDB's client library does them: take the g_lock
//! `transaction_db_0x<db id>`; read from the local copy; buffer writes,
//! each with the record's header, its data master set to this node and its
//! rsn incremented; on commit, add the incremented database sequence number
//! and send all changes in one `TRANS3_COMMIT` to the local daemon, which
//! applies them on every node. If the commit control fails because a
//! recovery intervened, the sequence number tells whether the changes made
//! it (it moved by one) or must be sent again (unchanged). Finally release
//! the g_lock.
//!
//! Unlike CTDB's client, reads and writes of a transaction are looked up in
//! a hash map rather than by scanning the change buffer, so a transaction
//! of 100,000 records costs 100,000 map operations, not 10^10 comparisons.

use std::collections::HashMap;

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{GLockType, LtdbHeader, RecBuffer, ServerId};

use super::{DB_SEQNUM_KEY, Db, glock};
use crate::DbKind;
use crate::error::{ClientError, Result};

/// How many times a commit is sent while the daemon refuses it and the
/// database's sequence number does not move.
pub const COMMIT_ATTEMPTS: u32 = 25;

/// An open transaction. Finish it with [`commit`](Transaction::commit) or
/// [`cancel`](Transaction::cancel); dropping it cancels it in the
/// background.
pub struct Transaction {
    db: Db,
    glock: Db,
    lock_name: Vec<u8>,
    me: ServerId,
    readonly: bool,
    /// Changed records: key -> (header to store, value).
    changes: HashMap<Vec<u8>, (LtdbHeader, Vec<u8>)>,
    /// Keys in the order they were first changed.
    order: Vec<Vec<u8>>,
    finished: bool,
    /// The g_lock was taken the way CTDB's client library takes it.
    ctdb_style: bool,
}

impl Db {
    /// Starts a transaction (waits for the database's g_lock).
    pub async fn transaction_start(&self, readonly: bool) -> Result<Transaction> {
        self.transaction_start_with(readonly, false).await
    }

    /// Starts a transaction whose g_lock is taken and released exactly as
    /// CTDB's own client library does ([`glock::lock_ctdb_style`]): for
    /// comparing daemons with the clients Samba really uses.
    pub async fn transaction_start_ctdb_style(&self, readonly: bool) -> Result<Transaction> {
        self.transaction_start_with(readonly, true).await
    }

    async fn transaction_start_with(
        &self,
        readonly: bool,
        ctdb_style: bool,
    ) -> Result<Transaction> {
        if self.kind().migrates() {
            // Volatile and partially replicated: records migrate, no
            // cluster-wide transactions.
            return Err(ClientError::Other(format!(
                "transactions are not supported on volatile database {}",
                self.name
            )));
        }
        if self.kind() == DbKind::Keyed {
            return Err(ClientError::Other(format!(
                "{} is a keyed database: use keyed_transaction",
                self.name
            )));
        }
        let glock = self.glock_db().await?;
        let mut lock_name = format!("transaction_db_0x{:08x}", self.id).into_bytes();
        lock_name.push(0);
        let me = glock::server_id(self.client.pnn(), self.id);
        let kind = if readonly {
            GLockType::Read
        } else {
            GLockType::Write
        };
        if ctdb_style {
            glock::lock_ctdb_style(&glock, &lock_name, me, kind).await?;
        } else {
            glock::lock(&glock, &lock_name, me, kind).await?;
        }
        Ok(Transaction {
            db: self.clone(),
            glock,
            lock_name,
            me,
            readonly,
            changes: HashMap::new(),
            order: Vec::new(),
            finished: false,
            ctdb_style,
        })
    }
}

/// Header and value of `key` as a transaction with `changes` sees it: its
/// own change, else the local copy, else nothing (an empty value under a
/// header with no data master).
pub(super) fn seen(
    db: &Db,
    changes: &HashMap<Vec<u8>, (LtdbHeader, Vec<u8>)>,
    key: &[u8],
) -> Result<(LtdbHeader, Vec<u8>)> {
    if let Some((h, v)) = changes.get(key) {
        return Ok((*h, v.clone()));
    }
    Ok(db.fetch_local(key)?.unwrap_or_else(|| {
        (
            LtdbHeader {
                dmaster: ctdb_protocol::header::CTDB_UNKNOWN_PNN,
                ..Default::default()
            },
            Vec::new(),
        )
    }))
}

impl Transaction {
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Current header and value of `key` as this transaction sees it.
    fn current(&self, key: &[u8]) -> Result<(LtdbHeader, Vec<u8>)> {
        seen(&self.db, &self.changes, key)
    }

    /// Reads `key`: `None` when it does not exist (or is empty).
    pub fn fetch(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (_, v) = self.current(key)?;
        Ok((!v.is_empty()).then_some(v))
    }

    /// Writes `key`.
    pub fn store(&mut self, key: &[u8], data: &[u8]) -> Result<()> {
        if self.readonly {
            return Err(ClientError::Other(
                "store in a read-only transaction".into(),
            ));
        }
        let (mut header, old) = self.current(key)?;
        if old == data {
            return Ok(());
        }
        header.dmaster = self.db.client.pnn();
        header.rsn += 1;
        if !self.changes.contains_key(key) {
            self.order.push(key.to_vec());
        }
        self.changes.insert(key.to_vec(), (header, data.to_vec()));
        Ok(())
    }

    /// Deletes `key` (stores an empty value, as CTDB does).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.store(key, &[])
    }

    /// Number of records changed so far.
    pub fn changed(&self) -> usize {
        self.order.len()
    }

    fn seqnum(&self) -> Result<u64> {
        match self.db.fetch_local(DB_SEQNUM_KEY)? {
            None => Ok(0),
            Some((_, v)) if v.is_empty() => Ok(0),
            Some((_, v)) if v.len() == 8 => Ok(u64::from_le_bytes(v.try_into().unwrap())),
            Some(_) => Err(ClientError::Other(
                "database sequence number is corrupt".into(),
            )),
        }
    }

    /// Commits: every node applies all changes or none.
    pub async fn commit(self) -> Result<()> {
        self.commit_seq().await.map(drop)
    }

    /// [`commit`](Transaction::commit), returning the database sequence
    /// number after it (the current one when there was nothing to
    /// commit), for a reader on another node to wait for
    /// ([`Db::wait_seqnum`](super::Db::wait_seqnum)).
    pub async fn commit_seq(mut self) -> Result<u64> {
        if self.readonly || self.order.is_empty() {
            let now = self.seqnum()?;
            return self.cancel().await.map(|()| now);
        }
        let old = self.seqnum()?;
        self.store(DB_SEQNUM_KEY, &(old + 1).to_le_bytes())?;
        let mut buf = RecBuffer::new(self.db.id);
        for key in &self.order {
            let (h, v) = &self.changes[key];
            buf.add(0, Some(h), key, v);
        }
        let client = self.db.client.clone();
        // A commit refused during a recovery is tried again once the
        // recovery had time to finish, not in a tight loop; one refused
        // every time (CTDB's client would try forever) is given up after
        // COMMIT_ATTEMPTS, about 17 s.
        let mut pause = std::time::Duration::from_millis(5);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reply = client
                .control_raw(
                    CTDB_CURRENT_NODE,
                    ctdb_protocol::ReqControl::new(ctdb_protocol::ControlRequest::Trans3Commit(
                        buf.clone(),
                    )),
                )
                .await?;
            if reply.status == 0 {
                break;
            }
            // The commit failed, usually because a recovery intervened:
            // the sequence number says whether the changes landed.
            let now = self.seqnum()?;
            if now == old && attempts >= COMMIT_ATTEMPTS {
                self.release().await?;
                return Err(ClientError::Other(format!(
                    "transaction commit on {} refused {attempts} times, giving up: {}",
                    self.db.name,
                    reply.errmsg.as_deref().unwrap_or("no reason given")
                )));
            }
            if now == old {
                tracing::info!(
                    "transaction commit on {} interrupted, retrying",
                    self.db.name
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
            if now != old + 1 {
                self.release().await?;
                return Err(ClientError::Other(format!(
                    "transaction commit on {}: sequence number moved from {old} to {now}",
                    self.db.name
                )));
            }
            break;
        }
        self.release().await.map(|()| old + 1)
    }

    /// Abandons the transaction.
    pub async fn cancel(mut self) -> Result<()> {
        self.release().await
    }

    async fn release(&mut self) -> Result<()> {
        self.finished = true;
        if self.ctdb_style {
            glock::unlock_ctdb_style(&self.glock, &self.lock_name, self.me).await
        } else {
            glock::unlock(&self.glock, &self.lock_name, self.me).await
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Release the g_lock in the background if a runtime is there; if
        // not, the lock goes when this process exits (holders are checked
        // for liveness).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let glock = self.glock.clone();
            let name = std::mem::take(&mut self.lock_name);
            let me = self.me;
            let ctdb_style = self.ctdb_style;
            rt.spawn(async move {
                let _ = if ctdb_style {
                    glock::unlock_ctdb_style(&glock, &name, me).await
                } else {
                    glock::unlock(&glock, &name, me).await
                };
            });
        }
    }
}
