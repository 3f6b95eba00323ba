//! The file format of `ctdb backupdb` / `ctdb restoredb`.
//!
//! A 104-byte header (version, timestamp, database flags, number of record
//! buffers, number of records, database name in a 64-byte array, all longs
//! as 8 bytes), then `nbuf` record buffers, each as db id (u32), record
//! count (u32), byte length of the records (u64) and the marshalled records.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer};
use crate::types::{RecBuffer, RecordRef};

/// The only backup file version.
pub const BACKUP_VERSION: u64 = 3;
/// Size of the database name array.
pub const BACKUP_MAX_DB_NAME: usize = 64;
/// `ctdb backupdb` starts a new record buffer once one reaches this size.
pub const BACKUP_MAX_REC_BUFFER_SIZE: usize = 100 * 1000;

/// The header at the start of a backup file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupHeader {
    pub version: u64,
    pub timestamp: i64,
    pub flags: u64,
    pub nbuf: u64,
    pub nrec: u64,
    pub name: String,
}

impl BackupHeader {
    pub const WIRE_SIZE: usize = 40 + BACKUP_MAX_DB_NAME;
}

impl Marshal for BackupHeader {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.version);
        w.i64(self.timestamp);
        w.u64(self.flags);
        w.u64(self.nbuf);
        w.u64(self.nrec);
        w.chararray(&self.name, BACKUP_MAX_DB_NAME);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let h = BackupHeader {
            version: r.u64("backup version")?,
            timestamp: r.i64("backup timestamp")?,
            flags: r.u64("backup flags")?,
            nbuf: r.u64("backup nbuf")?,
            nrec: r.u64("backup nrec")?,
            name: r.chararray(BACKUP_MAX_DB_NAME, "backup db name")?,
        };
        Ok((h, r.pos()))
    }
}

/// One record buffer as a backup file stores it (with a 64-bit length).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupChunk(pub RecBuffer);

impl Marshal for BackupChunk {
    fn len(&self) -> usize {
        16 + self.0.records_len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        let mut tmp = vec![0u8; self.0.len()];
        self.0.push(&mut tmp);
        // db id and count as in a record buffer, then the 64-bit length.
        w.bytes(&tmp[..8]);
        w.u64(self.0.records_len() as u64);
        w.bytes(&tmp[8..]);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("backup buffer db_id")?;
        let count = r.u32("backup buffer count")?;
        let len = r.u64("backup buffer length")?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let records = r.bytes(len, "backup buffer records")?;
        let mut rb = RecBuffer::new(db_id);
        let mut rest = records;
        for _ in 0..count {
            let (rec, n) = RecordRef::parse(rest)?;
            rb.add(rec.reqid, None, rec.key, rec.data);
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            return Err(Error::Inconsistent {
                what: "backup buffer",
                declared: len,
                actual: len - rest.len(),
            });
        }
        Ok((BackupChunk(rb), r.pos()))
    }
}
