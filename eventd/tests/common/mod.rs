//! Test support: an event daemon (ours or the reference) in its own temp
//! `CTDB_BASE`, started as `ctdbd` 4.17 starts it (`-P pid -S fd`, waiting
//! for the start-up word on the pipe), the reference `ctdb-event` tool
//! against it, and a raw protocol client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctdb_protocol::Marshal;
use ctdb_protocol::event::{EventReply, EventRequest, EventRequestData};

pub const REF_EVENTD: &str = "/usr/libexec/ctdb/ctdb-eventd";
pub const REF_EVENT_TOOL: &str = "/usr/libexec/ctdb/ctdb-event";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reference,
    Ours,
}

pub const BOTH: [Kind; 2] = [Kind::Reference, Kind::Ours];

impl Kind {
    pub fn binary(self) -> PathBuf {
        match self {
            Kind::Reference => {
                assert!(
                    Path::new(REF_EVENTD).exists() && Path::new(REF_EVENT_TOOL).exists(),
                    "the reference ctdb-eventd/ctdb-event are missing: install Debian's ctdb \
                     (scripts/install-deps.sh)"
                );
                PathBuf::from(REF_EVENTD)
            }
            Kind::Ours => PathBuf::from(env!("CARGO_BIN_EXE_ctdb-eventd")),
        }
    }
}

/// Writes an executable (or not) script file.
pub fn write_script(path: &Path, body: &str, executable: bool) {
    std::fs::write(path, body).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Polls `f` until it holds or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running event daemon and its directory.
pub struct Eventd {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Our end of the start-up pipe: end-of-file when the daemon is gone.
    pub startup: Option<OwnedFd>,
}

impl Eventd {
    /// A `CTDB_BASE` with `run/`, `var/`, `events/legacy/` and
    /// `share/events/legacy/`, prepared by `setup`, and the daemon started in
    /// it, watching `parent` (this process by default).
    pub fn start(kind: Kind, setup: impl FnOnce(&Path)) -> Eventd {
        Self::start_watching(kind, std::process::id() as i32, setup)
    }

    pub fn start_watching(kind: Kind, parent: i32, setup: impl FnOnce(&Path)) -> Eventd {
        let dir = tempfile::Builder::new().prefix("eventd").tempdir().unwrap();
        let base = dir.path();
        for d in ["run", "var", "events/legacy", "share/events/legacy"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        setup(base);
        // As ctdbd: a pipe whose write end the daemon inherits.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            rd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
        let child = Command::new(kind.binary())
            .args(["-P", &parent.to_string(), "-S", &wr.as_raw_fd().to_string()])
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", base)
            .env_remove("CTDB_INTERACTIVE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(base.join("var/eventd.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        drop(wr);
        let mut ev = Eventd {
            kind,
            dir,
            child: Some(child),
            startup: Some(rd),
        };
        let word = ev.read_startup(Duration::from_secs(10));
        assert_eq!(word, Some(0), "{kind:?} eventd did not report a start");
        ev
    }

    /// Reads the start-up word (None at end-of-file or after `timeout`).
    pub fn read_startup(&mut self, timeout: Duration) -> Option<u32> {
        let fd = self.startup.as_ref().unwrap();
        let mut pfd = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)).unwrap();
        if n == 0 {
            return None;
        }
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        let mut b = [0u8; 4];
        match f.read(&mut b) {
            Ok(4) => Some(u32::from_ne_bytes(b)),
            _ => None,
        }
    }

    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    pub fn legacy(&self) -> PathBuf {
        self.base().join("events/legacy")
    }

    /// Runs the reference `ctdb-event` tool; returns (stdout, exit code)
    /// with this daemon's base directory replaced by `BASE`.
    pub fn tool(&self, args: &[&str]) -> (String, i32) {
        self.tool_env(args, &[])
    }

    pub fn tool_env(&self, args: &[&str], env: &[(&str, &str)]) -> (String, i32) {
        let out = Command::new(REF_EVENT_TOOL)
            .args(args)
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", self.base())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout)
            .replace(&self.base().display().to_string(), "BASE");
        (text, out.status.code().unwrap_or(-1))
    }

    /// Sends one request on a fresh connection and reads the reply.
    pub fn request(&self, data: EventRequestData) -> EventReply {
        let mut s = UnixStream::connect(self.base().join("run/eventd.socket")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = EventRequest {
            version: 0,
            reqid: 7,
            data,
        };
        s.write_all(&req.to_bytes()).unwrap();
        read_reply(&mut s)
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().ok()?.code()
    }
}

impl Drop for Eventd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads one reply packet.
pub fn read_reply(s: &mut UnixStream) -> EventReply {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let n = u32::from_ne_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    buf[..4].copy_from_slice(&len);
    s.read_exact(&mut buf[4..]).unwrap();
    let (r, used) = EventReply::pull(&buf).unwrap();
    assert_eq!(used, n, "reply length field and content differ");
    // Our encoding of what either daemon sent is byte for byte what it sent.
    assert_eq!(r.to_bytes(), buf, "re-encoded reply differs from the wire");
    r
}

/// Masks the times of `ctdb-event status` lines: `NAME STATE [secs date]`
/// becomes `NAME STATE`.
pub fn mask_times(s: &str) -> String {
    s.lines()
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.len() > 2 && matches!(t[1], "OK" | "ERROR" | "TIMEDOUT") {
                format!("{} {} <time>", t[0], t[1])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
