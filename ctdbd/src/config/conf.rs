//! `ctdb.conf`: CTDB's ini-style configuration file.
//!
//! Sections `[logging]`, `[cluster]`, `[database]`, `[event]`,
//! `[failover]` and `[legacy]`, with the option names and defaults of CTDB
//! 4.17, and `[ctdb-rs]` for this daemon's own settings (which CTDB would
//! ignore with a warning). Section and option names match case-insensitively. Lines starting
//! with `#` or `;` are comments. Like `ctdbd`, unknown sections and options
//! are tolerated (we report them as warnings); an empty or invalid value is
//! an error that stops the daemon at start-up.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::ConfigError;
use crate::logging::parse_debug_level;

/// Every setting `ctdbd` reads from `ctdb.conf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    // [logging]
    /// `location`: `file:PATH` or `syslog[:METHOD]`.
    pub log_location: String,
    /// `log level`, as a CTDB level name or number.
    pub log_level: String,
    // [cluster]
    pub transport: String,
    pub node_address: Option<IpAddr>,
    pub cluster_lock: Option<String>,
    /// Deprecated spelling of `cluster lock`.
    pub recovery_lock: Option<String>,
    pub leader_timeout: u32,
    pub leader_capability: bool,
    // [database]
    pub volatile_db_dir: PathBuf,
    pub persistent_db_dir: PathBuf,
    pub state_db_dir: PathBuf,
    pub lock_debug_script: Option<String>,
    pub tdb_mutexes: bool,
    // [event]
    pub event_debug_script: Option<String>,
    // [failover]
    pub failover_disabled: bool,
    // [legacy]
    pub realtime_scheduling: bool,
    pub lmaster_capability: bool,
    pub start_as_stopped: bool,
    pub start_as_disabled: bool,
    pub script_log_level: String,
    // [ctdb-rs]
    /// `client queue limit`: bytes waiting to be written to a client
    /// beyond which its requests are no longer read and messages for it
    /// are dropped.
    pub client_queue_limit: usize,
    /// `[metrics] address` (or `[ctdb-rs] metrics address`, the older
    /// spelling): where to serve Prometheus metrics (`IP:PORT`); none by
    /// default ([`crate::metrics`]).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// `[ctdb-rs] changelog max bytes` and `changelog max age` (seconds):
    /// the bounds of each persistent database's change log
    /// (`db::changelog`).
    pub changelog_max_bytes: usize,
    pub changelog_max_age: u32,
}

/// The default `client queue limit`: 4 MiB.
pub const DEFAULT_CLIENT_QUEUE_LIMIT: usize = 4 * 1024 * 1024;

impl Config {
    /// The defaults, with CTDB's state directory `vardir` and log
    /// directory `logdir`.
    pub fn defaults(vardir: &Path, logdir: &Path) -> Config {
        Config {
            log_location: format!("file:{}", logdir.join("log.ctdb").display()),
            log_level: "NOTICE".into(),
            transport: "tcp".into(),
            node_address: None,
            cluster_lock: None,
            recovery_lock: None,
            leader_timeout: 5,
            leader_capability: true,
            volatile_db_dir: vardir.join("volatile"),
            persistent_db_dir: vardir.join("persistent"),
            state_db_dir: vardir.join("state"),
            lock_debug_script: None,
            tdb_mutexes: true,
            event_debug_script: None,
            failover_disabled: false,
            realtime_scheduling: true,
            lmaster_capability: true,
            start_as_stopped: false,
            start_as_disabled: false,
            script_log_level: "ERROR".into(),
            client_queue_limit: DEFAULT_CLIENT_QUEUE_LIMIT,
            changelog_max_bytes: crate::db::changelog::DEFAULT_MAX_BYTES,
            changelog_max_age: crate::db::changelog::DEFAULT_MAX_AGE.as_secs() as u32,
            metrics_address: None,
        }
    }

    /// The cluster lock in effect: `cluster lock`, else the deprecated
    /// `recovery lock`.
    pub fn effective_cluster_lock(&self) -> Option<&str> {
        self.cluster_lock
            .as_deref()
            .or(self.recovery_lock.as_deref())
    }

    /// Reads `path` over the defaults. A missing file leaves the defaults
    /// (as CTDB does); warnings for unknown options are returned.
    pub fn load(
        path: &Path,
        vardir: &Path,
        logdir: &Path,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut cfg = Config::defaults(vardir, logdir);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((cfg, Vec::new())),
            Err(e) => {
                return Err(ConfigError::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        let warnings = cfg.apply(&text, path)?;
        Ok((cfg, warnings))
    }

    /// Applies the text of a configuration file; returns warnings.
    pub fn apply(&mut self, text: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let mut section: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let bad = |why: String| ConfigError::Syntax {
                path: path.to_owned(),
                line: lineno,
                why,
            };
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| bad(format!("unterminated section header \"{line}\"")))?
                    .trim()
                    .to_ascii_lowercase();
                if !SECTIONS.contains(&name.as_str()) {
                    warnings.push(format!("conf: unknown section [{name}]"));
                }
                section = Some(name);
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("expected \"option = value\", got \"{line}\"")))?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            let Some(sec) = section.as_deref() else {
                warnings.push(format!("conf: unknown section for option \"{key}\""));
                continue;
            };
            if !SECTIONS.contains(&sec) {
                continue;
            }
            if value.is_empty() {
                return Err(ConfigError::Value {
                    section: sec.into(),
                    key,
                    value: String::new(),
                    why: "empty value".into(),
                });
            }
            match self.set(sec, &key, value) {
                Ok(true) => {}
                Ok(false) => warnings.push(format!("conf: unknown option [{sec}] -> \"{key}\"")),
                Err(why) => {
                    return Err(ConfigError::Value {
                        section: sec.into(),
                        key,
                        value: value.into(),
                        why,
                    });
                }
            }
        }
        Ok(warnings)
    }

    /// Sets one option; `Ok(false)` for an unknown option.
    fn set(&mut self, section: &str, key: &str, v: &str) -> Result<bool, String> {
        match (section, key) {
            ("logging", "location") => {
                validate_log_location(v)?;
                self.log_location = v.into();
            }
            ("logging", "log level") => {
                parse_debug_level(v).ok_or_else(|| "not a log level".to_string())?;
                self.log_level = v.into();
            }
            ("cluster", "transport") => {
                if v != "tcp" {
                    return Err("only \"tcp\" is supported".into());
                }
                self.transport = v.into();
            }
            ("cluster", "node address") => {
                let ip: IpAddr = v
                    .parse()
                    .map_err(|_| "not an IPv4 or IPv6 address".to_string())?;
                self.node_address = Some(ip);
            }
            ("cluster", "cluster lock") => self.cluster_lock = Some(v.into()),
            ("cluster", "recovery lock") => self.recovery_lock = Some(v.into()),
            ("cluster", "leader timeout") => {
                let n = parse_int(v)?;
                if n <= 0 {
                    return Err("must be positive".into());
                }
                self.leader_timeout = n as u32;
            }
            ("cluster", "leader capability") => self.leader_capability = parse_bool(v)?,
            ("database", "volatile database directory") => self.volatile_db_dir = dir(v)?,
            ("database", "persistent database directory") => self.persistent_db_dir = dir(v)?,
            ("database", "state database directory") => self.state_db_dir = dir(v)?,
            ("database", "lock debug script") => self.lock_debug_script = Some(v.into()),
            ("database", "tdb mutexes") => self.tdb_mutexes = parse_bool(v)?,
            ("event", "debug script") => self.event_debug_script = Some(v.into()),
            ("failover", "disabled") => self.failover_disabled = parse_bool(v)?,
            ("legacy", "realtime scheduling") => self.realtime_scheduling = parse_bool(v)?,
            ("legacy", "lmaster capability") => self.lmaster_capability = parse_bool(v)?,
            ("legacy", "start as stopped") => self.start_as_stopped = parse_bool(v)?,
            ("legacy", "start as disabled") => self.start_as_disabled = parse_bool(v)?,
            ("legacy", "script log level") => {
                parse_debug_level(v).ok_or_else(|| "not a log level".to_string())?;
                self.script_log_level = v.into();
            }
            ("ctdb-rs", "client queue limit") => {
                let n = parse_size(v)?;
                if n < 64 * 1024 {
                    return Err("must be at least 64K".into());
                }
                self.client_queue_limit = n;
            }
            ("ctdb-rs", "changelog max bytes") => self.changelog_max_bytes = parse_size(v)?,
            ("ctdb-rs", "changelog max age") => {
                let n = parse_int(v)?;
                if n < 0 {
                    return Err("must not be negative".into());
                }
                self.changelog_max_age = n as u32;
            }
            ("metrics", "address") | ("ctdb-rs", "metrics address") => {
                let a = v
                    .parse()
                    .map_err(|_| "not an address and port (IP:PORT, [IPv6]:PORT)".to_string())?;
                self.metrics_address = Some(a);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

const SECTIONS: &[&str] = &[
    "logging", "cluster", "database", "event", "failover", "legacy", "ctdb-rs", "metrics",
];

/// A size in bytes, with an optional `K`, `M` or `G` suffix.
fn parse_size(v: &str) -> Result<usize, String> {
    let v = v.trim();
    let (num, mult) = match v.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&v[..v.len() - 1], 1usize << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "not a size (bytes, or a number with K, M or G)".to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" => Ok(true),
        "false" | "no" => Ok(false),
        _ => Err("not a boolean (true/false/yes/no)".into()),
    }
}

fn parse_int(v: &str) -> Result<i64, String> {
    v.parse::<i64>().map_err(|_| "not an integer".to_string())
}

fn dir(v: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if !p.is_dir() {
        return Err(format!("directory \"{v}\" does not exist"));
    }
    Ok(p)
}

/// Checks a `[logging] location` value.
pub fn validate_log_location(v: &str) -> Result<(), String> {
    if let Some(path) = v.strip_prefix("file:") {
        if path.is_empty() || !path.starts_with('/') {
            return Err("file: needs an absolute path".into());
        }
        return Ok(());
    }
    if v == "file" {
        return Ok(());
    }
    if v == "syslog" {
        return Ok(());
    }
    if let Some(m) = v.strip_prefix("syslog:") {
        if ["nonblocking", "udp", "udp-rfc5424"].contains(&m) {
            return Ok(());
        }
        return Err(format!("unknown syslog method \"{m}\""));
    }
    Err("must be file:PATH or syslog[:METHOD]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut c = Config::defaults(Path::new("/v"), Path::new("/l"));
        let w = c.apply(text, Path::new("ctdb.conf"))?;
        Ok((c, w))
    }

    #[test]
    fn defaults_are_ctdbs() {
        let c = Config::defaults(Path::new("/var/lib/ctdb"), Path::new("/var/log"));
        assert_eq!(c.log_location, "file:/var/log/log.ctdb");
        assert_eq!(c.log_level, "NOTICE");
        assert_eq!(c.leader_timeout, 5);
        assert!(c.leader_capability && c.lmaster_capability && c.tdb_mutexes);
        assert!(!c.failover_disabled && !c.start_as_stopped && !c.start_as_disabled);
        assert_eq!(c.volatile_db_dir, PathBuf::from("/var/lib/ctdb/volatile"));
        assert_eq!(c.script_log_level, "ERROR");
    }

    #[test]
    fn reads_the_shared_scripts_file() {
        let d = tempfile::tempdir().unwrap();
        let dp = d.path().display();
        let text = format!(
            "[logging]\n\tlocation = file:/x/log.ctdb\n\tlog level = INFO\n[cluster]\n\tcluster lock = /s/cluster.lock\n\tnode address = 127.0.0.2\n[database]\n\tvolatile database directory = {dp}\n[failover]\n\tdisabled = true\n"
        );
        let (c, w) = load(&text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.log_location, "file:/x/log.ctdb");
        assert_eq!(c.log_level, "INFO");
        assert_eq!(c.cluster_lock.as_deref(), Some("/s/cluster.lock"));
        assert_eq!(c.node_address, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(c.volatile_db_dir, d.path());
        assert!(c.failover_disabled);
    }

    #[test]
    fn metrics_address_is_off_by_default() {
        let (c, _) = load("").unwrap();
        assert_eq!(c.metrics_address, None);
        let (c, w) = load("[ctdb-rs]\n\tmetrics address = 127.0.0.1:9779\n").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.metrics_address, Some("127.0.0.1:9779".parse().unwrap()));
        let (c, _) = load("[ctdb-rs]\nmetrics address = [::1]:9779\n").unwrap();
        assert_eq!(c.metrics_address, Some("[::1]:9779".parse().unwrap()));
        assert!(load("[ctdb-rs]\nmetrics address = 127.0.0.1\n").is_err());
        assert!(load("[ctdb-rs]\nmetrics address = localhost:80\n").is_err());
        let (c, w) = load("[metrics]\n\taddress = 127.0.0.2:9780\n").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.metrics_address, Some("127.0.0.2:9780".parse().unwrap()));
        assert!(load("[metrics]\naddress = nowhere\n").is_err());
    }

    #[test]
    fn unknown_options_warn_and_bad_values_fail() {
        let (_, w) = load("[cluster]\nfrobnicate = 1\n[bogus]\nx = 1\n").unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(load("[cluster]\nleader timeout = 0\n").is_err());
        assert!(load("[cluster]\nleader timeout = soon\n").is_err());
        assert!(load("[cluster]\nnode address = 300.1.1.1\n").is_err());
        assert!(load("[cluster]\ntransport = ib\n").is_err());
        assert!(load("[failover]\ndisabled = maybe\n").is_err());
        assert!(load("[logging]\nlog level = LOUD\n").is_err());
        assert!(load("[logging]\nlocation = /tmp/x\n").is_err());
        assert!(load("[database]\nvolatile database directory = /nonexistent/dir\n").is_err());
        assert!(load("[cluster]\nnode address =\n").is_err());
        assert!(load("[cluster\n").is_err());
        assert!(load("[cluster]\njust words\n").is_err());
    }

    #[test]
    fn names_are_case_insensitive_and_ipv6_works() {
        let (c, _) = load("[Cluster]\nNode Address = fd00::1\nLeader Timeout = 7\n").unwrap();
        assert_eq!(c.node_address, Some("fd00::1".parse().unwrap()));
        assert_eq!(c.leader_timeout, 7);
    }

    #[test]
    fn client_queue_limit_takes_sizes() {
        let (c, w) = load("[ctdb-rs]\nclient queue limit = 8M\n").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.client_queue_limit, 8 << 20);
        let (c, _) = load("[ctdb-rs]\nclient queue limit = 262144\n").unwrap();
        assert_eq!(c.client_queue_limit, 256 << 10);
        assert!(load("[ctdb-rs]\nclient queue limit = 1K\n").is_err());
        assert!(load("[ctdb-rs]\nclient queue limit = lots\n").is_err());
        assert_eq!(
            Config::defaults(Path::new("/v"), Path::new("/l")).client_queue_limit,
            DEFAULT_CLIENT_QUEUE_LIMIT
        );
    }

    #[test]
    fn recovery_lock_is_the_deprecated_cluster_lock() {
        let (c, _) = load("[cluster]\nrecovery lock = /r\n").unwrap();
        assert_eq!(c.effective_cluster_lock(), Some("/r"));
        let (c, _) = load("[cluster]\nrecovery lock = /r\ncluster lock = /c\n").unwrap();
        assert_eq!(c.effective_cluster_lock(), Some("/c"));
    }
}
