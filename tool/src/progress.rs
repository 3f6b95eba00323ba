//! Progress for long runs (`ptrans`, `backupdb`, `restoredb`): a line on
//! stderr rewritten in place, only when stderr is a terminal, at most a
//! few times a second, and erased when done.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        Progress {
            what,
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// Reports `n` records done (of `total`, when known).
    pub fn update(&mut self, n: u64, total: Option<u64>) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let mut e = std::io::stderr().lock();
        let _ = match total {
            Some(t) => write!(e, "\r{}: {n}/{t} records", self.what),
            None => write!(e, "\r{}: {n} records", self.what),
        };
        let _ = e.flush();
    }

    /// Erases the progress line.
    pub fn finish(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
