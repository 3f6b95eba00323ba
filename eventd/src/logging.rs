//! Log lines as CTDB's daemons write them
//! (`2026-12-06T14:20:01.123456+00:00 HOST ctdb-eventd[PID]: message`, HOST
//! being `basename $CTDB_BASE` in test mode), to the `file:` location of
//! `[logging] location` (default [`DEFAULT_LOCATION`]), or to standard error
//! (interactive, `file:` or `file:-`, a file that cannot be opened, or any
//! other location: `syslog` is not supported here).
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

/// 4.17's default `[logging] location` (Debian's LOGDIR).
pub const DEFAULT_LOCATION: &str = "file:/var/log/ctdb/log.ctdb";

/// The `tracing` level for a CTDB debug level name or number.
pub fn level_from_ctdb(s: &str) -> Option<Level> {
    Some(match s.trim().to_ascii_uppercase().as_str() {
        "ERROR" | "ERR" | "0" => Level::ERROR,
        "WARNING" | "WARN" | "1" => Level::WARN,
        "NOTICE" | "2" | "3" | "4" => Level::INFO,
        "INFO" | "5" | "6" | "7" | "8" | "9" => Level::DEBUG,
        "DEBUG" | "10" => Level::TRACE,
        _ => return None,
    })
}

fn hostname() -> String {
    if std::env::var_os("CTDB_TEST_MODE").is_some()
        && let Some(base) = std::env::var_os("CTDB_BASE")
    {
        let base = base.to_string_lossy().into_owned();
        if let Some(last) = base.trim_end_matches('/').rsplit('/').next()
            && !last.is_empty()
        {
            return last.to_owned();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

struct CtdbFormat {
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as i64;
        let (y, mo, d) = civil(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(
            w,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00 {} ctdb-eventd[{}]: ",
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            now.subsec_micros(),
            self.host,
            self.pid
        )?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Starts logging. `location` is `[logging] location`; `None` or
/// interactive means standard error.
pub fn init(location: Option<&str>, level: Level) {
    let format = CtdbFormat {
        host: hostname(),
        pid: std::process::id(),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(format);
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
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil(0), (1970, 1, 1));
        assert_eq!(super::civil(20_793), (2026, 12, 6));
    }
}
