//! The lock file: taking the cluster lock, and checking it is still held.
//!
//! The lock is a POSIX record lock (`fcntl` `F_SETLK`), for writing, on
//! the file's first byte, as CTDB's helper takes it: a helper of either
//! kind on another node (or in another process here) finds it taken.
//! POSIX record locks belong to the process, and closing *any* descriptor
//! of the file in that process drops them all; so while the lock is held
//! this process never opens the lock file again: the checks look its name
//! up in its directory (`faccessat`, `fstatat`) and lock through the one
//! descriptor that holds the lock.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, fcntl};
use nix::sys::stat::fstatat;
use nix::unistd::AccessFlags;

/// What trying to take the lock came to.
#[derive(Debug)]
pub enum Outcome {
    Taken(Held),
    /// Someone else holds it.
    Contention,
    /// The file could not be opened or locked (the message says why).
    Error(String),
}

impl Outcome {
    /// The character the daemon reads: `0` taken, `1` contention, `3` an
    /// error. (`2`, a timeout, is the daemon's own when a helper does not
    /// answer.)
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Taken(_) => b'0',
            Outcome::Contention => b'1',
            Outcome::Error(_) => b'3',
        }
    }
}

/// The lock, held: the descriptor that holds it, and the file it was
/// taken on. Dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct Held {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// The lock was lost, or cannot be shown to be still held: why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost(pub String);

/// Opens `path` (creating it, mode 0600) and takes the lock without
/// waiting.
pub fn take(path: &Path) -> Outcome {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            return Outcome::Error(format!(
                "Unable to open {} - ({})",
                path.display(),
                describe(&e)
            ));
        }
    };
    match set_lock(&file, 0, libc::F_WRLCK, false) {
        Ok(()) => {}
        Err(Errno::EACCES | Errno::EAGAIN) => return Outcome::Contention,
        Err(e) => {
            return Outcome::Error(format!(
                "Failed to get lock on '{}' - ({})",
                path.display(),
                e.desc()
            ));
        }
    }
    match file.metadata() {
        Ok(m) => Outcome::Taken(Held {
            dev: m.dev(),
            ino: m.ino(),
            file,
            path: path.to_owned(),
        }),
        Err(e) => Outcome::Error(format!(
            "lock lost - lock file \"{}\" stat failed ({})",
            path.display(),
            describe(&e)
        )),
    }
}

/// The directory `path` is in (`.` for a bare name) and its last part.
fn dir_and_name(path: &Path) -> (&Path, &OsStr) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    (dir, path.file_name().unwrap_or(path.as_os_str()))
}

/// An I/O error as C's `strerror` words it (no "os error N").
fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Locks (or with `F_UNLCK` unlocks) byte `start` of `file`, waiting for
/// it if `wait`.
fn set_lock(file: &File, start: i64, kind: libc::c_int, wait: bool) -> Result<(), Errno> {
    let fl = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    };
    loop {
        let arg = if wait {
            FcntlArg::F_SETLKW(&fl)
        } else {
            FcntlArg::F_SETLK(&fl)
        };
        match fcntl(file.as_raw_fd(), arg) {
            Err(Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// Whether the lock is still held on the file at its path: the path must
/// still name a file this process may read and write, the same file
/// (device and inode) as the one locked, and the file system must grant a
/// lock on the file's second byte (waiting for it: a cluster file system
/// in trouble shows as a check that does not end, which
/// [`crate::hold`] can time out). CTDB's helper checks the same three
/// things (it opens the file; this one may not, see the module
/// documentation).
pub fn check(held: &Held) -> Result<(), Lost> {
    let path = held.path.display();
    // The name is looked up in its directory, opened for the purpose: a
    // network file system checks a directory it opens with its server
    // (close-to-open), so a removal or replacement made on another node
    // is seen now, not when its cached attributes expire.
    let (dir, name) = dir_and_name(&held.path);
    let dir = File::open(dir).map_err(|e| {
        Lost(format!(
            "lock file \"{path}\" open failed ({})",
            describe(&e)
        ))
    })?;
    let at = Some(dir.as_raw_fd());
    nix::unistd::faccessat(
        at,
        name,
        AccessFlags::R_OK | AccessFlags::W_OK,
        AtFlags::empty(),
    )
    .map_err(|e| Lost(format!("lock file \"{path}\" open failed ({})", e.desc())))?;
    let st = fstatat(at, name, AtFlags::empty())
        .map_err(|e| Lost(format!("lock file \"{path}\" check failed ({})", e.desc())))?;
    if (st.st_dev, st.st_ino) != (held.dev, held.ino) {
        return Err(Lost(format!("lock file \"{path}\" inode changed")));
    }
    set_lock(&held.file, 1, libc::F_WRLCK, true).map_err(|e| {
        Lost(format!(
            "lock file \"{path}\" test lock error ({})",
            e.desc()
        ))
    })?;
    // Failing to unlock leaves a lock on a byte nobody else waits for
    // long (other holders' checks), and it goes with the process.
    let _ = set_lock(&held.file, 1, libc::F_UNLCK, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_lock_fails_its_check_once_the_file_is_replaced_or_removed() {
        // POSIX record locks do not conflict within one process, so
        // contention is tested across processes (tests/reference.rs);
        // here: taking, the file's mode, the checks.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = match take(&p) {
            Outcome::Taken(h) => h,
            o => panic!("{o:?}"),
        };
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(check(&held), Ok(()));
        // Replaced: another file under the same name.
        std::fs::write(d.path().join("new"), b"").unwrap();
        std::fs::rename(d.path().join("new"), &p).unwrap();
        let Err(Lost(why)) = check(&held) else {
            panic!("a replaced file passed the check");
        };
        assert!(why.contains("inode changed"), "{why}");
        // Removed.
        std::fs::remove_file(&p).unwrap();
        let Err(Lost(why)) = check(&held) else {
            panic!("a removed file passed the check");
        };
        assert!(why.contains("open failed"), "{why}");
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let o = take(&d.path().join("no/such/dir/lock"));
        assert_eq!(o.status(), b'3');
        let Outcome::Error(why) = o else { panic!() };
        assert!(why.starts_with("Unable to open "), "{why}");
    }
}
