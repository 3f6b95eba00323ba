//! Our `ctdb_mutex_fcntl_helper` beside CTDB 4.17's, in the same tests:
//! each behaviour is checked on both helpers, and the two take the same
//! lock file against each other.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ctdb_tests::procs::Reaped;
use ctdb_tests::{our_bin, poll_until, require_reference};

const REFERENCE: &str = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper";

/// Both helpers: (label, path).
fn helpers() -> [(&'static str, PathBuf); 2] {
    require_reference();
    assert!(
        Path::new(REFERENCE).is_file(),
        "{REFERENCE} missing: run scripts/install-deps.sh"
    );
    let ours = our_bin("ctdb_mutex_fcntl_helper");
    // With ctdb-rs's package installed in place of Debian's, the path
    // holds ours, and every comparison would compare ours with ours.
    assert_ne!(
        std::fs::read(REFERENCE).unwrap(),
        std::fs::read(&ours).unwrap(),
        "{REFERENCE} is ours, not CTDB's: reinstall Debian's ctdb"
    );
    [("ours", ours), ("reference", PathBuf::from(REFERENCE))]
}

/// A helper started on a lock file, and the status it answered.
struct Running {
    child: Reaped,
    status: u8,
}

/// Starts `helper` with `args` and reads its status character (within
/// 10 s).
fn start(helper: &Path, args: &[&str]) -> Running {
    let mut child = Reaped(
        Command::new(helper)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = read_status(child.0.stdout.take().unwrap(), helper);
    Running { child, status }
}

fn read_status(mut out: impl Read + Send + 'static, helper: &Path) -> u8 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let r = out.read_exact(&mut b).map(|()| b[0]);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => panic!("{}: no status: {e}", helper.display()),
        Err(_) => panic!("{}: no status within 10 s", helper.display()),
    }
}

/// What a helper answers for `file` right now (it is stopped at once).
fn try_take(helper: &Path, file: &Path) -> u8 {
    start(helper, &[file.to_str().unwrap(), "0"]).status
}

/// Checks for `how_long` (a bounded look, every 200 ms) that `r`'s helper
/// keeps running and holding the lock on `file`.
fn holds_for(r: &mut Running, helper: &Path, file: &Path, how_long: Duration, what: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < how_long {
        assert!(r.child.0.try_wait().unwrap().is_none(), "{what}: it exited");
        assert_eq!(try_take(helper, file), b'1', "{what}: the lock is free");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (at most `limit`) for `r`'s helper to exit.
fn wait_exit(r: &mut Running, limit: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    poll_until(limit, what, || r.child.0.try_wait().unwrap().map(|_| ()));
    t0.elapsed()
}

#[test]
fn each_helper_excludes_the_other_and_itself() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("cluster.lock");
    let hs = helpers();
    for (holder_name, holder) in &hs {
        let mut h = start(holder, &[file.to_str().unwrap()]);
        assert_eq!(h.status, b'0', "{holder_name}: the lock is free");
        for (taker_name, taker) in &hs {
            assert_eq!(
                try_take(taker, &file),
                b'1',
                "{taker_name} while {holder_name} holds the lock"
            );
        }
        // Released with SIGTERM, as the daemons release it.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.child.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_exit(
            &mut h,
            Duration::from_secs(10),
            "the holder ends on SIGTERM",
        );
        for (taker_name, taker) in &hs {
            assert_eq!(
                try_take(taker, &file),
                b'0',
                "{taker_name} after {holder_name} was stopped"
            );
        }
    }
}

fn run(helper: &Path, args: &[&str]) -> Output {
    Command::new(helper)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_held_lock_survives_its_checks() {
    // The checks must not drop the lock they check (closing any descriptor
    // of the file would): a check a second, over several checks.
    for (name, helper) in helpers() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cluster.lock");
        let mut h = start(&helper, &[file.to_str().unwrap(), "1"]);
        assert_eq!(h.status, b'0', "{name}");
        holds_for(
            &mut h,
            &helper,
            &file,
            Duration::from_millis(3500),
            &format!("{name}, checked every second"),
        );
    }
}

#[test]
fn bad_command_lines_and_unopenable_files_as_the_reference() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    let f = f.to_str().unwrap();
    let [(_, ours), (_, reference)] = helpers();
    for args in [
        &[][..],
        &[f, "5", "0", "x"],
        &[f, "x"],
        &[f, "-1"],
        &[f, "1", ""],
    ] {
        let (o, r) = (run(&ours, args), run(&reference, args));
        assert_eq!(o.status.code(), Some(1), "ours {args:?}");
        assert_eq!(o.status.code(), r.status.code(), "{args:?}");
        assert_eq!(o.stdout, r.stdout, "{args:?}");
        // The same usage line (the program's name is the same).
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&r.stderr),
            "{args:?}"
        );
    }
    let missing = d.path().join("no/such/dir/lock");
    let missing = missing.to_str().unwrap();
    for (name, h) in [("ours", &ours), ("reference", &reference)] {
        let out = Command::new(h)
            .arg(missing)
            .env_remove("CTDB_LOGGING")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert_eq!(out.stdout, b"3", "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "Unable to open {missing} - (No such file or directory)"
            )),
            "{name}: {err}"
        );
    }
}

/// What happens to the lock file under a holder.
#[derive(Debug, Clone, Copy)]
enum Change {
    Removed,
    Replaced,
    DirectoryMoved,
}

#[test]
fn a_lock_file_removed_replaced_or_moved_away_ends_the_hold() {
    for (name, helper) in helpers() {
        for change in [Change::Removed, Change::Replaced, Change::DirectoryMoved] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("shared");
            std::fs::create_dir(&dir).unwrap();
            let file = dir.join("cluster.lock");
            let mut h = start(&helper, &[file.to_str().unwrap(), "1"]);
            assert_eq!(h.status, b'0', "{name}");
            match change {
                Change::Removed => std::fs::remove_file(&file).unwrap(),
                Change::Replaced => {
                    std::fs::write(d.path().join("new"), b"").unwrap();
                    std::fs::rename(d.path().join("new"), &file).unwrap();
                }
                Change::DirectoryMoved => {
                    std::fs::rename(&dir, d.path().join("moved")).unwrap();
                }
            }
            wait_exit(
                &mut h,
                Duration::from_secs(10),
                &format!("{name}: the holder ends when the lock file is {change:?}"),
            );
            // Whatever now stands at the lock's path is free.
            std::fs::create_dir_all(&dir).unwrap();
            assert_eq!(try_take(&helper, &file), b'0', "{name} {change:?}");
        }
    }
}

/// Holds a write lock on byte `start` of `file` for as long as it lives
/// (a lock of this test process, so a helper conflicts with it).
struct ByteLock {
    _file: std::fs::File,
}

impl ByteLock {
    fn take(file: &Path, start: i64) -> ByteLock {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .unwrap();
        let fl = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: start,
            l_len: 1,
            l_pid: 0,
        };
        nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&fl)).unwrap();
        ByteLock { _file: f }
    }
}

#[test]
fn a_check_that_hangs_gives_the_lock_up_after_the_ping_timeout() {
    // A check takes a lock on the file's second byte, waiting for it, as
    // a stand-in for a cluster file system that stops answering: with this
    // process holding that byte, every check hangs.
    for (name, helper) in helpers() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cluster.lock");
        let f = file.to_str().unwrap();

        // A ping timeout of 2 s: given up about 3 s after the start.
        let mut h = start(&helper, &[f, "1", "2"]);
        assert_eq!(h.status, b'0', "{name}");
        let hang = ByteLock::take(&file, 1);
        let took = wait_exit(
            &mut h,
            Duration::from_secs(15),
            &format!("{name}: a hung check ends the hold"),
        );
        assert!(
            took >= Duration::from_secs(2),
            "{name}: ended after {took:?}"
        );
        assert_eq!(try_take(&helper, &file), b'0', "{name}");

        // No ping timeout: the hold outlasts a hung check (a bounded look:
        // three check intervals), and goes on once the check ends.
        let mut h = start(&helper, &[f, "1"]);
        assert_eq!(h.status, b'0', "{name}");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            assert!(
                h.child.0.try_wait().unwrap().is_none(),
                "{name}: without a ping timeout, a hung check ended the hold"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(hang);
        holds_for(
            &mut h,
            &helper,
            &file,
            Duration::from_millis(2500),
            &format!("{name}, once the hung check ended"),
        );
    }
}

#[test]
fn the_lock_goes_when_the_parent_does() {
    for (name, helper) in helpers() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cluster.lock");
        // A parent that starts the helper and waits; the helper's status
        // comes through the parent's standard output.
        let mut parent = Reaped(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(r#""$0" "$1" 0 & wait"#)
                .arg(&helper)
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let status = read_status(parent.0.stdout.take().unwrap(), &helper);
        assert_eq!(status, b'0', "{name}");
        assert_eq!(try_take(&helper, &file), b'1', "{name}: held");
        parent.0.kill().unwrap();
        // Reaped, so the helper cannot see its parent as a zombie.
        parent.0.wait().unwrap();
        // CTDB's helper looks for its parent every 5 s; ours every second.
        poll_until(
            Duration::from_secs(15),
            &format!("{name}: the lock is released once the parent is gone"),
            || (try_take(&helper, &file) == b'0').then_some(()),
        );
    }
}
