//! A reader that goes away (`ctdb status | head -c1`, `| grep -q OK`) ends
//! every program of the workspace quietly: nothing on stderr, no panic,
//! the status of a process ended by SIGPIPE (killed by it, as CTDB's C tool
//! is, or exit status 141, as ours are: Rust ignores SIGPIPE).

#[allow(dead_code)] // the case runner's helpers; this file uses the fake daemon only
mod golden;

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use golden::start_fake;

const REFERENCE_TOOL: &str = "/usr/bin/ctdb";

const STATE: &str = "NODEMAP
0       192.168.20.41   0x0 CURRENT RECMASTER
1       192.168.20.42   0x0
2       192.168.20.43   0x0

VNNMAP
654321
0
1
2
";

/// The write end of a pipe whose read end is already closed: every write
/// to it fails with EPIPE, whenever the program gets to it.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    w
}

fn ended_by_closed_output(st: ExitStatus) -> bool {
    st.signal() == Some(libc::SIGPIPE) || st.code() == Some(141)
}

fn show(o: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `prog args` with a closed stdout (stderr captured) in `dir`'s
/// fake-daemon environment.
fn closed_stdout(prog: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(prog)
        .args(args)
        .env("CTDB_SOCKET", dir.join("ctdbd.socket"))
        .env("CTDB_BASE", dir)
        .env_remove("CTDB_TEST_MODE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(closed_pipe()))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn the_tool_ends_quietly_when_stdout_is_closed() {
    ctdb_tests::require_reference();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = start_fake(dir.path(), STATE);
    let ours = ctdb_tests::our_bin("ctdb");
    for tool in [Path::new(REFERENCE_TOOL), ours.as_path()] {
        // A short answer, a long listing, a usage text.
        for args in [&["status"][..], &["listvars"], &["-X", "nodestatus", "all"]] {
            let out = closed_stdout(tool, args, dir.path());
            assert!(
                out.stderr.is_empty() && ended_by_closed_output(out.status),
                "{} {args:?}: {}",
                tool.display(),
                show(&out)
            );
        }
    }
    // A usage text: CTDB's tool prints it and exits 1; with stdout closed
    // both end at the first write instead.
    let out = closed_stdout(&ours, &["status", "extra", "args"], dir.path());
    assert!(
        out.stderr.is_empty() && ended_by_closed_output(out.status),
        "{}",
        show(&out)
    );
}

#[test]
fn a_pipe_into_head_ends_the_tool_quietly() {
    ctdb_tests::require_reference();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = start_fake(dir.path(), STATE);
    let ours = ctdb_tests::our_bin("ctdb");
    for tool in [Path::new(REFERENCE_TOOL), ours.as_path()] {
        // Whether the tool has written everything before head exits is a
        // race: either it ends normally or as above, and quietly.
        let out = Command::new("/bin/bash")
            .arg("-c")
            .arg(format!(
                "{} status 2>&1 | head -c1; echo; echo \"status ${{PIPESTATUS[0]}}\"",
                tool.display()
            ))
            .env("CTDB_SOCKET", dir.path().join("ctdbd.socket"))
            .env("CTDB_BASE", dir.path())
            .env_remove("CTDB_TEST_MODE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text == "N\nstatus 0\n" || text == "N\nstatus 141\n",
            "{}: {}",
            tool.display(),
            show(&out)
        );
    }
}

#[test]
fn every_program_ends_quietly_when_its_output_is_closed() {
    // Each program printing its usage or help, with the stream it prints
    // it on closed and the other captured.
    // (program, arguments, output on stdout (else stderr), its status
    // when the write is not checked: clap ignores a failed write of its
    // help and exits 0).
    let cases: [(&str, &[&str], bool, Option<i32>); 7] = [
        ("ctdb", &["--usage"], true, None),
        ("ctdb", &[], true, None),
        ("ctdb_recovery_helper", &[], false, None),
        ("fake_ctdbd", &["--help"], true, None),
        ("ctdbd", &["--help"], true, Some(0)),
        ("bench", &["--help"], true, Some(0)),
        ("ctdb-eventd", &["--help"], true, Some(0)),
    ];
    for (name, args, on_stdout, usual) in cases {
        let prog = ctdb_tests::our_bin(name);
        let mut cmd = Command::new(&prog);
        cmd.args(args).stdin(Stdio::null());
        if on_stdout {
            cmd.stdout(Stdio::from(closed_pipe()))
                .stderr(Stdio::piped());
        } else {
            cmd.stderr(Stdio::from(closed_pipe()))
                .stdout(Stdio::piped());
        }
        let out = cmd.output().unwrap();
        let other = if on_stdout { &out.stderr } else { &out.stdout };
        assert!(
            other.is_empty() && (ended_by_closed_output(out.status) || out.status.code() == usual),
            "{name} {args:?}: {}",
            show(&out)
        );
        assert_ne!(out.status.code(), Some(101), "{name} panicked");
    }
}
