//! The freeze session thread of a recovery: it holds a frozen database's
//! handle, locks every record, and serves the recovery controls the
//! daemon forwards to it in order (pull streamed in chunks, transaction
//! start, wipe, pushed records, commit, sequence number) until the thaw
//! sends the handle home. [`super`] is the daemon side that starts
//! sessions and forwards the controls.

use std::sync::mpsc as smpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ctdb_protocol::types::RecBuffer;
use ctdb_protocol::{
    Body, ControlReply, Header, Marshal, Operation, Packet, ReplyControl, ReqMessage,
};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{Cmd, StoreInfo};
use crate::db::persistent::{read_seqnum, strip_ro};
use crate::db::{Databases, DbEvent, Env, ltdb};

fn send_reply(ev: &mpsc::UnboundedSender<DbEvent>, tag: u64, r: Result<ControlReply, String>) {
    let reply = match r {
        Ok(d) => ReplyControl::ok(d),
        Err(e) => ReplyControl::error(-1, e),
    };
    let _ = ev.send(DbEvent::Reply { tag, reply });
}

/// Recovery records of a volatile database, applied at commit.
#[derive(Default)]
struct Buffered {
    wipe: bool,
    recs: Vec<RecBuffer>,
}

/// A freeze session: lock everything, serve recovery requests, thaw, and
/// send the handle home.
#[allow(clippy::too_many_arguments)]
pub(super) fn session(
    db: u32,
    name: String,
    tdb: tdb::Tdb,
    kind: (bool, bool),
    rx: smpsc::Receiver<Cmd>,
    ev: mpsc::UnboundedSender<DbEvent>,
    deadline: Instant,
    log: crate::db::changelog::RecoveryTx,
) {
    serve(db, &name, &tdb, kind, rx, &ev, deadline, log);
    info!("Release freeze handle for db {name}");
    let _ = ev.send(DbEvent::Returned {
        db,
        tdb: Box::new(tdb),
        done: None,
    });
}

/// Takes every record lock, waiting in the kernel (behind the clients
/// that hold record locks, as one more waiter) until `deadline`. Requests
/// that arrive meanwhile wait in the channel; a thaw moves the deadline to
/// now (see [`Databases::freeze_deadlines`]).
fn lock_all(tdb: &tdb::Tdb, deadline: Instant) -> Result<tdb::AllLock<'_>, String> {
    let started = Instant::now();
    match tdb.lockall_until(deadline) {
        Ok(g) => Ok(g),
        Err(tdb::Error::WouldBlock) => Err(format!(
            "a client has held a record lock for more than {} s (or the freeze was cancelled)",
            started.elapsed().as_secs()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The signal that interrupts a freeze's blocked `fcntl` wait: a handler
/// that does nothing, installed without `SA_RESTART`, so the wait returns
/// `EINTR` and the tdb crate checks its deadline.
const WAKEUP_SIGNAL: libc::c_int = libc::SIGURG;

extern "C" fn on_wakeup(_: libc::c_int) {}

pub(super) fn install_wakeup_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // async-signal-safe function that does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wakeup as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(WAKEUP_SIGNAL, &sa, std::ptr::null_mut()) != 0 {
                error!(
                    "cannot install the freeze wake-up handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Interrupts `thread`'s blocking system call.
pub(super) fn interrupt(thread: &std::thread::JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread has not been joined or detached (we hold its
    // handle), so its pthread_t is valid even if it has finished.
    unsafe {
        libc::pthread_kill(thread.as_pthread_t(), WAKEUP_SIGNAL);
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    db: u32,
    name: &str,
    tdb: &tdb::Tdb,
    (volatile, keyed): (bool, bool),
    rx: smpsc::Receiver<Cmd>,
    ev: &mpsc::UnboundedSender<DbEvent>,
    deadline: Instant,
    mut log: crate::db::changelog::RecoveryTx,
) {
    // Keyed databases: the copy epoch held before the recovery transaction
    // (see keyed_recovery.rs).
    let mut epoch_before: Result<u64, String> = Ok(0);
    let lock = match lock_all(tdb, deadline) {
        Ok(x) => x,
        Err(why) => {
            error!("Freeze of database {name} failed: {why}");
            let _ = ev.send(DbEvent::Frozen {
                db,
                result: Err(why),
            });
            return;
        }
    };
    let _ = ev.send(DbEvent::Frozen { db, result: Ok(()) });
    let mut all = Some(lock);
    let mut tx: Option<tdb::Transaction<'_>> = None;
    let mut buf: Option<Buffered> = None;
    let mut pushed: u32 = 0;
    let mut push_failed = false;
    for cmd in std::iter::from_fn(|| Some(rx.recv())) {
        let Ok(cmd) = cmd else {
            break;
        };
        match cmd {
            Cmd::Thaw => break,
            Cmd::Pull {
                tag,
                dest,
                srvid,
                limit,
                invalid,
            } => {
                let r = if invalid {
                    Ok(0)
                } else {
                    pull(tdb, db, dest, srvid, limit, ev)
                };
                send_reply(ev, tag, r.map(ControlReply::DbPull));
            }
            Cmd::Seqnum { tag } => {
                let r = read_seqnum(tdb).map_err(|e| e.to_string());
                send_reply(ev, tag, r.map(ControlReply::GetDbSeqnum));
            }
            Cmd::TxStart { tag } => {
                let r = if volatile {
                    buf = Some(Buffered::default());
                    Ok(())
                } else {
                    // Only this daemon writes persistent databases: the
                    // transaction's own locks replace the freeze's. A
                    // transaction still open ends here without effect.
                    log.cancel();
                    tx = None;
                    all = None;
                    if keyed {
                        epoch_before = crate::db::keyed_recovery::epoch(tdb);
                        if let Err(e) = &epoch_before {
                            error!("{name}: {e}: this recovery may only wipe the copy");
                        }
                    }
                    match tdb.transaction_start() {
                        Ok(t) => {
                            tx = Some(t);
                            log.start();
                            Ok(())
                        }
                        Err(e) => Err(format!("Failed to start transaction for db {name}: {e}")),
                    }
                };
                send_reply(ev, tag, r.map(|()| ControlReply::DbTransactionStart));
            }
            Cmd::TxCancel => {
                log.cancel();
                tx = None;
                buf = None;
            }
            Cmd::Wipe { tag } => {
                let r = if volatile {
                    match &mut buf {
                        Some(b) => {
                            b.wipe = true;
                            b.recs.clear();
                            Ok(())
                        }
                        None => Err("transaction not started".to_owned()),
                    }
                } else if tx.is_some() {
                    let r = tdb.wipe_all().map_err(|e| e.to_string());
                    log.wiped(r.is_ok());
                    r
                } else {
                    Err("transaction not started".to_owned())
                };
                if let Err(e) = &r {
                    error!("Failed to wipe database for db '{name}': {e}");
                }
                send_reply(ev, tag, r.map(|()| ControlReply::WipeDatabase));
            }
            Cmd::PushStart => {
                pushed = 0;
                push_failed = false;
            }
            Cmd::Push { data, info } => {
                if push_failed {
                    continue;
                }
                // CTDB ignores the buffer's database id (restoredb sends
                // whatever its backup file holds), and so do we.
                let r = match RecBuffer::pull(&data) {
                    Ok((rb, _)) => {
                        let n = rb.count();
                        let r = if volatile {
                            match &mut buf {
                                Some(b) => {
                                    b.recs.push(rb);
                                    Ok(())
                                }
                                None => store_volatile(tdb, &rb, &info),
                            }
                        } else {
                            log.store(tdb, &rb, store_plain)
                        };
                        r.map(|()| n)
                    }
                    Err(e) => Err(format!("bad pushed records: {e}")),
                };
                match r {
                    Ok(n) => pushed += n,
                    Err(e) => {
                        error!("{name}: push failed: {e}");
                        push_failed = true;
                    }
                }
            }
            Cmd::PushConfirm { tag } => {
                send_reply(ev, tag, Ok(ControlReply::DbPushConfirm(pushed)));
                pushed = 0;
            }
            Cmd::Commit { tag, tid, info } => {
                let result = if volatile {
                    match buf.take() {
                        Some(b) => apply_buffered(tdb, b, &info),
                        None => Err("transaction not started".to_owned()),
                    }
                } else {
                    match tx.take() {
                        Some(t) if keyed => {
                            match crate::db::keyed_recovery::check_recovered(
                                name,
                                &epoch_before,
                                tid,
                                tdb,
                            ) {
                                Ok(()) => t.commit().map_err(|e| e.to_string()),
                                Err(why) => {
                                    error!("{why}");
                                    log.cancel();
                                    drop(t);
                                    Err(why)
                                }
                            }
                        }
                        Some(t) => t.commit().map_err(|e| e.to_string()),
                        None => Err("transaction not started".to_owned()),
                    }
                };
                if result.is_ok() {
                    log.committed(tdb);
                } else {
                    // The transaction is over; what the file holds is
                    // computed again after the thaw (nothing to do if it
                    // was refused and cancelled above).
                    log.commit_failed();
                }
                let _ = ev.send(DbEvent::Committed {
                    db,
                    tid,
                    tag,
                    result,
                });
            }
        }
    }
    drop(tx);
    drop(all);
}

/// How long a pull waits for the puller to take a chunk before it gives
/// up.
const PULL_STALL: Duration = Duration::from_secs(60);

/// Chunks a pull has handed to the loop that are not written out yet.
#[derive(Clone, Default)]
struct InFlight(Arc<(Mutex<usize>, Condvar)>);

impl InFlight {
    fn add(&self) -> Sent {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Sent(self.clone())
    }

    /// Waits until fewer than `n` chunks are on their way; false after
    /// `limit` without progress.
    fn wait_below(&self, n: usize, limit: Duration) -> bool {
        let (m, cv) = &*self.0;
        let g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = cv
            .wait_timeout_while(g, limit, |k| *k >= n)
            .unwrap_or_else(|e| e.into_inner());
        *g < n
    }
}

/// One chunk of a pull on its way to the puller; dropped once it has been
/// written to the puller's connection (or dropped with it).
pub struct Sent(InFlight);

impl Drop for Sent {
    fn drop(&mut self) {
        let (m, cv) = &*self.0.0;
        let mut k = m.lock().unwrap_or_else(|e| e.into_inner());
        *k = k.saturating_sub(1);
        cv.notify_all();
    }
}

/// A chunk's packet: its bytes and, until they are written, its
/// [`Sent`].
struct ChunkPacket {
    buf: Vec<u8>,
    _sent: Sent,
}

impl AsRef<[u8]> for ChunkPacket {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Databases {
    /// A pull's chunk for `srvid` on node `dest`. To another node it goes
    /// as a packet that holds the chunk's [`Sent`] until the connection
    /// has written it, which is what lets the session make the next one;
    /// to this node it is delivered now.
    pub(crate) fn pull_chunk(
        &mut self,
        env: &Env,
        dest: u32,
        srvid: u64,
        data: Vec<u8>,
        sent: Sent,
    ) {
        if dest == env.pnn() || !env.node.valid_pnn(dest) {
            self.effect(crate::db::Effect::Message { dest, srvid, data });
            drop(sent);
            return;
        }
        let mut h = Header::new(Operation::ReqMessage, dest, env.pnn(), 0);
        h.generation = env.generation();
        let buf = Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data))).encode();
        let b = bytes::Bytes::from_owner(ChunkPacket { buf, _sent: sent });
        self.effect(crate::db::Effect::ToNode(dest, b));
    }
}

/// Streams every record (header included) to `srvid` on `dest` in chunks
/// of about `limit` bytes; returns the number of records. The next chunk
/// is made only while at most one is on its way to the puller, so the
/// daemon holds a few chunks at a time, not the database.
fn pull(
    tdb: &tdb::Tdb,
    db: u32,
    dest: u32,
    srvid: u64,
    limit: usize,
    ev: &mpsc::UnboundedSender<DbEvent>,
) -> Result<u32, String> {
    let mut rb = RecBuffer::new(db);
    let mut total = 0u32;
    let inflight = InFlight::default();
    let flush = |rb: &mut RecBuffer, total: &mut u32| -> Result<(), String> {
        if !inflight.wait_below(2, PULL_STALL) {
            return Err(format!(
                "the puller took no records for {} s",
                PULL_STALL.as_secs()
            ));
        }
        *total += rb.count();
        let mut data = vec![0u8; rb.len()];
        rb.push(&mut data);
        let sent = inflight.add();
        let _ = ev.send(DbEvent::Chunk {
            dest,
            srvid,
            data,
            sent,
        });
        rb.clear();
        Ok(())
    };
    let mut failed = None;
    tdb.traverse_read(|k, v| {
        rb.add(0, None, k, v);
        if rb.len() >= limit
            && let Err(e) = flush(&mut rb, &mut total)
        {
            failed = Some(e);
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    })
    .map_err(|e| format!("Failed to traverse db: {e}"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    if rb.count() > 0 {
        flush(&mut rb, &mut total)?;
    }
    Ok(total)
}

/// Pushed records of a persistent database, stored as they are (in the
/// recovery transaction when one runs).
fn store_plain(tdb: &tdb::Tdb, rb: &RecBuffer) -> Result<(), String> {
    for rec in rb.iter() {
        let (mut h, data) = rec.header().map_err(|e| format!("bad ltdb record: {e}"))?;
        strip_ro(&mut h);
        tdb.storev(
            rec.key,
            &[&ltdb::header_bytes(&h), data],
            tdb::StoreMode::Replace,
        )
        .map_err(|e| format!("Unable to store record: {e}"))?;
    }
    Ok(())
}

/// Pushed records of a volatile database, stored with CTDB's rules.
fn store_volatile(tdb: &tdb::Tdb, rb: &RecBuffer, info: &StoreInfo) -> Result<(), String> {
    for rec in rb.iter() {
        let (mut h, data) = rec.header().map_err(|e| format!("bad ltdb record: {e}"))?;
        strip_ro(&mut h);
        let ctx = ltdb::StoreCtx {
            pnn: info.pnn,
            lmaster: ltdb::lmaster(&info.vnnmap, rec.key),
            volatile: true,
        };
        let lock = tdb
            .lock_record(rec.key)
            .map_err(|e| format!("Unable to lock record: {e}"))?;
        ltdb::store(&ctx, &lock, &mut h, data)
            .map_err(|e| format!("Unable to store record: {e}"))?;
    }
    Ok(())
}

fn apply_buffered(tdb: &tdb::Tdb, b: Buffered, info: &StoreInfo) -> Result<(), String> {
    if b.wipe {
        tdb.wipe_all().map_err(|e| e.to_string())?;
    }
    for rb in &b.recs {
        store_volatile(tdb, rb, info)?;
    }
    Ok(())
}
