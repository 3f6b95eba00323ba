//! The databases to recover, gathered from every active node's database
//! map.

use ctdb_client::DbKind;
use ctdb_protocol::types::{DbidMap, db_flags};

/// One database and the nodes that have it attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbEntry {
    pub db_id: u32,
    /// Database flags, without the read-only and sticky flags (those are
    /// only set where a client asked for them).
    pub flags: u8,
    pub pnns: Vec<u32>,
}

impl DbEntry {
    pub fn kind(&self) -> DbKind {
        DbKind::from_flags(self.flags)
    }

    pub fn persistent(&self) -> bool {
        self.flags & db_flags::PERSISTENT != 0
    }
}

/// Merges each node's database map into one list, in order of first
/// appearance. Fails when two nodes disagree on a database's kind.
pub fn collect(maps: &[(u32, DbidMap)]) -> Result<Vec<DbEntry>, String> {
    let mut dbs: Vec<DbEntry> = Vec::new();
    for (pnn, map) in maps {
        for d in &map.dbs {
            let flags = d.flags & !(db_flags::READONLY | db_flags::STICKY);
            match dbs.iter_mut().find(|e| e.db_id == d.db_id) {
                None => dbs.push(DbEntry {
                    db_id: d.db_id,
                    flags,
                    pnns: vec![*pnn],
                }),
                Some(e) if e.flags != flags => {
                    return Err(format!(
                        "Incompatible database flags for 0x{:08x} (0x{:x} != 0x{:x}) on node {pnn}",
                        d.db_id, flags, e.flags
                    ));
                }
                Some(e) => {
                    if !e.pnns.contains(pnn) {
                        e.pnns.push(*pnn);
                    }
                }
            }
        }
    }
    Ok(dbs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::types::Dbid;

    fn map(dbs: &[(u32, u8)]) -> DbidMap {
        DbidMap {
            dbs: dbs
                .iter()
                .map(|&(db_id, flags)| Dbid { db_id, flags })
                .collect(),
        }
    }

    #[test]
    fn merges_maps_and_masks_client_flags() {
        let maps = vec![
            (0, map(&[(1, 0), (2, db_flags::PERSISTENT)])),
            (
                1,
                map(&[(2, db_flags::PERSISTENT | db_flags::STICKY), (3, 0)]),
            ),
        ];
        let dbs = collect(&maps).unwrap();
        assert_eq!(dbs.len(), 3);
        assert_eq!(dbs[0].pnns, vec![0]);
        assert_eq!(dbs[1].pnns, vec![0, 1]);
        assert_eq!(dbs[1].flags, db_flags::PERSISTENT);
        assert_eq!(dbs[2].pnns, vec![1]);
        assert!(dbs[1].persistent());
        assert_eq!(dbs[2].kind(), DbKind::Volatile);
    }

    #[test]
    fn disagreeing_kinds_fail() {
        let maps = vec![(0, map(&[(1, 0)])), (2, map(&[(1, db_flags::REPLICATED)]))];
        let e = collect(&maps).unwrap_err();
        assert!(e.contains("0x00000001") && e.contains("node 2"), "{e}");
    }
}
