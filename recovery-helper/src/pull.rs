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
//! Each pull has a connection to the local daemon of its own, read only as
//! fast as the records are taken in: when the helper falls behind, the
//! chunks wait in the socket and in the daemon, not in the helper's memory.
//! (The shared [`ctdb_client::Client`] delivers messages through unbounded
//! channels, which would let a fast daemon fill the helper's memory with a
//! whole database.) The connection speaks just what a pull needs:
//! `REGISTER_SRVID`, `DB_PULL` and the messages; closing it drops the
//! srvid registration.

use std::path::Path;
use std::sync::Mutex;

use ctdb_client::ClientError;
use ctdb_protocol::framing::PacketCodec;
use ctdb_protocol::header::{CTDB_CURRENT_NODE, HEADER_LEN};
use ctdb_protocol::types::{CTDB_LMASTER_ANY, PullDbExt};
use ctdb_protocol::{
    Body, ControlReply, ControlRequest, Header, Marshal, Opcode, Operation, Packet, ReplyControl,
    ReqControl, ReqMessage,
};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

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

/// A private connection for one pull.
struct PullConn {
    io: Framed<UnixStream, PacketCodec>,
    mypnn: u32,
    reqid: u32,
}

impl PullConn {
    async fn connect(socket: &Path, mypnn: u32) -> std::io::Result<PullConn> {
        let s = UnixStream::connect(socket).await?;
        Ok(PullConn {
            io: Framed::new(s, PacketCodec::default()),
            mypnn,
            reqid: 0,
        })
    }

    /// Sends a control; returns its reqid.
    async fn send(&mut self, dest: u32, req: ReqControl) -> std::io::Result<u32> {
        self.reqid += 1;
        let pkt = Packet::new(
            Header::new(Operation::ReqControl, dest, self.mypnn, self.reqid),
            Body::ReqControl(req),
        );
        self.io.send(&pkt).await.map_err(std::io::Error::other)?;
        Ok(self.reqid)
    }

    /// Reads the next packet: a message for us (its data), or the reply to
    /// control `reqid` of opcode `op`.
    async fn next(&mut self, reqid: u32, op: Opcode) -> std::result::Result<Incoming, ClientError> {
        loop {
            let frame = match self.io.next().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(ClientError::Other(e.to_string())),
                None => return Err(ClientError::Disconnected),
            };
            let (header, _) = Header::pull(&frame)?;
            match header.operation {
                Operation::ReqMessage => {
                    let (srvid, data) = ReqMessage::raw_payload(&frame[HEADER_LEN..])?;
                    return Ok(Incoming::Message(srvid, data.to_vec()));
                }
                Operation::ReplyControl if header.reqid == reqid => {
                    let pkt = Packet::decode(&frame, |_| Some(op))?;
                    let Body::ReplyControl(r) = pkt.body else {
                        return Err(ClientError::UnexpectedReply(op));
                    };
                    return Ok(Incoming::Reply(r));
                }
                _ => continue,
            }
        }
    }

    /// Sends a control and waits for its reply, keeping no messages.
    async fn control(
        &mut self,
        dest: u32,
        req: ReqControl,
    ) -> std::result::Result<ReplyControl, ClientError> {
        let op = req.opcode();
        let id = self.send(dest, req).await?;
        loop {
            if let Incoming::Reply(r) = self.next(id, op).await? {
                return check(r, op, dest);
            }
        }
    }
}

enum Incoming {
    Message(u64, Vec<u8>),
    Reply(ReplyControl),
}

fn check(
    r: ReplyControl,
    opcode: Opcode,
    node: u32,
) -> std::result::Result<ReplyControl, ClientError> {
    if r.status != 0 {
        return Err(ClientError::ControlFailed {
            opcode,
            node,
            status: r.status,
            errmsg: r.errmsg,
        });
    }
    Ok(r)
}

/// Pulls database `db_id` (named `name`) from node `pnn`, found at
/// `node_idx` in the node list, into `store`. Waits at most RecoverTimeout
/// in all.
pub async fn pull(
    ctx: &Ctx,
    db_id: u32,
    name: &str,
    pnn: u32,
    node_idx: u32,
    store: &Mutex<RecordStore>,
) -> Result<Pulled> {
    let t = ctx.timeout();
    match tokio::time::timeout(t, pull_inner(ctx, db_id, name, pnn, node_idx, store)).await {
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
) -> Result<Pulled> {
    let local = |e: ClientError| Error::Node {
        op: "REGISTER_SRVID",
        pnn: ctx.mypnn,
        source: e,
    };
    let mut conn = PullConn::connect(&ctx.socket, ctx.mypnn)
        .await
        .map_err(|e| local(ClientError::Io(e)))?;
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
    let id = conn
        .send(pnn, req)
        .await
        .map_err(|e| failed(ClientError::Io(e)))?;
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
                match store.lock().unwrap().add_chunk(node_idx, data) {
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
