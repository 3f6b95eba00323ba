//! The daemon's side of the recovery daemon process: starting it (this
//! program again, `/proc/self/exe --recoverd ...`, so an upgrade that
//! replaced the binary on disk still starts the running version), its
//! pid, reaping it, stopping it.
//!
//! What the daemon does with it (restarts after a death or missed pings,
//! stopping at shutdown) is [`crate::monitor`]'s.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::RecoverdConfig;
use super::child::{CHILD_ARG, child_args};

/// The pid of the running recovery daemon (0: none), for
/// [`forward_signal`].
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// Passes `sig` on to the running recovery daemon, if any (SIGHUP, as CTDB
/// passes it, so it reopens its log too).
pub fn forward_signal(sig: Signal) {
    let pid = RUNNING.load(Ordering::Relaxed);
    if pid != 0 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
    }
}

/// A running (or just ended, not yet reaped) recovery daemon.
pub struct RecoverdProcess {
    child: Child,
    pid: u32,
}

impl RecoverdProcess {
    /// Starts a recovery daemon for `cfg`, logging at `level` until it
    /// reads the daemon's level. It is killed if this handle is dropped,
    /// and dies with this process (it asks for SIGTERM then).
    pub fn start(cfg: &RecoverdConfig, level: i32) -> std::io::Result<RecoverdProcess> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("ctdbd")
            .arg(CHILD_ARG)
            .args(child_args(cfg, std::process::id(), level))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        // Whatever it writes outside its log lines (a panic) goes where
        // the daemon logs.
        match &cfg.log_file {
            Some(f) => cmd.stderr(f.try_clone()?),
            None => cmd.stderr(Stdio::inherit()),
        };
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        RUNNING.store(pid, Ordering::Relaxed);
        Ok(RecoverdProcess { child, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps it if it has ended: its exit status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let st = match self.child.try_wait() {
            Ok(st) => st,
            Err(e) => {
                // Not ours to wait for any more (reaped elsewhere): it is
                // gone as far as we can tell; start another.
                tracing::warn!("Unable to wait for recovery daemon (pid:{}): {e}", self.pid);
                Some(std::os::unix::process::ExitStatusExt::from_raw(255 << 8))
            }
        };
        if st.is_some() {
            self.forget();
        }
        st
    }

    /// It is no longer the one signals are passed on to.
    fn forget(&self) {
        let _ = RUNNING.compare_exchange(self.pid, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Asks it to stop (SIGTERM: it releases the cluster lock and exits).
    pub fn terminate(&self) {
        self.forget();
        self.signal(Signal::SIGTERM);
    }

    /// Stops it at once.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    fn signal(&self, sig: Signal) {
        if self.pid != 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// Waits at most `limit` for it to end, then kills it; reaps it.
    pub async fn wait_or_kill(&mut self, limit: Duration) {
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            tracing::error!(
                "Recovery daemon (pid {}) did not exit within {} s of SIGTERM - killing it",
                self.pid,
                limit.as_secs()
            );
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for RecoverdProcess {
    fn drop(&mut self) {
        self.forget();
    }
}
