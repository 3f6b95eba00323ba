//! Databases as a client sees them: attach, then read and write records in
//! the node's local copy, the way CTDB clients (smbd) do.
//!
//! * [`Db::fetch_lock`]: a volatile record, locked in the local file and
//!   migrated to this node first if another node holds it
//!   ([`record`]).
//! * [`Db::transaction_start`]: a cluster-wide transaction on a persistent
//!   or replicated database, serialised by a g_lock and committed with
//!   `TRANS3_COMMIT` ([`transaction`], [`glock`]).
//!
//! The local database file is opened with the tdb flags the daemon reports
//! (`DB_OPEN_FLAGS`), so a client locks record chains exactly as the daemon
//! and other clients do: robust mutexes when the daemon uses them, fcntl
//! locks otherwise. A process opens each file once ([`LocalFile`]): fcntl
//! locks belong to the process, as in libtdb.

pub mod glock;
pub mod keyed;
pub mod record;
pub mod replica;
pub mod seqwait;
pub mod transaction;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ctdb_protocol::ControlRequest;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{LtdbHeader, db_flags};

use crate::DbKind;
use crate::connection::Client;
use crate::error::{ClientError, Result};

pub use keyed::KeyedTransaction;
pub use record::{LockedRecord, Update};
pub use seqwait::CommitPoint;
pub use transaction::Transaction;

/// The key under which a persistent database keeps its sequence number.
pub const DB_SEQNUM_KEY: &[u8] = b"__db_sequence_number__\0";

/// A database file opened in this process, shared by every handle on it.
pub struct LocalFile {
    path: PathBuf,
    tdb: Mutex<tdb::Tdb>,
    /// Waits for busy chain locks on helper threads ([`record`]).
    waiter: OnceLock<tdb::ChainWaiter>,
}

impl LocalFile {
    /// Runs `f` with the open database. The lock is held only for `f`,
    /// which must not wait on anything.
    pub fn with<R>(&self, f: impl FnOnce(&tdb::Tdb) -> R) -> R {
        let g = self.tdb.lock().unwrap_or_else(|e| e.into_inner());
        f(&g)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The file's chain waiter (made on first use).
    pub fn waiter(&self) -> Result<tdb::ChainWaiter> {
        if let Some(w) = self.waiter.get() {
            return Ok(w.clone());
        }
        let w = self.with(|t| t.chain_waiter()).map_err(tdb_err)?;
        Ok(self.waiter.get_or_init(|| w).clone())
    }
}

/// Files this process has open, by path.
fn open_files() -> &'static Mutex<HashMap<PathBuf, Weak<LocalFile>>> {
    static FILES: OnceLock<Mutex<HashMap<PathBuf, Weak<LocalFile>>>> = OnceLock::new();
    FILES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Opens `path` with `tdb_flags`, or returns this process's open handle.
pub fn open_local(path: PathBuf, tdb_flags: u32) -> Result<Arc<LocalFile>> {
    let mut files = open_files().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = files.get(&path).and_then(Weak::upgrade) {
        return Ok(f);
    }
    let tdb = tdb::OpenOptions::new()
        .tdb_flags(tdb_flags & !tdb::flags::CLEAR_IF_FIRST)
        .open(&path)
        .map_err(|e| ClientError::Other(format!("cannot open {}: {e}", path.display())))?;
    let f = Arc::new(LocalFile {
        path: path.clone(),
        tdb: Mutex::new(tdb),
        waiter: OnceLock::new(),
    });
    files.insert(path, Arc::downgrade(&f));
    Ok(f)
}

/// An attached database.
#[derive(Clone)]
pub struct Db {
    client: Client,
    id: u32,
    name: String,
    flags: u8,
    file: Arc<LocalFile>,
    /// Record migrations this handle (and its clones) asked for.
    migrations: Arc<std::sync::atomic::AtomicU64>,
    /// `g_lock.tdb`, attached by the first transaction and kept.
    glock: Arc<tokio::sync::OnceCell<Db>>,
}

impl Client {
    /// Attaches database `name` (creating it cluster-wide if needed), as
    /// CTDB's client library does: attach, find its path, check its health,
    /// set read-only/sticky flags if asked, learn the open flags, and open
    /// the local file.
    pub async fn attach(&self, name: &str, kind: DbKind, flags: u8) -> Result<Db> {
        let id = self.db_attach(CTDB_CURRENT_NODE, name, kind, 0).await?;
        self.open_attached(id, name, kind, flags).await
    }

    /// Opens a database this node has already attached (by id), as
    /// [`attach`](Client::attach) does after its `DB_ATTACH`.
    pub async fn open_attached(&self, id: u32, name: &str, kind: DbKind, flags: u8) -> Result<Db> {
        let dest = CTDB_CURRENT_NODE;
        let path = self.getdbpath(dest, id).await?;
        if let Some(reason) = self.db_get_health(dest, id).await? {
            return Err(ClientError::Other(format!(
                "database {name} is unhealthy: {reason}"
            )));
        }
        if flags & db_flags::READONLY != 0 {
            self.set_db_readonly(dest, id).await?;
        }
        if flags & db_flags::STICKY != 0 {
            self.set_db_sticky(dest, id).await?;
        }
        let tdb_flags = self.db_open_flags(dest, id).await?;
        let file = open_local(PathBuf::from(path), tdb_flags as u32)?;
        let kind_flags = kind.flags();
        Ok(Db {
            client: self.clone(),
            id,
            name: name.to_owned(),
            flags: kind_flags | flags,
            file,
            migrations: Arc::default(),
            glock: Arc::default(),
        })
    }
}

impl Db {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> DbKind {
        DbKind::from_flags(self.flags)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many record migrations this handle has asked the daemon for.
    pub fn migrations(&self) -> u64 {
        self.migrations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The local file.
    pub fn local(&self) -> &Arc<LocalFile> {
        &self.file
    }

    /// Reads a record from the local copy without locking or migrating
    /// it: the header and the value, or `None`.
    pub fn fetch_local(&self, key: &[u8]) -> Result<Option<(LtdbHeader, Vec<u8>)>> {
        let rec = self.file.with(|t| t.fetch(key)).map_err(tdb_err)?;
        match rec {
            Some(v) if v.len() >= LtdbHeader::WIRE_SIZE => {
                let (h, d) = LtdbHeader::split(&v)?;
                Ok(Some((h, d.to_vec())))
            }
            _ => Ok(None),
        }
    }

    /// Every record of the local copy.
    pub fn traverse_local(&self) -> Result<Vec<crate::TraverseRecord>> {
        let mut out = Vec::new();
        self.file
            .with(|t| {
                t.traverse_read(|k, v| {
                    if let Ok((header, d)) = LtdbHeader::split(v) {
                        out.push(crate::TraverseRecord {
                            header,
                            key: k.to_vec(),
                            data: d.to_vec(),
                        });
                    }
                    std::ops::ControlFlow::Continue(())
                })
            })
            .map_err(tdb_err)?;
        Ok(out)
    }

    /// Tells the daemon that a record's local copy was emptied, so that
    /// vacuuming may delete it, without waiting for its answer (which
    /// only says the record is in the vacuuming queue; awaiting it cost
    /// two round trips to the daemon on every delete and on every g_lock
    /// release that empties its record, a commit's critical path). CTDB's
    /// client waits; what it gets from that is that the hint left the
    /// process, which this connection guarantees otherwise: a hint is in
    /// the socket when this returns unless the socket was full, and then
    /// the dropping of the connection's last handle writes it (see
    /// [`crate::connection`]: a process that exits without dropping its
    /// client, `std::process::exit`, must [`Client::flush`] first). Our
    /// later requests on this connection are handled after it, in order.
    /// A hint that is lost anyway only leaves the empty record to the next
    /// full vacuuming run.
    ///
    /// [`Client::flush`]: crate::Client::flush
    pub(crate) fn hint_deletion(&self, header: LtdbHeader, key: &[u8]) -> Result<()> {
        self.client
            .control_noreply(CTDB_CURRENT_NODE, self.deletion_request(header, key))
    }

    /// [`hint_deletion`](Db::hint_deletion), waiting for the daemon's
    /// answer as CTDB's client does (for [`RecordHandle`]'s delete, which
    /// keeps the record locked until then).
    ///
    /// [`RecordHandle`]: record::RecordHandle
    pub(crate) async fn schedule_for_deletion(&self, header: LtdbHeader, key: &[u8]) -> Result<()> {
        let r = self
            .client
            .control_raw(CTDB_CURRENT_NODE, self.deletion_request(header, key))
            .await?;
        if r.status != 0 {
            return Err(ClientError::Other(format!(
                "SCHEDULE_FOR_DELETION failed with status {}",
                r.status
            )));
        }
        Ok(())
    }

    /// The `SCHEDULE_FOR_DELETION` control for `key` with `header`.
    fn deletion_request(&self, header: LtdbHeader, key: &[u8]) -> ctdb_protocol::ReqControl {
        ctdb_protocol::ReqControl::new(ControlRequest::ScheduleForDeletion(
            ctdb_protocol::types::KeyData {
                db_id: self.id,
                header,
                key: key.to_vec(),
            },
        ))
    }

    /// `g_lock.tdb` for this database's transactions (attached once).
    pub(crate) async fn glock_db(&self) -> Result<Db> {
        self.glock
            .get_or_try_init(|| self.client.g_lock_db())
            .await
            .cloned()
    }
}

pub(crate) fn tdb_err(e: tdb::Error) -> ClientError {
    ClientError::Other(format!("local database: {e}"))
}
