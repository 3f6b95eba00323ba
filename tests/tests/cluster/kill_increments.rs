//! The no-lost-updates run shared by the in-memory and keyed database
//! tests: 3 nodes x 8 client processes (`ctdb-inmem-increment`), each
//! incrementing its own key and one shared key in one transaction, while
//! node 3 (no clients) is killed with SIGKILL and restarted again and
//! again; then what every copy must show.

use std::time::Duration;

use ctdb_tests::{Cluster, test_client};

const CLIENT_NODES: usize = 3;
const PER_NODE: usize = 8;
const KILLS: usize = 3;

/// What one client process reported.
pub struct Increments {
    /// Its own key.
    pub own: String,
    /// Commits acknowledged.
    pub acked: u64,
    /// Commits that returned an error (landed or not).
    pub unsure: u64,
    /// Its standard error: a line per failed commit.
    pub stderr: String,
}

/// Runs the clients on nodes 0-2 of the 4-node cluster `c` against
/// database `db` (`keyed`: per-key transactions on a keyed database;
/// otherwise transactions on an in-memory one) while node 3 is killed and
/// restarted `KILLS` times, then stops them and waits for one generation.
/// Each client must exit with success.
pub fn run_with_kills(c: &Cluster, db: &str, keyed: bool) -> Vec<Increments> {
    let stop = c.dir().join("stop-increments");
    let mut children = Vec::new();
    for node in 0..CLIENT_NODES {
        for i in 0..PER_NODE {
            let own = format!("own_{node}_{i}");
            let mut cmd = test_client("ctdb-inmem-increment");
            cmd.arg(c.socket(node)).args([db, own.as_str()]).arg(&stop);
            if keyed {
                cmd.arg("keyed");
            }
            let child = cmd
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            children.push((own, child));
        }
    }
    // The clients run throughout: the pauses pace the kills, they do not
    // wait for anything.
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_secs(3));
        c.kill(3);
        std::thread::sleep(Duration::from_secs(1));
        c.restart(3);
        c.wait_one_generation();
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, b"").unwrap();
    let results = children
        .into_iter()
        .map(|(own, child)| {
            let o = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "{own} failed: {stderr}");
            let out = String::from_utf8_lossy(&o.stdout);
            let mut it = out.split_whitespace().map(|n| n.parse::<u64>().unwrap());
            let (acked, unsure) = (it.next().unwrap(), it.next().unwrap());
            Increments {
                own,
                acked,
                unsure,
                stderr,
            }
        })
        .collect();
    c.wait_one_generation();
    results
}

/// Acknowledged and failed commits over all clients.
pub fn totals(results: &[Increments]) -> (u64, u64) {
    results
        .iter()
        .fold((0, 0), |(a, u), r| (a + r.acked, u + r.unsure))
}

/// Every node's copy (`copies`: sorted (key, value) pairs) is the same;
/// each client's key holds its acknowledged commits and at most its failed
/// ones on top; the shared key is the sum of the clients' keys. Returns
/// the shared key's value.
pub fn check_copies(copies: &[Vec<(Vec<u8>, Vec<u8>)>], results: &[Increments]) -> u64 {
    for (k, copy) in copies.iter().enumerate().skip(1) {
        assert!(copy == &copies[0], "node {k}'s copy differs from node 0's");
    }
    let get = |key: &[u8]| {
        copies[0]
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.get(..8))
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    for r in results {
        let v = get(r.own.as_bytes());
        assert!(
            r.acked <= v && v <= r.acked + r.unsure,
            "{}: value {v}, acknowledged {}, failed {}",
            r.own,
            r.acked,
            r.unsure
        );
    }
    let shared = get(b"shared");
    let sum: u64 = results.iter().map(|r| get(r.own.as_bytes())).sum();
    assert_eq!(
        shared, sum,
        "the shared key and the clients' own keys disagree"
    );
    shared
}
