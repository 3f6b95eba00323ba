//! Samba's `smbd` in clustered mode on every node of a local cluster: the
//! file server that real deployments run on CTDB, as an independent user
//! of the daemon under test.
//!
//! Node K's smbd listens on the node's own address (port 445), which is
//! added to `lo` for the cluster's lifetime (Samba only binds to addresses
//! of an interface) and removed again by the guard. All smbds serve one
//! share directory (the cluster file system) with POSIX locking, kernel
//! oplocks and kernel share modes off, so byte-range locks, share modes,
//! oplocks, leases and durable handles live only in the cluster's
//! databases. `tests/smb/smb2check.py` drives them as SMB2 clients.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Cluster, poll_until, workspace_root};

/// The SMB user the scenarios log in as, and its password.
pub const USER: &str = "root";
pub const PASSWORD: &str = "ctdb-rs-test";
/// The share every node serves.
pub const SHARE: &str = "share";

const SMBD: &str = "/usr/sbin/smbd";
const SMBPASSWD: &str = "/usr/bin/smbpasswd";
const PYTHON: &str = "/usr/bin/python3";

/// Fails the test (never skips it) when Samba or the SMB client library is
/// not installed; `scripts/install-deps.sh` installs them.
pub fn require_samba() {
    for p in [SMBD, SMBPASSWD, PYTHON] {
        assert!(
            Path::new(p).exists(),
            "{p} missing: run scripts/install-deps.sh (samba, python3-impacket)"
        );
    }
    let out = Command::new(PYTHON)
        .args(["-c", "import impacket.smb3"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 cannot import impacket (install python3-impacket): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The smbds of a cluster; dropping it stops them and removes the
/// addresses it added.
pub struct Samba {
    dir: PathBuf,
    ips: Vec<Ipv4Addr>,
    added: Vec<Ipv4Addr>,
    smbds: Vec<Child>,
}

impl Samba {
    /// Starts smbd on every node of `cluster` and waits until each accepts
    /// connections.
    pub fn start(cluster: &Cluster) -> Samba {
        require_samba();
        let dir = cluster.dir().join("samba");
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let mut s = Samba {
            dir: dir.clone(),
            ips: (0..cluster.len()).map(|k| cluster.ip(k)).collect(),
            added: Vec::new(),
            smbds: Vec::new(),
        };
        for k in 0..cluster.len() {
            s.add_address(cluster.ip(k));
            let conf = s.write_conf(cluster, k, &share);
            if k == 0 {
                s.add_user(&conf);
            }
        }
        // smbd claims the cluster's Samba version at start-up: a shared
        // g_lock on one g_lock.tdb key, upgraded to exclusive when no
        // version is recorded yet. Two smbds that both find none both try
        // the upgrade, and Samba refuses the second (POSSIBLE_DEADLOCK:
        // "smbd (null) already running") and exits, on either daemon. So
        // node 0's smbd records the version first; the others then find it
        // and keep their shared lock.
        s.spawn(0);
        s.wait_listening(0);
        for k in 1..cluster.len() {
            s.spawn(k);
        }
        for k in 1..cluster.len() {
            s.wait_listening(k);
        }
        s
    }

    /// Starts node `k`'s smbd, its output in `smbd.out`.
    fn spawn(&mut self, k: usize) {
        let log = std::fs::File::create(self.node_dir(k).join("smbd.out")).unwrap();
        let child = Command::new(SMBD)
            .args(["--foreground", "--no-process-group", "--debug-stdout"])
            .arg("--configfile")
            .arg(self.conf(k))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so the guard stops its children too.
            .process_group(0)
            .spawn()
            .expect("start smbd");
        self.smbds.push(child);
    }

    /// Waits until node `k`'s smbd accepts connections; fails the test with
    /// its output if it exits first.
    fn wait_listening(&mut self, k: usize) {
        let addr = (self.ips[k], 445);
        poll_until(
            Duration::from_secs(30),
            &format!("smbd of node {k} listening on {}:445", self.ips[k]),
            || {
                if let Ok(Some(st)) = self.smbds[k].try_wait() {
                    panic!("smbd of node {k} exited ({st}):\n{}", self.output(k));
                }
                std::net::TcpStream::connect(addr).ok()
            },
        );
    }

    fn node_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("smb.{k}"))
    }

    fn conf(&self, k: usize) -> PathBuf {
        self.node_dir(k).join("smb.conf")
    }

    /// What smbd of node `k` printed.
    pub fn output(&self, k: usize) -> String {
        std::fs::read_to_string(self.node_dir(k).join("smbd.out")).unwrap_or_default()
    }

    /// Node `k`'s smbd address.
    pub fn ip(&self, k: usize) -> Ipv4Addr {
        self.ips[k]
    }

    fn add_address(&mut self, ip: Ipv4Addr) {
        sweep_dead_addresses();
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .args(["label", &address_label(std::process::id())])
            .output()
            .expect("run ip (iproute2)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("File exists"),
            "ip addr add {ip}/32 dev lo: {err}"
        );
        if out.status.success() {
            self.added.push(ip);
        }
    }

    fn write_conf(&self, cluster: &Cluster, k: usize, share: &Path) -> PathBuf {
        let d = self.node_dir(k);
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let text = format!(
            "[global]
  clustering = yes
  ctdbd socket = {socket}
  netbios name = CTDBRSTEST
  workgroup = CTDBRS
  server role = standalone server
  interfaces = {ip}
  bind interfaces only = yes
  smb ports = 445
  disable netbios = yes
  private dir = {d}/private
  lock directory = {d}/lock
  state directory = {d}/state
  cache directory = {d}/cache
  pid directory = {d}/pid
  ncalrpc dir = {d}/ncalrpc
  log level = 1
  passdb backend = smbpasswd:{passwd}
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_02
  rpc_server:default = disabled
  posix locking = no
  kernel oplocks = no
  kernel share modes = no
[{SHARE}]
  path = {share}
  read only = no
  durable handles = yes
",
            socket = cluster.socket(k).display(),
            ip = cluster.ip(k),
            d = d.display(),
            passwd = self.dir.join("smbpasswd").display(),
            share = share.display(),
        );
        let p = self.conf(k);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn add_user(&self, conf: &Path) {
        use std::io::Write;
        std::fs::write(self.dir.join("smbpasswd"), "").unwrap();
        let mut c = Command::new(SMBPASSWD)
            .arg("-c")
            .arg(conf)
            .args(["-a", "-s", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run smbpasswd");
        writeln!(c.stdin.take().unwrap(), "{PASSWORD}\n{PASSWORD}").unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "smbpasswd -a {USER}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one scenario of `tests/smb/smb2check.py` with its first client
    /// on node `a` and its second on node `b`.
    pub fn scenario(&self, name: &str, a: usize, b: usize) -> Output {
        let script = workspace_root().join("tests/smb/smb2check.py");
        Command::new(PYTHON)
            .arg(script)
            .arg(name)
            .arg(self.ip(a).to_string())
            .arg(self.ip(b).to_string())
            .args([SHARE, USER, PASSWORD])
            .stdin(Stdio::null())
            .output()
            .expect("run smb2check.py")
    }

    /// Runs a scenario and fails the test, with everything that helps to
    /// see why, unless it passed.
    pub fn scenario_ok(&self, cluster: &Cluster, name: &str, a: usize, b: usize) -> String {
        let out = self.scenario(name, a, b);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("PASS"),
            "SMB scenario {name} (node {a} then node {b}) on {:?} failed:\n{text}\n--- daemons:\n{}",
            cluster.daemon(),
            cluster.log_tails()
        );
        text
    }
}

/// The label a test process gives the addresses it adds to `lo`
/// (`lo:t<pid>`), so that a later test can tell whose they are.
fn address_label(pid: u32) -> String {
    format!("lo:t{pid}")
}

/// Removes the `lo` addresses added by test processes that are gone: a
/// guard does not run when a runner's timeout SIGKILLs its test.
fn sweep_dead_addresses() {
    let Ok(out) = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", "lo"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // 1: lo    inet 127.9.1.2/32 scope host lo:t1234\       valid_lft ...
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| *w == "inet") else {
            continue;
        };
        let Some(pid) = words
            .iter()
            .find_map(|w| w.strip_prefix("lo:t"))
            .map(|p| p.trim_end_matches('\\'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists()
            && let Some(addr) = words.get(i + 1)
        {
            let _ = Command::new("ip")
                .args(["addr", "del", addr, "dev", "lo"])
                .output();
        }
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        for c in &mut self.smbds {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        for ip in &self.added {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_lo(addr: &str) -> bool {
        let out = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "dev", "lo"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr} "))
    }

    #[test]
    fn addresses_of_dead_test_processes_are_swept() {
        // A pid above the kernel's maximum (4194304) is never alive.
        let dead = "127.250.250.251/32";
        let mine = "127.250.250.252/32";
        for (addr, pid) in [(dead, 9_999_999), (mine, std::process::id())] {
            let st = Command::new("ip")
                .args(["addr", "add", addr, "dev", "lo", "label"])
                .arg(address_label(pid))
                .status()
                .expect("run ip");
            assert!(st.success(), "ip addr add {addr}");
        }
        sweep_dead_addresses();
        let (dead_left, mine_left) = (on_lo(dead), on_lo(mine));
        for addr in [dead, mine] {
            let _ = Command::new("ip")
                .args(["addr", "del", addr, "dev", "lo"])
                .status();
        }
        assert!(!dead_left, "the dead process's address was not removed");
        assert!(mine_left, "a live process's address was removed");
    }
}
