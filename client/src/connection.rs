//! One connection to a daemon: where requests leave and replies and messages
//! come back.
//!
//! A [`Client`] is a cheap handle (clone it freely) on a connection. A
//! request is written to the socket by the caller itself (one `sendmsg`,
//! never blocking); a background reader routes each incoming packet: a
//! control or call reply to the request waiting for it (by reqid), a
//! message to the handler registered for its srvid. When the socket closes,
//! every waiting request fails with [`ClientError::Disconnected`] and every
//! message handler's channel ends.
//!
//! The socket is registered with the runtime for readability only: one
//! registered for writability as well is signalled every time the daemon
//! reads a request, which wakes this process for nothing. Only if the
//! socket is full (the daemon is not reading) does a writer task wait for
//! it to drain, on a duplicate descriptor registered for that alone, and
//! write the backlog; requests sent meanwhile queue behind in order.
//!
//! What is sent is on its way once it is in the socket: the daemon reads
//! it even after this process has closed its end. Only a backlog can be
//! lost, so a sender that must know its packets left (a one-way request
//! such as a `SCHEDULE_FOR_DELETION` hint, before the process exits) has
//! two guarantees:
//! - [`Client::flush`] returns once every packet queued before it is in
//!   the socket (or fails: the connection has ended, or the backlog was
//!   still not empty after the client's timeout);
//! - when the last handle of a connection is dropped ([`Client`] and its
//!   clones, including those inside [`crate::Db`]s and transactions), the
//!   drop writes whatever backlog is left, blocking the dropping thread
//!   until the daemon has read enough of it, for at most
//!   [`DROP_FLUSH_LIMIT`]. So a process that ends normally (its `main`
//!   returns and its runtime shuts down, dropping every task and the
//!   clients they hold) loses nothing it sent to a daemon that is still
//!   reading.
//!
//! Not guaranteed: a process that ends without dropping its clients
//! (`std::process::exit`, `abort`, a signal, a client leaked with
//! `mem::forget` or held in a `static`) loses any backlog left; call
//! `flush` before such an exit. Nor is anything said about the daemon
//! having *handled* a packet: only a reply says that. Dropping the last
//! handle does not close the connection (its reader runs on with the
//! runtime, as before).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ctdb_protocol::call::{ReplyCall, ReqCall};
use ctdb_protocol::framing::DEFAULT_MAX_PACKET;
use ctdb_protocol::header::{CTDB_CURRENT_NODE, CTDB_UNKNOWN_PNN};
use ctdb_protocol::{
    Body, ControlRequest, Header, Marshal, Opcode, Operation, Packet, ReplyControl, ReqControl,
    ReqMessage,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{ClientError, Result};
use crate::unix_io::{
    PacketReader, Socket, register, send_vectored, wait_writable_blocking, watch_writable,
};

/// Control timeout used when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping the last handle of a connection waits, at most, for
/// the daemon to read the backlog left (see the module documentation).
pub const DROP_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// A message delivered to a registered srvid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub srvid: u64,
    pub data: Vec<u8>,
}

enum Waiter {
    Control(Opcode, oneshot::Sender<Result<ReplyControl>>),
    Call(oneshot::Sender<Result<ReplyCall>>),
}

/// The sending side: requests are written straight to the socket unless a
/// backlog is waiting for it to drain.
struct Out {
    sock: Option<Arc<AsyncFd<Socket>>>,
    /// Unwritten bytes, in order (the first may be partly written).
    backlog: VecDeque<Vec<u8>>,
    /// The writer task owns the backlog until it is empty.
    blocked: bool,
}

struct Shared {
    out: Mutex<Out>,
    /// Wakes the writer task when a backlog forms (or the connection ends).
    writer: Notify,
    /// Wakes [`Client::flush`]es when the backlog is written (or dropped
    /// with the connection).
    drained: Notify,
    waiting: Mutex<HashMap<u32, Waiter>>,
    handlers: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    tunnels: Mutex<crate::tunnel::Handlers>,
    next_reqid: AtomicU32,
    pnn: AtomicU32,
    closed: AtomicBool,
}

/// A connection to a CTDB daemon's unix socket.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    timeout: Duration,
    /// Shared by the handles whose last drop writes the backlog left;
    /// `None` for the library's own background tasks, which live as long
    /// as the connection and must not keep that from happening.
    handle: Option<Arc<LastHandle>>,
}

/// Writes the connection's backlog when the last [`Client`] handle goes.
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.flush_blocking(DROP_FLUSH_LIMIT);
    }
}

impl Client {
    /// Connects to the daemon at `socket` and learns its node number.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        let path = socket.as_ref();
        // A busy daemon's listen backlog may be full for a moment.
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 500 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        let client = Client::from_stream(stream);
        let pnn = client
            .control_status(CTDB_CURRENT_NODE, ControlRequest::GetPnn)
            .await?;
        client.shared.pnn.store(pnn as u32, Ordering::Relaxed);
        Ok(client)
    }

    /// Serves an already connected socket (node number unknown until asked).
    pub fn from_stream(stream: UnixStream) -> Client {
        let sock = stream
            .into_std()
            .and_then(|s| register(s, Interest::READABLE))
            .map(Arc::new);
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                sock: sock.as_ref().ok().cloned(),
                backlog: VecDeque::new(),
                blocked: false,
            }),
            writer: Notify::new(),
            drained: Notify::new(),
            waiting: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
            tunnels: Mutex::new(HashMap::new()),
            next_reqid: AtomicU32::new(1),
            pnn: AtomicU32::new(CTDB_UNKNOWN_PNN),
            closed: AtomicBool::new(false),
        });
        match sock {
            Ok(sock) => {
                tokio::spawn(write_loop(Arc::clone(&shared)));
                tokio::spawn(read_loop(sock, Arc::clone(&shared)));
            }
            Err(e) => {
                tracing::warn!("cannot serve the connection to the daemon: {e}");
                shared.closed.store(true, Ordering::Relaxed);
            }
        }
        Client {
            handle: Some(Arc::new(LastHandle(Arc::clone(&shared)))),
            shared,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same connection with a different control timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            timeout,
            handle: self.handle.clone(),
        }
    }

    /// A handle for a background task that lives as long as the
    /// connection: it does not count as a handle whose last drop flushes
    /// the backlog.
    pub(crate) fn background(&self) -> Client {
        Client {
            shared: Arc::clone(&self.shared),
            timeout: self.timeout,
            handle: None,
        }
    }

    /// Waits until every packet sent on this connection before the call
    /// is written to the socket (and so will reach the daemon, even if
    /// this process ends right after). Returns at once when nothing is
    /// queued, which is the usual case: a packet is written by its sender
    /// unless the socket is full. It waits for the whole backlog, so
    /// packets other handles keep queuing behind its own can make it wait
    /// longer. Fails with `Disconnected` if the connection has ended
    /// (even with nothing queued; a backlog is then lost), and with a
    /// timeout if the backlog is still not empty after the client's
    /// timeout (it stays queued for the writer).
    pub async fn flush(&self) -> Result<()> {
        let wait = async {
            loop {
                let drained = self.shared.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                {
                    let out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
                    if out.sock.is_none() {
                        return Err(ClientError::Disconnected);
                    }
                    if !out.blocked {
                        return Ok(());
                    }
                }
                drained.await;
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: "flushing the requests queued for the daemon".to_owned(),
                opcode: None,
            }),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The number of the node this client is connected to.
    pub fn pnn(&self) -> u32 {
        self.shared.pnn.load(Ordering::Relaxed)
    }

    /// Whether the daemon has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn next_reqid(&self) -> u32 {
        self.reqid()
    }

    pub(crate) fn tunnel_handlers(&self) -> &Mutex<crate::tunnel::Handlers> {
        &self.shared.tunnels
    }

    pub(crate) fn send_packet(&self, pkt: &Packet) -> Result<()> {
        self.send(pkt)
    }

    fn reqid(&self) -> u32 {
        loop {
            let id = self.shared.next_reqid.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn header(&self, op: Operation, dest: u32, reqid: u32) -> Header {
        Header::new(op, dest, self.pnn(), reqid)
    }

    fn send(&self, pkt: &Packet) -> Result<()> {
        if self.is_closed() {
            return Err(ClientError::Disconnected);
        }
        self.shared.send(pkt.encode())
    }

    async fn wait<T>(
        &self,
        reqid: u32,
        rx: oneshot::Receiver<Result<T>>,
        opcode: Option<Opcode>,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => {
                self.shared.waiting.lock().unwrap().remove(&reqid);
                Err(ClientError::Timeout {
                    what: what(),
                    opcode,
                })
            }
        }
    }

    /// Sends a control to node `dest` and returns the daemon's reply as it
    /// is, whatever its status.
    pub async fn control_raw(&self, dest: u32, req: ReqControl) -> Result<ReplyControl> {
        let reqid = self.reqid();
        let opcode = req.opcode();
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap()
            .insert(reqid, Waiter::Control(opcode, tx));
        let pkt = Packet::new(
            self.header(Operation::ReqControl, dest, reqid),
            Body::ReqControl(req),
        );
        if let Err(e) = self.send(&pkt) {
            self.shared.waiting.lock().unwrap().remove(&reqid);
            return Err(e);
        }
        self.wait(reqid, rx, Some(opcode), || {
            format!("control {} to node {dest}", opcode.name())
        })
        .await
    }

    /// Sends a control that wants no reply.
    pub fn control_noreply(&self, dest: u32, mut req: ReqControl) -> Result<()> {
        req.flags |= ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
        let pkt = Packet::new(
            self.header(Operation::ReqControl, dest, self.reqid()),
            Body::ReqControl(req),
        );
        self.send(&pkt)
    }

    /// Sends a control and fails unless its status is 0.
    pub async fn control(&self, dest: u32, data: ControlRequest) -> Result<ReplyControl> {
        self.control_flags(dest, data, 0).await
    }

    /// [`control`](Client::control) with control flags.
    pub async fn control_flags(
        &self,
        dest: u32,
        data: ControlRequest,
        flags: u32,
    ) -> Result<ReplyControl> {
        let opcode = data.opcode();
        let mut req = ReqControl::new(data);
        req.flags = flags;
        let reply = self.control_raw(dest, req).await?;
        if reply.status != 0 {
            return Err(ClientError::ControlFailed {
                opcode,
                node: dest,
                status: reply.status,
                errmsg: reply.errmsg,
            });
        }
        Ok(reply)
    }

    /// Sends a control whose answer is its status (which may be any value,
    /// so it is not treated as an error unless negative with a message).
    pub async fn control_status(&self, dest: u32, data: ControlRequest) -> Result<i32> {
        let opcode = data.opcode();
        let reply = self.control_raw(dest, ReqControl::new(data)).await?;
        if reply.status < 0 || reply.errmsg.is_some() {
            return Err(ClientError::ControlFailed {
                opcode,
                node: dest,
                status: reply.status,
                errmsg: reply.errmsg,
            });
        }
        Ok(reply.status)
    }

    /// Sends the same control to several nodes at once; one result each,
    /// in the order of `nodes`.
    pub async fn control_many(
        &self,
        nodes: &[u32],
        data: ControlRequest,
    ) -> Vec<(u32, Result<ReplyControl>)> {
        let futs = nodes.iter().map(|&n| {
            let data = data.clone();
            async move { (n, self.control(n, data).await) }
        });
        futures::future::join_all(futs).await
    }

    /// Sends a record call and waits for its reply.
    pub async fn call(&self, dest: u32, call: ReqCall) -> Result<ReplyCall> {
        let reqid = self.reqid();
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap()
            .insert(reqid, Waiter::Call(tx));
        let pkt = Packet::new(
            self.header(Operation::ReqCall, dest, reqid),
            Body::ReqCall(call),
        );
        if let Err(e) = self.send(&pkt) {
            self.shared.waiting.lock().unwrap().remove(&reqid);
            return Err(e);
        }
        self.wait(reqid, rx, None, || "record call".to_owned())
            .await
    }

    /// Sends a message to `srvid` on node `dest` (or a broadcast address).
    pub fn send_message(&self, dest: u32, srvid: u64, data: &[u8]) -> Result<()> {
        let pkt = Packet::new(
            self.header(Operation::ReqMessage, dest, 0),
            Body::ReqMessage(ReqMessage::data(srvid, data.to_vec())),
        );
        self.send(&pkt)
    }

    /// Sends a typed message.
    pub fn send_typed_message(&self, dest: u32, msg: ReqMessage) -> Result<()> {
        let pkt = Packet::new(
            self.header(Operation::ReqMessage, dest, 0),
            Body::ReqMessage(msg),
        );
        self.send(&pkt)
    }

    /// Registers `srvid` with the daemon and returns the channel its
    /// messages arrive on.
    pub async fn register_srvid(&self, srvid: u64) -> Result<mpsc::UnboundedReceiver<Message>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Install the handler first so no message can arrive unrouted.
        self.shared.handlers.lock().unwrap().insert(srvid, tx);
        let mut req = ReqControl::new(ControlRequest::RegisterSrvid);
        req.srvid = srvid;
        let reply = self.control_raw(CTDB_CURRENT_NODE, req).await;
        match reply {
            Ok(r) if r.status == 0 => Ok(rx),
            Ok(r) => {
                self.shared.handlers.lock().unwrap().remove(&srvid);
                Err(ClientError::ControlFailed {
                    opcode: Opcode::RegisterSrvid,
                    node: self.pnn(),
                    status: r.status,
                    errmsg: r.errmsg,
                })
            }
            Err(e) => {
                self.shared.handlers.lock().unwrap().remove(&srvid);
                Err(e)
            }
        }
    }

    /// Whether this connection routes messages for `srvid` to a handler
    /// (registered, or being registered).
    pub fn handles_srvid(&self, srvid: u64) -> bool {
        self.shared.handlers.lock().unwrap().contains_key(&srvid)
    }

    /// Deregisters `srvid`; its channel ends.
    pub async fn deregister_srvid(&self, srvid: u64) -> Result<()> {
        self.shared.handlers.lock().unwrap().remove(&srvid);
        let mut req = ReqControl::new(ControlRequest::DeregisterSrvid);
        req.srvid = srvid;
        let r = self.control_raw(CTDB_CURRENT_NODE, req).await?;
        if r.status != 0 {
            return Err(ClientError::ControlFailed {
                opcode: Opcode::DeregisterSrvid,
                node: self.pnn(),
                status: r.status,
                errmsg: r.errmsg,
            });
        }
        Ok(())
    }
}

impl Shared {
    /// Writes a packet now, or queues it behind a backlog.
    fn send(&self, bytes: Vec<u8>) -> Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sock) = out.sock.clone() else {
            return Err(ClientError::Disconnected);
        };
        if out.blocked {
            out.backlog.push_back(bytes);
            return Ok(());
        }
        match send_vectored(sock.get_ref(), &[IoSlice::new(&bytes)]) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => {
                out.backlog.push_back(bytes[n..].to_vec());
                out.blocked = true;
                self.writer.notify_one();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.backlog.push_back(bytes);
                out.blocked = true;
                self.writer.notify_one();
                Ok(())
            }
            Err(e) => {
                tracing::debug!("write to the daemon failed: {e}");
                out.sock = None;
                out.backlog.clear();
                self.closed.store(true, Ordering::Relaxed);
                let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
                Err(ClientError::Disconnected)
            }
        }
    }

    /// For the writer: writes the backlog until it is empty (`Ok(true)`),
    /// the socket is full (`Ok(false)`) or the connection fails.
    fn drain(&self, sock: &Socket) -> io::Result<bool> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = out.backlog.front_mut() {
            match send_vectored(sock, &[IoSlice::new(front)]) {
                Ok(n) if n == front.len() => {
                    out.backlog.pop_front();
                }
                Ok(n) => {
                    front.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        out.blocked = false;
        drop(out);
        self.drained.notify_waiters();
        Ok(true)
    }

    /// Writes the backlog left from this thread, waiting (blocking) for
    /// the socket to drain, for at most `limit`; for the drop of the last
    /// handle, when the writer task may not run again (the runtime may be
    /// shutting down). The writer task, if it runs meanwhile, takes turns
    /// under the same lock: order is kept.
    fn flush_blocking(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let sock = {
                let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                match out.sock.clone() {
                    Some(s) if out.blocked => s,
                    _ => return,
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let waited = match self.drain(sock.get_ref()) {
                Ok(true) => return,
                Ok(false) if left.is_zero() => Err(io::Error::from(io::ErrorKind::TimedOut)),
                Ok(false) => wait_writable_blocking(sock.get_ref(), left),
                Err(e) => {
                    tracing::debug!("write to the daemon failed: {e}");
                    self.close_out();
                    return;
                }
            };
            if let Err(e) = waited {
                let out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                tracing::warn!(
                    "last client handle dropped: {} queued requests not written to the daemon: {e}",
                    out.backlog.len()
                );
                return;
            }
        }
    }

    /// The connection is over: nothing more is written.
    fn close_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = out.sock.take() {
            let _ = s.get_ref().shutdown(std::net::Shutdown::Both);
        }
        out.backlog.clear();
        out.blocked = false;
        drop(out);
        self.writer.notify_one();
        self.drained.notify_waiters();
    }
}

/// Writes backlogs: idle until a request finds the socket full, then waits
/// for it to drain (watching a duplicate descriptor for writability only
/// while the backlog lasts).
async fn write_loop(shared: Arc<Shared>) {
    loop {
        shared.writer.notified().await;
        let sock = {
            let out = shared.out.lock().unwrap_or_else(|e| e.into_inner());
            if !out.blocked {
                if out.sock.is_none() {
                    return;
                }
                continue;
            }
            match out.sock.clone() {
                Some(s) => s,
                None => return,
            }
        };
        let dup = match watch_writable(sock.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot wait for the daemon's socket to drain: {e}");
                shared.close_out();
                return;
            }
        };
        loop {
            let mut guard = match dup.writable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!("daemon socket: {e}");
                    shared.close_out();
                    return;
                }
            };
            match shared.drain(dup.get_ref()) {
                Ok(true) => break,
                Ok(false) => guard.clear_ready(),
                Err(e) => {
                    tracing::debug!("write to the daemon failed: {e}");
                    shared.close_out();
                    return;
                }
            }
        }
    }
}

/// Routes every incoming packet; on end of stream fails everything waiting.
async fn read_loop(sock: Arc<AsyncFd<Socket>>, shared: Arc<Shared>) {
    if let Some(e) = read_packets(&sock, &shared).await {
        tracing::warn!("dropping connection to daemon: {e}");
    }
    shared.closed.store(true, Ordering::Relaxed);
    shared.close_out();
    drop(sock);
    let waiting: Vec<Waiter> = shared
        .waiting
        .lock()
        .unwrap()
        .drain()
        .map(|(_, w)| w)
        .collect();
    for w in waiting {
        match w {
            Waiter::Control(_, tx) => drop(tx.send(Err(ClientError::Disconnected))),
            Waiter::Call(tx) => drop(tx.send(Err(ClientError::Disconnected))),
        }
    }
    shared.handlers.lock().unwrap().clear();
    shared.tunnels.lock().unwrap().clear();
}

/// Reads and dispatches packets until end of file (`None`) or an error.
async fn read_packets(sock: &AsyncFd<Socket>, shared: &Shared) -> Option<String> {
    let mut reader = PacketReader::new(DEFAULT_MAX_PACKET);
    loop {
        match reader.next(sock).await {
            Ok(Some(frame)) => dispatch(shared, frame),
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        }
    }
}

fn dispatch(shared: &Shared, frame: BytesMut) {
    let header = match Header::pull(&frame) {
        Ok((h, _)) => h,
        Err(e) => {
            tracing::warn!("bad packet from daemon: {e}");
            return;
        }
    };
    match header.operation {
        Operation::ReplyControl => {
            let Some(Waiter::Control(opcode, tx)) = take_waiter(shared, header.reqid, true) else {
                tracing::debug!("reply for unknown request {}", header.reqid);
                return;
            };
            let r = Packet::decode(&frame, |_| Some(opcode)).map_err(ClientError::from);
            let r = r.and_then(|p| match p.body {
                Body::ReplyControl(rc) => Ok(rc),
                _ => Err(ClientError::UnexpectedReply(opcode)),
            });
            let _ = tx.send(r);
        }
        Operation::ReplyCall | Operation::ReplyError => {
            let Some(Waiter::Call(tx)) = take_waiter(shared, header.reqid, false) else {
                tracing::debug!("call reply for unknown request {}", header.reqid);
                return;
            };
            let r = match Packet::decode_request(&frame) {
                Ok(Packet {
                    body: Body::ReplyCall(c),
                    ..
                }) => Ok(c),
                Ok(Packet {
                    body: Body::ReplyError(e),
                    ..
                }) => Err(ClientError::CallFailed {
                    status: e.status,
                    msg: String::from_utf8_lossy(&e.msg)
                        .trim_end_matches('\0')
                        .to_owned(),
                }),
                Ok(_) => Err(ClientError::Other("unexpected call reply".into())),
                Err(e) => Err(e.into()),
            };
            let _ = tx.send(r);
        }
        Operation::ReqMessage => {
            let body = &frame[ctdb_protocol::header::HEADER_LEN..];
            match ReqMessage::raw_payload(body) {
                Ok((srvid, data)) => {
                    let handlers = shared.handlers.lock().unwrap();
                    let h = handlers
                        .get(&srvid)
                        .or_else(|| handlers.get(&ctdb_protocol::message::srvid::ALL));
                    if let Some(h) = h {
                        let _ = h.send(Message {
                            srvid,
                            data: data.to_vec(),
                        });
                    }
                }
                Err(e) => tracing::warn!("bad message from daemon: {e}"),
            }
        }
        Operation::ReqTunnel => crate::tunnel::dispatch(&shared.tunnels, &header, &frame),
        op => tracing::debug!("ignoring {op:?} from daemon"),
    }
}

fn take_waiter(shared: &Shared, reqid: u32, control: bool) -> Option<Waiter> {
    let mut w = shared.waiting.lock().unwrap();
    match w.get(&reqid) {
        Some(Waiter::Control(..)) if control => w.remove(&reqid),
        Some(Waiter::Call(..)) if !control => w.remove(&reqid),
        _ => None,
    }
}
