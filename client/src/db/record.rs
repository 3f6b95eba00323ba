//! Locking a volatile record, CTDB's way.
//!
//! Lock the record's hash chain in the local file. If this node is the
//! record's data master, the record is ours to read and change under that
//! lock. Otherwise unlock, ask the local daemon to migrate the record here
//! (a `REQ_CALL` with immediate migration), and try again.
//!
//! The chain lock is first tried without blocking. While another process
//! holds it, a helper thread ([`tokio::task::spawn_blocking`]) waits for
//! it in the kernel with the tdb crate's [`tdb::ChainWaiter`] (queued like
//! any other waiter, so it gets the lock when the holder lets go), and the
//! task then works on the record under the lock the helper holds
//! ([`tdb::Tdb::adopt_chain`]); the runtime never blocks and nothing spins.
//! The caller's closure runs under the lock and must not wait on anything.

use ctdb_protocol::Marshal;
use ctdb_protocol::call::{ReqCall, call_flags, call_id};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{LtdbHeader, record_flags};

use super::{Db, tdb_err};
use crate::error::{ClientError, Result};

/// What to do with a locked record when the closure returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Leave it as it is.
    Keep,
    /// Store this value (the header is kept).
    Store(Vec<u8>),
    /// Delete it (the daemon removes it cluster-wide later): the record
    /// is left empty and the daemon told so with a one-way
    /// `SCHEDULE_FOR_DELETION` (not awaited; see [`Db`]'s hint and the
    /// connection's flush guarantee).
    Delete,
}

/// A record locked on this node, as the closure sees it.
#[derive(Debug, Clone)]
pub struct LockedRecord {
    pub header: LtdbHeader,
    pub data: Vec<u8>,
}

/// A chain a helper thread holds for this task; dropping it lets the
/// helper release it.
struct Held {
    bucket: u32,
    _release: std::sync::mpsc::Sender<()>,
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
        if !self.kind().migrates() {
            return Err(ClientError::Other(format!(
                "fetch_lock on non-volatile database {}",
                self.name
            )));
        }
        let pnn = self.client.pnn();
        let mut f = Some(f);
        let mut held: Option<Held> = None;
        loop {
            let attempt = match &held {
                None => self.try_locked(key, pnn, readonly, &mut f),
                Some(h) => self.file.with(|tdb| match tdb.adopt_chain(h.bucket) {
                    Ok(()) => {
                        let r = self.try_locked_in(tdb, key, pnn, readonly, &mut f);
                        let _ = tdb.release_adopted(h.bucket);
                        r
                    }
                    // fcntl: released and taken by another process since.
                    Err(tdb::Error::WouldBlock) => Ok(Attempt::Busy),
                    Err(e) => Err(tdb_err(e)),
                }),
            };
            // The helper lets go once the attempt is over.
            held = None;
            match attempt? {
                Attempt::Done(r, deleted) => {
                    if let Some(h) = deleted {
                        self.hint_deletion(h, key)?;
                    }
                    return Ok(r);
                }
                Attempt::Migrate => {
                    self.migrate(key, readonly).await?;
                }
                Attempt::Busy => held = Some(self.wait_chain(key).await?),
            }
        }
    }

    /// Waits on a helper thread until the helper holds `key`'s chain.
    async fn wait_chain(&self, key: &[u8]) -> Result<Held> {
        let waiter = self.file.waiter()?;
        let bucket = self.file.with(|t| t.bucket_of(key));
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || match waiter.lock(bucket) {
            Ok(w) => {
                if held_tx.send(Ok(())).is_err() {
                    // Nobody waits any more. With fcntl locks the lock is
                    // the process's: release it through the handle.
                    drop(w);
                    file.with(|t| {
                        if !t.uses_mutexes() && t.adopt_chain(bucket).is_ok() {
                            let _ = t.release_adopted(bucket);
                        }
                    });
                    return;
                }
                // Until the task is done with the record (or gone).
                let _ = release_rx.recv();
                drop(w);
            }
            Err(e) => {
                let _ = held_tx.send(Err(e));
            }
        });
        match held_rx.await {
            Ok(Ok(())) => Ok(Held {
                bucket,
                _release: release,
            }),
            Ok(Err(e)) => Err(tdb_err(e)),
            Err(_) => Err(ClientError::Other("lock helper thread failed".into())),
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
        self.file
            .with(|tdb| self.try_locked_in(tdb, key, pnn, readonly, f))
    }

    /// [`Self::try_locked`] on the open file.
    fn try_locked_in<R>(
        &self,
        tdb: &tdb::Tdb,
        key: &[u8],
        pnn: u32,
        readonly: bool,
        f: &mut Option<impl FnOnce(&LockedRecord) -> (Update, R)>,
    ) -> Result<Attempt<R>> {
        {
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
        }
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

/// A record locked on this node for as long as the handle lives, which
/// (unlike [`Db::fetch_lock`]'s closure) may be kept across awaits: CTDB's
/// client library's record handle (`ctdb_fetch_lock`), whose g_lock keeps
/// the lock record locked while it asks whether a holder's process exists
/// and while the daemon confirms a delete. A helper thread holds the
/// chain ([`Db::wait_chain`]); the file's handle has adopted it until the
/// handle drops.
pub(crate) struct RecordHandle {
    db: Db,
    key: Vec<u8>,
    bucket: u32,
    _held: Held,
    pub header: LtdbHeader,
    pub data: Vec<u8>,
}

/// What [`Db::fetch_lock_handle`] found under the chain a helper got.
enum Found {
    /// The chain was taken by another process meanwhile (fcntl).
    Retry,
    /// Not mastered here.
    Migrate,
    Usable(LtdbHeader, Vec<u8>),
}

impl Db {
    /// Locks `key` on this node, migrating it here first if needed, and
    /// keeps it locked until the returned handle drops.
    pub(crate) async fn fetch_lock_handle(&self, key: &[u8]) -> Result<RecordHandle> {
        if !self.kind().migrates() {
            return Err(ClientError::Other(format!(
                "fetch_lock on non-volatile database {}",
                self.name
            )));
        }
        let pnn = self.client.pnn();
        loop {
            let held = self.wait_chain(key).await?;
            let bucket = held.bucket;
            let found = self.file.with(|tdb| -> Result<Found> {
                match tdb.adopt_chain(bucket) {
                    Ok(()) => {}
                    // fcntl: released and taken by another process since.
                    Err(tdb::Error::WouldBlock) => return Ok(Found::Retry),
                    Err(e) => return Err(tdb_err(e)),
                }
                let value = tdb
                    .chainlock_nonblock(key)
                    .and_then(|l| l.fetch(key))
                    .map_err(tdb_err);
                let usable = match value {
                    Ok(Some(v)) if v.len() >= LtdbHeader::WIRE_SIZE => {
                        match LtdbHeader::split(&v) {
                            Ok((h, d))
                                if h.dmaster == pnn
                                    && h.flags & record_flags::RO_HAVE_DELEGATIONS == 0 =>
                            {
                                Some((h, d.to_vec()))
                            }
                            Ok(_) => None,
                            Err(e) => {
                                let _ = tdb.release_adopted(bucket);
                                return Err(e.into());
                            }
                        }
                    }
                    Ok(_) => None,
                    Err(e) => {
                        let _ = tdb.release_adopted(bucket);
                        return Err(e);
                    }
                };
                match usable {
                    Some((h, d)) => Ok(Found::Usable(h, d)),
                    None => {
                        tdb.release_adopted(bucket).map_err(tdb_err)?;
                        Ok(Found::Migrate)
                    }
                }
            })?;
            match found {
                Found::Retry => continue,
                Found::Usable(header, data) => {
                    return Ok(RecordHandle {
                        db: self.clone(),
                        key: key.to_vec(),
                        bucket,
                        _held: held,
                        header,
                        data,
                    });
                }
                Found::Migrate => {
                    // Let go before asking for the record, as CTDB's
                    // client does.
                    drop(held);
                    self.migrate(key, false).await?;
                }
            }
        }
    }
}

impl RecordHandle {
    /// Stores `data` under the record's header.
    pub(crate) fn store(&mut self, data: &[u8]) -> Result<()> {
        let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
        self.header.push(&mut hb);
        let key = &self.key;
        self.db.file.with(|tdb| {
            tdb.chainlock_nonblock(key)
                .and_then(|l| l.storev(key, &[&hb, data], tdb::StoreMode::Replace))
                .map_err(tdb_err)
        })?;
        self.data = data.to_vec();
        Ok(())
    }

    /// Deletes the record as CTDB's client does: an empty record, then
    /// `SCHEDULE_FOR_DELETION`, whose reply is waited for with the record
    /// still locked.
    pub(crate) async fn delete(&mut self) -> Result<()> {
        self.store(&[])?;
        self.db.schedule_for_deletion(self.header, &self.key).await
    }
}

impl Drop for RecordHandle {
    fn drop(&mut self) {
        // The helper (`_held`, dropped after this) lets go of the chain.
        let bucket = self.bucket;
        self.db.file.with(|tdb| {
            let _ = tdb.release_adopted(bucket);
        });
    }
}
