//! Databases: the db map and the small structures naming a database in
//! recovery and transaction controls.

use super::{counted_list, plain_struct};
use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer};

/// Database flags, as in [`Dbid::flags`] and `DB_OPEN_FLAGS`-adjacent
/// controls.
pub mod db_flags {
    pub const PERSISTENT: u8 = 0x01;
    pub const READONLY: u8 = 0x02;
    pub const STICKY: u8 = 0x04;
    pub const REPLICATED: u8 = 0x08;
    /// ctdb-rs extension (not in CTDB 4.17, whose highest flag is 0x08):
    /// a persistent database kept in memory only, never synced to disk.
    /// Always set together with `PERSISTENT`. Only attached through
    /// `DB_ATTACH_EXT`, which CTDB 4.17 does not know.
    pub const INMEMORY: u8 = 0x10;
    /// ctdb-rs extension, reserved: persistent database with per-key
    /// transactions (not implemented yet).
    pub const KEYED: u8 = 0x20;
    /// ctdb-rs extension: a volatile database whose records also have a
    /// copy on a second node, refreshed on migration and on a client's
    /// sync (`DB_SYNC_RECORD`), so a synced record survives the loss of
    /// one node. Without the persistent bit: recovered as volatile.
    pub const PARTIAL_REPLICA: u8 = 0x40;
    /// The extension flags: databases with any of them are attached with
    /// `DB_ATTACH_EXT` only.
    pub const EXTENDED: u8 = INMEMORY | KEYED | PARTIAL_REPLICA;
}

/// `CTDB_LMASTER_ANY`: pull records whatever their lmaster.
pub const CTDB_LMASTER_ANY: u32 = 0xFFFF_FFFF;

/// `ctdb_dbid`: a database id and its flags (4 bytes, 1 byte, 3 padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dbid {
    pub db_id: u32,
    pub flags: u8,
}

impl Marshal for Dbid {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u8(self.flags);
        w.pad(3);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("dbid")?;
        let flags = r.u8("dbid flags")?;
        r.pad(3, "dbid padding")?;
        Ok((Dbid { db_id, flags }, r.pos()))
    }
}

/// `ctdb_dbid_map`: every attached database (`GET_DBMAP`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbidMap {
    pub dbs: Vec<Dbid>,
}
counted_list!(DbidMap, dbs, Dbid, 8, "dbid map");

/// `ctdb_pulldb`: the obsolete whole-database pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullDb {
    pub db_id: u32,
    pub lmaster: u32,
}
plain_struct!(PullDb {
    db_id: u32,
    lmaster: u32
});

/// `ctdb_pulldb_ext`: `DB_PULL` / `DB_PUSH_START`, naming the srvid the
/// record chunks travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullDbExt {
    pub db_id: u32,
    pub lmaster: u32,
    pub srvid: u64,
}
plain_struct!(PullDbExt {
    db_id: u32,
    lmaster: u32,
    srvid: u64
});

/// `ctdb_transdb`: a database and a transaction id (the generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransDb {
    pub db_id: u32,
    pub tid: u32,
}
plain_struct!(TransDb {
    db_id: u32,
    tid: u32
});

/// The `GET_DB_SEQNUM` request: a database id followed by 4 bytes of
/// padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbSeqnumRequest {
    pub db_id: u32,
}

impl Marshal for DbSeqnumRequest {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.pad(4);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("seqnum db_id")?;
        r.pad(4, "seqnum padding")?;
        Ok((DbSeqnumRequest { db_id }, r.pos()))
    }
}

/// `ctdb_db_vacuum`: a database id and a bool, 5 bytes with no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbVacuum {
    pub db_id: u32,
    pub full_vacuum_run: bool,
}

impl Marshal for DbVacuum {
    fn len(&self) -> usize {
        5
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.bool(self.full_vacuum_run);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("vacuum db_id")?;
        let full_vacuum_run = r.bool("vacuum full run")?;
        Ok((
            DbVacuum {
                db_id,
                full_vacuum_run,
            },
            r.pos(),
        ))
    }
}

/// `DB_ATTACH_EXT` (ctdb-rs extension): attach a database of a kind CTDB
/// 4.17 does not have. `flags` are database flags ([`db_flags`]); with
/// `probe` set nothing is attached: the node only answers whether it
/// would accept such an attach (a CTDB 4.17 node answers every
/// `DB_ATTACH_EXT` with an error, as for any control it does not know).
/// On the wire: flags (u32), probe (u32), the name with its NUL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbAttachExt {
    pub flags: u32,
    pub probe: bool,
    pub name: String,
}

impl Marshal for DbAttachExt {
    fn len(&self) -> usize {
        8 + self.name.len() + 1
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.flags);
        w.u32(u32::from(self.probe));
        w.cstr(Some(&self.name));
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let flags = r.u32("attach_ext flags")?;
        let probe = r.u32("attach_ext probe")? != 0;
        let rest = buf.len() - r.pos();
        let name = r.cstr(rest, "attach_ext name")?.unwrap_or_default();
        Ok((DbAttachExt { flags, probe, name }, r.pos()))
    }
}
