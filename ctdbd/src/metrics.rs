//! An opt-in Prometheus endpoint: with `[ctdb-rs] metrics address =
//! IP:PORT` in `ctdb.conf`, the daemon answers `GET /metrics` on that
//! address with the node's state in the OpenMetrics text format (which
//! Prometheus scrapes), encoded by the `prometheus-client` crate.
//!
//! It never touches the event loop's state: like the recovery daemon, a
//! scrape is a client of the daemon's own socket (`GET_PNN`,
//! `GET_NODEMAP`, `GET_DBMAP`, `GET_RECMODE`, `GET_VNNMAP`,
//! `GET_STATISTICS`), answered by the loop like any client's controls, in
//! a task of its own. What it exports:
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
use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, db_flags, node_flags};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Binds `addr` and serves `/metrics` from the daemon at `socket` in the
/// background.
pub async fn spawn(addr: SocketAddr, socket: PathBuf) -> std::io::Result<()> {
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
            tokio::spawn(async move {
                if let Err(e) = serve(conn, &socket).await {
                    debug!("metrics: {peer}: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

/// Answers one request on `conn`.
async fn serve(mut conn: TcpStream, socket: &std::path::Path) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(h) => h?,
        Err(_) => return Ok(()),
    };
    let (status, ctype, body) = match route(&head) {
        Route::Metrics => ("200 OK", CONTENT_TYPE, scrape(socket).await),
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
async fn scrape(socket: &std::path::Path) -> String {
    let mut reg = Registry::with_prefix("ctdb");
    let up = Gauge::<i64>::default();
    reg.register("up", "Whether the daemon answered this scrape", up.clone());
    match Client::connect(socket).await {
        Ok(c) => {
            let c = c.with_timeout(CONTROL_TIMEOUT);
            match collect(&c, &mut reg).await {
                Ok(()) => {
                    up.set(1);
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
