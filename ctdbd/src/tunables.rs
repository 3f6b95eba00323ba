//! CTDB 4.17's tunables: names, defaults, which are obsolete, and the
//! `ctdb.tunables` file.
//!
//! The table is in CTDB's listing order (the order `ctdb listvars`
//! prints); each entry names the [`TunableList`] field that carries it on
//! the wire. Names match case-insensitively. Obsolete tunables keep their
//! wire slot: they can be read, and setting one "succeeds" with status 1
//! and a warning, as in CTDB.

use ctdb_protocol::types::TunableList;

/// One tunable.
pub struct TunableDef {
    pub name: &'static str,
    pub default: u32,
    pub obsolete: bool,
    get: fn(&TunableList) -> u32,
    set: fn(&mut TunableList, u32),
}

impl std::fmt::Debug for TunableDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunableDef")
            .field("name", &self.name)
            .field("default", &self.default)
            .field("obsolete", &self.obsolete)
            .finish()
    }
}

impl TunableDef {
    pub fn get(&self, t: &TunableList) -> u32 {
        (self.get)(t)
    }
    pub fn set(&self, t: &mut TunableList, v: u32) {
        (self.set)(t, v)
    }
}

macro_rules! tunables {
    ($($name:literal, $default:expr, $obsolete:literal, $field:ident;)*) => {
        /// Every tunable in CTDB's order.
        pub static TUNABLES: &[TunableDef] = &[
            $(TunableDef {
                name: $name,
                default: $default,
                obsolete: $obsolete,
                get: |t| t.$field,
                set: |t, v| t.$field = v,
            },)*
        ];
    };
}

tunables! {
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

/// The non-obsolete tunables this daemon accepts, reports and stores but
/// does not act on, each with why (the ctdbd README's tunables table says
/// what CTDB 4.17 does with each). Every other non-obsolete tunable is
/// read by the daemon or its helpers.
pub const NOT_ACTED_ON: &[(&str, &str)] = &[
    (
        "VerboseMemoryNames",
        "CTDB names its packet-queue buffers for talloc reports; there is no talloc here",
    ),
    ("LogLatencyMs", "read by nothing in CTDB 4.17"),
    ("RecLockLatencyMs", "read by nothing in CTDB 4.17"),
    ("DBRecordCountWarn", "read by nothing in CTDB 4.17"),
    ("DBRecordSizeWarn", "read by nothing in CTDB 4.17"),
    ("DBSizeWarn", "read by nothing in CTDB 4.17"),
    ("PullDBPreallocation", "read by nothing in CTDB 4.17"),
    (
        "QueueBufferSize",
        "CTDB's socket read size; ours reads what the socket has into a growing buffer",
    ),
];

/// Looks a tunable up by name, case-insensitively.
pub fn find(name: &str) -> Option<&'static TunableDef> {
    TUNABLES.iter().find(|t| t.name.eq_ignore_ascii_case(name))
}

/// Every tunable at its default.
pub fn defaults() -> TunableList {
    let mut t = TunableList::default();
    for d in TUNABLES {
        d.set(&mut t, d.default);
    }
    t
}

/// The names `LIST_TUNABLES` returns (obsolete ones left out), in order.
pub fn names() -> impl Iterator<Item = &'static str> {
    TUNABLES.iter().filter(|t| !t.obsolete).map(|t| t.name)
}

/// What setting a tunable did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Set,
    /// Stored, but the tunable is obsolete.
    Obsolete,
    Unknown,
}

/// Sets tunable `name` in `t`.
pub fn set(t: &mut TunableList, name: &str, value: u32) -> SetOutcome {
    match find(name) {
        Some(d) => {
            d.set(t, value);
            if d.obsolete {
                SetOutcome::Obsolete
            } else {
                SetOutcome::Set
            }
        }
        None => SetOutcome::Unknown,
    }
}

/// Reads tunable `name` from `t`.
pub fn get(t: &TunableList, name: &str) -> Option<u32> {
    find(name).map(|d| d.get(t))
}

/// Applies a `ctdb.tunables` file (`Name=value` lines, `#` comments, no
/// sections) over the defaults. Every problem is reported; any problem
/// makes the file invalid, as in CTDB.
pub fn load_file_text(text: &str) -> Result<TunableList, Vec<String>> {
    let mut t = defaults();
    let mut errors = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            errors.push(format!(
                "Invalid line for section {line} - sections not supported"
            ));
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => (line, ""),
        };
        if value.is_empty() {
            errors.push(format!("Invalid line containing \"{name}\""));
            continue;
        }
        let Some(v) = parse_u32(value) else {
            errors.push(format!("Invalid value \"{value}\" for tunable \"{name}\""));
            continue;
        };
        match set(&mut t, name, v) {
            SetOutcome::Set => {}
            SetOutcome::Obsolete => errors.push(format!("Obsolete tunable \"{name}\"")),
            SetOutcome::Unknown => errors.push(format!("Unknown tunable \"{name}\"")),
        }
    }
    if errors.is_empty() {
        Ok(t)
    } else {
        Err(errors)
    }
}

/// Parses a number as `strtoul(.., 0)` does: decimal, `0x` hex, `0` octal.
fn parse_u32(s: &str) -> Option<u32> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()?
    } else {
        s.parse::<u64>().ok()?
    };
    u32::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunables_not_acted_on_are_real_and_current() {
        for (name, why) in NOT_ACTED_ON {
            let t = find(name).unwrap_or_else(|| panic!("{name} is no tunable"));
            assert!(!t.obsolete, "{name} is obsolete: no need to list it");
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn table_covers_every_wire_field_once() {
        assert_eq!(TUNABLES.len(), TunableList::FIELDS.len());
        // Each field gets its own slot: setting one changes exactly one value.
        for (i, d) in TUNABLES.iter().enumerate() {
            let mut t = TunableList::default();
            d.set(&mut t, 1000 + i as u32);
            let vals = t.values();
            assert_eq!(vals.iter().filter(|&&v| v != 0).count(), 1, "{}", d.name);
        }
    }

    #[test]
    fn listing_matches_the_reference_tool_output() {
        let out = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/reference/ctdb-4.17/tool-output/listvars.out"),
        )
        .expect("reference listvars output");
        let t = defaults();
        let mine: Vec<String> = names()
            .map(|n| format!("{n:<26} = {}", get(&t, n).unwrap()))
            .collect();
        let theirs: Vec<&str> = out.lines().collect();
        assert_eq!(mine, theirs);
    }

    #[test]
    fn names_are_case_insensitive_and_obsolete_is_flagged() {
        let mut t = defaults();
        assert_eq!(set(&mut t, "keepaliveinterval", 2), SetOutcome::Set);
        assert_eq!(t.keepalive_interval, 2);
        assert_eq!(set(&mut t, "VacuumLimit", 9), SetOutcome::Obsolete);
        assert_eq!(set(&mut t, "NoSuchThing", 9), SetOutcome::Unknown);
        assert_eq!(get(&t, "KEEPALIVEINTERVAL"), Some(2));
    }

    #[test]
    fn tunables_file() {
        let t = load_file_text("# c\nKeepaliveInterval=1\n KeepaliveLimit = 0x3\n").unwrap();
        assert_eq!((t.keepalive_interval, t.keepalive_limit), (1, 3));
        let e =
            load_file_text("Bogus=1\nVacuumLimit=2\nRecoverTimeout=\n[s]\nX=abc\n").unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
    }
}
