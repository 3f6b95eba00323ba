//! The scripted cluster: what `fake_ctdbd` reads from standard input and
//! serves, in the section format of CTDB 4.17's fake daemon.
//!
//! ```text
//! NODEMAP                 <pnn> <ip> <flags> [CURRENT] [RECMASTER] [-CTDB_CAP_RECMASTER]
//! 0 10.0.0.1 0x0 CURRENT RECMASTER         [-CTDB_CAP_LMASTER] [TIMEOUT]
//!
//! IFACES                  :name:link:references:
//! VNNMAP                  generation, then one lmaster per line
//! DBMAP                   <id> <name> [PERSISTENT|STICKY|READONLY|REPLICATED] [seqnum]
//! PUBLICIPS               <ip> <pnn> [allowed,pnns]
//! RECLOCK                 one line
//! CONTROLFAILS            <opcode> <pnn> ERROR|TIMEOUT <comment>
//! RUNSTATE                one runstate name
//! ```
//!
//! A blank line (or the end of input) ends a section.

use std::net::{IpAddr, SocketAddr};

use ctdb_protocol::header::{CTDB_UNKNOWN_PNN, INVALID_GENERATION};
use ctdb_protocol::types::{Runstate, SockAddr, capabilities, db_flags, node_flags};

/// The port node addresses carry.
pub const CTDB_PORT: u16 = 4379;

/// A fake flag: the node never answers `GET_CAPABILITIES`.
pub const NODE_FLAGS_FAKE_TIMEOUT: u32 = 0x8000_0000;

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub pnn: u32,
    pub addr: SockAddr,
    /// Node flags (with [`NODE_FLAGS_FAKE_TIMEOUT`] possibly set).
    pub flags: u32,
    pub capabilities: u32,
}

/// One network interface.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub link_up: bool,
    pub references: u32,
}

/// One database as the DBMAP section describes it.
#[derive(Debug, Clone)]
pub struct DbDesc {
    pub id: u32,
    pub name: String,
    pub flags: u8,
    pub seqnum: u64,
}

/// A public address a node knows, and who hosts it.
#[derive(Debug, Clone)]
pub struct KnownIp {
    pub addr: SockAddr,
    pub pnn: u32,
}

/// How a control named in CONTROLFAILS fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// Reply with status -1 and the comment as the error message.
    Error,
    /// Never reply.
    Timeout,
}

/// One CONTROLFAILS line.
#[derive(Debug, Clone)]
pub struct ControlFail {
    pub opcode: u32,
    pub pnn: u32,
    pub kind: FailKind,
    pub comment: String,
}

/// The whole scripted state. The nodes, vnn map and generation are where
/// the daemon starts from: once it runs, [`crate::cluster::Cluster`] holds
/// them.
#[derive(Debug, Clone)]
pub struct ClusterState {
    pub nodes: Vec<Node>,
    /// The node this daemon is (`CURRENT`).
    pub pnn: u32,
    /// The leader (`RECMASTER`), or `CTDB_UNKNOWN_PNN`.
    pub leader: u32,
    pub ifaces: Vec<Interface>,
    pub generation: u32,
    pub vnnmap: Vec<u32>,
    pub dbs: Vec<DbDesc>,
    /// Per node, the public addresses it knows (None: no PUBLICIPS section).
    pub known_ips: Option<Vec<Vec<KnownIp>>>,
    pub reclock: Option<String>,
    pub control_fails: Vec<ControlFail>,
    pub runstate: Runstate,
}

/// Parses an integer the way C's `strtoul(s, NULL, 0)` does: decimal, `0x`
/// hex or leading-zero octal; garbage after the digits is ignored and no
/// digits at all give 0.
pub fn strtoul(s: &str) -> u64 {
    let s = s.trim_start();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = if let Some(r) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, r)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    let v = u64::from_str_radix(&digits[..end], radix).unwrap_or(0);
    if neg { v.wrapping_neg() } else { v }
}

/// Parses an IP address (v4 or v6) into a socket address with `port`.
pub fn parse_ip(s: &str, port: u16) -> Option<SockAddr> {
    let ip: IpAddr = s.parse().ok()?;
    Some(SocketAddr::new(ip, port).into())
}

/// Parses a runstate name as the tool prints it.
pub fn runstate_from_name(s: &str) -> Option<Runstate> {
    (0..=6)
        .filter_map(Runstate::from_u32)
        .find(|r| r.name().eq_ignore_ascii_case(s) && *r != Runstate::Unknown)
}

/// Why the input could not be read.
#[derive(Debug)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn fail(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

impl ClusterState {
    /// Reads a state description.
    pub fn parse(input: &str) -> Result<ClusterState, ParseError> {
        let mut st = ClusterState {
            nodes: Vec::new(),
            pnn: CTDB_UNKNOWN_PNN,
            leader: CTDB_UNKNOWN_PNN,
            ifaces: Vec::new(),
            generation: INVALID_GENERATION,
            vnnmap: Vec::new(),
            dbs: Vec::new(),
            known_ips: None,
            reclock: None,
            control_fails: Vec::new(),
            runstate: Runstate::Running,
        };
        let mut lines = input.lines().peekable();
        while let Some(line) = lines.next() {
            // Lines of a section, up to a blank line.
            let mut section = Vec::new();
            while let Some(l) = lines.peek() {
                if l.is_empty() {
                    lines.next();
                    break;
                }
                section.push(lines.next().unwrap());
            }
            match line {
                "NODEMAP" => st.parse_nodemap(&section)?,
                "IFACES" => st.parse_ifaces(&section)?,
                "VNNMAP" => st.parse_vnnmap(&section)?,
                "DBMAP" => st.parse_dbmap(&section)?,
                "PUBLICIPS" => st.parse_public_ips(&section)?,
                "RECLOCK" => {
                    let l = section
                        .first()
                        .ok_or_else(|| fail("Parsing reclock failed"))?;
                    st.reclock = Some((*l).to_owned());
                }
                "CONTROLFAILS" => st.parse_control_fails(&section)?,
                "RUNSTATE" => {
                    let l = section
                        .first()
                        .ok_or_else(|| fail("Parsing runstate failed"))?;
                    st.runstate =
                        runstate_from_name(l).ok_or_else(|| fail("Parsing runstate failed"))?;
                }
                "" => {}
                other => return Err(fail(format!("Unknown line {other}"))),
            }
        }
        st.verify()?;
        Ok(st)
    }

    fn parse_nodemap(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        for line in lines {
            let mut toks = line.split([' ', '\t']).filter(|t| !t.is_empty());
            let Some(pnn) = toks.next() else {
                eprintln!("bad line ({line}) - missing PNN");
                continue;
            };
            let pnn = strtoul(pnn) as u32;
            let Some(ip) = toks.next() else {
                eprintln!("bad line ({line}) - missing IP");
                continue;
            };
            let Some(mut addr) = parse_ip(ip, CTDB_PORT) else {
                eprintln!("bad line ({line}) - invalid IP");
                continue;
            };
            let Some(flags) = toks.next() else {
                eprintln!("bad line ({line}) - missing flags");
                continue;
            };
            let mut flags = strtoul(flags) as u32;
            if flags & node_flags::DELETED != 0 {
                addr = parse_ip("0.0.0.0", CTDB_PORT).unwrap();
            }
            let mut caps = capabilities::RECMASTER | capabilities::LMASTER;
            for t in toks {
                match t {
                    "CURRENT" => self.pnn = pnn,
                    "RECMASTER" => self.leader = pnn,
                    "-CTDB_CAP_RECMASTER" => caps &= !capabilities::RECMASTER,
                    "-CTDB_CAP_LMASTER" => caps &= !capabilities::LMASTER,
                    "TIMEOUT" => flags |= NODE_FLAGS_FAKE_TIMEOUT,
                    _ => {}
                }
            }
            self.nodes.push(Node {
                pnn,
                addr,
                flags,
                capabilities: caps,
            });
        }
        if self.nodes.is_empty() {
            return Err(fail("Parsing nodemap failed"));
        }
        Ok(())
    }

    fn parse_ifaces(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        for line in lines {
            if *line == ":Name:LinkStatus:References:" {
                continue;
            }
            let mut toks = line.split(':').filter(|t| !t.is_empty());
            let (Some(name), Some(link), Some(refs)) = (toks.next(), toks.next(), toks.next())
            else {
                eprintln!("bad line ({line}) - missing fields");
                continue;
            };
            self.ifaces.push(Interface {
                name: name.to_owned(),
                link_up: strtoul(link) as u16 != 0,
                references: strtoul(refs) as u32,
            });
        }
        if self.ifaces.is_empty() {
            return Err(fail("Parsing interfaces failed"));
        }
        Ok(())
    }

    fn parse_vnnmap(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        for line in lines {
            let n = strtoul(line) as u32;
            if self.generation == INVALID_GENERATION {
                self.generation = n;
            } else {
                self.vnnmap.push(n);
            }
        }
        if self.vnnmap.is_empty() {
            return Err(fail("Parsing vnnmap failed"));
        }
        Ok(())
    }

    fn parse_dbmap(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        for line in lines {
            let mut toks = line.split([' ', '\t']).filter(|t| !t.is_empty());
            let (Some(id), Some(name)) = (toks.next(), toks.next()) else {
                eprintln!("bad line ({line}) - missing ID or NAME");
                continue;
            };
            let mut flags = 0u8;
            let mut seqnum = 0u64;
            for t in toks {
                match t {
                    "PERSISTENT" => flags |= db_flags::PERSISTENT,
                    "STICKY" => flags |= db_flags::STICKY,
                    "READONLY" => flags |= db_flags::READONLY,
                    "REPLICATED" => flags |= db_flags::REPLICATED,
                    t if t.starts_with(|c: char| c.is_ascii_digit()) => {
                        if flags & (db_flags::PERSISTENT | db_flags::REPLICATED) == 0 {
                            return Err(fail("seq_num for volatile db"));
                        }
                        seqnum = strtoul(t);
                    }
                    _ => {}
                }
            }
            self.dbs.push(DbDesc {
                id: strtoul(id) as u32,
                name: name.to_owned(),
                flags,
                seqnum,
            });
        }
        if self.dbs.is_empty() {
            return Err(fail("Parsing dbmap failed"));
        }
        Ok(())
    }

    fn parse_public_ips(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        let n = self.nodes.len();
        if n == 0 {
            return Err(fail("Must initialise nodemap before public IPs"));
        }
        let mut known: Vec<Vec<KnownIp>> = vec![Vec::new(); n];
        let mut any = false;
        for line in lines {
            let mut toks = line.split([' ', '\t']).filter(|t| !t.is_empty());
            let Some(ip) = toks.next() else { continue };
            let Some(addr) = parse_ip(ip, 0) else {
                eprintln!("ERROR, bad address :{ip}");
                continue;
            };
            any = true;
            let pnn = toks.next().map_or(CTDB_UNKNOWN_PNN, |t| strtoul(t) as u32);
            let allowed = toks.next().filter(|t| !t.starts_with('#'));
            match allowed {
                None => {
                    for k in known.iter_mut() {
                        k.push(KnownIp { addr, pnn });
                    }
                }
                Some(list) => {
                    for p in list.split(',').filter(|p| !p.is_empty()) {
                        let p = strtoul(p) as usize;
                        if let Some(k) = known.get_mut(p) {
                            k.push(KnownIp { addr, pnn });
                        }
                    }
                }
            }
        }
        if !any {
            return Err(fail("Parsing public IPs failed"));
        }
        self.known_ips = Some(known);
        Ok(())
    }

    fn parse_control_fails(&mut self, lines: &[&str]) -> Result<(), ParseError> {
        for line in lines {
            let mut rest = line.trim_start_matches([' ', '\t']);
            let mut next_tok = || {
                let t = rest.trim_start_matches([' ', '\t']);
                let end = t.find([' ', '\t']).unwrap_or(t.len());
                let (tok, r) = t.split_at(end);
                rest = r;
                tok
            };
            let opcode = next_tok();
            let pnn = next_tok();
            let kind = next_tok();
            if opcode.is_empty() || pnn.is_empty() || kind.is_empty() {
                eprintln!("bad line ({line})");
                continue;
            }
            let kind = match kind {
                "ERROR" => FailKind::Error,
                "TIMEOUT" => FailKind::Timeout,
                _ => {
                    return Err(fail(format!(
                        "bad line ({line}) - error must be \"ERROR\" or \"TIMEOUT\""
                    )));
                }
            };
            let comment = rest.trim_start_matches([' ', '\t']);
            if comment.is_empty() {
                eprintln!("bad line ({line}) - missing comment");
                continue;
            }
            self.control_fails.push(ControlFail {
                opcode: strtoul(opcode) as u32,
                pnn: strtoul(pnn) as u32,
                kind,
                comment: comment.to_owned(),
            });
        }
        if self.control_fails.is_empty() {
            return Err(fail("Parsing fake control failures failed"));
        }
        Ok(())
    }

    fn verify(&self) -> Result<(), ParseError> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pnn != i as u32 {
                return Err(fail(format!("Expected node {i}, found {}", n.pnn)));
            }
        }
        if !self.nodes.is_empty() && self.current().is_none() {
            return Err(fail("No CURRENT node in NODEMAP"));
        }
        Ok(())
    }

    /// The node this daemon speaks for.
    pub fn current(&self) -> Option<&Node> {
        self.nodes.get(self.pnn as usize)
    }

    /// The control failure configured for `opcode` on node `pnn`, if any
    /// (the most recently listed wins, as CTDB's fake daemon has it).
    pub fn control_fail(&self, opcode: u32, pnn: u32) -> Option<&ControlFail> {
        self.control_fails
            .iter()
            .rev()
            .find(|f| f.opcode == opcode && (f.pnn == pnn || f.pnn == CTDB_UNKNOWN_PNN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoul_like_c() {
        assert_eq!(strtoul("0x24"), 0x24);
        assert_eq!(strtoul("12abc"), 12);
        assert_eq!(strtoul("010"), 8);
        assert_eq!(strtoul("zz"), 0);
        assert_eq!(strtoul("-1") as u32, u32::MAX);
    }

    #[test]
    fn parses_every_section() {
        let input = "NODEMAP\n0 192.168.20.41 0x0 CURRENT RECMASTER\n1 192.168.20.42 0x2 -CTDB_CAP_LMASTER\n2 192.168.20.43 0x10\n\n\
IFACES\n:Name:LinkStatus:References:\n:eth2:1:2:\n:eth1:0:4:\n\n\
VNNMAP\n654321\n0\n1\n\n\
DBMAP\n0x7a19d84d locking.tdb\n0x4e66c2b2 brlock.tdb STICKY\n0x3ef19640 passdb.tdb PERSISTENT 0x10\n\n\
PUBLICIPS\n10.0.0.31  0\n10.0.0.32  1 0,1\n\n\
RECLOCK\n/some/lock\n\n\
CONTROLFAILS\n91 1 ERROR CTDB_CONTROL_GET_NODEMAP fake failure\n80 2 TIMEOUT  some  comment\n\n\
RUNSTATE\nSTARTUP\n";
        let st = ClusterState::parse(input).unwrap();
        assert_eq!(st.nodes.len(), 3);
        assert_eq!((st.pnn, st.leader), (0, 0));
        assert_eq!(st.nodes[1].capabilities, capabilities::RECMASTER);
        assert_eq!(st.nodes[2].addr.to_string(), "0.0.0.0");
        assert_eq!(st.ifaces.len(), 2);
        assert!(!st.ifaces[1].link_up);
        assert_eq!((st.generation, st.vnnmap.len()), (654321, 2));
        assert_eq!(st.dbs[2].seqnum, 16);
        let k = st.known_ips.as_ref().unwrap();
        assert_eq!((k[0].len(), k[1].len(), k[2].len()), (2, 2, 1));
        assert_eq!(st.reclock.as_deref(), Some("/some/lock"));
        assert_eq!(st.control_fail(80, 2).unwrap().comment, "some  comment");
        assert_eq!(st.control_fail(91, 1).unwrap().kind, FailKind::Error);
        assert!(st.control_fail(91, 0).is_none());
        assert_eq!(st.runstate, Runstate::Startup);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(ClusterState::parse("BOGUS\n").is_err());
        assert!(ClusterState::parse("NODEMAP\n1 10.0.0.1 0x0 CURRENT\n").is_err());
        assert!(ClusterState::parse("DBMAP\n0x1 a.tdb 5\n").is_err());
        assert!(ClusterState::parse("CONTROLFAILS\n1 0 MAYBE x\n").is_err());
    }
}
