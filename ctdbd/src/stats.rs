//! The daemon's statistics (`STATISTICS`, `STATISTICS_RESET`) and uptime.

use ctdb_protocol::types::{Statistics, Timeval};

/// Counters kept by the event loop.
#[derive(Debug, Clone)]
pub struct Stats {
    pub s: Statistics,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            s: Statistics {
                statistics_start_time: Timeval::now(),
                ..Default::default()
            },
        }
    }

    /// `STATISTICS_RESET`: zero everything, restart the collection time.
    pub fn reset(&mut self) {
        *self = Stats::new();
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
