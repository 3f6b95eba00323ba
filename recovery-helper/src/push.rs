//! Pushing the recovered records to every node (`DB_PUSH_START`, record
//! buffers as messages, `DB_PUSH_CONFIRM`).
//!
//! A blocking thread drains the [`RecordStore`] and cuts the surviving
//! records into record buffers of at most RecBufferSizeLimit bytes (a
//! single larger record gets a buffer of its own), handing them over a
//! channel of two. The async side sends each buffer to every node on the
//! push srvid. To keep the helper's own send queue short, it follows each
//! buffer with a `PING` to the local daemon and never has more than
//! [`WINDOW`] of those outstanding: a ping's reply means the daemon has
//! read everything sent before it. Finally each node confirms how many
//! records it received, which must be how many were sent.

use std::collections::VecDeque;

use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{CTDB_LMASTER_ANY, LtdbHeader, PullDbExt, RecBuffer};
use ctdb_protocol::{ControlReply, ControlRequest, Marshal};
use tokio::sync::mpsc;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::merge::{Policy, pushed_header};
use crate::store::{RecordStore, StoreError};
use crate::trace_event;

/// Record buffers sent but not yet known to be read by the local daemon.
pub const WINDOW: usize = 2;

/// Pushes the records of `store` for database `db_id` to `nodes`; returns
/// the number of records pushed.
pub async fn push(
    ctx: &Ctx,
    nodes: &[u32],
    db_id: u32,
    name: &str,
    store: RecordStore,
    policy: Policy,
) -> Result<u32> {
    let nodes = nodes.to_vec();
    let srvid = ctx.srvid();
    let start = PullDbExt {
        db_id,
        lmaster: CTDB_LMASTER_ANY,
        srvid,
    };
    ctx.all(&nodes, "DB_PUSH_START", ControlRequest::DbPushStart(start))
        .await?;
    trace_event!(
        "push-start",
        "db=0x{db_id:08x} name={name} nodes={}",
        nodes.len()
    );

    let limit = (ctx.tun.rec_buffer_size_limit as usize).max(1);
    let persistent = matches!(policy, Policy::Single { persistent: true });
    let mypnn = ctx.mypnn;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let producer = tokio::task::spawn_blocking(move || {
        cut_buffers(store, db_id, limit, persistent, mypnn, tx)
    });

    let mut sent: u32 = 0;
    let mut buffers: u32 = 0;
    let mut inflight = VecDeque::new();
    let mut failure: Option<Error> = None;
    while let Some(buf) = rx.recv().await {
        let count = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if let Some(pnn) = nodes
            .iter()
            .copied()
            .find(|&pnn| ctx.client.send_message(pnn, srvid, &buf).is_err())
        {
            failure = Some(Error::Bad {
                pnn,
                msg: format!(
                    "Sending recovery records failed for {name}: connection to the daemon closed"
                ),
            });
            break;
        }
        sent += count;
        buffers += 1;
        trace_event!(
            "push-chunk",
            "db=0x{db_id:08x} records={count} bytes={}",
            buf.len()
        );
        drop(buf);
        let c = ctx.client.clone();
        inflight.push_back(tokio::spawn(async move { c.ping(CTDB_CURRENT_NODE).await }));
        while inflight.len() > WINDOW {
            if let Err(e) = wait_ping(inflight.pop_front(), ctx.mypnn).await {
                failure = Some(e);
                break;
            }
        }
        if failure.is_some() {
            break;
        }
    }
    drop(rx);
    let produced = producer
        .await
        .map_err(|e| Error::Other(format!("push of {name}: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    produced?;
    for p in inflight {
        wait_ping(Some(p), ctx.mypnn).await?;
    }

    let replies = ctx
        .all(
            &nodes,
            "DB_PUSH_CONFIRM",
            ControlRequest::DbPushConfirm(db_id),
        )
        .await?;
    for (&pnn, reply) in nodes.iter().zip(replies) {
        match reply.data {
            Some(ControlReply::DbPushConfirm(n)) if n == sent => {}
            Some(ControlReply::DbPushConfirm(n)) => {
                return Err(Error::Bad {
                    pnn,
                    msg: format!("Node {pnn} received {n} of {sent} records for {name}"),
                });
            }
            _ => {
                return Err(Error::Bad {
                    pnn,
                    msg: format!("bad DB_PUSH_CONFIRM reply for {name}"),
                });
            }
        }
    }
    trace_event!(
        "push-done",
        "db=0x{db_id:08x} records={sent} chunks={buffers} rss_kib={}",
        crate::trace::peak_rss_kib().unwrap_or(0)
    );
    tracing::debug!("Pushed {sent} records for db {name} in {buffers} buffers");
    Ok(sent)
}

async fn wait_ping(
    p: Option<tokio::task::JoinHandle<ctdb_client::Result<u32>>>,
    mypnn: u32,
) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    match p.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::node_err("PING", mypnn)(e)),
        Err(e) => Err(Error::Other(format!("ping task: {e}"))),
    }
}

/// Drains `store` into record buffers of at most `limit` bytes and sends
/// them down `tx`; the last buffer is sent even when empty, as CTDB does.
fn cut_buffers(
    store: RecordStore,
    db_id: u32,
    limit: usize,
    persistent: bool,
    mypnn: u32,
    tx: mpsc::Sender<Vec<u8>>,
) -> std::result::Result<(), StoreError> {
    let gone = || StoreError::Io(std::io::Error::other("push aborted"));
    let mut rb = RecBuffer::new(db_id);
    store.drain(&mut |key, value| {
        let Some(h) = pushed_header(value, persistent, mypnn) else {
            return Ok(());
        };
        let rec_len = 16 + key.len() + value.len();
        if rb.count() > 0 && 8 + rb.records_len() + rec_len > limit {
            tx.blocking_send(rb.to_bytes()).map_err(|_| gone())?;
            rb.clear();
        }
        rb.add(0, Some(&h), key, &value[LtdbHeader::WIRE_SIZE..]);
        Ok(())
    })?;
    tx.blocking_send(rb.to_bytes()).map_err(|_| gone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use std::sync::Arc;

    #[test]
    fn buffers_respect_the_limit_and_skip_deleted_records() {
        let budget = Arc::new(Budget::new(usize::MAX / 2));
        let mut store = RecordStore::new(
            Policy::Merge { mypnn: 3 },
            budget,
            1 << 20,
            std::env::temp_dir(),
        );
        let mut rb = RecBuffer::new(7);
        let h = LtdbHeader {
            rsn: 1,
            dmaster: 1,
            reserved1: 0,
            flags: 0,
        };
        for i in 0..100 {
            rb.add(0, Some(&h), format!("k{i:03}").as_bytes(), &[b'v'; 50]);
        }
        rb.add(0, Some(&h), b"deleted", b"");
        store.add_chunk(0, rb.to_bytes()).unwrap();

        let (tx, mut rx) = mpsc::channel(1000);
        cut_buffers(store, 7, 1000, false, 3, tx).unwrap();
        let mut total = 0;
        let mut n = 0;
        while let Ok(buf) = rx.try_recv() {
            assert!(buf.len() <= 1000, "buffer of {} bytes", buf.len());
            let (rb, _) = RecBuffer::pull(&buf).unwrap();
            assert_eq!(rb.db_id, 7);
            for r in rb.iter() {
                let (h, d) = r.header().unwrap();
                assert_eq!(h.dmaster, 3);
                assert_eq!(d.len(), 50);
                assert_eq!(r.reqid, 0);
            }
            total += rb.count();
            n += 1;
        }
        assert_eq!(total, 100);
        assert!(n >= 8, "only {n} buffers");
    }

    #[test]
    fn an_empty_database_sends_one_empty_buffer() {
        let budget = Arc::new(Budget::new(1 << 20));
        let store = RecordStore::new(
            Policy::Single { persistent: true },
            budget,
            1 << 20,
            std::env::temp_dir(),
        );
        let (tx, mut rx) = mpsc::channel(10);
        cut_buffers(store, 9, 1000, true, 0, tx).unwrap();
        let buf = rx.try_recv().unwrap();
        assert_eq!(buf, RecBuffer::new(9).to_bytes());
        assert!(rx.try_recv().is_err());
    }
}
