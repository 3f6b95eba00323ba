//! The `nodes` file: one node address per line, the line number (counting
//! only non-empty lines) being the node's PNN.
//!
//! A line starting with `#` is a *deleted* node: it keeps its PNN so that
//! the nodes after it keep theirs. Blank lines are skipped; leading and
//! trailing blanks are ignored. Addresses are IPv4 or IPv6; every node
//! listens on [`CTDB_PORT`].

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::ConfigError;

/// The TCP port nodes talk to each other on.
pub const CTDB_PORT: u16 = 4379;

/// One line of the nodes file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEntry {
    /// `None` for a deleted node.
    pub addr: Option<IpAddr>,
}

impl NodeEntry {
    pub fn is_deleted(&self) -> bool {
        self.addr.is_none()
    }

    /// The node's transport address.
    pub fn sockaddr(&self) -> Option<SocketAddr> {
        self.addr.map(|ip| SocketAddr::new(ip, CTDB_PORT))
    }
}

/// Parses the text of a nodes file.
pub fn parse_nodes(text: &str, path: &Path) -> Result<Vec<NodeEntry>, ConfigError> {
    let mut nodes = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            nodes.push(NodeEntry { addr: None });
            continue;
        }
        let addr: IpAddr = line.parse().map_err(|_| ConfigError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            why: format!("\"{line}\" is not an IPv4 or IPv6 address"),
        })?;
        nodes.push(NodeEntry { addr: Some(addr) });
    }
    Ok(nodes)
}

/// Reads and parses a nodes file.
pub fn load_nodes(path: &Path) -> Result<Vec<NodeEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let nodes = parse_nodes(&text, path)?;
    if nodes.iter().all(NodeEntry::is_deleted) {
        return Err(ConfigError::Syntax {
            path: path.to_owned(),
            line: 0,
            why: "no nodes".into(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_nodes_keep_pnns() {
        let n = parse_nodes(
            "127.0.0.1\n#127.0.0.2\n\n  127.0.0.3  \nfd00::4\n\n",
            Path::new("nodes"),
        )
        .unwrap();
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].addr, Some("127.0.0.1".parse().unwrap()));
        assert!(n[1].is_deleted());
        assert_eq!(n[2].addr, Some("127.0.0.3".parse().unwrap()));
        assert_eq!(n[3].addr, Some("fd00::4".parse().unwrap()));
        assert_eq!(n[3].sockaddr().unwrap().port(), 4379);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_nodes("127.0.0.1\nnot-an-ip\n", Path::new("nodes")).is_err());
    }
}
