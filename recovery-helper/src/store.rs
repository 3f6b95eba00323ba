//! Where one database's pulled records wait between the pull and the push.
//!
//! Records arrive as the chunks (record buffers) the nodes send for
//! `DB_PULL`. While they arrive the store does as little as it can, so that
//! it keeps up with the daemon: it validates each chunk, overwrites each
//! record's `reqid` field with the index of the node it came from, and
//! then either
//!
//! * keeps the chunk in memory, if the shared [`Budget`] grants the bytes;
//! * or appends its records to one anonymous (already unlinked) spill
//!   file. The first refused reservation moves everything held so far to
//!   that file and gives the reservation back.
//!
//! Merging happens when the records are drained for the push:
//!
//! * in memory, a hash index maps each key to its best copy (see
//!   [`crate::merge::Rank`]); nothing is copied per record;
//! * on disk, a spill file no larger than the store's share of the budget
//!   is read back and merged in memory; a larger one is split by a hash of
//!   the key into [`PARTITIONS`] files (all copies of a key land in the
//!   same file), each merged in turn and split again, by another hash, if
//!   still too large. A database of any size is merged a bounded piece at a
//!   time.
//!
//! Persistent and replicated databases come from one node: nothing to
//! merge, the records are streamed back as they came.
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
use crate::merge::{Epochs, Policy, Rank};
use ctdb_protocol::types::KEYED_EPOCH_KEY;

/// Number of spill files of a volatile database, at each level of splitting.
pub const PARTITIONS: usize = 64;
/// How many times a spill file may be split again.
const MAX_DEPTH: u32 = 4;
/// Bytes the index costs per record, charged to the budget.
const INDEX_COST: usize = 16;
/// Fixed part of a marshalled record (length, reqid, key and data lengths).
const REC_FIXED: usize = 16;
/// Write buffer of each partition file.
const SPILL_BUF: usize = 8 << 10;
/// The least a store may merge at once.
const MIN_SHARE: usize = 1 << 20;

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

/// Records held in memory: chunks as received (records from byte `start`
/// on), indexed by key only when they are emitted.
struct MemTable {
    chunks: Vec<(Vec<u8>, usize)>,
    /// Bytes reserved from the budget.
    reserved: usize,
}

impl MemTable {
    fn new() -> MemTable {
        MemTable {
            chunks: Vec::new(),
            reserved: 0,
        }
    }

    fn rec_at(chunks: &[(Vec<u8>, usize)], loc: Loc) -> Rec<'_> {
        // Every stored record was validated when its chunk was added.
        parse_rec(&chunks[loc.chunk as usize].0[loc.off as usize..]).expect("validated record")
    }

    /// Every record held, in chunk order (duplicates included).
    fn for_each_raw(&self, mut f: impl FnMut(Rec<'_>) -> Result<()>) -> Result<()> {
        for (buf, start) in &self.chunks {
            let mut off = *start;
            while off < buf.len() {
                let rec = parse_rec(&buf[off..])?;
                off += rec.raw.len();
                f(rec)?;
            }
        }
        Ok(())
    }

    /// The best copy of each key, by [`Rank`], among the copies `policy`
    /// takes (a keyed database: those of current nodes, without the epoch
    /// record).
    fn index(&self, mypnn: u32, policy: Policy) -> (HashTable<Loc>, DefaultHashBuilder) {
        let keyed = matches!(policy, Policy::Keyed { .. });
        let hasher = DefaultHashBuilder::default();
        let mut index: HashTable<Loc> = HashTable::new();
        let chunks = &self.chunks;
        for (c, (buf, start)) in chunks.iter().enumerate() {
            let mut off = *start;
            while off < buf.len() {
                let rec = parse_rec(&buf[off..]).expect("validated record");
                let loc = Loc {
                    chunk: c as u32,
                    off: off as u32,
                };
                off += rec.raw.len();
                if keyed && (!policy.takes(rec.reqid) || rec.key == KEYED_EPOCH_KEY) {
                    continue;
                }
                let rank = Rank::of_value(rec.value, rec.reqid, mypnn).expect("validated header");
                let h = hasher.hash_one(rec.key);
                match index.find_mut(h, |l| Self::rec_at(chunks, *l).key == rec.key) {
                    Some(best) => {
                        let b = Self::rec_at(chunks, *best);
                        let brank =
                            Rank::of_value(b.value, b.reqid, mypnn).expect("validated header");
                        if rank > brank {
                            *best = loc;
                        }
                    }
                    None => {
                        index.insert_unique(h, loc, |l| {
                            hasher.hash_one(Self::rec_at(chunks, *l).key)
                        });
                    }
                }
            }
        }
        (index, hasher)
    }

    /// The surviving records (merging stores) or all of them (others).
    fn emit(&self, policy: Policy, sink: &mut Sink<'_>) -> Result<()> {
        match policy {
            Policy::Merge { mypnn } | Policy::Keyed { mypnn, .. } => {
                let (index, _) = self.index(mypnn, policy);
                for loc in index.iter() {
                    let r = Self::rec_at(&self.chunks, *loc);
                    sink(r.key, r.value)?;
                }
                Ok(())
            }
            Policy::Single { .. } => self.for_each_raw(|r| sink(r.key, r.value)),
        }
    }
}

/// Loads a whole file of records and emits its survivors.
fn merge_file(mut f: File, size: u64, policy: Policy, sink: &mut Sink<'_>) -> Result<()> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf)?;
    drop(f);
    count_records(&buf)?;
    let mut t = MemTable::new();
    t.chunks.push((buf, 0));
    t.emit(policy, sink)
}

/// Records partitioned by key over several files.
struct Spill {
    parts: Vec<BufWriter<File>>,
    sizes: Vec<u64>,
    hasher: DefaultHashBuilder,
    depth: u32,
}

impl Spill {
    fn create(dir: &Path, depth: u32) -> Result<Spill> {
        let mut parts = Vec::with_capacity(PARTITIONS);
        for _ in 0..PARTITIONS {
            parts.push(BufWriter::with_capacity(SPILL_BUF, spill_file(dir)?));
        }
        Ok(Spill {
            parts,
            sizes: vec![0; PARTITIONS],
            hasher: DefaultHashBuilder::default(),
            depth,
        })
    }

    /// Appends one marshalled record to the file its key belongs to.
    fn write(&mut self, key: &[u8], raw: &[u8]) -> Result<()> {
        let p = (self.hasher.hash_one(key) % self.parts.len() as u64) as usize;
        self.parts[p].write_all(raw)?;
        self.sizes[p] += raw.len() as u64;
        Ok(())
    }

    /// Merges and emits each file in turn, splitting files larger than
    /// `share` by another hash first.
    fn emit(self, policy: Policy, share: usize, dir: &Path, sink: &mut Sink<'_>) -> Result<()> {
        for (w, size) in self.parts.into_iter().zip(self.sizes) {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            if size == 0 {
                continue;
            }
            split_or_merge(f, size, self.depth, policy, share, dir, sink)?;
        }
        Ok(())
    }
}

/// Merges a file of records in memory when it is small enough, else splits
/// it by key into [`PARTITIONS`] files and handles each of those.
fn split_or_merge(
    mut f: File,
    size: u64,
    depth: u32,
    policy: Policy,
    share: usize,
    dir: &Path,
    sink: &mut Sink<'_>,
) -> Result<()> {
    if size as usize <= share || depth >= MAX_DEPTH {
        return merge_file(f, size, policy, sink);
    }
    let mut sub = Spill::create(dir, depth + 1)?;
    f.seek(SeekFrom::Start(0))?;
    stream_file(f, |r| sub.write(r.key, r.raw))?;
    sub.emit(policy, share, dir, sink)
}

/// An anonymous file in `dir` (or the system's temporary directory).
fn spill_file(dir: &Path) -> Result<File> {
    Ok(tempfile::tempfile_in(dir).or_else(|_| tempfile::tempfile())?)
}

/// Reads a file of records from its start, record by record.
fn stream_file(mut f: File, mut each: impl FnMut(Rec<'_>) -> Result<()>) -> Result<()> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(64 << 10, f);
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

/// Validates records read back whole (framing and record header); returns
/// their number.
fn count_records(buf: &[u8]) -> Result<u32> {
    let mut off = 0;
    let mut n = 0u32;
    while off < buf.len() {
        let r = parse_rec(&buf[off..])?;
        if r.value.len() < ctdb_protocol::types::LtdbHeader::WIRE_SIZE {
            return Err(StoreError::NoHeader(r.value.len()));
        }
        off += r.raw.len();
        n += 1;
    }
    Ok(n)
}

enum State {
    Memory(MemTable),
    /// Every record appended, as received, to one file.
    Spilled {
        inbox: File,
        size: u64,
    },
}

/// Totals about what a store received.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub chunks: u64,
    pub records: u64,
    /// Records with a header and no data (deleted records).
    pub empty: u64,
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
    /// Keyed databases: each node's copy epoch.
    epochs: Epochs,
}

impl RecordStore {
    /// A store whose spill files go in `dir`, which merges at most `share`
    /// bytes of spilled records at once.
    pub fn new(policy: Policy, budget: Arc<Budget>, share: usize, dir: PathBuf) -> RecordStore {
        RecordStore {
            policy,
            budget,
            share: share.max(MIN_SHARE),
            dir,
            state: State::Memory(MemTable::new()),
            stats: StoreStats::default(),
            epochs: Epochs::default(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Whether the records have moved to disk.
    pub fn spilled(&self) -> bool {
        matches!(self.state, State::Spilled { .. })
    }

    /// Adds one `DB_PULL` chunk (a marshalled record buffer) received from
    /// the node at index `node_idx`. Returns the number of records in it.
    ///
    /// This is all the work done while records arrive: validating the
    /// chunk, then keeping it, or appending it to the spill file. Merging
    /// waits for [`drain`](RecordStore::drain).
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
            if vlen == ctdb_protocol::types::LtdbHeader::WIRE_SIZE {
                self.stats.empty += 1;
            }
            if matches!(self.policy, Policy::Keyed { .. }) {
                let r = parse_rec(&buf[off..])?;
                if r.key == KEYED_EPOCH_KEY {
                    self.epochs.note(node_idx, r.value);
                }
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
        self.stats.chunks += 1;
        self.stats.records += count as u64;
        self.stats.bytes += (off - 8) as u64;

        if let State::Memory(table) = &mut self.state {
            let cost = buf.capacity() + count as usize * INDEX_COST;
            if self.budget.try_reserve(cost) {
                table.reserved += cost;
                table.chunks.push((buf, 8));
                return Ok(count);
            }
            self.spill()?;
        }
        let State::Spilled { inbox, size } = &mut self.state else {
            unreachable!("spilled above");
        };
        inbox.write_all(&buf[8..])?;
        *size += (buf.len() - 8) as u64;
        Ok(count)
    }

    /// Moves every record held in memory to the spill file.
    fn spill(&mut self) -> Result<()> {
        let mut inbox = spill_file(&self.dir)?;
        let mut size = 0u64;
        if let State::Memory(table) = &self.state {
            for (buf, start) in &table.chunks {
                inbox.write_all(&buf[*start..])?;
                size += (buf.len() - start) as u64;
            }
            self.budget.release(table.reserved);
        }
        self.state = State::Spilled { inbox, size };
        self.stats.spilled = true;
        Ok(())
    }

    /// Keyed databases: each node's copy epoch, as pulled.
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Emits every surviving record as (key, value), consuming the store.
    /// A keyed database's survivors come from the current nodes only, and
    /// the next epoch record is emitted last.
    pub fn drain(mut self, sink: &mut Sink<'_>) -> Result<()> {
        let mut epoch_record = None;
        if let Policy::Keyed {
            mypnn, generation, ..
        } = self.policy
        {
            self.policy = Policy::Keyed {
                mypnn,
                current: self.epochs.current(),
                generation,
            };
            epoch_record = Some(self.epochs.next_record(mypnn, generation));
        }
        self.drain_records(sink)?;
        match epoch_record {
            Some(v) => sink(KEYED_EPOCH_KEY, &v),
            None => Ok(()),
        }
    }

    fn drain_records(&mut self, sink: &mut Sink<'_>) -> Result<()> {
        let state = std::mem::replace(&mut self.state, State::Memory(MemTable::new()));
        match state {
            State::Memory(table) => {
                let r = table.emit(self.policy, sink);
                self.budget.release(table.reserved);
                r
            }
            State::Spilled { inbox, .. } if !self.policy.merges() => {
                stream_file(inbox, |r| sink(r.key, r.value))
            }
            State::Spilled { inbox, size } => {
                split_or_merge(inbox, size, 0, self.policy, self.share, &self.dir, sink)
            }
        }
    }
}

impl Drop for RecordStore {
    fn drop(&mut self) {
        if let State::Memory(table) = &self.state {
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

    /// A keyed database: copies of nodes behind the highest copy epoch are
    /// left out (a commit only a stale node holds does not come back, not
    /// even a record nobody else has), the rest merge by rsn, and the next
    /// epoch record goes out with them; in memory and spilled alike.
    #[test]
    fn keyed_merges_only_current_copies_and_moves_the_epoch_on() {
        let epoch = |e: u64| {
            let v = LtdbHeader {
                rsn: e,
                dmaster: 0,
                reserved1: 0,
                flags: 0,
            }
            .prepend(&e.to_le_bytes());
            let mut rb = RecBuffer::new(0x1234);
            let (h, d) = LtdbHeader::split(&v).unwrap();
            rb.add(0, Some(&h), KEYED_EPOCH_KEY, d);
            rb.to_bytes()
        };
        for limit in [usize::MAX / 2, 0] {
            let budget = Arc::new(Budget::new(limit));
            let mut s = RecordStore::new(
                Policy::Keyed {
                    mypnn: 0,
                    current: crate::merge::NodeSet::all(),
                    generation: 77,
                },
                budget.clone(),
                1,
                std::env::temp_dir(),
            );
            // Node 0 and 1 went through recovery 3; node 2 missed it and
            // holds an unacknowledged commit of "own" and "shared".
            s.add_chunk(0, chunk(&[("shared", 7, 1, "s-acked"), ("a", 2, 1, "a0")]))
                .unwrap();
            s.add_chunk(0, epoch(3)).unwrap();
            s.add_chunk(1, chunk(&[("shared", 7, 1, "s-acked"), ("a", 3, 1, "a1")]))
                .unwrap();
            s.add_chunk(1, epoch(3)).unwrap();
            s.add_chunk(
                2,
                chunk(&[("shared", 9, 2, "s-stale"), ("own", 1, 2, "o-stale")]),
            )
            .unwrap();
            s.add_chunk(2, epoch(2)).unwrap();
            assert_eq!(s.epochs().stale(), vec![(2, 2)]);
            let out = drain(s);
            let key = String::from_utf8(KEYED_EPOCH_KEY.to_vec()).unwrap();
            assert_eq!(out["shared"], (7, "s-acked".into()));
            assert_eq!(out["a"], (3, "a1".into()));
            assert!(!out.contains_key("own"), "a stale commit came back");
            assert_eq!(out[&key].0, 4);
            assert_eq!(out.len(), 3);
            assert_eq!(budget.used(), 0);
        }
        // Without any epoch record (a first recovery) every copy counts.
        let budget = Arc::new(Budget::new(usize::MAX / 2));
        let mut s = RecordStore::new(
            Policy::Keyed {
                mypnn: 0,
                current: crate::merge::NodeSet::all(),
                generation: 77,
            },
            budget,
            1,
            std::env::temp_dir(),
        );
        s.add_chunk(0, chunk(&[("a", 1, 1, "x")])).unwrap();
        s.add_chunk(1, chunk(&[("b", 1, 1, "y")])).unwrap();
        let out = drain(s);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[&String::from_utf8(KEYED_EPOCH_KEY.to_vec()).unwrap()].0,
            1
        );
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
