//! Public address allocation: which node should host each public address,
//! as a pure function of what the nodes report.
//!
//! The inputs are, per node (indexed by PNN), the public addresses it knows
//! (`GET_PUBLIC_IPS`, each with the node it believes hosts it) and those it
//! can host now (`GET_PUBLIC_IPS` with the available-only flag), plus the
//! algorithm and the NoIPTakeover / NoIPFailback tunables. The output is
//! every address of the cluster with the node that should host it, or none.
//!
//! The rules are CTDB 4.17's (`ipalloc*.c`), so that a leader running this
//! helper moves addresses exactly as one running CTDB's:
//!
//! * the cluster's address list ([`merge`]) holds each address once, in
//!   descending order of its 128-bit key (IPv4 addresses as `::a.b.c.d`);
//!   an address counts as hosted only by a node that reports hosting it
//!   itself (the last such node in PNN order wins);
//! * a node can host an address only if it reports it available (a node
//!   that is disabled, unhealthy, banned, stopped or not yet running
//!   reports none available, so it keeps nothing); with NoIPTakeover no
//!   node takes over an address it does not already host;
//! * the algorithms: [`Algorithm::Deterministic`] (address `i` of the list
//!   to node `i mod N`, else the least loaded node able to host it),
//!   [`Algorithm::NonDeterministic`] (keep what is hosted, give the rest to
//!   the least loaded node, then even out the counts) and [`Algorithm::Lcp2`]
//!   (keep what is hosted, place the rest and rebalance by the
//!   longest-common-prefix cost, see [`lcp2`]). NoIPFailback stops the
//!   rebalancing of the last two.
//!
//! Ties are broken as CTDB breaks them (lowest PNN, first address in list
//! order), and the arithmetic is CTDB's 32-bit unsigned arithmetic, so the
//! result is the same address for address.

mod basic;
pub mod lcp2;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::types::{PublicIp, SockAddr};

/// The allocation algorithm (tunable IPAllocAlgorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Deterministic,
    NonDeterministic,
    Lcp2,
}

impl Algorithm {
    /// The algorithm a value of IPAllocAlgorithm selects (0, 1, 2; anything
    /// else means LCP2, the default).
    pub fn from_tunable(v: u32) -> Algorithm {
        match v {
            0 => Algorithm::Deterministic,
            1 => Algorithm::NonDeterministic,
            _ => Algorithm::Lcp2,
        }
    }
}

/// What the allocation is computed from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Number of nodes in the node map (PNNs are `0..num_nodes`).
    pub num_nodes: usize,
    /// Per node, the public addresses it knows, each with the node it
    /// believes hosts it. Nodes not asked have an empty list; the slice may
    /// be shorter than `num_nodes`.
    pub known: &'a [Vec<PublicIp>],
    /// Per node, the public addresses it can host now.
    pub available: &'a [Vec<PublicIp>],
    pub algorithm: Algorithm,
    /// NoIPTakeover: no node takes over an address it does not host.
    pub no_ip_takeover: bool,
    /// NoIPFailback: hosted addresses are not moved to even out the load.
    pub no_ip_failback: bool,
    /// Nodes that may receive addresses in an LCP2 rebalance even though
    /// they host some already (the helper's third argument).
    pub force_rebalance: Option<&'a [u32]>,
}

/// One public address of the cluster and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub addr: SockAddr,
    /// The node that should host it (None: no node can).
    pub pnn: Option<u32>,
    /// Per node: it knows the address.
    pub known_on: Vec<bool>,
    /// Per node: it can host the address now.
    pub available_on: Vec<bool>,
}

/// The 128-bit key CTDB orders addresses by and measures their distance
/// with: an IPv4 address is the last of four 32-bit words.
pub fn ip_key(addr: &SockAddr) -> [u32; 4] {
    match addr.ip() {
        Some(IpAddr::V4(a)) => [0, 0, 0, u32::from(a)],
        Some(IpAddr::V6(a)) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
        None => [0; 4],
    }
}

fn same_ip(a: &SockAddr, b: &SockAddr) -> bool {
    a.ip().is_some() && a.ip() == b.ip()
}

fn node_list(lists: &[Vec<PublicIp>], pnn: usize) -> &[PublicIp] {
    lists.get(pnn).map_or(&[][..], Vec::as_slice)
}

/// Whether there is anything to allocate: some node hosts an address, or
/// some address is known and some node can host addresses. When there is
/// not, a takeover run skips straight to IPREALLOCATED.
pub fn can_host_ips(
    num_nodes: usize,
    known: &[Vec<PublicIp>],
    available: &[Vec<PublicIp>],
) -> bool {
    let mut any_known = false;
    for pnn in 0..num_nodes {
        let ips = node_list(known, pnn);
        if !ips.is_empty() {
            any_known = true;
            if ips.iter().any(|ip| ip.pnn == pnn as u32) {
                return true;
            }
        }
    }
    any_known && (0..num_nodes).any(|pnn| !node_list(available, pnn).is_empty())
}

/// The cluster's address list, in CTDB's order, with the current hosts and
/// the known/available maps filled in.
pub fn merge(input: &Inputs) -> Vec<Placement> {
    let n = input.num_nodes;
    // Keyed by address; a later node's report replaces an earlier one's,
    // but keeps the earlier host unless the later node hosts it itself.
    let mut by_key: BTreeMap<[u32; 4], (SockAddr, Option<u32>)> = BTreeMap::new();
    for pnn in 0..n {
        for ip in node_list(input.known, pnn) {
            let own = (ip.pnn == pnn as u32).then_some(pnn as u32);
            let slot = by_key.entry(ip_key(&ip.addr)).or_insert((ip.addr, None));
            *slot = (ip.addr, own.or(slot.1));
        }
    }
    by_key
        .into_values()
        .rev()
        .map(|(addr, pnn)| {
            let available_on: Vec<bool> = (0..n)
                .map(|p| {
                    node_list(input.available, p)
                        .iter()
                        .any(|a| same_ip(&a.addr, &addr))
                })
                .collect();
            let known_on = (0..n)
                .map(|p| {
                    available_on[p]
                        || node_list(input.known, p)
                            .iter()
                            .any(|a| same_ip(&a.addr, &addr))
                })
                .collect();
            Placement {
                addr,
                pnn,
                known_on,
                available_on,
            }
        })
        .collect()
}

/// Computes where every public address should be, in the order of the
/// cluster's address list (the order the helper sends its controls in).
pub fn allocate(input: &Inputs) -> Vec<Placement> {
    let mut ips = merge(input);
    let mut a = Alloc {
        n: input.num_nodes,
        no_ip_takeover: input.no_ip_takeover,
        ips: &mut ips,
    };
    match input.algorithm {
        Algorithm::Deterministic => basic::deterministic(&mut a, input.no_ip_failback),
        Algorithm::NonDeterministic => basic::nondeterministic(&mut a, input.no_ip_failback),
        Algorithm::Lcp2 => lcp2::allocate(&mut a, input.no_ip_failback, input.force_rebalance),
    }
    ips
}

/// The allocation in progress, with the rules every algorithm shares.
pub(crate) struct Alloc<'a> {
    pub n: usize,
    pub no_ip_takeover: bool,
    pub ips: &'a mut Vec<Placement>,
}

impl Alloc<'_> {
    /// Node `pnn` can host address `i` now.
    pub fn can_host(&self, pnn: usize, i: usize) -> bool {
        self.ips[i].available_on.get(pnn).copied().unwrap_or(false)
    }

    /// Node `pnn` may be given address `i` (it can host it, and takeovers
    /// are allowed).
    pub fn can_take(&self, pnn: usize, i: usize) -> bool {
        !self.no_ip_takeover && self.can_host(pnn, i)
    }

    /// How many addresses node `pnn` is given so far.
    pub fn coverage(&self, pnn: usize) -> usize {
        self.ips
            .iter()
            .filter(|ip| ip.pnn == Some(pnn as u32))
            .count()
    }

    /// Takes every address away from a node that cannot host it.
    pub fn unassign_unsuitable(&mut self) {
        for i in 0..self.ips.len() {
            if let Some(p) = self.ips[i].pnn
                && !self.can_host(p as usize, i)
            {
                tracing::trace!("Unassign IP: {} from {p}", self.ips[i].addr);
                self.ips[i].pnn = None;
            }
        }
    }

    /// Gives address `i` to the node able to take it that has the fewest
    /// addresses (the lowest PNN among equals). Leaves it where it is and
    /// returns false when no node can take it.
    pub fn give_to_least_loaded(&mut self, i: usize) -> bool {
        let mut best: Option<(usize, usize)> = None;
        for pnn in 0..self.n {
            if !self.can_take(pnn, i) {
                continue;
            }
            let c = self.coverage(pnn);
            if best.is_none_or(|(_, min)| c < min) {
                best = Some((pnn, c));
            }
        }
        match best {
            Some((pnn, _)) => {
                self.ips[i].pnn = Some(pnn as u32);
                true
            }
            None => {
                tracing::warn!(
                    "Could not find node to take over public address '{}'",
                    self.ips[i].addr
                );
                false
            }
        }
    }

    /// Gives every unassigned address to the least loaded node, in list
    /// order.
    pub fn allocate_unassigned_basic(&mut self) {
        for i in 0..self.ips.len() {
            if self.ips[i].pnn.is_none() && !self.give_to_least_loaded(i) {
                tracing::warn!("Failed to find node to cover ip {}", self.ips[i].addr);
            }
        }
    }
}

/// The wire form of an assignment: CTDB's "unknown" PNN for none.
pub fn wire_pnn(pnn: Option<u32>) -> u32 {
    pnn.unwrap_or(CTDB_UNKNOWN_PNN)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn sa(s: &str) -> SockAddr {
        s.parse::<IpAddr>().unwrap().into()
    }

    /// `spec` per node: `(address, believed host)` pairs, with -1 for none.
    pub fn lists(spec: &[&[(&str, i64)]]) -> Vec<Vec<PublicIp>> {
        spec.iter()
            .map(|node| {
                node.iter()
                    .map(|(a, p)| PublicIp {
                        pnn: *p as u32,
                        addr: sa(a),
                    })
                    .collect()
            })
            .collect()
    }

    /// Every node knows and can host all of `addrs`, with the given hosts.
    pub fn uniform(n: usize, addrs: &[(&str, i64)]) -> Vec<Vec<PublicIp>> {
        lists(&vec![addrs; n])
    }

    /// `(address, host)` of the result, hosts as -1 for none.
    pub fn summary(p: &[Placement]) -> Vec<(String, i64)> {
        p.iter()
            .map(|x| (x.addr.to_string(), x.pnn.map_or(-1, i64::from)))
            .collect()
    }

    pub fn inputs<'a>(
        n: usize,
        known: &'a [Vec<PublicIp>],
        available: &'a [Vec<PublicIp>],
        algorithm: Algorithm,
    ) -> Inputs<'a> {
        Inputs {
            num_nodes: n,
            known,
            available,
            algorithm,
            no_ip_takeover: false,
            no_ip_failback: false,
            force_rebalance: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn list_is_in_descending_key_order_with_v4_below_v6() {
        let known = lists(&[&[("10.0.0.2", -1), ("fd00::1", -1), ("10.0.0.10", -1)]]);
        let m = merge(&inputs(1, &known, &known, Algorithm::Lcp2));
        let order: Vec<String> = m.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(order, ["fd00::1", "10.0.0.10", "10.0.0.2"]);
    }

    #[test]
    fn only_a_nodes_own_claim_counts_and_the_last_claim_wins() {
        // Node 0 says node 2 hosts .1 (ignored: only node 2 may say so);
        // nodes 1 and 2 both claim .2: the later node wins.
        let known = lists(&[
            &[("10.0.0.1", 2), ("10.0.0.2", 1)],
            &[("10.0.0.2", 1)],
            &[("10.0.0.2", 2), ("10.0.0.3", -1)],
        ]);
        let m = merge(&inputs(3, &known, &[], Algorithm::Lcp2));
        assert_eq!(
            summary(&m),
            [
                ("10.0.0.3".into(), -1),
                ("10.0.0.2".into(), 2),
                ("10.0.0.1".into(), -1)
            ]
        );
        assert_eq!(m[2].known_on, [true, false, false]);
        assert_eq!(m[0].known_on, [false, false, true]);
    }

    #[test]
    fn available_implies_known() {
        let known = lists(&[&[], &[]]);
        let avail = lists(&[&[("10.0.0.1", -1)], &[]]);
        // Known nowhere: not in the list at all.
        assert!(merge(&inputs(2, &known, &avail, Algorithm::Lcp2)).is_empty());
        let known = lists(&[&[], &[("10.0.0.1", -1)]]);
        let m = merge(&inputs(2, &known, &avail, Algorithm::Lcp2));
        assert_eq!(m[0].known_on, [true, true]);
        assert_eq!(m[0].available_on, [true, false]);
    }

    #[test]
    fn hosting_is_possible_when_something_is_hosted_or_hostable() {
        let none: Vec<Vec<PublicIp>> = vec![Vec::new(); 3];
        let unhosted = lists(&[&[("10.0.0.1", -1)], &[], &[]]);
        let hosted = lists(&[&[], &[("10.0.0.1", 1)], &[]]);
        assert!(!can_host_ips(3, &none, &none));
        assert!(!can_host_ips(3, &unhosted, &none));
        assert!(can_host_ips(3, &unhosted, &unhosted));
        assert!(can_host_ips(3, &hosted, &none));
    }

    #[test]
    fn algorithm_values() {
        assert_eq!(Algorithm::from_tunable(0), Algorithm::Deterministic);
        assert_eq!(Algorithm::from_tunable(1), Algorithm::NonDeterministic);
        assert_eq!(Algorithm::from_tunable(2), Algorithm::Lcp2);
        assert_eq!(Algorithm::from_tunable(7), Algorithm::Lcp2);
    }
}
