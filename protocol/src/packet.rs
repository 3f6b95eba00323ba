//! Whole packets: a [`Header`] and one typed [`Body`].
//!
//! Encoding pads every packet to a multiple of 8 bytes and records the
//! padded size in the header's length field, as CTDB's daemon and client
//! library both do. Decoding takes the packet's bytes exactly as its length
//! field delimits them.

use crate::call::*;
use crate::control::{Opcode, ReplyControl, ReqControl};
use crate::error::{Error, Result};
use crate::header::{CTDB_DS_ALIGNMENT, HEADER_LEN, Header, Operation};
use crate::keepalive::{ReqKeepalive, ReqTunnel};
use crate::marshal::Marshal;
use crate::message::ReqMessage;

/// The typed body of a packet, one variant per operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    ReqCall(ReqCall),
    ReplyCall(ReplyCall),
    ReqDmaster(ReqDmaster),
    ReplyDmaster(ReplyDmaster),
    ReplyError(ReplyError),
    ReqMessage(ReqMessage),
    ReqControl(ReqControl),
    ReplyControl(ReplyControl),
    /// `None` for the body-less keepalives older daemons send.
    ReqKeepalive(Option<ReqKeepalive>),
    ReqTunnel(ReqTunnel),
}

impl Body {
    pub fn operation(&self) -> Operation {
        match self {
            Body::ReqCall(_) => Operation::ReqCall,
            Body::ReplyCall(_) => Operation::ReplyCall,
            Body::ReqDmaster(_) => Operation::ReqDmaster,
            Body::ReplyDmaster(_) => Operation::ReplyDmaster,
            Body::ReplyError(_) => Operation::ReplyError,
            Body::ReqMessage(_) => Operation::ReqMessage,
            Body::ReqControl(_) => Operation::ReqControl,
            Body::ReplyControl(_) => Operation::ReplyControl,
            Body::ReqKeepalive(_) => Operation::ReqKeepalive,
            Body::ReqTunnel(_) => Operation::ReqTunnel,
        }
    }

    fn len(&self) -> usize {
        match self {
            Body::ReqCall(b) => b.len(),
            Body::ReplyCall(b) => b.len(),
            Body::ReqDmaster(b) => b.len(),
            Body::ReplyDmaster(b) => b.len(),
            Body::ReplyError(b) => b.len(),
            Body::ReqMessage(b) => b.len(),
            Body::ReqControl(b) => b.len(),
            Body::ReplyControl(b) => b.len(),
            Body::ReqKeepalive(b) => b.as_ref().map_or(0, Marshal::len),
            Body::ReqTunnel(b) => b.len(),
        }
    }

    fn push(&self, buf: &mut [u8]) -> usize {
        match self {
            Body::ReqCall(b) => b.push(buf),
            Body::ReplyCall(b) => b.push(buf),
            Body::ReqDmaster(b) => b.push(buf),
            Body::ReplyDmaster(b) => b.push(buf),
            Body::ReplyError(b) => b.push(buf),
            Body::ReqMessage(b) => b.push(buf),
            Body::ReqControl(b) => b.push(buf),
            Body::ReplyControl(b) => b.push(buf),
            Body::ReqKeepalive(b) => b.as_ref().map_or(0, |k| k.push(buf)),
            Body::ReqTunnel(b) => b.push(buf),
        }
    }
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub header: Header,
    pub body: Body,
}

/// Rounds a packet size up to the wire alignment.
pub fn padded_len(n: usize) -> usize {
    n.div_ceil(CTDB_DS_ALIGNMENT) * CTDB_DS_ALIGNMENT
}

impl Packet {
    /// A packet with `header`'s routing fields and `body`; the header's
    /// operation is taken from the body when encoding, and its length is
    /// computed (see [`encoded_len`](Packet::encoded_len)).
    pub fn new(header: Header, body: Body) -> Self {
        Packet { header, body }
    }

    /// Size of the encoding including alignment padding.
    ///
    /// CTDB's daemon sizes some packets from its C structures, which leaves
    /// up to a few bytes more trailing padding than the body needs; a
    /// decoded packet keeps its header's length so that it re-encodes byte
    /// for byte. A new packet (length 0) gets the minimum.
    pub fn encoded_len(&self) -> usize {
        padded_len(HEADER_LEN + self.body.len()).max(self.header.length as usize)
    }

    /// Writes the packet (with zeroed padding) into `buf`, which must hold
    /// [`encoded_len`](Packet::encoded_len) bytes; returns that size.
    pub fn encode_into(&self, buf: &mut [u8]) -> usize {
        let total = self.encoded_len();
        let mut h = self.header;
        h.length = crate::marshal::wire_u32(total);
        h.operation = self.body.operation();
        let n = h.push(buf);
        let m = self.body.push(&mut buf[n..]);
        buf[n + m..total].fill(0);
        total
    }

    /// The packet as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.encoded_len()];
        self.encode_into(&mut v);
        v
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// A `REPLY_CONTROL` can only be typed knowing the opcode of the request
    /// it answers: `reply_opcode` is asked for it (usually by looking up the
    /// header's reqid among outstanding requests).
    pub fn decode(
        buf: &[u8],
        reply_opcode: impl FnOnce(&Header) -> Option<Opcode>,
    ) -> Result<Self> {
        let (header, _) = Header::pull(buf)?;
        let length = header.length as usize;
        if length > buf.len() {
            return Err(Error::BadLength {
                length: header.length,
                why: "longer than the bytes received",
            });
        }
        let body = &buf[HEADER_LEN..length];
        let body = match header.operation {
            Operation::ReqCall => Body::ReqCall(ReqCall::pull(body)?.0),
            Operation::ReplyCall => Body::ReplyCall(ReplyCall::pull(body)?.0),
            Operation::ReqDmaster => Body::ReqDmaster(ReqDmaster::pull(body)?.0),
            Operation::ReplyDmaster => Body::ReplyDmaster(ReplyDmaster::pull(body)?.0),
            Operation::ReplyError => Body::ReplyError(ReplyError::pull(body)?.0),
            Operation::ReqMessage => Body::ReqMessage(ReqMessage::pull(body)?.0),
            Operation::ReqControl => Body::ReqControl(ReqControl::pull(body)?.0),
            Operation::ReplyControl => {
                let opcode = reply_opcode(&header).ok_or(Error::Invalid {
                    what: "reply control",
                    why: "no outstanding request with this reqid",
                })?;
                Body::ReplyControl(ReplyControl::pull_for(opcode, body)?.0)
            }
            Operation::ReqKeepalive if body.is_empty() => Body::ReqKeepalive(None),
            Operation::ReqKeepalive => Body::ReqKeepalive(Some(ReqKeepalive::pull(body)?.0)),
            Operation::ReqTunnel => Body::ReqTunnel(ReqTunnel::pull(body)?.0),
        };
        Ok(Packet { header, body })
    }

    /// Decodes a packet that is not a `REPLY_CONTROL`.
    pub fn decode_request(buf: &[u8]) -> Result<Self> {
        Packet::decode(buf, |_| None)
    }
}
