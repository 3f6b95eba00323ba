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

use ctdb_client::{Client, DbKind};

fn get_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|d| {
        d.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    })
    .unwrap_or(0)
}

async fn run(
    socket: &str,
    db: &str,
    own: &str,
    stop: &Path,
    keyed: bool,
) -> Result<(u64, u64), String> {
    let c = Client::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?
        .with_timeout(Duration::from_secs(60));
    let kind = if keyed {
        DbKind::Keyed
    } else {
        DbKind::InMemory
    };
    let d = c
        .attach(db, kind, 0)
        .await
        .map_err(|e| format!("attach: {e}"))?;
    let (mut acked, mut unsure) = (0u64, 0u64);
    while !stop.exists() {
        let r = if keyed {
            async {
                let mut t = d.keyed_transaction(&[own.as_bytes(), b"shared"]).await?;
                let a = get_u64(t.fetch(own.as_bytes())?);
                let s = get_u64(t.fetch(b"shared")?);
                t.store(own.as_bytes(), &(a + 1).to_le_bytes())?;
                t.store(b"shared", &(s + 1).to_le_bytes())?;
                t.commit().await
            }
            .await
        } else {
            async {
                let mut t = d.transaction_start(false).await?;
                let a = get_u64(t.fetch(own.as_bytes())?);
                let s = get_u64(t.fetch(b"shared")?);
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
        eprintln!("usage: ctdb-inmem-increment SOCKET DB OWNKEY STOPFILE [keyed]");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(socket, db, own, Path::new(stop), keyed)) {
        Ok((a, u)) => println!("{a} {u}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
