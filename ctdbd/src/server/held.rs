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
use ctdb_protocol::header::INVALID_GENERATION;
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
    /// Not a record packet, not a packet at all, or one of the invalid
    /// generation (an inactive node's, which no receiver serves).
    NotWorth,
    /// The node's queue has reached its bound (the first packet refused).
    Full,
    /// Refused because the queue reached its bound earlier: once one
    /// packet is lost, none after it is kept until the connection comes
    /// up (or everything kept has expired), so what is sent is always
    /// the beginning of what was meant for the node, without holes.
    StillFull,
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
    full: bool,
    /// Record packets not sent since the last [`Held::take`]: refused,
    /// expired, or of a past generation.
    dropped: usize,
}

/// What [`Held::take`] gives back.
pub(super) struct Taken {
    /// To send, in order.
    pub(super) send: Vec<Bytes>,
    /// Record packets for the node that will not be sent (refused at the
    /// bounds, kept too long, or made stale by a recovery) since the
    /// last take.
    pub(super) dropped: usize,
}

impl Held {
    /// Keeps `bytes` if it is a record packet of a valid generation and
    /// the queue has room (after forgetting what has been kept too long).
    pub(super) fn hold(&mut self, bytes: Bytes, now: Instant) -> Result<(), NotHeld> {
        let Ok((h, _)) = Header::pull(&bytes) else {
            return Err(NotHeld::NotWorth);
        };
        if !worth_holding(h.operation) || h.generation == INVALID_GENERATION {
            return Err(NotHeld::NotWorth);
        }
        self.expire(now);
        if self.full {
            self.dropped += 1;
            return Err(NotHeld::StillFull);
        }
        if self.pkts.len() >= HOLD_MAX_PACKETS || self.bytes + bytes.len() > HOLD_MAX_BYTES {
            self.full = true;
            self.dropped += 1;
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

    /// Forgets packets kept longer than [`HOLD_FOR`]; once nothing is
    /// left, a queue that was full keeps packets again.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(p) = self.pkts.front() {
            if now.saturating_duration_since(p.at) <= HOLD_FOR {
                break;
            }
            self.bytes -= p.bytes.len();
            self.dropped += 1;
            self.pkts.pop_front();
        }
        if self.pkts.is_empty() {
            self.full = false;
        }
    }

    /// Takes what is still worth sending, in the order it was kept: not
    /// expired, and of the current `generation`. Empties the queue.
    pub(super) fn take(&mut self, generation: u32, now: Instant) -> Taken {
        self.expire(now);
        let kept = self.pkts.len();
        let send: Vec<Bytes> = self
            .pkts
            .drain(..)
            .filter(|p| p.generation == generation)
            .map(|p| p.bytes)
            .collect();
        let dropped = self.dropped + (kept - send.len());
        self.bytes = 0;
        self.full = false;
        self.dropped = 0;
        Taken { send, dropped }
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

    fn sent(t: Taken) -> Vec<u32> {
        reqids(&t.send)
    }

    #[test]
    fn record_packets_are_kept_in_order_and_stale_ones_are_not_sent() {
        let t0 = Instant::now();
        let mut h = Held::default();
        h.hold(pkt(Operation::ReplyCall, 7, 1), t0).unwrap();
        h.hold(pkt(Operation::ReplyCall, 6, 2), t0).unwrap();
        h.hold(pkt(Operation::ReplyCall, 7, 3), t0).unwrap();
        for not_worth in [
            pkt(Operation::ReqKeepalive, 7, 4),
            pkt(Operation::ReplyError, 7, 5),
            pkt(Operation::ReplyCall, INVALID_GENERATION, 6),
            Bytes::from_static(b"junk"),
        ] {
            assert_eq!(h.hold(not_worth, t0), Err(NotHeld::NotWorth));
        }
        // Generation 6 was made stale by a recovery: not sent.
        let t = h.take(7, t0);
        assert_eq!(t.dropped, 1);
        assert_eq!(sent(t), vec![1, 3]);
        assert!(h.is_empty());
        let t = h.take(7, t0);
        assert_eq!((t.send.len(), t.dropped), (0, 0));
    }

    #[test]
    fn packets_kept_too_long_are_forgotten() {
        let t0 = Instant::now();
        let mut h = Held::default();
        h.hold(pkt(Operation::ReplyCall, 7, 1), t0).unwrap();
        let later = t0 + HOLD_FOR / 2;
        h.hold(pkt(Operation::ReplyCall, 7, 2), later).unwrap();
        let t = h.take(7, t0 + HOLD_FOR + Duration::from_millis(1));
        assert_eq!(t.dropped, 1);
        assert_eq!(sent(t), vec![2]);
        h.hold(pkt(Operation::ReplyCall, 7, 3), t0).unwrap();
        h.expire(t0 + HOLD_FOR * 2);
        assert!(h.is_empty());
    }

    /// Once a packet is refused, none after it is kept: what is sent is
    /// the beginning of what was meant for the node, without holes.
    #[test]
    fn the_queue_is_bounded_and_has_no_holes() {
        let t0 = Instant::now();
        let mut h = Held::default();
        for i in 0..HOLD_MAX_PACKETS as u32 {
            h.hold(pkt(Operation::ReplyCall, 7, i), t0).unwrap();
        }
        assert_eq!(
            h.hold(pkt(Operation::ReplyCall, 7, 9998), t0),
            Err(NotHeld::Full)
        );
        assert_eq!(
            h.hold(pkt(Operation::ReplyCall, 7, 9999), t0),
            Err(NotHeld::StillFull)
        );
        let t = h.take(7, t0);
        assert_eq!(t.dropped, 2);
        assert_eq!(sent(t), (0..HOLD_MAX_PACKETS as u32).collect::<Vec<_>>());

        // The bytes bound: one packet near it fits; a second does not, nor
        // does a small one after it.
        let big = || sized(Operation::ReplyCall, 7, 1, HOLD_MAX_BYTES - 100);
        h.hold(big(), t0).unwrap();
        assert_eq!(h.hold(big(), t0), Err(NotHeld::Full));
        assert_eq!(
            h.hold(pkt(Operation::ReplyCall, 7, 2), t0),
            Err(NotHeld::StillFull)
        );
        // Once everything kept has expired, packets are kept again.
        let later = t0 + HOLD_FOR * 2;
        h.hold(pkt(Operation::ReplyCall, 7, 3), later).unwrap();
        let t = h.take(7, later);
        assert_eq!(t.dropped, 3);
        assert_eq!(sent(t), vec![3]);
    }
}
