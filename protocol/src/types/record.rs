//! Records: the header CTDB keeps in front of every value, single marshalled
//! records, and record buffers (the unit DB_PULL, DB_PUSH, TRANS3_COMMIT and
//! `ctdb backupdb` move records in).

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, datan_len, wire_u32};

/// Record flags in [`LtdbHeader::flags`].
pub mod record_flags {
    pub const DEFAULT: u32 = 0x0000_0000;
    pub const MIGRATED_WITH_DATA: u32 = 0x0001_0000;
    pub const VACUUM_MIGRATED: u32 = 0x0002_0000;
    pub const AUTOMATIC: u32 = 0x0004_0000;
    pub const RO_HAVE_DELEGATIONS: u32 = 0x0100_0000;
    pub const RO_HAVE_READONLY: u32 = 0x0200_0000;
    pub const RO_REVOKING_READONLY: u32 = 0x0400_0000;
    pub const RO_REVOKE_COMPLETE: u32 = 0x0800_0000;
    pub const RO_FLAGS: u32 =
        RO_HAVE_DELEGATIONS | RO_HAVE_READONLY | RO_REVOKING_READONLY | RO_REVOKE_COMPLETE;
}

/// ctdb-rs keyed databases: the record in which the recovery helper keeps
/// each node's copy epoch (the number of keyed recoveries the copy went
/// through; value: u64 little-endian after the header). Clients never
/// write it.
pub const KEYED_EPOCH_KEY: &[u8] = b"__keyed_epoch__\0";

/// `ctdb_ltdb_header`: the 24 bytes in front of every value stored in a
/// CTDB database file: record sequence number, data master, a reserved
/// word, flags, and 4 bytes of padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LtdbHeader {
    pub rsn: u64,
    pub dmaster: u32,
    pub reserved1: u32,
    pub flags: u32,
}

impl LtdbHeader {
    pub const WIRE_SIZE: usize = 24;

    /// Splits a stored value into its header and the application's data.
    pub fn split(value: &[u8]) -> Result<(LtdbHeader, &[u8])> {
        let (h, n) = LtdbHeader::pull(value)?;
        Ok((h, &value[n..]))
    }

    /// The header followed by `data`, as a stored value.
    pub fn prepend(&self, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; Self::WIRE_SIZE + data.len()];
        self.push(&mut v);
        v[Self::WIRE_SIZE..].copy_from_slice(data);
        v
    }
}

impl Marshal for LtdbHeader {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.rsn);
        w.u32(self.dmaster);
        w.u32(self.reserved1);
        w.u32(self.flags);
        w.pad(4);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let rsn = r.u64("ltdb header rsn")?;
        let dmaster = r.u32("ltdb header dmaster")?;
        let reserved1 = r.u32("ltdb header reserved")?;
        let flags = r.u32("ltdb header flags")?;
        r.pad(4, "ltdb header padding")?;
        Ok((
            LtdbHeader {
                rsn,
                dmaster,
                reserved1,
                flags,
            },
            r.pos(),
        ))
    }
}

/// Fixed part of a marshalled record: length, reqid, key length, data length.
const REC_DATA_FIXED: usize = 16;

/// `ctdb_rec_data`: one marshalled record.
///
/// On the wire: total length (including these 16 bytes), reqid, key length,
/// data length, key, data. When a record carries its [`LtdbHeader`] (as in
/// recovery, traverse and backups) the header is the first 24 bytes of
/// `data`; [`RecData::header`] splits it off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecData {
    pub reqid: u32,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
}

impl RecData {
    /// A record whose data is `header` followed by `value`.
    pub fn with_header(reqid: u32, header: &LtdbHeader, key: &[u8], value: &[u8]) -> Self {
        RecData {
            reqid,
            key: key.to_vec(),
            data: header.prepend(value),
        }
    }

    /// The record header and the value after it.
    pub fn header(&self) -> Result<(LtdbHeader, &[u8])> {
        LtdbHeader::split(&self.data)
    }
}

impl Marshal for RecData {
    fn len(&self) -> usize {
        REC_DATA_FIXED + self.key.len() + self.data.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        write_record(buf, self.reqid, &self.key, &[], &self.data)
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let (r, n) = RecordRef::parse(buf)?;
        Ok((
            RecData {
                reqid: r.reqid,
                key: r.key.to_vec(),
                data: r.data.to_vec(),
            },
            n,
        ))
    }
}

/// Writes one marshalled record whose data is `data1` then `data2`.
fn write_record(buf: &mut [u8], reqid: u32, key: &[u8], data1: &[u8], data2: &[u8]) -> usize {
    let dlen = data1.len() + data2.len();
    let mut w = Writer::new(buf);
    w.u32(wire_u32(REC_DATA_FIXED + key.len() + dlen));
    w.u32(reqid);
    w.u32(wire_u32(key.len()));
    w.u32(wire_u32(dlen));
    w.bytes(key);
    w.bytes(data1);
    w.bytes(data2);
    w.pos()
}

/// A record inside a received buffer, borrowed rather than copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub reqid: u32,
    pub key: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Parses one record from the front of `buf`, checking that its total
    /// length field agrees with its key and data lengths.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let total = r.u32("rec_data length")? as usize;
        let reqid = r.u32("rec_data reqid")?;
        let klen = r.u32("rec_data key length")? as usize;
        let dlen = r.u32("rec_data data length")? as usize;
        let key = r.bytes(klen, "rec_data key")?;
        let data = r.bytes(dlen, "rec_data data")?;
        if total != r.pos() {
            return Err(Error::Inconsistent {
                what: "rec_data",
                declared: total,
                actual: r.pos(),
            });
        }
        Ok((RecordRef { reqid, key, data }, r.pos()))
    }

    /// The record header and the value after it.
    pub fn header(&self) -> Result<(LtdbHeader, &'a [u8])> {
        LtdbHeader::split(self.data)
    }
}

/// `ctdb_rec_buffer`: a database id, a record count and that many
/// marshalled records back to back.
///
/// The records are kept in their marshalled form, as CTDB does, so a buffer
/// of a million records is one allocation, is built by appending with
/// [`RecBuffer::add`] and read with [`RecBuffer::iter`]. `pull` walks every
/// record to validate it, so an iterator over a pulled buffer cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecBuffer {
    pub db_id: u32,
    count: u32,
    buf: Vec<u8>,
}

impl RecBuffer {
    pub fn new(db_id: u32) -> Self {
        RecBuffer {
            db_id,
            count: 0,
            buf: Vec::new(),
        }
    }

    /// Number of records.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Size of the marshalled records (without the 8-byte db id and count).
    pub fn records_len(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record; with a header, the stored data is header + `data`.
    pub fn add(&mut self, reqid: u32, header: Option<&LtdbHeader>, key: &[u8], data: &[u8]) {
        let mut hbuf = [0u8; LtdbHeader::WIRE_SIZE];
        let h: &[u8] = match header {
            Some(h) => {
                h.push(&mut hbuf);
                &hbuf
            }
            None => &[],
        };
        let start = self.buf.len();
        self.buf
            .resize(start + REC_DATA_FIXED + key.len() + h.len() + data.len(), 0);
        write_record(&mut self.buf[start..], reqid, key, h, data);
        self.count += 1;
    }

    /// Appends an already marshalled record.
    pub fn add_rec(&mut self, rec: &RecData) {
        self.add(rec.reqid, None, &rec.key, &rec.data);
    }

    /// The records in order.
    pub fn iter(&self) -> RecBufferIter<'_> {
        RecBufferIter {
            rest: &self.buf,
            left: self.count,
        }
    }

    /// Removes every record, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

/// Iterator over the records of a [`RecBuffer`].
pub struct RecBufferIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for RecBufferIter<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // The buffer was validated when pulled or built, so parsing cannot
        // fail here; stop rather than panic if it somehow did.
        let (r, n) = RecordRef::parse(self.rest).ok()?;
        self.rest = &self.rest[n..];
        self.left -= 1;
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl Marshal for RecBuffer {
    fn len(&self) -> usize {
        8 + self.buf.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u32(self.count);
        w.bytes(&self.buf);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("rec_buffer db_id")?;
        let count = r.u32("rec_buffer count")?;
        // Each record takes at least its fixed part.
        r.check_count(count as usize, REC_DATA_FIXED, "rec_buffer count")?;
        let start = r.pos();
        for _ in 0..count {
            let (_, n) = RecordRef::parse(r.rest())?;
            r.bytes(n, "rec_buffer record")?;
        }
        let records = buf[start..r.pos()].to_vec();
        Ok((
            RecBuffer {
                db_id,
                count,
                buf: records,
            },
            r.pos(),
        ))
    }
}

/// `ctdb_key_data`: a database id, a record header and a key
/// (`SCHEDULE_FOR_DELETION`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyData {
    pub db_id: u32,
    pub header: LtdbHeader,
    pub key: Vec<u8>,
}

impl Marshal for KeyData {
    fn len(&self) -> usize {
        8 + LtdbHeader::WIRE_SIZE + datan_len(&self.key)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.pad(4);
        w.put(&self.header);
        w.datan(&self.key);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("key_data db_id")?;
        r.pad(4, "key_data padding")?;
        let header = r.get()?;
        let key = r.datan("key_data key")?;
        Ok((KeyData { db_id, header, key }, r.pos()))
    }
}
