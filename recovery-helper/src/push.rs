//! Pushing the recovered records to every node (`DB_PUSH_START`, record
//! buffers as messages, `DB_PUSH_CONFIRM`).
//!
//! A blocking thread drains the [`RecordStore`] and cuts the surviving
//! records into record buffers of at most RecBufferSizeLimit bytes (a
//! single larger record gets a buffer of its own), handing them over a
//! channel of two. The async side encodes each buffer once and writes it
//! to every node on a connection of its own ([`DirectConn`]): a write
//! completes only when the daemon has room for it, so the helper never
//! holds more than a few buffers. Finally each node confirms how many
//! records it received, which must be how many were sent.

use ctdb_protocol::types::{CTDB_LMASTER_ANY, LtdbHeader, PullDbExt, RecBuffer};
use ctdb_protocol::{ControlReply, ControlRequest, Marshal};
use tokio::sync::mpsc;

use crate::conn::DirectConn;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::merge::{Policy, pushed_header};
use crate::store::{RecordStore, StoreError};
use crate::trace_event;

/// One push under way: `DB_PUSH_START` sent to its nodes, record buffers
/// going out on the push srvid, `DB_PUSH_CONFIRM` to finish.
pub struct Pusher {
    conn: DirectConn,
    nodes: Vec<u32>,
    srvid: u64,
    db_id: u32,
    mypnn: u32,
    sent: u32,
    buffers: u32,
}

impl Pusher {
    /// Starts pushing database `db_id` to `nodes`.
    pub async fn start(ctx: &Ctx, nodes: &[u32], db_id: u32, name: &str) -> Result<Pusher> {
        let local = |source| Error::Node {
            op: "DB_PUSH_START",
            pnn: ctx.mypnn,
            source,
        };
        let mut conn = DirectConn::connect(&ctx.socket, ctx.mypnn, ctx.timeout())
            .await
            .map_err(local)?;
        let srvid = ctx.srvid();
        let start = PullDbExt {
            db_id,
            lmaster: CTDB_LMASTER_ANY,
            srvid,
        };
        let replies = conn
            .control_all(nodes, ControlRequest::DbPushStart(start))
            .await
            .map_err(local)?;
        for (pnn, r) in replies {
            r.map_err(Error::node_err("DB_PUSH_START", pnn))?;
        }
        trace_event!(
            "push-start",
            "db=0x{db_id:08x} name={name} nodes={}",
            nodes.len()
        );
        Ok(Pusher {
            conn,
            nodes: nodes.to_vec(),
            srvid,
            db_id,
            mypnn: ctx.mypnn,
            sent: 0,
            buffers: 0,
        })
    }

    /// Sends one record buffer to every node of the push.
    pub async fn send(&mut self, rb: RecBuffer, name: &str) -> Result<()> {
        let count = rb.count();
        let bytes = rb.len();
        self.conn
            .send_records(&self.nodes, self.srvid, rb)
            .await
            .map_err(|e| Error::Bad {
                pnn: self.mypnn,
                msg: format!("Sending recovery records failed for {name}: {e}"),
            })?;
        self.sent += count;
        self.buffers += 1;
        trace_event!(
            "push-chunk",
            "db=0x{:08x} records={count} bytes={bytes}",
            self.db_id
        );
        Ok(())
    }

    /// Asks every node how many records it received, which must be how
    /// many were sent; returns that number.
    pub async fn finish(mut self, name: &str) -> Result<u32> {
        let sent = self.sent;
        let replies = self
            .conn
            .control_all(&self.nodes, ControlRequest::DbPushConfirm(self.db_id))
            .await
            .map_err(|source| Error::Node {
                op: "DB_PUSH_CONFIRM",
                pnn: self.mypnn,
                source,
            })?;
        for (pnn, reply) in replies {
            let reply = reply.map_err(Error::node_err("DB_PUSH_CONFIRM", pnn))?;
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
            "db=0x{:08x} records={sent} chunks={} rss_kib={}",
            self.db_id,
            self.buffers,
            crate::trace::peak_rss_kib().unwrap_or(0)
        );
        tracing::debug!(
            "Pushed {sent} records for db {name} in {} buffers",
            self.buffers
        );
        Ok(sent)
    }
}

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
    let mut pusher = Pusher::start(ctx, nodes, db_id, name).await?;
    let limit = (ctx.tun.rec_buffer_size_limit as usize).max(1);
    let persistent = matches!(policy, Policy::Single { persistent: true });
    let mypnn = ctx.mypnn;
    let (tx, mut rx) = mpsc::channel::<RecBuffer>(2);
    let producer = tokio::task::spawn_blocking(move || {
        cut_buffers(store, db_id, limit, persistent, mypnn, tx)
    });
    let mut failure = None;
    while let Some(rb) = rx.recv().await {
        if let Err(e) = pusher.send(rb, name).await {
            failure = Some(e);
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
    pusher.finish(name).await
}

/// A pulled chunk (a marshalled record buffer) as it is to be pushed:
/// deleted records left out, headers rewritten as [`pushed_header`] says.
pub fn rewrite_chunk(
    data: &[u8],
    db_id: u32,
    persistent: bool,
    mypnn: u32,
) -> std::result::Result<RecBuffer, StoreError> {
    let bad = |e: ctdb_protocol::Error| StoreError::Malformed(e.to_string());
    let (chunk, _) = RecBuffer::pull(data).map_err(bad)?;
    let mut rb = RecBuffer::new(db_id);
    for r in chunk.iter() {
        if let Some(h) = pushed_header(r.data, persistent, mypnn) {
            rb.add(0, Some(&h), r.key, &r.data[LtdbHeader::WIRE_SIZE..]);
        }
    }
    Ok(rb)
}

/// Drains `store` into record buffers of at most `limit` bytes and sends
/// them down `tx`; the last buffer is sent even when empty, as CTDB does.
fn cut_buffers(
    store: RecordStore,
    db_id: u32,
    limit: usize,
    persistent: bool,
    mypnn: u32,
    tx: mpsc::Sender<RecBuffer>,
) -> std::result::Result<(), StoreError> {
    let gone = || StoreError::Io(std::io::Error::other("push aborted"));
    let mut rb = RecBuffer::new(db_id);
    store.drain(&mut |key, value| {
        let Some(h) = pushed_header(value, persistent, mypnn) else {
            return Ok(());
        };
        let rec_len = 16 + key.len() + value.len();
        if rb.count() > 0 && 8 + rb.records_len() + rec_len > limit {
            let full = std::mem::replace(&mut rb, RecBuffer::new(db_id));
            tx.blocking_send(full).map_err(|_| gone())?;
        }
        rb.add(0, Some(&h), key, &value[LtdbHeader::WIRE_SIZE..]);
        Ok(())
    })?;
    tx.blocking_send(rb).map_err(|_| gone())
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
        while let Ok(rb) = rx.try_recv() {
            assert!(rb.len() <= 1000, "buffer of {} bytes", rb.len());
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
        let rb = rx.try_recv().unwrap();
        assert_eq!(rb, RecBuffer::new(9));
        assert!(rx.try_recv().is_err());
    }
}
