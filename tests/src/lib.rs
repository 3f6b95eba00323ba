//! Shared test harness: local clusters of the reference CTDB or of ours on
//! private 127.x.y.z addresses, with guards that stop every daemon they
//! started, even when a test fails.
//!
//! Clusters are laid out as `scripts/local-cluster.sh` lays them out (node K
//! under `DIR/node.K`, test mode, one `ctdb.conf` per node) and are started
//! through that script, with `CTDBD` pointing at the daemon under test.

pub mod client_prog;
pub mod cluster;
pub mod contend;
pub mod etcd;
pub mod fake;
pub mod faults;
pub mod netns;
pub mod output;
pub mod procs;
pub mod samba;
pub mod workload;

pub use cluster::{Cluster, ClusterOptions, Daemon};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `scripts/local-cluster.sh`: starts, waits for, drives and stops a local
/// cluster of the reference daemon or of ours.
pub fn cluster_script() -> PathBuf {
    let p = workspace_root().join("scripts/local-cluster.sh");
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// The reference captures, tool outputs, database files and backups
/// recorded from CTDB 4.17 (`tests/reference/ctdb-4.17`, in the repository).
pub fn reference_dir() -> PathBuf {
    let d = workspace_root().join("tests/reference/ctdb-4.17");
    assert!(
        d.join("README.md").is_file(),
        "reference data not found at {}",
        d.display()
    );
    d.canonicalize().unwrap()
}

/// Fails the test (never skips it) when the reference CTDB is not
/// installed; `scripts/install-deps.sh` installs it.
pub fn require_reference() {
    for p in [
        "/usr/sbin/ctdbd",
        "/usr/bin/ctdb",
        "/usr/libexec/ctdb/ctdb_recovery_helper",
    ] {
        assert!(
            Path::new(p).exists(),
            "reference CTDB not installed ({p} missing): run scripts/install-deps.sh"
        );
    }
}

/// One of this workspace's binaries, from the same build profile as the
/// running test (`cargo build --release --bins` builds them all).
pub fn our_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace --bins` with the same profile as the tests",
        p.display()
    );
    p
}

/// A command running one of the tests' client programs (`ctdb-increment`,
/// `ctdb-contend`, ...: `tests/src/bin/ctdb-test-client`), its name the
/// first argument.
pub fn test_client(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new(our_bin("ctdb-test-client"));
    c.arg(program);
    c
}

/// Writes `body` to `path` as an executable script (mode 0755): event
/// scripts, and wrappers around helpers that the daemons run.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn poll_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The id CTDB gives database `name` (the Jenkins hash of the name and its
/// terminating NUL).
pub fn db_id(name: &str) -> u32 {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    tdb::hash::jenkins_hash(&v)
}

/// Sends one control with hand-made `data` (possibly malformed) on a fresh
/// connection to `socket` and returns the daemon's reply, decoded for
/// `opcode`'s reply (status and error message are what tests look at).
pub fn raw_control(socket: &Path, opcode: u32, data: &[u8]) -> ctdb_protocol::ReplyControl {
    use std::io::{Read, Write};
    let mut body = Vec::new();
    for x in [opcode, 0] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.extend_from_slice(&0u64.to_le_bytes()); // srvid
    for x in [0u32, 0, data.len() as u32] {
        body.extend_from_slice(&x.to_le_bytes()); // client id, flags, length
    }
    body.extend_from_slice(data);
    let len = 32 + body.len();
    let padded = len.div_ceil(8) * 8;
    let mut pkt = Vec::with_capacity(padded);
    for x in [
        padded as u32,
        0x4354_4442,
        1,
        0,
        7, // REQ_CONTROL
        ctdb_protocol::header::CTDB_CURRENT_NODE,
        0,
        4242,
    ] {
        pkt.extend_from_slice(&x.to_le_bytes());
    }
    pkt.extend_from_slice(&body);
    pkt.resize(padded, 0);
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&pkt).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let n = u32::from_le_bytes(len) as usize;
    let mut rest = vec![0u8; n - 4];
    s.read_exact(&mut rest).unwrap();
    let mut whole = len.to_vec();
    whole.extend_from_slice(&rest);
    let op = ctdb_protocol::Opcode::from_u32(opcode).unwrap();
    match ctdb_protocol::Packet::decode(&whole, |_| Some(op))
        .unwrap()
        .body
    {
        ctdb_protocol::Body::ReplyControl(r) => r,
        other => panic!("unexpected reply {other:?}"),
    }
}
