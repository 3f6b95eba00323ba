//! Holding the lock: until the parent is gone or the lock is lost.
//!
//! The main thread wakes once a second and looks at its parent: once the
//! process that started the helper is gone (this process has another
//! parent), the lock goes too. (CTDB's helper looks every 5 s; a daemon
//! that died must not keep the cluster lock for longer than needed.)
//!
//! With a recheck interval, a second thread runs [`lock::check`] at that
//! interval; a check that fails ends the hold. A check can hang (a cluster
//! file system that no longer answers): with a ping timeout, a check
//! still running after that long ends the hold too, so the node gives up
//! the lock rather than keep it while its file system is gone. (CTDB's
//! helper runs its checks in a child process that pings the helper every
//! second; here the checks run in a thread of the same process, which the
//! POSIX lock allows as long as no descriptor of the file is closed: see
//! [`crate::lock`].)

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::args::Args;
use crate::lock::{self, Held, Lost};

/// Why the helper stopped holding the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The process that started the helper is gone.
    ParentGone,
    /// A check found the lock lost.
    Lost(Lost),
    /// A check has not ended after the ping timeout.
    CheckHung(Duration),
}

/// How often the main thread looks at its parent and at a running check.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Holds `held` until the parent `ppid` is gone or the lock is lost (see
/// the module documentation). `parent` says who the parent is now.
pub fn hold(held: Held, ppid: Pid, args: &Args, parent: impl Fn() -> Pid) -> End {
    if ppid == Pid::from_raw(1) {
        // Started by init (the starter was gone before we asked): nobody
        // to hold the lock for.
        return End::ParentGone;
    }
    let held = Arc::new(held);
    // When the running check started.
    let busy: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<Lost>();
    if !args.recheck.is_zero() {
        let (held, busy, every) = (Arc::clone(&held), Arc::clone(&busy), args.recheck);
        // The thread is never joined: a check that hangs must not keep
        // the process (and the lock) alive; it ends with the process.
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                *busy.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                let r = lock::check(&held);
                *busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if let Err(lost) = r {
                    let _ = tx.send(lost);
                    return;
                }
            }
        });
    }
    loop {
        match rx.recv_timeout(LOOK_EVERY) {
            Ok(lost) => return End::Lost(lost),
            // (Without checks `tx` stays here, so only this comes.)
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The checks stopped without a word (the thread panicked): the
            // lock can no longer be shown to be held.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return End::Lost(Lost("lock file checks stopped".into()));
            }
        }
        if parent() != ppid {
            return End::ParentGone;
        }
        if !args.ping_timeout.is_zero() {
            let since = *busy.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = since
                && t.elapsed() >= args.ping_timeout
            {
                return End::CheckHung(t.elapsed());
            }
        }
    }
}
