//! Logging: CTDB's level names and numbers on top of `tracing`, written to
//! the configured location in the line format Debian's CTDB writes
//! (`2026-11-25T20:48:22.276095+00:00 HOST ctdbd[PID]: message`, HOST
//! being `basename $CTDB_BASE` in test mode, as CTDB fakes it): the format,
//! the level names and the host name come from the `ctdb-logging` crate,
//! which the helper programs use too.
//!
//! CTDB's levels map onto `tracing` as: ERROR → `error!`, WARNING →
//! `warn!`, NOTICE → `info!`, INFO → `debug!`, DEBUG → `trace!`. The level
//! can be changed at run time (`SET_DEBUG`), through [`LogControl`].

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};

use ctdb_logging::CtdbFormat;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

pub use ctdb_logging::{
    DEBUG_DEBUG, DEBUG_ERR, DEBUG_INFO, DEBUG_NOTICE, DEBUG_WARNING, debug_level_name,
    parse_debug_level,
};

/// The `tracing` filter for a CTDB level.
pub fn level_filter(level: i32) -> LevelFilter {
    LevelFilter::from_level(ctdb_logging::tracing_level(level))
}

/// Changes the log level of a running daemon.
#[derive(Clone)]
pub struct LogControl {
    level: Arc<Mutex<i32>>,
    handle: Option<reload::Handle<LevelFilter, tracing_subscriber::Registry>>,
}

impl LogControl {
    /// A control that only remembers the level (no subscriber installed).
    pub fn detached(level: i32) -> Self {
        LogControl {
            level: Arc::new(Mutex::new(level)),
            handle: None,
        }
    }

    pub fn level(&self) -> i32 {
        *self.level.lock().unwrap()
    }

    pub fn set_level(&self, level: i32) {
        *self.level.lock().unwrap() = level;
        if let Some(h) = &self.handle {
            let _ = h.modify(|f| *f = level_filter(level));
        }
    }
}

/// Where log lines go, from a `[logging] location` value.
pub enum LogTarget {
    File(std::path::PathBuf),
    Stderr,
}

/// Works out the log target. Syslog is not supported: it degrades to
/// stderr in the foreground and to `LOGDIR/log.ctdb` in the background
/// (with a warning returned for the caller to log once logging is up).
pub fn log_target(
    location: &str,
    foreground: bool,
    logdir: &std::path::Path,
) -> (LogTarget, Option<String>) {
    if let Some(p) = location.strip_prefix("file:") {
        return (LogTarget::File(p.into()), None);
    }
    let fallback = if foreground {
        LogTarget::Stderr
    } else {
        LogTarget::File(logdir.join("log.ctdb"))
    };
    if location == "file" {
        return (fallback, None);
    }
    let to = match &fallback {
        LogTarget::Stderr => "stderr".to_owned(),
        LogTarget::File(p) => p.display().to_string(),
    };
    (
        fallback,
        Some(format!(
            "log location \"{location}\" (syslog) is not supported, logging to {to}"
        )),
    )
}

/// The daemon's log file. It is reopened by path on SIGHUP, so that after
/// logrotate moved `log.ctdb` aside new lines go to a new file; helpers
/// started afterwards get the new file as their stderr.
#[derive(Clone)]
pub struct LogFile(Arc<LogFileInner>);

struct LogFileInner {
    path: std::path::PathBuf,
    file: Mutex<std::fs::File>,
}

impl LogFile {
    fn open(path: &std::path::Path) -> std::io::Result<LogFile> {
        Ok(LogFile(Arc::new(LogFileInner {
            path: path.to_owned(),
            file: Mutex::new(Self::open_file(path)?),
        })))
    }

    fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Opens the file at its path again; later lines go there. On
    /// failure the old file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = Self::open_file(&self.0.path)?;
        *self.lock() = f;
        Ok(())
    }

    /// Makes this process's standard error the current file (what it
    /// writes outside its log lines, a panic, follows a reopen too).
    pub fn redirect_stderr(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = self.lock();
        nix::unistd::dup2(f.as_raw_fd(), 2)?;
        Ok(())
    }

    /// A descriptor of the current file (a helper's stderr).
    pub fn try_clone(&self) -> std::io::Result<std::fs::File> {
        self.lock().try_clone()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::fs::File> {
        self.0.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One log line's access to the current file.
pub struct LogFileWriter<'a>(std::sync::MutexGuard<'a, std::fs::File>);

impl std::io::Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.lock())
    }
}

/// Installs the global subscriber; returns the level control and the log
/// file (for helpers' stderr and SIGHUP), if logging to a file.
pub fn init(target: &LogTarget, level: i32) -> std::io::Result<(LogControl, Option<LogFile>)> {
    init_as(target, level, "ctdbd")
}

/// [`init`] for program `app` of this binary (the recovery daemon's
/// process logs as `ctdb-recoverd`, as CTDB's does).
pub fn init_as(
    target: &LogTarget,
    level: i32,
    app: &'static str,
) -> std::io::Result<(LogControl, Option<LogFile>)> {
    let (filter, handle) = reload::Layer::new(level_filter(level));
    let fmt_layer = tracing_subscriber::fmt::layer()
        .event_format(CtdbFormat::new(app))
        .with_ansi(false);
    let file = match target {
        LogTarget::File(p) => {
            let f = LogFile::open(p)?;
            let layer = fmt_layer.with_writer(f.clone());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            Some(f)
        }
        LogTarget::Stderr => {
            let layer = fmt_layer.with_writer(std::io::stderr);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            None
        }
    };
    Ok((
        LogControl {
            level: Arc::new(Mutex::new(level)),
            handle: Some(handle),
        },
        file,
    ))
}
