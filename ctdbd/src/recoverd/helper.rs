//! Running a helper program that reports its status on a pipe: CTDB's
//! recovery and takeover helpers are started as `helper <write fd>
//! <socket> ...` and write one 32-bit status to that descriptor before
//! they exit. While one runs, the leader keeps broadcasting that it leads,
//! so a long run does not look like a dead leader.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tracing::error;

use super::Recoverd;

/// The pipe a helper writes its status to.
pub(super) struct StatusPipe {
    rd: OwnedFd,
    wr: OwnedFd,
}

impl StatusPipe {
    /// A pipe whose write end the helper inherits under its own number;
    /// `None` (logged) when it cannot be made.
    pub(super) fn new(what: &str) -> Option<StatusPipe> {
        let (rd, wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                error!("Failed to create pipe for {what}: {e}");
                return None;
            }
        };
        if let Err(e) = nix::fcntl::fcntl(
            wr.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        ) {
            error!("Failed to prepare pipe for {what}: {e}");
            return None;
        }
        Some(StatusPipe { rd, wr })
    }

    /// The write end's number, the helper's first argument.
    pub(super) fn write_fd(&self) -> String {
        self.wr.as_raw_fd().to_string()
    }
}

/// How a helper run ended.
pub(super) enum HelperEnd {
    /// It could not be started or waited for, or ran past its limit and
    /// was killed (logged).
    Failed,
    /// It exited; whether with success, and the status it wrote (`None`:
    /// nothing).
    Exited { success: bool, status: Option<i32> },
}

impl Recoverd {
    /// Runs `cmd` (the program `what`, its arguments and environment set)
    /// with its output on the daemon's log, for at most `limit`.
    pub(super) async fn run_status_helper(
        &mut self,
        what: &str,
        mut cmd: tokio::process::Command,
        pipe: StatusPipe,
        limit: Duration,
    ) -> HelperEnd {
        cmd.envs(self.cfg.helper_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match self.cfg.log_file.as_ref().and_then(|f| f.try_clone().ok()) {
            Some(f) => {
                if let Ok(f2) = f.try_clone() {
                    cmd.stdout(f2);
                }
                cmd.stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let StatusPipe { rd, wr } = pipe;
        let child = cmd.spawn();
        drop(wr);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let prog = cmd.as_std().get_program().to_string_lossy().into_owned();
                error!("Failed to run {what} {prog}: {e}");
                return HelperEnd::Failed;
            }
        };
        let deadline = Instant::now() + limit;
        let waited = loop {
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                r = child.wait() => break Ok(r),
                _ = tick => {
                    if Instant::now() >= deadline {
                        break Err(());
                    }
                    if self.is_leader() {
                        self.leader_broadcast_send(self.leader);
                    }
                }
            }
        };
        let success = match waited {
            Ok(Ok(st)) => {
                if !st.success() {
                    error!("{what} exited with {st}");
                }
                st.success()
            }
            Ok(Err(e)) => {
                error!("waiting for {what} failed: {e}");
                return HelperEnd::Failed;
            }
            Err(()) => {
                error!("{what} timed out");
                let _ = child.kill().await;
                return HelperEnd::Failed;
            }
        };
        // Whatever the helper wrote is in the pipe by now; never wait on
        // a write end some stray grandchild might still hold.
        let _ = nix::fcntl::fcntl(
            rd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let mut b = [0u8; 4];
        let status = std::fs::File::from(rd)
            .read_exact(&mut b)
            .ok()
            .map(|()| i32::from_le_bytes(b));
        if status.is_none() {
            error!("{what} wrote no status");
        }
        HelperEnd::Exited { success, status }
    }
}
