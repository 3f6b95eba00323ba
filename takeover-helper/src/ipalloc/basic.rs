//! The deterministic and non-deterministic algorithms (IPAllocAlgorithm 0
//! and 1).

use super::Alloc;

/// Address `i` of the list goes to node `i mod N`; an address that node
/// cannot host goes to the least loaded node that can. Nothing is
/// rebalanced (an address returns to its home node as soon as that node
/// can host it again), so NoIPFailback has no effect.
pub(crate) fn deterministic(a: &mut Alloc, no_ip_failback: bool) {
    tracing::info!("Deterministic IPs enabled. Resetting all ip allocations");
    let n = a.n.max(1);
    for (i, ip) in a.ips.iter_mut().enumerate() {
        ip.pnn = Some((i % n) as u32);
    }
    if no_ip_failback {
        tracing::warn!(
            "WARNING: 'NoIPFailback' set but ignored - incompatible with 'Deterministic IPs"
        );
    }
    a.unassign_unsuitable();
    a.allocate_unassigned_basic();
}

/// Hosted addresses stay where they are; the others go to the least loaded
/// node; then, unless NoIPFailback, the load is evened out.
pub(crate) fn nondeterministic(a: &mut Alloc, no_ip_failback: bool) {
    let count = a.ips.len();
    a.unassign_unsuitable();
    a.allocate_unassigned_basic();
    if !no_ip_failback {
        even_out(a, count);
    }
}

/// For each hosted address in list order, compares the loads of the nodes
/// that could take it; while the most and least loaded of them differ by
/// more than one, moves the first address of the most loaded node to the
/// least loaded node able to take it, and starts over. At most
/// `count + 5` moves.
fn even_out(a: &mut Alloc, count: usize) {
    let mut moves = 0;
    'again: loop {
        for i in 0..a.ips.len() {
            if a.ips[i].pnn.is_none() {
                continue;
            }
            // (node, load) of the most and least loaded nodes that could
            // take this address, the lowest PNN among equals.
            let mut max: Option<(usize, usize)> = None;
            let mut min: Option<(usize, usize)> = None;
            for pnn in 0..a.n {
                if !a.can_take(pnn, i) {
                    continue;
                }
                let c = a.coverage(pnn);
                if max.is_none_or(|(_, m)| c > m) {
                    max = Some((pnn, c));
                }
                if min.is_none_or(|(_, m)| c < m) {
                    min = Some((pnn, c));
                }
            }
            let (Some((maxnode, maxnum)), Some((_, minnum))) = (max, min) else {
                tracing::warn!(
                    "Could not find maxnode. May not be able to serve ip '{}'",
                    a.ips[i].addr
                );
                continue;
            };
            if maxnum > minnum + 1 && moves < count + 5 {
                let first = a.ips.iter().position(|ip| ip.pnn == Some(maxnode as u32));
                if let Some(j) = first {
                    a.give_to_least_loaded(j);
                    moves += 1;
                    continue 'again;
                }
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Algorithm, allocate};

    const FIVE: [(&str, i64); 5] = [
        ("10.0.0.1", -1),
        ("10.0.0.2", -1),
        ("10.0.0.3", -1),
        ("10.0.0.4", -1),
        ("10.0.0.5", -1),
    ];

    #[test]
    fn deterministic_is_modulo_over_the_list_order() {
        let all = uniform(3, &FIVE);
        let r = allocate(&inputs(3, &all, &all, Algorithm::Deterministic));
        // The list runs .5 down to .1.
        let hosts: Vec<i64> = summary(&r).into_iter().map(|(_, p)| p).collect();
        assert_eq!(hosts, [0, 1, 2, 0, 1]);
    }

    #[test]
    fn deterministic_moves_a_missing_nodes_addresses_to_the_least_loaded() {
        let all = uniform(3, &FIVE);
        let mut avail = all.clone();
        avail[1].clear();
        let r = allocate(&inputs(3, &all, &avail, Algorithm::Deterministic));
        let hosts: Vec<i64> = summary(&r).into_iter().map(|(_, p)| p).collect();
        // .4 (home 1) goes to node 0 or 2, whichever has fewer then: both
        // have 2 (node 0: .5, .2; node 2: .3) — node 2 has one, so node 2;
        // then .1 (home 1): node 0 has 2, node 2 has 2: node 0.
        assert_eq!(hosts, [0, 2, 2, 0, 0]);
    }

    #[test]
    fn nondeterministic_keeps_hosted_addresses_and_evens_out() {
        // Node 0 hosts all five; nodes 1 and 2 are newly able to host.
        let known = uniform(3, &FIVE.map(|(a, _)| (a, 0)));
        let r = allocate(&inputs(3, &known, &known, Algorithm::NonDeterministic));
        let mut counts = [0; 3];
        for (_, p) in summary(&r) {
            counts[p as usize] += 1;
        }
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );

        // With NoIPFailback nothing moves.
        let mut inp = inputs(3, &known, &known, Algorithm::NonDeterministic);
        inp.no_ip_failback = true;
        assert!(summary(&allocate(&inp)).iter().all(|(_, p)| *p == 0));
    }

    #[test]
    fn no_ip_takeover_keeps_what_is_hosted_and_places_nothing() {
        let mut known = uniform(2, &FIVE);
        known[1][0].pnn = 1; // node 1 hosts .1
        for algo in [
            Algorithm::Deterministic,
            Algorithm::NonDeterministic,
            Algorithm::Lcp2,
        ] {
            let mut inp = inputs(2, &known, &known, algo);
            inp.no_ip_takeover = true;
            let r = summary(&allocate(&inp));
            let hosted: Vec<_> = r.iter().filter(|(_, p)| *p >= 0).collect();
            match algo {
                // The modulo step assigns before the rule applies.
                Algorithm::Deterministic => assert_eq!(hosted.len(), 5),
                _ => assert_eq!(hosted, [&("10.0.0.1".to_string(), 1)], "{algo:?}"),
            }
        }
    }
}
