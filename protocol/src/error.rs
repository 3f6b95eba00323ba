//! The one error type every `pull` returns.

use thiserror::Error;

/// Why a byte sequence could not be decoded into a protocol value.
///
/// Decoding never panics and never trusts a length or count field before
/// checking it against the bytes actually present; every failure ends here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The buffer ends before the value does.
    #[error("truncated: need {need} more bytes for {what}, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A packet header carries a magic other than `CTDB`.
    #[error("bad magic 0x{0:08x}")]
    BadMagic(u32),
    /// A packet header carries a protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u32),
    /// The header's length field is impossible (shorter than a header, longer
    /// than the buffer, or over the configured maximum).
    #[error("bad packet length {length}: {why}")]
    BadLength { length: u32, why: &'static str },
    /// An operation number that is not part of protocol version 1.
    #[error("unknown operation {0}")]
    UnknownOperation(u32),
    /// A control opcode that 4.17 does not define, or marks obsolete.
    #[error("unknown or obsolete control opcode {0}")]
    UnknownOpcode(u32),
    /// A field holds a value its type does not allow (a bool of 2, a string
    /// that is not UTF-8, an address family we do not know...).
    #[error("invalid {what}: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
    /// A length-prefixed field's declared size disagrees with its content.
    #[error("inconsistent {what}: declared {declared} bytes, content {actual}")]
    Inconsistent {
        what: &'static str,
        declared: usize,
        actual: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
