//! Tunables on the wire: one tunable by name (`SET_TUNABLE`), the list of
//! names (`LIST_TUNABLES`) and every value at once (`GET_ALL_TUNABLES`).
//!
//! The names, defaults and obsolete flags live with the daemon, which owns
//! them; the wire only knows positions.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, cstr_len, cstrn_len, wire_u32};

/// `ctdb_tunable`: a value then the tunable's name as a length-prefixed
/// string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tunable {
    pub name: String,
    pub value: u32,
}

impl Marshal for Tunable {
    fn len(&self) -> usize {
        4 + cstrn_len(Some(&self.name))
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.value);
        w.cstrn(Some(&self.name));
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let value = r.u32("tunable value")?;
        let name = r.cstrn("tunable name")?.unwrap_or_default();
        Ok((Tunable { name, value }, r.pos()))
    }
}

/// `ctdb_var_list`: names joined by `:` into one NUL-terminated string,
/// preceded by that string's length.
///
/// `vars` is the string split at every `:`, empty pieces included, so that a
/// received list re-encodes byte for byte (CTDB's daemon sends the names
/// with a leading `:`). Use [`VarList::names`] for the names themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VarList {
    pub vars: Vec<String>,
}

impl VarList {
    /// The non-empty names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars
            .iter()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn joined(&self) -> Option<String> {
        if self.vars.is_empty() {
            None
        } else {
            Some(self.vars.join(":"))
        }
    }
}

impl Marshal for VarList {
    fn len(&self) -> usize {
        4 + cstr_len(self.joined().as_deref())
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        let s = self.joined();
        w.u32(wire_u32(cstr_len(s.as_deref())));
        w.cstr(s.as_deref());
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let n = r.u32("var list length")? as usize;
        let start = r.pos();
        let s = r.cstr(n, "var list")?;
        if r.pos() - start != n {
            return Err(Error::Inconsistent {
                what: "var list",
                declared: n,
                actual: r.pos() - start,
            });
        }
        let vars = match s {
            Some(s) => s.split(':').map(str::to_owned).collect(),
            None => Vec::new(),
        };
        Ok((VarList { vars }, r.pos()))
    }
}

/// Declares [`TunableList`] from its fields in wire order.
macro_rules! tunable_list {
    ($($field:ident),* $(,)?) => {
        /// `ctdb_tunable_list`: every tunable's value, as u32s in this order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct TunableList {
            $(pub $field: u32,)*
        }

        impl TunableList {
            /// Field names in wire order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The values in wire order.
            pub fn values(&self) -> Vec<u32> {
                vec![$(self.$field),*]
            }

            /// Builds a list from values in wire order; missing ones are 0.
            pub fn from_values(v: &[u32]) -> Self {
                let mut it = v.iter().copied();
                TunableList { $($field: it.next().unwrap_or(0),)* }
            }
        }

        impl Marshal for TunableList {
            fn len(&self) -> usize {
                4 * Self::FIELDS.len()
            }
            fn push(&self, buf: &mut [u8]) -> usize {
                let mut w = Writer::new(buf);
                $(w.u32(self.$field);)*
                w.pos()
            }
            fn pull(buf: &[u8]) -> Result<(Self, usize)> {
                let mut r = Reader::new(buf);
                $(let $field = r.u32(concat!("tunable ", stringify!($field)))?;)*
                Ok((TunableList { $($field,)* }, r.pos()))
            }
        }
    };
}

tunable_list!(
    max_redirect_count,
    seqnum_interval,
    control_timeout,
    traverse_timeout,
    keepalive_interval,
    keepalive_limit,
    recover_timeout,
    recover_interval,
    election_timeout,
    takeover_timeout,
    monitor_interval,
    tickle_update_interval,
    script_timeout,
    monitor_timeout_count,
    script_unhealthy_on_timeout,
    recovery_grace_period,
    recovery_ban_period,
    database_hash_size,
    database_max_dead,
    rerecovery_timeout,
    enable_bans,
    deterministic_public_ips,
    reclock_ping_period,
    no_ip_failback,
    disable_ip_failover,
    verbose_memory_names,
    recd_ping_timeout,
    recd_ping_failcount,
    log_latency_ms,
    reclock_latency_ms,
    recovery_drop_all_ips,
    verify_recovery_lock,
    vacuum_interval,
    vacuum_max_run_time,
    repack_limit,
    vacuum_limit,
    max_queue_depth_drop_msg,
    allow_unhealthy_db_read,
    stat_history_interval,
    deferred_attach_timeout,
    vacuum_fast_path_count,
    lcp2_public_ip_assignment,
    allow_client_db_attach,
    recover_pdb_by_seqnum,
    deferred_rebalance_on_node_add,
    fetch_collapse,
    hopcount_make_sticky,
    sticky_duration,
    sticky_pindown,
    no_ip_takeover,
    db_record_count_warn,
    db_record_size_warn,
    db_size_warn,
    pulldb_preallocation_size,
    no_ip_host_on_all_disabled,
    samba3_hack,
    mutex_enabled,
    lock_processes_per_db,
    rec_buffer_size_limit,
    queue_buffer_size,
    ip_alloc_algorithm,
    allow_mixed_versions,
);
