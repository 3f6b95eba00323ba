//! Statistics: daemon-wide (`STATISTICS`, `GET_STAT_HISTORY`), per database
//! (`GET_DB_STATISTICS`) and uptime.

use super::Timeval;
use crate::error::Result;
use crate::marshal::{Marshal, Reader, Writer, wire_u32};

/// Number of histogram buckets in lock and hop-count statistics.
pub const MAX_COUNT_BUCKETS: usize = 16;
/// Number of hot keys tracked per database.
pub const MAX_HOT_KEYS: usize = 10;

/// `ctdb_latency_counter`: count, then min/max/total seconds (i32, 4 bytes
/// padding, three doubles).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyCounter {
    pub num: i32,
    pub min: f64,
    pub max: f64,
    pub total: f64,
}

impl LatencyCounter {
    pub const WIRE_SIZE: usize = 32;

    /// Records one sample of `secs` seconds.
    pub fn record(&mut self, secs: f64) {
        if self.num == 0 || secs < self.min {
            self.min = secs;
        }
        if secs > self.max {
            self.max = secs;
        }
        self.total += secs;
        self.num = self.num.saturating_add(1);
    }
}

impl Marshal for LatencyCounter {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i32(self.num);
        w.pad(4);
        w.f64(self.min);
        w.f64(self.max);
        w.f64(self.total);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let num = r.i32("latency num")?;
        r.pad(4, "latency padding")?;
        let min = r.f64("latency min")?;
        let max = r.f64("latency max")?;
        let total = r.f64("latency total")?;
        Ok((
            LatencyCounter {
                num,
                min,
                max,
                total,
            },
            r.pos(),
        ))
    }
}

fn put_buckets(w: &mut Writer<'_>, b: &[u32; MAX_COUNT_BUCKETS]) {
    for &v in b {
        w.u32(v);
    }
}

fn get_buckets(r: &mut Reader<'_>, what: &'static str) -> Result<[u32; MAX_COUNT_BUCKETS]> {
    let mut b = [0u32; MAX_COUNT_BUCKETS];
    for v in &mut b {
        *v = r.u32(what)?;
    }
    Ok(b)
}

/// Packets received from other nodes, by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCounters {
    pub req_call: u32,
    pub reply_call: u32,
    pub req_dmaster: u32,
    pub reply_dmaster: u32,
    pub reply_error: u32,
    pub req_message: u32,
    pub req_control: u32,
    pub reply_control: u32,
    pub req_tunnel: u32,
}

/// Packets received from clients, by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCounters {
    pub req_call: u32,
    pub req_message: u32,
    pub req_control: u32,
    pub req_tunnel: u32,
}

/// Requests that timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeoutCounters {
    pub call: u32,
    pub control: u32,
    pub traverse: u32,
}

/// Record-lock statistics, daemon-wide or per database.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LockStats {
    pub num_calls: u32,
    pub num_current: u32,
    pub num_pending: u32,
    pub num_failed: u32,
    pub latency: LatencyCounter,
    pub buckets: [u32; MAX_COUNT_BUCKETS],
}

impl LockStats {
    fn put(&self, w: &mut Writer<'_>) {
        w.u32(self.num_calls);
        w.u32(self.num_current);
        w.u32(self.num_pending);
        w.u32(self.num_failed);
        w.put(&self.latency);
        put_buckets(w, &self.buckets);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(LockStats {
            num_calls: r.u32("locks num_calls")?,
            num_current: r.u32("locks num_current")?,
            num_pending: r.u32("locks num_pending")?,
            num_failed: r.u32("locks num_failed")?,
            latency: r.get()?,
            buckets: get_buckets(r, "locks buckets")?,
        })
    }
}

/// `ctdb_statistics`: the daemon's counters, 488 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Statistics {
    pub num_clients: u32,
    pub frozen: u32,
    pub recovering: u32,
    pub client_packets_sent: u32,
    pub client_packets_recv: u32,
    pub node_packets_sent: u32,
    pub node_packets_recv: u32,
    pub keepalive_packets_sent: u32,
    pub keepalive_packets_recv: u32,
    pub node: NodeCounters,
    pub client: ClientCounters,
    pub timeouts: TimeoutCounters,
    pub reclock_ctdbd: LatencyCounter,
    pub reclock_recd: LatencyCounter,
    pub locks: LockStats,
    pub total_calls: u32,
    pub pending_calls: u32,
    pub childwrite_calls: u32,
    pub pending_childwrite_calls: u32,
    pub memory_used: u32,
    pub last_counter: u32,
    pub max_hop_count: u32,
    pub hop_count_bucket: [u32; MAX_COUNT_BUCKETS],
    pub call_latency: LatencyCounter,
    pub childwrite_latency: LatencyCounter,
    pub num_recoveries: u32,
    pub statistics_start_time: Timeval,
    pub statistics_current_time: Timeval,
    pub total_ro_delegations: u32,
    pub total_ro_revokes: u32,
}

impl Statistics {
    pub const WIRE_SIZE: usize = 488;
}

impl Marshal for Statistics {
    fn len(&self) -> usize {
        Self::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        for v in [
            self.num_clients,
            self.frozen,
            self.recovering,
            self.client_packets_sent,
            self.client_packets_recv,
            self.node_packets_sent,
            self.node_packets_recv,
            self.keepalive_packets_sent,
            self.keepalive_packets_recv,
        ] {
            w.u32(v);
        }
        let n = &self.node;
        for v in [
            n.req_call,
            n.reply_call,
            n.req_dmaster,
            n.reply_dmaster,
            n.reply_error,
            n.req_message,
            n.req_control,
            n.reply_control,
            n.req_tunnel,
        ] {
            w.u32(v);
        }
        let c = &self.client;
        for v in [c.req_call, c.req_message, c.req_control, c.req_tunnel] {
            w.u32(v);
        }
        let t = &self.timeouts;
        for v in [t.call, t.control, t.traverse] {
            w.u32(v);
        }
        w.pad(4);
        w.put(&self.reclock_ctdbd);
        w.put(&self.reclock_recd);
        self.locks.put(&mut w);
        for v in [
            self.total_calls,
            self.pending_calls,
            self.childwrite_calls,
            self.pending_childwrite_calls,
            self.memory_used,
            self.last_counter,
            self.max_hop_count,
        ] {
            w.u32(v);
        }
        put_buckets(&mut w, &self.hop_count_bucket);
        w.pad(4);
        w.put(&self.call_latency);
        w.put(&self.childwrite_latency);
        w.u32(self.num_recoveries);
        w.pad(4);
        w.put(&self.statistics_start_time);
        w.put(&self.statistics_current_time);
        w.u32(self.total_ro_delegations);
        w.u32(self.total_ro_revokes);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let w = "statistics";
        let mut s = Statistics {
            num_clients: r.u32(w)?,
            frozen: r.u32(w)?,
            recovering: r.u32(w)?,
            client_packets_sent: r.u32(w)?,
            client_packets_recv: r.u32(w)?,
            node_packets_sent: r.u32(w)?,
            node_packets_recv: r.u32(w)?,
            keepalive_packets_sent: r.u32(w)?,
            keepalive_packets_recv: r.u32(w)?,
            node: NodeCounters {
                req_call: r.u32(w)?,
                reply_call: r.u32(w)?,
                req_dmaster: r.u32(w)?,
                reply_dmaster: r.u32(w)?,
                reply_error: r.u32(w)?,
                req_message: r.u32(w)?,
                req_control: r.u32(w)?,
                reply_control: r.u32(w)?,
                req_tunnel: r.u32(w)?,
            },
            client: ClientCounters {
                req_call: r.u32(w)?,
                req_message: r.u32(w)?,
                req_control: r.u32(w)?,
                req_tunnel: r.u32(w)?,
            },
            timeouts: TimeoutCounters {
                call: r.u32(w)?,
                control: r.u32(w)?,
                traverse: r.u32(w)?,
            },
            ..Default::default()
        };
        r.pad(4, w)?;
        s.reclock_ctdbd = r.get()?;
        s.reclock_recd = r.get()?;
        s.locks = LockStats::get(&mut r)?;
        s.total_calls = r.u32(w)?;
        s.pending_calls = r.u32(w)?;
        s.childwrite_calls = r.u32(w)?;
        s.pending_childwrite_calls = r.u32(w)?;
        s.memory_used = r.u32(w)?;
        s.last_counter = r.u32(w)?;
        s.max_hop_count = r.u32(w)?;
        s.hop_count_bucket = get_buckets(&mut r, w)?;
        r.pad(4, w)?;
        s.call_latency = r.get()?;
        s.childwrite_latency = r.get()?;
        s.num_recoveries = r.u32(w)?;
        r.pad(4, w)?;
        s.statistics_start_time = r.get()?;
        s.statistics_current_time = r.get()?;
        s.total_ro_delegations = r.u32(w)?;
        s.total_ro_revokes = r.u32(w)?;
        Ok((s, r.pos()))
    }
}

/// `ctdb_statistics_list`: the statistics history (`GET_STAT_HISTORY`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatisticsList {
    pub stats: Vec<Statistics>,
}

impl Marshal for StatisticsList {
    fn len(&self) -> usize {
        8 + self.stats.len() * Statistics::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(wire_u32(self.stats.len()));
        w.pad(4);
        for s in &self.stats {
            w.put(s);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let n = r.i32("statistics list count")?.max(0) as usize;
        r.pad(4, "statistics list padding")?;
        r.check_count(n, Statistics::WIRE_SIZE, "statistics list count")?;
        let mut stats = Vec::with_capacity(n);
        for _ in 0..n {
            stats.push(r.get()?);
        }
        Ok((StatisticsList { stats }, r.pos()))
    }
}

/// One hot key of a database: how often it was fetched, and the key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HotKey {
    pub count: u32,
    /// The sender's in-memory pointer to the key. Meaningless to anyone
    /// else, but CTDB puts it on the wire, so it is kept to re-encode
    /// received statistics byte for byte. Ours sends 0.
    pub sender_ptr: u64,
    pub key: Vec<u8>,
}

/// `ctdb_db_statistics`: per-database counters and hot keys.
///
/// After the counters come [`MAX_HOT_KEYS`] fixed slots (count, padding and
/// the sender's `TDB_DATA` structure: pointer and size), then the keys'
/// bytes back to back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DbStatistics {
    pub locks: LockStats,
    pub vacuum_latency: LatencyCounter,
    pub db_ro_delegations: u32,
    pub db_ro_revokes: u32,
    pub hop_count_bucket: [u32; MAX_COUNT_BUCKETS],
    /// As sent; CTDB always sends [`MAX_HOT_KEYS`].
    pub num_hot_keys: u32,
    pub hot_keys: [HotKey; MAX_HOT_KEYS],
}

const DB_STATS_FIXED: usize = 112 + 32 + 8 + 64 + 8 + MAX_HOT_KEYS * 24;

impl Marshal for DbStatistics {
    fn len(&self) -> usize {
        DB_STATS_FIXED + self.hot_keys.iter().map(|k| k.key.len()).sum::<usize>()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        self.locks.put(&mut w);
        w.put(&self.vacuum_latency);
        w.u32(self.db_ro_delegations);
        w.u32(self.db_ro_revokes);
        put_buckets(&mut w, &self.hop_count_bucket);
        w.u32(self.num_hot_keys);
        w.pad(4);
        for k in &self.hot_keys {
            w.u32(k.count);
            w.pad(4);
            w.u64(k.sender_ptr);
            w.u64(k.key.len() as u64);
        }
        for k in &self.hot_keys {
            w.bytes(&k.key);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let w = "db statistics";
        let mut s = DbStatistics {
            locks: LockStats::get(&mut r)?,
            vacuum_latency: r.get()?,
            db_ro_delegations: r.u32(w)?,
            db_ro_revokes: r.u32(w)?,
            hop_count_bucket: get_buckets(&mut r, w)?,
            num_hot_keys: r.u32(w)?,
            ..Default::default()
        };
        r.pad(4, w)?;
        let mut sizes = [0u64; MAX_HOT_KEYS];
        for (k, size) in s.hot_keys.iter_mut().zip(sizes.iter_mut()) {
            k.count = r.u32("hot key count")?;
            r.pad(4, "hot key padding")?;
            k.sender_ptr = r.u64("hot key pointer")?;
            *size = r.u64("hot key size")?;
        }
        for (k, &size) in s.hot_keys.iter_mut().zip(sizes.iter()) {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            k.key = r.bytes(size, "hot key")?.to_vec();
        }
        Ok((s, r.pos()))
    }
}

/// `ctdb_uptime`: now, daemon start, and the last recovery's start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uptime {
    pub current_time: Timeval,
    pub ctdbd_start_time: Timeval,
    pub last_recovery_started: Timeval,
    pub last_recovery_finished: Timeval,
}

impl Marshal for Uptime {
    fn len(&self) -> usize {
        4 * Timeval::WIRE_SIZE
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.put(&self.current_time);
        w.put(&self.ctdbd_start_time);
        w.put(&self.last_recovery_started);
        w.put(&self.last_recovery_finished);
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        Ok((
            Uptime {
                current_time: r.get()?,
                ctdbd_start_time: r.get()?,
                last_recovery_started: r.get()?,
                last_recovery_finished: r.get()?,
            },
            r.pos(),
        ))
    }
}
