//! Replica state of partially replicated databases (ctdb-rs extension,
//! `DB_REPLICA_STATUS`): the lines `getdbstatus` adds for such a
//! database. CTDB 4.17 has no such kind, so its output for every other
//! database is unchanged.

use std::time::Duration;

use ctdb_protocol::{ControlReply as R, ControlRequest as Q, ReqControl};

use crate::ctx::Ctx;

/// How often the status is asked again while a client holds a record lock
/// on the node (the node counts its records without waiting for locks).
const ATTEMPTS: u32 = 50;

/// Prints node `pnn`'s replica state of database `db_id`.
pub async fn print_status(ctx: &Ctx, pnn: u32, db_id: u32) -> i32 {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let r = match ctx
            .client
            .control_raw(pnn, ReqControl::new(Q::DbReplicaStatus(db_id)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("replica status of node {pnn}: {e}");
                return 1;
            }
        };
        match (r.status, r.data, r.errmsg) {
            (0, Some(R::DbReplicaStatus(s)), _) => {
                println!("PARTIALLY REPLICATED: yes");
                if s.replica_pnn == u32::MAX {
                    println!("REPLICA NODE: none (no other active node)");
                } else {
                    println!(
                        "REPLICA NODE: {} (records this node is lmaster of; the others: their lmaster)",
                        s.replica_pnn
                    );
                }
                println!("RECORDS MASTERED HERE: {}", s.mastered);
                println!("COPIES OF RECORDS MASTERED ELSEWHERE: {}", s.copies);
                println!("SYNCS: {} (failed: {})", s.syncs, s.sync_failures);
                println!(
                    "REPLICAS STORED HERE: {} (not newer, not stored: {})",
                    s.stored, s.stale
                );
                return 0;
            }
            (status, _, msg) => {
                let msg = msg.unwrap_or_default();
                if !msg.contains("try again") {
                    eprintln!("replica status of node {pnn} failed: status {status} {msg}");
                    return 1;
                }
                last = msg;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("replica status of node {pnn}: {last}");
    1
}
