//! The CTDB record layer on top of a tdb file.
//!
//! Every value a CTDB database stores starts with the 24-byte record
//! header (record sequence number, data master, flags). This module knows
//! how to read it, which node is a key's *lmaster* (the node that always
//! knows where a record lives), the header a record gets when it is first
//! touched, and CTDB's server-side rules for storing a record of a
//! volatile database: which records are kept or deleted, and when the
//! record sequence number (rsn) moves. The rules are CTDB 4.17's, so that
//! `ctdb catdb` shows the same dmaster and rsn on our nodes as on the
//! reference.

use ctdb_protocol::Marshal;
use ctdb_protocol::types::{LtdbHeader, VnnMap, record_flags};

/// A database's id: the Jenkins hash of its name with the terminating NUL.
pub fn db_id(name: &str) -> u32 {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    key_hash(&v)
}

/// CTDB's hash of a key (Jenkins' lookup3 as tdb computes it).
pub fn key_hash(key: &[u8]) -> u32 {
    tdb::hash::jenkins_hash(key)
}

/// The lmaster of `key`: a slot of the vnn map chosen by the key's hash.
/// `None` while the map is empty.
pub fn lmaster(vnnmap: &VnnMap, key: &[u8]) -> Option<u32> {
    if vnnmap.map.is_empty() {
        return None;
    }
    let idx = key_hash(key) as usize % vnnmap.map.len();
    Some(vnnmap.map[idx])
}

/// The header of a record this node has never seen: its lmaster is
/// presumed to be its data master.
pub fn initial_header(lmaster: u32) -> LtdbHeader {
    LtdbHeader {
        rsn: 0,
        dmaster: lmaster,
        reserved1: 0,
        flags: record_flags::AUTOMATIC,
    }
}

/// Splits a stored value into header and data; `None` for a value too
/// short to hold a header (CTDB treats it as absent).
pub fn split(value: &[u8]) -> Option<(LtdbHeader, &[u8])> {
    if value.len() < LtdbHeader::WIRE_SIZE {
        return None;
    }
    LtdbHeader::split(value).ok()
}

/// The 24 header bytes of `h`.
pub fn header_bytes(h: &LtdbHeader) -> [u8; LtdbHeader::WIRE_SIZE] {
    let mut b = [0u8; LtdbHeader::WIRE_SIZE];
    h.push(&mut b);
    b
}

/// Reads the record held by `rec`: header and a copy of the data.
pub fn read(rec: &tdb::RecordLock<'_, '_>) -> tdb::Result<Option<(LtdbHeader, Vec<u8>)>> {
    Ok(rec
        .parse(|v| split(v).map(|(h, d)| (h, d.to_vec())))?
        .flatten())
}

/// Who is storing, for [`store`].
#[derive(Debug, Clone, Copy)]
pub struct StoreCtx {
    /// This node.
    pub pnn: u32,
    /// The key's lmaster, if the vnn map has one.
    pub lmaster: Option<u32>,
    /// A volatile database (the rules below apply only to those).
    pub volatile: bool,
}

/// What [`store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Kept,
    Deleted,
}

/// Whether CTDB keeps a record of a volatile database rather than deleting
/// it, given its new header and data.
fn keep(ctx: &StoreCtx, h: &LtdbHeader, data: &[u8]) -> bool {
    let Some(lmaster) = ctx.lmaster else {
        return true;
    };
    if !data.is_empty()
        || h.flags
            & (record_flags::RO_FLAGS | record_flags::AUTOMATIC | record_flags::MIGRATED_WITH_DATA)
            != 0
    {
        return true;
    }
    if ctx.pnn == lmaster {
        // The lmaster keeps even empty records (clients operating on it
        // expect the record after a migration), unless vacuuming brought
        // an empty, never-filled record home.
        return h.flags & record_flags::VACUUM_MIGRATED == 0 || ctx.pnn != h.dmaster;
    }
    ctx.pnn == h.dmaster
}

/// Stores a record the way CTDB's daemon does. For volatile databases an
/// empty record that nobody needs is deleted instead, and a record this
/// node is data master of gets its rsn incremented on every store; the
/// transient `AUTOMATIC` and `VACUUM_MIGRATED` flags never reach the file.
/// `header` is updated to what was stored.
pub fn store(
    ctx: &StoreCtx,
    rec: &tdb::RecordLock<'_, '_>,
    header: &mut LtdbHeader,
    data: &[u8],
) -> tdb::Result<Stored> {
    let kept = if ctx.volatile {
        let k = keep(ctx, header, data);
        if k && ctx.pnn == header.dmaster && header.flags & record_flags::RO_FLAGS == 0 {
            header.rsn += 1;
        }
        k
    } else {
        true
    };
    header.flags &= !(record_flags::VACUUM_MIGRATED | record_flags::AUTOMATIC);
    if kept {
        rec.storev(&[&header_bytes(header), data], tdb::StoreMode::Replace)?;
        Ok(Stored::Kept)
    } else {
        match rec.delete() {
            Ok(()) | Err(tdb::Error::NotFound) => Ok(Stored::Deleted),
            Err(e) => Err(e),
        }
    }
}

/// Reads a record as the daemon sees it: its header and data if present;
/// otherwise the initial header, which is also stored when this node is the
/// key's data master by that header (or the database is persistent), as
/// CTDB does. `header` of the returned record reflects the store.
pub fn fetch_or_initial(
    ctx: &StoreCtx,
    persistent: bool,
    rec: &tdb::RecordLock<'_, '_>,
) -> tdb::Result<(LtdbHeader, Vec<u8>)> {
    if let Some(found) = read(rec)? {
        return Ok(found);
    }
    let mut h = initial_header(ctx.lmaster.unwrap_or(ctx.pnn));
    if persistent || h.dmaster == ctx.pnn {
        store(ctx, rec, &mut h, &[])?;
    }
    Ok((h, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdb(dir: &tempfile::TempDir, name: &str) -> tdb::Tdb {
        tdb::OpenOptions::new()
            .create(true)
            .hash_size(131)
            .open(dir.path().join(name))
            .unwrap()
    }

    #[test]
    fn db_ids_match_ctdb() {
        // From the reference captures: GET_DBMAP and attach replies.
        assert_eq!(db_id("g_lock.tdb"), 0x4d2a_432b);
        assert_eq!(db_id("cap_vol.tdb"), 0x5613_7b01);
        assert_eq!(db_id("cap_pers.tdb"), 0xb615_1169);
        assert_eq!(db_id("cap_repl.tdb"), 0x75bf_5277);
    }

    #[test]
    fn lmaster_uses_the_vnn_map() {
        let m = VnnMap {
            generation: 2,
            map: vec![0, 1, 2],
        };
        let k = b"key";
        assert_eq!(lmaster(&m, k), Some(m.map[key_hash(k) as usize % 3]));
        assert_eq!(lmaster(&VnnMap::default(), k), None);
    }

    /// A record first written through its lmaster: the initial store makes
    /// rsn 1, a null call stores again (rsn 2), as CTDB.
    #[test]
    fn rsn_rules_on_the_lmaster() {
        let dir = tempfile::tempdir().unwrap();
        let db = tmpdb(&dir, "a.tdb");
        let ctx = StoreCtx {
            pnn: 1,
            lmaster: Some(1),
            volatile: true,
        };
        let rec = db.lock_record(b"k").unwrap();
        let (mut h, d) = fetch_or_initial(&ctx, false, &rec).unwrap();
        assert_eq!((h.rsn, h.dmaster, h.flags), (1, 1, 0));
        store(&ctx, &rec, &mut h, &d).unwrap();
        assert_eq!(read(&rec).unwrap().unwrap().0.rsn, 2);
    }

    /// A node that is neither lmaster nor dmaster deletes empty records
    /// that were never migrated with data, and keeps records with data
    /// without touching their rsn.
    #[test]
    fn foreign_records() {
        let dir = tempfile::tempdir().unwrap();
        let db = tmpdb(&dir, "b.tdb");
        let ctx = StoreCtx {
            pnn: 0,
            lmaster: Some(1),
            volatile: true,
        };
        let rec = db.lock_record(b"k").unwrap();
        let mut h = LtdbHeader {
            rsn: 5,
            dmaster: 2,
            ..Default::default()
        };
        assert_eq!(store(&ctx, &rec, &mut h, b"v").unwrap(), Stored::Kept);
        assert_eq!(h.rsn, 5);
        assert_eq!(store(&ctx, &rec, &mut h, b"").unwrap(), Stored::Deleted);
        assert!(read(&rec).unwrap().is_none());
        // Not on this node and not ours: the initial header is not stored.
        let (h, _) = fetch_or_initial(&ctx, false, &rec).unwrap();
        assert_eq!((h.dmaster, h.rsn), (1, 0));
        assert!(read(&rec).unwrap().is_none());
    }

    #[test]
    fn persistent_records_are_stored_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let db = tmpdb(&dir, "c.tdb");
        let ctx = StoreCtx {
            pnn: 0,
            lmaster: Some(0),
            volatile: false,
        };
        let rec = db.lock_record(b"k").unwrap();
        let mut h = LtdbHeader {
            rsn: 7,
            dmaster: 0,
            ..Default::default()
        };
        store(&ctx, &rec, &mut h, b"").unwrap();
        assert_eq!(read(&rec).unwrap().unwrap().0.rsn, 7);
    }
}
