//! Framing CTDB packets on a byte stream (unix socket or TCP).
//!
//! [`Framer`] is the one framing of the workspace: the daemon, the
//! client, the recovery helper and the fake daemon read their sockets
//! with it (the asynchronous reader over it is
//! `ctdb_client::unix_io::PacketReader`). It reads into one scratch buffer
//! shared by every connection of a thread and holds memory only for a
//! packet that has arrived in part, so an idle connection costs no
//! buffer. It yields each complete packet as its own buffer, as many per
//! read as arrived, after checking the length field against a
//! configurable maximum.

use std::cell::RefCell;
use std::io::{self, Read};

use bytes::BytesMut;

use crate::error::Error;
use crate::header::{HEADER_LEN, Header};

/// The largest packet accepted by default (CTDB's daemon has no fixed limit;
/// recovery chunks are bounded by RecBufferSizeLimit, 1 MB by default, and
/// persistent commits can be larger).
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024 * 1024;

/// Errors from reading or writing a packet stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] Error),
}

/// Bytes asked of the kernel per read.
pub const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// The read buffer every [`Framer`] of this thread shares.
    static SCRATCH_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Splits a byte stream into packets, holding memory only for a packet
/// that has arrived in part.
#[derive(Debug)]
pub struct Framer {
    /// The largest packet accepted.
    max_packet: usize,
    /// What has arrived of packets not yet complete (empty, and holding
    /// no allocation, between packets).
    partial: BytesMut,
}

impl Framer {
    pub fn new(max_packet: usize) -> Framer {
        Framer {
            max_packet,
            partial: BytesMut::new(),
        }
    }

    /// Reads once from `r` (at most [`SCRATCH`] bytes, into the shared
    /// scratch buffer) and keeps what arrived; returns the bytes read (0
    /// at end of file). A read of fewer than [`SCRATCH`] bytes drained a
    /// socket.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        SCRATCH_BUF.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < SCRATCH {
                b.resize(SCRATCH, 0);
            }
            let n = r.read(&mut b[..SCRATCH])?;
            self.push(&b[..n]);
            Ok(n)
        })
    }

    /// Takes bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// The next complete packet, if one has arrived. A length under a
    /// header or over the maximum is an error, after which the stream
    /// cannot be read further.
    pub fn next_packet(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let Some(length) = Header::peek_length(&self.partial) else {
            self.release();
            return Ok(None);
        };
        let n = self.check_length(length)?;
        if self.partial.len() < n {
            return Ok(None);
        }
        let pkt = self.partial.split_to(n);
        self.release();
        Ok(Some(pkt))
    }

    /// Checks a length field: at least a header, at most the maximum.
    fn check_length(&self, length: u32) -> Result<usize, Error> {
        let n = length as usize;
        if n < HEADER_LEN {
            return Err(Error::BadLength {
                length,
                why: "shorter than a header",
            });
        }
        if n > self.max_packet {
            return Err(Error::BadLength {
                length,
                why: "over the maximum packet size",
            });
        }
        Ok(n)
    }

    /// Bytes held for incomplete packets.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Bytes allocated for incomplete packets.
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Lets the buffer go when nothing is left in it.
    fn release(&mut self) {
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HEADER_LEN;

    fn packet(len: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len as usize];
        p[..4].copy_from_slice(&len.to_le_bytes());
        p
    }

    #[test]
    fn frames_packets_split_anywhere_and_holds_nothing_between() {
        let mut stream = packet(HEADER_LEN as u32, 1);
        stream.extend(packet(HEADER_LEN as u32 + 100, 2));
        stream.extend(packet(HEADER_LEN as u32 + 8, 3));
        for cut in [1, 3, 5, 31, 32, 33, 70, 131, 200] {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                f.push(chunk);
                while let Some(p) = f.next_packet().unwrap() {
                    got.push((p.len(), p[4]));
                }
            }
            assert_eq!(got, vec![(32, 1), (132, 2), (40, 3)], "chunks of {cut}");
            assert_eq!(f.held(), 0);
            assert_eq!(f.capacity(), 0, "chunks of {cut}");
        }
    }

    #[test]
    fn encoded_packets_frame_whole_and_a_partial_one_is_held() {
        use crate::{Body, ControlRequest, Operation, Packet, ReqControl};
        let p = Packet::new(
            Header::new(Operation::ReqControl, 0, 0, 1),
            Body::ReqControl(ReqControl::new(ControlRequest::Ping)),
        )
        .encode();
        let mut f = Framer::new(1024);
        for _ in 0..5 {
            f.push(&p);
        }
        f.push(&p[..10]); // a partial sixth
        let mut n = 0;
        while let Some(frame) = f.next_packet().unwrap() {
            assert_eq!(&frame[..], &p[..]);
            n += 1;
        }
        assert_eq!(n, 5);
        assert_eq!(f.held(), 10);
    }

    #[test]
    fn a_length_field_alone_reserves_nothing() {
        let mut f = Framer::new(256 * 1024 * 1024);
        f.push(&(200_000_000u32).to_le_bytes());
        assert!(f.next_packet().unwrap().is_none());
        assert!(f.capacity() < 4096);
        let mut f = Framer::new(1024);
        f.push(&packet(4096, 0)[..64]);
        assert!(matches!(f.next_packet(), Err(FrameError::Protocol(_))));
        let mut f = Framer::new(1024);
        f.push(&packet(8, 0));
        assert!(f.next_packet().is_err());
    }

    #[test]
    fn reads_many_packets_per_read_through_the_shared_scratch() {
        let mut stream = Vec::new();
        for i in 0..100u8 {
            stream.extend(packet(HEADER_LEN as u32 + u32::from(i), i));
        }
        // A reader giving everything at once, then end of file.
        let mut r = &stream[..];
        let mut f = Framer::new(1024);
        assert_eq!(f.read_from(&mut r).unwrap(), stream.len());
        let mut n = 0;
        while let Some(p) = f.next_packet().unwrap() {
            assert_eq!(p.len(), HEADER_LEN + n as usize);
            assert_eq!(p[4], n);
            n += 1;
        }
        assert_eq!(n, 100);
        assert_eq!(f.read_from(&mut r).unwrap(), 0);
        assert_eq!(f.capacity(), 0);
        // A reader larger than the scratch buffer takes several reads.
        let big = packet(SCRATCH as u32 * 2 + 10, 9);
        let mut r = &big[..];
        let mut f = Framer::new(SCRATCH * 4);
        assert_eq!(f.read_from(&mut r).unwrap(), SCRATCH);
        assert!(f.next_packet().unwrap().is_none());
        assert_eq!(f.read_from(&mut r).unwrap(), SCRATCH);
        assert_eq!(f.read_from(&mut r).unwrap(), 10);
        assert_eq!(f.next_packet().unwrap().unwrap().len(), big.len());
    }
}
