//! Database health, as CTDB 4.17 keeps it: `persistent_health.tdb.PNN` in
//! the state directory holds, for each persistent database that is not
//! healthy, its name (no NUL) and the reason (a string, no NUL). The
//! daemon's copy of a reason (`Db::health`) is what `UPDATE_RECORD` and
//! traverses look at; it is read from the file again at attach,
//! `DB_GET_HEALTH`, `DB_SET_HEALTHY` and recovery commits.
//!
//! CTDB's rules, followed here:
//!
//! * start-up: the file is opened and checked; if that fails the daemon
//!   does not start (CTDB 4.17 tries once more with `CLEAR_IF_FIRST`, and
//!   gives up either way). A persistent database with a reason in the
//!   file, or whose tdb fails to open or `tdb_check`, fails the attach,
//!   and at start-up that stops the daemon ("Failed to attach to
//!   databases"). CTDB's alternative (back up the corrupt file as
//!   `NAME.corrupted.TIMESTAMP.0Z`, mark the database unhealthy, start
//!   with an empty one) needs `max_persistent_check_errors` above 0,
//!   which nothing in 4.17 sets, so it is not reproduced;
//! * `DB_GET_HEALTH`: the reason, or no data when healthy;
//! * `DB_SET_HEALTHY` (the tool's `wipedb` and `restoredb` send it):
//!   the reason is removed; if there was one and the node is in run state
//!   STARTUP, the node goes into recovery;
//! * a recovery's `DB_TRANSACTION_COMMIT`: healthy again if any node of
//!   the nodes file had no flags at all when the commit was asked for;
//!   otherwise an existing reason is kept, prefixed
//!   `NO-HEALTHY-NODES - ` (once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ctdb_protocol::types::Runstate;
use ctdb_protocol::{ControlReply, ReplyControl};
use tdb::StoreMode;
use tracing::{error, info, warn};

use super::{Databases, Effect, Env};

/// The health file's name in the state directory (`.PNN` appended).
pub const FILE: &str = "persistent_health.tdb";

const NO_HEALTHY_PREFIX: &str = "NO-HEALTHY-NODES - ";

/// The health file.
pub struct HealthStore {
    tdb: tdb::Tdb,
    path: PathBuf,
}

impl HealthStore {
    /// Opens (creating) and checks `DIR/persistent_health.tdb.PNN`.
    pub fn open(dir: &Path, pnn: u32) -> Result<HealthStore, String> {
        let path = dir.join(format!("{FILE}.{pnn}"));
        let _ = std::fs::create_dir_all(dir);
        let tdb = tdb::OpenOptions::new()
            .create(true)
            .tdb_flags(tdb::flags::DISALLOW_NESTING)
            .open(&path)
            .map_err(|e| format!("Failed to open tdb '{}': {e}", path.display()))?;
        if let Err(e) = tdb.check() {
            return Err(format!("tdb_check('{}') failed: {e}", path.display()));
        }
        Ok(HealthStore { tdb, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reason database `name` is unhealthy, if it is.
    pub fn load(&self, name: &str) -> Result<Option<String>, String> {
        let v = self
            .tdb
            .fetch(name.as_bytes())
            .map_err(|e| format!("reading the health of {name}: {e}"))?;
        Ok(v.filter(|v| !v.is_empty()).map(|v| reason_text(&v)))
    }

    /// CTDB's update: `given` (unhealthy for that reason), or healthy
    /// (`None`), which with no healthy node keeps an existing reason,
    /// prefixed. Returns the database's reason afterwards.
    pub fn update(
        &self,
        name: &str,
        given: Option<&str>,
        healthy_nodes: u32,
    ) -> Result<Option<String>, String> {
        let err = |e: tdb::Error| format!("updating the health of {name}: {e}");
        let tx = self.tdb.transaction_start().map_err(err)?;
        let old = tx
            .fetch(name.as_bytes())
            .map_err(err)?
            .filter(|v| !v.is_empty())
            .map(|v| reason_text(&v));
        let new = match (given, &old) {
            (Some(r), _) => Some(r.to_owned()),
            (None, Some(o)) if healthy_nodes == 0 => Some(if o.starts_with(NO_HEALTHY_PREFIX) {
                o.clone()
            } else {
                format!("{NO_HEALTHY_PREFIX}{o}")
            }),
            (None, _) => None,
        };
        match (&new, &old) {
            (Some(r), _) => {
                tx.store(name.as_bytes(), r.as_bytes(), StoreMode::Replace)
                    .map_err(err)?;
                error!("Updated db health for db({name}) to: {r}");
            }
            (None, Some(_)) => {
                tx.delete(name.as_bytes()).map_err(err)?;
                info!("Updated db health for db({name}): OK");
            }
            (None, None) => {}
        }
        tx.commit().map_err(err)?;
        Ok(new)
    }
}

/// A stored reason as text (CTDB copies up to the first NUL).
fn reason_text(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// The layer's health state: the file (once opened) and the healthy-node
/// counts of recovery commits in flight.
#[derive(Default)]
pub struct Health {
    store: Option<HealthStore>,
    commits: HashMap<u64, u32>,
}

/// Nodes of the nodes file with no flags at all (CTDB's count for a
/// recovery commit).
fn healthy_nodes(env: &Env) -> u32 {
    env.node.nodes.iter().filter(|n| n.flags == 0).count() as u32
}

impl Databases {
    /// Opens the health file (start-up, before persistent databases are
    /// attached). An error means the daemon must not start.
    pub fn open_health(&mut self, pnn: u32) -> Result<(), String> {
        let s = HealthStore::open(&self.cfg.state_dir, pnn)?;
        info!("Opened {}", s.path().display());
        self.health.store = Some(s);
        Ok(())
    }

    /// For the attach of a persistent database: its reason from the file.
    /// A database marked unhealthy is not attached (CTDB 4.17 refuses it
    /// unless `max_persistent_check_errors`, never set in 4.17, allows).
    pub(crate) fn health_attach_check(&self, name: &str) -> Result<(), String> {
        let Some(s) = &self.health.store else {
            return Ok(());
        };
        match s.load(name)? {
            Some(r) => Err(format!("ERROR: tdb {name} is marked as unhealthy: {r}")),
            None => Ok(()),
        }
    }

    /// `DB_GET_HEALTH`.
    pub(crate) fn db_get_health(&mut self, id: u32) -> ReplyControl {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Unknown db 0x{id:x}");
            return ReplyControl::status(-1);
        };
        if let Some(s) = &self.health.store {
            match s.load(&db.name) {
                Ok(r) => db.health = r,
                Err(e) => {
                    error!("ctdb_load_persistent_health({}) failed: {e}", db.name);
                    return ReplyControl::status(-1);
                }
            }
        }
        ReplyControl::ok(ControlReply::DbGetHealth(db.health.clone()))
    }

    /// `DB_SET_HEALTHY`.
    pub(crate) fn db_set_healthy(&mut self, env: &Env, id: u32) -> ReplyControl {
        let Some(db) = self.dbs.get_mut(&id) else {
            error!("Unknown db 0x{id:x}");
            return ReplyControl::status(-1);
        };
        let was_unhealthy = match &self.health.store {
            Some(s) => {
                let before = s.load(&db.name).ok().flatten().or(db.health.take());
                match s.update(&db.name, None, 1) {
                    Ok(r) => db.health = r,
                    Err(e) => {
                        error!("ctdb_update_persistent_health({}) failed: {e}", db.name);
                        return ReplyControl::status(-1);
                    }
                }
                before.is_some()
            }
            None => {
                let had = db.health.take().is_some();
                if had {
                    info!("Updated db health for db({}): OK", db.name);
                }
                had
            }
        };
        if was_unhealthy && env.node.runstate == Runstate::Startup {
            let msg = format!(
                "db {} become healthy  - force recovery for startup",
                db.name
            );
            error!("{msg}");
            self.effects.push(Effect::RecoveryActive(msg));
        }
        ReplyControl::ok(ControlReply::DbSetHealthy)
    }

    /// A recovery commit was asked for under `tag`: remember how many
    /// nodes were healthy then.
    pub(crate) fn health_commit_asked(&mut self, env: &Env, tag: u64) {
        self.health.commits.insert(tag, healthy_nodes(env));
    }

    /// The recovery commit of `tag` finished: on success the database's
    /// health is updated as CTDB does after its commit.
    pub(crate) fn health_commit_done(&mut self, id: u32, tag: u64, ok: bool) {
        let Some(healthy) = self.health.commits.remove(&tag) else {
            return;
        };
        if !ok {
            return;
        }
        let (Some(db), Some(s)) = (self.dbs.get_mut(&id), &self.health.store) else {
            return;
        };
        match s.update(&db.name, None, healthy) {
            Ok(r) => db.health = r,
            Err(e) => warn!("Failed to update persistent health for db {}: {e}", db.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_rules_as_ctdb() {
        let d = tempfile::tempdir().unwrap();
        let s = HealthStore::open(d.path(), 3).unwrap();
        assert!(d.path().join("persistent_health.tdb.3").exists());
        assert_eq!(s.load("a.tdb").unwrap(), None);
        // Healthy with no reason: nothing stored.
        assert_eq!(s.update("a.tdb", None, 0).unwrap(), None);
        assert_eq!(
            s.update("a.tdb", Some("broken"), 3).unwrap().as_deref(),
            Some("broken")
        );
        assert_eq!(s.load("a.tdb").unwrap().as_deref(), Some("broken"));
        // No healthy node: the reason stays, prefixed once.
        let p = Some("NO-HEALTHY-NODES - broken");
        assert_eq!(s.update("a.tdb", None, 0).unwrap().as_deref(), p);
        assert_eq!(s.update("a.tdb", None, 0).unwrap().as_deref(), p);
        // A healthy node: gone.
        assert_eq!(s.update("a.tdb", None, 1).unwrap(), None);
        assert_eq!(s.load("a.tdb").unwrap(), None);
        // Reopened: what was stored is still there; a reason with a NUL
        // is read up to it.
        s.tdb
            .store(b"b.tdb", b"why\0junk", StoreMode::Replace)
            .unwrap();
        drop(s);
        let s = HealthStore::open(d.path(), 3).unwrap();
        assert_eq!(s.load("b.tdb").unwrap().as_deref(), Some("why"));
        assert_eq!(s.load("a.tdb").unwrap(), None);
    }

    #[test]
    fn a_corrupt_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = HealthStore::open(d.path(), 0).unwrap();
        s.update("x.tdb", Some("r"), 1).unwrap();
        let path = s.path().to_owned();
        drop(s);
        corrupt_chains(&path);
        assert!(HealthStore::open(d.path(), 0).is_err());
    }

    /// Points every hash chain of a tdb past its end.
    pub(crate) fn corrupt_chains(path: &Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        // Header 168 bytes, freelist 4, then the chains.
        let mut off = 172;
        while off + 4 <= len.min(172 + 4 * 131) {
            f.write_all_at(&0x7fff_fff0u32.to_le_bytes(), off).unwrap();
            off += 4;
        }
    }
}
