//! Starting the event daemon and talking to it, as CTDB 4.17's `ctdbd`
//! does (`server/eventscript.c`).
//!
//! * [`find_eventd`]: `CTDB_EVENTD`, else `ctdb-eventd` in the helper
//!   directory (`CTDB_TEST_HELPER_BINDIR` or `/usr/libexec/ctdb`).
//! * [`Eventd::start`]: removes a stale socket, runs
//!   `ctdb-eventd -P <ctdbd pid> -S <fd>` with the write end of a pipe as
//!   `fd`, and waits up to 10 s for the `unsigned int` 0 it writes once it
//!   listens (another value is `EIO`, end-of-file `EPIPE`, no answer
//!   `ETIMEDOUT`; the daemon is then killed). Afterwards the pipe is the
//!   daemon's lifeline: [`Eventd::gone`] resolves at its end-of-file, and
//!   `ctdbd` exits ("Eventd went away - exiting"), as CTDB does.
//! * [`EventClient`]: one connection to `RUNDIR/eventd.socket`; requests
//!   may overlap, replies are matched by reqid.
//!
//! The results are the event protocol's errno values
//! (`ctdb_protocol::event`): `run` gives 0, `ENOEXEC` (a script failed),
//! `ETIMEDOUT`, `ECANCELED` (a monitor cancelled or refused), `ENOENT`...

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctdb_protocol::Marshal;
use ctdb_protocol::event::{
    EventReply, EventRequest, EventRequestData, RunRequest, ScriptAction, ScriptRequest,
    StatusReply, StatusRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tracing::{error, info};

/// Why the event daemon could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum EventdError {
    #[error("failed to start event daemon {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to initialize event daemon ({0})")]
    Startup(i32),
    #[error("event daemon connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("event daemon reply: {0}")]
    Protocol(#[from] ctdb_protocol::Error),
    #[error("event daemon connection closed")]
    Closed,
}

/// The event daemon's path: `CTDB_EVENTD`, else `helper_dir/ctdb-eventd`.
pub fn find_eventd(helper_dir: &Path) -> PathBuf {
    std::env::var_os("CTDB_EVENTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| helper_dir.join("ctdb-eventd"))
}

/// A started event daemon.
pub struct Eventd {
    child: tokio::process::Child,
    lifeline: pipe::Receiver,
}

impl Eventd {
    /// Starts `path` for the daemon whose pid is `ctdbd_pid`, serving
    /// `socket` (the path the event daemon derives from the same
    /// environment), and waits for it to report a start. `env` is added to
    /// the environment the event daemon and its scripts inherit (ctdbd 4.17
    /// exports `CTDB_BASE`, `CTDB_LOGGING`, `CTDB_DEBUGLEVEL`, and
    /// `CTDB_INTERACTIVE` when interactive).
    pub async fn start(
        path: &Path,
        socket: &Path,
        ctdbd_pid: u32,
        env: &[(String, String)],
    ) -> Result<Eventd, EventdError> {
        let _ = std::fs::remove_file(socket);
        let (rd, wr) = std::io::pipe()?;
        let wr = OwnedFd::from(wr);
        // The write end is inherited at its number: clear close-on-exec just
        // for this spawn (the loop is single-threaded, nothing else spawns
        // in between), and close our copy right after.
        nix::fcntl::fcntl(
            wr.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(std::io::Error::from)?;
        info!(
            "Starting event daemon {} -P {ctdbd_pid} -S {}",
            path.display(),
            wr.as_raw_fd()
        );
        let spawned = tokio::process::Command::new(path)
            .arg("-P")
            .arg(ctdbd_pid.to_string())
            .arg("-S")
            .arg(wr.as_raw_fd().to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .spawn();
        drop(wr);
        let mut child = spawned.map_err(|source| EventdError::Spawn {
            path: path.to_owned(),
            source,
        })?;
        let mut lifeline = pipe::Receiver::from_owned_fd(OwnedFd::from(rd))?;
        let mut word = [0u8; 4];
        let ret =
            match tokio::time::timeout(Duration::from_secs(10), lifeline.read_exact(&mut word))
                .await
            {
                Err(_) => libc::ETIMEDOUT,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => libc::EPIPE,
                Ok(Err(e)) => e.raw_os_error().unwrap_or(libc::EIO),
                Ok(Ok(_)) if u32::from_ne_bytes(word) == 0 => 0,
                Ok(Ok(_)) => libc::EIO,
            };
        if ret != 0 {
            let _ = child.start_kill();
            let _ = child.wait().await;
            error!("Failed to initialize event daemon ({ret})");
            return Err(EventdError::Startup(ret));
        }
        Ok(Eventd { child, lifeline })
    }

    /// Resolves when the event daemon has gone (its end of the start-up
    /// pipe closed).
    pub async fn gone(&mut self) {
        let mut b = [0u8; 64];
        loop {
            match self.lifeline.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Stops the daemon (SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<EventReply>>>>;

/// A connection to the event daemon.
pub struct EventClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_reqid: AtomicU32,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EventClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_replies(mut rd: tokio::net::unix::OwnedReadHalf, pending: Pending) {
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u32::from_ne_bytes(len) as usize;
        if n < ctdb_protocol::event::HEADER_SIZE {
            error!("event daemon sent a packet of {n} bytes");
            break;
        }
        let mut buf = vec![0u8; n];
        buf[..4].copy_from_slice(&len);
        if rd.read_exact(&mut buf[4..]).await.is_err() {
            break;
        }
        match EventReply::pull(&buf) {
            Ok((reply, _)) => {
                let tx = pending.lock().unwrap().remove(&reply.reqid);
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            Err(e) => {
                error!("bad reply from the event daemon: {e}");
                break;
            }
        }
    }
    // Waiters see the connection closed.
    pending.lock().unwrap().clear();
}

impl EventClient {
    pub async fn connect(socket: &Path) -> Result<EventClient, EventdError> {
        let stream = UnixStream::connect(socket).await?;
        let (rd, wr) = stream.into_split();
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_replies(rd, pending.clone()));
        Ok(EventClient {
            writer: tokio::sync::Mutex::new(wr),
            pending,
            next_reqid: AtomicU32::new(1),
            reader,
        })
    }

    async fn request(&self, data: EventRequestData) -> Result<EventReply, EventdError> {
        let reqid = self.next_reqid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(reqid, tx);
        let req = EventRequest {
            version: 0,
            reqid,
            data,
        };
        let sent = self.writer.lock().await.write_all(&req.to_bytes()).await;
        if let Err(e) = sent {
            self.pending.lock().unwrap().remove(&reqid);
            return Err(e.into());
        }
        rx.await.map_err(|_| EventdError::Closed)
    }

    /// Runs `event` of `component` with `args` within `timeout` seconds;
    /// returns the daemon's result (0, `ENOEXEC`, `ETIMEDOUT`, `ECANCELED`...).
    pub async fn run(
        &self,
        component: &str,
        event: &str,
        args: Option<&str>,
        timeout: u32,
    ) -> Result<i32, EventdError> {
        let r = self
            .request(EventRequestData::Run(RunRequest {
                component: Some(component.into()),
                event: Some(event.into()),
                args: args.map(str::to_owned),
                timeout,
                flags: 0,
            }))
            .await?;
        Ok(r.result)
    }

    /// The last result of `event`: `Err(errno)` is the daemon's refusal
    /// (`EINVAL`: never run; `ENOENT`: no such component).
    pub async fn status(
        &self,
        component: &str,
        event: &str,
    ) -> Result<Result<StatusReply, i32>, EventdError> {
        let r = self
            .request(EventRequestData::Status(StatusRequest {
                component: Some(component.into()),
                event: Some(event.into()),
            }))
            .await?;
        Ok(match (r.result, r.status) {
            (0, Some(s)) => Ok(s),
            (0, None) => Err(libc::EIO),
            (e, _) => Err(e),
        })
    }

    /// Enables or disables a script; returns the daemon's result.
    pub async fn script(
        &self,
        component: &str,
        script: &str,
        enable: bool,
    ) -> Result<i32, EventdError> {
        let action = if enable {
            ScriptAction::Enable
        } else {
            ScriptAction::Disable
        };
        let r = self
            .request(EventRequestData::Script(ScriptRequest {
                component: Some(component.into()),
                script: Some(script.into()),
                action,
            }))
            .await?;
        Ok(r.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn our_eventd() -> PathBuf {
        // target/<profile>/deps/<test> -> target/<profile>/ctdb-eventd
        let exe = std::env::current_exe().unwrap();
        let p = exe.parent().unwrap().parent().unwrap().join("ctdb-eventd");
        assert!(
            p.is_file(),
            "{} not built: cargo build --workspace --bins",
            p.display()
        );
        p
    }

    fn script(path: &Path, body: &str) {
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Starts the daemon as ctdbd does, runs events (two at once: the later
    /// one cancels the monitor), reads the status, and sees the daemon go.
    async fn scenario(eventd: &Path) -> Vec<String> {
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        std::fs::create_dir_all(base.join("run")).unwrap();
        std::fs::create_dir_all(base.join("events/legacy")).unwrap();
        script(
            &base.join("events/legacy/01.test.script"),
            "#!/bin/sh\ncase \"$1\" in\n monitor) touch \"$CTDB_BASE/monitor\"; sleep 5 ;;\n \
             startup) echo \"no $2\"; exit 1 ;;\nesac\nexit 0\n",
        );
        let socket = base.join("run/eventd.socket");
        let mut out = Vec::new();
        let mut ev = start_in(eventd, base, &socket).await;
        let c = EventClient::connect(&socket).await.unwrap();
        out.push(format!(
            "init {}",
            c.run("legacy", "init", None, 10).await.unwrap()
        ));
        out.push(format!(
            "startup {}",
            c.run("legacy", "startup", Some("x"), 10).await.unwrap()
        ));
        let st = c.status("legacy", "startup").await.unwrap().unwrap();
        out.push(format!(
            "status {} {:?}",
            st.summary,
            st.scripts
                .iter()
                .map(|s| (s.name.clone(), s.result, s.output.clone()))
                .collect::<Vec<_>>()
        ));
        out.push(format!(
            "never {:?}",
            c.status("legacy", "takeip").await.unwrap().err()
        ));
        let monitor = c.run("legacy", "monitor", None, 30);
        let other = async {
            while !base.join("monitor").exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.run("legacy", "startrecovery", None, 30).await
        };
        let (m, o) = tokio::join!(monitor, other);
        out.push(format!(
            "monitor {} startrecovery {}",
            m.unwrap(),
            o.unwrap()
        ));
        // The daemon goes: the lifeline says so.
        let pid = ev.pid().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        tokio::time::timeout(Duration::from_secs(20), ev.gone())
            .await
            .expect("lifeline closed");
        ev.stop().await;
        out
    }

    async fn start_in(eventd: &Path, base: &Path, socket: &Path) -> Eventd {
        // Eventd::start uses the inherited environment; run it through a
        // wrapper that sets CTDB_BASE for the daemon only.
        let wrapper = base.join("eventd-wrapper.sh");
        script(
            &wrapper,
            &format!(
                "#!/bin/sh\nCTDB_TEST_MODE=yes CTDB_BASE='{}' exec '{}' \"$@\"\n",
                base.display(),
                eventd.display()
            ),
        );
        Eventd::start(&wrapper, socket, std::process::id(), &[])
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn runs_events_on_ours_and_the_reference_alike() {
        let reference = Path::new("/usr/libexec/ctdb/ctdb-eventd");
        assert!(reference.exists(), "the reference ctdb-eventd is missing");
        let a = scenario(reference).await;
        let b = scenario(&our_eventd()).await;
        assert_eq!(a[0], "init 0");
        assert_eq!(a[1], format!("startup {}", libc::ENOEXEC));
        assert!(
            a[2].contains("Some(\"01.test\"), 1, Some([110, 111, 32, 120, 10])"),
            "{}",
            a[2]
        );
        assert_eq!(a[3], format!("never Some({})", libc::EINVAL));
        assert_eq!(a[4], format!("monitor {} startrecovery 0", libc::ECANCELED));
        assert_eq!(a, b);
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_start_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("bad.sh");
        script(&bad, "#!/bin/sh\nexit 1\n");
        let r = Eventd::start(&bad, &d.path().join("s"), std::process::id(), &[]).await;
        assert!(matches!(r, Err(EventdError::Startup(e)) if e == libc::EPIPE));
    }
}
