//! Nodes files (`$CTDB_BASE/nodes`, or a per-node `nodes.<pnn>` when the
//! test gives one), read the way CTDB reads them: one address a line,
//! a commented-out line is a deleted node.

use std::path::Path;

use ctdb_protocol::types::{NodeAndFlags, NodeMap, node_flags};

use crate::state::{CTDB_PORT, parse_ip};

/// Parses the text of a nodes file; `None` if an address is invalid.
pub fn parse_nodes(text: &str) -> Option<NodeMap> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut nodes = Vec::new();
    for line in lines {
        let l = line.trim_start_matches([' ', '\t']);
        let l = if l.len() > 1 {
            l.trim_end_matches([' ', '\t'])
        } else {
            l
        };
        if l.is_empty() {
            continue;
        }
        let (ip, flags) = if l.starts_with('#') {
            ("0.0.0.0", node_flags::DELETED)
        } else {
            (l, 0)
        };
        let addr = parse_ip(ip, CTDB_PORT)?;
        nodes.push(NodeAndFlags {
            pnn: nodes.len() as u32,
            flags,
            addr,
        });
    }
    Some(NodeMap { nodes })
}

fn read(path: &Path) -> Option<NodeMap> {
    parse_nodes(&std::fs::read_to_string(path).ok()?)
}

/// The nodes file node `pnn` would read: `nodes.<pnn>` if present (an
/// empty one counts as unreadable), else `nodes`, under `CTDB_BASE`.
pub fn read_nodes_file(pnn: u32) -> Option<NodeMap> {
    let base = std::env::var_os("CTDB_BASE")?;
    let base = Path::new(&base);
    let specific = base.join(format!("nodes.{pnn}"));
    if specific.exists() {
        let m = read(&specific)?;
        return (!m.nodes.is_empty()).then_some(m);
    }
    read(&base.join("nodes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_and_blank_lines() {
        let m = parse_nodes("10.0.0.1\n  #10.0.0.2\n\n10.0.0.3  \n\n").unwrap();
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.nodes[1].flags, node_flags::DELETED);
        assert_eq!(m.nodes[2].addr.to_string(), "10.0.0.3");
        assert!(parse_nodes("not-an-ip\n").is_none());
    }
}
