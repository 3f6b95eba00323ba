//! Global locks (g_lock): cluster-wide named locks kept as records of the
//! volatile database `g_lock.tdb`, in the format CTDB's client library uses
//! (a record per lock name, holding the list of [`GLock`] holders).
//!
//! To take a lock: fetch-lock its record, and if no holder conflicts, add
//! ourselves. A conflicting holder whose process no longer exists (checked
//! with `PROCESS_EXISTS` on its node) is removed; a live one makes us retry
//! shortly. So a client that dies holding a g_lock loses it to the next
//! client that asks.

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
    Conflict(ServerId),
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

/// Takes the lock `name` for `me`, waiting while live holders conflict.
pub async fn lock(glock: &Db, name: &[u8], me: ServerId, kind: GLockType) -> Result<()> {
    let mut delay = Duration::from_millis(1);
    loop {
        let look = glock
            .fetch_lock(name, |rec| {
                let mut list = match parse(&rec.data) {
                    Ok(l) => l,
                    Err(e) => return (Update::Keep, Err(e)),
                };
                if list.locks.iter().any(|l| l.sid == me) {
                    return (
                        Update::Keep,
                        Err(ClientError::Other(
                            "g_lock already held by this holder".into(),
                        )),
                    );
                }
                if let Some(l) = list.locks.iter().find(|l| conflicts(l.kind, kind)) {
                    return (Update::Keep, Ok(Look::Conflict(l.sid)));
                }
                list.locks.push(GLock { kind, sid: me });
                (Update::Store(list.to_bytes()), Ok(Look::Acquired))
            })
            .await??;
        let holder = match look {
            Look::Acquired => return Ok(()),
            Look::Conflict(h) => h,
        };
        let exists = glock
            .client()
            .control_raw(
                holder.vnn,
                ReqControl::new(ControlRequest::ProcessExists(holder.pid as i32)),
            )
            .await
            .map(|r| r.status == 0)
            // An unreachable node's holder is presumed alive: recovery will
            // deal with that node, not us.
            .unwrap_or(true);
        if exists {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        } else {
            tracing::info!(
                "removing dead g_lock holder pid {} on node {}",
                holder.pid,
                holder.vnn
            );
            remove(glock, name, holder).await?;
        }
    }
}

/// Releases the lock `name` held by `me`.
pub async fn unlock(glock: &Db, name: &[u8], me: ServerId) -> Result<()> {
    remove(glock, name, me).await
}

async fn remove(glock: &Db, name: &[u8], who: ServerId) -> Result<()> {
    glock
        .fetch_lock(name, |rec| {
            let mut list = match parse(&rec.data) {
                Ok(l) => l,
                Err(e) => return (Update::Keep, Err(e)),
            };
            let before = list.locks.len();
            list.locks.retain(|l| l.sid != who);
            if list.locks.len() == before {
                (Update::Keep, Ok(()))
            } else if list.locks.is_empty() {
                (Update::Delete, Ok(()))
            } else {
                (Update::Store(list.to_bytes()), Ok(()))
            }
        })
        .await?
}
