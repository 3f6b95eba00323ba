//! Where CTDB keeps its files, by the same rules as CTDB 4.17.
//!
//! Normally: configuration in `/etc/ctdb`, run files (socket, pid file) in
//! `/run/ctdb`, state in `/var/lib/ctdb`, data in `/usr/share/ctdb` (Debian's
//! build). With `CTDB_TEST_MODE` set, everything is under `CTDB_BASE`:
//! configuration in `$CTDB_BASE`, run files in `$CTDB_BASE/run`, state in
//! `$CTDB_BASE/var`, data in `$CTDB_BASE/share`. `CTDB_SOCKET` overrides the
//! daemon socket in either mode.

use std::path::{Path, PathBuf};

/// The directories CTDB uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub etcdir: PathBuf,
    pub rundir: PathBuf,
    pub vardir: PathBuf,
    pub datadir: PathBuf,
    /// `CTDB_SOCKET`, if set.
    socket_override: Option<PathBuf>,
}

/// Why the paths could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("broken CTDB setup: CTDB_BASE not set in test mode")]
    NoBaseInTestMode,
}

impl Paths {
    /// Paths from the process environment.
    pub fn from_env() -> Result<Self, PathError> {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// Paths from a variable lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, PathError> {
        let socket_override = var("CTDB_SOCKET").map(PathBuf::from);
        if var("CTDB_TEST_MODE").is_some() {
            let base = PathBuf::from(var("CTDB_BASE").ok_or(PathError::NoBaseInTestMode)?);
            return Ok(Paths {
                etcdir: base.clone(),
                rundir: base.join("run"),
                vardir: base.join("var"),
                datadir: base.join("share"),
                socket_override,
            });
        }
        Ok(Paths {
            etcdir: PathBuf::from("/etc/ctdb"),
            rundir: PathBuf::from("/run/ctdb"),
            vardir: PathBuf::from("/var/lib/ctdb"),
            datadir: PathBuf::from("/usr/share/ctdb"),
            socket_override,
        })
    }

    /// `ctdb.conf`.
    pub fn config_file(&self) -> PathBuf {
        self.etcdir.join("ctdb.conf")
    }

    /// A daemon's socket: `CTDB_SOCKET` for `ctdbd` if set, else
    /// `RUNDIR/<daemon>.socket`.
    pub fn socket(&self, daemon: &str) -> PathBuf {
        match (&self.socket_override, daemon) {
            (Some(s), "ctdbd") => s.clone(),
            _ => self.rundir.join(format!("{daemon}.socket")),
        }
    }

    /// A daemon's pid file: `RUNDIR/<daemon>.pid`.
    pub fn pidfile(&self, daemon: &str) -> PathBuf {
        self.rundir.join(format!("{daemon}.pid"))
    }
}

/// Where the helper programs (`ctdb_recovery_helper`, `ctdb-event`,
/// `ctdb_mutex_fcntl_helper`, ...) of a program installed as `exe` are: a
/// program installed as `PREFIX/sbin/ctdbd` or `PREFIX/bin/ctdb`
/// (`scripts/install.sh`) has them in `PREFIX/libexec/ctdb`, as CTDB's
/// build puts its helpers under its prefix; anything else (a program run
/// from a build tree, a prefix without that directory) uses Debian's
/// `/usr/libexec/ctdb`.
pub fn installed_helper_dir(exe: &Path) -> PathBuf {
    let beside = exe
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "sbin" || n == "bin"))
        .and_then(Path::parent)
        .map(|prefix| prefix.join("libexec/ctdb"))
        .filter(|d| d.is_dir());
    beside.unwrap_or_else(|| PathBuf::from("/usr/libexec/ctdb"))
}

/// Helper program `name` for a program installed as `exe`: in
/// [`installed_helper_dir`], else in Debian's `/usr/libexec/ctdb` (for
/// CTDB's helpers that ctdb-rs does not ship, such as `ctdb-event`).
pub fn installed_helper(exe: &Path, name: &str) -> PathBuf {
    let p = installed_helper_dir(exe).join(name);
    if p.exists() {
        p
    } else {
        Path::new("/usr/libexec/ctdb").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_program_finds_the_helpers_under_its_prefix() {
        let d = tempfile::tempdir().unwrap();
        let prefix = d.path().join("opt/ctdb-rs");
        std::fs::create_dir_all(prefix.join("sbin")).unwrap();
        let daemon = prefix.join("sbin/ctdbd");
        let tool = prefix.join("bin/ctdb");
        // No PREFIX/libexec/ctdb: Debian's directory.
        assert_eq!(
            installed_helper_dir(&daemon),
            Path::new("/usr/libexec/ctdb")
        );
        std::fs::create_dir_all(prefix.join("libexec/ctdb")).unwrap();
        assert_eq!(installed_helper_dir(&daemon), prefix.join("libexec/ctdb"));
        assert_eq!(installed_helper_dir(&tool), prefix.join("libexec/ctdb"));
        // A helper not installed there comes from Debian's directory.
        std::fs::write(prefix.join("libexec/ctdb/ctdb_natgw"), "").unwrap();
        assert_eq!(
            installed_helper(&tool, "ctdb_natgw"),
            prefix.join("libexec/ctdb/ctdb_natgw")
        );
        assert_eq!(
            installed_helper(&tool, "ctdb-event"),
            Path::new("/usr/libexec/ctdb/ctdb-event")
        );
        // Not in a bin or sbin directory (a build tree): Debian's.
        let built = d.path().join("target/release/ctdbd");
        assert_eq!(installed_helper_dir(&built), Path::new("/usr/libexec/ctdb"));
    }

    fn vars<'a>(v: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |k| v.iter().find(|(n, _)| *n == k).map(|(_, x)| x.into())
    }

    #[test]
    fn default_paths() {
        let p = Paths::from_vars(vars(&[])).unwrap();
        assert_eq!(p.socket("ctdbd"), PathBuf::from("/run/ctdb/ctdbd.socket"));
        assert_eq!(p.pidfile("ctdbd"), PathBuf::from("/run/ctdb/ctdbd.pid"));
        assert_eq!(p.config_file(), PathBuf::from("/etc/ctdb/ctdb.conf"));
    }

    #[test]
    fn test_mode_paths() {
        let p = Paths::from_vars(vars(&[("CTDB_TEST_MODE", "yes"), ("CTDB_BASE", "/b")])).unwrap();
        assert_eq!(p.socket("ctdbd"), PathBuf::from("/b/run/ctdbd.socket"));
        assert_eq!(p.config_file(), PathBuf::from("/b/ctdb.conf"));
        assert_eq!(p.vardir, PathBuf::from("/b/var"));
        assert!(Paths::from_vars(vars(&[("CTDB_TEST_MODE", "yes")])).is_err());
    }

    #[test]
    fn socket_override() {
        let p = Paths::from_vars(vars(&[("CTDB_SOCKET", "/s")])).unwrap();
        assert_eq!(p.socket("ctdbd"), PathBuf::from("/s"));
        assert_eq!(p.socket("eventd"), PathBuf::from("/run/ctdb/eventd.socket"));
    }
}
