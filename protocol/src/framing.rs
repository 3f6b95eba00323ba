//! Framing CTDB packets on a byte stream (unix socket or TCP).
//!
//! [`PacketCodec`] is a `tokio_util` codec: as a decoder it yields each
//! complete packet as its own buffer, as many per read as arrived, after
//! checking the length field against a configurable maximum; as an encoder
//! it writes packets padded to the wire alignment.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::Error;
use crate::header::{HEADER_LEN, Header};
use crate::packet::{Packet, padded_len};

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

/// Splits a byte stream into packets and writes packets to one.
#[derive(Debug, Clone)]
pub struct PacketCodec {
    max_packet: usize,
}

impl PacketCodec {
    pub fn new(max_packet: usize) -> Self {
        PacketCodec { max_packet }
    }

    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Checks a length field: at least a header, at most the maximum.
    pub fn check_length(&self, length: u32) -> Result<usize, Error> {
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
}

impl Default for PacketCodec {
    fn default() -> Self {
        PacketCodec::new(DEFAULT_MAX_PACKET)
    }
}

impl Decoder for PacketCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(length) = Header::peek_length(src) else {
            return Ok(None);
        };
        let n = self.check_length(length)?;
        if src.len() < n {
            src.reserve(n - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(n)))
    }
}

impl Encoder<&Packet> for PacketCodec {
    type Error = FrameError;

    fn encode(&mut self, pkt: &Packet, dst: &mut BytesMut) -> Result<(), FrameError> {
        let n = pkt.encoded_len();
        let start = dst.len();
        dst.put_bytes(0, n);
        pkt.encode_into(&mut dst[start..]);
        Ok(())
    }
}

/// Already-encoded packets (forwarded ones) are written as they are, padded
/// if their length is not aligned.
impl Encoder<BytesMut> for PacketCodec {
    type Error = FrameError;

    fn encode(&mut self, pkt: BytesMut, dst: &mut BytesMut) -> Result<(), FrameError> {
        let n = padded_len(pkt.len());
        dst.reserve(n);
        dst.extend_from_slice(pkt.chunk());
        dst.put_bytes(0, n - pkt.len());
        Ok(())
    }
}
