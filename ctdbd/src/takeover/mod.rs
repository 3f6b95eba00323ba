//! Public IP addresses: which this node can host, which it hosts, and
//! the controls and events that move them, as CTDB 4.17 does it
//! (`ctdb_takeover.c`).
//!
//! * [`addresses`]: the `public_addresses` file, interfaces, link
//!   states, which interface an address is on.
//! * [`controls`]: the controls (`GET_PUBLIC_IPS`, `TAKEOVER_IP`,
//!   `RELEASE_IP`, `IPREALLOCATED`, `ADD/DEL_PUBLIC_IP`,
//!   `RELOAD_PUBLIC_IPS`, `GET_IFACES`, `SET_IFACE_LINK_STATE`, ...).
//!   Taking, releasing and moving an address runs the `takeip`,
//!   `releaseip` and `updateip` events through the event daemon
//!   ([`crate::monitor::Monitor::run_ip_event`]); the control is answered
//!   when the event is done.
//! * [`tickles`]: TCP connections to public addresses (`TCP_CLIENT`
//!   from clients, `TCP_ADD`/`TCP_REMOVE` between nodes, tickle lists),
//!   sent to every node every `TickleUpdateInterval`, and tickled by the
//!   node that takes the address over.
//! * [`arp`]: gratuitous ARPs and tickle ACKs on the wire.
//!
//! Like the database layer it owns no sockets: the event loop hands it
//! controls, event results, client departures and ticks, and carries out
//! the [`Effect`]s it returns. Which node hosts what is decided by the
//! leader's takeover runs ([`crate::recoverd`], through
//! `ctdb_takeover_helper`).

pub mod addresses;
pub mod arp;
mod controls;
pub mod tickles;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::types::{BanState, Connection};
use ctdb_protocol::{Opcode, ReplyControl, ReqControl};
use tracing::{error, info, warn};

use crate::control::Core;
use crate::messaging::ClientId;
use crate::monitor::ScriptEvent;
use crate::server::ReplyTo;

pub use addresses::{AddressError, Addresses};

/// What the event loop must do for the public addresses.
#[derive(Debug)]
pub enum Effect {
    /// Answer a control.
    Reply(ReplyTo, ReplyControl),
    /// Run an event script event; its status comes back to
    /// [`Takeover::event_done`] with `tag`.
    RunEvent {
        event: ScriptEvent,
        args: String,
        tag: u64,
    },
    /// Send a control that wants no reply (`dest` may be a broadcast).
    Control { dest: u32, req: ReqControl },
    /// Send a message.
    Message {
        dest: u32,
        srvid: u64,
        data: Vec<u8>,
    },
}

impl Effect {
    /// A control to `dest` that wants no reply.
    pub fn noreply(dest: u32, data: ctdb_protocol::ControlRequest) -> Effect {
        let mut req = ReqControl::new(data);
        req.flags |= CTDB_CTRL_FLAG_NOREPLY;
        Effect::Control { dest, req }
    }
}

/// An event run in flight, by tag.
#[derive(Debug)]
enum Pending {
    TakeIp {
        ip: IpAddr,
        to: ReplyTo,
    },
    UpdateIp {
        ip: IpAddr,
        old: Option<String>,
        to: ReplyTo,
    },
    ReleaseIp {
        ip: IpAddr,
        target: u32,
        to: ReplyTo,
    },
    Ipreallocated {
        to: ReplyTo,
    },
    /// Dropping every address (inactive node, or too long in recovery).
    ReleaseAll {
        ip: IpAddr,
    },
}

/// Gratuitous ARPs (and tickle ACKs) still to send for an address.
#[derive(Debug)]
struct Announce {
    ip: IpAddr,
    /// The interface, for `SEND_GRATUITOUS_ARP`; a takeover uses the
    /// address's current one.
    iface: Option<String>,
    conns: Vec<Connection>,
    sent: u32,
    next: Instant,
    /// The address's `announce_gen` when scheduled (a release cancels).
    generation: u64,
}

/// How often, and how many times, an address is announced.
const ARP_REPEAT: u32 = 3;
const ARP_INTERVAL: Duration = Duration::from_millis(1100);

/// The public addresses of this node.
pub struct Takeover {
    pub addrs: Addresses,
    file: PathBuf,
    failover_disabled: bool,
    next_tag: u64,
    pending: HashMap<u64, Pending>,
    /// Connections each local client registered (`TCP_CLIENT`).
    client_conns: HashMap<ClientId, Vec<Connection>>,
    announces: Vec<Announce>,
    next_tickle_update: Option<Instant>,
    /// Whether the node was inactive at the last tick.
    was_inactive: bool,
    /// When recovery mode became ACTIVE (for `RecoveryDropAllIPs`).
    recovery_since: Option<Instant>,
    dropped_in_recovery: bool,
}

impl Takeover {
    /// No public addresses (embedders, tests).
    pub fn empty() -> Takeover {
        Takeover {
            addrs: Addresses::default(),
            file: PathBuf::new(),
            failover_disabled: true,
            next_tag: 1,
            pending: HashMap::new(),
            client_conns: HashMap::new(),
            announces: Vec::new(),
            next_tickle_update: None,
            was_inactive: false,
            recovery_since: None,
            dropped_in_recovery: false,
        }
    }

    /// Loads `CTDB_BASE/public_addresses` as CTDB does at start-up (a
    /// missing file is a warning, a bad one an error).
    pub fn load(file: PathBuf, failover_disabled: bool) -> Result<Takeover, AddressError> {
        let mut t = Takeover {
            file,
            failover_disabled,
            ..Takeover::empty()
        };
        match addresses::read_file(&t.file)? {
            None => warn!("Not loading public addresses, no file {}", t.file.display()),
            Some(entries) => {
                for (i, (ip, mask, ifaces)) in entries.into_iter().enumerate() {
                    if let Err(e) = t.addrs.add(ip, mask, &ifaces) {
                        error!("{e}");
                        error!("Failed to add line {} to the public address list", i + 1);
                        return Err(e);
                    }
                }
                info!("Loaded public addresses from {}", t.file.display());
            }
        }
        Ok(t)
    }

    /// Controls answered here.
    pub fn handles(op: Opcode) -> bool {
        use Opcode::*;
        matches!(
            op,
            TcpClient
                | TcpAdd
                | TcpRemove
                | TcpAddDelayedUpdate
                | GetTcpTickleList
                | SetTcpTickleList
                | SendGratuitousArp
                | AddPublicIp
                | DelPublicIp
                | ReleaseIp
                | TakeoverIp
                | GetPublicIps
                | GetPublicIpInfo
                | GetIfaces
                | SetIfaceLinkState
                | ReloadPublicIps
                | Ipreallocated
        )
    }

    fn tag(&mut self, p: Pending) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(t, p);
        t
    }

    /// Bans this node, as CTDB does when its addresses are in a state it
    /// cannot repair.
    fn ban_self(core: &mut Core) {
        let period = core.tunables.recovery_ban_period;
        error!("Banning this node for {period} seconds");
        let ban = BanState {
            pnn: core.node.pnn,
            time: period,
        };
        let enabled = core.tunables.enable_bans != 0;
        let _ = core.node.set_ban(ban, enabled, Instant::now());
    }

    /// The loop's timers: announcements, tickle-list updates, dropping
    /// every address when the node goes inactive or stays in recovery
    /// too long.
    pub fn tick(&mut self, core: &mut Core, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        self.announce_due(now);
        if self.next_tickle_update.is_none_or(|t| t <= now) {
            let every = u64::from(core.tunables.tickle_update_interval.max(1));
            if self.next_tickle_update.is_some() {
                out.extend(self.send_tickles_for_all(core, false));
            }
            self.next_tickle_update = Some(now + Duration::from_secs(every));
        }
        let inactive = core.node.me().is_inactive();
        if inactive && !self.was_inactive {
            warn!("Making node INACTIVE");
            info!("Dropping all public IP addresses");
            out.extend(self.release_all(core));
        }
        self.was_inactive = inactive;
        if core.node.in_recovery() {
            let since = *self.recovery_since.get_or_insert(now);
            let limit = Duration::from_secs(u64::from(core.tunables.recovery_drop_all_ips));
            if !self.dropped_in_recovery && now.duration_since(since) >= limit {
                error!("Been in recovery mode for too long. Dropping all IPS");
                self.dropped_in_recovery = true;
                out.extend(self.release_all(core));
            }
        } else {
            self.recovery_since = None;
            self.dropped_in_recovery = false;
        }
        out
    }

    /// Releases every address this node has on an interface
    /// (`ctdb_release_all_ips`).
    fn release_all(&mut self, core: &mut Core) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.failover_disabled {
            return out;
        }
        let me = core.node.pnn;
        for idx in 0..self.addrs.vnns.len() {
            let ip = self.addrs.vnns[idx].addr;
            if !addresses::have_ip(ip) {
                self.addrs.unassign(idx, me);
                continue;
            }
            let v = &mut self.addrs.vnns[idx];
            if v.update_in_flight {
                warn!(
                    "Not releasing IP {ip}/{} on interface {}, an update is already in progress",
                    v.mask,
                    iface_str(&v.iface)
                );
                continue;
            }
            v.update_in_flight = true;
            v.announce_gen += 1;
            let args = format!("{} {ip} {}", iface_str(&v.iface), v.mask);
            let tag = self.tag(Pending::ReleaseAll { ip });
            out.push(Effect::RunEvent {
                event: ScriptEvent::ReleaseIp,
                args,
                tag,
            });
        }
        out
    }

    /// An event run started by [`Effect::RunEvent`] finished (or could
    /// not start: status -1).
    pub fn event_done(&mut self, core: &mut Core, tag: u64, status: i32) -> Vec<Effect> {
        let Some(p) = self.pending.remove(&tag) else {
            return Vec::new();
        };
        match p {
            Pending::TakeIp { ip, to } => self.takeip_done(core, ip, status, to),
            Pending::UpdateIp { ip, old, to } => self.updateip_done(core, ip, old, status, to),
            Pending::ReleaseIp { ip, target, to } => self.releaseip_done(core, ip, target, to),
            Pending::Ipreallocated { to } => {
                if status != 0 {
                    error!(" \"ipreallocated\" event script failed (status {status})");
                    if status == libc::ETIMEDOUT {
                        Self::ban_self(core);
                    }
                }
                vec![Effect::Reply(to, control_status(status))]
            }
            Pending::ReleaseAll { ip } => {
                let Some(idx) = self.addrs.find(ip) else {
                    return Vec::new();
                };
                self.addrs.vnns[idx].update_in_flight = false;
                if addresses::have_ip(ip) {
                    error!("IP address {ip} not released");
                    return Vec::new();
                }
                let mut out = Vec::new();
                self.release_ip_post(core, idx, &mut out);
                info!("Released public IP {ip}");
                out
            }
        }
    }

    /// After an address left this node: tell local clients, forget the
    /// interface, delete it if that was asked for.
    fn release_ip_post(&mut self, core: &Core, idx: usize, out: &mut Vec<Effect>) {
        let ip = self.addrs.vnns[idx].addr;
        out.push(Effect::Message {
            dest: core.node.pnn,
            srvid: ctdb_protocol::message::srvid::RELEASE_IP,
            data: addr_cstring(ip),
        });
        self.addrs.unassign(idx, core.node.pnn);
        if self.addrs.vnns[idx].delete_pending {
            self.addrs.delete(idx, core.node.pnn);
        }
    }

    /// A local client went away: the connections it registered and this
    /// node still hosts are forgotten.
    pub fn client_gone(&mut self, core: &Core, id: ClientId) {
        let Some(conns) = self.client_conns.remove(&id) else {
            return;
        };
        for c in conns {
            match self.addrs.find_sock(&c.dst) {
                Some(idx) if self.addrs.vnns[idx].pnn == core.node.pnn => {
                    tickles::remove_connection(&mut self.addrs.vnns[idx], &c);
                }
                Some(_) => {}
                None => error!("unable to find public address {}", c.dst),
            }
        }
    }

    /// Another node started (`STARTUP`): it gets every tickle list of
    /// the addresses hosted here.
    pub fn node_startup(&mut self, core: &Core) -> Vec<Effect> {
        self.send_tickles_for_all(core, true)
    }
}

/// An interface name as CTDB prints one (`__none__` for none).
pub fn iface_str(i: &Option<String>) -> &str {
    i.as_deref().unwrap_or("__none__")
}

/// The address as a NUL-terminated string (`TAKE_IP`/`RELEASE_IP`
/// messages).
fn addr_cstring(ip: IpAddr) -> Vec<u8> {
    let mut v = ip.to_string().into_bytes();
    v.push(0);
    v
}

/// A reply with `status` (data-less controls).
fn control_status(status: i32) -> ReplyControl {
    ReplyControl::status(status)
}
