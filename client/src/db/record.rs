//! Locking a volatile record, CTDB's way.
//!
//! Lock the record's hash chain in the local file. If this node is the
//! record's data master, the record is ours to read and change under that
//! lock. Otherwise unlock, ask the local daemon to migrate the record here
//! (a `REQ_CALL` with immediate migration), and try again.
//!
//! The chain lock is taken without blocking: while another process holds
//! it, the task yields and retries, so a contended lock never stalls the
//! async runtime. The caller's closure runs under the lock and must not
//! wait on anything.

use ctdb_protocol::Marshal;
use ctdb_protocol::call::{ReqCall, call_flags, call_id};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{LtdbHeader, record_flags};

use super::{Db, tdb_err};
use crate::DbKind;
use crate::error::{ClientError, Result};

/// What to do with a locked record when the closure returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Leave it as it is.
    Keep,
    /// Store this value (the header is kept).
    Store(Vec<u8>),
    /// Delete it (the daemon removes it cluster-wide later).
    Delete,
}

/// A record locked on this node, as the closure sees it.
#[derive(Debug, Clone)]
pub struct LockedRecord {
    pub header: LtdbHeader,
    pub data: Vec<u8>,
}

enum Attempt<R> {
    Done(R, Option<LtdbHeader>),
    Migrate,
    Busy,
}

impl Db {
    /// Locks `key` on this node, migrating it here first if needed, and
    /// runs `f` under the lock; `f`'s [`Update`] is applied before the lock
    /// is released. Returns what `f` returned.
    pub async fn fetch_lock<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&LockedRecord) -> (Update, R),
    ) -> Result<R> {
        self.fetch_lock_mode(key, false, f).await
    }

    /// Reads a record for reading only: a read-only delegation on this node
    /// is enough (the record is migrated here only if there is none). The
    /// record cannot be changed through this call.
    pub async fn fetch_readonly(&self, key: &[u8]) -> Result<LockedRecord> {
        self.fetch_lock_mode(key, true, |r| (Update::Keep, r.clone()))
            .await
    }

    async fn fetch_lock_mode<R>(
        &self,
        key: &[u8],
        readonly: bool,
        f: impl FnOnce(&LockedRecord) -> (Update, R),
    ) -> Result<R> {
        if self.kind() != DbKind::Volatile {
            return Err(ClientError::Other(format!(
                "fetch_lock on non-volatile database {}",
                self.name
            )));
        }
        let pnn = self.client.pnn();
        let mut f = Some(f);
        let mut spins = 0u32;
        loop {
            match self.try_locked(key, pnn, readonly, &mut f)? {
                Attempt::Done(r, deleted) => {
                    if let Some(h) = deleted {
                        self.schedule_for_deletion(h, key).await?;
                    }
                    return Ok(r);
                }
                Attempt::Migrate => {
                    spins = 0;
                    self.migrate(key, readonly).await?;
                }
                Attempt::Busy => {
                    spins += 1;
                    if spins < 64 {
                        // The holder is another process (record locks are
                        // held for microseconds): let it run, then let this
                        // runtime's other tasks run, then try again.
                        std::thread::yield_now();
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                    }
                }
            }
        }
    }

    /// One attempt: lock, check the data master, run the closure.
    fn try_locked<R>(
        &self,
        key: &[u8],
        pnn: u32,
        readonly: bool,
        f: &mut Option<impl FnOnce(&LockedRecord) -> (Update, R)>,
    ) -> Result<Attempt<R>> {
        self.file.with(|tdb| {
            let lock = match tdb.chainlock_nonblock(key) {
                Ok(l) => l,
                Err(tdb::Error::WouldBlock) => return Ok(Attempt::Busy),
                Err(e) => return Err(tdb_err(e)),
            };
            let value = lock.fetch(key).map_err(tdb_err)?;
            let Some(value) = value.filter(|v| v.len() >= LtdbHeader::WIRE_SIZE) else {
                return Ok(Attempt::Migrate);
            };
            let (header, data) = LtdbHeader::split(&value)?;
            let usable = if readonly {
                header.dmaster == pnn
                    || header.flags
                        & (record_flags::RO_HAVE_READONLY | record_flags::RO_HAVE_DELEGATIONS)
                        != 0
            } else {
                header.dmaster == pnn && header.flags & record_flags::RO_HAVE_DELEGATIONS == 0
            };
            if !usable {
                return Ok(Attempt::Migrate);
            }
            let rec = LockedRecord {
                header,
                data: data.to_vec(),
            };
            let Some(f) = f.take() else {
                return Err(ClientError::Other("fetch_lock closure already used".into()));
            };
            let (update, r) = f(&rec);
            let mut deleted = None;
            match update {
                Update::Keep => {}
                Update::Store(new) if new == rec.data => {}
                Update::Store(new) => {
                    let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
                    header.push(&mut hb);
                    lock.storev(key, &[&hb, &new], tdb::StoreMode::Replace)
                        .map_err(tdb_err)?;
                }
                Update::Delete => {
                    let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
                    header.push(&mut hb);
                    lock.store(key, &hb, tdb::StoreMode::Replace)
                        .map_err(tdb_err)?;
                    deleted = Some(header);
                }
            }
            Ok(Attempt::Done(r, deleted))
        })
    }

    /// Asks the local daemon to make this node the record's data master.
    async fn migrate(&self, key: &[u8], readonly: bool) -> Result<()> {
        self.migrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut flags = call_flags::IMMEDIATE_MIGRATION;
        if readonly {
            flags |= call_flags::WANT_READONLY;
        }
        let call = ReqCall {
            flags,
            db_id: self.id,
            callid: call_id::NULL_FUNC,
            hopcount: 0,
            key: key.to_vec(),
            calldata: Vec::new(),
        };
        let reply = self.client.call(CTDB_CURRENT_NODE, call).await?;
        if reply.status != 0 {
            return Err(ClientError::CallFailed {
                status: reply.status,
                msg: "record migration failed".into(),
            });
        }
        Ok(())
    }

    /// Reads a volatile record with its lock (migrating it here).
    pub async fn fetch(&self, key: &[u8]) -> Result<LockedRecord> {
        self.fetch_lock(key, |r| (Update::Keep, r.clone())).await
    }

    /// Stores a volatile record (migrating it here).
    pub async fn store(&self, key: &[u8], data: &[u8]) -> Result<()> {
        let data = data.to_vec();
        self.fetch_lock(key, move |_| (Update::Store(data), ()))
            .await
    }

    /// Deletes a volatile record (migrating it here).
    pub async fn delete(&self, key: &[u8]) -> Result<()> {
        self.fetch_lock(key, |_| (Update::Delete, ())).await
    }
}
