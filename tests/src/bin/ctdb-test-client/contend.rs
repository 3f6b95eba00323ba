//! `ctdb-contend`: a CTDB client that contends for one record, for the
//! lock fairness tests.
//!
//! ```text
//! ctdb-contend SOCKET fetch-lock DB KEY SECS
//!     for SECS seconds: fetch-lock KEY of volatile DB, increment its u64,
//!     release; print "count N" (increments acknowledged)
//! ctdb-contend SOCKET ptrans DB KEY SECS
//! ctdb-contend SOCKET ptrans-ctdb DB KEY SECS
//!     the same with persistent transactions on DB, the g_lock taken by
//!     our client's queue (ptrans) or exactly as CTDB's client library
//!     takes it (ptrans-ctdb)
//! ctdb-contend SOCKET hold DB KEY MS
//!     migrate KEY here, lock its chain, print "locked", hold it MS ms,
//!     release and print "released T" (T: unix time in microseconds)
//! ctdb-contend SOCKET fetch-once DB KEY
//!     print "ready", then fetch-lock KEY once and print "done T"
//! ```
//!
//! Every process starts its loop when its standard input says "go" (one
//! line), so that all of them start together.

use std::io::BufRead;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctdb_client::{DbKind, Update};
use ctdb_tests::client_prog::{
    self, attach, connect, fetch_lock_increment, number, say, transaction_increment,
};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Waits for "go" on standard input (on a thread: the runtime is busy).
async fn wait_go() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut l = String::new();
        let _ = std::io::stdin().lock().read_line(&mut l);
    })
    .await;
}

async fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: ctdb-contend SOCKET MODE DB KEY [SECS|MS]";
    let [socket, mode, db, key, rest @ ..] = args else {
        return Err(usage.into());
    };
    let key = key.as_bytes();
    let c = connect(socket).await?;
    let num = || number(rest, 0, usage);
    match mode.as_str() {
        "fetch-lock" => {
            let secs = num()?;
            let db = attach(&c, db, DbKind::Volatile).await?;
            say("ready");
            wait_go().await;
            let end = Instant::now() + Duration::from_secs(secs);
            let mut n = 0u64;
            while Instant::now() < end {
                fetch_lock_increment(&db, key).await?;
                n += 1;
            }
            say(&format!("count {n}"));
        }
        "ptrans" | "ptrans-ctdb" => {
            let secs = num()?;
            let db = attach(&c, db, DbKind::Persistent).await?;
            say("ready");
            wait_go().await;
            let end = Instant::now() + Duration::from_secs(secs);
            let mut n = 0u64;
            while Instant::now() < end {
                transaction_increment(&db, key, mode == "ptrans-ctdb").await?;
                n += 1;
            }
            say(&format!("count {n}"));
        }
        "hold" => {
            let ms = num()?;
            let db = attach(&c, db, DbKind::Volatile).await?;
            db.fetch_lock(key, |_| (Update::Keep, ()))
                .await
                .map_err(|e| format!("fetch_lock: {e}"))?;
            db.local().with(|t| -> Result<(), String> {
                let held = t.chainlock(key).map_err(|e| format!("chainlock: {e}"))?;
                say("locked");
                std::thread::sleep(Duration::from_millis(ms));
                // Stamped just before the unlock: a stamp taken after it
                // can come later than a waiter's migration finishing (this
                // process descheduled between the two; -354 us seen in CI).
                let at = now_us();
                drop(held);
                say(&format!("released {at}"));
                Ok(())
            })?;
        }
        "fetch-once" => {
            let db = attach(&c, db, DbKind::Volatile).await?;
            say("ready");
            wait_go().await;
            db.fetch_lock(key, |_| (Update::Keep, ()))
                .await
                .map_err(|e| format!("fetch_lock: {e}"))?;
            say(&format!("done {}", now_us()));
        }
        other => return Err(format!("unknown mode {other}; {usage}")),
    }
    Ok(())
}

pub fn main(args: Vec<String>) {
    client_prog::run("ctdb-contend", run(&args))
}
