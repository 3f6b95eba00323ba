//! What the small client programs of the cluster tests (`src/bin`) share:
//! how they run and fail, their arguments, the u64 counter they increment,
//! their one-line reports on standard output, their connection and
//! databases, and one increment through fetch-lock or a persistent
//! transaction.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use ctdb_client::{Client, Db, DbKind, Update};

/// Runs a program's body on a current-thread runtime and returns what it
/// gave; an error is printed as "PROGRAM: ERROR" and the process exits
/// with status 1.
pub fn run<T>(program: &str, body: impl Future<Output = Result<T, String>>) -> T {
    run_on(tokio::runtime::Builder::new_current_thread(), program, body)
}

/// [`run`] on a runtime of `builder`'s kind.
pub fn run_on<T>(
    mut builder: tokio::runtime::Builder,
    program: &str,
    body: impl Future<Output = Result<T, String>>,
) -> T {
    let rt = builder.enable_all().build().expect("tokio runtime");
    match rt.block_on(body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints `text` (the program's usage) and exits with status 2.
pub fn usage(text: &str) -> ! {
    eprintln!("{text}");
    std::process::exit(2)
}

/// Argument `i` of `args` as a number; the usage text as the error when it
/// is missing or not one.
pub fn number(args: &[String], i: usize, usage: &str) -> Result<u64, String> {
    args.get(i)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| usage.to_owned())
}

/// Database `name` of `kind`, attached.
pub async fn attach(c: &Client, name: &str, kind: DbKind) -> Result<Db, String> {
    c.attach(name, kind, 0)
        .await
        .map_err(|e| format!("attach: {e}"))
}

/// The little-endian u64 at the start of `d` (0 if shorter).
pub fn get_u64(d: &[u8]) -> u64 {
    d.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// One line on standard output, flushed at once (the tests read it live).
pub fn say(s: &str) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

/// A client of the daemon at `socket`, with a 60 s limit per request.
pub async fn connect(socket: &str) -> Result<Client, String> {
    Ok(Client::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?
        .with_timeout(Duration::from_secs(60)))
}

/// Adds one to `key`'s u64 of volatile `db` under fetch-lock.
pub async fn fetch_lock_increment(db: &Db, key: &[u8]) -> Result<(), String> {
    db.fetch_lock(key, |r| {
        (
            Update::Store((get_u64(&r.data) + 1).to_le_bytes().to_vec()),
            (),
        )
    })
    .await
    .map_err(|e| format!("fetch_lock: {e}"))
}

/// Adds one to `key`'s u64 of persistent `db` in a transaction, the g_lock
/// taken by our client's queue or, with `ctdb_style`, exactly as CTDB's
/// client library takes it.
pub async fn transaction_increment(db: &Db, key: &[u8], ctdb_style: bool) -> Result<(), String> {
    let mut t = if ctdb_style {
        db.transaction_start_ctdb_style(false).await
    } else {
        db.transaction_start(false).await
    }
    .map_err(|e| format!("transaction_start: {e}"))?;
    let v = t
        .fetch(key)
        .map_err(|e| format!("fetch: {e}"))?
        .map_or(0, |v| get_u64(&v));
    t.store(key, &(v + 1).to_le_bytes())
        .map_err(|e| format!("store: {e}"))?;
    t.commit().await.map_err(|e| format!("commit: {e}"))
}
