//! The daemon's statistics (`STATISTICS`, `STATISTICS_RESET`) and their
//! history (`GET_STAT_HISTORY`: one entry per `StatHistoryInterval`, the
//! newest first, as CTDB keeps them).

use ctdb_protocol::types::{Statistics, StatisticsList, Timeval};

/// Entries of history kept, as in CTDB.
pub const MAX_STAT_HISTORY: usize = 100;

/// Counters kept by the event loop.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Since start (or the last reset).
    pub s: Statistics,
    /// Since the last history interval.
    current: Statistics,
    history: Vec<Statistics>,
    /// Messages dropped for clients that did not read (CTDB's statistics
    /// have no field for them: kept here, and logged), since start.
    pub client_drops: ClientDrops,
}

/// Messages dropped because their client's queue was over its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientDrops {
    pub messages: u64,
    pub bytes: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        let fresh = Statistics {
            statistics_start_time: Timeval::now(),
            ..Default::default()
        };
        Stats {
            s: fresh,
            current: fresh,
            history: Vec::new(),
            client_drops: ClientDrops::default(),
        }
    }

    /// Counts something, in the totals and in the current interval.
    pub fn bump(&mut self, f: impl Fn(&mut Statistics)) {
        f(&mut self.s);
        f(&mut self.current);
    }

    /// `STATISTICS_RESET`: zero the totals, restart their collection time.
    pub fn reset(&mut self) {
        self.s = Statistics {
            statistics_start_time: Timeval::now(),
            ..Default::default()
        };
    }

    /// Ends a history interval: the current counters become the newest
    /// history entry.
    pub fn rotate(&mut self) {
        let mut done = self.current;
        done.statistics_current_time = Timeval::now();
        self.history.insert(0, done);
        self.history.truncate(MAX_STAT_HISTORY);
        self.current = Statistics {
            statistics_start_time: Timeval::now(),
            ..Default::default()
        };
    }

    /// `GET_STAT_HISTORY`: always [`MAX_STAT_HISTORY`] entries, unused
    /// ones zero.
    pub fn history(&self) -> StatisticsList {
        let mut stats = self.history.clone();
        stats.resize(MAX_STAT_HISTORY, Statistics::default());
        StatisticsList { stats }
    }

    /// A snapshot for `STATISTICS`, with the live values filled in.
    pub fn snapshot(&self, num_clients: u32, recovering: bool) -> Statistics {
        let mut s = self.s;
        s.num_clients = num_clients;
        s.frozen = 0;
        s.recovering = u32::from(recovering);
        s.statistics_current_time = Timeval::now();
        s
    }
}
