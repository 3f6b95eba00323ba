//! Public addresses and the interfaces that carry them, as CTDB 4.17
//! keeps them (`ctdb_takeover.c`): the `public_addresses` file, each
//! address's candidate interfaces, which one is in use, interface link
//! states and reference counts.
//!
//! Orders matter for tool output: CTDB adds every address and every new
//! interface at the head of its list, so listings come newest first; the
//! lists here keep that order.

use std::net::IpAddr;
use std::path::Path;

use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::types::{CTDB_IFACE_NAME_SIZE, Connection, SockAddr};

/// Longest interface name CTDB accepts (`IFNAMSIZ`).
pub const IFACE_MAX: usize = 16;

/// A network interface named by some public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub link_up: bool,
    /// Public addresses currently assigned to it on this node.
    pub references: u32,
}

/// One public address (CTDB's `ctdb_vnn`).
#[derive(Debug, Clone)]
pub struct Vnn {
    pub addr: IpAddr,
    pub mask: u32,
    /// Candidate interfaces, in the file's order.
    pub ifaces: Vec<String>,
    /// The interface it is assigned to on this node, if any.
    pub iface: Option<String>,
    /// The node hosting it, as this node believes (`CTDB_UNKNOWN_PNN`).
    pub pnn: u32,
    /// Connections to tickle when it moves (its tickle list).
    pub tcp: Vec<Connection>,
    /// The tickle list changed since the last time it was sent.
    pub tcp_update_needed: bool,
    /// A takeip/releaseip/updateip for it is running.
    pub update_in_flight: bool,
    /// `DEL_PUBLIC_IP` while hosted: deleted once released.
    pub delete_pending: bool,
    /// Bumped to cancel its gratuitous ARPs and tickles.
    pub announce_gen: u64,
}

impl Vnn {
    fn new(addr: IpAddr, mask: u32, ifaces: Vec<String>) -> Vnn {
        Vnn {
            addr,
            mask,
            ifaces,
            iface: None,
            pnn: CTDB_UNKNOWN_PNN,
            tcp: Vec::new(),
            tcp_update_needed: false,
            update_in_flight: false,
            delete_pending: false,
            announce_gen: 0,
        }
    }
}

/// The address only of a wire address, as CTDB compares public addresses
/// (`ctdb_same_ip`: IPv4-mapped IPv6 addresses count as IPv4).
pub fn canonical_ip(a: &SockAddr) -> Option<IpAddr> {
    a.ip().map(canonical)
}

pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A bad line or address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("No interface specified at line {0} of public addresses file")]
    NoInterface(usize),
    #[error("Badly formed line {0} in public address list")]
    BadLine(usize),
    #[error("Duplicate public IP address '{0}'")]
    Duplicate(IpAddr),
    #[error("Unknown interface {iface} for public address {addr}")]
    UnknownIface { iface: String, addr: IpAddr },
    #[error("Interface name too long \"{0}\"")]
    IfaceTooLong(String),
    #[error("Failed to load public address list '{0}': {1}")]
    Read(String, std::io::Error),
}

/// `ADDRESS/MASK`, as `ctdb_sock_addr_mask_from_string` reads it.
pub fn parse_addr_mask(s: &str) -> Option<(IpAddr, u32)> {
    let (a, m) = s.split_once('/')?;
    let ip: IpAddr = a.parse().ok()?;
    let mask: u32 = m.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (mask <= max).then_some((canonical(ip), mask))
}

/// One line of the file: address, mask, interfaces.
pub type FileEntry = (IpAddr, u32, String);

/// Reads `public_addresses`: `None` when the file does not exist.
pub fn read_file(path: &Path) -> Result<Option<Vec<FileEntry>>, AddressError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AddressError::Read(path.display().to_string(), e)),
    };
    parse_file(&text).map(Some)
}

/// Parses the text of a `public_addresses` file.
pub fn parse_file(text: &str) -> Result<Vec<FileEntry>, AddressError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_start_matches([' ', '\t']);
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut toks = line.split([' ', '\t']).filter(|t| !t.is_empty());
        let Some(addr) = toks.next() else {
            continue;
        };
        let Some(ifaces) = toks.next() else {
            return Err(AddressError::NoInterface(n));
        };
        let (ip, mask) = parse_addr_mask(addr).ok_or(AddressError::BadLine(n))?;
        out.push((ip, mask, ifaces.to_owned()));
    }
    Ok(out)
}

/// Whether the interface exists on this host (in this network namespace).
pub fn iface_exists(name: &str) -> bool {
    iface_index(name).is_some()
}

/// The interface's index, from sysfs.
pub fn iface_index(name: &str) -> Option<u32> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether this host has `ip` on an interface (CTDB's test: binding a TCP
/// socket to it succeeds).
pub fn have_ip(ip: IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// The public addresses and interfaces of this node.
#[derive(Debug, Default)]
pub struct Addresses {
    /// Newest first, as CTDB lists them.
    pub vnns: Vec<Vnn>,
    /// Newest first.
    pub ifaces: Vec<Interface>,
}

impl Addresses {
    pub fn find(&self, ip: IpAddr) -> Option<usize> {
        let ip = canonical(ip);
        self.vnns.iter().position(|v| v.addr == ip)
    }

    pub fn find_sock(&self, a: &SockAddr) -> Option<usize> {
        canonical_ip(a).and_then(|ip| self.find(ip))
    }

    pub fn iface(&self, name: &str) -> Option<&Interface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    fn iface_mut(&mut self, name: &str) -> Option<&mut Interface> {
        self.ifaces.iter_mut().find(|i| i.name == name)
    }

    /// Adds a public address (`ctdb_add_public_address`): interfaces
    /// must exist; new ones start with their link up.
    pub fn add(&mut self, ip: IpAddr, mask: u32, ifaces: &str) -> Result<(), AddressError> {
        let ip = canonical(ip);
        if self.find(ip).is_some() {
            return Err(AddressError::Duplicate(ip));
        }
        let names: Vec<String> = ifaces
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for n in &names {
            if !iface_exists(n) {
                return Err(AddressError::UnknownIface {
                    iface: n.clone(),
                    addr: ip,
                });
            }
            if n.len() > IFACE_MAX || n.len() >= CTDB_IFACE_NAME_SIZE {
                return Err(AddressError::IfaceTooLong(n.clone()));
            }
        }
        for n in &names {
            if self.iface(n).is_none() {
                self.ifaces.insert(
                    0,
                    Interface {
                        name: n.clone(),
                        link_up: true,
                        references: 0,
                    },
                );
            }
        }
        self.vnns.insert(0, Vnn::new(ip, mask, names));
        Ok(())
    }

    /// Deletes address `idx` and the interfaces no other address names
    /// (`do_delete_ip`).
    pub fn delete(&mut self, idx: usize, my_pnn: u32) {
        self.unassign(idx, my_pnn);
        let v = self.vnns.remove(idx);
        for n in &v.ifaces {
            if !self.vnns.iter().any(|o| o.ifaces.contains(n)) {
                self.ifaces.retain(|i| &i.name != n);
            }
        }
    }

    /// The usable interface with the fewest addresses on it (the first
    /// of equals, in the address's order).
    pub fn best_iface(&self, idx: usize) -> Option<String> {
        let mut best: Option<&Interface> = None;
        for n in &self.vnns[idx].ifaces {
            let Some(cur) = self.iface(n) else { continue };
            if !cur.link_up {
                continue;
            }
            match best {
                None => best = Some(cur),
                Some(b) if cur.references < b.references => best = Some(cur),
                _ => {}
            }
        }
        best.map(|i| i.name.clone())
    }

    /// Assigns address `idx` to its best interface (no change if it has
    /// one); false when none is usable.
    pub fn assign(&mut self, idx: usize, my_pnn: u32) -> bool {
        if self.vnns[idx].iface.is_some() {
            return true;
        }
        let Some(best) = self.best_iface(idx) else {
            return false;
        };
        if let Some(i) = self.iface_mut(&best) {
            i.references += 1;
        }
        let v = &mut self.vnns[idx];
        v.iface = Some(best);
        v.pnn = my_pnn;
        true
    }

    /// Takes address `idx` off its interface; forgets that this node
    /// hosts it.
    pub fn unassign(&mut self, idx: usize, my_pnn: u32) {
        if let Some(name) = self.vnns[idx].iface.take()
            && let Some(i) = self.iface_mut(&name)
        {
            i.references = i.references.saturating_sub(1);
        }
        let v = &mut self.vnns[idx];
        if v.pnn == my_pnn {
            v.pnn = CTDB_UNKNOWN_PNN;
        }
    }

    /// Puts address `idx` back on interface `name` (a failed update).
    pub fn reassign_to(&mut self, idx: usize, name: Option<String>) {
        if let Some(n) = &name
            && let Some(i) = self.iface_mut(n)
        {
            i.references += 1;
        }
        self.vnns[idx].iface = name;
    }

    /// Whether address `idx` can be hosted here now: the node is
    /// RUNNING, not inactive or disabled, and one of its interfaces is up.
    pub fn available(&self, idx: usize, running: bool, my_flags: u32) -> bool {
        use ctdb_protocol::types::node_flags;
        if !running || my_flags & (node_flags::INACTIVE | node_flags::DISABLED) != 0 {
            return false;
        }
        let v = &self.vnns[idx];
        if v.delete_pending {
            return false;
        }
        if let Some(n) = &v.iface
            && self.iface(n).is_some_and(|i| i.link_up)
        {
            return true;
        }
        v.ifaces
            .iter()
            .any(|n| self.iface(n).is_some_and(|i| i.link_up))
    }

    /// Sets an interface's link state; `None` if unknown, else whether
    /// it changed.
    pub fn set_link(&mut self, name: &str, up: bool) -> Option<bool> {
        let i = self.iface_mut(name)?;
        let changed = i.link_up != up;
        i.link_up = up;
        Some(changed)
    }
}

/// `ADDRESS` as the wire carries it (port 0).
pub fn sock(ip: IpAddr) -> SockAddr {
    SockAddr::from(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_like_ctdb() {
        let t = "# comment\n  10.0.0.1/24 lo\n\n\t10.0.0.2/24\tlo,lo2  \nfd00::1/64 lo\n";
        let e = parse_file(t).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], ("10.0.0.1".parse().unwrap(), 24, "lo".into()));
        assert_eq!(e[1].2, "lo,lo2");
        assert_eq!(e[2].1, 64);
        assert!(matches!(
            parse_file("10.0.0.1/24\n"),
            Err(AddressError::NoInterface(1))
        ));
        assert!(matches!(
            parse_file("x\n10.0.0.1 lo\n"),
            Err(AddressError::NoInterface(1))
        ));
        assert!(matches!(
            parse_file("10.0.0.1 lo\n"),
            Err(AddressError::BadLine(1))
        ));
        assert!(matches!(
            parse_file("10.0.0.1/33 lo\n"),
            Err(AddressError::BadLine(1))
        ));
    }

    #[test]
    fn newest_first_and_interface_accounting() {
        let mut a = Addresses::default();
        a.add("10.0.0.1".parse().unwrap(), 24, "lo").unwrap();
        a.add("10.0.0.2".parse().unwrap(), 24, "lo").unwrap();
        assert!(matches!(
            a.add("10.0.0.2".parse().unwrap(), 24, "lo"),
            Err(AddressError::Duplicate(_))
        ));
        assert!(matches!(
            a.add("10.0.0.3".parse().unwrap(), 24, "nosuchif0"),
            Err(AddressError::UnknownIface { .. })
        ));
        assert_eq!(a.vnns[0].addr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert!(a.assign(0, 1));
        assert!(a.assign(1, 1));
        assert_eq!(a.iface("lo").unwrap().references, 2);
        assert_eq!(a.vnns[0].pnn, 1);
        a.unassign(0, 1);
        assert_eq!(a.vnns[0].pnn, CTDB_UNKNOWN_PNN);
        assert_eq!(a.iface("lo").unwrap().references, 1);
        assert!(a.available(1, true, 0));
        assert!(!a.available(1, false, 0));
        assert_eq!(a.set_link("lo", false), Some(true));
        assert!(!a.available(1, true, 0));
        assert_eq!(a.best_iface(1), None);
        a.delete(1, 1);
        a.delete(0, 1);
        assert!(a.ifaces.is_empty());
    }
}
