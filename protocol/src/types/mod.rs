//! The structures carried inside controls and messages, one module per
//! subject. Every type implements [`Marshal`](crate::Marshal) by hand, with
//! its fields and padding written out in wire order.

mod addr;
mod changelog;
mod db;
mod misc;
mod node;
mod record;
mod replica;
mod seqwait;
mod stats;
mod traverse;
mod tunable;

pub use addr::*;
pub use changelog::*;
pub use db::*;
pub use misc::*;
pub use node::*;
pub use record::*;
pub use replica::*;
pub use seqwait::*;
pub use stats::*;
pub use traverse::*;
pub use tunable::*;

use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer};

/// A `struct timeval` as a 64-bit Linux host lays it out: 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timeval {
    pub sec: i64,
    pub usec: i64,
}

impl Timeval {
    pub const WIRE_SIZE: usize = 16;

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timeval {
            sec: d.as_secs() as i64,
            usec: d.subsec_micros() as i64,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.sec == 0 && self.usec == 0
    }

    /// Seconds as a float, for elapsed-time arithmetic.
    pub fn as_secs_f64(&self) -> f64 {
        self.sec as f64 + self.usec as f64 / 1e6
    }
}

impl Marshal for Timeval {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i64(self.sec);
        w.i64(self.usec);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let sec = r.i64("timeval")?;
        let usec = r.i64("timeval")?;
        Ok((Timeval { sec, usec }, r.pos()))
    }
}

/// Implements [`Marshal`] for a list type encoded as a u32 count followed by
/// the elements (`ctdb_*_list`, `ctdb_node_map`, ...). `$min` is the smallest
/// encoding of one element, used to refuse counts the buffer cannot hold.
macro_rules! counted_list {
    ($list:ident, $field:ident, $elem:ty, $min:expr, $what:expr) => {
        impl $crate::marshal::Marshal for $list {
            fn len(&self) -> usize {
                4 + self.$field.iter().map(|e| e.len()).sum::<usize>()
            }
            fn push(&self, buf: &mut [u8]) -> usize {
                let mut w = $crate::marshal::Writer::new(buf);
                w.u32($crate::marshal::wire_u32(self.$field.len()));
                for e in &self.$field {
                    w.put(e);
                }
                w.pos()
            }
            fn pull(buf: &[u8]) -> $crate::error::Result<(Self, usize)> {
                let mut r = $crate::marshal::Reader::new(buf);
                let n = r.count($min, $what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.get::<$elem>()?);
                }
                Ok(($list { $field: v }, r.pos()))
            }
        }
    };
}
pub(crate) use counted_list;

/// Implements [`Marshal`] for a struct made only of u32 and u64 fields in
/// declaration order, with no padding.
macro_rules! plain_struct {
    ($ty:ident { $($field:ident : $kind:ident),* $(,)? }) => {
        impl $crate::marshal::Marshal for $ty {
            fn len(&self) -> usize {
                0 $(+ plain_struct!(@size $kind))*
            }
            fn push(&self, buf: &mut [u8]) -> usize {
                let mut w = $crate::marshal::Writer::new(buf);
                $( w.$kind(self.$field); )*
                w.pos()
            }
            fn pull(buf: &[u8]) -> $crate::error::Result<(Self, usize)> {
                let mut r = $crate::marshal::Reader::new(buf);
                $( let $field = r.$kind(concat!(stringify!($ty), ".", stringify!($field)))?; )*
                Ok(($ty { $($field),* }, r.pos()))
            }
        }
    };
    (@size u32) => { 4 };
    (@size u64) => { 8 };
}
pub(crate) use plain_struct;
