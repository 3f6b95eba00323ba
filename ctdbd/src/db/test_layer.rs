//! For unit tests of the database layer: the layer as node 1 of a
//! three-node cluster sees it (vnnmap 0, 1, 2 at generation 5), with one
//! database open. Each test module adds what its rules need on top.

use std::path::Path;

use ctdb_protocol::types::{VnnMap, capabilities};
use tokio::sync::mpsc;

use super::{Databases, DbConfig, DbEvent};
use crate::config::NodeEntry;
use crate::node::NodeState;

/// The layer, its event receiver, the node's state and the id of the
/// database `name` (volatile, in `dir`).
pub(crate) fn node1_of_three(
    dir: &Path,
    name: &str,
    mutexes: bool,
) -> (Databases, mpsc::UnboundedReceiver<DbEvent>, NodeState, u32) {
    let (mut dbs, rx) = Databases::new(DbConfig {
        volatile_dir: dir.join("v"),
        persistent_dir: dir.join("p"),
        state_dir: dir.join("s"),
        mutexes,
        traverse_helper: "ctdbd".into(),
    });
    let entries: Vec<NodeEntry> = (1..=3)
        .map(|i| NodeEntry {
            addr: Some(format!("127.0.0.{i}").parse().unwrap()),
        })
        .collect();
    let mut node = NodeState::new(1, &entries, capabilities::DEFAULT);
    node.set_vnnmap(VnnMap {
        generation: 5,
        map: vec![0, 1, 2],
    })
    .unwrap();
    let db = super::file::open(&dbs.cfg, name, 0, 1, 131, 5, 5).unwrap();
    let id = db.id;
    dbs.order.push(id);
    dbs.dbs.insert(id, db);
    (dbs, rx, node, id)
}
