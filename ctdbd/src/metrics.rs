//! An opt-in Prometheus endpoint: with `[metrics] address = IP:PORT` (or
//! the older `[ctdb-rs] metrics address`) in `ctdb.conf`, the daemon
//! answers `GET /metrics` on that address with the node's state in the
//! OpenMetrics text format (which Prometheus scrapes), encoded by the
//! `prometheus-client` crate.
//!
//! It never waits on the event loop, nor the loop on it: like the
//! recovery daemon, a scrape is a client of the daemon's own socket
//! (`GET_PNN`, `GET_NODEMAP`, `GET_DBMAP`, `GET_RECMODE`, `GET_VNNMAP`,
//! `GET_STATISTICS`, and `GET_DBNAME` + `GET_DB_STATISTICS` per database),
//! answered by the loop like any client's controls, in a task of its own;
//! and what no control reports, the loop records as it happens into
//! [`Live`] (atomics and the crate's own uncontended locks, only when
//! metrics are on), which the scrape reads. What it exports:
//!
//! * `ctdb_pnn`, `ctdb_node_flag{pnn,flag}` (every node's flags as this
//!   node sees them: 1 set, 0 clear), `ctdb_recovery_mode` (1 active),
//!   `ctdb_generation`;
//! * `ctdb_databases{kind}` (volatile, persistent, replicated);
//! * `ctdb_clients`, `ctdb_frozen`, `ctdb_pending_calls`,
//!   `ctdb_lock_current`, `ctdb_lock_pending`;
//! * counters from `ctdb statistics`: `ctdb_recoveries_total`,
//!   `ctdb_packets_total{peer,direction}`, `ctdb_node_requests_total{type}`,
//!   `ctdb_client_requests_total{type}`, `ctdb_timeouts_total{type}`,
//!   `ctdb_calls_total`, `ctdb_lock_calls_total`, `ctdb_lock_failed_total`;
//! * `ctdb_childwrites_total`, `ctdb_max_hop_count_total`;
//! * per database (`db` label, from its `ctdb dbstatistics`):
//!   `ctdb_db_calls_total` (record calls answered here as dmaster),
//!   `ctdb_db_lock_calls_total`, `ctdb_db_lock_failed_total`,
//!   `ctdb_db_hot_key_count`; and from [`Live`]:
//!   `ctdb_db_migrations_total` (records that migrated here),
//!   `ctdb_db_commit_updates_total` (`UPDATE_RECORD`s applied here),
//!   `ctdb_db_commit_transactions_total` (the tdb transactions they took:
//!   fewer than the updates when group commit batched them, see
//!   `db/group_commit.rs`), `ctdb_db_commit_syncs_total` (the data syncs
//!   those transactions did);
//! * from [`Live`]: `ctdb_recovery_duration_seconds` (histogram,
//!   `START_RECOVERY` to `END_RECOVERY` on this node),
//!   `ctdb_last_recovery_duration_seconds`, `ctdb_lock_wait_seconds`
//!   (histogram of record-lock waits, CTDB's lock buckets),
//!   `ctdb_control_duration_seconds{control}` (histogram, arrival to
//!   reply of each control this daemon answers), `ctdb_queue_bytes{peer}`
//!   (bytes waiting to be written to clients and to nodes, sampled every
//!   100 ms);
//! * `ctdb_up`: 1 when the daemon answered the scrape's controls (0, and
//!   nothing else, when it did not).
//!
//! The responder is deliberately small: one request per connection
//! (`Connection: close`), a request head of at most 8 KiB read within
//! 5 s, at most [`MAX_CONNECTIONS`] connections at a time; anything but
//! `GET /metrics` gets 404 or 405 (400 for a head that is not HTTP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, db_flags, node_flags};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request head read.
const MAX_HEAD: usize = 8192;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon has to answer a scrape's controls.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What only the metrics record, filled by the event loop as things
/// happen (through [`crate::stats::Stats`]) and read by the scrapes: the
/// loop only ever touches atomics and uncontended locks here, never waits
/// for a scrape.
#[derive(Debug)]
pub struct Live {
    recovery_seconds: Histogram,
    last_recovery_seconds: Gauge<f64, AtomicU64>,
    lock_wait_seconds: Histogram,
    control_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    db_migrations: Family<Labels, Counter<u64>>,
    db_commit_updates: Family<Labels, Counter<u64>>,
    db_commit_transactions: Family<Labels, Counter<u64>>,
    db_commit_syncs: Family<Labels, Counter<u64>>,
    queue_bytes: Family<Labels, Gauge<i64>>,
}

/// Record-lock waits: CTDB's lock-latency buckets.
const LOCK_BUCKETS: [f64; 10] = [0.001, 0.01, 0.1, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const CONTROL_BUCKETS: [f64; 11] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];
const RECOVERY_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];

fn control_histogram() -> Histogram {
    Histogram::new(CONTROL_BUCKETS)
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    pub fn new() -> Live {
        Live {
            recovery_seconds: Histogram::new(RECOVERY_BUCKETS),
            last_recovery_seconds: Gauge::default(),
            lock_wait_seconds: Histogram::new(LOCK_BUCKETS),
            control_seconds: Family::new_with_constructor(control_histogram),
            db_migrations: Family::default(),
            db_commit_updates: Family::default(),
            db_commit_transactions: Family::default(),
            db_commit_syncs: Family::default(),
            queue_bytes: Family::default(),
        }
    }

    /// A recovery took `secs`.
    pub fn recovery(&self, secs: f64) {
        self.recovery_seconds.observe(secs);
        self.last_recovery_seconds.set(secs);
    }

    /// A record-lock request waited `secs` for its lock.
    pub fn lock_wait(&self, secs: f64) {
        self.lock_wait_seconds.observe(secs);
    }

    /// Control `name` took `secs` from its arrival to its reply.
    pub fn control(&self, name: &str, secs: f64) {
        self.control_seconds
            .get_or_create(&labels(&[("control", name)]))
            .observe(secs);
    }

    /// A record of database `db` migrated here.
    pub fn migration(&self, db: &str) {
        self.db_migrations
            .get_or_create(&labels(&[("db", db)]))
            .inc();
    }

    /// A batch of `updates` `UPDATE_RECORD`s of database `db` took
    /// `transactions` tdb transactions and `syncs` data syncs.
    pub fn commit_batch(&self, db: &str, updates: u64, transactions: u64, syncs: u64) {
        let l = labels(&[("db", db)]);
        self.db_commit_updates.get_or_create(&l).inc_by(updates);
        self.db_commit_transactions
            .get_or_create(&l)
            .inc_by(transactions);
        self.db_commit_syncs.get_or_create(&l).inc_by(syncs);
    }

    /// Bytes waiting to be written to clients and to nodes.
    pub fn queues(&self, clients: u64, nodes: u64) {
        for (peer, v) in [("client", clients), ("node", nodes)] {
            self.queue_bytes
                .get_or_create(&labels(&[("peer", peer)]))
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    fn register(&self, reg: &mut Registry) {
        reg.register(
            "recovery_duration_seconds",
            "Recoveries by how long they took (START_RECOVERY to END_RECOVERY)",
            self.recovery_seconds.clone(),
        );
        reg.register(
            "last_recovery_duration_seconds",
            "How long the last recovery took",
            self.last_recovery_seconds.clone(),
        );
        reg.register(
            "lock_wait_seconds",
            "Record-lock requests by how long they waited for a lock a client held",
            self.lock_wait_seconds.clone(),
        );
        reg.register(
            "control_duration_seconds",
            "Controls answered by this daemon, by control, from arrival to reply",
            self.control_seconds.clone(),
        );
        reg.register(
            "db_migrations",
            "Records of a volatile database that migrated to this node",
            self.db_migrations.clone(),
        );
        reg.register(
            "db_commit_updates",
            "UPDATE_RECORDs (a persistent commit's write on this node) applied here",
            self.db_commit_updates.clone(),
        );
        reg.register(
            "db_commit_transactions",
            "tdb transactions the UPDATE_RECORDs were applied in (group commit shares one)",
            self.db_commit_transactions.clone(),
        );
        reg.register(
            "db_commit_syncs",
            "Data syncs (fdatasync) done by the UPDATE_RECORDs' transactions",
            self.db_commit_syncs.clone(),
        );
        reg.register(
            "queue_bytes",
            "Bytes waiting to be written, to clients and to nodes",
            self.queue_bytes.clone(),
        );
    }
}

/// Binds `addr` and serves `/metrics` from the daemon at `socket` in the
/// background; `live` holds what the loop records for the metrics.
pub async fn spawn(addr: SocketAddr, socket: PathBuf, live: Arc<Live>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!("Serving metrics on http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let socket = socket.clone();
            let live = live.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(conn, &socket, &live).await {
                    debug!("metrics: {peer}: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

/// Answers one request on `conn`.
async fn serve(mut conn: TcpStream, socket: &std::path::Path, live: &Live) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(h) => h?,
        Err(_) => return Ok(()),
    };
    let (status, ctype, body) = match route(&head) {
        Route::Metrics => ("200 OK", CONTENT_TYPE, scrape(socket, live).await),
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
        Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads until the end of the request head (or [`MAX_HEAD`] bytes, or
/// end of file).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// What the request line of `head` asks for.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Route::NotFound;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    Route::Metrics
}

/// The exposition of one scrape.
async fn scrape(socket: &std::path::Path, live: &Live) -> String {
    let mut reg = Registry::with_prefix("ctdb");
    let up = Gauge::<i64>::default();
    reg.register("up", "Whether the daemon answered this scrape", up.clone());
    match Client::connect(socket).await {
        Ok(c) => {
            let c = c.with_timeout(CONTROL_TIMEOUT);
            match collect(&c, &mut reg).await {
                Ok(()) => {
                    up.set(1);
                    live.register(&mut reg);
                }
                Err(e) => debug!("metrics: scrape failed: {e}"),
            }
        }
        Err(e) => debug!("metrics: cannot connect to the daemon: {e}"),
    }
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out = "# EOF\n".into();
    }
    out
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u32) {
    let c = Counter::<u64>::default();
    c.inc_by(u64::from(v));
    reg.register(name, help, c);
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Fills `reg` from the daemon's answers; nothing is registered unless
/// every control answered.
async fn collect(c: &Client, reg: &mut Registry) -> Result<(), ctdb_client::ClientError> {
    let me = CTDB_CURRENT_NODE;
    let pnn = c.get_pnn(me).await?;
    let nodemap = c.get_nodemap(me).await?;
    let dbmap = c.get_dbmap(me).await?;
    let recmode = c.get_recmode(me).await?;
    let vnnmap = c.get_vnnmap(me).await?;
    let s = c.statistics(me).await?;

    gauge(reg, "pnn", "This node's PNN", i64::from(pnn));
    let flags = Family::<Labels, Gauge<i64>>::default();
    for n in &nodemap.nodes {
        let p = n.pnn.to_string();
        for (name, bit) in [
            ("disconnected", node_flags::DISCONNECTED),
            ("unhealthy", node_flags::UNHEALTHY),
            ("disabled", node_flags::PERMANENTLY_DISABLED),
            ("banned", node_flags::BANNED),
            ("deleted", node_flags::DELETED),
            ("stopped", node_flags::STOPPED),
        ] {
            flags
                .get_or_create(&labels(&[("pnn", &p), ("flag", name)]))
                .set(i64::from(n.flags & bit != 0));
        }
    }
    reg.register(
        "node_flag",
        "Node flags as this node sees them (1 set, 0 clear)",
        flags,
    );
    gauge(
        reg,
        "recovery_mode",
        "Recovery mode (1 active, 0 normal)",
        i64::from(recmode == CTDB_RECOVERY_ACTIVE),
    );
    gauge(
        reg,
        "generation",
        "The cluster's generation (vnn map)",
        i64::from(vnnmap.generation),
    );

    let dbs = Family::<Labels, Gauge<i64>>::default();
    for kind in ["volatile", "persistent", "replicated"] {
        dbs.get_or_create(&labels(&[("kind", kind)])).set(0);
    }
    for d in &dbmap.dbs {
        let kind = if d.flags & db_flags::PERSISTENT != 0 {
            "persistent"
        } else if d.flags & db_flags::REPLICATED != 0 {
            "replicated"
        } else {
            "volatile"
        };
        dbs.get_or_create(&labels(&[("kind", kind)])).inc();
    }
    reg.register("databases", "Attached databases by kind", dbs);

    gauge(
        reg,
        "clients",
        "Connected clients",
        i64::from(s.num_clients),
    );
    gauge(
        reg,
        "frozen",
        "Whether databases are frozen",
        i64::from(s.frozen),
    );
    gauge(
        reg,
        "pending_calls",
        "Calls in progress",
        i64::from(s.pending_calls),
    );
    gauge(
        reg,
        "lock_current",
        "Record locks held by lock requests now",
        i64::from(s.locks.num_current),
    );
    gauge(
        reg,
        "lock_pending",
        "Lock requests waiting now",
        i64::from(s.locks.num_pending),
    );

    counter(reg, "recoveries", "Recoveries run", s.num_recoveries);
    counter(reg, "calls", "Record calls handled", s.total_calls);
    counter(reg, "lock_calls", "Record lock requests", s.locks.num_calls);
    counter(
        reg,
        "lock_failed",
        "Record lock requests that failed",
        s.locks.num_failed,
    );

    let packets = Family::<Labels, Counter<u64>>::default();
    for (peer, dir, v) in [
        ("client", "sent", s.client_packets_sent),
        ("client", "received", s.client_packets_recv),
        ("node", "sent", s.node_packets_sent),
        ("node", "received", s.node_packets_recv),
        ("keepalive", "sent", s.keepalive_packets_sent),
        ("keepalive", "received", s.keepalive_packets_recv),
    ] {
        packets
            .get_or_create(&labels(&[("peer", peer), ("direction", dir)]))
            .inc_by(u64::from(v));
    }
    reg.register("packets", "Packets by peer and direction", packets);

    let n = &s.node;
    let node_req = Family::<Labels, Counter<u64>>::default();
    for (t, v) in [
        ("req_call", n.req_call),
        ("reply_call", n.reply_call),
        ("req_dmaster", n.req_dmaster),
        ("reply_dmaster", n.reply_dmaster),
        ("reply_error", n.reply_error),
        ("req_message", n.req_message),
        ("req_control", n.req_control),
        ("reply_control", n.reply_control),
        ("req_tunnel", n.req_tunnel),
    ] {
        node_req
            .get_or_create(&labels(&[("type", t)]))
            .inc_by(u64::from(v));
    }
    reg.register(
        "node_requests",
        "Packets from other nodes by type",
        node_req,
    );

    let cl = &s.client;
    let client_req = Family::<Labels, Counter<u64>>::default();
    for (t, v) in [
        ("req_call", cl.req_call),
        ("req_message", cl.req_message),
        ("req_control", cl.req_control),
        ("req_tunnel", cl.req_tunnel),
    ] {
        client_req
            .get_or_create(&labels(&[("type", t)]))
            .inc_by(u64::from(v));
    }
    reg.register(
        "client_requests",
        "Requests from clients by type",
        client_req,
    );

    let timeouts = Family::<Labels, Counter<u64>>::default();
    for (t, v) in [
        ("call", s.timeouts.call),
        ("control", s.timeouts.control),
        ("traverse", s.timeouts.traverse),
    ] {
        timeouts
            .get_or_create(&labels(&[("type", t)]))
            .inc_by(u64::from(v));
    }
    reg.register("timeouts", "Timeouts by type", timeouts);
    counter(
        reg,
        "childwrites",
        "Persistent commits written here (UPDATE_RECORD)",
        s.childwrite_calls,
    );
    counter(
        reg,
        "max_hop_count",
        "Most hops a record call took to reach its dmaster",
        s.max_hop_count,
    );

    // Per database, from its statistics (GET_DB_STATISTICS).
    let db_calls = Family::<Labels, Counter<u64>>::default();
    let db_locks = Family::<Labels, Counter<u64>>::default();
    let db_lock_failed = Family::<Labels, Counter<u64>>::default();
    let db_hot = Family::<Labels, Gauge<i64>>::default();
    for d in &dbmap.dbs {
        let name = c.get_dbname(me, d.db_id).await?;
        let ds = c.get_db_statistics(me, d.db_id).await?;
        let l = labels(&[("db", &name)]);
        let calls: u64 = ds.hop_count_bucket.iter().map(|&v| u64::from(v)).sum();
        db_calls.get_or_create(&l).inc_by(calls);
        db_locks
            .get_or_create(&l)
            .inc_by(u64::from(ds.locks.num_calls));
        db_lock_failed
            .get_or_create(&l)
            .inc_by(u64::from(ds.locks.num_failed));
        let hottest = ds.hot_keys.iter().map(|k| k.count).max().unwrap_or(0);
        db_hot.get_or_create(&l).set(i64::from(hottest));
    }
    reg.register(
        "db_calls",
        "Record calls this node answered as the record's dmaster, by database",
        db_calls,
    );
    reg.register(
        "db_lock_calls",
        "Record-lock requests that waited for a lock, by database",
        db_locks,
    );
    reg.register(
        "db_lock_failed",
        "Record-lock requests that failed, by database",
        db_lock_failed,
    );
    reg.register(
        "db_hot_key_count",
        "The hottest key's migrations in a row (the first hot key of ctdb dbstatistics), by database",
        db_hot,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"garbage\r\n\r\n"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
        assert_eq!(route(b"GET /metrics SPDY\r\n\r\n"), Route::Bad);
        assert_eq!(route(&[0xff, 0xfe, b'\n']), Route::Bad);
    }
}
