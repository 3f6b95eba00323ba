//! Leadership: the cluster lock, elections, and the leader broadcast.

use std::time::{Duration, Instant};

use ctdb_protocol::header::{CTDB_BROADCAST_ALL, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, ElectionMessage, Timeval, node_flags};
use ctdb_protocol::{ControlRequest, Marshal};
use tracing::{debug, error, info, warn};

use super::Recoverd;
use crate::cluster_mutex::{self, LockStatus};

/// How long to wait for the mutex helper when taking the lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// The leader timeout grows to at most this many times `leader timeout`
/// while lock elections keep failing (see [`Recoverd::leader_timeout_len`]).
const MAX_LOCK_BACKOFF: u32 = 4;

/// `base` doubled for each of `failures`, up to [`MAX_LOCK_BACKOFF`] times.
fn lock_backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.min(MAX_LOCK_BACKOFF.ilog2());
    base.saturating_mul(1 << doublings)
}

/// How long the check that this node still holds the lock may take.
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a second helper's answer confirms that the lock is held (by
/// this node, which holds one): only contention does. Taking it means the
/// store lost our hold; a timeout or an error means it cannot be reached.
fn lock_check_passed(status: LockStatus) -> bool {
    status == LockStatus::Contention
}

/// What a `LEADER` broadcast means to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broadcast {
    /// From the leader this node knows: it still leads.
    Same,
    /// Someone started an election (the leader is unknown).
    Election,
    /// Another node leads now.
    NewLeader,
    /// This node's own broadcast, sent while it led, read after it stopped
    /// leading (it lost the cluster lock or an election meanwhile).
    Stale,
    /// Another node claims to lead while this node holds the cluster lock:
    /// a broadcast sent before the sender lost the lock, read late (packet
    /// loss, a paused node). The lock holder leads.
    LockHeldHere,
}

/// How node `me`, which takes `leader` for the leader, reads a broadcast
/// naming `announced`. A node learns that it leads by taking the lock or
/// winning an election, never from a broadcast: one naming itself when it
/// does not lead is old.
fn broadcast_step(me: u32, leader: u32, announced: u32, holds_lock: bool) -> Broadcast {
    if announced == leader {
        Broadcast::Same
    } else if announced == CTDB_UNKNOWN_PNN {
        Broadcast::Election
    } else if announced == me {
        Broadcast::Stale
    } else if holds_lock {
        Broadcast::LockHeldHere
    } else {
        Broadcast::NewLeader
    }
}

/// What a cluster-lock election does on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockElection {
    /// The node may not lead: it lets go of the lock if it holds it.
    Release,
    /// The node holds the lock, so it leads, whoever it took for the
    /// leader: a helper run now would meet its own hold (contention), and
    /// while it holds the lock no other node can take it.
    LeadHolding,
    /// The node tries to take the lock; it leads if it gets it.
    Take,
}

/// How a node that may lead (`can_lead`) and holds the cluster lock or
/// not (`holds_lock`) takes part in a cluster-lock election.
fn lock_election_step(can_lead: bool, holds_lock: bool) -> LockElection {
    if !can_lead {
        LockElection::Release
    } else if holds_lock {
        LockElection::LeadHolding
    } else {
        LockElection::Take
    }
}

impl Recoverd {
    /// Every second: the leader tells everyone it leads.
    pub(super) async fn leader_broadcast_tick(&mut self) {
        if !self.can_be_leader() {
            if self.is_leader() {
                self.leader = CTDB_UNKNOWN_PNN;
            }
            self.release_cluster_lock();
            return;
        }
        if !self.is_leader() || self.election_in_progress {
            return;
        }
        self.leader_broadcast_send(self.leader);
    }

    /// A `LEADER` broadcast arrived.
    pub(super) async fn leader_message(&mut self, pnn: u32) {
        match broadcast_step(self.pnn, self.leader, pnn, self.lock.is_some()) {
            Broadcast::Stale => {
                // Our own broadcast from when we led, read only now (the
                // loop was waiting for the lock helper): we no longer
                // lead, and taking it for a leader's word would make this
                // node act as a leader without the lock (and ban itself,
                // discarding its volatile records).
                info!("Ignoring this node's own leader broadcast: it no longer leads");
            }
            Broadcast::Same => {
                self.restart_leader_timeout();
            }
            Broadcast::Election => {
                // Someone started an election; no timeout until it is over.
                self.leader_timeout_at = None;
                let was = self.election_in_progress;
                self.election_in_progress = true;
                if self.cluster_lock_enabled() && !was {
                    self.cluster_lock_election().await;
                }
            }
            Broadcast::LockHeldHere => {
                // Taking the sender for the leader would leave this node
                // holding the lock without leading: no other node can take
                // it, and this one never takes it again (it holds it), so
                // elections would repeat with no leader for good (seen
                // once in the fault suite: packet loss on the old leader
                // right after it lost the lock store). It hears this
                // node's broadcasts and follows.
                warn!(
                    "Ignoring leader broadcast from node {pnn}: this node holds the cluster lock"
                );
                self.leader = self.pnn;
            }
            Broadcast::NewLeader => {
                info!("Received leader broadcast, leader={pnn}");
                self.leader = pnn;
                self.lock_failures = 0;
                self.restart_leader_timeout();
            }
        }
    }

    fn restart_leader_timeout(&mut self) {
        self.leader_timeout_at = Some(Instant::now() + self.leader_timeout_len());
    }

    /// How long without a leader before forcing an election: `leader
    /// timeout`, doubled for each lock election lost in a row (contention
    /// or timeout), up to [`MAX_LOCK_BACKOFF`] times.
    ///
    /// CTDB 4.17 retries every `leader timeout` (5 s by default): every
    /// election broadcast restarts every node's timeout. A mutex helper that
    /// leaves state behind when it loses (`ctdb_etcd_lock` leaves its etcd
    /// key for its TTL, 9 s by default) then makes each attempt fail on the
    /// key of the attempt before it, forever: a leader that died with its
    /// helper (its key outlives it) is never replaced. Waiting longer after
    /// each lost election lets such state expire; a node holding the lock
    /// is unaffected, and the first leader broadcast or lock taken resets it.
    pub(super) fn leader_timeout_len(&self) -> Duration {
        lock_backoff(self.cfg.leader_timeout, self.lock_failures)
    }

    /// Starts an election: everyone into recovery mode, everyone told
    /// the leader is unknown, then the lock decides (or the votes do).
    pub(super) async fn force_election(&mut self) {
        error!("Start election");
        let active = self.active_nodes();
        for (n, r) in self
            .client
            .control_many(&active, ControlRequest::SetRecmode(CTDB_RECOVERY_ACTIVE))
            .await
        {
            if let Err(e) = r {
                error!("Unable to set recovery mode to active on node {n}: {e}");
                // Try again at the next timeout.
                self.restart_leader_timeout();
                return;
            }
        }
        self.election_in_progress = true;
        self.leader_broadcast_send(CTDB_UNKNOWN_PNN);
        if self.cluster_lock_enabled() {
            self.cluster_lock_election().await;
            return;
        }
        self.election_timeout_at = Some(Instant::now() + self.election_timeout_len());
        self.send_election_request();
    }

    fn election_timeout_len(&self) -> Duration {
        Duration::from_secs(u64::from(self.tunables.election_timeout.max(1)))
    }

    /// With a cluster lock, whoever can take it leads.
    pub(super) async fn cluster_lock_election(&mut self) {
        match lock_election_step(self.can_be_leader(), self.lock.is_some()) {
            LockElection::Release => self.release_cluster_lock(),
            LockElection::LeadHolding => {
                if !self.is_leader() {
                    warn!("Holding the cluster lock: leader={}", self.pnn);
                    self.leader = self.pnn;
                }
            }
            LockElection::Take => {
                self.leader = CTDB_UNKNOWN_PNN;
                if self.take_cluster_lock().await {
                    self.leader = self.pnn;
                    warn!("Took cluster lock, leader={}", self.leader);
                } else if self.lock_failures > 0 {
                    // The next election: after the (longer) leader timeout.
                    self.restart_leader_timeout();
                    info!(
                        "Cluster lock election lost {} time(s) in a row, next election in {}s",
                        self.lock_failures,
                        self.leader_timeout_len().as_secs()
                    );
                }
            }
        }
        self.election_in_progress = false;
    }

    /// Runs the mutex helper; true if this node now holds the lock.
    pub(super) async fn take_cluster_lock(&mut self) -> bool {
        let Some(lock) = self.cfg.cluster_lock.clone() else {
            return true;
        };
        if self.lock.is_some() {
            info!("Already holding cluster lock");
            return true;
        }
        info!("Attempting to take cluster lock ({lock})");
        let log = self.cfg.log_file.as_ref().and_then(|f| f.try_clone().ok());
        let (status, held) = cluster_mutex::take(
            &lock,
            &self.cfg.helper_dir,
            log.as_ref(),
            &self.cfg.helper_env,
            LOCK_TIMEOUT,
        )
        .await;
        match status {
            LockStatus::Taken => {
                let held = held.expect("a taken lock has its helper");
                let latency = held.latency.as_secs_f64();
                self.lock = Some(held);
                self.lock_failures = 0;
                info!("Cluster lock taken successfully");
                let _ = self
                    .client
                    .control(
                        ctdb_protocol::header::CTDB_CURRENT_NODE,
                        ControlRequest::RecdReclockLatency(latency),
                    )
                    .await;
                true
            }
            LockStatus::Contention => {
                error!("Unable to take cluster lock - contention");
                self.lock_failures = self.lock_failures.saturating_add(1);
                false
            }
            LockStatus::Timeout => {
                error!("Unable to take cluster lock - timeout");
                self.lock_failures = self.lock_failures.saturating_add(1);
                false
            }
            LockStatus::Error => {
                error!("Unable to take cluster lock - unknown error");
                false
            }
        }
    }

    /// Before a recovery pushes anything: whether the lock store still
    /// says this node holds the lock (a second helper must meet
    /// contention). A recovery pushes the records it could pull with this
    /// node as their data master, and their rsn goes up by one on this
    /// node each time; a leader cut off from the other nodes and from the
    /// lock store (a partition) that kept recovering alone until its
    /// helper noticed would raise its stale copies above the live ones on
    /// the nodes it cannot see, and the next full recovery would keep the
    /// stale ones (seed 12345 of the fault suite: two such recoveries, an
    /// rsn tie, 10000 increments lost on two nodes that never failed).
    /// CTDB tests the lock only when the recovery ends.
    pub(super) async fn cluster_lock_still_held(&mut self) -> bool {
        let Some(lock) = self.cfg.cluster_lock.clone() else {
            return true;
        };
        let log = self.cfg.log_file.as_ref().and_then(|f| f.try_clone().ok());
        let (status, held) = cluster_mutex::take(
            &lock,
            &self.cfg.helper_dir,
            log.as_ref(),
            &self.cfg.helper_env,
            LOCK_CHECK_TIMEOUT,
        )
        .await;
        if let Some(h) = held {
            h.release();
        }
        let ok = lock_check_passed(status);
        if !ok {
            error!("Cluster lock check before recovery failed ({status:?}) - not recovering");
        }
        ok
    }

    pub(super) fn release_cluster_lock(&mut self) {
        if let Some(h) = self.lock.take() {
            info!("Releasing cluster lock");
            h.release();
        }
    }

    /// The mutex helper went away while we held the lock.
    pub(super) async fn lost_cluster_lock(&mut self) {
        error!("Cluster lock helper terminated");
        self.lock = None;
        if self.is_leader() {
            self.leader = CTDB_UNKNOWN_PNN;
        }
        if self.can_be_leader() {
            self.force_election().await;
        }
    }

    // ---- elections without a cluster lock ---------------------------------

    fn election_data(&self) -> ElectionMessage {
        let num_connected = self
            .nodemap
            .nodes
            .iter()
            .filter(|n| n.flags & node_flags::DISCONNECTED == 0)
            .count() as u32;
        let mut em = ElectionMessage {
            num_connected,
            priority_time: self.priority_time,
            pnn: self.pnn,
            node_flags: self.node_flags,
        };
        if !self.can_be_leader() {
            em.num_connected = 0;
            em.priority_time = Timeval::now();
        }
        em
    }

    /// Whether we beat `em`: the longest-running node wins, then the
    /// lowest PNN.
    fn election_win(&self, em: &ElectionMessage) -> bool {
        if !self.can_be_leader() {
            return false;
        }
        if em.node_flags & node_flags::INACTIVE != 0 {
            return true;
        }
        let mine = self.election_data();
        match em.priority_time.cmp(&mine.priority_time) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => mine.pnn < em.pnn,
        }
    }

    pub(super) fn send_election_request(&mut self) {
        let em = self.election_data();
        self.leader = self.pnn;
        let mut buf = vec![0u8; em.len()];
        em.push(&mut buf);
        debug!("Send election request to all active nodes");
        self.send(CTDB_BROADCAST_ALL, srvid::ELECTION, &buf);
    }

    pub(super) async fn election_message(&mut self, data: &[u8]) {
        let Ok((em, _)) = ElectionMessage::pull(data) else {
            warn!("invalid election message");
            return;
        };
        if em.pnn == self.pnn {
            return;
        }
        self.election_in_progress = true;
        self.election_timeout_at = Some(Instant::now() + self.election_timeout_len());
        if self.election_win(&em) {
            if self.send_election_at.is_none() {
                self.send_election_at = Some(Instant::now() + Duration::from_millis(500));
            }
            return;
        }
        self.send_election_at = None;
        self.release_cluster_lock();
        self.leader = em.pnn;
    }

    pub(super) async fn election_timeout(&mut self) {
        self.election_in_progress = false;
        warn!("Election period ended, leader={}", self.leader);
        if !self.is_leader() {
            return;
        }
        if !self.take_cluster_lock().await {
            error!("Unable to get cluster lock, banning node");
            let pnn = self.pnn;
            self.ban_node(pnn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_contention_confirms_the_lock() {
        assert!(lock_check_passed(LockStatus::Contention));
        for s in [LockStatus::Taken, LockStatus::Timeout, LockStatus::Error] {
            assert!(!lock_check_passed(s), "{s:?}");
        }
    }

    #[test]
    fn own_broadcast_after_losing_the_lead_is_stale() {
        const U: u32 = CTDB_UNKNOWN_PNN;
        // Node 0 led, lost the lock (leader unknown), then reads the
        // broadcast it sent while it led.
        assert_eq!(broadcast_step(0, U, 0, false), Broadcast::Stale);
        // Or another node leads by now.
        assert_eq!(broadcast_step(0, 2, 0, false), Broadcast::Stale);
        // Its own broadcast while it leads, or the leader's.
        assert_eq!(broadcast_step(0, 0, 0, false), Broadcast::Same);
        assert_eq!(broadcast_step(1, 0, 0, false), Broadcast::Same);
        assert_eq!(broadcast_step(1, U, 0, false), Broadcast::NewLeader);
        assert_eq!(broadcast_step(1, 2, 0, false), Broadcast::NewLeader);
        assert_eq!(broadcast_step(1, 0, U, false), Broadcast::Election);
        assert_eq!(broadcast_step(1, U, U, false), Broadcast::Same);
    }

    #[test]
    fn another_leader_is_not_followed_while_holding_the_lock() {
        const U: u32 = CTDB_UNKNOWN_PNN;
        // Node 2 took the lock and leads; node 0's late broadcast.
        assert_eq!(broadcast_step(2, 2, 0, true), Broadcast::LockHeldHere);
        assert_eq!(broadcast_step(2, U, 0, true), Broadcast::LockHeldHere);
        // Without the lock it is followed; an election or its own
        // broadcast read as before.
        assert_eq!(broadcast_step(2, 2, 0, false), Broadcast::NewLeader);
        assert_eq!(broadcast_step(2, 2, U, true), Broadcast::Election);
        assert_eq!(broadcast_step(2, 2, 2, true), Broadcast::Same);
    }

    #[test]
    fn the_lock_holder_leads_after_an_election() {
        const U: u32 = CTDB_UNKNOWN_PNN;
        // Node 2 holds the lock; node 0's late broadcast is not followed,
        // then an election is started (broadcast of an unknown leader).
        assert_eq!(broadcast_step(2, 2, 0, true), Broadcast::LockHeldHere);
        assert_eq!(broadcast_step(2, 2, U, true), Broadcast::Election);
        // In the lock election it leads on its hold, without a helper
        // run (which would meet its own hold and lose).
        assert_eq!(lock_election_step(true, true), LockElection::LeadHolding);
        // A node without the lock tries to take it; one that may not
        // lead lets its lock go, held or not.
        assert_eq!(lock_election_step(true, false), LockElection::Take);
        assert_eq!(lock_election_step(false, true), LockElection::Release);
        assert_eq!(lock_election_step(false, false), LockElection::Release);
    }

    #[test]
    fn lock_backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let got: Vec<u64> = (0..6).map(|f| lock_backoff(base, f).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 20, 20, 20]);
        assert_eq!(lock_backoff(base, u32::MAX), Duration::from_secs(20));
    }
}
