//! `ctdb-glock-hold SOCKET NAME`: a process of its own that takes our
//! client's g_lock NAME, prints `held`, releases it when a line arrives on
//! standard input, prints `released`, and then stays connected (serving
//! our client's g_lock probes) until standard input ends. For
//! `tests/glock_node_loss.rs`: a live process, other than the test's,
//! whose entry a reverted record brings back.

use std::io::BufRead;

use ctdb_client::db::glock;
use ctdb_protocol::types::GLockType;
use ctdb_tests::client_prog::{connect, run_on, say, usage};

async fn run(socket: &str, name: &[u8]) -> Result<(), String> {
    let c = connect(socket).await?;
    let g = c.g_lock_db().await.map_err(|e| format!("attach: {e}"))?;
    let me = glock::server_id(c.pnn(), 7);
    glock::lock(&g, name, me, GLockType::Write)
        .await
        .map_err(|e| format!("lock: {e}"))?;
    say("held");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    glock::unlock(&g, name, me)
        .await
        .map_err(|e| format!("unlock: {e}"))?;
    say("released");
    // Stay, reachable, until the test closes our standard input: the
    // connection's task answers probes meanwhile (a multi-thread runtime
    // runs it while this thread blocks on the read).
    for _ in lines {}
    Ok(())
}

pub fn main(args: Vec<String>) {
    let [socket, name] = args.as_slice() else {
        usage("usage: ctdb-glock-hold SOCKET NAME")
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(1);
    run_on(rt, "ctdb-glock-hold", run(socket, name.as_bytes()))
}
