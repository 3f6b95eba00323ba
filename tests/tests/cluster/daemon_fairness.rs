//! Fairness: with 1000 idle client connections and 50 clients flooding
//! messages as fast as they can, the daemon keeps answering `ctdb ping`
//! promptly and no node is marked disconnected (CTDB's weakness: one
//! busy socket starving the others).

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ctdb_client::Client;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};

const SRVID: u64 = 0xAE00_0000_0000_0042;
/// The bounds pings must meet. Measured here: median about 1 ms, worst
/// about 8 ms under the flood; a starved daemon takes seconds. The typical
/// ping must stay in milliseconds, the worst well under a second (room for
/// a loaded CI machine).
const MEDIAN_BOUND: f64 = 0.050;
const WORST_BOUND: f64 = 0.5;

#[test]
fn ping_answers_while_50_clients_flood_and_1000_idle() {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(Daemon::Ours(our_bin("ctdbd")), 3));
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(c.socket(0)).expect("idle connection"))
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    // A receiver on node 1 for half the flood (which crosses the node
    // link), and none for the other half (dropped at node 0).
    let rx_client = rt.block_on(Client::connect(c.socket(1))).unwrap();
    let mut rx = rt.block_on(rx_client.register_srvid(SRVID)).unwrap();
    {
        let received = Arc::clone(&received);
        rt.spawn(async move {
            while rx.recv().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut flooders = Vec::new();
    for i in 0..50u32 {
        let sock = c.socket(0);
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        flooders.push(rt.spawn(async move {
            let client = Client::connect(sock).await.unwrap();
            let payload = vec![i as u8; 64];
            while !stop.load(Ordering::Relaxed) {
                for j in 0..200u32 {
                    let (dest, id) = if j % 2 == 0 {
                        (1, SRVID)
                    } else {
                        (CTDB_CURRENT_NODE, SRVID + 1)
                    };
                    client.send_message(dest, id, &payload).unwrap();
                }
                sent.fetch_add(200, Ordering::Relaxed);
                // Keeps the client's own queue bounded, nothing more.
                client.ping(CTDB_CURRENT_NODE).await.unwrap();
            }
        }));
    }
    // Let the flood build up.
    let t0 = Instant::now();
    while sent.load(Ordering::Relaxed) < 50_000 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut worst = 0.0f64;
    let mut times = Vec::new();
    for _ in 0..20 {
        let out = c.tool(0, &["ping"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ping failed under load: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t: f64 = text
            .split("time=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no time in {text}"));
        worst = worst.max(t);
        times.push(t);
        std::thread::sleep(Duration::from_millis(100));
    }
    let flood = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        rt.block_on(f).unwrap();
    }
    eprintln!(
        "ping times under flood (s): {times:?}; worst {worst}; {flood} messages sent, {} received on node 1",
        received.load(Ordering::Relaxed)
    );
    assert!(
        flood >= 50_000,
        "the flood never got going ({flood} messages)"
    );
    assert!(
        received.load(Ordering::Relaxed) > 0,
        "no flood message crossed to node 1"
    );
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        median < MEDIAN_BOUND,
        "median ping {median} s under load: {times:?}"
    );
    assert!(worst < WORST_BOUND, "ping took {worst} s under load");
    // Nobody was dropped from the cluster, and the idle clients are all
    // still connected.
    for k in 0..3 {
        let s = c.tool_ok(k, &["status"]);
        assert!(
            !s.contains("DISCONNECTED"),
            "node {k} saw a disconnection:\n{s}"
        );
    }
    for k in 0..3 {
        assert!(
            !c.log_text(k).contains("is dead"),
            "node {k} declared a node dead:\n{}",
            c.log_tails()
        );
    }
    let ping = c.tool_ok(0, &["ping"]);
    let clients: usize = ping
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(clients >= 1000, "idle clients were dropped: {ping}");
    drop(idle);
}
