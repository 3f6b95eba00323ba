//! The fake daemon's databases: each a real TDB file under the database
//! directory, so that clients which open the file themselves (as CTDB's
//! client library does after attaching) see what the daemon stores.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ctdb_protocol::types::{LtdbHeader, RecBuffer, db_flags};
use tdb::{OpenOptions, StoreMode, Tdb, flags};

/// The key persistent databases keep their sequence number under.
pub const SEQNUM_KEY: &[u8] = b"__db_sequence_number__\0";

/// One attached database.
pub struct Database {
    pub id: u32,
    pub name: String,
    pub path: PathBuf,
    pub flags: u8,
    /// The sequence number the DBMAP section gave, used while the file has
    /// no sequence number record of its own.
    pub initial_seqnum: u64,
    pub tdb: Tdb,
    /// Frozen by `DB_FREEZE` (until `DB_THAW`).
    pub frozen: bool,
    /// Records received by a `DB_PUSH_START` .. `DB_PUSH_CONFIRM` push.
    pub push: Option<Push>,
}

/// A push of records in progress.
pub struct Push {
    pub srvid: u64,
    /// Records received so far, per node pushed to.
    pub counts: std::collections::HashMap<u32, u32>,
}

/// The id CTDB gives a database: the Jenkins hash of its name with the
/// terminating NUL.
pub fn db_id_for(name: &str) -> u32 {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    tdb::hash::jenkins_hash(&key)
}

/// The `tdb_open` flags CTDB uses for a database of this kind.
pub fn tdb_flags_for(db_flags: u8) -> u32 {
    let base = if db_flags & db_flags::PERSISTENT != 0 {
        flags::DEFAULT
    } else {
        flags::NOSYNC | flags::CLEAR_IF_FIRST | flags::INCOMPATIBLE_HASH
    };
    base | flags::DISALLOW_NESTING
}

impl Database {
    /// Opens (creating if needed) the file of database `name` under `dir`.
    pub fn open(dir: &Path, id: u32, name: &str, flags: u8, seqnum: u64) -> tdb::Result<Self> {
        let path = dir.join(name);
        let tdb = OpenOptions::new()
            .tdb_flags(tdb_flags_for(flags))
            .create(true)
            .hash_size(8192)
            .mode(0o644)
            .open(&path)?;
        Ok(Database {
            id,
            name: name.to_owned(),
            path,
            flags,
            initial_seqnum: seqnum,
            tdb,
            frozen: false,
            push: None,
        })
    }

    pub fn is_volatile(&self) -> bool {
        self.flags & (db_flags::PERSISTENT | db_flags::REPLICATED) == 0
    }

    /// Reads a record: its header and data. A missing or headerless record
    /// is created empty (rsn 0, dmaster 0) as CTDB's fake daemon does.
    pub fn fetch(&self, key: &[u8]) -> tdb::Result<(LtdbHeader, Vec<u8>)> {
        if let Some(v) = self.tdb.fetch(key)?
            && let Ok((h, d)) = LtdbHeader::split(&v)
        {
            return Ok((h, d.to_vec()));
        }
        let h = LtdbHeader::default();
        self.store(key, &h, &[])?;
        Ok((h, Vec::new()))
    }

    /// Stores a record the way the daemon does: records with data are kept;
    /// an empty record is kept only in a volatile database with rsn 0, and
    /// otherwise deleted.
    pub fn store(&self, key: &[u8], h: &LtdbHeader, data: &[u8]) -> tdb::Result<()> {
        store_in(&self.tdb, self.is_volatile(), key, h, data)
    }

    /// The sequence number of a persistent database.
    pub fn seqnum(&self) -> tdb::Result<u64> {
        match self.tdb.fetch(SEQNUM_KEY)? {
            Some(v) => match LtdbHeader::split(&v) {
                Ok((_, d)) if d.len() >= 8 => Ok(u64::from_le_bytes(d[..8].try_into().unwrap())),
                Ok((_, [])) => Ok(0),
                _ => Ok(0),
            },
            None => Ok(self.initial_seqnum),
        }
    }

    /// Applies a persistent transaction's records (`TRANS3_COMMIT`) in one
    /// TDB transaction; fails, changing nothing, if a record is older than
    /// what is stored.
    pub fn commit(&self, recs: &RecBuffer) -> Result<(), String> {
        let volatile = self.is_volatile();
        let tx = self.tdb.transaction_start().map_err(|e| e.to_string())?;
        for rec in recs.iter() {
            let (h, data) = rec.header().map_err(|e| e.to_string())?;
            let old = self.tdb.fetch(rec.key).map_err(|e| e.to_string())?;
            if let Some(old) = old
                && let Ok((oh, od)) = LtdbHeader::split(&old)
                && !od.is_empty()
                && (oh.rsn > h.rsn || (oh.rsn == h.rsn && od.len() != data.len()))
            {
                let _ = tx.cancel();
                return Err("stale record".into());
            }
            if let Err(e) = store_in(&self.tdb, volatile, rec.key, &h, data) {
                let _ = tx.cancel();
                return Err(e.to_string());
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    /// Every record whose value has a full header, as (key, value with
    /// header).
    pub fn records(&self, with_empty: bool) -> tdb::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.tdb.traverse_read(|k, v| {
            let keep =
                v.len() > LtdbHeader::WIRE_SIZE || (v.len() == LtdbHeader::WIRE_SIZE && with_empty);
            if keep {
                out.push((k.to_vec(), v.to_vec()));
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Removes every record.
    pub fn wipe(&self) -> tdb::Result<()> {
        self.tdb.wipe_all()
    }
}

fn store_in(tdb: &Tdb, volatile: bool, key: &[u8], h: &LtdbHeader, data: &[u8]) -> tdb::Result<()> {
    let keep = !data.is_empty() || (volatile && h.rsn == 0);
    if keep {
        let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
        ctdb_protocol::Marshal::push(h, &mut hb);
        tdb.storev(key, &[&hb, data], StoreMode::Replace)
    } else if h.rsn > 0 {
        match tdb.delete(key) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_id_matches_ctdb() {
        // From the reference captures: g_lock.tdb is 0x4d2a432b.
        assert_eq!(db_id_for("g_lock.tdb"), 0x4d2a432b);
    }

    #[test]
    fn store_fetch_commit_and_seqnum() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1, "p.tdb", db_flags::PERSISTENT, 7).unwrap();
        assert_eq!(db.seqnum().unwrap(), 7);
        let (h, d) = db.fetch(b"k").unwrap();
        assert_eq!((h.rsn, d.len()), (0, 0));
        let mut rb = RecBuffer::new(1);
        let h1 = LtdbHeader {
            rsn: 2,
            ..Default::default()
        };
        rb.add(0, Some(&h1), b"k", b"v");
        rb.add(0, Some(&h1), SEQNUM_KEY, &9u64.to_le_bytes());
        db.commit(&rb).unwrap();
        assert_eq!(db.fetch(b"k").unwrap().1, b"v");
        assert_eq!(db.seqnum().unwrap(), 9);
        // An older record is refused.
        let mut old = RecBuffer::new(1);
        let h0 = LtdbHeader {
            rsn: 1,
            ..Default::default()
        };
        old.add(0, Some(&h0), b"k", b"x");
        assert!(db.commit(&old).is_err());
        assert_eq!(db.records(false).unwrap().len(), 2);
    }
}
