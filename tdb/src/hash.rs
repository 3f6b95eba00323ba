//! The two key hash functions a TDB file can use.
//!
//! * [`HashKind::Default`]: the historical gdbm-derived hash. Files created
//!   without `TDB_INCOMPATIBLE_HASH` use it.
//! * [`HashKind::Jenkins`]: Bob Jenkins' lookup3 `hashlittle` (public domain)
//!   with initial value 0, selected by `TDB_INCOMPATIBLE_HASH` (implied by
//!   mutex locking).
//!
//! Which one a file uses is recorded indirectly in its header: `magic1_hash`
//! and `magic2_hash` hold the hashes of two fixed strings, computed with the
//! file's function. An old file with both fields zero uses the default hash.

use crate::format::{MAGIC, MAGIC_FOOD};

/// Which hash function a database uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// The original TDB hash.
    Default,
    /// Jenkins lookup3 (`TDB_INCOMPATIBLE_HASH`).
    Jenkins,
}

impl HashKind {
    /// Hash `key` with this function.
    #[inline]
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashKind::Default => default_hash(key),
            HashKind::Jenkins => jenkins_hash(key),
        }
    }

    /// The `(magic1_hash, magic2_hash)` pair a header written with this hash
    /// carries. `native_magic` is the record magic in file byte order.
    pub fn header_hashes(self) -> (u32, u32) {
        let m1 = self.hash(MAGIC_FOOD);
        let m2 = self.hash(&MAGIC.to_ne_bytes());
        if m1 == 0 && m2 == 0 { (1, 0) } else { (m1, m2) }
    }

    /// The other built-in hash.
    pub fn other(self) -> HashKind {
        match self {
            HashKind::Default => HashKind::Jenkins,
            HashKind::Jenkins => HashKind::Default,
        }
    }
}

/// The historical TDB hash (derived from gdbm's).
#[inline]
pub fn default_hash(key: &[u8]) -> u32 {
    let mut value = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (i, &b) in key.iter().enumerate() {
        let shift = (i as u32).wrapping_mul(5) % 24;
        value = value.wrapping_add((b as u32) << shift);
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

#[inline(always)]
fn rot(x: u32, k: u32) -> u32 {
    x.rotate_left(k)
}

#[inline(always)]
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Little-endian word at `s` of `k` zero padded past its end.
#[inline(always)]
fn tail_word(k: &[u8], s: usize) -> u32 {
    if s + 4 <= k.len() {
        return le32(&k[s..s + 4]);
    }
    let mut v = 0u32;
    let mut i = s;
    while i < k.len() {
        v |= (k[i] as u32) << (8 * (i - s));
        i += 1;
    }
    v
}

/// Jenkins lookup3 `hashlittle(key, len, 0)`.
#[inline]
pub fn jenkins_hash(key: &[u8]) -> u32 {
    let init = 0xdead_beefu32.wrapping_add(key.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(le32(&k[0..4]));
        b = b.wrapping_add(le32(&k[4..8]));
        c = c.wrapping_add(le32(&k[8..12]));
        // mix(a, b, c)
        a = a.wrapping_sub(c);
        a ^= rot(c, 4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= rot(c, 16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    // The last 1..=12 bytes, zero padded, are added as three little-endian
    // words (assembled in registers: copying them to a padded buffer first
    // costs a store-forwarding stall on the hot path).
    a = a.wrapping_add(tail_word(k, 0));
    b = b.wrapping_add(tail_word(k, 4));
    c = c.wrapping_add(tail_word(k, 8));
    // final(a, b, c)
    c ^= b;
    c = c.wrapping_sub(rot(b, 14));
    a ^= c;
    a = a.wrapping_sub(rot(c, 11));
    b ^= a;
    b = b.wrapping_sub(rot(a, 25));
    c ^= b;
    c = c.wrapping_sub(rot(b, 16));
    a ^= c;
    a = a.wrapping_sub(rot(c, 4));
    b ^= a;
    b = b.wrapping_sub(rot(a, 14));
    c ^= b;
    c = c.wrapping_sub(rot(b, 24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    // Header hash pairs as found in files written by libtdb.
    #[test]
    fn header_hashes_match_libtdb_files() {
        assert_eq!(
            HashKind::Default.header_hashes(),
            (0xf67d_9f0d, 0x3afe_f920)
        );
        assert_eq!(
            HashKind::Jenkins.header_hashes(),
            (0xd7b6_94e5, 0x76b9_440e)
        );
    }

    #[test]
    fn jenkins_known_values() {
        // lookup3 self-test vectors (hashlittle with initval 0).
        assert_eq!(jenkins_hash(b""), 0xdead_beef);
        assert_eq!(jenkins_hash(b"Four score and seven years ago"), 0x1777_0551);
    }

    #[test]
    fn all_tail_lengths_differ() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut seen = std::collections::HashSet::new();
        for n in 0..=40 {
            assert!(seen.insert(jenkins_hash(&data[..n])));
            default_hash(&data[..n]);
        }
    }
}
