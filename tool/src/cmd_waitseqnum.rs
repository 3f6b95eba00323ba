//! `ctdb waitseqnum <dbname|dbid> <seqnum>|gen:<generation> [<timeout>]`
//! (ctdb-rs extension): read-your-writes from a script. Asks the node
//! (`-n`, else the local one) to answer once its copy of a persistent
//! database has reached a point a writer handed over: the database's
//! sequence number (classic and in-memory databases; the writer's
//! `ctdb getdbseqnum` or `Transaction::commit_seq()`), or a recovery
//! generation (`gen:N`, any persistent kind). The daemon parks the wait
//! (`DB_WAIT_SEQNUM`, the daemon's `db::seqwait`) and never blocks on it.
//!
//! Exit status: 0 when the point was reached (the value the node reached
//! is printed), 2 when the timeout passed first (the daemon's message,
//! which says where the database stands, on stderr), 1 for any other
//! error (an unknown database, a sequence number on a keyed database, a
//! CTDB 4.17 node, which does not know the control).

use std::time::Duration;

use ctdb_protocol::types::{
    DbWaitSeqnum, SEQWAIT_ERR_PREFIX, SEQWAIT_TIMEOUT_STATUS, SeqWaitTarget,
};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, ReqControl};

use crate::cmd_db::db_exists;
use crate::ctx::Ctx;
use crate::options::usage;

/// Seconds waited when no timeout is given.
const DEFAULT_TIMEOUT_S: f64 = 10.0;
/// The daemon's own bound on a wait (an hour).
const MAX_TIMEOUT_S: f64 = 3600.0;

/// The point a `waitseqnum` argument names.
fn target(arg: &str) -> Result<SeqWaitTarget, String> {
    let bad = || format!("invalid point \"{arg}\": a sequence number or gen:<generation>");
    let num = |s: &str| {
        if let Some(h) = s.strip_prefix("0x") {
            u64::from_str_radix(h, 16).ok()
        } else {
            s.parse::<u64>().ok()
        }
    };
    match arg.strip_prefix("gen:") {
        Some(g) => num(g)
            .and_then(|g| u32::try_from(g).ok())
            .map(SeqWaitTarget::Generation)
            .ok_or_else(bad),
        None => num(arg).map(SeqWaitTarget::DbSeqnum).ok_or_else(bad),
    }
}

/// The timeout argument in seconds (fractions allowed).
fn timeout(arg: Option<&String>) -> Result<Duration, String> {
    let Some(a) = arg else {
        return Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_S));
    };
    match a.parse::<f64>() {
        Ok(s) if (0.0..=MAX_TIMEOUT_S).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "invalid timeout \"{a}\": seconds from 0 to {MAX_TIMEOUT_S}"
        )),
    }
}

pub async fn waitseqnum(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() < 2 || args.len() > 3 {
        usage(Some("waitseqnum"));
    }
    let (target, wait) = match (target(&args[1]), timeout(args.get(2))) {
        (Ok(t), Ok(w)) => (t, w),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let Some(db) = db_exists(ctx, &args[0]).await else {
        return 1;
    };
    let req = ReqControl::new(Q::DbWaitSeqnum(DbWaitSeqnum {
        db_id: db.id,
        timeout_ms: wait.as_millis() as u32,
        target,
    }));
    // The node answers by the wait's deadline: give the control that long
    // on top of the tool's own timeout.
    let client = ctx.client.with_timeout(wait + ctx.timeout());
    match client.control_raw(ctx.cmd_pnn, req).await {
        Ok(r) if r.status == 0 => match r.data {
            Some(R::DbWaitSeqnum(v)) => {
                println!("{}: reached {v} on node {}", db.name, ctx.cmd_pnn);
                0
            }
            _ => {
                eprintln!("bad DB_WAIT_SEQNUM reply from node {}", ctx.cmd_pnn);
                1
            }
        },
        Ok(r) => {
            let msg = r.errmsg.unwrap_or_default();
            let ours = msg.starts_with(SEQWAIT_ERR_PREFIX);
            if ours && r.status == SEQWAIT_TIMEOUT_STATUS {
                eprintln!("{}: timed out on node {}: {msg}", db.name, ctx.cmd_pnn);
                2
            } else if ours {
                eprintln!("{}: {msg}", db.name);
                1
            } else {
                eprintln!(
                    "node {} does not support DB_WAIT_SEQNUM (read-your-writes; a ctdb-rs \
                     extension, CTDB 4.17 answers status {})",
                    ctx.cmd_pnn, r.status
                );
                1
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", db.name);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_timeouts_parse() {
        assert_eq!(target("42"), Ok(SeqWaitTarget::DbSeqnum(42)));
        assert_eq!(target("0x10"), Ok(SeqWaitTarget::DbSeqnum(16)));
        assert_eq!(target("gen:7"), Ok(SeqWaitTarget::Generation(7)));
        assert!(target("gen:99999999999").is_err());
        assert!(target("x").is_err());
        assert_eq!(timeout(None), Ok(Duration::from_secs(10)));
        let t = "0.25".to_string();
        assert_eq!(timeout(Some(&t)), Ok(Duration::from_millis(250)));
        let t = "-1".to_string();
        assert!(timeout(Some(&t)).is_err());
    }
}
