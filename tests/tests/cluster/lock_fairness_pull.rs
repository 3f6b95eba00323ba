//! `DB_PULL` backpressure (issue 14), on our daemon: a frozen volatile
//! database of a million records is pulled from node 1 by a client on
//! node 0; node 1's freeze session makes the next chunk only once the
//! previous one has been written to the connection, so the daemon's
//! anonymous memory grows by a few chunks (`RecBufferSizeLimit` each),
//! not by the database. Node 1's `RssAnon` is sampled every 2 ms during
//! the pull; the peak may exceed the level before the pull by at most
//! 4 x `RecBufferSizeLimit` plus a margin of 4 MiB for the allocator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ctdb_client::{Client, DbKind};
use ctdb_protocol::types::{LtdbHeader, PullDbExt, RecBuffer};
use ctdb_protocol::{ControlRequest, Marshal, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon};

const RECORDS: u32 = 1_000_000;
const LIMIT: u64 = 1_000_000;
/// In the recovery range, as a recovery helper's pull srvids are (the
/// daemon holds such messages to its packet limit only, never dropping
/// them for a client that reads slowly on purpose).
const SRVID: u64 = ctdb_protocol::message::srvid::RECOVERY | 0x0F01;

/// `RssAnon` of `pid`, in bytes.
fn rss_anon(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn pull_of_a_million_records_holds_a_few_chunks_ours() {
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3));
    c.tool_ok(0, &["setvar", "RecBufferSizeLimit", &LIMIT.to_string()]);
    c.tool_ok(1, &["setvar", "RecBufferSizeLimit", &LIMIT.to_string()]);
    let pid = c.pid(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c0 = Client::connect(c.socket(0))
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(120));
        let c1 = Client::connect(c.socket(1)).await.unwrap();
        c0.attach("pullmem.tdb", DbKind::Volatile, 0).await.unwrap();
        let d1 = c1.attach("pullmem.tdb", DbKind::Volatile, 0).await.unwrap();
        // A million records mastered by node 1, written straight into its
        // copy.
        let h = LtdbHeader {
            rsn: 1,
            dmaster: 1,
            ..Default::default()
        };
        let mut hb = [0u8; LtdbHeader::WIRE_SIZE];
        h.push(&mut hb);
        let value = [7u8; 100];
        d1.local().with(|t| {
            for i in 0..RECORDS {
                t.storev(
                    format!("record{i}").as_bytes(),
                    &[&hb, &value],
                    tdb::StoreMode::Insert,
                )
                .unwrap();
            }
        });
        let id = d1.id();
        let mut rx = c0.register_srvid(SRVID).await.unwrap();
        let r = c0
            .control_raw(1, ReqControl::new(ControlRequest::DbFreeze(id)))
            .await
            .unwrap();
        assert_eq!(r.status, 0, "freeze: {:?}", r.errmsg);

        let base = rss_anon(pid);
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_anon(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let pull = c0.control_raw(
            1,
            ReqControl::new(ControlRequest::DbPull(PullDbExt {
                db_id: id,
                lmaster: 0,
                srvid: SRVID,
            })),
        );
        let count = async {
            let mut n = 0u32;
            // (Chunks node 0 dropped for a client it found slow never come.)
            while n < RECORDS {
                match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
                    Ok(Some(m)) => n += RecBuffer::pull(&m.data).unwrap().0.count(),
                    _ => break,
                }
            }
            n
        };
        let (reply, got) = tokio::join!(pull, count);
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let reply = reply.unwrap();
        assert_eq!(reply.status, 0, "pull: {:?}", reply.errmsg);
        assert_eq!(got, RECORDS);
        c0.control(1, ControlRequest::DbThaw(id)).await.unwrap();
        let grew = peak.load(Ordering::Relaxed).saturating_sub(base);
        eprintln!(
            "node 1 RssAnon: {} MiB before the pull, peak {} KiB above it",
            base >> 20,
            grew >> 10
        );
        assert!(
            grew <= 4 * LIMIT + (4 << 20),
            "node 1 grew by {grew} bytes during the pull (RecBufferSizeLimit {LIMIT})"
        );
    });
}
