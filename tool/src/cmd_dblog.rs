//! `ctdb dblog [<dbname|dbid>]` (ctdb-rs extension): each persistent
//! database's change log on a node, the range of changes an incremental
//! catch-up can send from it (the daemon's `db::changelog`). CTDB 4.17
//! has no such log: its daemon answers the control with -1, and the
//! command says so.

use ctdb_protocol::types::{CHANGELOG_IN_RECOVERY, CHANGELOG_TRACKED, ChangelogInfo, db_flags};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, ReqControl};

use crate::cmd_db::{DbRef, db_exists};
use crate::ctx::Ctx;
use crate::options::usage;

/// One database's line.
pub fn line(name: &str, i: &ChangelogInfo) -> String {
    let changes = if i.entries == 0 {
        "none".to_string()
    } else {
        format!("{}-{} ({})", i.first, i.last, i.entries)
    };
    let mut state = Vec::new();
    if i.flags & CHANGELOG_TRACKED == 0 {
        state.push("untracked");
    }
    if i.flags & CHANGELOG_IN_RECOVERY != 0 {
        state.push("in-recovery");
    }
    format!(
        "{name:<28} {changes:<18} 0x{:x}-0x{:<10x} {:>10}/{:<10} {:>7.1}/{:<7} {:032x}{}",
        i.base_seqnum,
        i.seqnum,
        i.bytes,
        i.max_bytes,
        i.oldest_age_ms as f64 / 1000.0,
        i.max_age_ms / 1000,
        i.checksum,
        if state.is_empty() {
            String::new()
        } else {
            format!(" {}", state.join(","))
        }
    )
}

pub async fn dblog(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("dblog"));
    }
    let dbs: Vec<DbRef> = match args.first() {
        Some(a) => match db_exists(ctx, a).await {
            Some(d) => vec![d],
            None => return 1,
        },
        None => {
            let Ok(Some(R::GetDbMap(m))) = ctx.ctrl(ctx.cmd_pnn, Q::GetDbMap).await else {
                return 1;
            };
            let mut v = Vec::new();
            for d in m.dbs {
                if d.flags & (db_flags::PERSISTENT | db_flags::KEYED) == 0 {
                    continue;
                }
                let Ok(Some(R::GetDbName(name))) =
                    ctx.ctrl(ctx.cmd_pnn, Q::GetDbName(d.db_id)).await
                else {
                    return 1;
                };
                v.push(DbRef {
                    id: d.db_id,
                    name,
                    flags: d.flags,
                });
            }
            v
        }
    };
    println!(
        "{:<28} {:<18} {:<23} {:>10}/{:<10} {:>7}/{:<7} CHECKSUM",
        "DB", "CHANGES", "SEQNUM", "BYTES", "MAX", "AGE(s)", "MAX"
    );
    let mut ret = 0;
    for d in dbs {
        let r = ctx
            .client
            .control_raw(ctx.cmd_pnn, ReqControl::new(Q::DbChangelogInfo(d.id)))
            .await;
        match r {
            Ok(r) if r.status == 0 => {
                if let Some(R::DbChangelogInfo(i)) = r.data {
                    println!("{}", line(&d.name, &i));
                }
            }
            Ok(r) => {
                eprintln!(
                    "{}: no change log on node {} (status {}{}; a CTDB 4.17 node has none)",
                    d.name,
                    ctx.cmd_pnn,
                    r.status,
                    r.errmsg.map(|m| format!(": {m}")).unwrap_or_default()
                );
                ret = 1;
            }
            Err(e) => {
                eprintln!("{}: {e}", d.name);
                ret = 1;
            }
        }
    }
    ret
}
