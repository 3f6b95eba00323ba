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
//! system's. Times are UTC. Without a usable `file:` location, lines go to
//! standard error.
//!
//! CTDB's levels map onto `tracing` as ERROR→`error!`, WARNING→`warn!`,
//! NOTICE→`info!`, INFO→`debug!`, DEBUG→`trace!`.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// The `tracing` level for a CTDB debug level, parsed as CTDB parses
/// `CTDB_DEBUGLEVEL` and `[logging] log level`: a number 0..=10 (Samba's
/// levels: 0 ERROR, 1-2 WARNING, 3-4 NOTICE, 5-9 INFO, 10 DEBUG) or a
/// prefix of a level name, in any case (`ERR`, `warn`, `NOTICE`).
pub fn level_from_ctdb(s: &str) -> Option<Level> {
    let s = s.trim();
    let n = if s.starts_with(|c: char| c.is_ascii_digit()) {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse::<usize>()
            .ok()
            .filter(|n| *n < LEVEL_NAMES.len())?
    } else if s.is_empty() {
        return None;
    } else {
        let up = s.to_ascii_uppercase();
        LEVEL_NAMES.iter().position(|n| n.starts_with(&up))?
    };
    Some(match n {
        0 => Level::ERROR,
        1..=2 => Level::WARN,
        3..=4 => Level::INFO,
        5..=9 => Level::DEBUG,
        _ => Level::TRACE,
    })
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

/// A time as `YYYY-MM-DDTHH:MM:SS.uuuuuu+00:00`.
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, day) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

/// Year, month and day of a count of days since 1970-01-01 (the proleptic
/// Gregorian calendar; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_622_949_509_249);
        assert_eq!(Timestamp(t).to_string(), "2026-11-25T16:09:09.509249+00:00");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000+00:00"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(
            Timestamp(leap)
                .to_string()
                .starts_with("2000-02-29T00:00:00")
        );
        assert_eq!(civil_from_days(20_793), (2026, 12, 6));
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
    }

    #[test]
    fn test_mode_host_is_the_base_directory_name() {
        assert_eq!(test_hostname("/tmp/cluster/node.0"), "node.0");
        assert_eq!(test_hostname("/tmp/cluster/node.0/"), "unknown");
        assert_eq!(test_hostname("node.2"), "node.2");
    }
}
