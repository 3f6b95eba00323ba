//! Logging where and how CTDB's daemon and helpers log.
//!
//! The daemon exports `CTDB_LOGGING` (e.g. `file:/path/log.ctdb`) and
//! `CTDB_DEBUGLEVEL` (`ERROR`, `WARNING`, `NOTICE`, `INFO`, `DEBUG` or a
//! number) to its helpers, which append to the same log in the daemon's
//! line format (`ctdb_logging`, shared with the other helpers):
//!
//! ```text
//! 2026-11-25T20:09:09.509249+00:00 node.0 ctdb-recovery[14175]: Set recovery mode to ACTIVE
//! ```

pub use ctdb_logging::level_from_ctdb;

/// The program name in log lines, as CTDB's helper uses.
pub const APP_NAME: &str = "ctdb-recovery";

/// Installs the global subscriber from `CTDB_LOGGING` / `CTDB_DEBUGLEVEL`.
pub fn init() {
    init_as(APP_NAME);
}

/// [`init`] for another helper, whose lines carry `app` (e.g.
/// `ctdb-takeover`) as the program name.
pub fn init_as(app: &'static str) {
    ctdb_logging::init_from_env(app);
}
