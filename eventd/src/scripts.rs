//! A component's script directory: which files are scripts, which are
//! enabled, and enabling or disabling one, as CTDB 4.17 does it.
//!
//! A script is a directory entry named `[0-9][0-9].*.script`; its name is
//! the entry without `.script`. Scripts are listed in byte order of their
//! names. A script is enabled when the file it resolves to has the owner's
//! execute bit (a dangling symlink is disabled). Enabling or disabling sets
//! or clears all three execute bits of a regular file; a symlink is refused
//! (the tool removes or creates symlinks itself).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ctdb_protocol::event::errno;

/// One entry of a script directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub name: String,
    pub path: PathBuf,
    pub enabled: bool,
}

/// Whether a file name is a script's (`fnmatch("[0-9][0-9].*.script")`).
pub fn is_script_name(name: &[u8]) -> bool {
    name.len() >= 3 + ".script".len()
        && name[0].is_ascii_digit()
        && name[1].is_ascii_digit()
        && name[2] == b'.'
        && name.ends_with(b".script")
}

/// The scripts of `dir`, sorted; an error is the errno of reading it.
pub fn list(dir: &Path) -> Result<Vec<Script>, i32> {
    let rd = std::fs::read_dir(dir).map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
        let fname = ent.file_name();
        let bytes = fname.as_bytes();
        if !is_script_name(bytes) {
            continue;
        }
        let name = String::from_utf8_lossy(&bytes[..bytes.len() - ".script".len()]).into_owned();
        let path = dir.join(&fname);
        let enabled = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o100 != 0)
            .unwrap_or(false);
        out.push(Script {
            name,
            path,
            enabled,
        });
    }
    out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(out)
}

/// Enables (`+x`) or disables (`-x`) the script `name` (with or without
/// its `.script` suffix) in `dir`. Errors are the errno values 4.17's daemon
/// replies with: `ENOENT` (no such entry), `EINVAL` (not a script name, or a
/// symlink), or the error of opening or changing the file.
pub fn set_enabled(dir: &Path, name: &str, enable: bool) -> Result<(), i32> {
    let file = if name.len() > ".script".len() && name.ends_with(".script") {
        name.to_owned()
    } else {
        format!("{name}.script")
    };
    let rd = std::fs::read_dir(dir).map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
    let mut found_ino = None;
    for ent in rd.flatten() {
        if ent.file_name().as_bytes() == file.as_bytes() {
            if !is_script_name(file.as_bytes()) {
                return Err(errno::EINVAL);
            }
            found_ino = Some(ent.ino());
            break;
        }
    }
    let Some(ino) = found_ino else {
        return Err(errno::ENOENT);
    };
    let path = dir.join(&file);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
    let md = f
        .metadata()
        .map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))?;
    if md.ino() != ino {
        // The entry is a symlink to another file.
        return Err(errno::EINVAL);
    }
    let mode = md.mode() & 0o7777;
    let mode = if enable { mode | 0o111 } else { mode & !0o111 };
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.raw_os_error().unwrap_or(errno::EIO))
}

/// How a finished script process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcResult {
    /// The signal that killed it.
    pub sig: i32,
    /// An errno: it could not be run (`EACCES`, `ENOENT`, ...), it exited
    /// with 64 + errno (CTDB's convention for a failed exec), or
    /// `ETIMEDOUT`.
    pub err: i32,
    /// Its exit status otherwise.
    pub status: i32,
}

impl ProcResult {
    /// From a wait status' exit code or signal, as CTDB decodes them
    /// (exit codes 64..=254 are `64 + errno`).
    pub fn from_exit(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(c), _) if (64..255).contains(&c) => ProcResult {
                err: c - 64,
                ..Default::default()
            },
            (Some(c), _) => ProcResult {
                status: c,
                ..Default::default()
            },
            (None, Some(s)) => ProcResult {
                sig: s,
                ..Default::default()
            },
            (None, None) => ProcResult::default(),
        }
    }

    /// The script's result in a status: `-EINTR` when killed by a signal,
    /// `-errno` (`EACCES` shown as `-ENOEXEC`, i.e. disabled), or the exit
    /// status.
    pub fn summary(&self) -> i32 {
        if self.sig > 0 {
            -errno::EINTR
        } else if self.err > 0 {
            if self.err == errno::EACCES {
                -errno::ENOEXEC
            } else {
                -self.err
            }
        } else {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names() {
        assert!(is_script_name(b"00.ctdb.script"));
        assert!(is_script_name(b"99..script"));
        assert!(!is_script_name(b"0.x.script"));
        assert!(!is_script_name(b"00.x.script~"));
        assert!(!is_script_name(b"ab.x.script"));
        assert!(!is_script_name(b"00-x.script"));
    }

    #[test]
    fn list_enable_disable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("10.b.script"), "").unwrap();
        std::fs::write(p.join("02.a.script"), "").unwrap();
        std::fs::write(p.join("README"), "").unwrap();
        std::fs::write(p.join("ab.script"), "").unwrap();
        std::fs::write(p.join("03.x.script.bak"), "").unwrap();
        std::os::unix::fs::symlink("/nonexistent", p.join("05.dangling.script")).unwrap();
        std::os::unix::fs::symlink(p.join("02.a.script"), p.join("06.link.script")).unwrap();
        set_enabled(p, "10.b", true).unwrap();
        let l = list(p).unwrap();
        let names: Vec<_> = l.iter().map(|s| (s.name.as_str(), s.enabled)).collect();
        assert_eq!(
            names,
            [
                ("02.a", false),
                ("05.dangling", false),
                ("06.link", false),
                ("10.b", true)
            ]
        );
        set_enabled(p, "10.b.script", false).unwrap();
        assert!(!list(p).unwrap()[3].enabled);
        assert_eq!(set_enabled(p, "11.none", true), Err(errno::ENOENT));
        assert_eq!(set_enabled(p, "06.link", true), Err(errno::EINVAL));
        assert_eq!(set_enabled(p, "ab", true), Err(errno::EINVAL));
        assert_eq!(set_enabled(p, "README", true), Err(errno::ENOENT));
        assert_eq!(list(&p.join("nope")), Err(errno::ENOENT));
    }

    #[test]
    fn results_map_as_ctdb_maps_them() {
        assert_eq!(ProcResult::from_exit(Some(0), None).summary(), 0);
        assert_eq!(ProcResult::from_exit(Some(1), None).summary(), 1);
        assert_eq!(ProcResult::from_exit(Some(65), None).summary(), -1);
        assert_eq!(ProcResult::from_exit(Some(255), None).summary(), 255);
        assert_eq!(ProcResult::from_exit(Some(64 + 13), None).summary(), -8);
        assert_eq!(ProcResult::from_exit(None, Some(9)).summary(), -4);
    }
}
