//! LCP2 (IPAllocAlgorithm 2, the default): addresses that share a long
//! common prefix are expensive to put on the same node, so that the
//! addresses of one subnet spread over the nodes.
//!
//! The distance between two addresses is the length of their common prefix
//! in bits, over 128-bit keys (so two IPv4 addresses share at least 96
//! bits). A node's imbalance is the sum, over each pair of its addresses, of
//! the square of their distance. All sums are 32-bit unsigned with
//! wrap-around, as in CTDB.
//!
//! 1. Unassigned addresses are placed one at a time: of all (address, node)
//!    pairs where the node can take the address, the one that adds the
//!    least to that node's imbalance (the first found among equals, with
//!    addresses in list order and nodes in PNN order).
//! 2. Unless NoIPFailback: only nodes that hosted nothing before this run
//!    (or are forced) may receive addresses. Repeatedly, the nodes are
//!    taken from most to least imbalanced; for the first whose imbalance
//!    can be reduced, the single move (address, destination) that leaves
//!    the lowest combined imbalance of source and destination is made.

use super::{Alloc, ip_key};

/// Length of the common prefix of two address keys, in bits (128 for the
/// same address).
pub fn distance(a: &[u32; 4], b: &[u32; 4]) -> u32 {
    let mut d = 0;
    for (x, y) in a.iter().zip(b) {
        let x = x ^ y;
        if x == 0 {
            d += 32;
        } else {
            // CTDB counts the leading zeros of each differing word and
            // carries on with the next words.
            d += x.leading_zeros();
        }
    }
    d
}

/// The LCP2 state: every address's key and every node's imbalance.
struct Lcp2<'x, 'a> {
    a: &'x mut Alloc<'a>,
    keys: Vec<[u32; 4]>,
    imbalance: Vec<u32>,
}

impl Lcp2<'_, '_> {
    /// What address `i` costs on node `pnn`, given the node's other
    /// addresses (the address itself excluded).
    fn cost_on(&self, i: usize, pnn: usize) -> u32 {
        let mut sum = 0u32;
        for (j, ip) in self.a.ips.iter().enumerate() {
            if j == i || ip.pnn != Some(pnn as u32) {
                continue;
            }
            let d = distance(&self.keys[i], &self.keys[j]);
            sum = sum.wrapping_add(d * d);
        }
        sum
    }

    /// Node `pnn`'s imbalance: each of its addresses against the ones after
    /// it in the list.
    fn node_imbalance(&self, pnn: usize) -> u32 {
        let ips = &self.a.ips;
        let mut sum = 0u32;
        for i in 0..ips.len() {
            if ips[i].pnn != Some(pnn as u32) {
                continue;
            }
            for j in i + 1..ips.len() {
                if ips[j].pnn == Some(pnn as u32) {
                    let d = distance(&self.keys[i], &self.keys[j]);
                    sum = sum.wrapping_add(d * d);
                }
            }
        }
        sum
    }

    fn place_unassigned(&mut self) {
        loop {
            // (address, node, added cost) of the cheapest placement.
            let mut best: Option<(usize, usize, u32)> = None;
            for i in 0..self.a.ips.len() {
                if self.a.ips[i].pnn.is_some() {
                    continue;
                }
                for pnn in 0..self.a.n {
                    if !self.a.can_take(pnn, i) {
                        continue;
                    }
                    let cost = self.cost_on(i, pnn);
                    tracing::trace!(
                        " {} -> {pnn} [+{}]",
                        self.a.ips[i].addr,
                        self.imbalance[pnn]
                            .wrapping_add(cost)
                            .wrapping_sub(self.imbalance[pnn])
                    );
                    if best.is_none_or(|(_, _, c)| cost < c) {
                        best = Some((i, pnn, cost));
                    }
                }
            }
            let Some((i, pnn, cost)) = best else {
                break;
            };
            self.a.ips[i].pnn = Some(pnn as u32);
            self.imbalance[pnn] = self.imbalance[pnn].wrapping_add(cost);
            tracing::debug!(" {} -> {pnn} [+{cost}]", self.a.ips[i].addr);
            if self.a.ips.iter().all(|ip| ip.pnn.is_some()) {
                return;
            }
        }
        for ip in self.a.ips.iter().filter(|ip| ip.pnn.is_none()) {
            tracing::warn!("Failed to find node to cover ip {}", ip.addr);
        }
    }

    /// Tries to move one address off `src` to a candidate node, the move
    /// that best lowers the imbalance; returns whether it moved one.
    fn move_one_from(&mut self, src: usize, candidates: &[bool]) -> bool {
        // (address, new source imbalance, destination, new destination
        // imbalance) of the best move so far.
        let mut best: Option<(usize, u32, usize, u32)> = None;
        for i in 0..self.a.ips.len() {
            if self.a.ips[i].pnn != Some(src as u32) {
                continue;
            }
            let src_cost = self.cost_on(i, src);
            let src_imbl = self.imbalance[src].wrapping_sub(src_cost);
            for (dst, &candidate) in candidates.iter().enumerate().take(self.a.n) {
                if !candidate || !self.a.can_take(dst, i) {
                    continue;
                }
                let dst_cost = self.cost_on(i, dst);
                let dst_imbl = self.imbalance[dst].wrapping_add(dst_cost);
                let better = best.is_none_or(|(_, bs, _, bd)| {
                    src_imbl.wrapping_add(dst_imbl) < bs.wrapping_add(bd)
                });
                if dst_imbl < self.imbalance[src] && dst_cost < src_cost && better {
                    best = Some((i, src_imbl, dst, dst_imbl));
                }
            }
        }
        let Some((i, src_imbl, dst, dst_imbl)) = best else {
            return false;
        };
        tracing::debug!(
            "{src} [{}] -> {} -> {dst} [+{}]",
            src_imbl.wrapping_sub(self.imbalance[src]) as i32,
            self.a.ips[i].addr,
            dst_imbl.wrapping_sub(self.imbalance[dst])
        );
        self.imbalance[src] = src_imbl;
        self.imbalance[dst] = dst_imbl;
        self.a.ips[i].pnn = Some(dst as u32);
        true
    }

    fn rebalance(&mut self, candidates: &[bool]) {
        loop {
            let mut order: Vec<usize> = (0..self.a.n).collect();
            // Most imbalanced first; a stable sort keeps PNN order among
            // equals, as glibc's merge sort does for CTDB's qsort.
            order.sort_by(|&x, &y| self.imbalance[y].cmp(&self.imbalance[x]));
            let mut moved = false;
            for src in order {
                // Nodes with at most one address cannot be imbalanced.
                if self.imbalance[src] == 0 {
                    break;
                }
                if self.move_one_from(src, candidates) {
                    moved = true;
                    break;
                }
            }
            if !moved {
                return;
            }
        }
    }
}

pub(crate) fn allocate(a: &mut Alloc, no_ip_failback: bool, force: Option<&[u32]>) {
    a.unassign_unsuitable();
    let keys = a.ips.iter().map(|ip| ip_key(&ip.addr)).collect();
    let n = a.n;
    let mut l = Lcp2 {
        a,
        keys,
        imbalance: Vec::new(),
    };
    l.imbalance = (0..n).map(|p| l.node_imbalance(p)).collect();

    // Nodes hosting something were healthy before: they are not given
    // more, unless forced.
    let mut candidates = vec![true; n];
    for ip in l.a.ips.iter() {
        if let Some(p) = ip.pnn
            && let Some(c) = candidates.get_mut(p as usize)
        {
            *c = false;
        }
    }
    for &p in force.unwrap_or(&[]) {
        match candidates.get_mut(p as usize) {
            Some(c) => {
                tracing::info!("Forcing rebalancing of IPs to node {p}");
                *c = true;
            }
            None => tracing::error!("unknown node {p}"),
        }
    }

    l.place_unassigned();
    if no_ip_failback || !candidates.contains(&true) {
        return;
    }
    l.rebalance(&candidates);
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Algorithm, allocate, ip_key};
    use super::*;

    #[test]
    fn distances() {
        let k = |s: &str| ip_key(&sa(s));
        assert_eq!(distance(&k("10.0.0.1"), &k("10.0.0.1")), 128);
        // 10.0.0.1 ^ 10.0.0.2 = 3: 30 leading zeros in the last word.
        assert_eq!(distance(&k("10.0.0.1"), &k("10.0.0.2")), 96 + 30);
        assert_eq!(distance(&k("10.0.0.1"), &k("138.0.0.1")), 96);
        // Words after the first differing one still count their zeros.
        assert_eq!(distance(&k("8000::1"), &k("::1")), 3 * 32);
    }

    #[test]
    fn unassigned_spread_over_healthy_nodes() {
        let all = uniform(
            3,
            &[
                ("192.168.21.254", -1),
                ("192.168.21.253", -1),
                ("192.168.21.252", -1),
                ("192.168.20.254", -1),
                ("192.168.20.253", -1),
                ("192.168.20.252", -1),
                ("192.168.20.251", -1),
                ("192.168.20.250", -1),
                ("192.168.20.249", -1),
            ],
        );
        let r = allocate(&inputs(3, &all, &all, Algorithm::Lcp2));
        let mut counts = [0; 3];
        for (_, p) in summary(&r) {
            counts[p as usize] += 1;
        }
        assert_eq!(counts, [3, 3, 3]);
        // Each node gets exactly one of the 192.168.21 addresses.
        let mut on21 = [0; 3];
        for (a, p) in summary(&r) {
            if a.starts_with("192.168.21.") {
                on21[p as usize] += 1;
            }
        }
        assert_eq!(on21, [1, 1, 1]);
    }

    #[test]
    fn a_returning_node_gets_its_share_unless_no_failback() {
        // Nodes 0 and 1 host three addresses each; node 2 hosts none.
        let addrs = [
            ("10.0.0.1", 0),
            ("10.0.0.2", 0),
            ("10.0.0.3", 0),
            ("10.0.0.4", 1),
            ("10.0.0.5", 1),
            ("10.0.0.6", 1),
        ];
        let known = uniform(3, &addrs);
        let r = allocate(&inputs(3, &known, &known, Algorithm::Lcp2));
        let on2 = summary(&r).iter().filter(|(_, p)| *p == 2).count();
        assert_eq!(on2, 2);

        let mut inp = inputs(3, &known, &known, Algorithm::Lcp2);
        inp.no_ip_failback = true;
        assert!(summary(&allocate(&inp)).iter().all(|(_, p)| *p != 2));

        // A node already hosting is not a candidate unless forced.
        let mut skewed = addrs;
        skewed[5].1 = 2;
        let known = uniform(3, &skewed);
        let r = allocate(&inputs(3, &known, &known, Algorithm::Lcp2));
        assert_eq!(summary(&r).iter().filter(|(_, p)| *p == 2).count(), 1);
        let mut inp = inputs(3, &known, &known, Algorithm::Lcp2);
        let force = [2];
        inp.force_rebalance = Some(&force);
        assert_eq!(
            summary(&allocate(&inp))
                .iter()
                .filter(|(_, p)| *p == 2)
                .count(),
            2
        );
    }
}
