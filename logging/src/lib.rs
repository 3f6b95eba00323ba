//! Log lines as CTDB's programs write them to a `file:` location, for the
//! workspace's helper programs (`ctdb-eventd`, `ctdb_recovery_helper`,
//! `ctdb_takeover_helper`), which append to the daemon's log:
//!
//! ```text
//! 2026-11-25T20:09:09.509249+00:00 node.0 ctdb-recovery[14175]: Set recovery mode to ACTIVE
//! ```
//!
//! The host is the last component of `CTDB_BASE` in test mode (as CTDB
//! fakes it for local daemons: `unknown` when that is empty), else the
//! system's. Times are local, with their offset from UTC, as Samba's debug
//! header writes them. Without a usable `file:` location, lines go to
//! standard error. The daemon (`ctdbd`) uses the same format, levels and
//! host name through this crate.
//!
//! CTDB's levels map onto `tracing` as ERROR→`error!`, WARNING→`warn!`,
//! NOTICE→`info!`, INFO→`debug!`, DEBUG→`trace!`.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// CTDB's level names by Samba level number (the index), as CTDB's table
/// has them.
const LEVEL_NAMES: [&str; 11] = [
    "ERROR", "WARNING", "WARNING", "NOTICE", "NOTICE", "INFO", "INFO", "INFO", "INFO", "INFO",
    "DEBUG",
];

/// CTDB's debug levels (Samba's numbers).
pub const DEBUG_ERR: i32 = 0;
pub const DEBUG_WARNING: i32 = 1;
pub const DEBUG_NOTICE: i32 = 3;
pub const DEBUG_INFO: i32 = 5;
pub const DEBUG_DEBUG: i32 = 10;

/// A CTDB debug level parsed as CTDB parses `CTDB_DEBUGLEVEL` and
/// `[logging] log level`: a number 0..=10 (Samba's levels: 0 ERROR, 1-2
/// WARNING, 3-4 NOTICE, 5-9 INFO, 10 DEBUG) or a prefix of a level name,
/// in any case (`ERR`, `warn`, `NOTICE`).
pub fn parse_debug_level(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        let n: i32 = digits.parse().ok()?;
        return (0..=10).contains(&n).then_some(n);
    }
    if s.is_empty() {
        return None;
    }
    let up = s.to_ascii_uppercase();
    LEVEL_NAMES
        .iter()
        .position(|n| n.starts_with(&up))
        .map(|i| i as i32)
}

/// The name of a level number, `UNKNOWN` outside the table.
pub fn debug_level_name(level: i32) -> &'static str {
    usize::try_from(level)
        .ok()
        .and_then(|i| LEVEL_NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The `tracing` level of a CTDB level number.
pub fn tracing_level(level: i32) -> Level {
    match level {
        i32::MIN..=0 => Level::ERROR,
        1..=2 => Level::WARN,
        3..=4 => Level::INFO,
        5..=9 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// The `tracing` level for a CTDB debug level as text (see
/// [`parse_debug_level`]).
pub fn level_from_ctdb(s: &str) -> Option<Level> {
    parse_debug_level(s).map(tracing_level)
}

/// The host name log lines carry (see the module documentation).
pub fn hostname() -> String {
    if std::env::var_os("CTDB_TEST_MODE").is_some()
        && let Some(base) = std::env::var_os("CTDB_BASE")
    {
        return test_hostname(&base.to_string_lossy());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// `basename $CTDB_BASE` as CTDB takes it: after the last `/`, `unknown`
/// when nothing follows it.
fn test_hostname(base: &str) -> String {
    match base.rsplit('/').next() {
        Some("") | None => "unknown".into(),
        Some(last) => last.into(),
    }
}

/// A time as `YYYY-MM-DDTHH:MM:SS.uuuuuu+HH:MM`, in local time.
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t: chrono::DateTime<chrono::Local> = self.0.into();
        write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6f%:z"))
    }
}

/// Formats events as CTDB's file log lines for program `app`.
pub struct CtdbFormat {
    app: &'static str,
    host: String,
    pid: u32,
}

impl CtdbFormat {
    /// The format for program `app` in this process.
    pub fn new(app: &'static str) -> Self {
        CtdbFormat {
            app,
            host: hostname(),
            pid: std::process::id(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for CtdbFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            w,
            "{} {} {}[{}]: ",
            Timestamp(SystemTime::now()),
            self.host,
            self.app,
            self.pid
        )?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the global subscriber for program `app`: lines of `level` and
/// above, appended to the file of a `file:PATH` `location`, or to standard
/// error (no location, `file:`, `file:-`, a file that cannot be opened, or
/// any other kind of location).
pub fn init(app: &'static str, location: Option<&str>, level: Level) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .event_format(CtdbFormat::new(app));
    let file = location
        .and_then(|l| l.strip_prefix("file:"))
        .filter(|p| !p.is_empty() && *p != "-")
        .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    let _ = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// [`init`] as the daemon's helper programs do it: the location from
/// `CTDB_LOGGING` (e.g. `file:/path/log.ctdb`) and the level from
/// `CTDB_DEBUGLEVEL` (a name or a number; NOTICE when unset or not
/// understood), both of which the daemon exports to its helpers.
pub fn init_from_env(app: &'static str) {
    let level = std::env::var("CTDB_DEBUGLEVEL")
        .ok()
        .and_then(|s| level_from_ctdb(&s))
        .unwrap_or(Level::INFO);
    let location = std::env::var("CTDB_LOGGING").ok();
    init(app, location.as_deref(), level);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_have_microseconds_and_an_offset() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_622_949_509_249);
        let s = Timestamp(t).to_string();
        // 2026-11-25T16:09:09.509249+00:00 in UTC; the date and hour move
        // with the machine's zone, the layout does not.
        assert_eq!(s.len(), "2026-11-25T16:09:09.509249+00:00".len(), "{s}");
        assert_eq!(&s[19..26], ".509249", "{s}");
        assert!(matches!(&s[26..27], "+" | "-"), "{s}");
        assert_eq!(&s[29..30], ":", "{s}");
    }

    #[test]
    fn ctdb_levels_map() {
        assert_eq!(level_from_ctdb("NOTICE"), Some(Level::INFO));
        assert_eq!(level_from_ctdb("notice"), Some(Level::INFO));
        assert_eq!(level_from_ctdb("err"), Some(Level::ERROR));
        assert_eq!(level_from_ctdb("WARN"), Some(Level::WARN));
        assert_eq!(level_from_ctdb("INFO"), Some(Level::DEBUG));
        assert_eq!(level_from_ctdb("DEBUG"), Some(Level::TRACE));
        assert_eq!(level_from_ctdb("2"), Some(Level::WARN));
        assert_eq!(level_from_ctdb("3"), Some(Level::INFO));
        assert_eq!(level_from_ctdb("5"), Some(Level::DEBUG));
        assert_eq!(level_from_ctdb("10"), Some(Level::TRACE));
        assert_eq!(level_from_ctdb("11"), None);
        assert_eq!(level_from_ctdb("bogus"), None);
        assert_eq!(level_from_ctdb(""), None);
        assert_eq!(parse_debug_level("NOTICE"), Some(3));
        assert_eq!(parse_debug_level("err"), Some(0));
        assert_eq!(parse_debug_level("3x"), Some(3));
        assert_eq!(debug_level_name(5), "INFO");
        assert_eq!(debug_level_name(11), "UNKNOWN");
    }

    #[test]
    fn test_mode_host_is_the_base_directory_name() {
        assert_eq!(test_hostname("/tmp/cluster/node.0"), "node.0");
        assert_eq!(test_hostname("/tmp/cluster/node.0/"), "unknown");
        assert_eq!(test_hostname("node.2"), "node.2");
    }
}
