//! Where one database's pulled records wait between the pull and the push.
//!
//! Records arrive as the chunks (record buffers) the nodes send for
//! `DB_PULL`. A store keeps them in one of two shapes:
//!
//! * **In memory**: the received chunks themselves, unchanged except that
//!   each record's `reqid` field is overwritten with the index of the node
//!   it came from. For volatile databases a hash index maps each key to the
//!   best copy seen so far (see [`crate::merge::Rank`]); nothing is copied
//!   per record. Persistent and replicated databases come from one node and
//!   need no index.
//! * **On disk**: when the shared [`Budget`] refuses a reservation, the
//!   store writes every record it holds to anonymous (already unlinked)
//!   spill files and frees its memory; later chunks go straight to disk.
//!   Volatile records are spread over [`PARTITIONS`] files by a hash of the
//!   key, so all copies of a key land in the same file. At push time each
//!   file is read back alone, merged in memory, emitted and dropped; a file
//!   larger than the store's share of the budget is split again by another
//!   hash, so a database of any size is merged a bounded piece at a time.
//!   Single-source databases spill to one file that is streamed back.
//!
//! Either way the store emits each surviving record once, as key and value
//! (value = record header followed by the data).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::budget::Budget;
use crate::merge::{Policy, Rank};

/// Number of spill files of a volatile database, at each level of splitting.
pub const PARTITIONS: usize = 64;
/// How many times a spill file may be split again.
const MAX_DEPTH: u32 = 4;
/// Bytes the index costs per record, charged to the budget.
const INDEX_COST: usize = 16;
/// Fixed part of a marshalled record (length, reqid, key and data lengths).
const REC_FIXED: usize = 16;
/// Write buffer of each spill file.
const SPILL_BUF: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("malformed record buffer: {0}")]
    Malformed(String),
    #[error("record without a record header (data length {0})")]
    NoHeader(usize),
    #[error("spill file: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Receives each surviving record as key and value.
pub type Sink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Where one record lives in memory: chunk number and byte offset.
#[derive(Debug, Clone, Copy)]
struct Loc {
    chunk: u32,
    off: u32,
}

/// One marshalled record, borrowed.
struct Rec<'a> {
    reqid: u32,
    key: &'a [u8],
    value: &'a [u8],
    /// The whole marshalled record.
    raw: &'a [u8],
}

/// Parses the marshalled record at the front of `buf`.
fn parse_rec(buf: &[u8]) -> Result<Rec<'_>> {
    if buf.len() < REC_FIXED {
        return Err(StoreError::Malformed("truncated record".into()));
    }
    let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap()) as usize;
    let (total, reqid, klen, dlen) = (word(0), word(4) as u32, word(8), word(12));
    let need = REC_FIXED
        .checked_add(klen)
        .and_then(|n| n.checked_add(dlen))
        .ok_or_else(|| StoreError::Malformed("record length overflow".into()))?;
    if total != need || buf.len() < need {
        return Err(StoreError::Malformed(format!(
            "record length {total} does not match key {klen} + data {dlen} in {} bytes",
            buf.len()
        )));
    }
    Ok(Rec {
        reqid,
        key: &buf[REC_FIXED..REC_FIXED + klen],
        value: &buf[REC_FIXED + klen..need],
        raw: &buf[..need],
    })
}

/// Records held in memory.
struct MemTable {
    chunks: Vec<Vec<u8>>,
    /// Best copy of each key (merging stores only).
    index: HashTable<Loc>,
    hasher: DefaultHashBuilder,
    /// Bytes reserved from the budget.
    reserved: usize,
}

impl MemTable {
    fn new() -> MemTable {
        MemTable {
            chunks: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            reserved: 0,
        }
    }

    fn rec_at(chunks: &[Vec<u8>], loc: Loc) -> Rec<'_> {
        // Every stored record was validated when its chunk was added.
        parse_rec(&chunks[loc.chunk as usize][loc.off as usize..]).expect("validated record")
    }

    /// Adds a chunk of validated records (reqid = node index), starting at
    /// byte `start`; with a policy that merges, indexes each record.
    fn add(&mut self, buf: Vec<u8>, start: usize, count: u32, policy: Policy) {
        let chunk = self.chunks.len() as u32;
        self.chunks.push(buf);
        let Policy::Merge { mypnn } = policy else {
            return;
        };
        let MemTable {
            chunks,
            index,
            hasher,
            ..
        } = self;
        let buf = &chunks[chunk as usize];
        let mut off = start;
        for _ in 0..count {
            let rec = parse_rec(&buf[off..]).expect("validated record");
            let loc = Loc {
                chunk,
                off: off as u32,
            };
            off += rec.raw.len();
            let rank = Rank::of_value(rec.value, rec.reqid, mypnn).expect("validated header");
            let h = hasher.hash_one(rec.key);
            let found = index.find_mut(h, |l| Self::rec_at(chunks, *l).key == rec.key);
            match found {
                Some(best) => {
                    let b = Self::rec_at(chunks, *best);
                    let brank = Rank::of_value(b.value, b.reqid, mypnn).expect("validated header");
                    if rank > brank {
                        *best = loc;
                    }
                }
                None => {
                    index.insert_unique(h, loc, |l| hasher.hash_one(Self::rec_at(chunks, *l).key));
                }
            }
        }
    }

    /// Every record held, in chunk order (duplicates included).
    fn for_each_raw(
        &self,
        mut f: impl FnMut(Rec<'_>) -> Result<()>,
        starts: &[usize],
    ) -> Result<()> {
        for (buf, &start) in self.chunks.iter().zip(starts) {
            let mut off = start;
            while off < buf.len() {
                let rec = parse_rec(&buf[off..])?;
                off += rec.raw.len();
                f(rec)?;
            }
        }
        Ok(())
    }

    /// The surviving records (merging stores) or all of them (others).
    fn emit(&self, policy: Policy, starts: &[usize], sink: &mut Sink<'_>) -> Result<()> {
        if policy.merges() {
            for loc in self.index.iter() {
                let r = Self::rec_at(&self.chunks, *loc);
                sink(r.key, r.value)?;
            }
            Ok(())
        } else {
            self.for_each_raw(|r| sink(r.key, r.value), starts)
        }
    }
}

/// Records written to spill files.
struct Spill {
    parts: Vec<BufWriter<File>>,
    sizes: Vec<u64>,
    hasher: DefaultHashBuilder,
    depth: u32,
}

impl Spill {
    fn create(dir: &Path, nparts: usize, depth: u32) -> Result<Spill> {
        let mut parts = Vec::with_capacity(nparts);
        for _ in 0..nparts {
            let f = tempfile::tempfile_in(dir).or_else(|_| tempfile::tempfile())?;
            parts.push(BufWriter::with_capacity(SPILL_BUF, f));
        }
        Ok(Spill {
            parts,
            sizes: vec![0; nparts],
            hasher: DefaultHashBuilder::default(),
            depth,
        })
    }

    /// Appends one marshalled record to the file its key belongs to.
    fn write(&mut self, key: &[u8], raw: &[u8]) -> Result<()> {
        let p = if self.parts.len() == 1 {
            0
        } else {
            (self.hasher.hash_one(key) % self.parts.len() as u64) as usize
        };
        self.parts[p].write_all(raw)?;
        self.sizes[p] += raw.len() as u64;
        Ok(())
    }

    /// Emits the records of every file, merging each file in memory when
    /// the policy merges, splitting files larger than `share` first.
    fn emit(self, policy: Policy, share: usize, dir: &Path, sink: &mut Sink<'_>) -> Result<()> {
        for (w, size) in self.parts.into_iter().zip(self.sizes) {
            let mut f = w.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            if size == 0 {
                continue;
            }
            if !policy.merges() {
                stream_file(f, |r| sink(r.key, r.value))?;
            } else if size as usize > share && self.depth < MAX_DEPTH {
                // Too big to merge at once: split it by another hash.
                let mut sub = Spill::create(dir, PARTITIONS, self.depth + 1)?;
                stream_file(f, |r| sub.write(r.key, r.raw))?;
                sub.emit(policy, share, dir, sink)?;
            } else {
                let mut buf = Vec::with_capacity(size as usize);
                f.read_to_end(&mut buf)?;
                drop(f);
                let count = count_records(&buf)?;
                let mut t = MemTable::new();
                t.add(buf, 0, count, policy);
                t.emit(policy, &[0], sink)?;
            }
        }
        Ok(())
    }
}

/// Reads a spill file record by record.
fn stream_file(f: File, mut each: impl FnMut(Rec<'_>) -> Result<()>) -> Result<()> {
    let mut r = BufReader::with_capacity(SPILL_BUF, f);
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; REC_FIXED];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let total = u32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
        if total < REC_FIXED {
            return Err(StoreError::Malformed("spill file record".into()));
        }
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(total, 0);
        r.read_exact(&mut buf[REC_FIXED..])?;
        each(parse_rec(&buf)?)?;
    }
}

/// Validates the records of a spill file read back whole; returns their
/// number.
fn count_records(buf: &[u8]) -> Result<u32> {
    let mut off = 0;
    let mut n = 0u32;
    while off < buf.len() {
        off += parse_rec(&buf[off..])?.raw.len();
        n += 1;
    }
    Ok(n)
}

enum State {
    Memory { table: MemTable, starts: Vec<usize> },
    Spilled(Spill),
}

/// Totals about what a store received and emitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub chunks: u64,
    pub records: u64,
    pub bytes: u64,
    pub spilled: bool,
}

/// One database's records between pull and push.
pub struct RecordStore {
    policy: Policy,
    budget: Arc<Budget>,
    share: usize,
    dir: PathBuf,
    state: State,
    stats: StoreStats,
}

impl RecordStore {
    /// A store whose spill files go in `dir`, which splits spill files
    /// larger than `share` bytes before merging them.
    pub fn new(policy: Policy, budget: Arc<Budget>, share: usize, dir: PathBuf) -> RecordStore {
        RecordStore {
            policy,
            budget,
            share: share.max(1 << 20),
            dir,
            state: State::Memory {
                table: MemTable::new(),
                starts: Vec::new(),
            },
            stats: StoreStats::default(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Whether the records have moved to disk.
    pub fn spilled(&self) -> bool {
        matches!(self.state, State::Spilled(_))
    }

    /// Adds one `DB_PULL` chunk (a marshalled record buffer) received from
    /// the node at index `node_idx`. Returns the number of records in it.
    pub fn add_chunk(&mut self, node_idx: u32, mut buf: Vec<u8>) -> Result<u32> {
        if buf.len() < 8 {
            return Err(StoreError::Malformed(
                "record buffer shorter than 8 bytes".into(),
            ));
        }
        let count = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        // Validate every record and tag it with its node.
        let mut off = 8;
        for _ in 0..count {
            let (len, vlen) = {
                let r = parse_rec(&buf[off..])?;
                (r.raw.len(), r.value.len())
            };
            if vlen < ctdb_protocol::types::LtdbHeader::WIRE_SIZE {
                return Err(StoreError::NoHeader(vlen));
            }
            buf[off + 4..off + 8].copy_from_slice(&node_idx.to_le_bytes());
            off += len;
        }
        if off != buf.len() {
            return Err(StoreError::Malformed(format!(
                "{} trailing bytes after {count} records",
                buf.len() - off
            )));
        }
        buf.truncate(off);
        self.stats.chunks += 1;
        self.stats.records += count as u64;
        self.stats.bytes += (off - 8) as u64;

        if let State::Memory { table, starts } = &mut self.state {
            let cost = buf.capacity() + count as usize * INDEX_COST;
            if self.budget.try_reserve(cost) {
                table.reserved += cost;
                starts.push(8);
                table.add(buf, 8, count, self.policy);
                return Ok(count);
            }
            self.spill()?;
        }
        let State::Spilled(spill) = &mut self.state else {
            unreachable!("spilled above");
        };
        let mut off = 8;
        while off < buf.len() {
            let r = parse_rec(&buf[off..])?;
            off += r.raw.len();
            spill.write(r.key, r.raw)?;
        }
        Ok(count)
    }

    /// Moves every record held in memory to spill files.
    fn spill(&mut self) -> Result<()> {
        let nparts = if self.policy.merges() { PARTITIONS } else { 1 };
        let mut spill = Spill::create(&self.dir, nparts, 0)?;
        if let State::Memory { table, starts } = &self.state {
            table.for_each_raw(|r| spill.write(r.key, r.raw), starts)?;
            self.budget.release(table.reserved);
        }
        self.state = State::Spilled(spill);
        self.stats.spilled = true;
        Ok(())
    }

    /// Emits every surviving record as (key, value), consuming the store.
    pub fn drain(mut self, sink: &mut Sink<'_>) -> Result<()> {
        let state = std::mem::replace(
            &mut self.state,
            State::Memory {
                table: MemTable::new(),
                starts: Vec::new(),
            },
        );
        match state {
            State::Memory { table, starts } => {
                let r = table.emit(self.policy, &starts, sink);
                self.budget.release(table.reserved);
                r
            }
            State::Spilled(spill) => spill.emit(self.policy, self.share, &self.dir, sink),
        }
    }
}

impl Drop for RecordStore {
    fn drop(&mut self) {
        if let State::Memory { table, .. } = &self.state {
            self.budget.release(table.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::Marshal;
    use ctdb_protocol::types::{LtdbHeader, RecBuffer};
    use std::collections::BTreeMap;

    fn chunk(recs: &[(&str, u64, u32, &str)]) -> Vec<u8> {
        let mut rb = RecBuffer::new(0x1234);
        for &(k, rsn, dmaster, v) in recs {
            let h = LtdbHeader {
                rsn,
                dmaster,
                reserved1: 0,
                flags: 0,
            };
            rb.add(0, Some(&h), k.as_bytes(), v.as_bytes());
        }
        rb.to_bytes()
    }

    fn drain(store: RecordStore) -> BTreeMap<String, (u64, String)> {
        let mut out = BTreeMap::new();
        store
            .drain(&mut |k, v| {
                let (h, d) = LtdbHeader::split(v).unwrap();
                let k = String::from_utf8(k.to_vec()).unwrap();
                assert!(
                    out.insert(k, (h.rsn, String::from_utf8(d.to_vec()).unwrap()))
                        .is_none()
                );
                Ok(())
            })
            .unwrap();
        out
    }

    fn merge_store(limit: usize) -> (RecordStore, Arc<Budget>) {
        let budget = Arc::new(Budget::new(limit));
        let s = RecordStore::new(
            Policy::Merge { mypnn: 0 },
            budget.clone(),
            1,
            std::env::temp_dir(),
        );
        (s, budget)
    }

    #[test]
    fn merges_by_rsn_in_memory_and_on_disk() {
        for limit in [usize::MAX / 2, 0] {
            let (mut s, budget) = merge_store(limit);
            s.add_chunk(0, chunk(&[("a", 1, 1, "a-n0"), ("b", 5, 1, "b-n0")]))
                .unwrap();
            s.add_chunk(
                1,
                chunk(&[("a", 2, 1, "a-n1"), ("b", 4, 1, "b-n1"), ("c", 1, 1, "c")]),
            )
            .unwrap();
            assert_eq!(s.spilled(), limit == 0);
            let out = drain(s);
            assert_eq!(out["a"], (2, "a-n1".into()));
            assert_eq!(out["b"], (5, "b-n0".into()));
            assert_eq!(out["c"], (1, "c".into()));
            assert_eq!(out.len(), 3);
            assert_eq!(budget.used(), 0);
        }
    }

    #[test]
    fn spills_midway_and_splits_large_partitions() {
        // Enough records that partitions exceed the 1 MiB minimum share and
        // are split again.
        let (mut s, budget) = merge_store(3 << 20);
        let val = "x".repeat(200);
        let n = 30_000;
        for node in 0..3u32 {
            for start in (0..n).step_by(1000) {
                let recs: Vec<(String, u64)> = (start..start + 1000)
                    .map(|i| (format!("key-{i}"), (i % 7 + node as usize) as u64))
                    .collect();
                let r: Vec<(&str, u64, u32, &str)> = recs
                    .iter()
                    .map(|(k, rsn)| (k.as_str(), *rsn, 1u32, val.as_str()))
                    .collect();
                s.add_chunk(node, chunk(&r)).unwrap();
            }
        }
        assert!(s.spilled());
        assert!(budget.peak() <= 3 << 20);
        let out = drain(s);
        assert_eq!(out.len(), n);
        for i in 0..n {
            // Node 2 has the highest rsn of every key.
            assert_eq!(out[&format!("key-{i}")].0, (i % 7 + 2) as u64);
        }
    }

    #[test]
    fn single_source_keeps_everything_in_order() {
        for limit in [usize::MAX / 2, 0] {
            let budget = Arc::new(Budget::new(limit));
            let mut s = RecordStore::new(
                Policy::Single { persistent: true },
                budget,
                1,
                std::env::temp_dir(),
            );
            s.add_chunk(2, chunk(&[("a", 1, 0, "1"), ("b", 1, 0, "2")]))
                .unwrap();
            s.add_chunk(2, chunk(&[("c", 1, 0, "3")])).unwrap();
            let mut keys = Vec::new();
            s.drain(&mut |k, _| {
                keys.push(k.to_vec());
                Ok(())
            })
            .unwrap();
            assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        }
    }

    #[test]
    fn rejects_bad_chunks() {
        let (mut s, _) = merge_store(usize::MAX / 2);
        let mut c = chunk(&[("a", 1, 1, "v")]);
        c.push(0);
        assert!(matches!(s.add_chunk(0, c), Err(StoreError::Malformed(_))));
        let mut rb = RecBuffer::new(1);
        rb.add(0, None, b"k", b"short");
        assert!(matches!(
            s.add_chunk(0, rb.to_bytes()),
            Err(StoreError::NoHeader(5))
        ));
        let mut c = chunk(&[("a", 1, 1, "v")]);
        c[8] = 0xff; // record length
        assert!(s.add_chunk(0, c).is_err());
        assert!(s.add_chunk(0, vec![1, 2]).is_err());
    }
}
