//! The unix socket: connections, packets, and dispatching requests.
//!
//! Each connection reads length-prefixed packets (the header's first u32
//! is the whole packet's length). Requests of one connection are served
//! concurrently and each reply goes back with the request's reqid as soon
//! as it is ready. A packet that does not decode closes the connection, as
//! does the peer going away; requests still in progress for it are dropped
//! (a running script is killed), as CTDB frees them.

use std::rc::Rc;

use ctdb_protocol::Marshal;
use ctdb_protocol::event::{
    EventCommand, EventReply, EventRequest, EventRequestData, HEADER_SIZE, ScriptAction, errno,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error};

use crate::runner::EventContext;

/// Largest request accepted (requests are a few strings).
pub const MAX_REQUEST: usize = 1 << 20;

/// Reads one packet; `Ok(None)` at end of stream.
async fn read_packet(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_ne_bytes(len) as usize;
    if !(HEADER_SIZE..=MAX_REQUEST).contains(&n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("packet length {n}"),
        ));
    }
    let mut buf = vec![0u8; n];
    buf[..4].copy_from_slice(&len);
    rd.read_exact(&mut buf[4..]).await?;
    Ok(Some(buf))
}

/// Serves one request; returns the reply.
pub async fn handle(ctx: Rc<EventContext>, req: EventRequest) -> EventReply {
    let command = req.data.command();
    let mut reply = EventReply::result(req.reqid, command, 0);
    match req.data {
        EventRequestData::Run(r) => reply.result = ctx.run(r).await,
        EventRequestData::Status(s) => {
            match ctx.status(s.component.as_deref(), s.event.as_deref()) {
                Ok(st) => reply.status = Some(st),
                Err(e) => reply.result = e,
            }
        }
        EventRequestData::Script(s) => {
            let enable = s.action == ScriptAction::Enable;
            if let Err(e) = ctx.set_script(s.component.as_deref(), s.script.as_deref(), enable) {
                reply.result = e;
            }
        }
    }
    if command == EventCommand::Status && reply.result == 0 && reply.status.is_none() {
        reply.result = errno::EIO;
    }
    reply
}

async fn serve_connection(ctx: Rc<EventContext>, stream: UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::task::spawn_local(async move {
        while let Some(buf) = rx.recv().await {
            if let Err(e) = wr.write_all(&buf).await {
                error!("Sending reply failed: {e}");
                break;
            }
        }
    });
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            pkt = read_packet(&mut rd) => {
                let buf = match pkt {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        error!("client read failed: {e}");
                        break;
                    }
                };
                let req = match EventRequest::pull(&buf) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        error!("Invalid packet received, buflen={}: {e}", buf.len());
                        break;
                    }
                };
                debug!("request {} reqid {}", req.data.command().name(), req.reqid);
                let ctx = ctx.clone();
                let tx = tx.clone();
                requests.spawn_local(async move {
                    let reply = handle(ctx, req).await;
                    let _ = tx.send(reply.to_bytes());
                });
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // Requests still in progress go with the client.
    requests.abort_all();
    drop(tx);
    writer.abort();
}

/// Accepts connections until the listener fails.
pub async fn serve(ctx: Rc<EventContext>, listener: UnixListener) -> std::io::Error {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(serve_connection(ctx.clone(), stream));
            }
            Err(e) => return e,
        }
    }
}
