//! ctdb-rs's extension kinds of database, and the first of them: the
//! in-memory persistent database.
//!
//! An in-memory persistent database (`db_flags::PERSISTENT |
//! db_flags::INMEMORY`) is a persistent database in every respect the
//! protocol sees (every node holds every record, changes are cluster-wide
//! `TRANS3_COMMIT` transactions applied by `UPDATE_RECORD` on every node,
//! recovery takes the copy with the highest sequence number), except that
//! its file lives in the volatile directory, is opened `TDB_NOSYNC` (its
//! transactions never `fsync`) and is emptied whenever this daemon opens it.
//! Its contents survive as long as one node keeps running; a node that
//! restarts gets them back in the recovery its return starts; after a
//! restart of the whole cluster the database is attached again, empty.
//!
//! Exposure: `DB_ATTACH_EXT` (an opcode CTDB 4.17 does not have: its
//! daemon answers any unknown control with status -1) carries the name and
//! the flags. A client's attach first asks every other node of the node
//! map, with `probe` set, whether it would accept the attach; only when all
//! say yes is the database attached here and on every connected node
//! (the same control, without `probe`). A CTDB 4.17 node refuses the probe,
//! a disconnected node cannot be asked: either way the client's attach fails
//! with a message naming the node, and nothing is attached anywhere.
//!
//! The second kind, keyed (`db_flags::KEYED`, without the persistent bit),
//! is a persistent database on disk (`PERSISTENT_DIR/keyed/NAME.PNN`,
//! synced) whose clients lock the keys of a transaction, not the database
//! (the client crate's `KeyedTransaction`), so this daemon takes concurrent
//! `TRANS3_COMMIT`s for it. Without the persistent bit in its flags, both
//! recovery helpers recover it as they recover a volatile database: every
//! node's copy is pulled and merged record by record, highest rsn winning.
//! Inside this daemon it is persistent in every other respect
//! (`Db::persistent`): no migration, no vacuuming, tdb transactions.
//!
//! The kind of every extension database is remembered in
//! `STATE_DIR/extended-dbs/NAME.PNN` (the flags, in decimal), so that a
//! restarting daemon attaches it again at start-up, empty, with its kind:
//! the recovery its return starts (whichever recovery helper runs it) then
//! finds the database on every node with the same flags and refills it
//! from the node with the highest sequence number.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use ctdb_protocol::control::CTDB_CTRL_FLAG_ATTACH_RECOVERY;
use ctdb_protocol::types::{DbAttachExt, KEYED_EPOCH_KEY, RecBuffer, db_flags};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl, ReqControl};
use tracing::{error, info, warn};

use super::{Databases, Effect, Env, file};
use crate::control::ControlCtx;
use crate::server::ReplyTo;

/// The extension flag combinations this daemon can attach.
pub fn supported(flags: u32) -> Result<u8, String> {
    const INMEMORY: u32 = (db_flags::PERSISTENT | db_flags::INMEMORY) as u32;
    const KEYED: u32 = db_flags::KEYED as u32;
    const PARTIAL: u32 = db_flags::PARTIAL_REPLICA as u32;
    match flags {
        INMEMORY | KEYED | PARTIAL => Ok(flags as u8),
        f => Err(format!(
            "database flags 0x{f:x} are not an extension kind this node supports \
             (in-memory persistent 0x{INMEMORY:x}, keyed 0x{KEYED:x}, \
             partially replicated 0x{PARTIAL:x})"
        )),
    }
}

/// A client's `DB_ATTACH_EXT` waiting for the other nodes' probe replies.
#[derive(Debug)]
pub struct ProbeWait {
    ctx: ControlCtx,
    req: ReqControl,
    to: ReplyTo,
    name: String,
    flags: u8,
    pending: BTreeSet<u32>,
    refused: Vec<(u32, String)>,
}

/// Attaches of extension kinds in progress: each probe has a tag of its
/// own, naming the attach and the node asked.
#[derive(Debug, Default)]
pub struct ExtAttaches {
    probes: HashMap<u64, (u64, u32)>,
    waits: HashMap<u64, ProbeWait>,
    next: u64,
}

impl ExtAttaches {
    pub fn owns(&self, tag: u64) -> bool {
        self.probes.contains_key(&tag)
    }
}

/// Where the kind of extension database `name` is remembered.
fn marker_dir(cfg: &super::DbConfig) -> PathBuf {
    cfg.state_dir.join("extended-dbs")
}

impl Databases {
    /// `DB_ATTACH_EXT`.
    pub(crate) fn attach_ext(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        a: &DbAttachExt,
    ) -> Option<ReplyControl> {
        let flags = match supported(a.flags) {
            Ok(f) => f,
            Err(why) => {
                error!("DB_ATTACH_EXT {} refused: {why}", a.name);
                return Some(ReplyControl::error(-1, why));
            }
        };
        if let Err(why) = file::check_name(&a.name) {
            error!("DB_ATTACH_EXT refused: {why}");
            return Some(ReplyControl::error(-1, why));
        }
        if let Some(d) = self.dbs.values().find(|d| d.name == a.name) {
            let kind = d.flags & !(db_flags::READONLY | db_flags::STICKY);
            if kind != flags {
                let why = format!(
                    "database {} is attached with flags 0x{kind:x}, not 0x{flags:x}",
                    a.name
                );
                error!("DB_ATTACH_EXT refused: {why}");
                return Some(ReplyControl::error(-1, why));
            }
        }
        let from_client = ctx.srcnode == env.pnn() && ctx.client.is_some();
        let recovery = req.flags & CTDB_CTRL_FLAG_ATTACH_RECOVERY != 0;
        let known = self.dbs.values().any(|d| d.name == a.name);
        // A new keyed database needs a recovery helper that can recover it,
        // here and (asked by the probe) on every other node.
        if flags == db_flags::KEYED
            && (a.probe || (from_client && !recovery && !known))
            && let Err(why) = super::keyed_recovery::helper_check()
        {
            let why = format!("node {}: {why}", env.pnn());
            error!("DB_ATTACH_EXT {} refused: {why}", a.name);
            return Some(ReplyControl::error(-1, why));
        }
        if a.probe {
            return Some(ReplyControl::ok(ControlReply::DbAttachExt(0)));
        }
        if !from_client || recovery || known {
            // From another node (which probed), from a recovery, or
            // already here: attach (or answer) as any attach.
            return self.attach_kind(env, ctx, req, to, &a.name, flags);
        }
        // A new database from a local client: every other node must take it.
        let mut pending = BTreeSet::new();
        for n in env.node.nodes.iter() {
            if n.is_deleted() || n.pnn == env.pnn() {
                continue;
            }
            if !n.is_connected() {
                let why = format!(
                    "node {} is not connected: cannot check that it supports \
                     this database kind (ctdb-rs extension)",
                    n.pnn
                );
                error!("DB_ATTACH_EXT {} refused: {why}", a.name);
                return Some(ReplyControl::error(-1, why));
            }
            pending.insert(n.pnn);
        }
        if pending.is_empty() {
            return self.attach_kind(env, ctx, req, to, &a.name, flags);
        }
        self.ext.next += 1;
        let wait = self.ext.next;
        for &dest in &pending {
            let tag = self.new_tag();
            self.ext.probes.insert(tag, (wait, dest));
            let mut r = ReqControl::new(ControlRequest::DbAttachExt(DbAttachExt {
                flags: a.flags,
                probe: true,
                name: a.name.clone(),
            }));
            r.client_id = req.client_id;
            self.effect(Effect::Control {
                dest,
                req: r,
                tag: Some(tag),
            });
        }
        self.ext.waits.insert(
            wait,
            ProbeWait {
                ctx: *ctx,
                req: req.clone(),
                to,
                name: a.name.clone(),
                flags,
                pending,
                refused: Vec::new(),
            },
        );
        None
    }

    /// A node answered a probe.
    pub(crate) fn ext_probe_reply(&mut self, env: &Env, tag: u64, r: Result<ReplyControl, String>) {
        let Some((wait, pnn)) = self.ext.probes.remove(&tag) else {
            return;
        };
        let Some(w) = self.ext.waits.get_mut(&wait) else {
            return;
        };
        w.pending.remove(&pnn);
        match r {
            Ok(rc) if rc.status == 0 => {}
            Ok(rc) => w.refused.push((
                pnn,
                format!(
                    "status {}{}",
                    rc.status,
                    rc.errmsg.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
            )),
            Err(e) => w.refused.push((pnn, e)),
        }
        if !w.pending.is_empty() {
            return;
        }
        let Some(w) = self.ext.waits.remove(&wait) else {
            return;
        };
        if !w.refused.is_empty() {
            let list: Vec<String> = w
                .refused
                .iter()
                .map(|(p, why)| format!("node {p} refused DB_ATTACH_EXT: {why}"))
                .collect();
            let why = format!(
                "cannot attach database {} (flags 0x{:x}): {}; \
                 every node must run ctdb-rs (CTDB 4.17 does not know this kind)",
                w.name,
                w.flags,
                list.join(", ")
            );
            error!("{why}");
            self.reply(w.to, ReplyControl::error(-1, why));
            return;
        }
        if let Some(r) = self.attach_kind(env, &w.ctx, &w.req, w.to, &w.name, w.flags) {
            self.reply(w.to, r);
        }
    }

    /// Attaches through the common attach path, and remembers the kind.
    fn attach_kind(
        &mut self,
        env: &Env,
        ctx: &ControlCtx,
        req: &ReqControl,
        to: ReplyTo,
        name: &str,
        flags: u8,
    ) -> Option<ReplyControl> {
        let r = self.attach(env, ctx, req, to, name, flags);
        if r.as_ref().is_some_and(|r| r.status == 0) {
            self.remember_kind(env, name, flags);
        }
        r
    }

    /// Notes the kind of extension database `name` for the next start.
    fn remember_kind(&self, env: &Env, name: &str, flags: u8) {
        let dir = marker_dir(&self.cfg);
        let path = dir.join(format!("{name}.{}", env.pnn()));
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == flags.to_string()) {
            return;
        }
        let r = std::fs::create_dir_all(&dir).and_then(|()| {
            let tmp = dir.join(format!(".{name}.{}.tmp", env.pnn()));
            std::fs::write(&tmp, format!("{flags}\n"))?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = r {
            warn!(
                "could not remember the kind of database {name} in {}: {e} \
                 (after a restart it must be attached again)",
                path.display()
            );
        }
    }

    /// At start-up: attaches the extension databases this node had, empty.
    pub fn attach_remembered(&mut self, env: &Env) {
        let dir = marker_dir(&self.cfg);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let suffix = format!(".{}", env.pnn());
        let mut found: Vec<(String, u8)> = Vec::new();
        for e in rd.flatten() {
            let Some(f) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(name) = f.strip_suffix(&suffix) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let flags = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            match flags.map(supported) {
                Some(Ok(fl)) => found.push((name.to_owned(), fl)),
                _ => warn!("ignoring {}: not a database kind this node supports", f),
            }
        }
        found.sort();
        for (name, flags) in found {
            if self.dbs.values().any(|d| d.name == name) {
                continue;
            }
            match file::open(
                &self.cfg,
                &name,
                flags,
                env.pnn(),
                env.tunables.database_hash_size,
                env.tunables.database_max_dead,
                env.generation(),
            ) {
                Ok(db) => {
                    let id = db.id;
                    if self.dbs.contains_key(&id) {
                        error!("db_id 0x{id:x} hash collision for '{name}'");
                        continue;
                    }
                    info!("Attached database {name} (flags 0x{flags:x}) again");
                    self.dbs.insert(id, db);
                    self.order.push(id);
                    self.changelog_compute_now(id);
                }
                Err(e) => error!("Failed to attach database '{name}' (flags 0x{flags:x}): {e}"),
            }
        }
    }
}

/// Keyed databases: the commit the coordinating node sends out, with
/// every record stamped with the current generation (`reserved1` of its
/// header). A node applies a keyed update only in the generation it was
/// stamped in ([`keyed_update_current`]): an update sent before a recovery
/// and delivered after it (a busy node reads its sockets late) is refused,
/// so what a recovery merged is never changed afterwards by a commit that
/// the recovery ended and whose client may since have given up its keys.
/// A client's commit may not write the epoch record the recovery helper
/// keeps ([`ctdb_protocol::types::KEYED_EPOCH_KEY`]).
pub fn keyed_stamp(rb: &RecBuffer, generation: u32) -> Result<RecBuffer, String> {
    let mut out = RecBuffer::new(rb.db_id);
    for rec in rb.iter() {
        let (mut h, data) = rec
            .header()
            .map_err(|e| format!("bad record in keyed commit: {e}"))?;
        if rec.key == KEYED_EPOCH_KEY {
            return Err("a keyed commit may not write the epoch record".into());
        }
        h.reserved1 = generation;
        out.add(rec.reqid, Some(&h), rec.key, data);
    }
    Ok(out)
}

/// Whether a keyed update was stamped in generation `generation` (see
/// [`keyed_stamp`]).
pub fn keyed_update_current(rb: &RecBuffer, generation: u32) -> Result<(), String> {
    for rec in rb.iter() {
        let (h, _) = rec
            .header()
            .map_err(|e| format!("bad record in keyed update: {e}"))?;
        if h.reserved1 != generation {
            return Err(format!(
                "keyed update of generation {} refused in generation {generation} \
                 (sent before a recovery)",
                h.reserved1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let im = u32::from(db_flags::PERSISTENT | db_flags::INMEMORY);
        assert_eq!(supported(im), Ok(0x11));
        assert!(supported(u32::from(db_flags::INMEMORY)).is_err());
        assert!(supported(u32::from(db_flags::PERSISTENT)).is_err());
        assert_eq!(supported(u32::from(db_flags::KEYED)), Ok(0x20));
        assert!(supported(u32::from(db_flags::PERSISTENT | db_flags::KEYED)).is_err());
    }

    #[test]
    fn keyed_updates_are_stamped_and_checked_by_generation() {
        use ctdb_protocol::types::LtdbHeader;
        let mut rb = RecBuffer::new(7);
        let h = LtdbHeader {
            rsn: 3,
            dmaster: 1,
            ..Default::default()
        };
        rb.add(0, Some(&h), b"a", b"x");
        rb.add(0, Some(&h), b"b", b"y");
        let s = keyed_stamp(&rb, 42).unwrap();
        assert_eq!(s.count(), 2);
        for r in s.iter() {
            let (sh, _) = r.header().unwrap();
            assert_eq!((sh.rsn, sh.dmaster, sh.reserved1), (3, 1, 42));
        }
        assert!(keyed_update_current(&s, 42).is_ok());
        let e = keyed_update_current(&s, 43).unwrap_err();
        assert!(e.contains("generation 42"), "{e}");
        let mut bad = RecBuffer::new(7);
        bad.add(0, Some(&h), KEYED_EPOCH_KEY, b"z");
        assert!(keyed_stamp(&bad, 1).is_err());
    }

    /// Its file never syncs, lives in the volatile directory and starts
    /// empty every time it is opened.
    #[test]
    fn file_is_unsynced_volatile_and_emptied() {
        let im = db_flags::PERSISTENT | db_flags::INMEMORY;
        let tf = file::tdb_flags(im, true);
        assert_ne!(tf & tdb::flags::NOSYNC, 0);
        assert_eq!(tf & tdb::flags::MUTEX_LOCKING, 0);
        let d = tempfile::tempdir().unwrap();
        let cfg = super::super::DbConfig {
            volatile_dir: d.path().join("volatile"),
            persistent_dir: d.path().join("persistent"),
            state_dir: d.path().join("state"),
            mutexes: true,
            traverse_helper: PathBuf::from("ctdbd"),
        };
        let db = file::open(&cfg, "m.tdb", im, 1, 1031, 5, 2).unwrap();
        assert_eq!(db.path, d.path().join("volatile").join("m.tdb.1"));
        assert!(db.persistent() && !db.volatile());
        db.tdb
            .as_ref()
            .unwrap()
            .store(b"k", b"v", tdb::StoreMode::Replace)
            .unwrap();
        drop(db);
        let db = file::open(&cfg, "m.tdb", im, 1, 1031, 5, 2).unwrap();
        assert_eq!(db.tdb.as_ref().unwrap().record_count().unwrap(), 0);
    }
}
