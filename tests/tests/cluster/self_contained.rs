//! The repository is self-contained: a plain `git clone` of HEAD, in a
//! directory with nothing beside it, has every script and every piece of
//! reference data the README's two commands need.
//!
//! * `clone_runs_the_readme_cluster_command`: clones HEAD into an empty temp
//!   directory and runs the README's first command from the clone
//!   (`scripts/cluster.sh start`, `status`, `stop`), with this build's
//!   binaries (`CTDB_RS_BIN`) so that it takes seconds; `.ci/clone-check`
//!   runs the same with the clone's own build (in CI's checkout, itself a clone).
//! * `clone_reads_nothing_outside_itself`: the README's second command is
//!   the whole test suite, which cannot run recursively here; instead no
//!   file of the clone names the old `shared` directory beside the
//!   repository, and the reference data the tests read is all in the clone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ctdb_tests::cluster::fcntl_lock_holder;
use ctdb_tests::{our_bin, poll_until, reference_dir, workspace_root};

/// A clone of the repository's HEAD in a fresh temp directory.
fn clone_head(tmp: &Path) -> PathBuf {
    let dst = tmp.join("ctdb-rs");
    let out = Command::new("git")
        .args(["clone", "--quiet", "--no-local"])
        .arg(workspace_root())
        .arg(&dst)
        .stdin(Stdio::null())
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git clone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !tmp.join("shared").exists(),
        "the clone must have nothing beside it"
    );
    dst
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stops the clone's cluster however the test ends.
struct Running {
    clone: PathBuf,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Running {
    fn cluster_sh(&self, cmd: &str) -> Output {
        Command::new(self.clone.join("scripts/cluster.sh"))
            .arg(cmd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("CTDB_BASE")
            .env_remove("CTDB_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn pids(&self) -> Vec<i32> {
        (0..3)
            .filter_map(|k| {
                std::fs::read_to_string(self.dir.join(format!("node.{k}/run/ctdbd.pid")))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pids = self.pids();
        let _ = self.cluster_sh("stop");
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[test]
fn clone_runs_the_readme_cluster_command() {
    let tmp = tempfile::Builder::new()
        .prefix("ctdb-clone-")
        .tempdir()
        .unwrap();
    let clone = clone_head(tmp.path());
    let bin = our_bin("ctdbd").parent().unwrap().to_path_buf();
    let dir = tmp.path().join("cluster");
    // 127.252.x.y: outside the harness's 127.1-250 prefixes and cluster.sh's
    // default 127.0.0, so it runs beside other cluster tests.
    let base_ip = format!("127.252.{}", std::process::id() % 250);
    let run = Running {
        clone: clone.clone(),
        env: vec![
            ("CTDB_RS_BIN".into(), bin.display().to_string()),
            ("CLUSTER_DIR".into(), dir.display().to_string()),
            ("BASE_IP".into(), base_ip.clone()),
        ],
        dir: dir.clone(),
    };

    let start = run.cluster_sh("start");
    assert!(start.status.success(), "cluster.sh start: {}", show(&start));
    let text = String::from_utf8_lossy(&start.stdout);
    for k in 1..=3 {
        assert!(
            text.contains(&format!("{base_ip}.{k} ")),
            "start's status lacks node {k}: {}",
            show(&start)
        );
    }
    assert_eq!(text.matches(" OK").count(), 3, "{}", show(&start));
    // Nothing of Debian's package runs: the daemons look for their helpers
    // among our programs, and the cluster lock is held through ours.
    for pid in run.pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let want = format!("CTDB_TEST_HELPER_BINDIR={}", bin.display());
        assert!(
            env.split(|b| *b == 0).any(|v| v == want.as_bytes()),
            "daemon {pid} was not started with {want}"
        );
    }
    let helper = bin.join("ctdb_mutex_fcntl_helper").canonicalize().unwrap();
    let lock_file = dir.join("shared/cluster.lock");
    poll_until(
        Duration::from_secs(30),
        "the cluster lock to be held through our helper",
        || {
            let pid = fcntl_lock_holder(&lock_file)?;
            (ctdb_tests::procs::exe(pid)? == helper).then_some(())
        },
    );

    let status = run.cluster_sh("status");
    assert!(
        status.status.success(),
        "cluster.sh status: {}",
        show(&status)
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches(" OK").count(), 3, "{}", show(&status));
    assert!(text.contains("Recovery mode:NORMAL"), "{}", show(&status));

    let pids = run.pids();
    assert_eq!(pids.len(), 3, "three pid files under {}", dir.display());
    // The daemons run from this build, laid out under the clone's cluster dir.
    for p in &pids {
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap();
        assert_eq!(exe, bin.join("ctdbd"), "daemon {p}");
    }

    let stop = run.cluster_sh("stop");
    assert!(stop.status.success(), "cluster.sh stop: {}", show(&stop));
    // cluster.sh stop waits for the daemons itself; nothing is left.
    for p in pids {
        assert!(!alive(p), "daemon {p} still running after stop");
    }
    let after = run.cluster_sh("status");
    assert!(
        !after.status.success(),
        "status after stop: {}",
        show(&after)
    );
}

#[test]
fn clone_reads_nothing_outside_itself() {
    let tmp = tempfile::Builder::new()
        .prefix("ctdb-clone-")
        .tempdir()
        .unwrap();
    let clone = clone_head(tmp.path());
    // Built at run time so that this file does not match itself: the old
    // directory beside the repository, its accessor, its cluster script.
    let pats = [
        ["..", "shared"].join("/"),
        ["shared", "dir"].join("_"),
        ["real", "ctdb", "cluster"].join("-"),
    ];
    for pat in &pats {
        let out = Command::new("git")
            .current_dir(&clone)
            .args(["grep", "-n", "-F", "-e", pat])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "the clone still refers to {pat}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Every reference file the tests read (this checkout's copy) is in the
    // clone, byte for byte.
    let ours = reference_dir();
    let theirs = clone.join("tests/reference/ctdb-4.17");
    let mut n = 0;
    let mut stack = vec![ours.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&ours).unwrap();
            let c = std::fs::read(theirs.join(rel))
                .unwrap_or_else(|e| panic!("{} missing from the clone: {e}", rel.display()));
            assert!(c == std::fs::read(&p).unwrap(), "{} differs", rel.display());
            n += 1;
        }
    }
    assert!(n > 100, "only {n} reference files");
    for s in [
        "scripts/local-cluster.sh",
        "scripts/cluster.sh",
        "scripts/test.sh",
        "tests/reference/tools/strace2packets.py",
        "tests/reference/tools/pcap2packets.py",
    ] {
        assert!(clone.join(s).is_file(), "{s} missing from the clone");
    }
}
