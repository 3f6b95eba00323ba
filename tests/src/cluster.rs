//! Local clusters for tests.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::netns::Network;
use crate::{cluster_script, poll_until};

/// The pid of a process holding an `fcntl` lock on some byte of `file`
/// (the cluster lock helpers lock its first byte), if any.
pub fn fcntl_lock_holder(file: &Path) -> Option<i32> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .ok()?;
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut fl)).ok()?;
    (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// Which daemon a cluster runs.
#[derive(Debug, Clone)]
pub enum Daemon {
    /// Debian's `/usr/sbin/ctdbd`.
    Reference,
    /// A daemon binary of ours.
    Ours(PathBuf),
}

impl Daemon {
    /// This workspace's `ctdbd`, from the same build profile as the test.
    pub fn ours() -> Daemon {
        Daemon::Ours(crate::our_bin("ctdbd"))
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub daemon: Daemon,
    pub nodes: usize,
    /// `CTDB_RECOVERY_HELPER` for the daemons, if not their own.
    pub recovery_helper: Option<PathBuf>,
    /// Daemon log level (`LOG_LEVEL`).
    pub log_level: String,
    /// Extra environment for the daemons.
    pub env: Vec<(String, String)>,
    /// Tunables written to every node's `ctdb.tunables` before start.
    pub tunables: Vec<(String, u32)>,
    /// Each node in a network namespace of its own ([`crate::netns`]).
    pub netns: bool,
    /// `[cluster] cluster lock`, if not the shared lock file.
    pub cluster_lock: Option<String>,
    /// Event scripts `(name, body)` put, executable, in every node's
    /// `events/legacy/` before start.
    pub event_scripts: Vec<(String, String)>,
    /// Every node's `public_addresses`; with it, failover is enabled
    /// (`[failover] disabled = false`).
    pub public_addresses: Option<String>,
    /// Files `(name, body)` put in every node's `CTDB_BASE` before start
    /// (e.g. CTDB's `functions`, which event scripts source).
    pub base_files: Vec<(String, String)>,
}

impl ClusterOptions {
    pub fn new(daemon: Daemon, nodes: usize) -> Self {
        ClusterOptions {
            daemon,
            nodes,
            recovery_helper: None,
            log_level: "NOTICE".into(),
            env: Vec::new(),
            tunables: Vec::new(),
            netns: false,
            cluster_lock: None,
            event_scripts: Vec::new(),
            public_addresses: None,
            base_files: Vec::new(),
        }
    }

    /// Gives every node `text` as its `public_addresses` file and enables
    /// failover.
    pub fn public_addresses(mut self, text: &str) -> Self {
        self.public_addresses = Some(text.to_owned());
        self
    }

    /// Puts file `name` with `body` in every node's `CTDB_BASE`.
    pub fn base_file(mut self, name: &str, body: &str) -> Self {
        self.base_files.push((name.to_owned(), body.to_owned()));
        self
    }

    /// Puts an executable event script `name` (e.g. `10.test.script`) in
    /// every node's `events/legacy/` before start.
    pub fn event_script(mut self, name: &str, body: &str) -> Self {
        self.event_scripts.push((name.to_owned(), body.to_owned()));
        self
    }

    /// Uses `setting` as `[cluster] cluster lock` (e.g. `!helper args`).
    pub fn cluster_lock(mut self, setting: impl Into<String>) -> Self {
        self.cluster_lock = Some(setting.into());
        self
    }

    /// Puts every node in a network namespace of its own, so tests can
    /// cut the network between them ([`Cluster::net`]).
    pub fn in_namespaces(mut self) -> Self {
        self.netns = true;
        self
    }

    /// Sets a tunable on every node from the start (`ctdb.tunables`).
    pub fn tunable(mut self, name: &str, value: u32) -> Self {
        self.tunables.push((name.to_owned(), value));
        self
    }

    /// Uses `helper` as the recovery helper.
    pub fn recovery_helper(mut self, helper: impl Into<PathBuf>) -> Self {
        self.recovery_helper = Some(helper.into());
        self
    }
}

/// A running cluster; dropping it stops every daemon it started.
pub struct Cluster {
    dir: tempfile::TempDir,
    opts: ClusterOptions,
    base_ip: [u8; 3],
    /// The namespaces, when the nodes have their own (deleted after the
    /// daemons are stopped: fields drop after `Drop::drop`).
    net: Option<Network>,
}

/// Picks a 127.a.b prefix no other cluster of this process uses, and that is
/// unlikely to collide with other test processes (mixed with the pid).
fn fresh_prefix() -> [u8; 3] {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mix = pid
        .wrapping_mul(2_654_435_761)
        .wrapping_add(n.wrapping_mul(40_503));
    // Avoid 127.0.0.x, the default of scripts/local-cluster.sh.
    let a = 1 + (mix % 250) as u8;
    let b = ((mix >> 8) % 250) as u8;
    [127, a, b]
}

impl Cluster {
    /// Starts a cluster and waits until every node is OK and the cluster is
    /// out of recovery.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let c = Cluster::launch(opts);
        c.wait_healthy(Duration::from_secs(90));
        c
    }

    /// A mixed cluster: `opts`' daemons, then node `k` killed and started
    /// again as the reference daemon; returns once the cluster is healthy
    /// with one generation everywhere.
    pub fn start_with_reference_node(opts: ClusterOptions, k: usize) -> Cluster {
        let c = Cluster::start(opts);
        c.kill(k);
        c.restart_with(k, &Daemon::Reference);
        c.wait_one_generation();
        c
    }

    /// Starts the daemons without waiting for health.
    pub fn launch(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ctdb-cluster-")
            .tempdir()
            .unwrap();
        let net = opts.netns.then(|| Network::new(opts.nodes));
        let c = Cluster {
            dir,
            base_ip: fresh_prefix(),
            opts,
            net,
        };
        if !c.opts.tunables.is_empty() {
            let text: String = c
                .opts
                .tunables
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            for k in 0..c.opts.nodes {
                std::fs::create_dir_all(c.base(k)).unwrap();
                std::fs::write(c.base(k).join("ctdb.tunables"), &text).unwrap();
            }
        }
        for k in 0..c.opts.nodes {
            std::fs::create_dir_all(c.base(k)).unwrap();
            if let Some(text) = &c.opts.public_addresses {
                std::fs::write(c.base(k).join("public_addresses"), text).unwrap();
            }
            for (name, body) in &c.opts.base_files {
                std::fs::write(c.base(k).join(name), body).unwrap();
            }
        }
        for k in 0..c.opts.nodes {
            let dir = c.base(k).join("events/legacy");
            for (name, body) in &c.opts.event_scripts {
                std::fs::create_dir_all(&dir).unwrap();
                crate::write_script(&dir.join(name), body);
            }
        }
        let out = c
            .script(&["start", &c.opts.nodes.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "cluster start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cluster_script());
        cmd.arg(self.dir.path()).args(args);
        cmd.env("BASE_IP", self.base_ip_str());
        if let Some(net) = &self.net {
            let ips: Vec<String> = (0..self.opts.nodes)
                .map(|k| net.ip(k).to_string())
                .collect();
            cmd.env("NODE_IPS", ips.join(" "));
            cmd.env("NETNS_PREFIX", net.prefix());
        }
        cmd.env("LOG_LEVEL", &self.opts.log_level);
        if let Daemon::Ours(p) = &self.opts.daemon {
            cmd.env("CTDBD", p);
        }
        if let Some(h) = &self.opts.recovery_helper {
            cmd.env("CTDB_RECOVERY_HELPER", h);
        }
        if let Some(l) = &self.opts.cluster_lock {
            cmd.env("CLUSTER_LOCK", l);
        }
        if self.opts.public_addresses.is_some() {
            cmd.env("FAILOVER", "1");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn base_ip_str(&self) -> String {
        format!(
            "{}.{}.{}",
            self.base_ip[0], self.base_ip[1], self.base_ip[2]
        )
    }

    /// The daemon this cluster runs.
    pub fn daemon(&self) -> &Daemon {
        &self.opts.daemon
    }

    /// The shared cluster lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.path().join("shared/cluster.lock")
    }

    /// Node `k`'s daemon log so far.
    pub fn log_text(&self, k: usize) -> String {
        std::fs::read_to_string(self.log(k)).unwrap_or_default()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.opts.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.opts.nodes == 0
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `CTDB_BASE` of node `k`.
    pub fn base(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("node.{k}"))
    }

    /// The nodes' network namespaces, for clusters started
    /// [`ClusterOptions::in_namespaces`].
    pub fn net(&self) -> &Network {
        self.net
            .as_ref()
            .expect("cluster not started in namespaces")
    }

    /// Node `k`'s address.
    pub fn ip(&self, k: usize) -> Ipv4Addr {
        if let Some(net) = &self.net {
            return net.ip(k);
        }
        let [a, b, c] = self.base_ip;
        Ipv4Addr::new(a, b, c, k as u8 + 1)
    }

    /// Node `k`'s daemon socket.
    pub fn socket(&self, k: usize) -> PathBuf {
        self.base(k).join("run/ctdbd.socket")
    }

    /// Node `k`'s log file.
    pub fn log(&self, k: usize) -> PathBuf {
        self.base(k).join("log.ctdb")
    }

    /// Node `k`'s daemon pid, from its pid file.
    pub fn pid(&self, k: usize) -> Option<i32> {
        std::fs::read_to_string(self.base(k).join("run/ctdbd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the process holding the shared cluster lock file, if
    /// any ([`fcntl_lock_holder`]).
    pub fn lock_holder(&self) -> Option<i32> {
        fcntl_lock_holder(&self.lock_file())
    }

    /// The node whose daemon (an ancestor of [`Cluster::lock_holder`])
    /// holds the cluster lock.
    pub fn lock_holder_node(&self) -> Option<usize> {
        let daemons: Vec<(usize, i32)> = (0..self.len())
            .filter_map(|k| self.pid(k).map(|p| (k, p)))
            .collect();
        let mut p = self.lock_holder()?;
        for _ in 0..8 {
            if let Some((k, _)) = daemons.iter().find(|(_, d)| *d == p) {
                return Some(*k);
            }
            p = crate::procs::stat(p)?.2;
            if p <= 1 {
                return None;
            }
        }
        None
    }

    /// The leader as node `k` reports it (`ctdb leader`).
    pub fn leader(&self, k: usize) -> Option<usize> {
        let out = self.tool(k, &["leader"]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// Runs the reference `ctdb` tool against node `k`.
    pub fn tool(&self, k: usize, args: &[&str]) -> Output {
        self.tool_with(Path::new("/usr/bin/ctdb"), k, args)
    }

    /// Runs a `ctdb` tool binary against node `k`, as scripts/local-cluster.sh
    /// does (test mode, `CTDB_BASE` of the node).
    pub fn tool_with(&self, tool: &Path, k: usize, args: &[&str]) -> Output {
        self.tool_command(tool, k, args).output().unwrap()
    }

    /// The command [`Cluster::tool_with`] runs, for a test that starts it
    /// itself (to run it in the background, say).
    pub fn tool_command(&self, tool: &Path, k: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", self.base(k))
            .stdin(Stdio::null());
        cmd
    }

    /// The reference tool's stdout for `args` on node `k`; panics on failure.
    pub fn tool_ok(&self, k: usize, args: &[&str]) -> String {
        Self::succeeded(self.tool(k, args), k, args)
    }

    /// Our tool's stdout for `args` on node `k` (commands only ours has,
    /// such as `attach NAME keyed`); panics on failure.
    pub fn our_tool_ok(&self, k: usize, args: &[&str]) -> String {
        Self::succeeded(self.tool_with(&crate::our_bin("ctdb"), k, args), k, args)
    }

    fn succeeded(out: Output, k: usize, args: &[&str]) -> String {
        assert!(
            out.status.success(),
            "ctdb {} on node {k} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until every running node reports all `expected_ok` nodes OK
    /// and recovery mode NORMAL.
    pub fn wait_healthy(&self, limit: Duration) {
        self.wait_status(limit, self.opts.nodes, &[]);
    }

    /// The recovery generation node `k`'s `ctdb status` shows, if it
    /// answers.
    pub fn generation(&self, k: usize) -> Option<String> {
        let s = String::from_utf8_lossy(&self.tool(k, &["status"]).stdout).into_owned();
        s.lines()
            .find_map(|l| l.strip_prefix("Generation:"))
            .map(str::to_owned)
    }

    /// Waits until the cluster is healthy and every node shows the same
    /// valid generation (a recovery has ended everywhere).
    pub fn wait_one_generation(&self) {
        self.wait_healthy(Duration::from_secs(120));
        crate::poll_until(
            Duration::from_secs(90),
            "one generation on every node",
            || {
                let g: Vec<Option<String>> = (0..self.len()).map(|k| self.generation(k)).collect();
                match &g[0] {
                    Some(g0) if g0 != "INVALID" && g.iter().all(|x| x.as_ref() == Some(g0)) => {
                        Some(())
                    }
                    _ => None,
                }
            },
        );
    }

    /// Waits until node `observer`'s `ctdb status` shows `ok` nodes OK and
    /// recovery mode NORMAL; `skip` lists nodes not to ask.
    pub fn wait_status(&self, limit: Duration, ok: usize, skip: &[usize]) {
        let observer = (0..self.opts.nodes).find(|k| !skip.contains(k)).unwrap();
        let mut last = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until(limit, "a healthy cluster", || {
                let out = self.tool(observer, &["status"]);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                let n_ok = last
                    .lines()
                    .filter(|l| l.starts_with("pnn:") && l.contains(" OK"))
                    .count();
                (n_ok == ok && last.contains("Recovery mode:NORMAL")).then_some(())
            })
        }));
        if r.is_err() {
            panic!(
                "cluster not healthy; last status from node {observer}:\n{last}\nlogs:\n{}",
                self.log_tails()
            );
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        for k in 0..self.opts.nodes {
            let log = std::fs::read_to_string(self.log(k)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            s.push_str(&format!("--- node {k} ---\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Kills node `k`'s daemon with SIGKILL (and waits for it to be gone).
    pub fn kill(&self, k: usize) {
        if let Some(pid) = self.pid(k) {
            let helpers = kill_tree(pid);
            poll_until(Duration::from_secs(10), "the daemon to die", || {
                (!alive(pid)).then_some(())
            });
            // Its event daemon too: one still alive keeps a restarted
            // daemon from starting its own.
            poll_until(
                Duration::from_secs(10),
                "the daemon's helpers to die",
                || (!helpers.iter().any(|&h| alive(h))).then_some(()),
            );
        }
        // A killed daemon leaves its pid file and socket behind.
        let _ = std::fs::remove_file(self.base(k).join("run/ctdbd.pid"));
        let _ = std::fs::remove_file(self.socket(k));
    }

    /// Starts node `k`'s daemon again.
    pub fn restart(&self, k: usize) {
        self.restart_with(k, &self.opts.daemon.clone());
    }

    /// Starts node `k` with another daemon (for mixed clusters).
    pub fn restart_with(&self, k: usize, daemon: &Daemon) {
        self.restart_with_env(k, daemon, &[]);
    }

    /// Starts node `k` with `daemon` and returns the launcher's exit status
    /// without judging it (for daemons expected to refuse to start).
    pub fn launch_node(&self, k: usize, daemon: &Daemon) -> std::process::ExitStatus {
        self.launch_node_env(k, daemon, &[])
    }

    /// Whether node `k`'s daemon (from its pid file) is running.
    pub fn running(&self, k: usize) -> bool {
        self.pid(k).is_some_and(alive)
    }

    /// Starts node `k` again with `daemon` and extra environment `env`.
    pub fn restart_with_env(&self, k: usize, daemon: &Daemon, env: &[(&str, &str)]) {
        let st = self.launch_node_env(k, daemon, env);
        assert!(st.success(), "restarting node {k} failed");
    }

    fn launch_node_env(
        &self,
        k: usize,
        daemon: &Daemon,
        env: &[(&str, &str)],
    ) -> std::process::ExitStatus {
        let bin = match daemon {
            Daemon::Reference => PathBuf::from("/usr/sbin/ctdbd"),
            Daemon::Ours(p) => p.clone(),
        };
        let mut cmd = match &self.net {
            Some(net) => net.command_in(k, bin),
            None => Command::new(bin),
        };
        cmd.env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", self.base(k))
            .env(
                "CTDB_TEST_HELPER_BINDIR",
                std::env::var("CTDB_TEST_HELPER_BINDIR")
                    .unwrap_or_else(|_| "/usr/libexec/ctdb".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(h) = &self.opts.recovery_helper {
            cmd.env("CTDB_RECOVERY_HELPER", h);
        }
        for (key, v) in &self.opts.env {
            cmd.env(key, v);
        }
        for (key, v) in env {
            cmd.env(key, v);
        }
        cmd.status().unwrap()
    }

    /// Stops the cluster: asks each daemon to shut down, then kills
    /// whatever is left.
    pub fn stop(&self) {
        let _ = self
            .script(&["stop", &self.opts.nodes.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for k in 0..self.opts.nodes {
            if let Some(pid) = self.pid(k) {
                let gone = (0..40).any(|_| {
                    if alive(pid) {
                        std::thread::sleep(Duration::from_millis(50));
                        false
                    } else {
                        true
                    }
                });
                if !gone {
                    kill_tree(pid);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie child of ours counts as gone.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.contains(") Z ")
}

/// SIGKILLs a daemon and the helpers it forked (its process group when it
/// leads one), and the reference's event daemon, which would otherwise
/// outlive it by seconds and stop a restarted daemon from starting its own.
/// Returns the helpers it signalled.
fn kill_tree(pid: i32) -> Vec<i32> {
    let p = Pid::from_raw(pid);
    let helpers = processes_watching(pid);
    if nix::unistd::getpgid(Some(p)) == Ok(p) {
        let _ = nix::sys::signal::killpg(p, Signal::SIGKILL);
    }
    let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
    for &h in &helpers {
        let _ = nix::sys::signal::kill(Pid::from_raw(h), Signal::SIGKILL);
    }
    helpers
}

/// Processes started with `-P <pid>` (CTDB's helpers that watch their
/// parent daemon, `ctdb-eventd` among them).
fn processes_watching(pid: i32) -> Vec<i32> {
    let needle = format!("\0-P\0{pid}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}
