//! Faults for randomized fault schedules against a cluster in network
//! namespaces ([`crate::netns`]), and the checks made from what the
//! daemons logged.
//!
//! A schedule is a pure function of its seed ([`Schedule`]). Each
//! [`Fault`] is applied by [`Injector::apply`] and removed by
//! [`Injector::remove`]; the injector remembers when each node was killed,
//! which [`lock_holds`] needs: a killed daemon holds nothing from then on,
//! whatever its log last said.
//!
//! [`lock_holds`] reads every node's log for the times it took the cluster
//! lock ("Cluster lock taken successfully") and let it go ("Releasing
//! cluster lock", "Cluster lock helper terminated", or being killed);
//! [`overlaps`] finds any instant at which two nodes both held it. Both
//! daemons write these lines at INFO with microsecond UTC timestamps, from
//! one clock (one machine), so the comparison is sound to within the time a
//! daemon takes to log what its helper told it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::etcd::Etcd;
use crate::{Cluster, Daemon};

/// xorshift64*: the schedule is a pure function of the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed from `CTDB_FAULT_SEED` (a number, or `random`), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("CTDB_FAULT_SEED").ok().as_deref() {
        None | Some("") => default,
        Some("random") => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
        Some(s) => s.parse().expect("CTDB_FAULT_SEED: a number or \"random\""),
    }
}

/// One fault, held for a while and then removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Node cut off from the others, both ways (a 2+1 partition).
    Isolate(usize),
    /// Node `to` hears nothing from node `from` (one way).
    OneWay { to: usize, from: usize },
    /// Every node cut off from every other (1+1+1).
    SplitAll,
    /// SIGSTOP, then SIGCONT.
    Pause(usize),
    /// SIGKILL (the daemon's process group), then started again.
    KillRestart(usize),
    /// The node drops `percent`% of what it sends and receives.
    Loss { node: usize, percent: u32 },
    /// The node's outgoing link throttled ([`crate::netns::Network::slow`]:
    /// queueing delay, as this kernel cannot add a fixed delay).
    Slow(usize),
    /// The leader's etcd member cut from its peers (the leader's link to
    /// the lock store; with the lock in a file, nothing). `None` until
    /// applied, then the node that led (`None`: nothing was cut).
    LockCut(Option<usize>),
}

impl Fault {
    /// The fault's kind, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Isolate(_) => "partition 2+1",
            Fault::OneWay { .. } => "one-way cut",
            Fault::SplitAll => "partition 1+1+1",
            Fault::Pause(_) => "SIGSTOP/SIGCONT",
            Fault::KillRestart(_) => "kill -9 + restart",
            Fault::Loss { .. } => "packet loss",
            Fault::Slow(_) => "slow link (tbf)",
            Fault::LockCut(_) => "leader cut from lock store",
        }
    }
}

/// A schedule: faults drawn from a seeded [`Rng`], every kind once in a
/// shuffled order before any kind comes again (so a short run meets every
/// kind, and a long one meets them equally often).
pub struct Schedule {
    rng: Rng,
    nodes: usize,
    kinds: u64,
    deck: Vec<u64>,
    /// A fixed list of faults (cycled) instead of random ones.
    script: Vec<(Fault, Duration)>,
    next: usize,
}

impl Schedule {
    /// Over `nodes` nodes; [`Fault::LockCut`] only when the lock is in
    /// etcd.
    pub fn new(seed: u64, nodes: usize, etcd: bool) -> Schedule {
        Schedule {
            rng: Rng(seed),
            nodes,
            kinds: if etcd { 8 } else { 7 },
            deck: Vec::new(),
            script: Vec::new(),
            next: 0,
        }
    }

    /// The faults of `script`, in order (and again from the start), each
    /// held as long as it says: a regression test replays the faults of
    /// a seeded run that found a bug without the rounds before them.
    pub fn scripted(script: Vec<(Fault, Duration)>) -> Schedule {
        assert!(!script.is_empty(), "an empty fault script");
        Schedule {
            script,
            ..Schedule::new(0, 0, false)
        }
    }

    /// The next fault and how long to hold it (3-7 s).
    pub fn next_fault(&mut self) -> (Fault, Duration) {
        if !self.script.is_empty() {
            let f = self.script[self.next % self.script.len()];
            self.next += 1;
            return f;
        }
        if self.deck.is_empty() {
            self.deck = (0..self.kinds).collect();
            for i in (1..self.deck.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.deck.swap(i, j);
            }
        }
        let kind = self.deck.pop().unwrap();
        let r = &mut self.rng;
        let n = self.nodes as u64;
        let a = r.below(n) as usize;
        let b = (a + 1 + r.below(n - 1) as usize) % self.nodes;
        let f = match kind {
            0 => Fault::Isolate(a),
            1 => Fault::OneWay { to: a, from: b },
            2 => Fault::SplitAll,
            3 => Fault::Pause(a),
            4 => Fault::KillRestart(a),
            5 => Fault::Loss {
                node: a,
                percent: 10 + 10 * r.below(4) as u32,
            },
            6 => Fault::Slow(a),
            _ => Fault::LockCut(None),
        };
        (f, Duration::from_millis(3000 + r.below(4000)))
    }
}

/// The leader node `k` reports (`None` when it does not answer).
pub fn leader_seen_by(c: &Cluster, k: usize) -> Option<usize> {
    let out = c.tool(k, &["-T", "3", "status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Leader:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Applies and removes faults on one cluster.
pub struct Injector<'a> {
    c: &'a Cluster,
    etcd: Option<&'a Etcd>,
    daemon: Daemon,
    /// When each kill left a node's daemon dead.
    kills: Vec<(usize, SystemTime)>,
}

impl<'a> Injector<'a> {
    pub fn new(c: &'a Cluster, etcd: Option<&'a Etcd>) -> Self {
        Injector {
            c,
            etcd,
            daemon: c.daemon().clone(),
            kills: Vec::new(),
        }
    }

    /// Injects `f`; returns it as applied ([`Fault::LockCut`] names the
    /// leader it cut, `None` when no node led).
    pub fn apply(&mut self, f: Fault) -> Fault {
        let (c, net) = (self.c, self.c.net());
        match f {
            Fault::Isolate(a) => {
                let rest: Vec<usize> = (0..c.len()).filter(|&x| x != a).collect();
                net.partition(&[a], &rest);
            }
            Fault::OneWay { to, from } => net.drop_from(to, from),
            Fault::SplitAll => {
                for a in 0..c.len() {
                    for b in 0..c.len() {
                        if a != b {
                            net.drop_from(a, b);
                        }
                    }
                }
            }
            Fault::Pause(a) => {
                if let Some(pid) = c.pid(a) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                }
            }
            Fault::KillRestart(a) => {
                c.kill(a);
                self.kills.push((a, SystemTime::now()));
            }
            Fault::Loss { node, percent } => net.lossy(node, percent),
            Fault::Slow(a) => net.slow(a, 64, 1000),
            Fault::LockCut(_) => {
                // With the lock in a file there is no store to cut.
                let Some(etcd) = self.etcd else {
                    return Fault::LockCut(None);
                };
                let leader = (0..c.len()).find_map(|k| leader_seen_by(c, k));
                if let Some(l) = leader {
                    etcd.cut(net, l);
                }
                return Fault::LockCut(leader);
            }
        }
        f
    }

    /// Removes `f` (as [`Injector::apply`] returned it).
    pub fn remove(&mut self, f: Fault) {
        match f {
            Fault::Pause(a) => {
                if let Some(pid) = self.c.pid(a) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                }
            }
            Fault::KillRestart(a) => self.c.restart_with(a, &self.daemon),
            _ => self.c.net().heal(),
        }
    }

    /// Starts again the daemons that died without being killed here (a
    /// crash), noting them as killed now (when the crash was seen, so a
    /// lock hold of theirs ends here at the latest); returns their nodes.
    pub fn restart_crashed(&mut self) -> Vec<usize> {
        let mut crashed = Vec::new();
        for k in 0..self.c.len() {
            let alive = self
                .c
                .pid(k)
                .is_some_and(|p| kill(Pid::from_raw(p), None).is_ok());
            if !alive {
                self.c.kill(k);
                self.kills.push((k, SystemTime::now()));
                self.c.restart_with(k, &self.daemon);
                crashed.push(k);
            }
        }
        crashed
    }

    /// When each node was killed.
    pub fn kills(&self) -> &[(usize, SystemTime)] {
        &self.kills
    }

    /// The last time node `k` was killed, if ever.
    pub fn last_kill(&self, k: usize) -> Option<SystemTime> {
        self.kills
            .iter()
            .filter(|(n, _)| *n == k)
            .map(|&(_, t)| t)
            .max()
    }
}

/// Node `k`'s log, bytes that are not UTF-8 replaced (the reference logs
/// some raw key bytes, and one such byte must not hide the whole log).
pub fn log_text(c: &Cluster, k: usize) -> String {
    String::from_utf8_lossy(&std::fs::read(c.log(k)).unwrap_or_default()).into_owned()
}

/// The last `n` lines of every node's log from its recovery daemon and
/// about locks and recoveries (at INFO the record traffic drowns them).
pub fn recoverd_tails(c: &Cluster, n: usize) -> String {
    let mut s = String::new();
    for k in 0..c.len() {
        let log = log_text(c, k);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("ctdb-recoverd")
                    || l.contains("ecovery")
                    || l.contains("lock")
                    || l.contains("ban")
            })
            .collect();
        s.push_str(&format!("--- node {k} ---\n"));
        for l in &lines[lines.len().saturating_sub(n)..] {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// When node `k`'s daemon froze every database because the node became
/// inactive (banned or stopped), from its log: both daemons log "Freeze
/// all" then, and mark the node's volatile records invalid (CTDB's
/// `invalid_records`: the next recovery pulls none of them), so a
/// volatile record whose only up-to-date copy was there loses what it had,
/// as if the node had died.
pub fn inactive_freezes(c: &Cluster, k: usize) -> Vec<SystemTime> {
    log_text(c, k)
        .lines()
        .filter(|l| l.contains("Freeze all"))
        .filter_map(log_time_us)
        .map(|us| UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
        .collect()
}

/// Microseconds since the epoch of a log line's leading RFC 3339 UTC
/// timestamp (`2026-12-06T20:04:50.824801+00:00 node.0 ...`).
pub fn log_time_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, rest) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = rest.strip_suffix("+00:00").or(rest.strip_suffix('Z'))?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let mut us: i64 = frac.get(..frac.len().min(6))?.parse().ok()?;
    for _ in frac.len()..6 {
        us *= 10;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000) + us)
}

fn us_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// How a hold of the cluster lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The daemon let it go ("Releasing cluster lock").
    Released,
    /// The lock helper told the daemon the lock is gone ("Cluster lock
    /// helper terminated"): the daemon could not have known earlier.
    HelperGone,
    /// The node was killed.
    Killed,
    /// Still held at the end.
    Open,
}

/// A time node `node` held the cluster lock, by its log: from `from_us`
/// until `to_us` (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub node: usize,
    pub from_us: i64,
    pub to_us: i64,
    pub end: HoldEnd,
}

/// Every time a node held the cluster lock, from the daemons' logs up to
/// now; a hold still open at a kill of its node ends there.
pub fn lock_holds(c: &Cluster, kills: &[(usize, SystemTime)]) -> Vec<Hold> {
    let now = us_of(SystemTime::now());
    let mut holds = Vec::new();
    for k in 0..c.len() {
        // Events in time order: (time, None = took, Some(how) = let go).
        let mut ev: Vec<(i64, Option<HoldEnd>)> = Vec::new();
        for line in log_text(c, k).lines() {
            let e = if line.contains("Cluster lock taken successfully") {
                None
            } else if line.contains("Releasing cluster lock") {
                Some(HoldEnd::Released)
            } else if line.contains("Cluster lock helper terminated") {
                Some(HoldEnd::HelperGone)
            } else {
                continue;
            };
            if let Some(t) = log_time_us(line) {
                ev.push((t, e));
            }
        }
        for &(n, t) in kills {
            if n == k {
                ev.push((us_of(t), Some(HoldEnd::Killed)));
            }
        }
        ev.sort_by_key(|&(t, _)| t);
        let mut open: Option<i64> = None;
        for (t, e) in ev {
            match (e, open) {
                (None, None) => open = Some(t),
                (Some(end), Some(from)) => {
                    holds.push(Hold {
                        node: k,
                        from_us: from,
                        to_us: t,
                        end,
                    });
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(from) = open {
            holds.push(Hold {
                node: k,
                from_us: from,
                to_us: now,
                end: HoldEnd::Open,
            });
        }
    }
    holds
}

/// Pairs of holds by different nodes that overlap in time.
pub fn overlaps(holds: &[Hold]) -> Vec<(Hold, Hold)> {
    let mut out = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if a.node != b.node && a.from_us < b.to_us && b.from_us < a.to_us {
                out.push((*a, *b));
            }
        }
    }
    out
}

/// How long after another node took the lock a holder may still learn
/// from its helper that it lost it: `ctdb_etcd_lock` renews its key every
/// `lock_refresh` (2 s) and tells the daemon only when a renewal fails, so
/// a holder cut off from the lock store (a partition) hears of the loss up
/// to a renewal (and its request) after the key expired and another node
/// took it. By the store the lock was never held twice; by the daemons'
/// logs both held it for that long.
pub const HELPER_NOTICE: Duration = Duration::from_secs(3);

/// Whether the overlap of `a` and `b` is only the lock helper telling the
/// earlier holder late (see [`HELPER_NOTICE`]): the earlier hold ended
/// because its helper said the lock was gone, within that time of the
/// later hold's start.
pub fn helper_late(a: &Hold, b: &Hold) -> bool {
    let (first, second) = if a.from_us <= b.from_us {
        (a, b)
    } else {
        (b, a)
    };
    first.end == HoldEnd::HelperGone
        && first.to_us <= second.to_us
        && first.to_us - second.from_us <= HELPER_NOTICE.as_micros() as i64
}

/// What a run did and found, for its report and the README table.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults injected, by kind.
    pub kinds: BTreeMap<&'static str, u32>,
    /// Persistent commits acknowledged, and acknowledged ones missing.
    pub persistent_acked: u64,
    pub persistent_lost: u64,
    /// Volatile increments applied, and lost ones (each allowed only
    /// where the node holding the record's only copy died).
    pub volatile_acked: u64,
    pub volatile_lost: u64,
    /// Of those, increments CTDB keeps (made after the key's node last
    /// died, or it never did): each one is a broken promise.
    pub volatile_lost_kept: u64,
    /// Longest time from removing a fault to a healthy cluster.
    pub heal_max: Duration,
    /// Faults after which the cluster did not heal within the bound.
    pub heal_failures: u32,
    /// Cluster lock holds seen in the logs, and overlapping pairs.
    pub lock_holds: usize,
    pub lock_overlaps: usize,
    /// Leader samples taken, and samples with two self-declared leaders.
    pub leader_samples: usize,
    pub two_leader_samples: usize,
    /// Keys the tool could not read at the end (it kept failing).
    pub unreadable: usize,
}

impl Report {
    /// The report, one item a line.
    pub fn print(&self, who: &str, seed: u64, elapsed: Duration) {
        let total: u32 = self.kinds.values().sum();
        println!(
            "=== fault run report: {who}, seed {seed}, {:.0}s",
            elapsed.as_secs_f64()
        );
        println!("faults injected: {total}");
        for (k, n) in &self.kinds {
            println!("  {k}: {n}");
        }
        println!(
            "persistent commits acknowledged: {}, lost: {}",
            self.persistent_acked, self.persistent_lost
        );
        println!(
            "volatile increments applied: {}, lost: {} (allowed only where the record's only copy died), of which CTDB keeps: {}",
            self.volatile_acked, self.volatile_lost, self.volatile_lost_kept
        );
        println!(
            "time to heal (max): {:.1}s; faults not healed within the bound: {}",
            self.heal_max.as_secs_f64(),
            self.heal_failures
        );
        println!(
            "cluster lock holds (logs): {}, overlapping: {}; leader samples: {}, with two leaders: {}",
            self.lock_holds, self.lock_overlaps, self.leader_samples, self.two_leader_samples
        );
        if self.unreadable > 0 {
            println!(
                "keys the tool could not read at the end: {}",
                self.unreadable
            );
        }
    }
}

/// One look at a volatile record in a node's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSample {
    /// Microseconds since the epoch.
    pub at_us: i64,
    pub node: usize,
    pub rsn: u64,
    pub dmaster: u32,
    pub flags: u32,
    /// The record's data as a decimal counter (0 when empty).
    pub value: u64,
}

/// Samples volatile records straight from every node's database file
/// (read-only, without locks, so it never delays a daemon or a client)
/// every `period`, until dropped; what it saw tells when and where a
/// counter went back.
pub struct RecordSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(String, RecordSample)>>>,
}

impl RecordSampler {
    /// Samples `keys` of volatile database `db` on every node of `c`.
    pub fn start(c: &Cluster, db: &str, keys: Vec<String>, period: Duration) -> RecordSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let files: Vec<std::path::PathBuf> = (0..c.len())
            .map(|k| c.base(k).join(format!("db/volatile/{db}.{k}")))
            .collect();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut last: BTreeMap<(String, usize), (u64, u64, u32)> = BTreeMap::new();
            while !s.load(Ordering::SeqCst) {
                for (node, f) in files.iter().enumerate() {
                    let Ok(t) = tdb::OpenOptions::new()
                        .read_only(true)
                        .no_lock(true)
                        .open(f)
                    else {
                        continue;
                    };
                    for key in &keys {
                        let Ok(Some(v)) = t.fetch(key.as_bytes()) else {
                            continue;
                        };
                        let Ok((h, d)) = ctdb_protocol::types::LtdbHeader::split(&v) else {
                            continue;
                        };
                        let value = String::from_utf8_lossy(d).parse().unwrap_or(0);
                        // Only changes of rsn, dmaster or a counter that
                        // went back are kept (the counter moves all the
                        // time).
                        let now = (h.rsn, value, h.dmaster);
                        let prev = last.insert((key.clone(), node), now);
                        let changed = prev.is_none_or(|(rsn, v, dm)| {
                            rsn != h.rsn || dm != h.dmaster || value < v
                        });
                        if changed {
                            out.push((
                                key.clone(),
                                RecordSample {
                                    at_us: us_of(SystemTime::now()),
                                    node,
                                    rsn: h.rsn,
                                    dmaster: h.dmaster,
                                    flags: h.flags,
                                    value,
                                },
                            ));
                        }
                    }
                }
                std::thread::sleep(period);
            }
            out
        });
        RecordSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the samples of each key, in time order.
    pub fn finish(mut self) -> BTreeMap<String, Vec<RecordSample>> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut m: BTreeMap<String, Vec<RecordSample>> = BTreeMap::new();
        if let Some(t) = self.thread.take() {
            for (k, s) in t.join().unwrap_or_default() {
                m.entry(k).or_default().push(s);
            }
        }
        m
    }
}

impl Drop for RecordSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Prints where `key`'s counter went back on a node (below what that
/// node's copy held before), with the samples before it.
pub fn print_rollbacks(key: &str, samples: &[RecordSample]) {
    let mut last: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        if let Some(&v) = last.get(&s.node)
            && s.value < v
        {
            println!(
                "{key}: went back from {v} to {} on node {}:",
                s.value, s.node
            );
            for p in &samples[i.saturating_sub(8)..=i] {
                println!("  {p:?}");
            }
        }
        last.insert(s.node, s.value);
    }
}

/// Copies every node's log to a directory that outlives the cluster
/// (`$TMPDIR/ctdb-faults-SEED-PID`); returns it.
pub fn keep_logs(c: &Cluster, seed: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ctdb-faults-{seed}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for k in 0..c.len() {
        let _ = std::fs::copy(c.log(k), dir.join(format!("log.ctdb.{k}")));
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times() {
        let t = log_time_us("2026-12-06T20:04:50.824801+00:00 node.0 ctdbd[1]: x").unwrap();
        // date -u -d 2026-12-06T20:04:50Z +%s
        assert_eq!(t, 1_796_587_490_824_801);
        assert_eq!(
            log_time_us("1970-01-01T00:00:01.5+00:00 x"),
            Some(1_500_000)
        );
        assert_eq!(log_time_us("garbage"), None);
    }

    #[test]
    fn schedules() {
        let a: Vec<_> = {
            let mut s = Schedule::new(12345, 3, true);
            (0..16).map(|_| s.next_fault()).collect()
        };
        let mut s = Schedule::new(12345, 3, true);
        let b: Vec<_> = (0..16).map(|_| s.next_fault()).collect();
        assert_eq!(a, b, "a seed gives one schedule");
        // Every kind once in the first eight.
        let mut kinds: Vec<_> = a[..8].iter().map(|(f, _)| f.kind()).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), 8);
        let hold = Duration::from_secs(4);
        let mut s = Schedule::scripted(vec![(Fault::SplitAll, hold), (Fault::Pause(1), hold)]);
        let got: Vec<_> = (0..3).map(|_| s.next_fault().0).collect();
        assert_eq!(got, [Fault::SplitAll, Fault::Pause(1), Fault::SplitAll]);
    }

    #[test]
    fn overlapping_holds() {
        let h = |node, from_us, to_us| Hold {
            node,
            from_us,
            to_us,
            end: HoldEnd::Released,
        };
        assert!(overlaps(&[h(0, 0, 10), h(1, 10, 20), h(0, 20, 30)]).is_empty());
        assert_eq!(overlaps(&[h(0, 0, 10), h(1, 9, 20)]).len(), 1);
        assert!(overlaps(&[h(0, 0, 10), h(0, 5, 20)]).is_empty());
        // Released late by the daemon itself: never excused.
        let (a, b) = (h(0, 0, 1_000_000), h(1, 380_000, 5_000_000));
        assert!(!helper_late(&a, &b));
        // The helper told it 0.62 s after the other took it: excused.
        let a = Hold {
            end: HoldEnd::HelperGone,
            ..a
        };
        assert!(helper_late(&a, &b) && helper_late(&b, &a));
        // Much later, or still held: not.
        let long = Hold {
            to_us: 4_000_000,
            ..a
        };
        assert!(!helper_late(&long, &b));
        let open = Hold {
            end: HoldEnd::Open,
            to_us: 9_000_000,
            ..a
        };
        assert!(!helper_late(&open, &b));
    }
}
