//! Per-key transactions on a keyed persistent database (ctdb-rs
//! extension, [`DbKind::Keyed`]).
//!
//! A transaction names its keys when it starts and takes one cluster-wide
//! g_lock per key (`keyed_0x<db id>_<key in hex>`), in sorted key order, so
//! two transactions over overlapping keys cannot deadlock, transactions on
//! disjoint keys never wait for each other, and ones on the same key queue
//! in arrival order (our g_lock's queue). Reads come from the local copy
//! (every node holds every record); each written record gets its rsn
//! incremented and this node as data master; the commit sends the changed
//! records in one `TRANS3_COMMIT`, which the daemon applies on every node.
//! There is no database sequence number (it would be one record every
//! commit writes). A commit that a recovery ended is checked against the
//! local copy (after a recovery every node holds the same records, so the
//! local copy says whether the merge kept it); any other failed commit is
//! sent again, unchanged, while the keys stay locked: applying the same
//! records twice is harmless, and the daemon stamps each send with the
//! generation it goes out in, so a send that a recovery overtook is
//! refused wherever it arrives late.

use std::collections::{BTreeSet, HashMap};

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{GLockType, KEYED_EPOCH_KEY, LtdbHeader, RecBuffer, ServerId};

use super::{Db, glock};
use crate::DbKind;
use crate::error::{ClientError, Result};

/// The status of a commit that a recovery interrupted.
const RECOVERY_ENDED: i32 = 2;

/// An open per-key transaction; finish it with [`commit`] or [`cancel`].
///
/// [`commit`]: KeyedTransaction::commit
/// [`cancel`]: KeyedTransaction::cancel
pub struct KeyedTransaction {
    db: Db,
    glock: Db,
    me: ServerId,
    /// The keys locked, sorted, and their lock names.
    keys: BTreeSet<Vec<u8>>,
    locked: Vec<Vec<u8>>,
    changes: HashMap<Vec<u8>, (LtdbHeader, Vec<u8>)>,
    order: Vec<Vec<u8>>,
    finished: bool,
}

/// The g_lock name a per-key transaction on database `db` takes for
/// `key` (in `g_lock.tdb`; waiters queue in
/// [`glock::queue_key`](super::glock::queue_key) of it).
pub fn lock_name(db: u32, key: &[u8]) -> Vec<u8> {
    let mut n = format!("keyed_0x{db:08x}_").into_bytes();
    for b in key {
        n.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    n.push(0);
    n
}

impl Db {
    /// Starts a per-key transaction over `keys` (waits for each key's
    /// lock, in sorted order).
    pub async fn keyed_transaction(&self, keys: &[&[u8]]) -> Result<KeyedTransaction> {
        if keys.contains(&KEYED_EPOCH_KEY) {
            return Err(ClientError::Other(
                "the keyed epoch record belongs to the recovery".into(),
            ));
        }
        if self.kind() != DbKind::Keyed {
            return Err(ClientError::Other(format!(
                "per-key transactions need a keyed database; {} is {:?}",
                self.name,
                self.kind()
            )));
        }
        let glock = self.glock_db().await?;
        let me = glock::server_id(self.client.pnn(), self.id);
        let keys: BTreeSet<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let mut t = KeyedTransaction {
            db: self.clone(),
            glock,
            me,
            keys: keys.clone(),
            locked: Vec::new(),
            changes: HashMap::new(),
            order: Vec::new(),
            finished: false,
        };
        for k in &keys {
            let name = lock_name(self.id, k);
            if let Err(e) = glock::lock(&t.glock, &name, me, GLockType::Write).await {
                let _ = t.release().await;
                return Err(e);
            }
            t.locked.push(name);
        }
        Ok(t)
    }
}

impl KeyedTransaction {
    fn check(&self, key: &[u8]) -> Result<()> {
        if self.keys.contains(key) {
            Ok(())
        } else {
            Err(ClientError::Other(format!(
                "key {:?} was not locked by this transaction",
                String::from_utf8_lossy(key)
            )))
        }
    }

    fn current(&self, key: &[u8]) -> Result<(LtdbHeader, Vec<u8>)> {
        super::transaction::seen(&self.db, &self.changes, key)
    }

    /// Reads `key` (one of the transaction's keys).
    pub fn fetch(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check(key)?;
        let (_, v) = self.current(key)?;
        Ok((!v.is_empty()).then_some(v))
    }

    /// Writes `key` (one of the transaction's keys).
    pub fn store(&mut self, key: &[u8], data: &[u8]) -> Result<()> {
        self.check(key)?;
        let (mut header, old) = self.current(key)?;
        if old == data {
            return Ok(());
        }
        if !self.changes.contains_key(key) {
            header.rsn += 1;
            self.order.push(key.to_vec());
        }
        header.dmaster = self.db.client.pnn();
        self.changes.insert(key.to_vec(), (header, data.to_vec()));
        Ok(())
    }

    /// Deletes `key` (an empty record, as persistent databases keep them).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.store(key, &[])
    }

    /// Whether every change is in the local copy (the commit landed).
    fn landed(&self) -> Result<bool> {
        for (k, (h, v)) in &self.changes {
            match self.db.fetch_local(k)? {
                Some((lh, lv)) if lh.rsn == h.rsn && lv == *v => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Commits: every node applies all changes or none.
    pub async fn commit(self) -> Result<()> {
        self.commit_point().await.map(drop)
    }

    /// [`commit`](KeyedTransaction::commit), returning each written key
    /// with its new rsn, for a reader on another node to wait for
    /// ([`Db::wait_for`](super::Db::wait_for)).
    pub async fn commit_point(mut self) -> Result<super::CommitPoint> {
        let point = super::CommitPoint::Keys(
            self.order
                .iter()
                .map(|k| (k.clone(), self.changes[k].0.rsn))
                .collect(),
        );
        if self.order.is_empty() {
            return self.cancel().await.map(|()| point);
        }
        let mut buf = RecBuffer::new(self.db.id);
        for key in &self.order {
            let (h, v) = &self.changes[key];
            buf.add(0, Some(h), key, v);
        }
        let client = self.db.client.clone();
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
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    self.release().await?;
                    return Err(e);
                }
            };
            // Only after a recovery (status 2, "ended by recovery") does the
            // local copy speak for every node; after anything else (a
            // timeout, a refusal) the commit may be on some nodes only, and
            // is sent again.
            if reply.status == 0 || (reply.status == RECOVERY_ENDED && self.landed()?) {
                break;
            }
            if attempts >= super::transaction::COMMIT_ATTEMPTS {
                self.release().await?;
                return Err(ClientError::Other(format!(
                    "per-key commit on {} refused {attempts} times, giving up: {}",
                    self.db.name,
                    reply.errmsg.as_deref().unwrap_or("no reason given")
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
        self.release().await.map(|()| point)
    }

    /// Abandons the transaction, releasing its keys.
    pub async fn cancel(mut self) -> Result<()> {
        self.release().await
    }

    async fn release(&mut self) -> Result<()> {
        self.finished = true;
        let mut first = Ok(());
        for name in std::mem::take(&mut self.locked).iter().rev() {
            let r = glock::unlock(&self.glock, name, self.me).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for KeyedTransaction {
    fn drop(&mut self) {
        if self.finished || self.locked.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let glock = self.glock.clone();
            let names = std::mem::take(&mut self.locked);
            let me = self.me;
            rt.spawn(async move {
                for n in names.iter().rev() {
                    let _ = glock::unlock(&glock, n, me).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_names_are_per_database_and_key() {
        assert_eq!(
            super::lock_name(0x1234, b"A\x00"),
            b"keyed_0x00001234_4100\0"
        );
        assert_ne!(super::lock_name(1, b"k"), super::lock_name(2, b"k"));
    }
}
