//! Our helper allocates exactly as CTDB 4.17's: both run against the same
//! scripted clusters (`fake_ctdbd`), and the controls the fake receives
//! (every `RELEASE_IP` and `TAKEOVER_IP` with its new host, every
//! `IPREALLOCATED`, any ban message), the status written and the exit code
//! must be the same, and so must the log lines at NOTICE level.
//!
//! The clusters are generated from a fixed seed (`TAKEOVER_TABLE_SEED`
//! overrides it, `TAKEOVER_TABLE_CASES` the count): 1 to 6 nodes, each
//! healthy, unhealthy, disabled, banned, stopped or disconnected (or a
//! mix); run state RUNNING or not; 0 to 12 public addresses in two IPv4
//! subnets and one IPv6 prefix, each known to all nodes or a subset, hosted
//! by a node or by none; every algorithm, NoIPFailback, NoIPTakeover,
//! NoIPHostOnAllDisabled; sometimes a force-rebalance list or
//! `CTDB_DISABLE_IP_FAILOVER`.

mod common;

use common::{Case, run_both};

/// splitmix64: small, seedable, enough to spread the cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FLAG_CHOICES: &[u32] = &[
    0x0,  // healthy
    0x2,  // unhealthy
    0x4,  // disabled
    0x6,  // disabled and unhealthy
    0x8,  // banned
    0x20, // stopped
    0x1,  // disconnected
    0x22, // stopped and unhealthy
];

fn node_flags(r: &mut Rng) -> u32 {
    if r.chance(55) {
        0
    } else {
        FLAG_CHOICES[r.below(FLAG_CHOICES.len() as u64) as usize]
    }
}

fn address(r: &mut Rng) -> String {
    match r.below(10) {
        0..=4 => format!("10.0.0.{}", 1 + r.below(40)),
        5..=7 => format!("10.0.1.{}", 1 + r.below(40)),
        8 => format!("192.168.{}.{}", r.below(4), 1 + r.below(250)),
        _ => format!("fd00:10::{:x}", 1 + r.below(64)),
    }
}

fn generate(r: &mut Rng) -> Case {
    let n = 1 + r.below(6) as u32;
    let current = r.below(u64::from(n)) as u32;
    let mut s = String::from("NODEMAP\n");
    for pnn in 0..n {
        let mut f = node_flags(r);
        if pnn == current {
            // The fake serves nothing for a disconnected current node.
            f &= !0x1;
        }
        let tags = if pnn == current {
            " CURRENT RECMASTER"
        } else {
            ""
        };
        s += &format!("{pnn} 192.168.20.{} 0x{f:x}{tags}\n", 41 + pnn);
    }
    s += "\nIFACES\n:Name:LinkStatus:References:\n:eth1:1:2:\n\n";

    let count = r.below(13);
    let mut addrs: Vec<String> = Vec::new();
    while (addrs.len() as u64) < count {
        let a = address(r);
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if !addrs.is_empty() {
        s += "PUBLICIPS\n";
        for a in &addrs {
            let host: i64 = if r.chance(45) {
                -1
            } else {
                r.below(u64::from(n)) as i64
            };
            let mut line = format!("{a} {host}");
            if r.chance(40) {
                let mut allowed: Vec<u32> = (0..n).filter(|_| r.chance(60)).collect();
                if allowed.is_empty() {
                    allowed.push(r.below(u64::from(n)) as u32);
                }
                let list: Vec<String> = allowed.iter().map(u32::to_string).collect();
                line += &format!(" {}", list.join(","));
            }
            s += &line;
            s.push('\n');
        }
        s.push('\n');
    }
    if r.chance(8) {
        s += "RUNSTATE\nSTARTUP\n\n";
    }

    let mut tunables = vec![
        ("IPAllocAlgorithm", r.below(3) as u32),
        ("NoIPFailback", r.chance(30) as u32),
        ("NoIPHostOnAllDisabled", r.chance(50) as u32),
    ];
    if r.chance(10) {
        tunables.push(("NoIPTakeover", 1));
    }
    let force = r.chance(15).then(|| {
        let list: Vec<String> = (0..=n)
            .filter(|_| r.chance(40))
            .map(|p| p.to_string())
            .collect();
        if list.is_empty() {
            "0".to_owned()
        } else {
            list.join(",")
        }
    });
    Case {
        script: s,
        tunables,
        force,
        failover_disabled: r.chance(3),
    }
}

#[test]
fn allocation_equals_the_reference_helpers_on_generated_clusters() {
    let seed = std::env::var("TAKEOVER_TABLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1f2e_3d4c_u64);
    let cases: usize = std::env::var("TAKEOVER_TABLE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut r = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let mut moved = 0;
    let mut failed_runs = 0;
    for i in 0..cases {
        let case = generate(&mut r);
        let dir = tmp.path().join(i.to_string());
        let (reference, ours) = run_both(&case, &dir, "NOTICE");
        assert_eq!(
            reference, ours,
            "case {i} (seed {seed}) differs: reference first, ours second\n{case:#?}"
        );
        // Keep the test honest: the fake must have seen the controls.
        assert!(
            reference.exit != Some(0) || !reference.lines("IPREALLOCATED").is_empty(),
            "case {i}: a successful run without IPREALLOCATED\n{case:#?}"
        );
        if !reference.lines("TAKEOVER_IP").is_empty() {
            moved += 1;
        }
        if reference.exit != Some(0) {
            failed_runs += 1;
        }
    }
    println!("{cases} cases, {moved} with takeovers, {failed_runs} failed runs (same on both)");
    assert!(
        moved * 2 > cases,
        "too few cases assign addresses: {moved} of {cases}"
    );
}
