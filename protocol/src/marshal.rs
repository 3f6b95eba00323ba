//! The marshalling discipline shared by every wire type.
//!
//! Each type knows three things about itself, as in CTDB's newer protocol
//! code:
//!
//! * [`Marshal::len`]: how many bytes it occupies on the wire;
//! * [`Marshal::push`]: write exactly that many bytes into a caller's buffer;
//! * [`Marshal::pull`]: decode from the front of a byte slice, returning the
//!   value and the number of bytes consumed.
//!
//! All integers are little-endian (CTDB sends host order and only runs on
//! little-endian hosts in practice). Padding is written as zeros and skipped
//! on reading, exactly where CTDB's 64-bit C structures have it.
//!
//! [`Reader`] and [`Writer`] are the two cursors the impls are written with.
//! A `Reader` checks every length against the bytes that are really there
//! before it slices or allocates, which is what keeps `pull` panic-free on
//! hostile input.

use crate::error::{Error, Result};

/// A value with a fixed CTDB wire encoding.
pub trait Marshal: Sized {
    /// Bytes that [`push`](Marshal::push) writes.
    fn len(&self) -> usize;

    /// True when the encoding is zero bytes long.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes exactly [`len`](Marshal::len) bytes to the front of `buf` and
    /// returns that count.
    ///
    /// # Panics
    /// If `buf` is shorter than `self.len()`: that is a bug in the caller,
    /// never a property of received data.
    fn push(&self, buf: &mut [u8]) -> usize;

    /// Decodes a value from the front of `buf`, returning it and the number
    /// of bytes it occupied.
    fn pull(buf: &[u8]) -> Result<(Self, usize)>;

    /// Encodes into a new vector of exactly [`len`](Marshal::len) bytes.
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        let n = self.push(&mut v);
        debug_assert_eq!(n, v.len(), "push wrote a different size than len");
        v
    }
}

/// A write cursor over a caller's buffer.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }

    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn i32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }

    /// `n` zero bytes of structure padding.
    pub fn pad(&mut self, n: usize) {
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
    }

    /// A nested value.
    pub fn put<T: Marshal>(&mut self, v: &T) {
        self.pos += v.push(&mut self.buf[self.pos..]);
    }

    /// A byte string preceded by its u32 length (CTDB's `tdb_datan`).
    pub fn datan(&mut self, b: &[u8]) {
        self.u32(wire_u32(b.len()));
        self.bytes(b);
    }

    /// A NUL-terminated string (CTDB's `string`): `len + 1` bytes, or none
    /// at all for an absent string.
    pub fn cstr(&mut self, s: Option<&str>) {
        if let Some(s) = s {
            self.bytes(s.as_bytes());
            self.u8(0);
        }
    }

    /// A string preceded by its u32 encoded length (CTDB's `stringn`).
    pub fn cstrn(&mut self, s: Option<&str>) {
        self.u32(wire_u32(cstr_len(s)));
        self.cstr(s);
    }

    /// A string in a fixed-size, NUL-padded character array.
    pub fn chararray(&mut self, s: &str, size: usize) {
        let b = s.as_bytes();
        let n = b.len().min(size.saturating_sub(1));
        self.bytes(&b[..n]);
        self.pad(size - n);
    }
}

/// A read cursor that checks every length before trusting it.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unconsumed bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let b = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub fn f64(&mut self, what: &'static str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }

    /// A bool is one byte, 0 or 1; anything else is rejected as CTDB does.
    pub fn bool(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Invalid {
                what,
                why: "bool is neither 0 nor 1",
            }),
        }
    }

    /// Skips `n` bytes of structure padding (their content is not checked,
    /// as CTDB does not check it either).
    pub fn pad(&mut self, n: usize, what: &'static str) -> Result<()> {
        self.bytes(n, what).map(|_| ())
    }

    /// A nested value.
    pub fn get<T: Marshal>(&mut self) -> Result<T> {
        let (v, n) = T::pull(self.rest())?;
        self.pos += n;
        Ok(v)
    }

    /// A byte string preceded by its u32 length.
    pub fn datan(&mut self, what: &'static str) -> Result<Vec<u8>> {
        let n = self.u32(what)? as usize;
        Ok(self.bytes(n, what)?.to_vec())
    }

    /// A count of elements that each take at least `min_size` bytes, checked
    /// against what remains so a lying count cannot make us allocate.
    pub fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        self.check_count(n, min_size, what)?;
        Ok(n)
    }

    /// Checks that `n` elements of at least `min_size` bytes can fit.
    pub fn check_count(&self, n: usize, min_size: usize, what: &'static str) -> Result<()> {
        let need = n.saturating_mul(min_size);
        if need > self.remaining() {
            return Err(Error::Truncated {
                what,
                need,
                have: self.remaining(),
            });
        }
        Ok(())
    }

    /// A NUL-terminated string occupying the first `len` bytes: absent when
    /// `len` is zero, otherwise it must end in a NUL within those bytes and
    /// is consumed through that NUL.
    pub fn cstr(&mut self, len: usize, what: &'static str) -> Result<Option<String>> {
        if len == 0 {
            return Ok(None);
        }
        let region = self.bytes(len, what)?;
        let Some(nul) = region.iter().position(|&b| b == 0) else {
            return Err(Error::Invalid {
                what,
                why: "string is not NUL-terminated",
            });
        };
        // Give back whatever follows the terminator.
        self.pos -= len - (nul + 1);
        let s = std::str::from_utf8(&region[..nul]).map_err(|_| Error::Invalid {
            what,
            why: "string is not UTF-8",
        })?;
        Ok(Some(s.to_owned()))
    }

    /// A string preceded by its u32 encoded length.
    pub fn cstrn(&mut self, what: &'static str) -> Result<Option<String>> {
        let len = self.u32(what)? as usize;
        if len > self.remaining() {
            return Err(Error::Truncated {
                what,
                need: len,
                have: self.remaining(),
            });
        }
        let start = self.pos;
        let s = self.cstr(len, what)?;
        if self.pos - start != len {
            return Err(Error::Inconsistent {
                what,
                declared: len,
                actual: self.pos - start,
            });
        }
        Ok(s)
    }

    /// A fixed-size character array; the string ends at the first NUL.
    pub fn chararray(&mut self, size: usize, what: &'static str) -> Result<String> {
        let b = self.bytes(size, what)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end])
            .map(str::to_owned)
            .map_err(|_| Error::Invalid {
                what,
                why: "string is not UTF-8",
            })
    }
}

/// Encoded length of a CTDB `string`.
pub fn cstr_len(s: Option<&str>) -> usize {
    s.map_or(0, |s| s.len() + 1)
}

/// Encoded length of a CTDB `stringn`.
pub fn cstrn_len(s: Option<&str>) -> usize {
    4 + cstr_len(s)
}

/// Encoded length of a CTDB `tdb_datan`.
pub fn datan_len(b: &[u8]) -> usize {
    4 + b.len()
}

/// A length as the u32 the wire carries. Values are bounded by the packet
/// size limit long before 4 GiB, so saturation only guards the impossible.
pub fn wire_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Marshal for u32 {
    fn len(&self) -> usize {
        4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        Writer::new(buf).u32(*self);
        4
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        Ok((Reader::new(buf).u32("u32")?, 4))
    }
}

impl Marshal for i32 {
    fn len(&self) -> usize {
        4
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        Writer::new(buf).i32(*self);
        4
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        Ok((Reader::new(buf).i32("i32")?, 4))
    }
}

impl Marshal for u64 {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        Writer::new(buf).u64(*self);
        8
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        Ok((Reader::new(buf).u64("u64")?, 8))
    }
}

impl Marshal for f64 {
    fn len(&self) -> usize {
        8
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        Writer::new(buf).f64(*self);
        8
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        Ok((Reader::new(buf).f64("double")?, 8))
    }
}

/// The empty payload of controls that carry no data.
impl Marshal for () {
    fn len(&self) -> usize {
        0
    }
    fn push(&self, _buf: &mut [u8]) -> usize {
        0
    }
    fn pull(_buf: &[u8]) -> Result<(Self, usize)> {
        Ok(((), 0))
    }
}

/// A NUL-terminated string that fills the rest of its region (CTDB's
/// `string`), as control payloads such as database names carry it.
/// `None` is CTDB's NULL string: zero bytes on the wire.
impl Marshal for Option<String> {
    fn len(&self) -> usize {
        cstr_len(self.as_deref())
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.cstr(self.as_deref());
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let s = r.cstr(buf.len(), "string")?;
        Ok((s, r.pos()))
    }
}

/// A present NUL-terminated string; a zero-length payload is an error.
impl Marshal for String {
    fn len(&self) -> usize {
        String::len(self) + 1
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.cstr(Some(self));
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        match r.cstr(buf.len(), "string")? {
            Some(s) => Ok((s, r.pos())),
            None => Err(Error::Invalid {
                what: "string",
                why: "string is absent",
            }),
        }
    }
}

/// Large payloads are boxed inside enums; the box is invisible on the wire.
impl<T: Marshal> Marshal for Box<T> {
    fn len(&self) -> usize {
        T::len(self)
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        T::push(self, buf)
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        T::pull(buf).map(|(v, n)| (Box::new(v), n))
    }
}
