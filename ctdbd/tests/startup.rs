//! Start-up as CTDB does it: configuration errors stop the daemon with a
//! clear message before it goes into the background; unknown options only
//! warn; the socket and pid file are where CTDB puts them in test mode;
//! `--interactive` stays in the foreground; SIGTERM shuts it down cleanly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ctdbd");

/// A node directory for a one-node cluster on `ip`.
fn node_dir(ip: &str, conf_extra: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let b = d.path();
    // events/legacy: the event scripts' directory, which CTDB (and ours)
    // needs to run the init event at start-up.
    for sub in [
        "run",
        "var",
        "db/volatile",
        "db/persistent",
        "db/state",
        "shared",
        "events/legacy",
    ] {
        std::fs::create_dir_all(b.join(sub)).unwrap();
    }
    std::fs::write(b.join("nodes"), format!("{ip}\n")).unwrap();
    let conf = format!(
        "[logging]\n\tlocation = file:{b}/log.ctdb\n\tlog level = NOTICE\n[cluster]\n\tnode address = {ip}\n[database]\n\tvolatile database directory = {b}/db/volatile\n\tpersistent database directory = {b}/db/persistent\n\tstate database directory = {b}/db/state\n{conf_extra}",
        b = b.display()
    );
    std::fs::write(b.join("ctdb.conf"), conf).unwrap();
    d
}

fn ctdbd(base: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("CTDB_TEST_MODE", "yes")
        .env("CTDB_BASE", base)
        .env("CTDB_TEST_HELPER_BINDIR", "/usr/libexec/ctdb")
        .stdin(Stdio::null());
    c
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Stops a daemon started in the background, by its pid file.
struct Running(i32);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn bad_values_are_start_up_errors() {
    for (extra, needle) in [
        ("[cluster]\n\tleader timeout = 0\n", "leader timeout"),
        ("[failover]\n\tdisabled = perhaps\n", "disabled"),
        ("[logging]\n\tlog level = LOUDLY\n", "log level"),
        ("[cluster]\n\ttransport = ib\n", "transport"),
    ] {
        let d = node_dir("127.77.0.1", extra);
        let out = ctdbd(d.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: started anyway");
        assert!(err.contains(needle), "{extra}: unclear error: {err}");
        assert!(!d.path().join("run/ctdbd.pid").exists());
    }
    // A nodes file with garbage, a node address not in it, a bad tunable.
    let d = node_dir("127.77.0.1", "");
    std::fs::write(d.path().join("nodes"), "127.77.0.1\nnonsense\n").unwrap();
    let out = ctdbd(d.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
    let d = node_dir("127.77.0.1", "");
    std::fs::write(d.path().join("ctdb.tunables"), "KeepaliveInterval=soon\n").unwrap();
    let out = ctdbd(d.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KeepaliveInterval"));
    let d = node_dir("127.77.0.1", "");
    std::fs::write(d.path().join("nodes"), "127.77.0.2\n").unwrap();
    let out = ctdbd(d.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PNN"));
}

#[test]
fn daemonises_with_ctdbs_paths_and_warns_on_unknown_options() {
    let d = node_dir("127.77.0.2", "[cluster]\n\tno such option = 1\n");
    std::fs::write(d.path().join("ctdb.tunables"), "KeepaliveInterval=2\n").unwrap();
    let st = ctdbd(d.path()).status().unwrap();
    assert!(st.success());
    // The parent has returned; the daemon serves its socket in the
    // background under CTDB_BASE/run.
    let pid: i32 = std::fs::read_to_string(d.path().join("run/ctdbd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = Running(pid);
    assert!(alive(pid));
    assert!(d.path().join("run/ctdbd.socket").exists());
    let log = std::fs::read_to_string(d.path().join("log.ctdb")).unwrap();
    assert!(
        log.contains("unknown option [cluster] -> \"no such option\""),
        "{log}"
    );
    assert!(log.contains("PNN is 0"), "{log}");
    // The tunable from ctdb.tunables is in force.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v = rt.block_on(async {
        let c = ctdb_client::Client::connect(d.path().join("run/ctdbd.socket"))
            .await
            .unwrap();
        c.get_tunable(
            ctdb_protocol::header::CTDB_CURRENT_NODE,
            "KeepaliveInterval",
        )
        .await
        .unwrap()
    });
    assert_eq!(v, 2);
    // SIGTERM: clean shutdown, socket and pid file removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("the daemon to exit", || !alive(pid));
    assert!(!d.path().join("run/ctdbd.pid").exists());
    assert!(!d.path().join("run/ctdbd.socket").exists());
}

#[test]
fn interactive_stays_in_the_foreground() {
    let d = node_dir("127.77.0.3", "");
    let mut child = ctdbd(d.path())
        .arg("--interactive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = d.path().join("run/ctdbd.socket");
    wait_for("the socket", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let pid: i32 = std::fs::read_to_string(d.path().join("run/ctdbd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        pid as u32,
        child.id(),
        "the foreground process is the daemon"
    );
    assert!(child.try_wait().unwrap().is_none());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}
