//! Partially replicated volatile databases (ctdb-rs extension, issue 21):
//! the payloads of their controls.
//!
//! * `DB_SYNC_RECORD` ([`KeyData`](super::KeyData), the header ignored): a
//!   client asks its node to copy a record it is data master of to the
//!   record's replica node; answered with that node's pnn once the copy is
//!   stored there, or with [`SYNC_NOT_DMASTER`] when the record is not
//!   mastered on this node (the client migrates it here and asks again).
//! * `DB_REPLICA_STORE` ([`ReplicaStore`]): node to node, the copies.
//! * `DB_REPLICA_STATUS` (a database id, answered with [`ReplicaStatus`]):
//!   what the tool shows.
//!
//! CTDB 4.17 knows none of these opcodes (it answers -1).

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer};

use super::{RecBuffer, plain_struct};

/// `DB_SYNC_RECORD`'s status when this node is not the record's data
/// master (positive, without an error message: not a failure).
pub const SYNC_NOT_DMASTER: i32 = 1;

/// Every error message of a ctdb-rs node for these controls starts so; an
/// error without it comes from a node that does not know them.
pub const REPLICA_ERR_PREFIX: &str = "REPLICA:";

/// `DB_REPLICA_STORE`: record copies (header and data, as stored) for
/// the replica node, sent in recovery generation `generation` (a node in
/// another generation refuses them). On the wire: generation u32, then the
/// record buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaStore {
    pub generation: u32,
    pub recs: RecBuffer,
}

impl Marshal for ReplicaStore {
    fn len(&self) -> usize {
        4 + self.recs.len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.generation);
        w.put(&self.recs);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let generation = r.u32("replica_store generation")?;
        let recs = r.get()?;
        Ok((ReplicaStore { generation, recs }, r.pos()))
    }
}

/// `DB_REPLICA_STATUS`'s answer: one node's view of a partially
/// replicated database. Counters run from the daemon's start (or the
/// database's attach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    /// This node.
    pub pnn: u32,
    /// Where this node's records are replicated now (`u32::MAX`: nowhere,
    /// no other active node).
    pub replica_pnn: u32,
    /// Records in the local file whose data master is this node.
    pub mastered: u64,
    /// Records in the local file mastered elsewhere (replicas, and copies
    /// left by migrations and recoveries).
    pub copies: u64,
    /// Syncs answered with success.
    pub syncs: u64,
    /// Syncs that failed (the replica node refused or did not answer).
    pub sync_failures: u64,
    /// Replica copies stored here for other nodes.
    pub stored: u64,
    /// Replica copies not stored because the local copy was as new.
    pub stale: u64,
}

plain_struct!(ReplicaStatus {
    pnn: u32,
    replica_pnn: u32,
    mastered: u64,
    copies: u64,
    syncs: u64,
    sync_failures: u64,
    stored: u64,
    stale: u64,
});

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for ReplicaStore {
    fn random(r: &mut crate::random::Rng) -> Self {
        ReplicaStore {
            generation: r.u32(),
            recs: RecBuffer::random(r),
        }
    }
}

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for ReplicaStatus {
    fn random(r: &mut crate::random::Rng) -> Self {
        ReplicaStatus {
            pnn: r.u32(),
            replica_pnn: r.u32(),
            mastered: r.u64(),
            copies: r.u64(),
            syncs: r.u64(),
            sync_failures: r.u64(),
            stored: r.u64(),
            stale: r.u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{Random, Rng};

    #[test]
    fn round_trips() {
        for seed in 0..200 {
            let mut r = Rng::new(seed);
            let s = ReplicaStore::random(&mut r);
            let mut b = vec![0u8; s.len()];
            assert_eq!(s.push(&mut b), b.len());
            assert_eq!(ReplicaStore::pull(&b).unwrap(), (s, b.len()));
            let st = ReplicaStatus::random(&mut r);
            let mut b = vec![0u8; st.len()];
            assert_eq!(st.push(&mut b), 56);
            assert_eq!(ReplicaStatus::pull(&b).unwrap(), (st, 56));
        }
    }
}
