//! One attached database: its file, where it is, how it is opened, and
//! the per-database state the other modules keep.
//!
//! Files are named and placed as CTDB places them: `NAME.PNN` in the
//! volatile database directory (volatile and replicated databases, wiped
//! when first opened) or in the persistent database directory (kept across
//! restarts). The tdb flags are CTDB's: persistent files are plain,
//! synced tdbs; volatile and replicated ones skip fsync, use the Jenkins
//! hash and are cleared by their first opener; volatile ones use robust
//! mutexes for record locks when mutexes are enabled.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ctdb_protocol::types::{DbStatistics, db_flags};
use tracing::{info, warn};

use super::recovery::Freeze;
use super::{DbConfig, Work};

/// The longest database name accepted (the file name `NAME.PNN` must fit
/// in a directory entry).
pub const MAX_NAME: usize = 240;

/// An attached database.
pub struct Db {
    pub id: u32,
    pub name: String,
    /// CTDB database flags (`PERSISTENT`, `REPLICATED`, `READONLY`,
    /// `STICKY`).
    pub flags: u8,
    pub path: PathBuf,
    /// The tdb flags the file was opened with (`DB_OPEN_FLAGS`), plus
    /// `TDB_SEQNUM` once a client enabled sequence numbers.
    pub tdb_flags: u32,
    /// With sequence numbers enabled (`ENABLE_SEQNUM`), the number the
    /// periodic check last saw ([`super::seqnum`]).
    pub seqnum: Option<u32>,
    /// An `UPDATE_SEQNUM` arrived while the handle was away.
    pub seqnum_bump_pending: bool,
    /// The handle; `None` while background work has it.
    pub tdb: Option<tdb::Tdb>,
    /// Set when a thaw sent the handle home: pending calls are resent when
    /// it arrives.
    pub thawing: bool,
    /// The generation the database was last recovered in.
    pub generation: u32,
    /// Why the database is unhealthy, if it is.
    pub health: Option<String>,
    /// Work waiting for the handle, in arrival order.
    pub deferred: VecDeque<Work>,
    /// Work waiting for record locks a client holds ([`super::lockwait`]).
    pub locks: super::lockwait::LockWaits,
    pub freeze: Freeze,
    /// A frozen-by-`FREEZE` volatile database has nothing to give to a
    /// pull (this node was inactive).
    pub invalid_records: bool,
    /// Recovery transaction id, once `DB_TRANSACTION_START` ran.
    pub txn: Option<u32>,
    /// Srvid of a running `DB_PUSH`.
    pub push: Option<u64>,
    pub stats: DbStatistics,
    /// Migrations here per key, for the hot keys.
    pub migrations: crate::stats::MigrationCounts,
    /// Persistent kinds: content checksum and change log ([`super::changelog`]).
    pub changelog: Option<std::sync::Arc<super::changelog::DbLog>>,
}

impl Db {
    /// Persistent, or ctdb-rs's keyed kind (which is persistent in every
    /// way but its recovery, see `db::inmemory`).
    pub fn persistent(&self) -> bool {
        self.flags & (db_flags::PERSISTENT | db_flags::KEYED) != 0
    }

    pub fn replicated(&self) -> bool {
        self.flags & db_flags::REPLICATED != 0
    }

    /// Neither persistent nor replicated.
    pub fn volatile(&self) -> bool {
        !self.persistent() && !self.replicated()
    }

    pub fn frozen(&self) -> bool {
        matches!(self.freeze, Freeze::Frozen { .. })
    }

    /// May clients and nodes use it? Not while frozen, unless recovery
    /// has started its transaction.
    pub fn allow_access(&self) -> bool {
        matches!(self.freeze, Freeze::None) || self.txn.is_some()
    }
}

/// The tdb flags CTDB 4.17 opens a database with.
pub fn tdb_flags(flags: u8, mutexes: bool) -> u32 {
    use tdb::flags as f;
    let base = if flags & db_flags::KEYED != 0 {
        f::DEFAULT
    } else if flags & db_flags::INMEMORY != 0 {
        // ctdb-rs in-memory persistent: a persistent file that never syncs.
        f::NOSYNC
    } else if flags & db_flags::PERSISTENT != 0 {
        f::DEFAULT
    } else if flags & db_flags::REPLICATED != 0 {
        f::NOSYNC | f::CLEAR_IF_FIRST | f::INCOMPATIBLE_HASH
    } else {
        let mut v = f::NOSYNC | f::CLEAR_IF_FIRST | f::INCOMPATIBLE_HASH;
        if mutexes {
            v |= f::MUTEX_LOCKING;
        }
        v
    };
    base | f::DISALLOW_NESTING
}

/// Where database `name` lives on node `pnn`.
pub fn db_path(cfg: &DbConfig, name: &str, flags: u8, pnn: u32) -> PathBuf {
    let dir = if flags & db_flags::KEYED != 0 {
        // Not found by the start-up scan of classic persistent files.
        return cfg
            .persistent_dir
            .join("keyed")
            .join(format!("{name}.{pnn}"));
    } else if flags & db_flags::PERSISTENT != 0 && flags & db_flags::INMEMORY == 0 {
        &cfg.persistent_dir
    } else {
        &cfg.volatile_dir
    };
    dir.join(format!("{name}.{pnn}"))
}

/// Checks a database name from a client: not empty, not too long, and a
/// plain file name (it becomes one).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty database name".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "database name of {} bytes is too long (at most {MAX_NAME})",
            name.len()
        ));
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(format!("invalid database name \"{name}\""));
    }
    Ok(())
}

/// Opens (creating if needed) the file of database `name` and returns it
/// attached, in generation `generation`.
#[allow(clippy::too_many_arguments)]
pub fn open(
    cfg: &DbConfig,
    name: &str,
    flags: u8,
    pnn: u32,
    hash_size: u32,
    max_dead: u32,
    generation: u32,
) -> Result<Db, String> {
    let path = db_path(cfg, name, flags, pnn);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tflags = tdb_flags(flags, cfg.mutexes);
    let tdb = open_file(&path, tflags, hash_size, max_dead)?;
    if (flags & (db_flags::PERSISTENT | db_flags::KEYED) == 0) || flags & db_flags::INMEMORY != 0 {
        // Volatile, replicated and in-memory databases start empty, even if a stale
        // process still had the file open (so the clear did not happen).
        let n = tdb.record_count().map_err(|e| e.to_string())?;
        if n != 0 {
            warn!(
                "database {} not empty on attach ({n} records): wiping it",
                path.display()
            );
            tdb.wipe_all().map_err(|e| e.to_string())?;
        }
    } else if let Err(e) = tdb.check() {
        return Err(format!("tdb_check({}) failed: {e}", path.display()));
    }
    info!(
        "Attached to database '{}' with flags 0x{tflags:x}",
        path.display()
    );
    let changelog = super::changelog::DbLog::open(&tdb, flags);
    Ok(Db {
        id: super::ltdb::db_id(name),
        name: name.to_owned(),
        flags,
        path,
        tdb_flags: tflags,
        seqnum: None,
        seqnum_bump_pending: false,
        tdb: Some(tdb),
        thawing: false,
        generation,
        health: None,
        deferred: VecDeque::new(),
        locks: Default::default(),
        freeze: Freeze::None,
        invalid_records: false,
        txn: None,
        push: None,
        stats: DbStatistics {
            num_hot_keys: ctdb_protocol::types::MAX_HOT_KEYS as u32,
            ..Default::default()
        },
        migrations: Default::default(),
        changelog,
    })
}

fn open_file(path: &Path, tflags: u32, hash_size: u32, max_dead: u32) -> Result<tdb::Tdb, String> {
    tdb::OpenOptions::new()
        .create(true)
        .hash_size(hash_size)
        .tdb_flags(tflags)
        .max_dead(max_dead)
        .open(path)
        .map_err(|e| format!("Failed to open tdb '{}': {e}", path.display()))
}

/// The persistent databases of node `pnn` found in `dir` (`NAME.tdb.PNN`),
/// as CTDB attaches them at start-up.
pub fn persistent_names(dir: &Path, pnn: u32) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for e in rd.flatten() {
        let Some(f) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(p) = f.find(".tdb.") else {
            continue;
        };
        let digits = &f[p + 5..];
        if f.len() < 7 || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if digits.parse::<u32>().ok() != Some(pnn) {
            info!("Ignoring persistent database '{f}'");
            continue;
        }
        names.push(f[..p + 4].to_owned());
    }
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_as_ctdb() {
        // The reference reports 0x1c41 for a volatile database.
        assert_eq!(tdb_flags(0, true), 0x1c41);
        assert_eq!(tdb_flags(db_flags::PERSISTENT, true), 0x400);
        assert_eq!(tdb_flags(db_flags::REPLICATED, true), 0x0c41);
    }

    #[test]
    fn names() {
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name("locking.tdb").is_ok());
    }

    fn cfg(d: &tempfile::TempDir) -> DbConfig {
        DbConfig {
            volatile_dir: d.path().join("volatile"),
            persistent_dir: d.path().join("persistent"),
            state_dir: d.path().join("state"),
            mutexes: true,
            traverse_helper: PathBuf::from("ctdbd"),
        }
    }

    /// Volatile databases start empty; persistent ones keep their records.
    #[test]
    fn volatile_wiped_persistent_kept() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg(&d);
        for (flags, kept) in [(0, false), (db_flags::PERSISTENT, true)] {
            let db = open(&cfg, "t.tdb", flags, 3, 1031, 5, 7).unwrap();
            assert_eq!(db.id, super::super::ltdb::db_id("t.tdb"));
            assert_eq!(db.generation, 7);
            let dir = if kept { "persistent" } else { "volatile" };
            assert_eq!(db.path, d.path().join(dir).join("t.tdb.3"));
            let tdb = db.tdb.unwrap();
            tdb.store(b"k", &[0u8; 30], tdb::StoreMode::Replace)
                .unwrap();
            drop(tdb);
            let db = open(&cfg, "t.tdb", flags, 3, 1031, 5, 7).unwrap();
            let n = db.tdb.as_ref().unwrap().record_count().unwrap();
            assert_eq!(n, usize::from(kept), "flags {flags}");
        }
    }

    #[test]
    fn finds_persistent_files() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.tdb.1", "b.tdb.2", "c.tdb.1x", "d.tdb.1", "e.txt"] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        assert_eq!(persistent_names(d.path(), 1), vec!["a.tdb", "d.tdb"]);
    }
}
