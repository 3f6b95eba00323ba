//! Where the event daemon's files are and what it reads from `ctdb.conf`.
//!
//! Paths follow CTDB's rules (`ctdb_client::Paths`): with `CTDB_TEST_MODE`
//! everything is under `CTDB_BASE`, otherwise the installed locations. The
//! socket is `RUNDIR/eventd.socket`, the pid file `RUNDIR/eventd.pid`, the
//! scripts `ETCDIR/events/<component>/`.
//!
//! Of `ctdb.conf` the event daemon reads only `[logging] location`,
//! `[logging] log level` and `[event] debug script`; other sections and
//! keys are ignored, as 4.17's event daemon ignores them.

use std::path::{Path, PathBuf};

/// The daemon's paths.
#[derive(Debug, Clone)]
pub struct EventdPaths {
    pub etcdir: PathBuf,
    pub rundir: PathBuf,
    pub vardir: PathBuf,
}

impl EventdPaths {
    pub fn from_env() -> anyhow::Result<Self> {
        let p = ctdb_client::Paths::from_env()?;
        Ok(EventdPaths {
            etcdir: p.etcdir.clone(),
            rundir: p.rundir.clone(),
            vardir: p.vardir.clone(),
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.rundir.join("eventd.socket")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.rundir.join("eventd.pid")
    }

    pub fn config_file(&self) -> PathBuf {
        self.etcdir.join("ctdb.conf")
    }

    /// `ETCDIR/events`, holding one directory per component.
    pub fn script_dir(&self) -> PathBuf {
        self.etcdir.join("events")
    }
}

/// What the event daemon takes from `ctdb.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventConfig {
    pub log_location: Option<String>,
    pub log_level: Option<String>,
    /// `[event] debug script`, as written (relative to ETCDIR).
    pub debug_script: Option<String>,
}

/// A `ctdb.conf` problem that stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}:{1}: {2}")]
    Syntax(PathBuf, usize, String),
    #[error("debug script {0}: {1}")]
    DebugScript(PathBuf, &'static str),
}

impl EventConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path, etcdir: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ConfigError::Io(path.to_owned(), e)),
        };
        let cfg = Self::parse(&text, path)?;
        if let Some(s) = &cfg.debug_script {
            validate_debug_script(s, etcdir)?;
        }
        Ok(cfg)
    }

    /// Parses the text of a `ctdb.conf` (INI style: `[section]`,
    /// `key = value`, `#` and `;` comments; names case-insensitive).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg = EventConfig::default();
        let mut section = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| {
                    ConfigError::Syntax(path.to_owned(), i + 1, "unterminated section".into())
                })?;
                section = name.trim().to_ascii_lowercase();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError::Syntax(
                    path.to_owned(),
                    i + 1,
                    format!("no '=' in \"{line}\""),
                ));
            };
            let key = k.trim().to_ascii_lowercase();
            let value = v.trim().to_owned();
            match (section.as_str(), key.as_str()) {
                ("logging", "location") => cfg.log_location = Some(value),
                ("logging", "log level") => cfg.log_level = Some(value),
                ("event", "debug script") => cfg.debug_script = Some(value),
                _ => {}
            }
        }
        Ok(cfg)
    }

    /// The debug program's path (`ETCDIR/<debug script>`), if configured.
    pub fn debug_program(&self, etcdir: &Path) -> Option<PathBuf> {
        self.debug_script.as_ref().map(|s| etcdir.join(s))
    }
}

/// CTDB checks that `ETCDIR/basename(script)` is an executable regular
/// file, and refuses the configuration otherwise.
fn validate_debug_script(script: &str, etcdir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let base = Path::new(script)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = etcdir.join(base);
    let md =
        std::fs::metadata(&p).map_err(|_| ConfigError::DebugScript(p.clone(), "does not exist"))?;
    if !md.is_file() {
        return Err(ConfigError::DebugScript(p, "is not a file"));
    }
    if md.permissions().mode() & 0o100 == 0 {
        return Err(ConfigError::DebugScript(p, "is not executable"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_event_keys_and_ignores_the_rest() {
        let text = "[logging]\n\tlocation = file:/x/log\n  log level = INFO\n\
                    [cluster]\n recovery lock = /x\n[event]\n debug script = debug-hung-script.sh\n";
        let c = EventConfig::parse(text, Path::new("c")).unwrap();
        assert_eq!(c.log_location.as_deref(), Some("file:/x/log"));
        assert_eq!(c.log_level.as_deref(), Some("INFO"));
        assert_eq!(c.debug_script.as_deref(), Some("debug-hung-script.sh"));
        assert!(EventConfig::parse("[event]\nbroken\n", Path::new("c")).is_err());
    }

    #[test]
    fn debug_script_must_be_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        assert!(validate_debug_script("dbg.sh", d.path()).is_err());
        let p = d.path().join("dbg.sh");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert!(validate_debug_script("dbg.sh", d.path()).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(validate_debug_script("dbg.sh", d.path()).is_ok());
    }
}
