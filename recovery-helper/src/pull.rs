//! Pulling one node's copy of a database (`DB_PULL`).
//!
//! The helper registers a fresh srvid in the recovery range and asks the
//! node to pull the database to it. The node traverses the database and
//! sends its records as messages of at most RecBufferSizeLimit bytes each,
//! then replies to the control with the number of records sent. Messages
//! and reply travel through the local daemon in order, so once the reply
//! is in, every chunk has arrived; the count in the reply must match the
//! records received.
//!
//! Each pull has a connection to the local daemon of its own
//! ([`DirectConn`]), read only as fast as the records are taken in: when
//! the helper falls behind, the chunks wait in the socket and in the
//! daemon, not in the helper's memory. Closing it drops the srvid
//! registration.

use std::sync::Mutex;

use ctdb_client::ClientError;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{CTDB_LMASTER_ANY, PullDbExt};
use ctdb_protocol::{ControlReply, ControlRequest, Opcode, ReqControl};

use crate::conn::{DirectConn, Incoming, check};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::push::{Pusher, rewrite_chunk};
use crate::store::RecordStore;
use crate::trace_event;

/// What a pull brought in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pulled {
    pub records: u32,
    pub chunks: u32,
}

/// Where pulled records are also sent on to, as they arrive.
pub struct Forward<'a> {
    pub pusher: &'a mut Pusher,
    pub persistent: bool,
}

/// Pulls database `db_id` (named `name`) from node `pnn`, found at
/// `node_idx` in the node list, into `store`, and with `forward`, pushes
/// each chunk on at once. Waits at most RecoverTimeout in all.
pub async fn pull(
    ctx: &Ctx,
    db_id: u32,
    name: &str,
    pnn: u32,
    node_idx: u32,
    store: &Mutex<RecordStore>,
    forward: Option<Forward<'_>>,
) -> Result<Pulled> {
    let t = ctx.timeout();
    let inner = pull_inner(ctx, db_id, name, pnn, node_idx, store, forward);
    match tokio::time::timeout(t, inner).await {
        Ok(r) => r,
        Err(_) => Err(Error::node_err("DB_PULL", pnn)(ClientError::Timeout {
            what: format!("pulling db {name} from node {pnn}"),
            opcode: Some(Opcode::DbPull),
        })),
    }
}

async fn pull_inner(
    ctx: &Ctx,
    db_id: u32,
    name: &str,
    pnn: u32,
    node_idx: u32,
    store: &Mutex<RecordStore>,
    mut forward: Option<Forward<'_>>,
) -> Result<Pulled> {
    let local = |e: ClientError| Error::Node {
        op: "REGISTER_SRVID",
        pnn: ctx.mypnn,
        source: e,
    };
    let mut conn = DirectConn::connect(&ctx.socket, ctx.mypnn, ctx.timeout())
        .await
        .map_err(local)?;
    let srvid = ctx.srvid();
    let mut reg = ReqControl::new(ControlRequest::RegisterSrvid);
    reg.srvid = srvid;
    conn.control(CTDB_CURRENT_NODE, reg).await.map_err(local)?;
    trace_event!("pull-start", "db=0x{db_id:08x} name={name} node={pnn}");

    let req = ReqControl::new(ControlRequest::DbPull(PullDbExt {
        db_id,
        lmaster: CTDB_LMASTER_ANY,
        srvid,
    }));
    let failed = |source: ClientError| Error::Node {
        op: "DB_PULL",
        pnn,
        source,
    };
    let id = conn.send_control(pnn, req).await.map_err(failed)?;
    let mut got = Pulled::default();
    let mut bad: Option<Error> = None;
    let reply = loop {
        match conn.next(id, Opcode::DbPull).await {
            Err(e) => return Err(failed(e)),
            Ok(Incoming::Reply(r)) => break r,
            Ok(Incoming::Message(id, _)) if id != srvid => continue,
            Ok(Incoming::Message(_, data)) => {
                if bad.is_some() {
                    continue;
                }
                if data.len() < 8 {
                    bad = Some(Error::Bad {
                        pnn,
                        msg: format!("invalid DB_PULL message for {name}"),
                    });
                    continue;
                }
                let id = u32::from_le_bytes(data[0..4].try_into().unwrap());
                if id != db_id {
                    tracing::error!("Invalid dbid:{id:08x} for DB_PULL messages for {name}");
                    continue;
                }
                let bytes = data.len();
                if let Some(f) = forward.as_mut() {
                    match rewrite_chunk(&data, db_id, f.persistent, ctx.mypnn) {
                        Ok(rb) => f.pusher.send(rb, name).await?,
                        Err(e) => {
                            bad = Some(Error::Bad {
                                pnn,
                                msg: format!("bad records pulled for {name}: {e}"),
                            });
                            continue;
                        }
                    }
                }
                let added = store.lock().unwrap().add_chunk(node_idx, data);
                match added {
                    Ok(n) => {
                        got.records += n;
                        got.chunks += 1;
                        trace_event!(
                            "pull-chunk",
                            "db=0x{db_id:08x} node={pnn} records={n} bytes={bytes}"
                        );
                    }
                    Err(e) => {
                        bad = Some(Error::Bad {
                            pnn,
                            msg: format!("bad records pulled for {name}: {e}"),
                        })
                    }
                }
            }
        }
    };
    let reply = check(reply, Opcode::DbPull, pnn).map_err(Error::node_err("DB_PULL", pnn))?;
    let Some(ControlReply::DbPull(sent)) = reply.data else {
        return Err(failed(ClientError::UnexpectedReply(Opcode::DbPull)));
    };
    if let Some(e) = bad {
        return Err(e);
    }
    if sent != got.records {
        return Err(Error::Bad {
            pnn,
            msg: format!(
                "mismatch ({sent} != {}) in DB_PULL records for db {name}",
                got.records
            ),
        });
    }
    trace_event!(
        "pull-done",
        "db=0x{db_id:08x} node={pnn} records={} chunks={} rss_kib={}",
        got.records,
        got.chunks,
        crate::trace::peak_rss_kib().unwrap_or(0)
    );
    tracing::debug!(
        "Pulled {} records for db {name} from node {pnn} in {} chunks",
        got.records,
        got.chunks
    );
    Ok(got)
}
