//! `ctdb-inmem-increment SOCKET DB OWNKEY STOPFILE [keyed]`: a client for
//! the no-lost-updates tests of `tests/db_inmemory.rs` and
//! `tests/db_keyed.rs`. Until STOPFILE exists, increments OWNKEY and
//! `shared` of in-memory persistent database DB (or keyed database, with
//! per-key transactions) in one transaction each time; then prints
//! `ACKED UNSURE`:
//! acknowledged commits and commits that returned an error (those may or
//! may not have landed). One process per client: g_lock holders are told
//! apart by process id.

use std::path::Path;
use std::time::Duration;

use ctdb_client::DbKind;
use ctdb_tests::client_prog::{self, attach, connect, get_u64, usage};

/// The u64 of a record as a transaction fetched it (0 when absent).
fn value(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |d| get_u64(&d))
}

async fn run(
    socket: &str,
    db: &str,
    own: &str,
    stop: &Path,
    keyed: bool,
) -> Result<(u64, u64), String> {
    let c = connect(socket).await?;
    let kind = if keyed {
        DbKind::Keyed
    } else {
        DbKind::InMemory
    };
    let d = attach(&c, db, kind).await?;
    let (mut acked, mut unsure) = (0u64, 0u64);
    while !stop.exists() {
        let r = if keyed {
            async {
                let mut t = d.keyed_transaction(&[own.as_bytes(), b"shared"]).await?;
                let a = value(t.fetch(own.as_bytes())?);
                let s = value(t.fetch(b"shared")?);
                t.store(own.as_bytes(), &(a + 1).to_le_bytes())?;
                t.store(b"shared", &(s + 1).to_le_bytes())?;
                t.commit().await
            }
            .await
        } else {
            async {
                let mut t = d.transaction_start(false).await?;
                let a = value(t.fetch(own.as_bytes())?);
                let s = value(t.fetch(b"shared")?);
                t.store(own.as_bytes(), &(a + 1).to_le_bytes())?;
                t.store(b"shared", &(s + 1).to_le_bytes())?;
                t.commit().await
            }
            .await
        };
        match r {
            Ok(()) => acked += 1,
            Err(e) => {
                eprintln!("{own}: {e}");
                unsure += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok((acked, unsure))
}

pub fn main(args: Vec<String>) {
    let (keyed, args) = match args.last().map(String::as_str) {
        Some("keyed") => (true, &args[..args.len() - 1]),
        _ => (false, &args[..]),
    };
    let [socket, db, own, stop] = args else {
        usage("usage: ctdb-inmem-increment SOCKET DB OWNKEY STOPFILE [keyed]")
    };
    let (a, u) = client_prog::run(
        "ctdb-inmem-increment",
        run(socket, db, own, Path::new(stop), keyed),
    );
    println!("{a} {u}");
}
