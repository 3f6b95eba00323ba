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
        }
    }

    /// The next fault and how long to hold it (3-7 s).
    pub fn next_fault(&mut self) -> (Fault, Duration) {
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

/// A time node `node` held the cluster lock, by its log: from `from_us`
/// until `to_us` (microseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub node: usize,
    pub from_us: i64,
    pub to_us: i64,
}

/// Every time a node held the cluster lock, from the daemons' logs up to
/// now; a hold still open at a kill of its node ends there.
pub fn lock_holds(c: &Cluster, kills: &[(usize, SystemTime)]) -> Vec<Hold> {
    let now = us_of(SystemTime::now());
    let mut holds = Vec::new();
    for k in 0..c.len() {
        // Events in time order: (time, true = took, false = let go).
        let mut ev: Vec<(i64, bool)> = Vec::new();
        for line in log_text(c, k).lines() {
            let took = line.contains("Cluster lock taken successfully");
            let gone = line.contains("Releasing cluster lock")
                || line.contains("Cluster lock helper terminated");
            if (took || gone)
                && let Some(t) = log_time_us(line)
            {
                ev.push((t, took));
            }
        }
        for &(n, t) in kills {
            if n == k {
                ev.push((us_of(t), false));
            }
        }
        ev.sort();
        let mut open: Option<i64> = None;
        for (t, took) in ev {
            match (took, open) {
                (true, None) => open = Some(t),
                (false, Some(from)) => {
                    holds.push(Hold {
                        node: k,
                        from_us: from,
                        to_us: t,
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
    fn overlapping_holds() {
        let h = |node, from_us, to_us| Hold {
            node,
            from_us,
            to_us,
        };
        assert!(overlaps(&[h(0, 0, 10), h(1, 10, 20), h(0, 20, 30)]).is_empty());
        assert_eq!(overlaps(&[h(0, 0, 10), h(1, 9, 20)]).len(), 1);
        assert!(overlaps(&[h(0, 0, 10), h(0, 5, 20)]).is_empty());
    }
}
