//! Logging where and how CTDB's daemon and helpers log.
//!
//! The reference daemon exports `CTDB_LOGGING` (e.g. `file:/path/log.ctdb`)
//! and `CTDB_DEBUGLEVEL` (`ERROR`, `WARNING`, `NOTICE`, `INFO`, `DEBUG` or
//! 0..4) to its helpers, which append to the same log. Lines look like the
//! daemon's own:
//!
//! ```text
//! 2026-11-25T20:09:09.509249+00:00 node.0 ctdb-recovery[14175]: Set recovery mode to ACTIVE
//! ```
//!
//! The host name is the last component of `CTDB_BASE` in test mode (as
//! CTDB does), else the system's. Times are UTC. Without a `file:`
//! location, lines go to standard error.
//!
//! CTDB levels map to `tracing` levels as ERROR→error, WARNING→warn,
//! NOTICE→info, INFO→debug, DEBUG→trace.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The program name in log lines, as CTDB's helper uses.
pub const APP_NAME: &str = "ctdb-recovery";

/// The `tracing` level for a CTDB debug level name or number.
pub fn level_from_ctdb(s: &str) -> Option<Level> {
    Some(match s.trim().to_ascii_uppercase().as_str() {
        "ERROR" | "ERR" | "0" => Level::ERROR,
        "WARNING" | "WARN" | "1" => Level::WARN,
        "NOTICE" | "2" => Level::INFO,
        "INFO" | "3" => Level::DEBUG,
        "DEBUG" | "4" | "5" | "6" | "7" | "8" | "9" | "10" => Level::TRACE,
        _ => return None,
    })
}

/// The host name CTDB's file logging would print.
fn hostname() -> String {
    if std::env::var_os("CTDB_TEST_MODE").is_some()
        && let Ok(base) = std::env::var("CTDB_BASE")
    {
        let last = base.rsplit('/').next().unwrap_or("");
        return if last.is_empty() {
            "unknown".into()
        } else {
            last.into()
        };
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Formats events as CTDB's file log lines.
struct CtdbFormat {
    app: &'static str,
    host: String,
    pid: u32,
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

/// A time as `YYYY-MM-DDTHH:MM:SS.uuuuuu+00:00`.
struct Timestamp(SystemTime);

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
/// Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    (y, m, d)
}

/// Installs the global subscriber from `CTDB_LOGGING` / `CTDB_DEBUGLEVEL`.
pub fn init() {
    init_as(APP_NAME);
}

/// [`init`] for another helper, whose lines carry `app` (e.g.
/// `ctdb-takeover`) as the program name.
pub fn init_as(app: &'static str) {
    let level = std::env::var("CTDB_DEBUGLEVEL")
        .ok()
        .and_then(|s| level_from_ctdb(&s))
        .unwrap_or(Level::INFO);
    let format = CtdbFormat {
        app,
        host: hostname(),
        pid: std::process::id(),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(format);
    let file = std::env::var("CTDB_LOGGING")
        .ok()
        .and_then(|l| l.strip_prefix("file:").map(str::to_owned))
        .filter(|p| !p.is_empty() && p != "-")
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
    }

    #[test]
    fn ctdb_levels_map() {
        assert_eq!(level_from_ctdb("NOTICE"), Some(Level::INFO));
        assert_eq!(level_from_ctdb("err"), Some(Level::ERROR));
        assert_eq!(level_from_ctdb("4"), Some(Level::TRACE));
        assert_eq!(level_from_ctdb("bogus"), None);
    }
}
