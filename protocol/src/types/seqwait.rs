//! `DB_WAIT_SEQNUM` (ctdb-rs extension): read-your-writes across nodes.
//!
//! A client asks its node to answer only once a persistent database has
//! reached a point a writer on another node handed it: the database's
//! sequence number (classic and in-memory databases), every listed key at
//! a record sequence number (rsn; keyed databases, which have no database
//! sequence number), or a recovery generation. The node parks the request
//! and answers when the point is reached, or with a timeout error after
//! `timeout_ms`. CTDB 4.17 does not know the opcode and answers -1.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer};

/// What a [`DbWaitSeqnum`] waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqWaitTarget {
    /// The database's `__db_sequence_number__` is at least this.
    DbSeqnum(u64),
    /// This node finished the recovery of this generation (it is the
    /// current one, outside recovery, or one this node went through).
    Generation(u32),
    /// Every key's record has at least this rsn.
    Keys(Vec<(Vec<u8>, u64)>),
}

/// The request. On the wire: db_id u32, kind u32 (0 sequence number,
/// 1 generation, 2 keys), timeout_ms u32, key count u32, target u64
/// (sequence number or generation; 0 for keys), then per key: rsn u64,
/// key length u32, the key's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbWaitSeqnum {
    pub db_id: u32,
    /// How long the node waits before answering with a timeout error; 0
    /// only checks.
    pub timeout_ms: u32,
    pub target: SeqWaitTarget,
}

/// The status of a wait that timed out (`-ETIMEDOUT`).
pub const SEQWAIT_TIMEOUT_STATUS: i32 = -110;
/// Every error message of a ctdb-rs node for this control starts so; an
/// error without it comes from a node that does not know the control.
pub const SEQWAIT_ERR_PREFIX: &str = "DB_WAIT_SEQNUM:";

const FIXED: usize = 24;

impl Marshal for DbWaitSeqnum {
    fn len(&self) -> usize {
        FIXED
            + match &self.target {
                SeqWaitTarget::Keys(ks) => ks.iter().map(|(k, _)| 12 + k.len()).sum(),
                _ => 0,
            }
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.db_id);
        let (kind, n, target) = match &self.target {
            SeqWaitTarget::DbSeqnum(s) => (0, 0, *s),
            SeqWaitTarget::Generation(g) => (1, 0, u64::from(*g)),
            SeqWaitTarget::Keys(ks) => (2, ks.len() as u32, 0),
        };
        w.u32(kind);
        w.u32(self.timeout_ms);
        w.u32(n);
        w.u64(target);
        if let SeqWaitTarget::Keys(ks) = &self.target {
            for (k, rsn) in ks {
                w.u64(*rsn);
                w.u32(k.len() as u32);
                w.bytes(k);
            }
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let db_id = r.u32("wait_seqnum db_id")?;
        let kind = r.u32("wait_seqnum kind")?;
        let timeout_ms = r.u32("wait_seqnum timeout")?;
        let n = r.u32("wait_seqnum key count")?;
        let target = r.u64("wait_seqnum target")?;
        let target = match kind {
            0 => SeqWaitTarget::DbSeqnum(target),
            1 => SeqWaitTarget::Generation(u32::try_from(target).map_err(|_| Error::Invalid {
                what: "wait_seqnum generation",
                why: "over 32 bits",
            })?),
            2 => {
                // Each key takes at least 12 bytes: a count beyond what the
                // buffer holds is refused before anything is allocated.
                if n as usize > r.remaining() / 12 {
                    return Err(Error::Invalid {
                        what: "wait_seqnum key count",
                        why: "more keys than the data holds",
                    });
                }
                let mut ks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let rsn = r.u64("wait_seqnum rsn")?;
                    let len = r.u32("wait_seqnum key length")? as usize;
                    ks.push((r.bytes(len, "wait_seqnum key")?.to_vec(), rsn));
                }
                SeqWaitTarget::Keys(ks)
            }
            _ => {
                return Err(Error::Invalid {
                    what: "wait_seqnum kind",
                    why: "not 0, 1 or 2",
                });
            }
        };
        Ok((
            DbWaitSeqnum {
                db_id,
                timeout_ms,
                target,
            },
            r.pos(),
        ))
    }
}

#[cfg(any(test, feature = "random"))]
impl crate::random::Random for DbWaitSeqnum {
    fn random(r: &mut crate::random::Rng) -> Self {
        let target = match r.below(3) {
            0 => SeqWaitTarget::DbSeqnum(r.u64()),
            1 => SeqWaitTarget::Generation(r.u32()),
            _ => SeqWaitTarget::Keys(r.vec(5, |r| (r.bytes(20), r.u64()))),
        };
        DbWaitSeqnum {
            db_id: r.u32(),
            timeout_ms: r.u32(),
            target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_counts() {
        let w = DbWaitSeqnum {
            db_id: 7,
            timeout_ms: 200,
            target: SeqWaitTarget::Keys(vec![(b"a\0".to_vec(), 3), (Vec::new(), 9)]),
        };
        let mut buf = vec![0; w.len()];
        assert_eq!(w.push(&mut buf), w.len());
        assert_eq!(DbWaitSeqnum::pull(&buf).unwrap(), (w, buf.len()));
        // A key count the data cannot hold.
        buf[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(DbWaitSeqnum::pull(&buf).is_err());
        let mut bad = vec![0u8; FIXED];
        bad[4] = 9;
        assert!(DbWaitSeqnum::pull(&bad).is_err());
    }
}
