//! The helper's command line: `FILE [RECHECK_INTERVAL [PING_TIMEOUT]]`.
//!
//! Numbers are read as CTDB's helper reads them (C's `strtoul` in base 10,
//! with Samba's checks on top): blanks before the number are skipped, a
//! `+` is allowed, what follows the digits is ignored (`5x` is 5); no
//! digits at all, a minus sign, or a number too large for 64 bits is a
//! usage error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// How often the lock file is checked when no interval is given.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(5);

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub file: PathBuf,
    /// How often to check that the lock file is still the one locked;
    /// zero: never.
    pub recheck: Duration,
    /// How long one check may take before the helper gives the lock up
    /// (a cluster file system that hangs); zero: as long as it takes.
    pub ping_timeout: Duration,
}

/// The command line is not one the helper takes (the caller prints
/// [`usage`] and exits with status 1, as CTDB's helper does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError;

/// The usage line, for program name `prog`.
pub fn usage(prog: &str) -> String {
    format!("Usage: {prog} <file> [recheck_interval [ping_timeout]]")
}

impl Args {
    /// Reads the arguments after the program name.
    pub fn parse(args: &[OsString]) -> Result<Args, UsageError> {
        if args.is_empty() || args.len() > 3 {
            return Err(UsageError);
        }
        let seconds = |i: usize, default: Duration| match args.get(i) {
            None => Ok(default),
            Some(s) => s
                .to_str()
                .and_then(parse_ulong)
                .map(Duration::from_secs)
                .ok_or(UsageError),
        };
        Ok(Args {
            file: PathBuf::from(&args[0]),
            recheck: seconds(1, DEFAULT_RECHECK)?,
            ping_timeout: seconds(2, Duration::ZERO)?,
        })
    }
}

/// A number as `strtoul(s, _, 10)` reads it, refused where Samba's
/// `smb_strtoul` refuses it (see the module documentation).
pub fn parse_ulong(s: &str) -> Option<u64> {
    // C's isspace in the "C" locale.
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        // No digits (a minus sign included: "-1" converts, but is refused).
        return None;
    }
    s[..end].parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, UsageError> {
        let v: Vec<OsString> = v.iter().map(OsString::from).collect();
        Args::parse(&v)
    }

    #[test]
    fn numbers_as_ctdbs_helper_reads_them() {
        assert_eq!(parse_ulong("5"), Some(5));
        assert_eq!(parse_ulong(" 3"), Some(3));
        assert_eq!(parse_ulong("+7"), Some(7));
        assert_eq!(parse_ulong("5x"), Some(5));
        assert_eq!(parse_ulong("0x5"), Some(0));
        assert_eq!(parse_ulong("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "x", "-1", "-0", " -3", "+", "18446744073709551616"] {
            assert_eq!(parse_ulong(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_command_line() {
        assert_eq!(
            parse(&["f"]),
            Ok(Args {
                file: "f".into(),
                recheck: DEFAULT_RECHECK,
                ping_timeout: Duration::ZERO,
            })
        );
        assert_eq!(
            parse(&["f", "1", "2"]),
            Ok(Args {
                file: "f".into(),
                recheck: Duration::from_secs(1),
                ping_timeout: Duration::from_secs(2),
            })
        );
        assert_eq!(parse(&["f", "0"]).unwrap().recheck, Duration::ZERO);
        for bad in [
            &[][..],
            &["f", "5", "0", "x"],
            &["f", "x"],
            &["f", "1", "-2"],
        ] {
            assert_eq!(parse(bad), Err(UsageError), "{bad:?}");
        }
    }
}
