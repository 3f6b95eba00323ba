//! Global locks (g_lock): cluster-wide named locks kept as records of the
//! volatile database `g_lock.tdb`, in the format CTDB's client library uses
//! (a record per lock name, holding the list of [`GLock`] holders).
//!
//! The lock record holds the lock's *holders* only, so that CTDB's own
//! clients (`ctdb ptrans`, `pfetch`, ...), which treat every entry of it
//! as a holder and retry until none conflicts, share the lock with ours.
//! CTDB's format has no room for anything else (an entry's type is read
//! or write; any other value makes CTDB's client fail). Samba's own
//! g_lock (source3/lib/g_lock.c) likewise keeps its waiters out of the
//! lock data, as watchers of the record.
//!
//! Our waiters queue in a record of their own ([`queue_key`]), which
//! CTDB's clients never read: a client appends itself there and waits its
//! turn, instead of retrying until it happens to find the lock free
//! (which lets a client that just released win again and leaves others
//! waiting for seconds). A queue entry's turn has come when every entry
//! before it is compatible with it (both read locks); it then takes the
//! lock record as CTDB's client does (if a conflicting holder is there,
//! one of CTDB's clients, it looks again after a short, growing delay).
//!
//! A waiter listens on a srvid of its own (see [`wake_srvid`]); releasing
//! the lock takes the holder out of the lock record, then out of the
//! queue, and sends an empty message there to every queue entry whose
//! turn has come, so a waiter's turn starts as soon as the lock is free.
//! A waiter also looks again after a short, growing delay, for a lost
//! message.
//!
//! A conflicting entry ahead of us (in the queue or in the lock record)
//! whose process no longer exists (checked with `PROCESS_EXISTS` on its
//! node) is removed. So a client that dies holding or waiting for a
//! g_lock loses its place to the next.
//!
//! # Records that go back in time
//!
//! `g_lock.tdb` is volatile: when the node holding the newest copy of a
//! record dies, the recovery keeps the newest copy left on the others,
//! which may list entries of processes that are *alive* but have moved on
//! since (released the lock, or queued again). `PROCESS_EXISTS` cannot
//! tell such an entry from a real one, and a waiter behind it would wait
//! for good; worse, two processes can wait for each other (one whose turn
//! has come finds the other's stale entry in the lock record, while the
//! other queues behind it).
//!
//! So every lock attempt of ours is an entry of its own: [`lock`] puts
//! the caller's [`ServerId`] in the records with a `unique_id` drawn for
//! this attempt alone (this process's salt in the high half, a counter in
//! the low half; CTDB's clients compare the whole id only with their own
//! and check conflicting entries by pid alone, so they are not affected),
//! and this process remembers which attempts are under way or held (from
//! [`lock`] until [`unlock`], or until the attempt is abandoned). An
//! attempt's id is never used again, so once this process no longer knows
//! an entry of its own as under way, that entry can never become real
//! again, whatever record it turns up in: removing it cannot take the lock
//! from anyone. That gives two rules:
//!
//! - An entry of this very process (same pid, same node, our salt) that
//!   is not one of its attempts under way is removed at once, wherever a
//!   look finds it.
//! - A waiter that has been kept behind an entry of a live process for a
//!   while asks that process: a message to its [`probe_srvid`] on its
//!   node, which our client library answers (every connection that has
//!   taken a g_lock serves it) with whether that exact entry is one of its
//!   attempts under way for that lock. Only the answer "not under way" for
//!   an entry bearing that process's salt lets the waiter remove it; no
//!   answer (one of CTDB's clients, a busy or unreachable process, a lost
//!   message) or "under way" means waiting on, asking again later, less
//!   and less often. The answer comes back on the waiter's wake srvid.
//!
//! What stays: an entry of one of CTDB's clients (or of ours taken with
//! [`lock_ctdb_style`]) that went stale this way blocks until its process
//! exits, as it would with CTDB's own client library. And a reverted
//! record can also *lose* a holder's entry: then a waiter may take the
//! lock while that holder still works under it, which no client-side rule
//! can see (CTDB's g_lock has the same exposure).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ctdb_protocol::ControlRequest;
use ctdb_protocol::Marshal;
use ctdb_protocol::ReqControl;
use ctdb_protocol::types::{GLock, GLockList, GLockType, ServerId};

use super::{Db, Update};
use crate::DbKind;
use crate::connection::Client;
use crate::error::{ClientError, Result};

/// The database global locks live in.
pub const G_LOCK_DB: &str = "g_lock.tdb";

/// What one look at the lock record found.
enum Look {
    Acquired,
    /// Queued behind this conflicting entry.
    Waiting(ServerId),
}

/// Longest wait between two looks at the queue while queued.
const MAX_RECHECK: Duration = Duration::from_millis(100);

/// Longest wait between two looks at the lock record while a holder that
/// wakes nobody (one of CTDB's clients) has it.
const MAX_RETRY: Duration = Duration::from_millis(8);

/// How long a waiter is kept behind the same live entry before it asks
/// that entry's process whether the entry is real, and the first wait
/// before asking again (it doubles, up to [`PROBE_MAX`]).
const PROBE_AFTER: Duration = Duration::from_millis(250);

/// Longest wait between two questions about the same entry.
const PROBE_MAX: Duration = Duration::from_secs(4);

/// The srvid a queued waiter is woken on (and gets the answers to its
/// probes on): a tag, then the low 16 bits of its entry's attempt number
/// (the low half of the entry's `unique_id`, new for every [`lock`]) and
/// its pid. Two attempts of one process under way at once (two tasks
/// with the same task id, e.g. keyed transactions on different keys of
/// one database) each have their own: with one srvid for both, the
/// second registration would take the first's messages, and the first
/// would never hear the answer to a probe. (A collision with another
/// process's srvid only causes a spurious look.)
pub fn wake_srvid(sid: ServerId) -> u64 {
    0xC7DB_u64 << 48 | (sid.unique_id & 0xFFFF) << 32 | (sid.pid & 0xFFFF_FFFF)
}

/// The srvid on which the process `pid` answers whether an entry of its
/// own is one of its lock attempts under way (see the module's doc).
pub fn probe_srvid(pid: u64) -> u64 {
    0xC7DC_u64 << 48 | (pid & 0xFFFF_FFFF)
}

/// Whether the entry at `i` holds the lock: every entry before it is
/// compatible with it.
fn holds(list: &GLockList, i: usize) -> bool {
    let kind = list.locks[i].kind;
    list.locks[..i].iter().all(|l| !conflicts(l.kind, kind))
}

/// Looks at the list for `me`, appending `me` if it is not there (on the
/// first look, or if our entry was lost). Returns whether the list
/// changed, and whether `me` holds the lock or which entry it waits behind.
fn look(list: &mut GLockList, me: ServerId, kind: GLockType) -> (bool, Look) {
    let (pos, pushed) = match list.locks.iter().position(|l| l.sid == me) {
        Some(p) => (p, false),
        None => {
            list.locks.push(GLock { kind, sid: me });
            (list.locks.len() - 1, true)
        }
    };
    let ahead = list.locks[..pos]
        .iter()
        .find(|l| conflicts(l.kind, kind))
        .map(|l| l.sid);
    (
        pushed,
        match ahead {
            None => Look::Acquired,
            Some(h) => Look::Waiting(h),
        },
    )
}

fn conflicts(a: GLockType, b: GLockType) -> bool {
    !(a == GLockType::Read && b == GLockType::Read)
}

fn parse(data: &[u8]) -> Result<GLockList> {
    Ok(GLockList::pull(data)?.0)
}

/// Identity of this process's lock holder for `task_id` on node `pnn`, as
/// CTDB builds it. ([`lock`] puts it in the records with a `unique_id` of
/// the attempt's own.)
pub fn server_id(pnn: u32, task_id: u32) -> ServerId {
    let pid = std::process::id() as u64;
    ServerId {
        pid,
        task_id,
        vnn: pnn,
        unique_id: ((task_id as u64) << 32) | pid,
    }
}

// ---------------------------------------------------------------------
// This process's lock attempts.

/// One attempt of [`lock`], from its start until [`unlock`] (or until it
/// is abandoned).
struct Attempt {
    /// The caller's id, as given to [`lock`] and [`unlock`].
    caller: ServerId,
    /// The id the attempt's entries bear.
    entry: ServerId,
    name: Vec<u8>,
}

static ATTEMPTS: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());
static NEXT_ATTEMPT: AtomicU32 = AtomicU32::new(1);

fn attempts() -> MutexGuard<'static, Vec<Attempt>> {
    ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The high half of the `unique_id` of this process's attempts: drawn
/// once per process, so that an entry left by an earlier process with
/// the same pid is not taken for one of ours.
fn salt() -> u32 {
    static SALT: OnceLock<u32> = OnceLock::new();
    *SALT.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let x = t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 17);
        // A 64-bit mix; never 0, and different from the pid-based value
        // CTDB's ids have there only by chance.
        let x = (x ^ (x >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((x >> 32) as u32) | 1
    })
}

/// A `unique_id` nobody in this process had before.
fn fresh_unique() -> u64 {
    u64::from(salt()) << 32 | u64::from(NEXT_ATTEMPT.fetch_add(1, Ordering::Relaxed))
}

/// Starts an attempt of `caller` on `name`: the id its entries bear. A
/// caller that already holds or waits for `name` is refused.
fn begin(caller: ServerId, name: &[u8]) -> Result<ServerId> {
    let mut a = attempts();
    if a.iter().any(|x| x.caller == caller && x.name == name) {
        return Err(ClientError::Other(
            "g_lock already held by this holder".into(),
        ));
    }
    let entry = ServerId {
        unique_id: fresh_unique(),
        ..caller
    };
    a.push(Attempt {
        caller,
        entry,
        name: name.to_vec(),
    });
    Ok(entry)
}

/// Ends the attempt whose entries bear `entry`.
fn end(entry: ServerId) {
    attempts().retain(|x| x.entry != entry);
}

/// The id of `caller`'s attempt on `name`, if one is under way or held.
fn entry_of(caller: ServerId, name: &[u8]) -> Option<ServerId> {
    attempts()
        .iter()
        .find(|x| x.caller == caller && x.name == name)
        .map(|x| x.entry)
}

/// Whether `sid` is an entry this process made and no longer stands
/// behind: its salt, yet no attempt under way on `name` bears it.
fn own_and_stale(sid: ServerId, name: &[u8]) -> bool {
    sid.pid == u64::from(std::process::id())
        && (sid.unique_id >> 32) as u32 == salt()
        && !attempts().iter().any(|x| x.entry == sid && x.name == name)
}

// ---------------------------------------------------------------------
// Asking a process whether an entry of its own is real.

/// Tags an answer (a wake message is empty).
const ANSWER_MAGIC: u32 = 0x474C_5052;

/// A question to the process of `entry`: is that entry one of your
/// attempts under way on `name`? Answer to `reply_srvid` on
/// `reply_vnn`, quoting `nonce`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    reply_vnn: u32,
    reply_srvid: u64,
    nonce: u64,
    entry: ServerId,
    name: Vec<u8>,
}

impl Probe {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(44 + self.name.len());
        v.extend_from_slice(&self.reply_vnn.to_le_bytes());
        v.extend_from_slice(&self.reply_srvid.to_le_bytes());
        v.extend_from_slice(&self.nonce.to_le_bytes());
        v.extend_from_slice(&self.entry.pid.to_le_bytes());
        v.extend_from_slice(&self.entry.task_id.to_le_bytes());
        v.extend_from_slice(&self.entry.vnn.to_le_bytes());
        v.extend_from_slice(&self.entry.unique_id.to_le_bytes());
        v.extend_from_slice(&self.name);
        v
    }

    fn decode(d: &[u8]) -> Option<Probe> {
        let u32_at = |o: usize| Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?));
        Some(Probe {
            reply_vnn: u32_at(0)?,
            reply_srvid: u64_at(4)?,
            nonce: u64_at(12)?,
            entry: ServerId {
                pid: u64_at(20)?,
                task_id: u32_at(28)?,
                vnn: u32_at(32)?,
                unique_id: u64_at(36)?,
            },
            name: d.get(44..)?.to_vec(),
        })
    }

    /// This process's answer: `true` when the entry may be real. Only an
    /// entry it made itself and no longer stands behind is not.
    fn answer(&self) -> bool {
        !own_and_stale(self.entry, &self.name)
    }
}

fn encode_answer(nonce: u64, live: bool) -> Vec<u8> {
    let mut v = ANSWER_MAGIC.to_le_bytes().to_vec();
    v.extend_from_slice(&nonce.to_le_bytes());
    v.push(live as u8);
    v
}

fn decode_answer(d: &[u8]) -> Option<(u64, bool)> {
    if d.len() != 13 || d[..4] != ANSWER_MAGIC.to_le_bytes() {
        return None;
    }
    Some((u64::from_le_bytes(d[4..12].try_into().ok()?), d[12] != 0))
}

/// Makes `client`'s connection answer questions about this process's
/// entries (once per connection; a failure only means that others cannot
/// clear our stale entries through it).
async fn serve_probes(client: &Client) {
    let srvid = probe_srvid(u64::from(std::process::id()));
    if client.handles_srvid(srvid) {
        return;
    }
    match client.register_srvid(srvid).await {
        Ok(mut rx) => {
            // Not a handle that keeps the connection's last drop from
            // flushing its backlog.
            let c = client.background();
            tokio::spawn(async move {
                // Ends with the connection.
                while let Some(m) = rx.recv().await {
                    if let Some(p) = Probe::decode(&m.data) {
                        let _ = c.send_message(
                            p.reply_vnn,
                            p.reply_srvid,
                            &encode_answer(p.nonce, p.answer()),
                        );
                    }
                }
            });
        }
        Err(e) => tracing::debug!("cannot serve g_lock entry questions: {e}"),
    }
}

/// A waiter's watch over the live entry it is kept behind.
#[derive(Default)]
struct Suspect {
    sid: Option<ServerId>,
    /// When to ask next, and the wait after that.
    next: Option<Instant>,
    every: Duration,
    /// The question waiting for its answer.
    nonce: Option<u64>,
    /// Its process said the entry is not real.
    stale: bool,
}

impl Suspect {
    /// Whether `who`'s entry was found stale; otherwise asks its process
    /// when the time has come (`me` hears the answer).
    fn check(&mut self, client: &Client, who: ServerId, me: ServerId, name: &[u8]) -> bool {
        let now = Instant::now();
        if self.sid != Some(who) {
            *self = Suspect {
                sid: Some(who),
                next: Some(now + PROBE_AFTER),
                every: PROBE_AFTER,
                nonce: None,
                stale: false,
            };
        }
        if self.stale {
            return true;
        }
        if self.next.is_some_and(|t| now >= t) {
            let nonce = fresh_unique();
            let p = Probe {
                reply_vnn: me.vnn,
                reply_srvid: wake_srvid(me),
                nonce,
                entry: who,
                name: name.to_vec(),
            };
            if client
                .send_message(who.vnn, probe_srvid(who.pid), &p.encode())
                .is_ok()
            {
                self.nonce = Some(nonce);
            }
            self.every = (self.every * 2).min(PROBE_MAX);
            self.next = Some(now + self.every);
        }
        false
    }

    fn answered(&mut self, nonce: u64, live: bool) {
        if self.nonce == Some(nonce) {
            self.nonce = None;
            self.stale = !live;
        }
    }
}

/// Whether the entry `who` in our way must go: its process is gone, or
/// said the entry is not real.
async fn in_the_way_is_stale(
    glock: &Db,
    suspect: &mut Suspect,
    who: ServerId,
    me: ServerId,
    name: &[u8],
    can_ask: bool,
) -> bool {
    if !exists(glock, who).await {
        tracing::info!(
            "removing g_lock entry of dead pid {} on node {}",
            who.pid,
            who.vnn
        );
        return true;
    }
    if own_and_stale(who, name) {
        return true;
    }
    if !can_ask {
        return false;
    }
    if suspect.check(glock.client(), who, me, name) {
        tracing::info!(
            "removing stale g_lock entry of live pid {} on node {} (it no longer waits for or holds the lock)",
            who.pid,
            who.vnn
        );
        *suspect = Suspect::default();
        return true;
    }
    false
}

// ---------------------------------------------------------------------

impl Client {
    /// Attaches `g_lock.tdb`.
    pub async fn g_lock_db(&self) -> Result<Db> {
        self.attach(G_LOCK_DB, DbKind::Volatile, 0).await
    }
}

/// The key of the record where our clients queue for the lock `name`
/// (in `g_lock.tdb`, beside the lock record itself).
pub fn queue_key(name: &[u8]) -> Vec<u8> {
    let mut k = b"ctdb-rs/g_lock-queue/".to_vec();
    k.extend_from_slice(name);
    k
}

/// What a look at a lock record in CTDB's way found.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// `me` is in the list now (it was added).
    Taken,
    /// `me` was in the list already.
    Held,
    /// The entry at this index conflicts.
    Conflict(usize, ServerId),
}

/// CTDB's client's step on a lock record: the first conflicting entry, or
/// `me` appended. Returns whether the list changed, and what was found.
fn take(list: &mut GLockList, me: ServerId, kind: GLockType) -> Take {
    for (i, l) in list.locks.iter().enumerate() {
        if l.sid == me {
            return Take::Held;
        }
        if conflicts(l.kind, kind) {
            return Take::Conflict(i, l.sid);
        }
    }
    list.locks.push(GLock { kind, sid: me });
    Take::Taken
}

/// Takes out of the queue `list` every entry for which `stale` holds;
/// returns the entries that hold the lock now but did not before.
fn purge_queue(list: &mut GLockList, stale: impl Fn(&ServerId) -> bool) -> Vec<ServerId> {
    let mut woken: Vec<ServerId> = Vec::new();
    while let Some(s) = list.locks.iter().map(|l| l.sid).find(|s| stale(s)) {
        woken.retain(|w| *w != s);
        woken.extend(take_out(list, s));
    }
    woken
}

/// Takes out of the lock record `list` every entry for which `stale`
/// holds, as CTDB's client removes an entry (the last one takes its
/// place); returns whether any went.
fn purge_holders(list: &mut GLockList, stale: impl Fn(&ServerId) -> bool) -> bool {
    let mut changed = false;
    while let Some(i) = list.locks.iter().position(|l| stale(&l.sid)) {
        list.locks.swap_remove(i);
        changed = true;
    }
    changed
}

/// Whether `who`'s process exists (an unreachable node's is presumed to:
/// recovery deals with that node, not us).
async fn exists(glock: &Db, who: ServerId) -> bool {
    glock
        .client()
        .control_raw(
            who.vnn,
            ReqControl::new(ControlRequest::ProcessExists(who.pid as i32)),
        )
        .await
        .map(|r| r.status == 0)
        .unwrap_or(true)
}

/// Stores `list` as record `key`'s new value (deleting the record when
/// nobody is left: [`Update::Delete`] tells the daemon one-way, so a
/// release that empties its lock and queue records does not wait for two
/// `SCHEDULE_FOR_DELETION` answers; the connection writes a hint still
/// queued when its last handle is dropped, see [`crate::connection`]).
fn stored(list: &GLockList) -> Update {
    if list.locks.is_empty() {
        Update::Delete
    } else {
        Update::Store(list.to_bytes())
    }
}

/// Sends an (empty) wake message to each of `sids`.
fn wake_all(client: &Client, sids: &[ServerId]) {
    for sid in sids {
        // A waiter that has gone is found by the next one's look.
        let _ = client.send_message(sid.vnn, wake_srvid(*sid), &[]);
    }
}

/// Takes the lock `name` for `me`, queueing behind conflicting entries.
///
/// If the future is dropped while queued, the entry is removed in the
/// background (a runtime is there, since the future was being polled).
pub async fn lock(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
    let entry = begin(me, name)?;
    let mut queued = Queued {
        glock,
        name,
        entry,
        // From the start: the future may be dropped after our entry was
        // stored but before the look returned.
        armed: true,
    };
    serve_probes(glock.client()).await;
    let qkey = queue_key(name);
    let mut wake: Option<tokio::sync::mpsc::UnboundedReceiver<crate::Message>> = None;
    let mut delay = Duration::from_millis(1);
    // Set once our turn in the queue has come (it stays ours).
    let mut our_turn = false;
    let mut suspect = Suspect::default();
    let result = loop {
        // A record this node is data master of is read from the local
        // file without the daemon, so a lost daemon shows only here: stop
        // instead of waiting on (and holding the file of) a daemon that
        // is gone.
        if glock.client().is_closed() {
            break Err(ClientError::Disconnected);
        }
        if !our_turn {
            let r = glock
                .fetch_lock(&qkey, |rec| {
                    let mut list = match parse(&rec.data) {
                        Ok(l) => l,
                        Err(e) => return (Update::Keep, Err(e)),
                    };
                    let woken = purge_queue(&mut list, |s| own_and_stale(*s, name));
                    let (pushed, l) = look(&mut list, entry, kind);
                    let update = if pushed || !woken.is_empty() {
                        stored(&list)
                    } else {
                        Update::Keep
                    };
                    (update, Ok((l, woken)))
                })
                .await;
            let look = match r {
                Ok(Ok((l, woken))) => {
                    wake_all(glock.client(), &woken);
                    l
                }
                Ok(Err(e)) | Err(e) => break Err(e),
            };
            match look {
                Look::Acquired => {
                    our_turn = true;
                    delay = Duration::from_millis(1);
                }
                Look::Waiting(ahead) => {
                    let can_ask = wake.is_some();
                    if in_the_way_is_stale(glock, &mut suspect, ahead, entry, name, can_ask).await {
                        match remove(glock, &qkey, ahead).await {
                            Ok(woken) => wake_all(glock.client(), &woken),
                            Err(e) => break Err(e),
                        }
                        continue;
                    }
                }
            }
        }
        if our_turn {
            // Our turn: take the lock record as CTDB's clients do.
            let r = glock
                .fetch_lock(name, |rec| {
                    let mut list = match parse(&rec.data) {
                        Ok(l) => l,
                        Err(e) => return (Update::Keep, Err(e)),
                    };
                    let purged = purge_holders(&mut list, |s| own_and_stale(*s, name));
                    match take(&mut list, entry, kind) {
                        Take::Taken => (Update::Store(list.to_bytes()), Ok(Take::Taken)),
                        t if purged => (stored(&list), Ok(t)),
                        t => (Update::Keep, Ok(t)),
                    }
                })
                .await;
            match r {
                Ok(Ok(Take::Taken | Take::Held)) => break Ok(()),
                Ok(Ok(Take::Conflict(at, holder))) => {
                    // A holder that is not in our queue: one of CTDB's
                    // clients (or one that died, or a stale entry).
                    let can_ask = wake.is_some();
                    if in_the_way_is_stale(glock, &mut suspect, holder, entry, name, can_ask).await
                    {
                        if let Err(e) = remove_at(glock, name, at, holder).await {
                            break Err(e);
                        }
                        continue;
                    }
                }
                Ok(Err(e)) | Err(e) => break Err(e),
            }
        }
        match wake.as_mut() {
            // Listen first, then look again: a release between our look
            // and the registration is not missed.
            None => match glock.client().register_srvid(wake_srvid(entry)).await {
                Ok(rx) => wake = Some(rx),
                Err(e) => break Err(e),
            },
            Some(rx) => {
                // Waiting behind a holder of CTDB's, which wakes nobody,
                // looks again sooner.
                let most = if our_turn { MAX_RETRY } else { MAX_RECHECK };
                match tokio::time::timeout(delay, rx.recv()).await {
                    Err(_) => delay = (delay * 2).min(most),
                    Ok(Some(m)) => {
                        if let Some((nonce, live)) = decode_answer(&m.data) {
                            suspect.answered(nonce, live);
                        }
                    }
                    // Our wake srvid was taken over (another attempt of
                    // this process with the same srvid) or the connection
                    // ended: look again after the delay.
                    Ok(None) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(most);
                    }
                }
            }
        }
    };
    if wake.is_some() {
        let _ = glock.client().deregister_srvid(wake_srvid(entry)).await;
    }
    match result {
        Ok(()) => {
            queued.armed = false;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Ends the attempt and removes its entries if [`lock`] is abandoned
/// (dropped, or failed).
struct Queued<'a> {
    glock: &'a Db,
    name: &'a [u8],
    entry: ServerId,
    armed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // At once: the caller may try again right away, and from now on
        // our entries are stale to anyone who asks.
        end(self.entry);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let glock = self.glock.clone();
            let name = self.name.to_vec();
            let entry = self.entry;
            rt.spawn(async move {
                let _ = release(&glock, &name, entry).await;
            });
        }
    }
}

/// Releases the lock `name` held by `me` (or gives up `me`'s place in the
/// queue), and wakes the queue entries whose turn has come.
pub async fn unlock(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    // Once the holder lets go its entries are stale to anyone who asks,
    // also if what follows fails or is abandoned.
    let entry = entry_of(me, name).unwrap_or(me);
    end(entry);
    release(glock, name, entry).await
}

/// Takes `entry` out of the lock record, then out of the queue, and wakes
/// the queue entries whose turn has come.
async fn release(glock: &Db, name: &[u8], entry: ServerId) -> Result<()> {
    // The lock record first: whoever is woken finds the lock free.
    remove(glock, name, entry).await?;
    let now_holding = remove(glock, &queue_key(name), entry).await?;
    wake_all(glock.client(), &now_holding);
    Ok(())
}

/// Takes `who` out of the list; returns the entries that hold the lock
/// now but did not before.
fn take_out(list: &mut GLockList, who: ServerId) -> Vec<ServerId> {
    let Some(pos) = list.locks.iter().position(|l| l.sid == who) else {
        return Vec::new();
    };
    let before: Vec<bool> = (0..list.locks.len()).map(|i| holds(list, i)).collect();
    list.locks.remove(pos);
    (pos..list.locks.len())
        .filter(|&i| !before[i + 1] && holds(list, i))
        .map(|i| list.locks[i].sid)
        .collect()
}

/// Removes `who` from the list in record `key` (deleting the record when
/// nobody is left); returns the entries that hold the lock now but did
/// not before.
async fn remove(glock: &Db, key: &[u8], who: ServerId) -> Result<Vec<ServerId>> {
    glock
        .fetch_lock(key, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            if !list.locks.iter().any(|l| l.sid == who) {
                return (Update::Keep, Ok(Vec::new()));
            }
            let woken = take_out(&mut list, who);
            (stored(&list), Ok(woken))
        })
        .await?
}

/// Removes the (dead or stale) entry `who` of record `key`, if it is
/// still there, as CTDB's client does (the last entry takes its place).
/// `at` is where it was seen; it is looked for elsewhere if it moved.
async fn remove_at(glock: &Db, key: &[u8], at: usize, who: ServerId) -> Result<()> {
    glock
        .fetch_lock(key, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            let pos = if list.locks.get(at).is_some_and(|l| l.sid == who) {
                Some(at)
            } else {
                list.locks.iter().position(|l| l.sid == who)
            };
            match pos {
                Some(i) => {
                    list.locks.swap_remove(i);
                    (stored(&list), Ok(()))
                }
                None => (Update::Keep, Ok(())),
            }
        })
        .await?
}

/// Takes the lock `name` for `me` exactly as CTDB's own client library
/// (`ctdb_g_lock_lock` in 4.17) does, for comparisons with clients that
/// use it: lock the record; for the first conflicting entry ask whether
/// its process exists, *with the record still locked*; if it does, let
/// the record go, wait a millisecond and start again; if not, remove that
/// entry (the last entry takes its place) and go on; with no conflict
/// left, append `me`, store and let go.
pub async fn lock_ctdb_style(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
    loop {
        let mut h = glock.fetch_lock_handle(name).await?;
        let mut list = parse(&h.data)?;
        loop {
            match take(&mut list, me, kind) {
                Take::Held => {
                    return Err(ClientError::Other("g_lock_lock: deadlock".into()));
                }
                Take::Taken => {
                    h.store(&list.to_bytes())?;
                    return Ok(());
                }
                Take::Conflict(at, holder) => {
                    let exists = glock
                        .client()
                        .control_raw(
                            holder.vnn,
                            ReqControl::new(ControlRequest::ProcessExists(holder.pid as i32)),
                        )
                        .await?
                        .status
                        == 0;
                    if exists {
                        break;
                    }
                    // Gone: its entry goes (the last one takes its place).
                    list.locks.swap_remove(at);
                    h.store(&list.to_bytes())?;
                }
            }
        }
        drop(h);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Releases a lock taken with [`lock_ctdb_style`] as CTDB's client library
/// does: remove our entry (the last entry takes its place) and store the
/// rest; once nobody is left, delete the record, keeping it locked until
/// the daemon has answered the `SCHEDULE_FOR_DELETION`. Nobody is woken.
pub async fn unlock_ctdb_style(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    let mut h = glock.fetch_lock_handle(name).await?;
    let mut list = parse(&h.data)?;
    if let Some(i) = list.locks.iter().position(|l| l.sid == me) {
        list.locks.swap_remove(i);
    }
    if list.locks.is_empty() {
        h.delete().await
    } else {
        h.store(&list.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(pid: u64) -> ServerId {
        ServerId {
            pid,
            task_id: 7,
            vnn: 0,
            unique_id: pid,
        }
    }

    fn pids(v: &[ServerId]) -> Vec<u64> {
        v.iter().map(|s| s.pid).collect()
    }

    #[test]
    fn waiters_queue_in_arrival_order_and_are_woken_one_by_one() {
        let mut list = GLockList::default();
        let (changed, l) = look(&mut list, sid(1), GLockType::Write);
        assert!(changed && matches!(l, Look::Acquired));
        for p in [2, 3] {
            let (changed, l) = look(&mut list, sid(p), GLockType::Write);
            assert!(changed);
            assert!(matches!(l, Look::Waiting(h) if h.pid == 1));
        }
        // A later look changes nothing and still waits.
        let (changed, l) = look(&mut list, sid(3), GLockType::Write);
        assert!(!changed && matches!(l, Look::Waiting(h) if h.pid == 1));
        // The holder leaves: only the next in line is woken, and holds.
        assert_eq!(pids(&take_out(&mut list, sid(1))), [2]);
        assert!(matches!(
            look(&mut list, sid(2), GLockType::Write).1,
            Look::Acquired
        ));
        assert!(
            matches!(look(&mut list, sid(3), GLockType::Write).1, Look::Waiting(h) if h.pid == 2)
        );
        // A waiter giving up its place wakes nobody.
        list.locks.push(GLock {
            kind: GLockType::Write,
            sid: sid(4),
        });
        assert!(take_out(&mut list, sid(3)).is_empty());
        assert_eq!(pids(&take_out(&mut list, sid(2))), [4]);
        assert!(take_out(&mut list, sid(9)).is_empty());
    }

    #[test]
    fn readers_share_and_a_writer_wakes_every_reader_behind_it() {
        let mut list = GLockList::default();
        look(&mut list, sid(1), GLockType::Read);
        assert!(matches!(
            look(&mut list, sid(2), GLockType::Read).1,
            Look::Acquired
        ));
        assert!(
            matches!(look(&mut list, sid(3), GLockType::Write).1, Look::Waiting(h) if h.pid == 1)
        );
        // A reader behind a queued writer waits for it.
        assert!(
            matches!(look(&mut list, sid(4), GLockType::Read).1, Look::Waiting(h) if h.pid == 3)
        );
        list.locks.push(GLock {
            kind: GLockType::Read,
            sid: sid(5),
        });
        assert!(take_out(&mut list, sid(1)).is_empty());
        assert_eq!(pids(&take_out(&mut list, sid(2))), [3]);
        assert_eq!(pids(&take_out(&mut list, sid(3))), [4, 5]);
    }

    #[test]
    fn a_second_lock_by_the_same_holder_is_refused() {
        // Told by this process's attempts, not by the records (which may
        // hold a stale entry of the caller's).
        let caller = ServerId {
            task_id: 0xA11CE,
            ..server_id(0, 0xA11CE)
        };
        let e = begin(caller, b"twice\0").unwrap();
        assert!(begin(caller, b"twice\0").is_err());
        // Another lock, or another holder, is another attempt.
        let other = begin(caller, b"other\0").unwrap();
        assert_ne!(e, other);
        assert_eq!(entry_of(caller, b"twice\0"), Some(e));
        end(e);
        end(other);
        let again = begin(caller, b"twice\0").unwrap();
        assert_ne!(again, e, "an attempt's id is never used again");
        end(again);
        assert_eq!(entry_of(caller, b"twice\0"), None);
    }

    #[test]
    fn a_lost_entry_is_appended_again() {
        let mut list = GLockList::default();
        let (changed, l) = look(&mut list, sid(1), GLockType::Write);
        assert!(changed && matches!(l, Look::Acquired));
    }

    #[test]
    fn the_lock_record_holds_holders_only_and_waiters_queue_elsewhere() {
        // What CTDB's client does on the lock record: a reader joins
        // readers, a writer finds the first conflicting holder.
        let mut list = GLockList::default();
        assert_eq!(take(&mut list, sid(1), GLockType::Read), Take::Taken);
        assert_eq!(take(&mut list, sid(2), GLockType::Read), Take::Taken);
        assert_eq!(
            take(&mut list, sid(3), GLockType::Write),
            Take::Conflict(0, sid(1))
        );
        assert_eq!(list.locks.len(), 2, "a conflicting writer adds nothing");
        assert_eq!(take(&mut list, sid(2), GLockType::Read), Take::Held);
        // Our waiters' queue is another record, never read by CTDB's
        // clients; its key differs from the lock's.
        let q = queue_key(b"transaction_db_0x12345678\0");
        assert_ne!(q.as_slice(), b"transaction_db_0x12345678\0");
        assert!(q.ends_with(b"transaction_db_0x12345678\0"));
    }

    #[test]
    fn wake_srvids_differ_by_pid_and_attempt() {
        let a = sid(100);
        assert_ne!(wake_srvid(a), wake_srvid(sid(101)));
        assert_eq!(wake_srvid(a) >> 48, 0xC7DB);
        // Two attempts of one caller (same pid and task id) at once.
        let caller = ServerId {
            pid: 100,
            task_id: 7,
            vnn: 0,
            unique_id: 0,
        };
        let one = begin(caller, b"wake-a").unwrap();
        let two = begin(caller, b"wake-b").unwrap();
        assert_ne!(wake_srvid(one), wake_srvid(two));
        end(one);
        end(two);
    }

    /// An entry this process made for `name` under an attempt that has
    /// ended (the id it bore), as a reverted record may bring back.
    fn ended_attempt(task: u32, name: &[u8]) -> ServerId {
        let e = begin(server_id(0, task), name).unwrap();
        end(e);
        e
    }

    #[test]
    fn own_entries_of_ended_attempts_are_stale_and_nothing_else_is() {
        let name = b"own_stale\0";
        let gone = ended_attempt(0x5A1, name);
        assert!(own_and_stale(gone, name));
        let live = begin(server_id(0, 0x5A2), name).unwrap();
        assert!(!own_and_stale(live, name));
        // The live attempt's entry in another lock's record is not real.
        assert!(own_and_stale(live, b"elsewhere\0"));
        // CTDB's ids (ours taken in CTDB's way too) and other processes'
        // entries are never judged here.
        assert!(!own_and_stale(server_id(0, 0x5A1), name));
        assert!(!own_and_stale(sid(1), name));
        let other_process = ServerId {
            pid: gone.pid + 1,
            ..gone
        };
        assert!(!own_and_stale(other_process, name));
        let earlier_process = ServerId {
            unique_id: gone.unique_id ^ (1 << 40),
            ..gone
        };
        assert!(!own_and_stale(earlier_process, name));
        end(live);
    }

    #[test]
    fn a_reverted_queue_loses_the_stale_entries_and_wakes_who_is_next() {
        // The queue as it was when the stale entry held the lock, with a
        // reader and a writer of other processes behind it.
        let stale = sid(1);
        let mut list = GLockList::default();
        for (s, k) in [
            (stale, GLockType::Write),
            (sid(2), GLockType::Read),
            (sid(3), GLockType::Read),
            (sid(4), GLockType::Write),
        ] {
            list.locks.push(GLock { kind: k, sid: s });
        }
        let woken = purge_queue(&mut list, |s| *s == stale);
        assert_eq!(pids(&woken), [2, 3]);
        assert_eq!(
            pids(&list.locks.iter().map(|l| l.sid).collect::<Vec<_>>()),
            [2, 3, 4]
        );
        // Nothing stale: nothing changes.
        assert!(purge_queue(&mut list, |_| false).is_empty());
        assert_eq!(list.locks.len(), 3);
        // Stale entries behind the holder wake nobody; the order stays.
        let woken = purge_queue(&mut list, |s| s.pid == 3);
        assert!(woken.is_empty());
        assert_eq!(
            pids(&list.locks.iter().map(|l| l.sid).collect::<Vec<_>>()),
            [2, 4]
        );
        // A woken entry that is itself stale is not reported.
        let woken = purge_queue(&mut list, |s| s.pid == 2 || s.pid == 4);
        assert!(woken.is_empty() && list.locks.is_empty());
    }

    #[test]
    fn a_stale_holder_leaves_the_lock_record_as_ctdb_removes_entries() {
        let mut list = GLockList::default();
        for p in [1, 2, 3] {
            assert_eq!(take(&mut list, sid(p), GLockType::Read), Take::Taken);
        }
        assert!(purge_holders(&mut list, |s| s.pid == 1));
        // The last entry took the removed one's place.
        assert_eq!(
            pids(&list.locks.iter().map(|l| l.sid).collect::<Vec<_>>()),
            [3, 2]
        );
        assert!(!purge_holders(&mut list, |s| s.pid == 9));
        // With the stale writer gone, a writer's way is clear.
        let mut list = GLockList::default();
        take(&mut list, sid(1), GLockType::Write);
        assert_eq!(
            take(&mut list, sid(2), GLockType::Write),
            Take::Conflict(0, sid(1))
        );
        assert!(purge_holders(&mut list, |s| s.pid == 1));
        assert_eq!(take(&mut list, sid(2), GLockType::Write), Take::Taken);
    }

    #[test]
    fn a_waiter_behind_its_own_processs_stale_entry_gets_the_lock() {
        // The case that failed with "g_lock already held by this holder":
        // the record came back with this process's earlier entry first.
        let name = b"self_behind\0";
        let gone = ended_attempt(0x5E1, name);
        let me = begin(server_id(0, 0x5E1), name).unwrap();
        let mut list = GLockList::default();
        list.locks.push(GLock {
            kind: GLockType::Write,
            sid: gone,
        });
        let woken = purge_queue(&mut list, |s| own_and_stale(*s, name));
        assert!(woken.is_empty());
        let (changed, l) = look(&mut list, me, GLockType::Write);
        assert!(changed && matches!(l, Look::Acquired));
        end(me);
    }

    #[test]
    fn probes_and_answers_survive_the_wire() {
        let p = Probe {
            reply_vnn: 3,
            reply_srvid: wake_srvid(sid(5)),
            nonce: 0x0102_0304_0506_0708,
            entry: ServerId {
                pid: 77,
                task_id: 9,
                vnn: 2,
                unique_id: 0xDEAD_BEEF_0000_0001,
            },
            name: b"transaction_db_0x12345678\0".to_vec(),
        };
        assert_eq!(Probe::decode(&p.encode()), Some(p.clone()));
        assert_eq!(Probe::decode(&p.encode()[..43]), None);
        assert_eq!(decode_answer(&encode_answer(42, false)), Some((42, false)));
        assert_eq!(decode_answer(&encode_answer(42, true)), Some((42, true)));
        // A wake message is no answer.
        assert_eq!(decode_answer(&[]), None);
        assert_ne!(probe_srvid(77) >> 48, wake_srvid(sid(77)) >> 48);
    }

    #[test]
    fn only_an_ended_attempt_of_the_asked_process_is_answered_stale() {
        let name = b"answers\0";
        let gone = ended_attempt(0xA5, name);
        let live = begin(server_id(0, 0xA6), name).unwrap();
        let ask = |entry: ServerId| Probe {
            reply_vnn: 0,
            reply_srvid: 0,
            nonce: 1,
            entry,
            name: name.to_vec(),
        };
        assert!(!ask(gone).answer(), "an ended attempt's entry is stale");
        assert!(ask(live).answer());
        // Entries taken in CTDB's way (no attempt of ours) may be real.
        assert!(ask(server_id(0, 0xA5)).answer());
        end(live);
    }

    #[test]
    fn a_suspect_is_stale_only_on_the_answer_to_its_own_question() {
        let mut s = Suspect {
            sid: Some(sid(1)),
            nonce: Some(7),
            ..Default::default()
        };
        s.answered(8, false);
        assert!(!s.stale, "an answer to another question");
        s.answered(7, true);
        assert!(!s.stale);
        s.nonce = Some(9);
        s.answered(9, false);
        assert!(s.stale);
    }
}
