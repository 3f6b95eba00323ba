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

use std::time::Duration;

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

/// The srvid a queued waiter is woken on: a tag, then the low 16 bits of
/// its task id and its pid. (A collision only causes a spurious look.)
pub fn wake_srvid(sid: ServerId) -> u64 {
    0xC7DB_u64 << 48 | (u64::from(sid.task_id) & 0xFFFF) << 32 | (sid.pid & 0xFFFF_FFFF)
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
fn look(list: &mut GLockList, me: ServerId, kind: GLockType, first: bool) -> Result<(bool, Look)> {
    let (pos, pushed) = match list.locks.iter().position(|l| l.sid == me) {
        Some(_) if first => {
            return Err(ClientError::Other(
                "g_lock already held by this holder".into(),
            ));
        }
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
    Ok((
        pushed,
        match ahead {
            None => Look::Acquired,
            Some(h) => Look::Waiting(h),
        },
    ))
}

fn conflicts(a: GLockType, b: GLockType) -> bool {
    !(a == GLockType::Read && b == GLockType::Read)
}

fn parse(data: &[u8]) -> Result<GLockList> {
    Ok(GLockList::pull(data)?.0)
}

/// Identity of this process's lock holder for `task_id` on node `pnn`, as
/// CTDB builds it.
pub fn server_id(pnn: u32, task_id: u32) -> ServerId {
    let pid = std::process::id() as u64;
    ServerId {
        pid,
        task_id,
        vnn: pnn,
        unique_id: ((task_id as u64) << 32) | pid,
    }
}

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

/// Takes the lock `name` for `me`, queueing behind conflicting entries.
///
/// If the future is dropped while queued, the entry is removed in the
/// background (a runtime is there, since the future was being polled).
pub async fn lock(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
    let qkey = queue_key(name);
    let mut queued = Queued {
        glock,
        name,
        me,
        // From the start: the future may be dropped after our entry was
        // stored but before the look returned.
        armed: true,
    };
    let mut wake: Option<tokio::sync::mpsc::UnboundedReceiver<crate::Message>> = None;
    let mut delay = Duration::from_millis(1);
    let mut first = true;
    // Set once our turn in the queue has come (it stays ours).
    let mut our_turn = false;
    let result = loop {
        // A record this node is data master of is read from the local
        // file without the daemon, so a lost daemon shows only here: stop
        // instead of waiting on (and holding the file of) a daemon that
        // is gone.
        if glock.client().is_closed() {
            queued.armed &= !first;
            break Err(ClientError::Disconnected);
        }
        if !our_turn {
            let r = glock
                .fetch_lock(&qkey, |rec| {
                    let mut list = match parse(&rec.data) {
                        Ok(l) => l,
                        Err(e) => return (Update::Keep, Err(e)),
                    };
                    match look(&mut list, me, kind, first) {
                        Ok((true, l)) => (Update::Store(list.to_bytes()), Ok(l)),
                        Ok((false, l)) => (Update::Keep, Ok(l)),
                        Err(e) => (Update::Keep, Err(e)),
                    }
                })
                .await;
            let look = match r {
                Ok(Ok(l)) => l,
                Ok(Err(e)) | Err(e) => {
                    // A failed first look added nothing (and must not
                    // remove an entry `me` already had).
                    queued.armed &= !first;
                    break Err(e);
                }
            };
            first = false;
            match look {
                Look::Acquired => {
                    our_turn = true;
                    delay = Duration::from_millis(1);
                }
                Look::Waiting(ahead) => {
                    if !exists(glock, ahead).await {
                        tracing::info!(
                            "removing dead g_lock waiter pid {} on node {}",
                            ahead.pid,
                            ahead.vnn
                        );
                        if let Err(e) = remove(glock, &qkey, ahead).await {
                            break Err(e);
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
                    match take(&mut list, me, kind) {
                        Take::Taken => (Update::Store(list.to_bytes()), Ok(Take::Taken)),
                        t => (Update::Keep, Ok(t)),
                    }
                })
                .await;
            match r {
                Ok(Ok(Take::Taken | Take::Held)) => break Ok(()),
                Ok(Ok(Take::Conflict(at, holder))) => {
                    // A holder that is not in our queue: one of CTDB's
                    // clients (or one that died).
                    if !exists(glock, holder).await {
                        tracing::info!(
                            "removing dead g_lock holder pid {} on node {}",
                            holder.pid,
                            holder.vnn
                        );
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
            None => match glock.client().register_srvid(wake_srvid(me)).await {
                Ok(rx) => wake = Some(rx),
                Err(e) => break Err(e),
            },
            Some(rx) => {
                // Waiting behind a holder of CTDB's, which wakes nobody,
                // looks again sooner.
                let most = if our_turn { MAX_RETRY } else { MAX_RECHECK };
                if tokio::time::timeout(delay, rx.recv()).await.is_err() {
                    delay = (delay * 2).min(most);
                }
            }
        }
    };
    if wake.is_some() {
        let _ = glock.client().deregister_srvid(wake_srvid(me)).await;
    }
    match result {
        Ok(()) => {
            queued.armed = false;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes our entries if [`lock`] is abandoned (dropped, or failed)
/// after the queue entry was added.
struct Queued<'a> {
    glock: &'a Db,
    name: &'a [u8],
    me: ServerId,
    armed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let glock = self.glock.clone();
            let name = self.name.to_vec();
            let me = self.me;
            rt.spawn(async move {
                let _ = unlock(&glock, &name, me).await;
            });
        }
    }
}

/// Releases the lock `name` held by `me` (or gives up `me`'s place in the
/// queue), and wakes the queue entries whose turn has come.
pub async fn unlock(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    // The lock record first: whoever is woken finds the lock free.
    remove(glock, name, me).await?;
    let now_holding = remove(glock, &queue_key(name), me).await?;
    let client = glock.client();
    for sid in now_holding {
        // A waiter that has gone is found by the next one's look.
        let _ = client.send_message(sid.vnn, wake_srvid(sid), &[]);
    }
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
            if list.locks.is_empty() {
                (Update::Delete, Ok(woken))
            } else {
                (Update::Store(list.to_bytes()), Ok(woken))
            }
        })
        .await?
}

/// Removes the (dead) entry `who` at index `at` of record `key`, if it is
/// still there, as CTDB's client does (the last entry takes its place).
async fn remove_at(glock: &Db, key: &[u8], at: usize, who: ServerId) -> Result<()> {
    glock
        .fetch_lock(key, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            if list.locks.get(at).is_some_and(|l| l.sid == who) {
                list.locks.swap_remove(at);
                if list.locks.is_empty() {
                    return (Update::Delete, Ok(()));
                }
                (Update::Store(list.to_bytes()), Ok(()))
            } else {
                (Update::Keep, Ok(()))
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
        let (changed, l) = look(&mut list, sid(1), GLockType::Write, true).unwrap();
        assert!(changed && matches!(l, Look::Acquired));
        for p in [2, 3] {
            let (changed, l) = look(&mut list, sid(p), GLockType::Write, true).unwrap();
            assert!(changed);
            assert!(matches!(l, Look::Waiting(h) if h.pid == 1));
        }
        // A later look changes nothing and still waits.
        let (changed, l) = look(&mut list, sid(3), GLockType::Write, false).unwrap();
        assert!(!changed && matches!(l, Look::Waiting(h) if h.pid == 1));
        // The holder leaves: only the next in line is woken, and holds.
        assert_eq!(pids(&take_out(&mut list, sid(1))), [2]);
        assert!(matches!(
            look(&mut list, sid(2), GLockType::Write, false).unwrap().1,
            Look::Acquired
        ));
        assert!(
            matches!(look(&mut list, sid(3), GLockType::Write, false).unwrap().1, Look::Waiting(h) if h.pid == 2)
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
        look(&mut list, sid(1), GLockType::Read, true).unwrap();
        assert!(matches!(
            look(&mut list, sid(2), GLockType::Read, true).unwrap().1,
            Look::Acquired
        ));
        assert!(
            matches!(look(&mut list, sid(3), GLockType::Write, true).unwrap().1, Look::Waiting(h) if h.pid == 1)
        );
        // A reader behind a queued writer waits for it.
        assert!(
            matches!(look(&mut list, sid(4), GLockType::Read, true).unwrap().1, Look::Waiting(h) if h.pid == 3)
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
        let mut list = GLockList::default();
        look(&mut list, sid(1), GLockType::Write, true).unwrap();
        assert!(look(&mut list, sid(1), GLockType::Write, true).is_err());
        assert_eq!(list.locks.len(), 1);
    }

    #[test]
    fn a_lost_entry_is_appended_again() {
        let mut list = GLockList::default();
        let (changed, l) = look(&mut list, sid(1), GLockType::Write, false).unwrap();
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
    fn wake_srvids_differ_by_pid_and_task() {
        let a = sid(100);
        let mut b = a;
        b.task_id = 8;
        assert_ne!(wake_srvid(a), wake_srvid(b));
        assert_ne!(wake_srvid(a), wake_srvid(sid(101)));
        assert_eq!(wake_srvid(a) >> 48, 0xC7DB);
    }
}
