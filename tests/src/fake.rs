//! Our `fake_ctdbd` (CTDB's fake daemon: a cluster described by a state
//! script) for tests of the programs that talk to a daemon, behind a guard
//! that stops it when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `fake_ctdbd`; SIGTERM (then SIGKILL if it has not ended
/// within 10 s) when dropped.
pub struct FakeDaemon {
    pidfile: PathBuf,
}

impl FakeDaemon {
    /// Starts `fake_ctdbd` serving `socket`, with `state` as its state
    /// script, its pid file (`fake.pid`) and database directory (`db`) in
    /// `dir`, and `CTDB_BASE` `dir` (nodes files are read from there, as
    /// CTDB's fake daemon does). `cmd` adds to the command (environment,
    /// where stderr goes: nowhere unless it says). The daemon backgrounds
    /// itself once its socket is served (or exits at once for a
    /// disconnected node); a start that fails fails the test.
    pub fn start(
        dir: &Path,
        socket: &Path,
        state: &str,
        cmd: impl FnOnce(&mut Command),
    ) -> FakeDaemon {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let pidfile = dir.join("fake.pid");
        let mut c = Command::new(crate::our_bin("fake_ctdbd"));
        c.args(["-d", "ERR", "-s"])
            .arg(socket)
            .arg("-p")
            .arg(&pidfile)
            .arg("-D")
            .arg(&db)
            .env("CTDB_BASE", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd(&mut c);
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(state.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "fake_ctdbd failed to start:\n{state}"
        );
        FakeDaemon { pidfile }
    }

    /// The daemon's pid, while its pid file is there.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
    }
}

/// Whether process `pid` has exited (gone, or a zombie: the daemon puts
/// itself in the background, so its parent is init, which may be slow to
/// reap it).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        // It removes its pid file and exits on SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !exited(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
