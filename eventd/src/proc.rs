//! Running one program as CTDB runs a script: in its own process group,
//! stdout and stderr into one pipe that is read while it runs, finished
//! when the process exits (not when the pipe closes, so a script that leaves
//! a daemon behind still finishes), with an optional deadline.
//!
//! A process that outlives its deadline is left running, as CTDB leaves it
//! (the caller may run the debug hook on it and then signal its group); it
//! is still reaped and its output drained when it ends, and [`kill_all`]
//! kills every process group still alive when the daemon shuts down. A run
//! that is dropped before the process ends (a cancelled monitor event)
//! kills the process group with SIGKILL.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use ctdb_protocol::event::errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

use crate::scripts::ProcResult;

thread_local! {
    /// Process groups of children not yet reaped.
    static ALIVE: RefCell<HashSet<i32>> = RefCell::new(HashSet::new());
}

/// Sends `sig` to every process group this daemon started that has not
/// been reaped.
pub fn kill_all(sig: Signal) {
    let all: Vec<i32> = ALIVE.with(|a| a.borrow().iter().copied().collect());
    for pgid in all {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// Sends `sig` to a process group.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub result: ProcResult,
    /// Everything the process wrote, up to the first NUL; `None` if it wrote
    /// nothing.
    pub output: Option<Vec<u8>>,
    /// The process (and group) id when it was left running at the deadline.
    pub pid: Option<i32>,
}

/// Appends as CTDB's reader does: each read is appended at the end of the
/// string read so far, so anything after a NUL is overwritten.
fn append_output(out: &mut Option<Vec<u8>>, chunk: &[u8]) {
    let buf = out.get_or_insert_with(Vec::new);
    if let Some(nul) = buf.iter().position(|&b| b == 0) {
        buf.truncate(nul);
    }
    buf.extend_from_slice(chunk);
}

fn finish_output(out: &mut Option<Vec<u8>>) {
    if let Some(buf) = out
        && let Some(nul) = buf.iter().position(|&b| b == 0)
    {
        buf.truncate(nul);
    }
}

/// A running child: on drop (the run was abandoned) its process group is
/// killed and the child reaped at once, as CTDB's SIGCHLD handler would.
struct Running {
    child: Option<tokio::process::Child>,
    pgid: i32,
}

impl Running {
    fn child(&mut self) -> &mut tokio::process::Child {
        self.child.as_mut().expect("child present until disarmed")
    }

    /// The run is over, or the process is handed on: no kill on drop.
    fn disarm(mut self) -> tokio::process::Child {
        self.child.take().expect("child present until disarmed")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_group(self.pgid, Signal::SIGKILL);
        let pgid = self.pgid;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = child.wait().await;
                ALIVE.with(|a| a.borrow_mut().remove(&pgid));
            });
        }
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(errno::EIO)
}

/// Runs `path` with `argv[0] = argv0` and `args`, until it exits or until
/// `deadline`. An `Err` is a failure to set the run up (no pipe, no fork).
pub async fn run(
    path: &Path,
    argv0: &str,
    args: &[String],
    deadline: Option<Instant>,
) -> Result<Outcome, i32> {
    // Not there, or not executable by its owner: not run at all.
    match std::fs::metadata(path) {
        Err(e) => {
            return Ok(Outcome {
                result: ProcResult {
                    err: errno_of(&e),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Ok(md) if md.permissions().mode() & 0o100 == 0 => {
            return Ok(Outcome {
                result: ProcResult {
                    err: errno::EACCES,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Ok(_) => {}
    }

    let (reader, writer) = std::io::pipe().map_err(|e| errno_of(&e))?;
    let writer2 = writer.try_clone().map_err(|e| errno_of(&e))?;
    let mut cmd = tokio::process::Command::new(path);
    cmd.as_std_mut()
        .arg0(argv0)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::from(OwnedFd::from(writer)))
        .stderr(Stdio::from(OwnedFd::from(writer2)))
        .process_group(0);
    let spawned = cmd.spawn();
    // The parent's copies of the write end go with the command.
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        // CTDB's child exits with 64 + errno when exec fails.
        Err(e) => {
            return Ok(Outcome {
                result: ProcResult {
                    err: errno_of(&e),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    ALIVE.with(|a| a.borrow_mut().insert(pid));
    let mut running = Running {
        child: Some(child),
        pgid: pid,
    };
    let mut rx = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(|e| errno_of(&e))?;

    let mut output: Option<Vec<u8>> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pipe_open = true;
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            r = rx.read(&mut chunk), if pipe_open => match r {
                Ok(0) | Err(_) => pipe_open = false,
                Ok(n) => append_output(&mut output, &chunk[..n]),
            },
            st = running.child().wait() => {
                ALIVE.with(|a| a.borrow_mut().remove(&pid));
                // Whatever is already in the pipe belongs to the output.
                while pipe_open {
                    match rx.try_read(&mut chunk) {
                        Ok(0) | Err(_) => pipe_open = false,
                        Ok(n) => append_output(&mut output, &chunk[..n]),
                    }
                }
                finish_output(&mut output);
                drop(running.disarm());
                let result = match st {
                    Ok(st) => ProcResult::from_exit(st.code(), st.signal()),
                    Err(e) => ProcResult { err: errno_of(&e), ..Default::default() },
                };
                return Ok(Outcome { result, output, pid: None });
            }
            _ = &mut sleep => {
                let mut child = running.disarm();
                finish_output(&mut output);
                // Left running: reap it and drain its output when it ends.
                tokio::task::spawn_local(async move {
                    let mut sink = vec![0u8; 16 * 1024];
                    let mut open = pipe_open;
                    loop {
                        tokio::select! {
                            r = rx.read(&mut sink), if open => {
                                if matches!(r, Ok(0) | Err(_)) { open = false; }
                            }
                            _ = child.wait() => break,
                        }
                    }
                    ALIVE.with(|a| a.borrow_mut().remove(&pid));
                });
                return Ok(Outcome {
                    result: ProcResult { err: errno::ETIMEDOUT, ..Default::default() },
                    output,
                    pid: Some(pid),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_at_a_nul_as_ctdb_keeps_it() {
        let mut o = None;
        append_output(&mut o, b"ab\0cd");
        append_output(&mut o, b"ef");
        finish_output(&mut o);
        assert_eq!(o.as_deref(), Some(&b"abef"[..]));
    }
}
