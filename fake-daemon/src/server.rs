//! The socket side: accepting clients, reading their packets, routing each
//! to the node(s) it is addressed to, and writing replies and messages.

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener as StdListener;
use std::rc::Rc;
use std::time::Duration;

use ctdb_client::unix_io::{PacketReader, Socket, register};
use ctdb_protocol::call::{ReplyCall, ReqCall};
use ctdb_protocol::framing::DEFAULT_MAX_PACKET;
use ctdb_protocol::header::{
    CTDB_BROADCAST_ACTIVE, CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE,
    HEADER_LEN,
};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{DisableMessage, LtdbHeader, RecBuffer, SrvidMessage, node_flags};
use ctdb_protocol::{
    Body, Header, Marshal, Operation, Packet, ReplyControl, ReqControl, ReqMessage,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc};

use crate::controls;
use ctdbd::messaging::ClientId;

use crate::daemon::{Daemon, Effects, Later};

/// The daemon shared by every connection. Everything runs on one thread
/// (a `LocalSet`): the daemon cores are not `Send`.
pub type Shared = Rc<RefCell<Daemon>>;

/// Serves clients on `listener` until a client asks for shutdown; then
/// returns.
pub async fn serve(listener: StdListener, daemon: Shared) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let stop = Rc::new(Notify::new());
    tokio::task::spawn_local(leader_broadcasts(Rc::clone(&daemon)));
    let mut next_id: ClientId = 1;
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = r?;
                let id = next_id;
                next_id += 1;
                tokio::task::spawn_local(client(id, stream, Rc::clone(&daemon), Rc::clone(&stop)));
            }
            _ = stop.notified() => return Ok(()),
        }
    }
}

/// Tells leader listeners who the leader is, once a second, as the
/// reference daemon's recovery master does.
async fn leader_broadcasts(daemon: Shared) {
    loop {
        {
            let d = daemon.borrow_mut();
            let mut fx = Effects::default();
            d.leader_broadcast(&mut fx);
            deliver(&d, fx.send);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Queues packets on their clients' connections.
fn deliver(d: &Daemon, send: Vec<(ClientId, Vec<u8>)>) {
    for (id, pkt) in send {
        if let Some(tx) = d.clients.get(&id) {
            let _ = tx.send(pkt);
        }
    }
}

/// Carries out handlers' effects: packets now, delayed work later.
fn apply(daemon: &Shared, d: &Daemon, fx: Effects, stop: &Rc<Notify>) {
    deliver(d, fx.send);
    for l in fx.later {
        tokio::task::spawn_local(later(Rc::clone(daemon), l));
    }
    if fx.shutdown {
        stop.notify_one();
    }
}

async fn later(daemon: Shared, work: Later) {
    match work {
        Later::Recovery { client, reply_to } => {
            // Wait while any node has recoveries disabled, then "recover"
            // for a second.
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut d = daemon.borrow_mut();
                if !d.cluster.recoveries_disabled() {
                    d.start_recovery();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut d = daemon.borrow_mut();
            d.finish_recovery();
            let mut fx = Effects::default();
            d.reply(
                &mut fx,
                client,
                &reply_to,
                ReplyControl::ok(ctdb_protocol::ControlReply::SetRecmode),
            );
            deliver(&d, fx.send);
        }
        Later::ExpireBan { pnn, after } => {
            tokio::time::sleep(after).await;
            let mut d = daemon.borrow_mut();
            if let Some(c) = d.cluster.cores.get_mut(pnn as usize) {
                c.node.expire_ban(std::time::Instant::now());
            }
        }
        Later::EnableRecoveries { pnn, serial, after } => {
            tokio::time::sleep(after).await;
            let mut d = daemon.borrow_mut();
            if let Some(s) = d.cluster.recovery_disabled.get_mut(pnn as usize)
                && *s == serial
            {
                *s = 0;
            }
        }
        Later::Echo {
            client,
            reply_to,
            delay,
            data,
        } => {
            tokio::time::sleep(delay).await;
            let d = daemon.borrow_mut();
            let mut fx = Effects::default();
            let r = ReplyControl::ok(ctdb_protocol::ControlReply::EchoData(data));
            d.reply(&mut fx, client, &reply_to, r);
            deliver(&d, fx.send);
        }
    }
}

/// One client connection.
async fn client(id: ClientId, stream: tokio::net::UnixStream, daemon: Shared, stop: Rc<Notify>) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(-1);
    // Packets are framed from a duplicate of the descriptor registered
    // for readability; the stream itself is written to.
    let rd = match stream
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| register(Socket::from(fd), Interest::READABLE))
    {
        Ok(rd) => rd,
        Err(e) => {
            tracing::error!("Client pid={pid} not served: {e}");
            return;
        }
    };
    let mut wr = stream;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    daemon.borrow_mut().add_client(id, pid, tx);
    tracing::info!("New client id={id} pid={pid}");

    let writer = tokio::task::spawn_local(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = first;
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
                if batch.len() > 1 << 20 {
                    break;
                }
            }
            if wr.write_all(&batch).await.is_err() {
                return;
            }
        }
    });

    let mut reader = PacketReader::new(DEFAULT_MAX_PACKET);
    while let Ok(Some(frame)) = reader.next(&rd).await {
        let mut d = daemon.borrow_mut();
        let mut fx = Effects::default();
        packet(&mut d, &mut fx, id, &frame);
        apply(&daemon, &d, fx, &stop);
    }
    {
        let mut d = daemon.borrow_mut();
        let mut fx = Effects::default();
        d.remove_client(&mut fx, id);
        deliver(&d, fx.send);
    }
    writer.abort();
    tracing::info!("Client done id={id}");
}

/// Routes one packet to the node(s) it is for.
pub fn packet(d: &mut Daemon, fx: &mut Effects, client: ClientId, buf: &[u8]) {
    let Ok((mut h, _)) = Header::pull(buf) else {
        return;
    };
    if h.length as usize != buf.len() {
        return;
    }
    let me = d.pnn();
    if h.srcnode == CTDB_CURRENT_NODE {
        h.srcnode = me;
    }
    if h.destnode == CTDB_CURRENT_NODE {
        h.destnode = me;
    }
    let body = &buf[HEADER_LEN..];
    let n = d.cluster.len();
    let flags = |i: u32| d.cluster.flags(i);
    let targets: Vec<u32> = match h.destnode {
        CTDB_BROADCAST_ALL => (0..n).collect(),
        CTDB_BROADCAST_CONNECTED => (0..n)
            .filter(|&i| flags(i) & node_flags::DISCONNECTED == 0)
            .collect(),
        CTDB_BROADCAST_ACTIVE => (0..n)
            .filter(|&i| flags(i) & node_flags::INACTIVE == 0)
            .collect(),
        dest if dest > n => {
            eprintln!("Invalid destination pnn 0x{dest:x}");
            return;
        }
        dest if dest < n && flags(dest) & node_flags::DISCONNECTED != 0 => {
            eprintln!("Packet for disconnected node pnn {dest}");
            return;
        }
        dest => vec![dest],
    };
    for dest in targets {
        let mut h = h;
        h.destnode = dest;
        match h.operation {
            Operation::ReqControl => control(d, fx, client, &h, body),
            Operation::ReqMessage => message(d, fx, client, &h, body),
            Operation::ReqCall => call(d, fx, client, &h, body),
            _ => {}
        }
    }
}

fn control(d: &mut Daemon, fx: &mut Effects, client: ClientId, h: &Header, body: &[u8]) {
    let req = match ReqControl::pull(body) {
        Ok((r, _)) => r,
        Err(e) => {
            let opcode = ReqControl::peek_opcode(body).unwrap_or(u32::MAX);
            let flags = body
                .get(20..24)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
            tracing::debug!("control {opcode} not understood: {e}");
            if h.destnode < d.cluster.len() {
                controls::unknown(d, fx, client, h, opcode, flags);
            } else {
                d.reply(fx, client, h, ReplyControl::error(-1, "Invalid node"));
            }
            return;
        }
    };
    if h.destnode >= d.cluster.len() {
        d.reply(fx, client, h, ReplyControl::error(-1, "Invalid node"));
        return;
    }
    tracing::info!(
        "request opcode = {}, reqid = {}",
        req.opcode() as u32,
        h.reqid
    );
    controls::handle(d, fx, client, h, &req);
}

fn reply_int(d: &Daemon, fx: &mut Effects, client: ClientId, h: &Header, srvid: u64, v: i32) {
    d.message_to(fx, client, h, srvid, v.to_le_bytes().to_vec());
}

fn message(d: &mut Daemon, fx: &mut Effects, client: ClientId, h: &Header, body: &[u8]) {
    if h.destnode >= d.cluster.len() {
        eprintln!("Invalid node {}", h.destnode);
        return;
    }
    let Ok((id, payload)) = ReqMessage::raw_payload(body) else {
        return;
    };
    let dest = h.destnode;
    if id == srvid::BANNING
        && let Some(b) = payload.get(..4)
    {
        let pnn = u32::from_le_bytes(b.try_into().unwrap());
        d.log_control(format_args!("BANNING {dest} {pnn}"));
    }
    match id {
        srvid::DISABLE_RECOVERIES => {
            let Ok((m, _)) = DisableMessage::pull(payload) else {
                return;
            };
            let serial = d.next_serial();
            let Some(slot) = d.cluster.recovery_disabled.get_mut(dest as usize) else {
                return;
            };
            if m.timeout == 0 {
                *slot = 0;
            } else {
                *slot = serial;
                fx.later.push(Later::EnableRecoveries {
                    pnn: dest,
                    serial,
                    after: Duration::from_secs(m.timeout as u64),
                });
            }
            reply_int(d, fx, client, h, m.srvid, dest as i32);
        }
        srvid::DISABLE_TAKEOVER_RUNS => {
            let Ok((m, _)) = DisableMessage::pull(payload) else {
                return;
            };
            reply_int(d, fx, client, h, m.srvid, dest as i32);
        }
        srvid::TAKEOVER_RUN => {
            let Ok((m, _)) = SrvidMessage::pull(payload) else {
                return;
            };
            // Only the leader answers.
            if dest == d.st.leader {
                reply_int(d, fx, client, h, m.srvid, dest as i32);
            }
        }
        srvid::MEM_DUMP => {
            let Ok((m, _)) = SrvidMessage::pull(payload) else {
                return;
            };
            let mut s = format!("fake recovery daemon memory on node {dest}\n").into_bytes();
            s.push(0);
            d.message_to(fx, client, h, m.srvid, s);
        }
        srvid::REBALANCE_NODE | srvid::DISABLE_IP_CHECK => {}
        _ => {
            if let Some(i) = d
                .dbs
                .iter()
                .position(|db| db.push.as_ref().is_some_and(|p| p.srvid == id))
            {
                push_records(d, i, dest, payload);
            } else {
                d.dispatch(fx, h.srcnode, id, payload);
            }
        }
    }
}

/// Records pushed into a database during `restoredb`: the current node's
/// file gets them (the other nodes share it), every node counts them.
fn push_records(d: &mut Daemon, i: usize, dest: u32, payload: &[u8]) {
    let Ok((rb, _)) = RecBuffer::pull(payload) else {
        return;
    };
    let me = d.pnn();
    let db = &mut d.dbs[i];
    if dest == me {
        for rec in rb.iter() {
            if let Ok((hdr, data)) = rec.header() {
                let _ = db.store(rec.key, &hdr, data);
            }
        }
    }
    if let Some(n) = db.push.as_mut().and_then(|p| p.counts.get_mut(&dest)) {
        *n += rb.count();
    }
}

fn call(d: &mut Daemon, fx: &mut Effects, client: ClientId, h: &Header, body: &[u8]) {
    let status = match ReqCall::pull(body) {
        Ok((c, _)) if h.destnode < d.cluster.len() => migrate(d, &c),
        _ => -1,
    };
    let rh = d.answer_header(Operation::ReplyCall, h);
    let pkt = Packet::new(
        rh,
        Body::ReplyCall(ReplyCall {
            status,
            data: Vec::new(),
        }),
    );
    fx.send.push((client, pkt.encode()));
}

/// A record call: the record "migrates" to this node.
fn migrate(d: &mut Daemon, c: &ReqCall) -> i32 {
    let me = d.pnn();
    let Some(db) = d.db(c.db_id) else {
        return -1;
    };
    let Ok((mut hdr, data)) = db.fetch(&c.key) else {
        return -1;
    };
    if hdr.dmaster != me {
        hdr.dmaster = me;
        let hdr: LtdbHeader = hdr;
        if db.store(&c.key, &hdr, &data).is_err() {
            return -1;
        }
    }
    0
}
