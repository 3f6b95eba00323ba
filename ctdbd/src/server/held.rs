//! Where record packets wait for a node whose outgoing connection is not
//! up yet.
//!
//! CTDB drops every packet for a node it has no outgoing connection to.
//! For the record protocol that loses more than a packet: a call resent at
//! a recovery's thaw to a node whose connection comes up a moment later
//! leaves its client (and every waiter queued behind it) waiting until the
//! call times out, and a dropped `REPLY_DMASTER` leaves a record with no
//! data master until the next recovery. Both happen when a node restarts:
//! the recovery that takes it in can finish before every link to it is up.
//!
//! So a call-family packet for such a node is kept, in order, for a short
//! while, and written first when the connection comes up. What a recovery
//! has made stale is not sent: a packet of another generation would be
//! dropped by the receiver anyway (the resent calls of the new generation
//! take its place). The queue is bounded in age, packets and bytes, so a
//! node that never comes back costs a bounded amount of memory.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::{Header, Marshal as _, Operation};

/// How long a packet is kept for a node that is not connected.
pub(super) const HOLD_FOR: Duration = Duration::from_secs(10);
/// At most this many packets are kept per node.
pub(super) const HOLD_MAX_PACKETS: usize = 1024;
/// At most this many bytes are kept per node.
pub(super) const HOLD_MAX_BYTES: usize = 4 << 20;

/// Whether a packet of this operation is kept rather than dropped when its
/// node is not connected: the record protocol's, whose loss stalls a
/// caller or strands a record. Only those a receiver checks against its
/// generation: a node that restarted meanwhile drops what was meant for
/// its previous run. (Not `REPLY_ERROR`: nothing checks its generation, so
/// a kept one could answer a new call of a restarted node that happens to
/// have the same request id.)
pub(super) fn worth_holding(op: Operation) -> bool {
    matches!(
        op,
        Operation::ReqCall | Operation::ReplyCall | Operation::ReqDmaster | Operation::ReplyDmaster
    )
}

/// Why a packet was not kept.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotHeld {
    /// Not a record packet (or not a packet at all).
    NotRecord,
    /// The node's queue is at its bound.
    Full,
}

struct HeldPacket {
    at: Instant,
    generation: u32,
    bytes: Bytes,
}

/// The packets kept for one node.
#[derive(Default)]
pub(super) struct Held {
    pkts: VecDeque<HeldPacket>,
    bytes: usize,
}

impl Held {
    /// Keeps `bytes` if it is a record packet and the queue has room
    /// (after forgetting what has been kept too long).
    pub(super) fn hold(&mut self, bytes: Bytes, now: Instant) -> Result<(), NotHeld> {
        let Ok((h, _)) = Header::pull(&bytes) else {
            return Err(NotHeld::NotRecord);
        };
        if !worth_holding(h.operation) {
            return Err(NotHeld::NotRecord);
        }
        self.expire(now);
        if self.pkts.len() >= HOLD_MAX_PACKETS || self.bytes + bytes.len() > HOLD_MAX_BYTES {
            return Err(NotHeld::Full);
        }
        self.bytes += bytes.len();
        self.pkts.push_back(HeldPacket {
            at: now,
            generation: h.generation,
            bytes,
        });
        Ok(())
    }

    /// Forgets packets kept longer than [`HOLD_FOR`].
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(p) = self.pkts.front() {
            if now.saturating_duration_since(p.at) <= HOLD_FOR {
                break;
            }
            self.bytes -= p.bytes.len();
            self.pkts.pop_front();
        }
    }

    /// Takes what is still worth sending, in the order it was kept: not
    /// expired, and of the current `generation`. Empties the queue.
    pub(super) fn take(&mut self, generation: u32, now: Instant) -> Vec<Bytes> {
        self.expire(now);
        self.bytes = 0;
        self.pkts
            .drain(..)
            .filter(|p| p.generation == generation)
            .map(|p| p.bytes)
            .collect()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::call::{ReplyCall, ReplyError};
    use ctdb_protocol::{Body, Packet};

    fn pkt(op: Operation, generation: u32, reqid: u32) -> Bytes {
        sized(op, generation, reqid, 1)
    }

    /// A packet of `op` (a keepalive, a REPLY_ERROR, else a REPLY_CALL's
    /// body) with `msg_len` bytes of data.
    fn sized(op: Operation, generation: u32, reqid: u32, msg_len: usize) -> Bytes {
        let mut h = Header::new(op, 1, 0, reqid);
        h.generation = generation;
        let body = match op {
            Operation::ReqKeepalive => Body::ReqKeepalive(None),
            Operation::ReplyError => Body::ReplyError(ReplyError {
                status: -1,
                msg: vec![b'x'; msg_len],
            }),
            _ => Body::ReplyCall(ReplyCall {
                status: 0,
                data: vec![b'x'; msg_len],
            }),
        };
        Packet::new(h, body).encode().into()
    }

    fn reqids(v: &[Bytes]) -> Vec<u32> {
        v.iter().map(|b| Header::pull(b).unwrap().0.reqid).collect()
    }

    #[test]
    fn record_packets_are_kept_in_order_and_stale_ones_are_not_sent() {
        let t0 = Instant::now();
        let mut h = Held::default();
        h.hold(pkt(Operation::ReplyCall, 7, 1), t0).unwrap();
        h.hold(pkt(Operation::ReplyCall, 6, 2), t0).unwrap();
        h.hold(pkt(Operation::ReplyCall, 7, 3), t0).unwrap();
        assert_eq!(
            h.hold(pkt(Operation::ReqKeepalive, 7, 4), t0),
            Err(NotHeld::NotRecord)
        );
        assert_eq!(
            h.hold(Bytes::from_static(b"junk"), t0),
            Err(NotHeld::NotRecord)
        );
        // Generation 6 was made stale by a recovery: not sent.
        assert_eq!(reqids(&h.take(7, t0)), vec![1, 3]);
        assert!(h.is_empty());
        assert!(h.take(7, t0).is_empty());
    }

    #[test]
    fn packets_kept_too_long_are_forgotten() {
        let t0 = Instant::now();
        let mut h = Held::default();
        h.hold(pkt(Operation::ReplyCall, 7, 1), t0).unwrap();
        let later = t0 + HOLD_FOR / 2;
        h.hold(pkt(Operation::ReplyCall, 7, 2), later).unwrap();
        assert_eq!(
            reqids(&h.take(7, t0 + HOLD_FOR + Duration::from_millis(1))),
            vec![2]
        );
        h.hold(pkt(Operation::ReplyCall, 7, 3), t0).unwrap();
        h.expire(t0 + HOLD_FOR * 2);
        assert!(h.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut h = Held::default();
        for i in 0..HOLD_MAX_PACKETS as u32 {
            h.hold(pkt(Operation::ReplyCall, 7, i), t0).unwrap();
        }
        assert_eq!(
            h.hold(pkt(Operation::ReplyCall, 7, 9999), t0),
            Err(NotHeld::Full)
        );
        assert_eq!(h.take(7, t0).len(), HOLD_MAX_PACKETS);
        // The bytes bound: one packet near it fits, a second does not.
        let big = || sized(Operation::ReplyCall, 7, 1, HOLD_MAX_BYTES - 100);
        h.hold(big(), t0).unwrap();
        assert_eq!(h.hold(big(), t0), Err(NotHeld::Full));
    }
}
