//! Which copy of a record survives a recovery, and how the survivor is
//! rewritten before it is pushed back to every node.
//!
//! CTDB's helper pulls the nodes one after the other, in node-list order,
//! into a scratch database and replaces the copy it holds when the new
//! copy's record sequence number (rsn) is higher, or equal while the held
//! copy's dmaster is the recovering node. Applied in that order, the
//! survivor among the copies with the highest rsn is the first (in node
//! order) whose dmaster is not the recovering node, or, when every one of
//! them names the recovering node, the last.
//!
//! [`Rank`] orders copies so that the greatest one is exactly that
//! survivor, whatever order the copies arrive in. That is what lets this
//! helper pull every node at once and still end with the records CTDB's
//! helper would have chosen.

use ctdb_protocol::types::{LtdbHeader, record_flags};

/// The ordering key of one copy of a record: greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    rsn: u64,
    /// 1 when the copy's dmaster is not the recovering node.
    foreign: u8,
    /// Among foreign copies the lowest node index wins, otherwise the
    /// highest: stored so that greater is better in both cases.
    order: i64,
}

impl Rank {
    /// The rank of a copy with header fields `rsn`/`dmaster` pulled from
    /// the node at index `node_idx` of the node list, when `mypnn` runs the
    /// recovery.
    pub fn new(rsn: u64, dmaster: u32, node_idx: u32, mypnn: u32) -> Rank {
        let foreign = dmaster != mypnn;
        Rank {
            rsn,
            foreign: foreign as u8,
            order: if foreign {
                -(node_idx as i64)
            } else {
                node_idx as i64
            },
        }
    }

    /// The rank of a stored value (header first), or `None` when the value
    /// is too short to hold a record header.
    pub fn of_value(value: &[u8], node_idx: u32, mypnn: u32) -> Option<Rank> {
        if value.len() < LtdbHeader::WIRE_SIZE {
            return None;
        }
        let rsn = u64::from_le_bytes(value[0..8].try_into().ok()?);
        let dmaster = u32::from_le_bytes(value[8..12].try_into().ok()?);
        Some(Rank::new(rsn, dmaster, node_idx, mypnn))
    }
}

/// How a database's records are collected and rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Persistent and replicated databases: one node's copy, as it is.
    Single { persistent: bool },
    /// Volatile databases: every node's copies, merged by [`Rank`].
    Merge { mypnn: u32 },
    /// ctdb-rs keyed databases: the copies of the nodes whose copy epoch is
    /// the highest ([`Epochs`]), merged by [`Rank`]; the other nodes' copies
    /// are left out, and the result carries the next epoch. `current` is
    /// filled in by the store once every node was pulled. `generation`
    /// (the recovery's) is stamped into the epoch record.
    Keyed {
        mypnn: u32,
        current: NodeSet,
        generation: u32,
    },
}

impl Policy {
    /// Whether records from several nodes must be merged.
    pub fn merges(&self) -> bool {
        matches!(self, Policy::Merge { .. } | Policy::Keyed { .. })
    }

    /// Whether a copy pulled from the node at `node_idx` takes part.
    pub fn takes(&self, node_idx: u32) -> bool {
        match self {
            Policy::Keyed { current, .. } => current.contains(node_idx),
            _ => true,
        }
    }
}

/// A set of node indexes (in the node list of the recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSet([u64; 4]);

impl NodeSet {
    /// The most node indexes a set holds; nodes past it count as members
    /// (CTDB clusters are far smaller).
    pub const CAPACITY: u32 = 256;

    pub fn all() -> NodeSet {
        NodeSet([u64::MAX; 4])
    }

    pub fn empty() -> NodeSet {
        NodeSet([0; 4])
    }

    pub fn insert(&mut self, i: u32) {
        if i < Self::CAPACITY {
            self.0[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, i: u32) -> bool {
        i >= Self::CAPACITY || self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// The copy epoch of each node's copy of a keyed database, as pulled.
///
/// Every keyed recovery by this helper writes the epoch record
/// ([`ctdb_protocol::types::KEYED_EPOCH_KEY`]) with the next epoch into the merged result, so
/// every node that took part holds the same epoch afterwards, and a node
/// that missed a recovery (dead, disconnected, banned, stopped) keeps an
/// older one. Every acknowledged commit was applied on every node of the
/// generation, so the nodes with the highest epoch hold every
/// acknowledged commit; an older copy can only add commits that were
/// never acknowledged — and, merged per record, it would bring back part
/// of such a commit (a record nobody wrote since) next to newer records
/// that replaced the rest of it. Those copies are left out.
#[derive(Debug, Default, Clone)]
pub struct Epochs {
    by_node: std::collections::BTreeMap<u32, u64>,
}

impl Epochs {
    /// Notes the epoch record of the node at `node_idx` (its stored
    /// value: header, then u64 little-endian).
    pub fn note(&mut self, node_idx: u32, value: &[u8]) {
        let e = value
            .get(LtdbHeader::WIRE_SIZE..LtdbHeader::WIRE_SIZE + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap_or(0);
        let slot = self.by_node.entry(node_idx).or_insert(0);
        *slot = (*slot).max(e);
    }

    /// The highest epoch among `nodes` node indexes (0 without any).
    pub fn highest(&self) -> u64 {
        self.by_node.values().copied().max().unwrap_or(0)
    }

    /// The nodes whose copies take part: those at the highest epoch (a
    /// node without the record is at epoch 0).
    pub fn current(&self) -> NodeSet {
        let top = self.highest();
        if top == 0 {
            return NodeSet::all();
        }
        let mut set = NodeSet::empty();
        for (&n, &e) in &self.by_node {
            if e == top {
                set.insert(n);
            }
        }
        set
    }

    /// Node indexes left out, with their epochs (for the log).
    pub fn stale(&self) -> Vec<(u32, u64)> {
        let top = self.highest();
        self.by_node
            .iter()
            .filter(|&(_, &e)| e < top)
            .map(|(&n, &e)| (n, e))
            .collect()
    }

    /// The epoch record pushed with the merged copy: the next epoch,
    /// stamped (`reserved1`) with the generation of the recovery, which our
    /// daemon checks before it commits the recovery of a keyed database: a
    /// helper that merely carries an old epoch record along (CTDB's) is
    /// refused on every node, also on one whose own copy is behind.
    pub fn next_record(&self, mypnn: u32, generation: u32) -> Vec<u8> {
        let next = self.highest() + 1;
        LtdbHeader {
            rsn: next,
            dmaster: mypnn,
            reserved1: generation,
            flags: 0,
        }
        .prepend(&next.to_le_bytes())
    }
}

/// The header a surviving record is pushed with, or `None` when the record
/// is not pushed at all (a deleted record: header and no data).
///
/// Records of non-persistent databases become the recovering node's, with
/// the "migrated with data" flag, as CTDB does.
pub fn pushed_header(value: &[u8], persistent: bool, mypnn: u32) -> Option<LtdbHeader> {
    if value.len() <= LtdbHeader::WIRE_SIZE {
        return None;
    }
    let (mut h, _) = LtdbHeader::split(value).ok()?;
    if !persistent {
        h.dmaster = mypnn;
        h.flags |= record_flags::MIGRATED_WITH_DATA;
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CTDB's sequential rule, applied to copies in node order.
    fn sequential(copies: &[(u64, u32)], mypnn: u32) -> usize {
        let mut best: Option<usize> = None;
        for (i, &(rsn, _)) in copies.iter().enumerate() {
            match best {
                None => best = Some(i),
                Some(b) => {
                    let (brsn, bdm) = copies[b];
                    let keep = rsn < brsn || (rsn == brsn && bdm != mypnn);
                    if !keep {
                        best = Some(i);
                    }
                }
            }
        }
        best.unwrap()
    }

    fn by_rank(copies: &[(u64, u32)], mypnn: u32) -> usize {
        (0..copies.len())
            .max_by_key(|&i| Rank::new(copies[i].0, copies[i].1, i as u32, mypnn))
            .unwrap()
    }

    #[test]
    fn rank_agrees_with_ctdbs_sequential_rule() {
        // Every combination of rsn in 0..3 and dmaster in 0..3 over up to
        // four nodes, recovering on node 1.
        let mypnn = 1;
        let mut cases = 0;
        for n in 1..=4u32 {
            let combos = 9u32.pow(n);
            for c in 0..combos {
                let mut x = c;
                let copies: Vec<(u64, u32)> = (0..n)
                    .map(|_| {
                        let v = x % 9;
                        x /= 9;
                        ((v / 3) as u64, v % 3)
                    })
                    .collect();
                assert_eq!(
                    sequential(&copies, mypnn),
                    by_rank(&copies, mypnn),
                    "copies {copies:?}"
                );
                cases += 1;
            }
        }
        assert!(cases > 6000);
    }

    #[test]
    fn the_next_epoch_record_names_the_recovery() {
        let mut e = Epochs::default();
        e.note(0, &LtdbHeader::default().prepend(&4u64.to_le_bytes()));
        e.note(1, &LtdbHeader::default().prepend(&2u64.to_le_bytes()));
        let v = e.next_record(1, 0xabcd);
        let (h, d) = LtdbHeader::split(&v).unwrap();
        assert_eq!(u64::from_le_bytes(d.try_into().unwrap()), 5);
        assert_eq!((h.rsn, h.dmaster, h.reserved1), (5, 1, 0xabcd));
    }

    #[test]
    fn pushed_headers_follow_ctdb() {
        let h = LtdbHeader {
            rsn: 7,
            dmaster: 2,
            reserved1: 0,
            flags: 0x10,
        };
        let v = h.prepend(b"data");
        let vol = pushed_header(&v, false, 0).unwrap();
        assert_eq!(vol.dmaster, 0);
        assert_eq!(vol.rsn, 7);
        assert_eq!(vol.flags, 0x10 | record_flags::MIGRATED_WITH_DATA);
        let pers = pushed_header(&v, true, 0).unwrap();
        assert_eq!(pers, h);
        // A header without data is a deleted record: not pushed.
        assert_eq!(pushed_header(&h.prepend(b""), false, 0), None);
        assert_eq!(pushed_header(b"short", true, 0), None);
    }
}
