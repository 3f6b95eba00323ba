//! Running a takeover helper (CTDB's or ours) against `fake_ctdbd` serving
//! a scripted cluster, and collecting what it did: its exit code, the
//! status it wrote, the address controls the fake received (through
//! `FAKE_CTDBD_CONTROL_LOG`) and its log lines.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctdb_client::Client;
use ctdb_protocol::types::Tunable;
use ctdb_tests::fake::FakeDaemon;

/// CTDB 4.17's helper, from Debian's package.
pub const REFERENCE_HELPER: &str = "/usr/libexec/ctdb/ctdb_takeover_helper";

/// The two helpers under comparison; fails (never skips) when the
/// reference is missing.
pub fn helpers() -> [(&'static str, PathBuf); 2] {
    ctdb_tests::require_reference();
    assert!(
        Path::new(REFERENCE_HELPER).is_file(),
        "{REFERENCE_HELPER} missing: run scripts/install-deps.sh"
    );
    [
        ("reference", PathBuf::from(REFERENCE_HELPER)),
        ("ours", ctdb_tests::our_bin("ctdb_takeover_helper")),
    ]
}

/// A scripted cluster for one run.
#[derive(Debug, Clone)]
pub struct Case {
    /// `fake_ctdbd`'s input.
    pub script: String,
    /// Tunables set on the current node before the run.
    pub tunables: Vec<(&'static str, u32)>,
    /// The helper's optional third argument.
    pub force: Option<String>,
    /// `CTDB_DISABLE_IP_FAILOVER` set.
    pub failover_disabled: bool,
}

/// What one helper did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Option<i32>,
    /// The `int` written to the status fd, if four bytes were written.
    pub status: Option<i32>,
    /// The fake's control log, sorted (the helpers send concurrently).
    pub controls: Vec<String>,
    /// The helper's log messages (without time, host and pid), in order.
    pub log: Vec<String>,
}

impl Outcome {
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.controls
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }
}

/// A running `fake_ctdbd` (on `sock` in its directory, logging the
/// controls it receives), stopped when dropped.
struct Fake(FakeDaemon);

impl Fake {
    fn start(dir: &Path, script: &str, control_log: &Path) -> Fake {
        Fake(FakeDaemon::start(dir, &dir.join("sock"), script, |c| {
            c.env("FAKE_CTDBD_CONTROL_LOG", control_log);
        }))
    }

    /// How many sockets the fake has open (a client connection is one
    /// until the fake has handled everything the client sent).
    fn open_fds(&self) -> Option<usize> {
        let pid = self.0.pid()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        Some(
            fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count(),
        )
    }

    /// Waits (up to 10 s) until the fake has at most `n` sockets open:
    /// the connections of clients that are gone have been read to their
    /// end. A helper's last message (a ban request) may still be in its
    /// socket when the helper exits, and stopping the fake then loses it.
    fn settle(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open_fds().is_some_and(|m| m > n) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn set_tunables(socket: &Path, tunables: &[(&'static str, u32)]) {
    if tunables.is_empty() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::connect(socket).await.unwrap();
        let me = c.pnn();
        for (name, value) in tunables {
            let t = Tunable {
                name: (*name).to_owned(),
                value: *value,
            };
            // Status 1: an obsolete tunable (NoIPHostOnAllDisabled in
            // 4.17), accepted and ignored.
            let st = c
                .control_status(me, ctdb_protocol::ControlRequest::SetTunable(t))
                .await
                .unwrap();
            assert!(st == 0 || st == 1, "setting {name}: status {st}");
        }
    });
}

/// The message of a log line: what follows `ctdb-takeover[pid]: `, or the
/// whole line, without the C source location some of CTDB's messages start
/// with (`../../ctdb/server/ipalloc_common.c:110 `).
fn message(line: &str) -> String {
    let m = match line.find("ctdb-takeover[") {
        Some(i) => match line[i..].find("]: ") {
            Some(j) => &line[i + j + 3..],
            None => line,
        },
        None => line,
    };
    // `path.c:LINE`, then maybe a space.
    if let Some(i) = m.find(".c:")
        && !m[..i].contains(' ')
    {
        let rest = &m[i + 3..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            let rest = &rest[digits..];
            return rest.strip_prefix(' ').unwrap_or(rest).to_owned();
        }
    }
    m.to_owned()
}

/// Runs `helper` once against a fresh fake daemon serving `case`, in `dir`
/// (which must be empty).
pub fn run(helper: &Path, case: &Case, dir: &Path, level: &str) -> Outcome {
    let control_log = dir.join("controls");
    let fake = Fake::start(dir, &case.script, &control_log);
    let idle_fds = fake.open_fds().unwrap_or(usize::MAX);
    let socket = dir.join("sock");
    set_tunables(&socket, &case.tunables);

    let mut cmd = Command::new(helper);
    // The status goes to standard output (fd 1); logs to standard error.
    cmd.arg("1").arg(&socket);
    if let Some(f) = &case.force {
        cmd.arg(f);
    }
    cmd.env("CTDB_LOGGING", "file:")
        .env("CTDB_DEBUGLEVEL", level)
        .env_remove("CTDB_DISABLE_IP_FAILOVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if case.failover_disabled {
        cmd.env("CTDB_DISABLE_IP_FAILOVER", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = Vec::new();
    out.read_to_end(&mut status).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not finish within 60 s", helper.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stderr = errs.join().unwrap();
    fake.settle(idle_fds);
    drop(fake);
    let mut controls: Vec<String> = std::fs::read_to_string(&control_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    controls.sort();
    Outcome {
        exit,
        status: <[u8; 4]>::try_from(status.as_slice())
            .ok()
            .map(i32::from_ne_bytes),
        controls,
        log: stderr.lines().map(message).collect(),
    }
}

/// Runs both helpers on `case`; returns (reference, ours).
pub fn run_both(case: &Case, dir: &Path, level: &str) -> (Outcome, Outcome) {
    let [(_, reference), (_, ours)] = helpers();
    let a = dir.join("reference");
    let b = dir.join("ours");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    (
        run(&reference, case, &a, level),
        run(&ours, case, &b, level),
    )
}
