//! A 3-member etcd cluster (Debian's `etcd-server`) for the cluster lock,
//! one member inside each node's network namespace, as a real deployment
//! puts a member on each host: member K listens for peers on node K's
//! address (192.0.2.(K+1):2380) and for clients on 127.0.0.1:2379 of that
//! namespace. Every node's lock helper therefore uses the same config
//! (`host = 127.0.0.1`) and reaches its own node's member; a node cut off
//! from the others takes its member with it (a minority that cannot
//! commit), and [`Etcd::cut`] cuts one member from its peers alone (the
//! node's link to the lock store, the CTDB traffic untouched).
//!
//! The guard kills every member when dropped (before the namespaces go:
//! declare it after the cluster).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::netns::Network;
use crate::poll_until;

/// CTDB's etcd lock helper from Debian's package.
pub const ETCD_HELPER: &str = "/usr/libexec/ctdb/ctdb_etcd_lock";

const ETCD: &str = "/usr/bin/etcd";
const PEER_PORT: u16 = 2380;

/// Fails the test (never skips it) when etcd or the helper is missing.
pub fn require_etcd() {
    for p in [ETCD_HELPER, ETCD] {
        assert!(
            Path::new(p).exists(),
            "{p} missing: run scripts/install-deps.sh (ctdb, etcd-server, python3-etcd)"
        );
    }
}

/// The members (none until [`Etcd::start`]) and their directory (data,
/// logs, the helper's config); members killed on drop.
pub struct Etcd {
    members: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// A directory for the members and the helper's config, written now so
    /// the cluster can be started with [`Etcd::lock_setting`] before the
    /// namespaces (made by the cluster) exist.
    pub fn new() -> Etcd {
        require_etcd();
        let dir = tempfile::Builder::new()
            .prefix("ctdb-etcd-")
            .tempdir()
            .unwrap();
        // python-etcd's own read timeout is 60 s: a helper whose member
        // cannot commit would then believe it holds the lock long after
        // its key expired elsewhere (TTL 9 s). 2 s makes it give up (and
        // its daemon drop the lock) well within the TTL.
        std::fs::write(
            dir.path().join("etcd-lock.conf"),
            "host = 127.0.0.1\nport = 2379\nlock_ttl = 9\nlock_refresh = 2\nread_timeout = 2\n",
        )
        .unwrap();
        Etcd {
            members: Vec::new(),
            dir,
        }
    }

    /// The cluster lock setting: the helper with this cluster's config.
    pub fn lock_setting(&self) -> String {
        format!("!{ETCD_HELPER} -c {}", self.conf().display())
    }

    /// The helper's config file.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("etcd-lock.conf")
    }

    /// Starts one member in each of `net`'s first `nodes` node namespaces
    /// and waits until each commits a write.
    pub fn start(&mut self, net: &Network, nodes: usize) {
        kill_stale();
        let cluster: Vec<String> = (0..nodes)
            .map(|k| format!("m{k}=http://{}:{PEER_PORT}", net.ip(k)))
            .collect();
        let cluster = cluster.join(",");
        let token = format!("ctdbrs-{}", net.prefix());
        for k in 0..nodes {
            let peer = format!("http://{}:{PEER_PORT}", net.ip(k));
            let data = self.dir.path().join(format!("data.{k}"));
            let log = std::fs::File::create(self.log(k)).unwrap();
            let child = net
                .command_in(k, ETCD)
                .args(["--name", &format!("m{k}"), "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", "http://127.0.0.1:2379"])
                .args(["--advertise-client-urls", "http://127.0.0.1:2379"])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                // A 2-core machine shared by several test suites: slower
                // heartbeats than the default 100 ms / 1 s, so members do
                // not lose their leader to scheduling delays.
                .args(["--heartbeat-interval", "250", "--election-timeout", "2500"])
                .args(["--enable-v2=true", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd (apt-get install etcd-server)");
            self.members.push(child);
        }
        for k in 0..nodes {
            poll_until(
                Duration::from_secs(60),
                "every etcd member to commit a write",
                || self.write_ok(net, k).then_some(()),
            );
        }
    }

    /// Member `k`'s log.
    pub fn log(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("etcd.{k}.log"))
    }

    /// Whether node `k`'s member commits a (v2) write now.
    pub fn write_ok(&self, net: &Network, k: usize) -> bool {
        let probe = "import sys, urllib.request as u\n\
            r = u.Request('http://127.0.0.1:2379/v2/keys/ctdbrs-probe', data=b'value=1', method='PUT')\n\
            r.add_header('Content-Type', 'application/x-www-form-urlencoded')\n\
            u.urlopen(r, timeout=3)\n";
        net.command_in(k, "/usr/bin/python3")
            .args(["-c", probe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Cuts node `k`'s member from its peers (both ways); the node's CTDB
    /// traffic and its helper's link to its own member are untouched.
    /// [`Network::heal`] removes the cut.
    pub fn cut(&self, net: &Network, k: usize) {
        net.cut_port(k, PEER_PORT);
    }
}

/// Kills the members of test processes that are gone (a guard does not run
/// when a runner's timeout SIGKILLs its test): their cluster token names
/// the test's pid (`ctdbrs-ctdbrs-<pid hex>-...`, see [`Network::prefix`]).
fn kill_stale() {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let Some(owner) = cmd
            .split_once("\0ctdbrs-ctdbrs-")
            .and_then(|(_, r)| r.split('-').next())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The lock helper runs `python3` from PATH and needs Debian's
/// python3-etcd: the daemons get the system's PATH, whatever the test's
/// PATH has first.
pub fn system_path() -> (String, String) {
    ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd::new()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
        }
        for m in &mut self.members {
            let _ = m.wait();
        }
    }
}
