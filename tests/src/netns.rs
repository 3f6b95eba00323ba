//! Clusters whose nodes live in network namespaces of their own, so a test
//! can cut, one way or both, the network between any nodes (and pause or
//! kill them), which loopback addresses cannot do.
//!
//! Layout: one bridge namespace holding a bridge, and per node a namespace
//! with a veth pair to that bridge. Node K's address is 192.0.2.(K+1)/24
//! (TEST-NET-1, reserved for documentation: it exists only inside these
//! namespaces and routes nowhere else). Names carry this process's pid and
//! a counter, so parallel tests never share a namespace. Cuts are nftables
//! rules in the receiving node's namespace (`inet ctdbrs input`), so they
//! drop what arrives, whichever daemon runs there.
//!
//! The guard deletes every namespace it made (and with them the links and
//! rules) when dropped, also when the test failed; the cluster guard stops
//! the daemons first. Namespaces of a test process that was killed outright
//! (no guard runs then) are removed by the next network made.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The namespaces of one cluster.
pub struct Network {
    prefix: String,
    nodes: usize,
    made: Vec<String>,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)")
}

fn must(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test (never skips it) when namespaces, veth, bridges or
/// nftables are missing; `scripts/install-deps.sh` installs the tools.
pub fn require_netns() {
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} missing: run scripts/install-deps.sh (iproute2, nftables)"
        );
    }
}

/// Removes the namespaces of test processes that are gone: a guard does
/// not run when its process is killed outright (a test runner's timeout
/// sends SIGKILL), so the next network made cleans up after it. A name
/// whose pid is alive (or was reused) is left alone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("ctdbrs-")
            .and_then(|r| r.split('-').next())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // What still runs in it is that test's: daemons started
            // without CTDB's test mode (NO_TEST_MODE of
            // scripts/local-cluster.sh) do not end with their starter,
            // and would keep the namespace alive after its name is gone.
            let pids = ip(&["netns", "pids", name]);
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl Network {
    /// Makes the bridge and `nodes` node namespaces, links them, and brings
    /// everything up.
    pub fn new(nodes: usize) -> Network {
        require_netns();
        remove_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ctdbrs-{:x}-{n}-", std::process::id());
        let mut net = Network {
            prefix,
            nodes,
            made: Vec::new(),
        };
        let br = net.bridge_ns();
        net.add_ns(&br);
        must(
            "bridge",
            ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]),
        );
        must("bridge up", ip(&["-n", &br, "link", "set", "br0", "up"]));
        let addr = format!("{}/24", net.bridge_ip());
        must(
            "bridge address",
            ip(&["-n", &br, "addr", "add", &addr, "dev", "br0"]),
        );
        must("bridge lo up", ip(&["-n", &br, "link", "set", "lo", "up"]));
        for k in 0..nodes {
            let ns = net.ns(k);
            net.add_ns(&ns);
            let port = format!("p{k}");
            must(
                "veth",
                ip(&[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &br,
                ]),
            );
            must(
                "veth to bridge",
                ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]),
            );
            let addr = format!("{}/24", net.ip(k));
            must(
                "address",
                ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]),
            );
            must("eth0 up", ip(&["-n", &ns, "link", "set", "eth0", "up"]));
            must("lo up", ip(&["-n", &ns, "link", "set", "lo", "up"]));
            net.nft(
                k,
                "add table inet ctdbrs; add chain inet ctdbrs input { type filter hook input priority 0; policy accept; }",
            );
        }
        net
    }

    fn add_ns(&mut self, name: &str) {
        must("netns add", ip(&["netns", "add", name]));
        self.made.push(name.to_owned());
    }

    fn bridge_ns(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// Node `k`'s namespace.
    pub fn ns(&self, k: usize) -> String {
        format!("{}{k}", self.prefix)
    }

    /// What `ns(k)` is made of, without `k` (`NETNS_PREFIX` of
    /// scripts/local-cluster.sh).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node `k`'s address.
    pub fn ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, k as u8 + 1)
    }

    /// The bridge namespace's own address, where a service every node
    /// reaches (an etcd for the cluster lock) can listen.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 254)
    }

    /// A command that runs in the bridge namespace.
    pub fn command_in_bridge(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.bridge_ns()]).arg(program);
        c
    }

    fn nft(&self, k: usize, script: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(k), "nft", script])
            .output()
            .expect("run nft");
        must(&format!("nft in node {k}'s namespace: {script}"), out);
    }

    /// Node `to` no longer receives anything from node `from` (one way).
    pub fn drop_from(&self, to: usize, from: usize) {
        self.nft(
            to,
            &format!("add rule inet ctdbrs input ip saddr {} drop", self.ip(from)),
        );
    }

    /// Node `to` refuses new connections from node `from` to the CTDB
    /// port (their SYNs are dropped); what is connected already stays, and
    /// `to` can still connect to `from`.
    pub fn refuse_connections(&self, to: usize, from: usize) {
        self.nft(
            to,
            &format!(
                "add rule inet ctdbrs input ip saddr {} tcp dport 4379 tcp flags & (syn | ack) == syn drop",
                self.ip(from)
            ),
        );
    }

    /// Node `k` no longer reaches the bridge's own address (the service
    /// there, an etcd, say), nor hears from it.
    pub fn cut_from_bridge(&self, k: usize) {
        self.nft(
            k,
            &format!(
                "add rule inet ctdbrs input ip saddr {} drop",
                self.bridge_ip()
            ),
        );
        self.nft(
            k,
            &format!(
                "add chain inet ctdbrs output {{ type filter hook output priority 0; policy accept; }}; add rule inet ctdbrs output ip daddr {} drop",
                self.bridge_ip()
            ),
        );
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.drop_from(x, y);
                self.drop_from(y, x);
            }
        }
    }

    /// Node `k` drops `percent`% of the packets arriving from the other
    /// nodes and of those it sends them (nftables `numgen random`: this
    /// kernel has no `sch_netem`, so `tc netem loss` is not available).
    pub fn lossy(&self, k: usize, percent: u32) {
        let net = format!("{}/24", Ipv4Addr::new(192, 0, 2, 0));
        self.nft(
            k,
            &format!(
                "add rule inet ctdbrs input ip saddr {net} numgen random mod 100 < {percent} drop"
            ),
        );
        self.nft(
            k,
            &format!(
                "add chain inet ctdbrs output {{ type filter hook output priority 0; policy accept; }}; add rule inet ctdbrs output ip daddr {net} numgen random mod 100 < {percent} drop"
            ),
        );
    }

    /// Node `k`'s link becomes slow: what it sends leaves through a token
    /// bucket of `kbit` kbit/s (`tc tbf`), so packets wait in its queue
    /// (up to `max_delay_ms`; what would wait longer is dropped). This is
    /// the delay this kernel can make: it has neither `sch_netem` (fixed
    /// per-packet delay) nor `sch_fq`/`sch_etf` (departure times) nor
    /// nftables `queue` (a userspace delayer), so a fixed added latency is
    /// impossible here; the delay grows with the traffic instead.
    pub fn slow(&self, k: usize, kbit: u32, max_delay_ms: u32) {
        let out = self
            .command_in(k, "tc")
            .args(["qdisc", "replace", "dev", "eth0", "root", "tbf", "rate"])
            .arg(format!("{kbit}kbit"))
            .args(["burst", "1600", "latency"])
            .arg(format!("{max_delay_ms}ms"))
            .output()
            .expect("run tc");
        must(&format!("tbf on node {k}'s link"), out);
    }

    /// Node `k` drops every TCP segment to or from `port` (its end of a
    /// service's links, e.g. an etcd member's peer port 2380), other
    /// traffic untouched.
    pub fn cut_port(&self, k: usize, port: u16) {
        self.nft(
            k,
            &format!(
                "add rule inet ctdbrs input tcp dport {port} drop; add rule inet ctdbrs input tcp sport {port} drop"
            ),
        );
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for k in 0..self.nodes {
            // A slow link's queue (none there is fine).
            let _ = self
                .command_in(k, "tc")
                .args(["qdisc", "del", "dev", "eth0", "root"])
                .output();
            self.nft(k, "flush chain inet ctdbrs input");
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns(k),
                    "nft",
                    "flush chain inet ctdbrs output",
                ])
                .output();
        }
    }

    /// A command that runs in node `k`'s namespace.
    pub fn command_in(&self, k: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(k)]).arg(program);
        c
    }
}

/// A client host on the nodes' network: a namespace of its own with a
/// veth to the bridge and address 192.0.2.200 ([`Network::client`]);
/// deleted on drop.
pub struct ClientNs {
    name: String,
}

impl ClientNs {
    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.name
    }

    /// Its address.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 200)
    }

    /// A command that runs in the client's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Network {
    /// Adds a client namespace on the bridge (one per network).
    pub fn client(&self) -> ClientNs {
        let name = format!("{}c", self.prefix);
        must("netns add", ip(&["netns", "add", &name]));
        let c = ClientNs { name };
        let br = self.bridge_ns();
        must(
            "client veth",
            ip(&[
                "link", "add", "eth0", "netns", &c.name, "type", "veth", "peer", "name", "pc",
                "netns", &br,
            ]),
        );
        must(
            "client veth to bridge",
            ip(&["-n", &br, "link", "set", "pc", "master", "br0", "up"]),
        );
        let addr = format!("{}/24", c.ip());
        must(
            "client address",
            ip(&["-n", &c.name, "addr", "add", &addr, "dev", "eth0"]),
        );
        must(
            "client eth0 up",
            ip(&["-n", &c.name, "link", "set", "eth0", "up"]),
        );
        must(
            "client lo up",
            ip(&["-n", &c.name, "link", "set", "lo", "up"]),
        );
        c
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
