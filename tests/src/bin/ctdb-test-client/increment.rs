//! `ctdb-increment`: a small CTDB client for the cluster tests.
//!
//! ```text
//! ctdb-increment SOCKET volatile|persistent DB KEY COUNT
//!     increment the u64 in KEY COUNT times (fetch-lock, or a persistent
//!     transaction each time); print "done N" when finished
//! ctdb-increment SOCKET persistent DB KEY COUNT SECS
//!     the same, at least COUNT times and on until SECS seconds have
//!     passed; "done N" says how many
//! ctdb-increment SOCKET persistent-loop DB KEY
//!     increment the decimal number in KEY in persistent transactions
//!     until an error or until killed, printing "attempt" before each
//!     commit and "ack" after each acknowledged one
//! ctdb-increment SOCKET volatile-loop DB KEY
//!     increment the decimal number in KEY of a volatile database under
//!     fetch-lock until an error or until killed, printing "attempt"
//!     before each and "ack" once the record holds the new value; one
//!     increment a millisecond at most (a record that stays on its node
//!     is otherwise incremented as fast as a CPU allows)
//! ctdb-increment SOCKET store-delete DB PREFIX COUNT
//!     store records PREFIX-0 .. PREFIX-(COUNT-1) of a volatile database,
//!     then delete them all (the client library's delete, with its
//!     SCHEDULE_FOR_DELETION, one-way) and exit at once
//! ctdb-increment SOCKET glock-release NAME PREFIX COUNT
//!     take our client's g_locks NAME/PREFIX-0 .. NAME/PREFIX-(COUNT-1)
//!     one after the other, then release them all (each release empties
//!     the lock record and its queue record, and tells the daemon so,
//!     one-way) and exit at once
//! ctdb-increment SOCKET hold-lock DB KEY
//!     lock KEY's record chain in the local file, print "locked", and
//!     hold it until killed
//! ctdb-increment SOCKET hold-transaction DB KEY
//!     start a transaction, change KEY and 100 other records, print
//!     "in transaction", and wait until killed without committing
//! ```
//!
//! Exit status 0 on success; errors go to stderr.

use std::time::{Duration, Instant};

use ctdb_client::{DbKind, Update};
use ctdb_tests::client_prog::{
    self, attach, connect, fetch_lock_increment, number, say, transaction_increment,
};

async fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: ctdb-increment SOCKET MODE DB KEY [COUNT [SECS]]";
    let [socket, mode, db, key, rest @ ..] = args else {
        return Err(usage.into());
    };
    let key = key.as_bytes();
    let c = connect(socket).await?;
    let count = || number(rest, 0, usage);
    match mode.as_str() {
        "volatile" => {
            let n = count()?;
            let db = attach(&c, db, DbKind::Volatile).await?;
            for _ in 0..n {
                fetch_lock_increment(&db, key).await?;
            }
            say(&format!("done {n}"));
        }
        "persistent" => {
            let n = count()?;
            let db = attach(&c, db, DbKind::Persistent).await?;
            let until = match rest.get(1) {
                Some(s) => Some(
                    Instant::now() + Duration::from_secs(s.parse().map_err(|_| usage.to_owned())?),
                ),
                None => None,
            };
            let mut done = 0u64;
            while done < n || until.is_some_and(|u| Instant::now() < u) {
                transaction_increment(&db, key, false).await?;
                done += 1;
            }
            say(&format!("done {done}"));
        }
        "persistent-loop" => {
            let db = attach(&c, db, DbKind::Persistent).await?;
            loop {
                let mut t = db
                    .transaction_start(false)
                    .await
                    .map_err(|e| format!("transaction_start: {e}"))?;
                let v: u64 = t
                    .fetch(key)
                    .map_err(|e| format!("fetch: {e}"))?
                    .map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
                t.store(key, (v + 1).to_string().as_bytes())
                    .map_err(|e| format!("store: {e}"))?;
                say("attempt");
                t.commit().await.map_err(|e| format!("commit: {e}"))?;
                say("ack");
            }
        }
        "volatile-loop" => {
            let db = attach(&c, db, DbKind::Volatile).await?;
            loop {
                say("attempt");
                db.fetch_lock(key, |r| {
                    let v: u64 = String::from_utf8_lossy(&r.data).parse().unwrap_or(0);
                    (Update::Store((v + 1).to_string().into_bytes()), ())
                })
                .await
                .map_err(|e| format!("fetch_lock: {e}"))?;
                say("ack");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        "store-delete" => {
            let n = count()?;
            let db = attach(&c, db, DbKind::Volatile).await?;
            let prefix = String::from_utf8_lossy(key);
            let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
            for k in &keys {
                db.store(k.as_bytes(), b"to be deleted")
                    .await
                    .map_err(|e| format!("store: {e}"))?;
            }
            for k in &keys {
                db.delete(k.as_bytes())
                    .await
                    .map_err(|e| format!("delete: {e}"))?;
            }
        }
        "glock-release" => {
            let n = count()?;
            let g = c.g_lock_db().await.map_err(|e| format!("attach: {e}"))?;
            let me = ctdb_client::db::glock::server_id(c.pnn(), 1);
            let prefix = String::from_utf8_lossy(key);
            let names: Vec<String> = (0..n).map(|i| format!("{db}/{prefix}-{i}")).collect();
            for name in &names {
                ctdb_client::db::glock::lock(
                    &g,
                    name.as_bytes(),
                    me,
                    ctdb_protocol::types::GLockType::Write,
                )
                .await
                .map_err(|e| format!("lock {name}: {e}"))?;
            }
            for name in &names {
                ctdb_client::db::glock::unlock(&g, name.as_bytes(), me)
                    .await
                    .map_err(|e| format!("unlock {name}: {e}"))?;
            }
        }
        "hold-lock" => {
            let db = attach(&c, db, DbKind::Volatile).await?;
            // Make this node the record's data master first.
            db.fetch_lock(key, |_| (Update::Keep, ()))
                .await
                .map_err(|e| format!("fetch_lock: {e}"))?;
            db.local().with(|t| -> Result<(), String> {
                let _held = t.chainlock(key).map_err(|e| format!("chainlock: {e}"))?;
                say("locked");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            })?;
        }
        "hold-transaction" => {
            let db = attach(&c, db, DbKind::Persistent).await?;
            let mut t = db
                .transaction_start(false)
                .await
                .map_err(|e| format!("transaction_start: {e}"))?;
            t.store(key, &u64::MAX.to_le_bytes())
                .map_err(|e| format!("store: {e}"))?;
            for i in 0..100 {
                t.store(format!("partial{i}").as_bytes(), b"x")
                    .map_err(|e| format!("store: {e}"))?;
            }
            say("in transaction");
            std::future::pending::<()>().await;
        }
        other => return Err(format!("unknown mode {other}; {usage}")),
    }
    Ok(())
}

pub fn main(args: Vec<String>) {
    client_prog::run("ctdb-increment", run(&args))
}
