//! Watching the recovery daemon's pings (`RecdPingTimeout`,
//! `RecdFailCount`), as CTDB 4.17's main daemon does.
//!
//! The recovery daemon sends `RECD_PING` at the start of every check (once
//! per `RecoverInterval`). Each ping starts the count of misses again and
//! sets a timer `RecdPingTimeout` seconds ahead (none when it is 0). When
//! the timer fires the miss is logged and, while fewer than
//! `RecdFailCount` misses were counted, counted and the timer set again;
//! at the next one the recovery daemon is stopped and started again (it
//! may be stuck, e.g. on a hung cluster filesystem), and the timer waits
//! for the new one's first ping.
//!
//! As CTDB's, ours is a process of its own talking to the daemon through
//! the socket, and can hang the same way (on a control that never comes
//! back, a helper that never exits); restarting it sends it SIGTERM (it
//! releases the cluster lock and exits; it is killed if it has not within
//! 5 s) and starts a new one ([`crate::monitor`]).

use std::time::{Duration, Instant};

use ctdb_protocol::types::TunableList;
use tracing::error;

/// The daemon's side of the recovery daemon's pings.
#[derive(Debug, Default)]
pub struct RecdPing {
    /// When the next miss is counted (`None`: not watching).
    due: Option<Instant>,
    /// Misses counted since the last ping.
    misses: u32,
}

/// What a [`RecdPing::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing (yet).
    Fine,
    /// A ping is late; this many misses are counted now.
    Missed(u32),
    /// The last allowed miss passed: restart the recovery daemon.
    Restart,
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

impl RecdPing {
    /// A `RECD_PING` arrived (or the recovery daemon was started): misses
    /// count from zero and the timer is set `RecdPingTimeout` ahead.
    pub fn ping(&mut self, now: Instant, t: &TunableList) {
        self.misses = 0;
        self.due = (t.recd_ping_timeout != 0).then(|| now + secs(t.recd_ping_timeout));
    }

    /// The recovery daemon is stopped: nothing is watched until it pings.
    pub fn stop(&mut self) {
        self.due = None;
        self.misses = 0;
    }

    /// When [`RecdPing::check`] next has something to do.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Counts a miss if the timer has passed.
    pub fn check(&mut self, now: Instant, t: &TunableList) -> Verdict {
        if self.due.is_none_or(|d| now < d) {
            return Verdict::Fine;
        }
        error!("Recovery daemon ping timeout. Count : {}", self.misses);
        if self.misses < t.recd_ping_failcount {
            self.misses += 1;
            self.due = Some(now + secs(t.recd_ping_timeout));
            return Verdict::Missed(self.misses);
        }
        error!(
            "Final timeout for recovery daemon ping. Restarting recovery daemon. (This can be caused if the cluster filesystem has hung)"
        );
        self.stop();
        Verdict::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunables(timeout: u32, failcount: u32) -> TunableList {
        TunableList {
            recd_ping_timeout: timeout,
            recd_ping_failcount: failcount,
            ..Default::default()
        }
    }

    #[test]
    fn misses_then_restart_and_a_ping_starts_again() {
        let t = tunables(60, 2);
        let mut p = RecdPing::default();
        let t0 = Instant::now();
        assert_eq!(p.check(t0 + secs(1000), &t), Verdict::Fine, "not armed");
        p.ping(t0, &t);
        assert_eq!(p.check(t0 + secs(59), &t), Verdict::Fine);
        assert_eq!(p.check(t0 + secs(60), &t), Verdict::Missed(1));
        assert_eq!(p.due(), Some(t0 + secs(120)));
        // A ping in time starts the count again.
        p.ping(t0 + secs(100), &t);
        assert_eq!(p.check(t0 + secs(120), &t), Verdict::Fine);
        assert_eq!(p.check(t0 + secs(160), &t), Verdict::Missed(1));
        assert_eq!(p.check(t0 + secs(220), &t), Verdict::Missed(2));
        assert_eq!(p.check(t0 + secs(280), &t), Verdict::Restart);
        // Stopped until the new recovery daemon pings.
        assert_eq!(p.due(), None);
        assert_eq!(p.check(t0 + secs(1000), &t), Verdict::Fine);
    }

    #[test]
    fn a_timeout_of_zero_watches_nothing() {
        let t = tunables(0, 10);
        let mut p = RecdPing::default();
        let t0 = Instant::now();
        p.ping(t0, &t);
        assert_eq!(p.due(), None);
        assert_eq!(p.check(t0 + secs(10_000), &t), Verdict::Fine);
    }

    #[test]
    fn a_fail_count_of_zero_restarts_at_the_first_miss() {
        let t = tunables(1, 0);
        let mut p = RecdPing::default();
        let t0 = Instant::now();
        p.ping(t0, &t);
        assert_eq!(p.check(t0 + secs(1), &t), Verdict::Restart);
    }
}
