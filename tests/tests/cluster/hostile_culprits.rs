//! The right culprit is banned: node 1's persistent database directory is
//! a full filesystem (a small tmpfs, filled) when a persistent commit
//! comes; node 1 cannot commit, the recovery helper names it to the
//! leader, node 1 is banned and no other node is, and the cluster is back
//! to NORMAL with the other two.
//!
//! Our daemon with our helper; and the reference daemon with our helper
//! (the reference's own helper gives no ban credit for a failed commit, so
//! its recoveries fail over and over without naming anyone).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ctdb_client::{Client, DbKind};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

const VICTIM: usize = 1;

/// A tmpfs mounted on a directory, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a `size` tmpfs on `dir`, keeping the files `dir` had.
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let saved: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| (e.file_name().into(), std::fs::read(e.path()).unwrap()))
            .collect();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "cannot mount a tmpfs on {}", dir.display());
        for (name, data) in saved {
            std::fs::write(dir.join(name), data).unwrap();
        }
        Tmpfs(dir.to_owned())
    }

    /// Fills it up: a file written until the filesystem says it is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0x5a; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        // Even a small write fails now.
        let mut g = std::fs::File::create(self.0.join("probe")).unwrap_or(f);
        assert!(g.write_all(&[1; 4096]).and_then(|_| g.sync_all()).is_err());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Stores `key` = `value` in persistent database `db` through node
/// `socket`, in one transaction.
async fn pstore(socket: PathBuf, db: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    let client = Client::connect(&socket).await.map_err(|e| e.to_string())?;
    let db = client
        .attach(db, DbKind::Persistent, 0)
        .await
        .map_err(|e| e.to_string())?;
    let mut t = db
        .transaction_start(false)
        .await
        .map_err(|e| e.to_string())?;
    t.store(key, value).map_err(|e| e.to_string())?;
    t.commit().await.map_err(|e| e.to_string())
}

fn node_line(c: &Cluster, observer: usize, k: usize) -> String {
    let s = String::from_utf8_lossy(&c.tool(observer, &["status"]).stdout).into_owned();
    s.lines()
        .find(|l| l.starts_with(&format!("pnn:{k} ")))
        .unwrap_or_default()
        .to_owned()
}

fn full_disk_bans_that_node(daemon: Daemon) {
    require_reference();
    let helper = our_bin("ctdb_recovery_helper");
    let c = Cluster::start(ClusterOptions::new(daemon, 3).recovery_helper(&helper));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // Node 1's persistent directory on a small filesystem of its own.
    c.kill(VICTIM);
    let fs = Tmpfs::mount(&c.base(VICTIM).join("db/persistent"), "4m");
    c.restart(VICTIM);
    c.wait_healthy(Duration::from_secs(90));

    let db = "hostile_culprit.tdb";
    rt.block_on(pstore(c.socket(0), db, b"small", b"fits"))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tails()));

    // Now node 1's filesystem is full; a commit of a large record cannot
    // be written there.
    fs.fill();
    let writer = rt.spawn(pstore(c.socket(0), db, b"big", &[0x42u8; 4 << 20]));

    let observer = 0;
    let banned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_until(Duration::from_secs(180), "node 1 to be banned", || {
            node_line(&c, observer, VICTIM)
                .contains("BANNED")
                .then_some(())
        })
    }));
    if banned.is_err() {
        let all: Vec<String> = (0..3).map(|k| c.log_text(k)).collect();
        panic!(
            "node 1 not banned:\n{}\n--- full log of node 0 ---\n{}",
            c.log_tails(),
            all[0]
                .lines()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    c.wait_status(Duration::from_secs(120), 2, &[]);
    for k in [0, 2] {
        let l = node_line(&c, observer, k);
        assert!(l.contains(" OK"), "node {k}: {l}\n{}", c.log_tails());
    }
    writer.abort();
    // Nobody else was ever banned, and the helper named node 1.
    for k in 0..3 {
        let log = c.log_text(k);
        for other in [0, 2] {
            assert!(
                !log.contains(&format!("Banning node {other} ")),
                "node {other} banned (log of node {k}):\n{}",
                c.log_tails()
            );
        }
    }
    let all: String = (0..3).map(|k| c.log_text(k)).collect();
    assert!(
        all.contains(&format!("Assigning banning credits to node {VICTIM}")),
        "{}",
        c.log_tails()
    );
    drop(c);
    drop(fs);
}

#[test]
fn full_disk_on_node_1_bans_node_1_ours() {
    full_disk_bans_that_node(Daemon::ours());
}

#[test]
fn full_disk_on_node_1_bans_node_1_reference_with_our_helper() {
    full_disk_bans_that_node(Daemon::Reference);
}
