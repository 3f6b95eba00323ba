//! Shared test harness: local clusters of the reference CTDB or of ours on
//! private 127.x.y.z addresses, with guards that stop every daemon they
//! started, even when a test fails.
//!
//! Clusters are laid out as `../shared/tools/real-ctdb-cluster.sh` lays them
//! out (node K under `DIR/node.K`, test mode, one `ctdb.conf` per node) and
//! are started through that script, with `CTDBD` pointing at the daemon
//! under test.

pub mod cluster;
pub mod output;

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

/// `../shared` beside the repository; fails loudly when it is missing.
pub fn shared_dir() -> PathBuf {
    let d = workspace_root().join("../shared");
    assert!(
        d.join("tools/real-ctdb-cluster.sh").is_file(),
        "../shared (reference data and tools) not found at {}",
        d.display()
    );
    d.canonicalize().unwrap()
}

/// The reference captures, tool outputs, database files and backups.
pub fn reference_dir() -> PathBuf {
    shared_dir().join("reference/ctdb-4.17")
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
