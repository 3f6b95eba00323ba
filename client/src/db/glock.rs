//! Global locks (g_lock): cluster-wide named locks kept as records of the
//! volatile database `g_lock.tdb`, in the format CTDB's client library uses
//! (a record per lock name, holding the list of [`GLock`] holders).
//!
//! The holder list is kept as a queue: a client that finds the lock taken
//! appends itself and waits its turn, instead of retrying until it happens
//! to find the lock free (which lets a client that just released win again
//! and leaves others waiting for seconds). An entry holds the lock when
//! every entry before it is compatible with it (both read locks); the ones
//! behind it are waiting. To other CTDB clients, which see every entry as
//! a holder, a queued waiter just looks like the lock being taken, so they
//! wait as they always do.
//!
//! A waiter listens on a srvid of its own (see [`wake_srvid`]); releasing
//! the lock sends an empty message there to every entry that now holds
//! it, so a waiter's turn starts as soon as the lock is free. A waiter
//! also looks again after a short, growing delay, for clients that do not
//! send that message (CTDB's own) and for a lost message.
//!
//! A conflicting entry ahead of us whose process no longer exists
//! (checked with `PROCESS_EXISTS` on its node) is removed. So a client
//! that dies holding or waiting for a g_lock loses its place to the next.

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

/// Longest wait between two looks at the lock record while queued.
const MAX_RECHECK: Duration = Duration::from_millis(100);

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

/// Takes the lock `name` for `me`, queueing behind conflicting entries.
///
/// If the future is dropped while queued, the entry is removed in the
/// background (a runtime is there, since the future was being polled).
pub async fn lock(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
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
    let result = loop {
        // A record this node is data master of is read from the local
        // file without the daemon, so a lost daemon shows only here: stop
        // instead of waiting on (and holding the file of) a daemon that
        // is gone.
        if glock.client().is_closed() {
            queued.armed &= !first;
            break Err(ClientError::Disconnected);
        }
        let r = glock
            .fetch_lock(name, |rec| {
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
                // A failed first look added nothing (and must not remove
                // an entry `me` already had).
                queued.armed &= !first;
                break Err(e);
            }
        };
        first = false;
        let holder = match look {
            Look::Acquired => break Ok(()),
            Look::Waiting(h) => h,
        };
        let client = glock.client();
        let exists = client
            .control_raw(
                holder.vnn,
                ReqControl::new(ControlRequest::ProcessExists(holder.pid as i32)),
            )
            .await
            .map(|r| r.status == 0)
            // An unreachable node's holder is presumed alive: recovery will
            // deal with that node, not us.
            .unwrap_or(true);
        if !exists {
            tracing::info!(
                "removing dead g_lock holder pid {} on node {}",
                holder.pid,
                holder.vnn
            );
            if let Err(e) = remove(glock, name, holder).await {
                break Err(e);
            }
            continue;
        }
        match wake.as_mut() {
            // Listen first, then look again: a release between our look
            // and the registration is not missed.
            None => match client.register_srvid(wake_srvid(me)).await {
                Ok(rx) => wake = Some(rx),
                Err(e) => break Err(e),
            },
            Some(rx) => {
                if tokio::time::timeout(delay, rx.recv()).await.is_err() {
                    delay = (delay * 2).min(MAX_RECHECK);
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

/// Removes our queue entry if [`lock`] is abandoned (dropped, or failed)
/// after the entry was added.
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
/// queue), and wakes the entries that hold it now.
pub async fn unlock(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    let now_holding = remove(glock, name, me).await?;
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

/// Removes `who` from the list; returns the entries that hold the lock
/// now but did not before.
async fn remove(glock: &Db, name: &[u8], who: ServerId) -> Result<Vec<ServerId>> {
    glock
        .fetch_lock(name, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            let woken = take_out(&mut list, who);
            if list.locks.is_empty() {
                (Update::Delete, Ok(woken))
            } else {
                (Update::Store(list.to_bytes()), Ok(woken))
            }
        })
        .await?
}

/// Takes the lock `name` for `me` exactly as CTDB's own client library
/// (`ctdb_g_lock_lock` in 4.17) does, for comparisons with clients that
/// use it: lock the record; for the first conflicting entry ask whether
/// its process exists; if it does, let the record go, wait a millisecond
/// and start again; if not, remove that entry (the last entry takes its
/// place) and go on; with no conflict left, append `me`.
pub async fn lock_ctdb_style(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
    enum Step {
        Done,
        Check(usize, ServerId),
    }
    loop {
        let step = glock
            .fetch_lock(name, |rec| {
                let mut list = match parse(&rec.data) {
                    Ok(l) => l,
                    Err(e) => return (Update::Keep, Err(e)),
                };
                for (i, l) in list.locks.iter().enumerate() {
                    if l.sid == me {
                        return (
                            Update::Keep,
                            Err(ClientError::Other("g_lock_lock: deadlock".into())),
                        );
                    }
                    if conflicts(l.kind, kind) {
                        return (Update::Keep, Ok(Step::Check(i, l.sid)));
                    }
                }
                list.locks.push(GLock { kind, sid: me });
                (Update::Store(list.to_bytes()), Ok(Step::Done))
            })
            .await??;
        let (at, holder) = match step {
            Step::Done => return Ok(()),
            Step::Check(i, h) => (i, h),
        };
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
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // Gone: drop its entry (if it is still where we saw it).
        glock
            .fetch_lock(name, |rec| {
                let mut list = match parse(&rec.data) {
                    Ok(l) => l,
                    Err(e) => return (Update::Keep, Err(e)),
                };
                if list.locks.get(at).is_some_and(|l| l.sid == holder) {
                    list.locks.swap_remove(at);
                    (Update::Store(list.to_bytes()), Ok(()))
                } else {
                    (Update::Keep, Ok(()))
                }
            })
            .await??;
    }
}

/// Releases a lock taken with [`lock_ctdb_style`] as CTDB's client library
/// does: remove our entry (the last entry takes its place), and delete
/// the record once nobody is left. Nobody is woken.
pub async fn unlock_ctdb_style(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    glock
        .fetch_lock(name, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            if let Some(i) = list.locks.iter().position(|l| l.sid == me) {
                list.locks.swap_remove(i);
            }
            if list.locks.is_empty() {
                (Update::Delete, Ok(()))
            } else {
                (Update::Store(list.to_bytes()), Ok(()))
            }
        })
        .await?
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
    fn wake_srvids_differ_by_pid_and_task() {
        let a = sid(100);
        let mut b = a;
        b.task_id = 8;
        assert_ne!(wake_srvid(a), wake_srvid(b));
        assert_ne!(wake_srvid(a), wake_srvid(sid(101)));
        assert_eq!(wake_srvid(a) >> 48, 0xC7DB);
    }
}
