//! The cluster lock, taken through a mutex helper process as CTDB does.
//!
//! The lock setting is either `!COMMAND ARGS...` (run that helper) or a
//! plain path (run `ctdb_mutex_fcntl_helper PATH`, from
//! `CTDB_CLUSTER_MUTEX_HELPER` or the helper directory). The helper writes
//! one ASCII character to its stdout: `0` lock taken, `1` contention, `2`
//! timeout, anything else (or nothing) an error. Holding the lock means
//! keeping the helper alive; it is released with SIGTERM. If the helper
//! exits while we hold the lock, the lock is lost.
//!
//! The helper dies with the process that started it (the recovery
//! daemon, or the daemon for its lock check): it is started through this
//! program again (`ctdbd --exec-child-of PID HELPER ARGS...`, [`exec_main`]),
//! which asks for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`, kept
//! across `exec`), checks the parent is still `PID`, and becomes the helper.
//! A helper therefore never holds the lock for a recovery daemon that is
//! gone (CTDB's fcntl helper polls for its parent every 5 s; helpers given
//! as `!COMMAND` need not poll at all).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout, Command};
use tracing::{debug, error};

/// The helper's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStatus {
    Taken,
    Contention,
    Timeout,
    Error,
}

impl LockStatus {
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'0' => LockStatus::Taken,
            b'1' => LockStatus::Contention,
            b'2' => LockStatus::Timeout,
            _ => LockStatus::Error,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            LockStatus::Taken => b'0',
            LockStatus::Contention => b'1',
            LockStatus::Timeout => b'2',
            LockStatus::Error => b'3',
        }
    }
}

/// The first argument that makes `ctdbd` the exec shim of [`exec_main`].
pub const EXEC_ARG: &str = "--exec-child-of";

/// `main` of `ctdbd --exec-child-of PPID PROGRAM ARGS...`: die with parent
/// `PPID` (SIGTERM), then run PROGRAM (searched in `PATH`) in this process.
/// Returns only on failure, with the exit status.
pub fn exec_main(args: &[std::ffi::OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let [ppid, prog, ..] = args else {
        eprintln!("ctdbd {EXEC_ARG}: usage: PPID PROGRAM [ARGS...]");
        return 127;
    };
    let Some(ppid) = ppid.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        eprintln!("ctdbd {EXEC_ARG}: bad parent pid {ppid:?}");
        return 127;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("ctdbd {EXEC_ARG}: cannot ask to die with the parent: {e}");
        return 127;
    }
    if nix::unistd::getppid().as_raw() != ppid {
        // The parent died before the line above: nobody waits for us.
        return 1;
    }
    // std's exec resets what this process changed (SIGPIPE, the signal
    // mask) before `execvp`, as for any child it starts.
    let e = std::process::Command::new(prog).args(&args[2..]).exec();
    eprintln!("Unable to run helper {}: {e}", prog.to_string_lossy());
    127
}

/// A command that runs `prog` through the exec shim ([`exec_main`]), so
/// the helper dies with this process (the recovery daemon) even when it
/// ends by `exit` or SIGKILL, where `kill_on_drop` never runs. Inherited
/// file descriptors (a helper's status pipe) pass through the shim.
/// Spawn it from a thread that lives as long as the process (the
/// parent-death signal follows the spawning thread).
pub fn dying_with_us(prog: &Path) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("ctdbd")
        .arg(EXEC_ARG)
        .arg(std::process::id().to_string())
        .arg(prog);
    cmd
}

/// The argv of the helper for lock setting `lock`.
pub fn helper_argv(lock: &str, helper_dir: &Path) -> Result<Vec<String>, String> {
    if let Some(cmd) = lock.strip_prefix('!') {
        let argv: Vec<String> = cmd
            .split([' ', '\t'])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if argv.is_empty() {
            return Err(format!("Mutex helper command is empty \"{lock}\""));
        }
        return Ok(argv);
    }
    let helper = std::env::var_os("CTDB_CLUSTER_MUTEX_HELPER")
        .map(PathBuf::from)
        .unwrap_or_else(|| helper_dir.join("ctdb_mutex_fcntl_helper"));
    if !helper.is_file() {
        return Err(format!(
            "Unable to set cluster mutex helper \"{}\" - not found",
            helper.display()
        ));
    }
    Ok(vec![helper.display().to_string(), lock.to_owned()])
}

/// A running mutex helper that has answered.
pub struct HeldMutex {
    child: Child,
    stdout: ChildStdout,
    pub latency: Duration,
}

impl HeldMutex {
    /// Waits until the helper exits or closes its stdout: the lock is lost.
    pub async fn lost(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// Releases the lock: SIGTERM to the helper, then reap it in the
    /// background.
    pub fn release(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        });
    }
}

/// Runs the helper for `lock` and waits (at most `timeout`, none if zero)
/// for its answer. With [`LockStatus::Taken`], the helper is returned
/// still running: it holds the lock until released.
pub async fn take(
    lock: &str,
    helper_dir: &Path,
    stderr: Option<&std::fs::File>,
    env: &[(String, String)],
    timeout: Duration,
) -> (LockStatus, Option<HeldMutex>) {
    let argv = match helper_argv(lock, helper_dir) {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            return (LockStatus::Error, None);
        }
    };
    let start = Instant::now();
    let mut cmd = dying_with_us(Path::new(&argv[0]));
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    match stderr.and_then(|f| f.try_clone().ok()) {
        Some(f) => cmd.stderr(f),
        None => cmd.stderr(Stdio::null()),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!("Unable to run cluster mutex helper {}: {e}", argv[0]);
            return (LockStatus::Error, None);
        }
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut b = [0u8; 1];
    let read = async { stdout.read(&mut b).await };
    let status = if timeout.is_zero() {
        read.await.ok()
    } else {
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r.ok(),
            Err(_) => {
                debug!("cluster mutex helper timed out");
                let _ = child.kill().await;
                return (LockStatus::Timeout, None);
            }
        }
    };
    let status = match status {
        Some(1) => LockStatus::from_byte(b[0]),
        _ => LockStatus::Error,
    };
    if status == LockStatus::Taken {
        (
            status,
            Some(HeldMutex {
                child,
                stdout,
                latency: start.elapsed(),
            }),
        )
    } else {
        let _ = child.kill().await;
        (status, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_forms() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            helper_argv("!/bin/lock  a\tb", d.path()).unwrap(),
            vec!["/bin/lock", "a", "b"]
        );
        assert!(helper_argv("!", d.path()).is_err());
        // Plain path: the fcntl helper from the helper directory.
        assert!(helper_argv("/shared/lock", d.path()).is_err());
        std::fs::write(d.path().join("ctdb_mutex_fcntl_helper"), "").unwrap();
        let a = helper_argv("/shared/lock", d.path()).unwrap();
        assert!(a[0].ends_with("ctdb_mutex_fcntl_helper"));
        assert_eq!(a[1], "/shared/lock");
    }
}
