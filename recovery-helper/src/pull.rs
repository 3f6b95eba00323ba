//! Pulling one node's copy of a database (`DB_PULL`).
//!
//! The helper registers a fresh srvid in the recovery range and asks the
//! node to pull the database to it. The node traverses the database and
//! sends its records as messages of at most RecBufferSizeLimit bytes each,
//! then replies to the control with the number of records sent. Messages
//! and reply travel through the local daemon in order, so once the reply
//! is in, every chunk has been routed to the srvid's channel; the count in
//! the reply must match the records received.

use std::sync::Mutex;

use ctdb_client::Message;
use ctdb_protocol::types::{CTDB_LMASTER_ANY, PullDbExt};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::store::RecordStore;
use crate::trace_event;

/// What a pull brought in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pulled {
    pub records: u32,
    pub chunks: u32,
}

/// Pulls database `db_id` (named `name`) from node `pnn`, found at
/// `node_idx` in the node list, into `store`.
pub async fn pull(
    ctx: &Ctx,
    db_id: u32,
    name: &str,
    pnn: u32,
    node_idx: u32,
    store: &Mutex<RecordStore>,
) -> Result<Pulled> {
    let srvid = ctx.srvid();
    let mut rx = ctx
        .client
        .register_srvid(srvid)
        .await
        .map_err(Error::node_err("REGISTER_SRVID", ctx.mypnn))?;
    trace_event!("pull-start", "db=0x{db_id:08x} name={name} node={pnn}");

    let mut got = Pulled::default();
    let mut bad: Option<Error> = None;
    let mut take = |msg: Message| {
        if bad.is_some() {
            return;
        }
        if msg.data.len() < 8 {
            bad = Some(Error::Bad {
                pnn,
                msg: format!("invalid DB_PULL message for {name}"),
            });
            return;
        }
        let id = u32::from_le_bytes(msg.data[0..4].try_into().unwrap());
        if id != db_id {
            tracing::error!("Invalid dbid:{id:08x} for DB_PULL messages for {name}");
            return;
        }
        let bytes = msg.data.len();
        match store.lock().unwrap().add_chunk(node_idx, msg.data) {
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
    };

    let req = PullDbExt {
        db_id,
        lmaster: CTDB_LMASTER_ANY,
        srvid,
    };
    let control = ctx.client.db_pull(pnn, req);
    tokio::pin!(control);
    let reply = loop {
        tokio::select! {
            biased;
            Some(msg) = rx.recv() => take(msg),
            r = &mut control => break r,
        }
    };
    // The chunks precede the reply: whatever is left is already queued.
    while let Ok(msg) = rx.try_recv() {
        take(msg);
    }
    if let Err(e) = ctx.client.deregister_srvid(srvid).await {
        tracing::error!("failed to remove message handler for DB_PULL for db {name}: {e}");
    }

    let sent = reply.map_err(Error::node_err("DB_PULL", pnn))?;
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
        "db=0x{db_id:08x} node={pnn} records={} chunks={}",
        got.records,
        got.chunks
    );
    tracing::debug!(
        "Pulled {} records for db {name} from node {pnn} in {} chunks",
        got.records,
        got.chunks
    );
    Ok(got)
}
