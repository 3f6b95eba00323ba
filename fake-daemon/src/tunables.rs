//! The tunables a CTDB 4.17 daemon knows: name, default value, whether it
//! is obsolete, and which field of the wire [`TunableList`] holds it.
//!
//! The daemon crate will own this table once it exposes one; until then the
//! fake daemon keeps its own (same facts as CTDB 4.17's table).

use ctdb_protocol::types::TunableList;

/// One tunable.
#[derive(Debug, Clone, Copy)]
pub struct TunableDef {
    pub name: &'static str,
    pub default: u32,
    pub obsolete: bool,
    /// Field name in [`TunableList::FIELDS`].
    pub field: &'static str,
}

macro_rules! defs {
    ($($name:literal, $def:expr, $obs:literal, $field:ident;)*) => {
        /// Every tunable, in CTDB's order (the order `listvars` shows).
        pub const TUNABLES: &[TunableDef] = &[
            $(TunableDef { name: $name, default: $def, obsolete: $obs, field: stringify!($field) },)*
        ];
    };
}

defs! {
    "MaxRedirectCount", 3, true, max_redirect_count;
    "SeqnumInterval", 1000, false, seqnum_interval;
    "ControlTimeout", 60, false, control_timeout;
    "TraverseTimeout", 20, false, traverse_timeout;
    "KeepaliveInterval", 5, false, keepalive_interval;
    "KeepaliveLimit", 5, false, keepalive_limit;
    "RecoverTimeout", 30, false, recover_timeout;
    "RecoverInterval", 1, false, recover_interval;
    "ElectionTimeout", 3, false, election_timeout;
    "TakeoverTimeout", 9, false, takeover_timeout;
    "MonitorInterval", 15, false, monitor_interval;
    "TickleUpdateInterval", 20, false, tickle_update_interval;
    "EventScriptTimeout", 30, false, script_timeout;
    "MonitorTimeoutCount", 20, false, monitor_timeout_count;
    "EventScriptUnhealthyOnTimeout", 0, true, script_unhealthy_on_timeout;
    "RecoveryGracePeriod", 120, false, recovery_grace_period;
    "RecoveryBanPeriod", 300, false, recovery_ban_period;
    "DatabaseHashSize", 100001, false, database_hash_size;
    "DatabaseMaxDead", 5, false, database_max_dead;
    "RerecoveryTimeout", 10, false, rerecovery_timeout;
    "EnableBans", 1, false, enable_bans;
    "DeterministicIPs", 0, true, deterministic_public_ips;
    "LCP2PublicIPs", 1, true, lcp2_public_ip_assignment;
    "ReclockPingPeriod", 60, true, reclock_ping_period;
    "NoIPFailback", 0, false, no_ip_failback;
    "DisableIPFailover", 0, true, disable_ip_failover;
    "VerboseMemoryNames", 0, false, verbose_memory_names;
    "RecdPingTimeout", 60, false, recd_ping_timeout;
    "RecdFailCount", 10, false, recd_ping_failcount;
    "LogLatencyMs", 0, false, log_latency_ms;
    "RecLockLatencyMs", 1000, false, reclock_latency_ms;
    "RecoveryDropAllIPs", 120, false, recovery_drop_all_ips;
    "VerifyRecoveryLock", 1, true, verify_recovery_lock;
    "VacuumInterval", 10, false, vacuum_interval;
    "VacuumMaxRunTime", 120, false, vacuum_max_run_time;
    "RepackLimit", 10_000, false, repack_limit;
    "VacuumLimit", 5_000, true, vacuum_limit;
    "VacuumFastPathCount", 60, false, vacuum_fast_path_count;
    "MaxQueueDropMsg", 1_000_000, false, max_queue_depth_drop_msg;
    "AllowUnhealthyDBRead", 0, false, allow_unhealthy_db_read;
    "StatHistoryInterval", 1, false, stat_history_interval;
    "DeferredAttachTO", 120, false, deferred_attach_timeout;
    "AllowClientDBAttach", 1, false, allow_client_db_attach;
    "RecoverPDBBySeqNum", 1, true, recover_pdb_by_seqnum;
    "DeferredRebalanceOnNodeAdd", 300, true, deferred_rebalance_on_node_add;
    "FetchCollapse", 1, false, fetch_collapse;
    "HopcountMakeSticky", 50, false, hopcount_make_sticky;
    "StickyDuration", 600, false, sticky_duration;
    "StickyPindown", 200, false, sticky_pindown;
    "NoIPTakeover", 0, false, no_ip_takeover;
    "DBRecordCountWarn", 100_000, false, db_record_count_warn;
    "DBRecordSizeWarn", 10_000_000, false, db_record_size_warn;
    "DBSizeWarn", 100_000_000, false, db_size_warn;
    "PullDBPreallocation", 10 * 1024 * 1024, false, pulldb_preallocation_size;
    "NoIPHostOnAllDisabled", 1, true, no_ip_host_on_all_disabled;
    "Samba3AvoidDeadlocks", 0, true, samba3_hack;
    "TDBMutexEnabled", 1, true, mutex_enabled;
    "LockProcessesPerDB", 200, false, lock_processes_per_db;
    "RecBufferSizeLimit", 1_000_000, false, rec_buffer_size_limit;
    "QueueBufferSize", 1024, false, queue_buffer_size;
    "IPAllocAlgorithm", 2, false, ip_alloc_algorithm;
    "AllowMixedVersions", 0, false, allow_mixed_versions;
}

/// Current values of every tunable, kept in wire order.
#[derive(Debug, Clone)]
pub struct Tunables {
    values: Vec<u32>,
}

fn field_index(field: &str) -> usize {
    TunableList::FIELDS
        .iter()
        .position(|f| *f == field)
        .expect("every tunable has a wire field")
}

fn find(name: &str) -> Option<&'static TunableDef> {
    TUNABLES.iter().find(|t| t.name.eq_ignore_ascii_case(name))
}

impl Default for Tunables {
    fn default() -> Self {
        let mut values = vec![0; TunableList::FIELDS.len()];
        for t in TUNABLES {
            values[field_index(t.field)] = t.default;
        }
        Tunables { values }
    }
}

impl Tunables {
    /// A tunable's value, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<u32> {
        find(name).map(|t| self.values[field_index(t.field)])
    }

    /// Sets a tunable; returns whether it is obsolete, or `None` if there is
    /// no such tunable.
    pub fn set(&mut self, name: &str, value: u32) -> Option<bool> {
        let t = find(name)?;
        self.values[field_index(t.field)] = value;
        Some(t.obsolete)
    }

    /// Every value, as `GET_ALL_TUNABLES` sends them.
    pub fn list(&self) -> TunableList {
        TunableList::from_values(&self.values)
    }

    /// The names of the tunables that are not obsolete.
    pub fn names() -> Vec<String> {
        TUNABLES
            .iter()
            .filter(|t| !t.obsolete)
            .map(|t| t.name.to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_case_insensitive_lookup() {
        let mut t = Tunables::default();
        assert_eq!(t.get("recovertimeout"), Some(30));
        assert_eq!(t.list().database_hash_size, 100_001);
        assert_eq!(t.set("RecoverTimeout", 12), Some(false));
        assert_eq!(t.get("RecoverTimeout"), Some(12));
        assert_eq!(t.set("VacuumLimit", 1), Some(true));
        assert_eq!(t.set("NoSuchThing", 1), None);
        assert!(!Tunables::names().iter().any(|n| n == "VacuumLimit"));
        assert_eq!(Tunables::names().len(), 49);
    }
}
