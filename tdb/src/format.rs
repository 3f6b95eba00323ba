//! The on-disk layout: constants, the file header and the record header.
//!
//! All integers are 32-bit and stored in the byte order of the machine that
//! created the file (little-endian on every platform this crate targets; a
//! byte-swapped file is recognised and refused with a clear error). Offsets
//! are relative to the start of the TDB header, which is the start of the
//! file unless the file carries a mutex area (see [`crate::mutex`]).

use crate::error::{Error, Result};

/// Text at the start of every TDB file (NUL-terminated, NUL padded to 32).
pub const MAGIC_FOOD: &[u8; 10] = b"TDB file\n\0";
/// Format version written by libtdb 1.2 .. 1.4 (and by us).
pub const VERSION: u32 = 0x2601_1967 + 6;
/// Magic of an in-use record.
pub const MAGIC: u32 = 0x2601_1999;
/// Magic of a record on the freelist.
pub const FREE_MAGIC: u32 = !MAGIC;
/// Magic of a deleted record still linked into its hash chain.
pub const DEAD_MAGIC: u32 = 0xFEE1_DEAD;
/// Magic of a valid (needs replaying) transaction recovery record.
pub const RECOVERY_MAGIC: u32 = 0xf53b_c0e7;
/// Magic of a recovery record that holds nothing to replay.
pub const RECOVERY_INVALID_MAGIC: u32 = 0;
/// `rwlocks` header value marking a file created with the Jenkins hash.
pub const HASH_RWLOCK_MAGIC: u32 = 0x0bad_1a51;
/// `rwlocks` header value saying the `feature_flags` field is meaningful.
pub const FEATURE_FLAG_MAGIC: u32 = 0x0bad_1a52;
/// Feature flag: a robust-mutex area precedes the TDB header.
pub const FEATURE_FLAG_MUTEX: u32 = 0x0000_0001;
/// Every feature flag this engine implements.
pub const SUPPORTED_FEATURE_FLAGS: u32 = FEATURE_FLAG_MUTEX;
/// Default number of hash chains.
pub const DEFAULT_HASH_SIZE: u32 = 131;
/// Byte used to fill newly added file space.
pub const PAD_BYTE: u8 = 0x42;
/// Four pad bytes read as a 32-bit value.
pub const PAD_U32: u32 = 0x4242_4242;
/// Record lengths are multiples of this.
pub const ALIGNMENT: u32 = 4;

/// Size of the file header.
pub const HEADER_SIZE: u32 = 168;
/// Size of a record header.
pub const REC_SIZE: u32 = 24;
/// Offset of the freelist head (the first slot after the header).
pub const FREELIST_TOP: u32 = HEADER_SIZE;

/// Header field offsets.
pub const OFF_VERSION: u32 = 32;
pub const OFF_HASH_SIZE: u32 = 36;
pub const OFF_RWLOCKS: u32 = 40;
pub const OFF_RECOVERY_START: u32 = 44;
pub const OFF_SEQNUM: u32 = 48;
pub const OFF_MAGIC1_HASH: u32 = 52;
pub const OFF_MAGIC2_HASH: u32 = 56;
pub const OFF_FEATURE_FLAGS: u32 = 60;
pub const OFF_MUTEX_SIZE: u32 = 64;

/// Offset of the `magic` field inside a record header.
pub const REC_OFF_MAGIC: u32 = 20;

/// Smallest split-off remainder worth keeping as a separate free record.
pub const MIN_REC_SIZE: u32 = REC_SIZE + 4 + 8;

/// Offset of the head pointer of hash chain `bucket`.
#[inline]
pub const fn hash_top(bucket: u32) -> u32 {
    FREELIST_TOP + (bucket + 1) * 4
}

/// First byte after the hash table, where records start.
#[inline]
pub const fn data_start(hash_size: u32) -> u32 {
    FREELIST_TOP + (hash_size + 1) * 4
}

/// Round `x` up to a multiple of `a` (a power of two).
#[inline]
pub const fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

/// The decoded file header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub hash_size: u32,
    pub rwlocks: u32,
    pub recovery_start: u32,
    pub sequence_number: u32,
    pub magic1_hash: u32,
    pub magic2_hash: u32,
    pub feature_flags: u32,
    pub mutex_size: u32,
}

#[inline]
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

impl Header {
    /// Check the magic text and decode the fields. Version and flag checks are
    /// left to the caller, which knows what it supports.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < HEADER_SIZE as usize {
            return Err(Error::BadMagic);
        }
        // The text is compared up to and including its terminating NUL, as a
        // C strcmp of the field would.
        if &buf[..MAGIC_FOOD.len()] != MAGIC_FOOD {
            return Err(Error::BadMagic);
        }
        Ok(Header {
            version: get_u32(buf, OFF_VERSION as usize),
            hash_size: get_u32(buf, OFF_HASH_SIZE as usize),
            rwlocks: get_u32(buf, OFF_RWLOCKS as usize),
            recovery_start: get_u32(buf, OFF_RECOVERY_START as usize),
            sequence_number: get_u32(buf, OFF_SEQNUM as usize),
            magic1_hash: get_u32(buf, OFF_MAGIC1_HASH as usize),
            magic2_hash: get_u32(buf, OFF_MAGIC2_HASH as usize),
            feature_flags: get_u32(buf, OFF_FEATURE_FLAGS as usize),
            mutex_size: get_u32(buf, OFF_MUTEX_SIZE as usize),
        })
    }

    /// Encode into the 168-byte on-disk form (reserved words zero).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE as usize] {
        let mut b = [0u8; HEADER_SIZE as usize];
        b[..MAGIC_FOOD.len()].copy_from_slice(MAGIC_FOOD);
        put_u32(&mut b, OFF_VERSION as usize, self.version);
        put_u32(&mut b, OFF_HASH_SIZE as usize, self.hash_size);
        put_u32(&mut b, OFF_RWLOCKS as usize, self.rwlocks);
        put_u32(&mut b, OFF_RECOVERY_START as usize, self.recovery_start);
        put_u32(&mut b, OFF_SEQNUM as usize, self.sequence_number);
        put_u32(&mut b, OFF_MAGIC1_HASH as usize, self.magic1_hash);
        put_u32(&mut b, OFF_MAGIC2_HASH as usize, self.magic2_hash);
        put_u32(&mut b, OFF_FEATURE_FLAGS as usize, self.feature_flags);
        put_u32(&mut b, OFF_MUTEX_SIZE as usize, self.mutex_size);
        b
    }

    /// Feature flags in force: the field only counts when `rwlocks` says so.
    pub fn effective_features(&self) -> u32 {
        if self.rwlocks == FEATURE_FLAG_MAGIC {
            self.feature_flags
        } else {
            0
        }
    }
}

/// A record header as stored in front of every record, free or used.
///
/// ```text
///  0 next       offset of the next record in the same list, 0 ends it
///  4 rec_len    bytes after this header that belong to the record
///  8 key_len
/// 12 data_len
/// 16 full_hash  32-bit hash of the key
/// 20 magic      MAGIC / DEAD_MAGIC / FREE_MAGIC / RECOVERY_MAGIC
/// 24 key bytes, data bytes, slack ... last 4 bytes: tailer = 24 + rec_len
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub next: u32,
    pub rec_len: u32,
    pub key_len: u32,
    pub data_len: u32,
    pub full_hash: u32,
    pub magic: u32,
}

impl Record {
    #[inline]
    pub fn from_bytes(b: &[u8; REC_SIZE as usize]) -> Record {
        Record {
            next: get_u32(b, 0),
            rec_len: get_u32(b, 4),
            key_len: get_u32(b, 8),
            data_len: get_u32(b, 12),
            full_hash: get_u32(b, 16),
            magic: get_u32(b, 20),
        }
    }

    #[inline]
    pub fn to_bytes(&self) -> [u8; REC_SIZE as usize] {
        let mut b = [0u8; REC_SIZE as usize];
        put_u32(&mut b, 0, self.next);
        put_u32(&mut b, 4, self.rec_len);
        put_u32(&mut b, 8, self.key_len);
        put_u32(&mut b, 12, self.data_len);
        put_u32(&mut b, 16, self.full_hash);
        put_u32(&mut b, 20, self.magic);
        b
    }

    #[inline]
    pub fn is_dead(&self) -> bool {
        self.magic == DEAD_MAGIC
    }
}

/// Byte offsets used as fcntl lock targets. They are part of the on-disk
/// protocol shared with every other TDB user of the file.
pub mod lockoff {
    use super::FREELIST_TOP;
    /// Serialises opens (and transaction commits).
    pub const OPEN: u32 = 0;
    /// Read-held by every user of a CLEAR_IF_FIRST / mutex database.
    pub const ACTIVE: u32 = 4;
    /// Serialises transactions and write traverses.
    pub const TRANSACTION: u32 = 8;
    /// The freelist lock, one slot below the freelist head.
    pub const FREELIST: u32 = FREELIST_TOP - 4;

    /// Lock byte of hash chain `bucket`: four bytes *below* its head slot,
    /// a historical quirk every implementation has to keep.
    #[inline]
    pub const fn chain(bucket: u32) -> u32 {
        FREELIST_TOP + 4 * bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(hash_top(0), 172);
        assert_eq!(data_start(131), 696);
        assert_eq!(lockoff::FREELIST, 164);
        assert_eq!(lockoff::chain(0), 168);
        assert_eq!(FREE_MAGIC, 0xd9fe_e666);
    }

    #[test]
    fn header_roundtrip() {
        let h = Header {
            version: VERSION,
            hash_size: 131,
            rwlocks: FEATURE_FLAG_MAGIC,
            recovery_start: 4096,
            sequence_number: 7,
            magic1_hash: 1,
            magic2_hash: 2,
            feature_flags: 1,
            mutex_size: 8192,
        };
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(Header::parse(&bad), Err(Error::BadMagic)));
        assert!(matches!(Header::parse(&b[..100]), Err(Error::BadMagic)));
    }

    #[test]
    fn record_roundtrip() {
        let r = Record {
            next: 1,
            rec_len: 2,
            key_len: 3,
            data_len: 4,
            full_hash: 5,
            magic: MAGIC,
        };
        assert_eq!(Record::from_bytes(&r.to_bytes()), r);
    }
}
