//! The memory budget every database's record store draws from.
//!
//! Stores reserve bytes before they keep records in memory. When a
//! reservation is refused the store moves its records to disk (see
//! [`crate::store`]) and gives its reservation back, so the records held in
//! memory by all databases together stay within the limit.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Default limit on record bytes held in memory by all stores together.
pub const DEFAULT_LIMIT: usize = 64 << 20;

/// A shared limit on bytes held in memory.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes if that keeps the total within the limit.
    pub fn try_reserve(&self, n: usize) -> bool {
        let r = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                let total = u.checked_add(n)?;
                (total <= self.limit).then_some(total)
            });
        match r {
            Ok(prev) => {
                self.peak.fetch_max(prev + n, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back `n` reserved bytes.
    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Parses a size such as `67108864`, `64M`, `512k` or `1G`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1usize << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit() {
        let b = Budget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(50));
        assert!(b.try_reserve(40));
        assert_eq!(b.used(), 100);
        b.release(60);
        assert!(b.try_reserve(50));
        assert_eq!(b.peak(), 100);
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
