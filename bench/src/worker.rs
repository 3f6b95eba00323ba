//! Worker processes: each connects to one node's daemon, waits for the
//! common start time, runs its loop until the end time, and prints one JSON
//! line with its counts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ctdb_client::{Client, DbKind, Update};
use serde::{Deserialize, Serialize};

/// Srvid the ring workloads pass their tokens on (test range).
pub const SRVID_RING: u64 = 0xAE00_0000_0000_0001;
pub const SRVID_MSGRING: u64 = 0xAE00_0000_0000_0002;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Pass one record around the nodes, incrementing it (fetch_ring).
    Ring,
    /// Increment random keys under fetch-lock.
    Contend,
    /// Persistent transactions incrementing a key.
    Trans,
    /// Pass two messages around the nodes in opposite directions.
    Msgring,
    /// Hold idle connections until stdin closes.
    Idle,
    /// Ping the local daemon.
    Ping,
    /// Create records in a volatile database.
    Load,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(value_enum)]
    pub kind: Kind,
    #[arg(long)]
    pub socket: std::path::PathBuf,
    /// This worker's number (node index for ring workloads).
    #[arg(long, default_value_t = 0)]
    pub id: u32,
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Start time, microseconds since the epoch.
    #[arg(long, default_value_t = 0)]
    pub start_at: u64,
    #[arg(long, default_value_t = 0)]
    pub warmup_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub measure_ms: u64,
    #[arg(long, default_value = "bench.tdb")]
    pub db: String,
    /// Number of keys (contend), records (load), connections (idle),
    /// minimum client count (ping).
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Transactions: each worker uses its own key.
    #[arg(long)]
    pub disjoint: bool,
    /// Transactions: take the g_lock exactly as CTDB's client library
    /// does (retry every millisecond) instead of our client's queue.
    #[arg(long)]
    pub ctdb_glock: bool,
    /// Transactions: attach the database as in-memory persistent (ctdb-rs
    /// extension) instead of persistent.
    #[arg(long)]
    pub inmemory: bool,
    /// Transactions: attach the database as keyed (ctdb-rs extension) and
    /// take per-key transactions on the worker's key.
    #[arg(long)]
    pub keyed: bool,
    /// Concurrent operations in flight (load).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Ring workloads: which of several rings running at once (each has
    /// its own record and srvid).
    #[arg(long, default_value_t = 0)]
    pub ring: u32,
}

/// Ring `ring`'s srvid, based on `base` (ring 0 uses `base` itself).
pub fn ring_srvid(base: u64, ring: u32) -> u64 {
    base + (u64::from(ring) << 8)
}

/// Ring `ring`'s record key (ring 0's is `ring`).
pub fn ring_key(ring: u32) -> Vec<u8> {
    if ring == 0 {
        b"ring".to_vec()
    } else {
        format!("ring{ring}").into_bytes()
    }
}

/// What a worker prints.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Report {
    /// Operations over the whole run.
    pub ops_total: u64,
    /// Operations inside the measurement window.
    pub ops_window: u64,
    pub migrations: u64,
    /// Latencies inside the window, in microseconds: p50 and p99.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Problems the worker saw (lost or duplicated messages, bad replies).
    pub errors: Vec<String>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The run's phases as instants of this process.
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn new(a: &WorkerArgs) -> Window {
        let wait = a.start_at.saturating_sub(now_us());
        let start = Instant::now() + Duration::from_micros(wait);
        let measure_from = start + Duration::from_millis(a.warmup_ms);
        Window {
            start,
            measure_from,
            end: measure_from + Duration::from_millis(a.measure_ms),
        }
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }

    fn over(&self) -> bool {
        Instant::now() >= self.end
    }
}

fn percentiles(mut v: Vec<u64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_unstable();
    let p = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)] as f64;
    (p(50), p(99))
}

fn get_u64(d: &[u8]) -> u64 {
    d.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

pub fn run(a: WorkerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        match a.kind {
            Kind::Idle => idle(&a).await,
            _ => {
                let c = Client::connect(&a.socket).await.context("connecting")?;
                match a.kind {
                    Kind::Ring => ring(&a, &c).await,
                    Kind::Contend => contend(&a, &c).await,
                    Kind::Trans => trans(&a, &c).await,
                    Kind::Msgring => msgring(&a, &c).await,
                    Kind::Ping => ping(&a, &c).await,
                    Kind::Load => load(&a, &c).await,
                    Kind::Idle => unreachable!(),
                }
            }
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn ring(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let db = c.attach(&a.db, DbKind::Volatile, 0).await?;
    let srvid = ring_srvid(SRVID_RING, a.ring);
    let key = ring_key(a.ring);
    let mut rx = c.register_srvid(srvid).await?;
    let w = Window::new(a);
    tokio::time::sleep_until(w.start.into()).await;
    let next = (c.pnn() + 1) % a.nodes;
    let mut r = Report::default();
    if a.id == 0 {
        ring_hop(&db, &key, &mut r, &w).await?;
        c.send_message(next, srvid, b"")?;
    }
    loop {
        tokio::select! {
            m = rx.recv() => {
                if m.is_none() { anyhow::bail!("connection lost"); }
                if w.over() { break; }
                ring_hop(&db, &key, &mut r, &w).await?;
                c.send_message(next, srvid, b"")?;
            }
            _ = tokio::time::sleep_until(w.end.into()) => break,
        }
    }
    r.migrations = db.migrations();
    Ok(r)
}

async fn ring_hop(db: &ctdb_client::Db, key: &[u8], r: &mut Report, w: &Window) -> Result<()> {
    db.fetch_lock(key, |rec| {
        (
            Update::Store((get_u64(&rec.data) + 1).to_le_bytes().to_vec()),
            (),
        )
    })
    .await?;
    r.ops_total += 1;
    if w.in_window(Instant::now()) {
        r.ops_window += 1;
    }
    Ok(())
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn contend(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let db = c.attach(&a.db, DbKind::Volatile, 0).await?;
    let w = Window::new(a);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((a.id as u64 + 1) << 20) ^ now_us());
    let mut r = Report::default();
    tokio::time::sleep_until(w.start.into()).await;
    let mut mig_at_window = None;
    while !w.over() {
        let key = format!("key{}", rng.next() % a.count);
        db.fetch_lock(key.as_bytes(), |rec| {
            (
                Update::Store((get_u64(&rec.data) + 1).to_le_bytes().to_vec()),
                (),
            )
        })
        .await?;
        r.ops_total += 1;
        let now = Instant::now();
        if w.in_window(now) {
            if mig_at_window.is_none() {
                mig_at_window = Some(db.migrations());
            }
            r.ops_window += 1;
        }
    }
    r.migrations = db.migrations() - mig_at_window.unwrap_or(0);
    Ok(r)
}

async fn trans(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let kind = if a.keyed {
        DbKind::Keyed
    } else if a.inmemory {
        DbKind::InMemory
    } else {
        DbKind::Persistent
    };
    let db = c.attach(&a.db, kind, 0).await?;
    let key = if a.disjoint {
        format!("key{}", a.id)
    } else {
        "key".to_owned()
    };
    let w = Window::new(a);
    let mut r = Report::default();
    let mut lat = Vec::new();
    tokio::time::sleep_until(w.start.into()).await;
    while !w.over() {
        let t0 = Instant::now();
        if a.keyed {
            let mut t = db.keyed_transaction(&[key.as_bytes()]).await?;
            let v = t.fetch(key.as_bytes())?.map_or(0, |v| get_u64(&v));
            t.store(key.as_bytes(), &(v + 1).to_le_bytes())?;
            t.commit().await?;
        } else {
            let mut t = if a.ctdb_glock {
                db.transaction_start_ctdb_style(false).await?
            } else {
                db.transaction_start(false).await?
            };
            let v = t.fetch(key.as_bytes())?.map_or(0, |v| get_u64(&v));
            t.store(key.as_bytes(), &(v + 1).to_le_bytes())?;
            t.commit().await?;
        }
        r.ops_total += 1;
        if w.in_window(t0) {
            r.ops_window += 1;
            lat.push(t0.elapsed().as_micros() as u64);
        }
    }
    (r.p50_us, r.p99_us) = percentiles(lat);
    Ok(r)
}

async fn msgring(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let srvid = ring_srvid(SRVID_MSGRING, a.ring);
    let mut rx = c.register_srvid(srvid).await?;
    let w = Window::new(a);
    let mut r = Report::default();
    tokio::time::sleep_until(w.start.into()).await;
    let n = a.nodes;
    let me = c.pnn();
    let next = |dir: i8| {
        if dir > 0 {
            (me + 1) % n
        } else {
            (me + n - 1) % n
        }
    };
    let send = |dir: i8, seq: u64| {
        let mut m = vec![dir as u8];
        m.extend_from_slice(&seq.to_le_bytes());
        c.send_message(next(dir), srvid, &m)
    };
    if a.id == 0 {
        send(1, 1)?;
        send(-1, 1)?;
    }
    // The last sequence number seen per direction: a token returns to a
    // node every `n` hops, so anything else is a lost or repeated message.
    let mut last: [Option<u64>; 2] = [None, None];
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { anyhow::bail!("connection lost") };
                if m.data.len() != 9 {
                    r.errors.push(format!("message of {} bytes", m.data.len()));
                    continue;
                }
                let dir = m.data[0] as i8;
                let seq = get_u64(&m.data[1..]);
                let slot = usize::from(dir < 0);
                if let Some(prev) = last[slot].filter(|&p| seq != p + n as u64) {
                    r.errors.push(format!("direction {dir}: sequence {seq} after {prev}"));
                }
                last[slot] = Some(seq);
                r.ops_total += 1;
                if w.in_window(Instant::now()) {
                    r.ops_window += 1;
                }
                if w.over() { break; }
                send(dir, seq + 1)?;
            }
            _ = tokio::time::sleep_until(w.end.into()) => break,
        }
    }
    Ok(r)
}

async fn idle(a: &WorkerArgs) -> Result<Report> {
    raise_fd_limit();
    let mut conns = Vec::with_capacity(a.count as usize);
    for _ in 0..a.count {
        // The daemon's listen backlog may be full for a moment.
        let mut tries = 0;
        let s = loop {
            match tokio::net::UnixStream::connect(&a.socket).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 1000 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        conns.push(s);
    }
    println!("ready");
    // Hold the connections until the coordinator closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    drop(conns);
    Ok(Report {
        ops_total: a.count,
        ..Default::default()
    })
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn ping(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let w = Window::new(a);
    let mut r = Report::default();
    let mut lat = Vec::new();
    tokio::time::sleep_until(w.start.into()).await;
    while !w.over() {
        let t0 = Instant::now();
        let clients = c.ping(ctdb_protocol::header::CTDB_CURRENT_NODE).await?;
        let us = t0.elapsed().as_micros() as u64;
        if (clients as u64) < a.count && r.errors.len() < 5 {
            r.errors.push(format!(
                "ping reported {clients} clients, expected at least {}",
                a.count
            ));
        }
        r.ops_total += 1;
        if w.in_window(t0) {
            r.ops_window += 1;
            lat.push(us);
        }
    }
    (r.p50_us, r.p99_us) = percentiles(lat);
    Ok(r)
}

async fn load(a: &WorkerArgs, c: &Client) -> Result<Report> {
    let db = c.attach(&a.db, DbKind::Volatile, 0).await?;
    let value = vec![0x5Au8; 100];
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let total = a.count;
    let id = a.id;
    let tasks = (0..a.parallel.max(1)).map(|_| {
        let db = db.clone();
        let value = value.clone();
        let next = next.clone();
        async move {
            loop {
                let i = next.get();
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                next.set(i + 1);
                let key = format!("rec{id}-{i}");
                let v = value.clone();
                db.fetch_lock(key.as_bytes(), move |_| (Update::Store(v), ()))
                    .await?;
            }
        }
    });
    for r in futures::future::join_all(tasks).await {
        r?;
    }
    Ok(Report {
        ops_total: total,
        ops_window: total,
        migrations: db.migrations(),
        ..Default::default()
    })
}
