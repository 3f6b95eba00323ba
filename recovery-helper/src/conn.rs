//! A private, flow-controlled connection to the local daemon, for moving
//! records.
//!
//! The shared [`ctdb_client::Client`] hands incoming messages over
//! unbounded channels and queues outgoing packets without limit, which is
//! right for controls but would let a fast daemon (pull) or a fast merge
//! (push) pile a whole database up in the helper's memory. Each pull and
//! each push therefore gets a connection of its own, driven by exactly one
//! task: packets are read only when the task wants the next one, and a
//! packet is written only when the previous one has left, so a slow side
//! holds the other back through the socket. Only what record transfer
//! needs is spoken here: controls with replies, and messages.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ctdb_client::ClientError;
use ctdb_client::unix_io::{PacketReader, Socket, register};
use ctdb_protocol::framing::DEFAULT_MAX_PACKET;
use ctdb_protocol::header::HEADER_LEN;
use ctdb_protocol::types::RecBuffer;
use ctdb_protocol::{
    Body, ControlRequest, Header, Marshal, MessageData, Opcode, Operation, Packet, ReplyControl,
    ReqControl, ReqMessage,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

type Result<T> = std::result::Result<T, ClientError>;

/// Byte offset of the destination node in a packet header.
const DESTNODE_OFFSET: usize = 20;

/// What arrived on the connection.
pub enum Incoming {
    /// A message: its srvid and data.
    Message(u64, Vec<u8>),
    /// The reply awaited.
    Reply(ReplyControl),
}

pub struct DirectConn {
    /// A duplicate of the socket's descriptor registered for
    /// readability, which `reader` frames packets from.
    rd: AsyncFd<Socket>,
    reader: PacketReader,
    /// The socket, written to.
    wr: UnixStream,
    mypnn: u32,
    reqid: u32,
    timeout: Duration,
}

impl DirectConn {
    /// Connects to the daemon at `socket`; every wait is bounded by
    /// `timeout`.
    pub async fn connect(socket: &Path, mypnn: u32, timeout: Duration) -> Result<DirectConn> {
        let s = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let rd = s
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| register(Socket::from(fd), Interest::READABLE))
            .map_err(ClientError::Io)?;
        Ok(DirectConn {
            rd,
            reader: PacketReader::new(DEFAULT_MAX_PACKET),
            wr: s,
            mypnn,
            reqid: 0,
            timeout,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.wr.write_all(bytes)).await {
            Ok(r) => r.map_err(ClientError::Io),
            Err(_) => Err(ClientError::Timeout {
                what: "writing to the daemon".into(),
                opcode: None,
            }),
        }
    }

    /// Sends a control to `dest`; returns its reqid.
    pub async fn send_control(&mut self, dest: u32, req: ReqControl) -> Result<u32> {
        self.reqid += 1;
        let pkt = Packet::new(
            Header::new(Operation::ReqControl, dest, self.mypnn, self.reqid),
            Body::ReqControl(req),
        );
        self.write(&pkt.encode()).await?;
        Ok(self.reqid)
    }

    /// Reads the next packet, waiting at most the timeout (as for a reply
    /// to control `op`).
    async fn read_frame(&mut self, op: Opcode) -> Result<(Header, bytes::BytesMut)> {
        let next = self.reader.next(&self.rd);
        let frame = match tokio::time::timeout(self.timeout, next).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("control {}", op.name()),
                    opcode: Some(op),
                });
            }
            Ok(Ok(Some(f))) => f,
            Ok(Err(e)) => return Err(ClientError::Other(e.to_string())),
            Ok(Ok(None)) => return Err(ClientError::Disconnected),
        };
        let (header, _) = Header::pull(&frame)?;
        Ok((header, frame))
    }

    /// Reads the next packet: a message, or the reply to control `reqid`
    /// of opcode `op` (replies to other controls are skipped).
    pub async fn next(&mut self, reqid: u32, op: Opcode) -> Result<Incoming> {
        loop {
            let (header, frame) = self.read_frame(op).await?;
            match header.operation {
                Operation::ReqMessage => {
                    let (srvid, data) = ReqMessage::raw_payload(&frame[HEADER_LEN..])?;
                    return Ok(Incoming::Message(srvid, data.to_vec()));
                }
                Operation::ReplyControl if header.reqid == reqid => {
                    return Ok(Incoming::Reply(decode_reply(&frame, op)?));
                }
                _ => continue,
            }
        }
    }

    /// Sends a control and waits for its reply (which must have status 0),
    /// dropping any message that arrives meanwhile.
    pub async fn control(&mut self, dest: u32, req: ReqControl) -> Result<ReplyControl> {
        let op = req.opcode();
        let id = self.send_control(dest, req).await?;
        loop {
            if let Incoming::Reply(r) = self.next(id, op).await? {
                return check(r, op, dest);
            }
        }
    }

    /// Sends the same control to every node of `dests`, then collects the
    /// replies; one result per node, in order.
    pub async fn control_all(
        &mut self,
        dests: &[u32],
        data: ControlRequest,
    ) -> Result<Vec<(u32, Result<ReplyControl>)>> {
        let op = data.opcode();
        let mut ids = Vec::with_capacity(dests.len());
        for &d in dests {
            ids.push(self.send_control(d, ReqControl::new(data.clone())).await?);
        }
        let mut out = Vec::with_capacity(dests.len());
        // The daemon may answer in any order; keep early replies.
        let mut early: Vec<(u32, ReplyControl)> = Vec::new();
        for (&d, &id) in dests.iter().zip(&ids) {
            if let Some(i) = early.iter().position(|(r, _)| *r == id) {
                let (_, r) = early.swap_remove(i);
                out.push((d, check(r, op, d)));
                continue;
            }
            loop {
                let frame = self.next_reply(op).await?;
                if frame.0 == id {
                    out.push((d, check(frame.1, op, d)));
                    break;
                }
                early.push(frame);
            }
        }
        Ok(out)
    }

    /// The next control reply of any reqid (messages are dropped).
    async fn next_reply(&mut self, op: Opcode) -> Result<(u32, ReplyControl)> {
        loop {
            let (header, frame) = self.read_frame(op).await?;
            if header.operation == Operation::ReplyControl {
                return Ok((header.reqid, decode_reply(&frame, op)?));
            }
        }
    }

    /// Sends a record buffer as a message to `srvid` on each of `dests`,
    /// encoding it once.
    pub async fn send_records(&mut self, dests: &[u32], srvid: u64, rb: RecBuffer) -> Result<()> {
        let msg = ReqMessage {
            srvid,
            data: MessageData::RecoveryRecords(rb),
        };
        let mut pkt = Packet::new(
            Header::new(Operation::ReqMessage, 0, self.mypnn, 0),
            Body::ReqMessage(msg),
        )
        .encode();
        for &d in dests {
            pkt[DESTNODE_OFFSET..DESTNODE_OFFSET + 4].copy_from_slice(&d.to_le_bytes());
            self.write(&pkt).await?;
        }
        Ok(())
    }
}

/// Decodes a control reply. CTDB's daemon sends error messages without a
/// terminating NUL, which the protocol crate refuses; a failed reply that
/// does not decode is rebuilt from its status and raw message, so the
/// reason is not lost.
fn decode_reply(frame: &[u8], op: Opcode) -> Result<ReplyControl> {
    match Packet::decode(frame, |_| Some(op)) {
        Ok(Packet {
            body: Body::ReplyControl(r),
            ..
        }) => Ok(r),
        Ok(_) => Err(ClientError::UnexpectedReply(op)),
        Err(e) => {
            let word = |i: usize| {
                frame
                    .get(HEADER_LEN + i..HEADER_LEN + i + 4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            };
            let (Some(status), Some(dlen), Some(elen)) = (word(0), word(4), word(8)) else {
                return Err(e.into());
            };
            let start = HEADER_LEN + 12 + dlen as usize;
            match frame.get(start..start + elen as usize) {
                Some(msg) if status != 0 => Ok(ReplyControl {
                    status: status as i32,
                    data: None,
                    errmsg: Some(
                        String::from_utf8_lossy(msg)
                            .trim_end_matches('\0')
                            .to_owned(),
                    ),
                }),
                _ => Err(e.into()),
            }
        }
    }
}

/// Fails a reply whose status is not 0.
pub fn check(r: ReplyControl, opcode: Opcode, node: u32) -> Result<ReplyControl> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::ControlReply;
    use tokio::io::AsyncReadExt;

    /// A daemon stand-in: reads `n` control requests, then answers them in
    /// reverse order with their destination node as the reply data, after
    /// a stray message.
    async fn fake_daemon(listener: tokio::net::UnixListener, n: usize) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut reqs = Vec::new();
        for _ in 0..n {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut pkt = vec![0u8; u32::from_le_bytes(len) as usize];
            pkt[..4].copy_from_slice(&len);
            s.read_exact(&mut pkt[4..]).await.unwrap();
            let (h, _) = Header::pull(&pkt).unwrap();
            reqs.push(h);
        }
        let stray = Packet::new(
            Header::new(Operation::ReqMessage, 0, 0, 0),
            Body::ReqMessage(ReqMessage {
                srvid: 42,
                data: MessageData::Data(vec![1, 2, 3]),
            }),
        );
        s.write_all(&stray.encode()).await.unwrap();
        for h in reqs.iter().rev() {
            let reply = Packet::new(
                Header::new(Operation::ReplyControl, h.srcnode, h.destnode, h.reqid),
                Body::ReplyControl(ReplyControl::ok(ControlReply::DbPushConfirm(h.destnode))),
            );
            s.write_all(&reply.encode()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn replies_are_matched_to_their_nodes_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_daemon(listener, 3));
        let mut c = DirectConn::connect(&path, 0, Duration::from_secs(10))
            .await
            .unwrap();
        let r = c
            .control_all(&[5, 6, 7], ControlRequest::DbPushConfirm(1))
            .await
            .unwrap();
        server.await.unwrap();
        let got: Vec<(u32, u32)> = r
            .into_iter()
            .map(|(d, r)| match r.unwrap().data {
                Some(ControlReply::DbPushConfirm(n)) => (d, n),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(5, 5), (6, 6), (7, 7)]);
    }

    #[test]
    fn error_messages_without_nul_are_kept() {
        // A failed reply as CTDB's daemon builds it: status -1, no data,
        // the message's bytes without a terminating NUL.
        let msg = b"ctdb_control to disconnected node";
        let mut frame = Vec::new();
        let len = HEADER_LEN + 12 + msg.len();
        let h = Header::new(Operation::ReplyControl, 0, 1, 7);
        let mut hb = vec![0u8; HEADER_LEN];
        h.push(&mut hb);
        hb[..4].copy_from_slice(&(len as u32).to_le_bytes());
        frame.extend_from_slice(&hb);
        frame.extend_from_slice(&(-1i32).to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        frame.extend_from_slice(msg);
        let r = decode_reply(&frame, Opcode::DbFreeze).unwrap();
        assert_eq!(r.status, -1);
        assert_eq!(
            r.errmsg.as_deref(),
            Some("ctdb_control to disconnected node")
        );
        let e = check(r, Opcode::DbFreeze, 2).unwrap_err();
        assert!(e.to_string().contains("disconnected node"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // Hold the connection open without ever answering.
            let (_s, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut c = DirectConn::connect(&path, 0, Duration::from_millis(200))
            .await
            .unwrap();
        let r = c
            .control(1, ReqControl::new(ControlRequest::DbThaw(1)))
            .await;
        assert!(matches!(r, Err(ClientError::Timeout { .. })), "{r:?}");
        server.abort();
    }

    #[test]
    fn destination_patch_hits_the_header_field() {
        let rb = RecBuffer::new(5);
        let pkt = Packet::new(
            Header::new(Operation::ReqMessage, 0x1234_5678, 9, 0),
            Body::ReqMessage(ReqMessage {
                srvid: 1,
                data: MessageData::RecoveryRecords(rb),
            }),
        )
        .encode();
        assert_eq!(
            &pkt[DESTNODE_OFFSET..DESTNODE_OFFSET + 4],
            &0x1234_5678u32.to_le_bytes()
        );
        let (h, _) = Header::pull(&pkt).unwrap();
        assert_eq!(h.destnode, 0x1234_5678);
        assert_eq!(h.srcnode, 9);
    }
}
