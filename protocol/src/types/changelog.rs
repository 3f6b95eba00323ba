//! Change logs of persistent databases (ctdb-rs extension, issue 21):
//! `DB_CHANGELOG_INFO` and `DB_CHANGES_PULL`.
//!
//! Every ctdb-rs node keeps, per persistent database (classic, in-memory
//! and keyed), a bounded log of the changes it committed and a content
//! checksum of its copy, kept up to date with every write. A recovery
//! helper that finds a node's checksum among the states another node's
//! log went through sends that node only the records changed since then
//! (`DB_CHANGES_PULL`, in chunks) instead of the whole database. CTDB 4.17
//! does not know the opcodes and answers -1, which makes the helper use
//! its full pull.

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer};
use crate::types::RecBuffer;

/// [`ChangelogInfo::flags`]: the node knows its copy's checksum (it
/// computed it when it attached the database and followed every write
/// since). Without it, nothing of the log may be used.
pub const CHANGELOG_TRACKED: u32 = 0x1;
/// [`ChangelogInfo::flags`]: a recovery transaction is open; the checksum
/// is the one of its uncommitted content.
pub const CHANGELOG_IN_RECOVERY: u32 = 0x2;
/// [`ChangelogInfo::flags`]: the copy holds records without data (deleted
/// records of a persistent database), which a full recovery drops: a
/// recovery from this copy must be a full one to do the same.
pub const CHANGELOG_HAS_EMPTY: u32 = 0x4;

/// The reply to `DB_CHANGELOG_INFO` (request: the database id). On the
/// wire: db_id, flags, entries (u32 each), then checksum (16 bytes, low
/// half first), seqnum, first, last, base_seqnum, bytes, oldest_age_ms,
/// max_bytes, max_age_ms, epoch (u64 each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangelogInfo {
    pub db_id: u32,
    pub flags: u32,
    /// Changes (commits, or catch-ups applied here) in the log.
    pub entries: u32,
    /// Content checksum of this node's copy: the wrapping sum of a 128-bit
    /// hash of every record (key and stored value, header included).
    pub checksum: u128,
    /// The database sequence number after the newest change (0 for keyed
    /// databases, which have none).
    pub seqnum: u64,
    /// Change numbers of the oldest and newest change in the log (this
    /// node's own count since it started; 0 and 0 when empty).
    pub first: u64,
    pub last: u64,
    /// The database sequence number before the oldest change in the log.
    pub base_seqnum: u64,
    /// Bytes of records the log holds.
    pub bytes: u64,
    /// Age of the oldest change, in milliseconds.
    pub oldest_age_ms: u64,
    /// The log's bounds.
    pub max_bytes: u64,
    pub max_age_ms: u64,
    /// Keyed databases: the copy epoch the copy holds (the record
    /// `__keyed_epoch__`, which every keyed recovery by ctdb-rs's helper
    /// moves on; 0 without it). 0 for the other kinds.
    pub epoch: u64,
}

const INFO_SIZE: usize = 12 + 16 + 9 * 8;

impl Marshal for ChangelogInfo {
    fn len(&self) -> usize {
        INFO_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u32(self.flags);
        w.u32(self.entries);
        w.u64(self.checksum as u64);
        w.u64((self.checksum >> 64) as u64);
        for v in [
            self.seqnum,
            self.first,
            self.last,
            self.base_seqnum,
            self.bytes,
            self.oldest_age_ms,
            self.max_bytes,
            self.max_age_ms,
            self.epoch,
        ] {
            w.u64(v);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("changelog db_id")?;
        let flags = r.u32("changelog flags")?;
        let entries = r.u32("changelog entries")?;
        let lo = r.u64("changelog checksum")?;
        let hi = r.u64("changelog checksum")?;
        let mut v = [0u64; 9];
        for x in &mut v {
            *x = r.u64("changelog field")?;
        }
        Ok((
            ChangelogInfo {
                db_id,
                flags,
                entries,
                checksum: u128::from(lo) | (u128::from(hi) << 64),
                seqnum: v[0],
                first: v[1],
                last: v[2],
                base_seqnum: v[3],
                bytes: v[4],
                oldest_age_ms: v[5],
                max_bytes: v[6],
                max_age_ms: v[7],
                epoch: v[8],
            },
            r.pos(),
        ))
    }
}

/// `DB_CHANGES_PULL`: the records changed since the node's copy had
/// checksum `from`, newest value of each key, skipping the first `offset`
/// of them, at most about `limit` bytes. On the wire: db_id, limit (u32),
/// from (16 bytes, low half first), offset (u64). A node whose log does
/// not reach back to `from` answers an error with status
/// [`ChangesPull::NOT_IN_LOG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangesPull {
    pub db_id: u32,
    pub limit: u32,
    pub from: u128,
    pub offset: u64,
}

impl ChangesPull {
    /// The status of the error reply of a node whose log does not reach
    /// back to `from` (`-ERANGE`), so a caller tells it from other
    /// failures without reading the message.
    pub const NOT_IN_LOG: i32 = -34;
}

impl Marshal for ChangesPull {
    fn len(&self) -> usize {
        32
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        w.u32(self.limit);
        w.u64(self.from as u64);
        w.u64((self.from >> 64) as u64);
        w.u64(self.offset);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("changes_pull db_id")?;
        let limit = r.u32("changes_pull limit")?;
        let lo = r.u64("changes_pull from")?;
        let hi = r.u64("changes_pull from")?;
        let offset = r.u64("changes_pull offset")?;
        Ok((
            ChangesPull {
                db_id,
                limit,
                from: u128::from(lo) | (u128::from(hi) << 64),
                offset,
            },
            r.pos(),
        ))
    }
}

/// The reply to `DB_CHANGES_PULL`: `total` records changed since `from`
/// in all, `records` of them from the requested offset on (header
/// included), and `done` once this chunk reaches the last one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangesChunk {
    pub done: bool,
    pub total: u64,
    pub records: RecBuffer,
}

impl Marshal for ChangesChunk {
    fn len(&self) -> usize {
        12 + self.records.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(u32::from(self.done));
        w.u64(self.total);
        w.put(&self.records);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let done = r.u32("changes_chunk done")? != 0;
        let total = r.u64("changes_chunk total")?;
        let records = r.get::<RecBuffer>()?;
        Ok((
            ChangesChunk {
                done,
                total,
                records,
            },
            r.pos(),
        ))
    }
}

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for ChangelogInfo {
    fn random(r: &mut crate::random::Rng) -> Self {
        ChangelogInfo {
            db_id: r.u32(),
            flags: r.u32(),
            entries: r.u32(),
            checksum: u128::from(r.u64()) | (u128::from(r.u64()) << 64),
            seqnum: r.u64(),
            first: r.u64(),
            last: r.u64(),
            base_seqnum: r.u64(),
            bytes: r.u64(),
            oldest_age_ms: r.u64(),
            max_bytes: r.u64(),
            max_age_ms: r.u64(),
            epoch: r.u64(),
        }
    }
}

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for ChangesPull {
    fn random(r: &mut crate::random::Rng) -> Self {
        ChangesPull {
            db_id: r.u32(),
            limit: r.u32(),
            from: u128::from(r.u64()) | (u128::from(r.u64()) << 64),
            offset: r.u64(),
        }
    }
}

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for ChangesChunk {
    fn random(r: &mut crate::random::Rng) -> Self {
        ChangesChunk {
            done: r.bool(),
            total: r.u64(),
            records: RecBuffer::random(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LtdbHeader;

    #[test]
    fn round_trips() {
        let i = ChangelogInfo {
            db_id: 1,
            flags: CHANGELOG_TRACKED,
            entries: 3,
            checksum: (7u128 << 64) | 9,
            seqnum: 12,
            first: 4,
            last: 6,
            base_seqnum: 9,
            bytes: 300,
            oldest_age_ms: 5,
            max_bytes: 1 << 24,
            max_age_ms: 3_600_000,
            epoch: 5,
        };
        let b = i.to_bytes();
        assert_eq!(ChangelogInfo::pull(&b).unwrap(), (i, b.len()));
        let p = ChangesPull {
            db_id: 2,
            limit: 1000,
            from: u128::MAX - 3,
            offset: 17,
        };
        let b = p.to_bytes();
        assert_eq!(ChangesPull::pull(&b).unwrap(), (p, b.len()));
        let mut records = RecBuffer::new(2);
        records.add(0, Some(&LtdbHeader::default()), b"k", b"v");
        let c = ChangesChunk {
            done: true,
            total: 1,
            records,
        };
        let b = c.to_bytes();
        assert_eq!(ChangesChunk::pull(&b).unwrap(), (c, b.len()));
        assert!(ChangesChunk::pull(&b[..b.len() - 1]).is_err());
    }
}
