//! Everything `ctdbd` reads at start-up: `ctdb.conf`, the `nodes` file,
//! `ctdb.tunables`, and where they live (`CTDB_BASE` / `CTDB_TEST_MODE`).

pub mod conf;
pub mod nodes;

use std::path::PathBuf;

pub use conf::Config;
pub use nodes::{CTDB_PORT, NodeEntry, load_nodes, parse_nodes};

/// A configuration problem that stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("invalid value [{section}] -> \"{key}\" = \"{value}\": {why}")]
    Value {
        section: String,
        key: String,
        value: String,
        why: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Where the daemon's files are: CTDB's rules (see `ctdb_client::Paths`),
/// plus the helper directory.
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    pub paths: ctdb_client::Paths,
    /// Directory of the helpers (`ctdb_recovery_helper`,
    /// `ctdb_takeover_helper`, `ctdb_mutex_fcntl_helper`, `ctdb-eventd`):
    /// `CTDB_TEST_HELPER_BINDIR`, else
    /// [`ctdb_client::paths::installed_helper_dir`] of this program.
    pub helper_dir: PathBuf,
    /// The default log directory.
    pub logdir: PathBuf,
}

impl DaemonPaths {
    pub fn from_env() -> Result<Self, ConfigError> {
        let paths =
            ctdb_client::Paths::from_env().map_err(|e| ConfigError::Other(e.to_string()))?;
        let helper_dir = std::env::var_os("CTDB_TEST_HELPER_BINDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().unwrap_or_default();
                ctdb_client::paths::installed_helper_dir(&exe)
            });
        let logdir = if std::env::var_os("CTDB_TEST_MODE").is_some() {
            paths.vardir.clone()
        } else {
            PathBuf::from("/var/log/ctdb")
        };
        Ok(DaemonPaths {
            paths,
            helper_dir,
            logdir,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.paths.socket("ctdbd")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.paths.pidfile("ctdbd")
    }

    pub fn config_file(&self) -> PathBuf {
        self.paths.config_file()
    }

    pub fn nodes_file(&self) -> PathBuf {
        self.paths.etcdir.join("nodes")
    }

    pub fn tunables_file(&self) -> PathBuf {
        self.paths.etcdir.join("ctdb.tunables")
    }
}
