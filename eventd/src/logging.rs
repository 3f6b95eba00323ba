//! Logging: CTDB's log lines (`ctdb_logging`, shared with the other
//! helpers) as `ctdb-eventd`, to the `file:` location of `[logging]
//! location` (default [`DEFAULT_LOCATION`]), or to standard error
//! (interactive, `file:` or `file:-`, a file that cannot be opened, or any
//! other location: `syslog` is not supported here).

use tracing::Level;

pub use ctdb_logging::level_from_ctdb;

/// 4.17's default `[logging] location` (Debian's LOGDIR).
pub const DEFAULT_LOCATION: &str = "file:/var/log/ctdb/log.ctdb";

/// Starts logging. `location` is `[logging] location`; `None` or
/// interactive means standard error.
pub fn init(location: Option<&str>, level: Level) {
    ctdb_logging::init("ctdb-eventd", location, level);
}
