//! Where node health is decided: the event scripts, run through the event
//! daemon at the points CTDB 4.17 runs them (`ctdb_daemon.c`,
//! `ctdb_monitor.c`, `ctdb_recover.c`, `eventscript.c`), and what their
//! results do to the node.
//!
//! * Start-up: the event daemon is started ([`start_eventd`]) once the
//!   node is in recovery mode; `init` runs to completion (a failure stops
//!   the daemon), then `setup` in the background: when it succeeds the
//!   recovery daemon starts and the run state becomes FIRST_RECOVERY (a
//!   failure stops the daemon).
//! * Recoveries: `START_RECOVERY` runs `startrecovery` and `END_RECOVERY`
//!   runs `recovered`; each control is answered when its event is done.
//!   After the first `recovered` the run state is STARTUP.
//! * `startup`: once the node has a valid vnn map generation, is out of
//!   recovery and (outside test mode) `RerecoveryTimeout` + 3 s have passed
//!   since the last recovery, in run state STARTUP; retried every 5 s until
//!   it succeeds; then the run state is RUNNING, the other nodes get the
//!   `STARTUP` control and the first `monitor` runs 2 s later.
//! * `monitor`: only when RUNNING, in normal recovery mode and not
//!   inactive. A failure makes the node UNHEALTHY, a success clears it; a
//!   cancelled run changes nothing; a timed-out run counts as a success
//!   until `MonitorTimeoutCount` timeouts in a row. A change is pushed to
//!   the recovery daemon (`PUSH_NODE_FLAGS`) and every node is asked for a
//!   takeover run (`TAKEOVER_RUN`, handled by the leader's recovery
//!   daemon, [`crate::recoverd`]). The interval
//!   restarts at 5 s after a change and doubles up to `MonitorInterval`.
//! * Every event gets `EventScriptTimeout`; a timed-out `startrecovery`,
//!   `recovered`, `takeip` or `releaseip` counts as a success; while
//!   recovery mode is ACTIVE only `init`, `setup`, `startrecovery`,
//!   `shutdown`, `releaseip` and `ipreallocated` may run. A synchronous
//!   event other than `init`/`shutdown` that times out bans this node.
//! * The recovery daemon ([`crate::recoverd`], a process of its own) is
//!   watched here: reaped and started again when it dies, stopped and
//!   started again after `RecdFailCount` missed pings ([`crate::recd_ping`]).
//! * Shutdown: the recovery daemon and monitoring stop, `shutdown` runs to
//!   completion, the event daemon is stopped.
//! * The event daemon going away ends this daemon ("Eventd went away -
//!   exiting", status 1).
//!
//! The event loop only forwards: timers from its tick ([`Monitor::tick`]),
//! results of runs ([`Done`], which come back as events), and the two
//! recovery controls; what it must send comes back as [`Action`]s or as
//! messages queued on [`Core::pending_messages`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdb_protocol::header::CTDB_BROADCAST_CONNECTED;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{BanState, NodeFlagChange, Runstate, SrvidMessage, node_flags};
use ctdb_protocol::{ControlReply, Marshal, ReplyControl};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use crate::control::Core;
use crate::eventd_client::{EventClient, Eventd, EventdError};
use crate::recoverd::{RecoverdConfig, RecoverdProcess};
use crate::server::{Event, ReplyTo};

/// CTDB's events (the component is always `legacy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptEvent {
    Init,
    Setup,
    Startup,
    StartRecovery,
    Recovered,
    TakeIp,
    ReleaseIp,
    UpdateIp,
    Monitor,
    Shutdown,
    Ipreallocated,
}

impl ScriptEvent {
    pub fn name(self) -> &'static str {
        match self {
            ScriptEvent::Init => "init",
            ScriptEvent::Setup => "setup",
            ScriptEvent::Startup => "startup",
            ScriptEvent::StartRecovery => "startrecovery",
            ScriptEvent::Recovered => "recovered",
            ScriptEvent::TakeIp => "takeip",
            ScriptEvent::ReleaseIp => "releaseip",
            ScriptEvent::UpdateIp => "updateip",
            ScriptEvent::Monitor => "monitor",
            ScriptEvent::Shutdown => "shutdown",
            ScriptEvent::Ipreallocated => "ipreallocated",
        }
    }

    /// The events that may run while recovery mode is ACTIVE.
    pub fn allowed_during_recovery(self) -> bool {
        matches!(
            self,
            ScriptEvent::Init
                | ScriptEvent::Setup
                | ScriptEvent::StartRecovery
                | ScriptEvent::Shutdown
                | ScriptEvent::ReleaseIp
                | ScriptEvent::Ipreallocated
        )
    }

    /// A timed-out run of these counts as a success.
    fn timeout_is_success(self) -> bool {
        matches!(
            self,
            ScriptEvent::StartRecovery
                | ScriptEvent::Recovered
                | ScriptEvent::TakeIp
                | ScriptEvent::ReleaseIp
        )
    }
}

/// A run of an event finished: the event daemon's result (0, `ENOEXEC`,
/// `ETIMEDOUT`, `ECANCELED`...), or why it could not be asked.
#[derive(Debug)]
pub struct Done {
    id: u64,
    result: Result<i32, String>,
}

/// What the event loop must do for the monitor.
#[derive(Debug)]
pub enum Action {
    /// Answer a control.
    Reply(ReplyTo, ReplyControl),
    /// Tell the other nodes this node has started up (`STARTUP`).
    BroadcastStartup,
    /// A public-address event ([`Monitor::run_ip_event`]) finished with
    /// this status ([`crate::takeover`]).
    TakeoverDone(u64, i32),
}

/// Who waits for a run.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    Setup,
    Startup,
    Monitor,
    StartRecovery(ReplyTo),
    Recovered(ReplyTo),
    /// A public-address event of [`crate::takeover`], by its tag.
    Takeover(u64),
}

/// The event daemon while it runs.
pub struct EventdHandle {
    client: Arc<EventClient>,
    pid: Option<u32>,
    /// Asks the watcher to stop the daemon; it answers when it has.
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

/// Starts the event daemon at `path` for this daemon (`ctdbd_pid`),
/// serving `socket`, with `env` added to its environment, and connects to
/// it. From then on its going away ends this process, as in CTDB.
pub async fn start_eventd(
    path: &Path,
    socket: &Path,
    ctdbd_pid: u32,
    env: &[(String, String)],
) -> Result<EventdHandle, EventdError> {
    let mut eventd = Eventd::start(path, socket, ctdbd_pid, env).await?;
    let client = match EventClient::connect(socket).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            error!("Failed to connect to event daemon");
            eventd.stop().await;
            return Err(e);
        }
    };
    let pid = eventd.pid();
    let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
    tokio::spawn(async move {
        tokio::select! {
            _ = eventd.gone() => {
                error!("Eventd went away - exiting");
                std::process::exit(1);
            }
            r = &mut stop_rx => {
                eventd.stop().await;
                if let Ok(done) = r {
                    let _ = done.send(());
                }
            }
        }
    });
    Ok(EventdHandle {
        client,
        pid,
        stop: Some(stop_tx),
    })
}

/// The monitor's state: the event daemon, the runs in flight, the
/// start-up and monitoring timers.
pub struct Monitor {
    eventd: Option<EventdHandle>,
    ev: mpsc::Sender<Event>,
    /// Test mode skips the wait for re-recoveries before `startup`.
    fast_start: bool,
    /// The recovery daemon's configuration, kept once `setup` succeeded
    /// (it is started then, and again with it).
    recoverd_cfg: Option<RecoverdConfig>,
    /// The recovery daemon process ([`Monitor::watch_recoverd`]).
    recoverd: Option<RecoverdProcess>,
    /// When a recovery daemon that died is started again.
    recoverd_restart_at: Option<Instant>,
    /// Recovery daemons sent SIGTERM, until they are reaped (killed after
    /// [`RECOVERD_STOP_GRACE`]).
    recoverd_stopping: Vec<(RecoverdProcess, Instant)>,
    /// The configuration until `setup` succeeds.
    recoverd_pending: Option<RecoverdConfig>,
    next_id: u64,
    running: HashMap<u64, (ScriptEvent, Waiter)>,
    /// `ctdb_wait_until_recovered`, `ctdb_run_startup`,
    /// `ctdb_check_health` timers.
    wait_recovered_at: Option<Instant>,
    wait_count: u32,
    startup_at: Option<Instant>,
    check_at: Option<Instant>,
    next_interval: u32,
    timeouts: u32,
    last_recovery_finished: Option<Instant>,
    stopped: bool,
}

impl Monitor {
    /// A monitor without an event daemon (for embedders and fuzzing):
    /// every event succeeds at once.
    pub fn detached(ev: mpsc::Sender<Event>) -> Monitor {
        Monitor {
            eventd: None,
            ev,
            fast_start: true,
            recoverd_cfg: None,
            recoverd: None,
            recoverd_restart_at: None,
            recoverd_stopping: Vec::new(),
            recoverd_pending: None,
            next_id: 1,
            running: HashMap::new(),
            wait_recovered_at: None,
            wait_count: 0,
            startup_at: None,
            check_at: None,
            next_interval: 5,
            timeouts: 0,
            last_recovery_finished: None,
            stopped: false,
        }
    }

    /// The monitor of a daemon with its event daemon started; `recoverd`
    /// starts once `setup` has succeeded.
    pub fn new(
        eventd: EventdHandle,
        ev: mpsc::Sender<Event>,
        recoverd: RecoverdConfig,
        fast_start: bool,
    ) -> Monitor {
        Monitor {
            eventd: Some(eventd),
            recoverd_pending: Some(recoverd),
            fast_start,
            ..Monitor::detached(ev)
        }
    }

    /// Runs `event` to completion (CTDB's synchronous runs: `init` at
    /// start-up, `shutdown` at the end). Returns the result; a refusal
    /// is -1.
    pub async fn run_sync(&self, core: &mut Core, event: ScriptEvent) -> i32 {
        if core.node.in_recovery() && !event.allowed_during_recovery() {
            error!("Refusing to run event '{}' while in recovery", event.name());
            return -1;
        }
        let Some(e) = &self.eventd else {
            return 0;
        };
        let timeout = core.tunables.script_timeout;
        let r = match e.client.run("legacy", event.name(), None, timeout).await {
            Ok(r) => r,
            Err(err) => {
                error!("event {}: {err}", event.name());
                -1
            }
        };
        let r = if r == libc::ETIMEDOUT && event.timeout_is_success() {
            error!("Ignoring hung script for {} event", event.name());
            0
        } else {
            r
        };
        if r == libc::ETIMEDOUT && !matches!(event, ScriptEvent::Init | ScriptEvent::Shutdown) {
            let period = core.tunables.recovery_ban_period;
            error!(
                "eventscript for '{}' timed out. Immediately banning ourself for {period} seconds",
                event.name()
            );
            let ban = BanState {
                pnn: core.node.pnn,
                time: period,
            };
            let enabled = core.tunables.enable_bans != 0;
            let _ = core.node.set_ban(ban, enabled, Instant::now());
        }
        r
    }

    /// Starts `event` in the background; its [`Done`] comes back to the
    /// loop. `Err` when it may not run now.
    fn run(&mut self, core: &Core, event: ScriptEvent, waiter: Waiter) -> Result<(), ()> {
        self.run_with(core, event, "", waiter)
    }

    /// Starts a public-address event (`takeip`, `releaseip`, `updateip`,
    /// `ipreallocated`) with its arguments; its status comes back as
    /// [`Action::TakeoverDone`] with `tag`. False when it may not run now.
    pub fn run_ip_event(&mut self, core: &Core, event: ScriptEvent, args: &str, tag: u64) -> bool {
        self.run_with(core, event, args, Waiter::Takeover(tag))
            .is_ok()
    }

    fn run_with(
        &mut self,
        core: &Core,
        event: ScriptEvent,
        args: &str,
        waiter: Waiter,
    ) -> Result<(), ()> {
        if core.node.in_recovery() && !event.allowed_during_recovery() {
            error!("Refusing to run event '{}' while in recovery", event.name());
            return Err(());
        }
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(id, (event, waiter));
        let ev = self.ev.clone();
        match &self.eventd {
            None => {
                let _ = ev.try_send(Event::Eventd(Done { id, result: Ok(0) }));
            }
            Some(e) => {
                let client = e.client.clone();
                let timeout = core.tunables.script_timeout;
                let args = args.to_owned();
                tokio::spawn(async move {
                    let result = client
                        .run("legacy", event.name(), Some(&args), timeout)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = ev.send(Event::Eventd(Done { id, result })).await;
                });
            }
        }
        debug!("Running event {}", event.name());
        Ok(())
    }

    /// Start-up after `init`: runs `setup` (run state SETUP).
    pub fn start_setup(&mut self, core: &mut Core) {
        core.set_runstate(Runstate::Setup);
        if self.run(core, ScriptEvent::Setup, Waiter::Setup).is_err() {
            die("Failed to set up 'setup' event");
        }
    }

    /// `START_RECOVERY` (after the cluster lock check): runs
    /// `startrecovery`, answering `to` when it is done.
    pub fn start_recovery(&mut self, core: &Core, to: ReplyTo) -> Vec<Action> {
        match self.run(core, ScriptEvent::StartRecovery, Waiter::StartRecovery(to)) {
            Ok(()) => Vec::new(),
            Err(()) => {
                error!("Unable to run startrecovery event");
                vec![Action::Reply(to, ReplyControl::status(-1))]
            }
        }
    }

    /// `END_RECOVERY`: runs `recovered`, answering `to` when it is done.
    pub fn end_recovery(&mut self, core: &Core, to: ReplyTo) -> Vec<Action> {
        error!("Recovery has finished");
        match self.run(core, ScriptEvent::Recovered, Waiter::Recovered(to)) {
            Ok(()) => Vec::new(),
            Err(()) => {
                error!("Failed to end recovery");
                vec![Action::Reply(to, ReplyControl::status(-1))]
            }
        }
    }

    /// A run finished.
    pub fn done(&mut self, core: &mut Core, d: Done) -> Vec<Action> {
        let Some((event, waiter)) = self.running.remove(&d.id) else {
            return Vec::new();
        };
        if self.stopped {
            return Vec::new();
        }
        let mut status = match d.result {
            Ok(r) => r,
            Err(e) => {
                error!("event {}: {e}", event.name());
                -1
            }
        };
        if status == libc::ETIMEDOUT && event.timeout_is_success() {
            error!("Ignoring hung script for {} event", event.name());
            status = 0;
        }
        let now = Instant::now();
        match waiter {
            Waiter::Setup => {
                if status != 0 {
                    die("Failed to run setup event");
                }
                if let Some(cfg) = self.recoverd_pending.take() {
                    self.recoverd_cfg = Some(cfg);
                    if !self.start_recoverd(core) {
                        error!("Failed to start recovery daemon");
                        std::process::exit(11);
                    }
                    core.recd_ping.ping(now, &core.tunables);
                }
                core.set_runstate(Runstate::FirstRecovery);
                self.wait_recovered_at = Some(now + Duration::from_secs(1));
                Vec::new()
            }
            Waiter::StartRecovery(to) => {
                if status != 0 {
                    error!("startrecovery event script failed (status {status})");
                }
                vec![Action::Reply(
                    to,
                    control_status(status, ControlReply::StartRecovery),
                )]
            }
            Waiter::Recovered(to) => {
                if status != 0 {
                    error!("recovered event script failed (status {status})");
                }
                // Counts the recovery, notes when it finished, and ends
                // the first recovery (FIRST_RECOVERY -> STARTUP).
                core.end_recovery();
                self.last_recovery_finished = Some(now);
                vec![Action::Reply(
                    to,
                    control_status(status, ControlReply::EndRecovery),
                )]
            }
            Waiter::Startup => self.startup_done(core, status, now),
            Waiter::Monitor => {
                self.health(core, status, now);
                Vec::new()
            }
            Waiter::Takeover(tag) => vec![Action::TakeoverDone(tag, status)],
        }
    }

    fn startup_done(&mut self, core: &mut Core, status: i32, now: Instant) -> Vec<Action> {
        if status != 0 {
            error!("startup event failed");
            self.startup_at = Some(now + Duration::from_secs(5));
            return Vec::new();
        }
        info!("startup event OK - enabling monitoring");
        core.set_runstate(Runstate::Running);
        self.next_interval = 2;
        self.check_at = Some(now + Duration::from_secs(2));
        vec![Action::BroadcastStartup]
    }

    /// A `monitor` result: the node's health.
    fn health(&mut self, core: &mut Core, status: i32, now: Instant) {
        let pnn = core.node.pnn;
        let old_flags = core.node.my_flags();
        let unhealthy = old_flags & node_flags::UNHEALTHY != 0;
        let mut judge = true;
        if status == libc::ECANCELED {
            error!("Monitoring event was cancelled");
            judge = false;
        } else if status == libc::ETIMEDOUT {
            self.timeouts += 1;
            let limit = core.tunables.monitor_timeout_count;
            if self.timeouts >= limit {
                error!("Maximum monitor timeout count {limit} reached. Making node unhealthy");
            } else {
                judge = false;
            }
        } else {
            self.timeouts = 0;
        }
        if judge {
            if status != 0 && !unhealthy {
                info!("monitor event failed - disabling node");
                core.node.set_healthy(false);
                self.next_interval = 5;
            } else if status == 0 && unhealthy {
                info!("monitor event OK - node re-enabled");
                core.node.set_healthy(true);
                self.next_interval = 5;
            }
        }
        let next = self.next_interval;
        self.next_interval = (self.next_interval * 2).min(core.tunables.monitor_interval.max(1));
        self.check_at = Some(now + Duration::from_secs(u64::from(next)));
        let new_flags = core.node.my_flags();
        if new_flags == old_flags {
            return;
        }
        let change = NodeFlagChange {
            pnn,
            new_flags,
            old_flags,
        };
        core.pending_messages
            .push((pnn, srvid::PUSH_NODE_FLAGS, change.to_bytes()));
        let state = if new_flags & node_flags::UNHEALTHY != 0 {
            "UNHEALTHY"
        } else {
            "HEALTHY"
        };
        error!("Node became {state}. Ask recovery master to reallocate IPs");
        let rd = SrvidMessage { pnn, srvid: 0 };
        core.pending_messages
            .push((CTDB_BROADCAST_CONNECTED, srvid::TAKEOVER_RUN, rd.to_bytes()));
    }

    /// The timers: waiting for the first recovery, `startup`, `monitor`.
    pub fn tick(&mut self, core: &mut Core, now: Instant) {
        if self.stopped {
            return;
        }
        self.watch_recoverd(core, now);
        if self.wait_recovered_at.is_some_and(|t| t <= now) {
            self.wait_recovered_at = None;
            self.wait_until_recovered(core, now);
        }
        if self.startup_at.is_some_and(|t| t <= now) {
            self.startup_at = None;
            if core.node.runstate < Runstate::Startup {
                info!("Not yet in startup runstate. Wait one more second");
                self.startup_at = Some(now + Duration::from_secs(1));
            } else {
                info!("Running the \"startup\" event.");
                if self
                    .run(core, ScriptEvent::Startup, Waiter::Startup)
                    .is_err()
                {
                    error!("Unable to launch startup event script");
                    self.startup_at = Some(now + Duration::from_secs(5));
                }
            }
        }
        if self.check_at.is_some_and(|t| t <= now) {
            self.check_at = None;
            self.check_health(core, now);
        }
    }

    fn wait_until_recovered(&mut self, core: &Core, now: Instant) {
        self.wait_count += 1;
        let again = now + Duration::from_secs(1);
        if self.wait_count < 60 || self.wait_count.is_multiple_of(600) {
            info!("CTDB_WAIT_UNTIL_RECOVERED");
            if core.node.my_flags() & node_flags::STOPPED != 0 {
                info!("Node is STOPPED. Node will NOT recover.");
            }
        }
        if core.node.vnnmap.generation == ctdb_protocol::header::INVALID_GENERATION {
            self.wait_recovered_at = Some(again);
            return;
        }
        if core.node.in_recovery() {
            info!("in recovery. Wait one more second");
            self.wait_recovered_at = Some(again);
            return;
        }
        let settle = Duration::from_secs(u64::from(core.tunables.rerecovery_timeout) + 3);
        if !self.fast_start
            && self
                .last_recovery_finished
                .is_some_and(|t| now.duration_since(t) < settle)
        {
            info!("wait for pending recoveries to end. Wait one more second.");
            self.wait_recovered_at = Some(again);
            return;
        }
        self.startup_at = Some(now);
    }

    fn check_health(&mut self, core: &Core, now: Instant) {
        let skip = core.node.in_recovery()
            || core.node.me().is_inactive()
            || core.node.runstate != Runstate::Running;
        if skip {
            self.check_at = Some(now + Duration::from_secs(u64::from(self.next_interval)));
            return;
        }
        if self
            .run(core, ScriptEvent::Monitor, Waiter::Monitor)
            .is_err()
        {
            error!("Unable to launch monitor event script");
            self.next_interval = 5;
            self.check_at = Some(now + Duration::from_secs(5));
        }
    }

    /// Starts the recovery daemon; false (logged) when it cannot be.
    fn start_recoverd(&mut self, core: &Core) -> bool {
        let Some(cfg) = &self.recoverd_cfg else {
            return false;
        };
        match RecoverdProcess::start(cfg, core.log.level()) {
            Ok(p) => {
                debug!("Started recovery daemon (pid {})", p.pid());
                self.recoverd = Some(p);
                true
            }
            Err(e) => {
                error!("Unable to start recovery daemon: {e}");
                false
            }
        }
    }

    /// CTDB's `ctdb_stop_recoverd`: SIGTERM to the recovery daemon, which
    /// is reaped later (or killed if it does not go).
    fn stop_recoverd(&mut self, now: Instant) {
        if let Some(p) = self.recoverd.take() {
            info!("Shutting down recovery daemon");
            p.terminate();
            self.recoverd_stopping.push((p, now));
        }
    }

    /// The recovery daemon's life: reap stopped ones; one that died is
    /// started again a second later (CTDB notices with `kill(pid, 0)` every
    /// 30 s; here its exit is seen at once); after `RecdFailCount` missed
    /// pings it is stopped and a new one started (its first ping sets the
    /// timer again), as CTDB does.
    fn watch_recoverd(&mut self, core: &mut Core, now: Instant) {
        self.recoverd_stopping.retain_mut(|(p, since)| {
            if p.exited().is_some() {
                return false;
            }
            if now.duration_since(*since) >= RECOVERD_STOP_GRACE {
                error!(
                    "Recovery daemon (pid {}) did not exit within {} s of SIGTERM - killing it",
                    p.pid(),
                    RECOVERD_STOP_GRACE.as_secs()
                );
                p.kill();
            }
            true
        });
        if self.recoverd_cfg.is_none() {
            return;
        }
        if core.recd_ping.check(now, &core.tunables) == crate::recd_ping::Verdict::Restart {
            self.stop_recoverd(now);
            self.recoverd_restart_at = None;
            if !self.start_recoverd(core) {
                self.recoverd_restart_at = Some(now + RECOVERD_RESTART_DELAY);
            }
            return;
        }
        if let Some(p) = &mut self.recoverd
            && let Some(status) = p.exited()
        {
            error!(
                "Recovery daemon (pid:{}) is no longer running. Trying to restart recovery daemon.",
                p.pid()
            );
            info!("Recovery daemon (pid:{}) ended: {status}", p.pid());
            self.recoverd = None;
            self.recoverd_restart_at = Some(now + RECOVERD_RESTART_DELAY);
        }
        if self.recoverd_restart_at.is_some_and(|t| t <= now) {
            self.recoverd_restart_at = None;
            error!("Restarting recovery daemon");
            info!("Shutting down recovery daemon");
            if !self.start_recoverd(core) {
                self.recoverd_restart_at = Some(now + RECOVERD_RESTART_DELAY);
            }
        }
    }

    /// The recovery daemon's pid, while it runs.
    pub fn recoverd_pid(&self) -> Option<u32> {
        self.recoverd.as_ref().map(RecoverdProcess::pid)
    }

    /// The shutdown sequence's part: stop the recovery daemon and
    /// monitoring, run `shutdown`, stop the event daemon.
    pub async fn shutdown(&mut self, core: &mut Core) {
        self.stopped = true;
        self.recoverd_restart_at = None;
        self.stop_recoverd(Instant::now());
        for (mut p, _) in std::mem::take(&mut self.recoverd_stopping) {
            p.wait_or_kill(RECOVERD_STOP_GRACE).await;
        }
        self.wait_recovered_at = None;
        self.startup_at = None;
        self.check_at = None;
        info!("Monitoring has been stopped");
        if self.eventd.is_none() {
            return;
        }
        self.run_sync(core, ScriptEvent::Shutdown).await;
        if let Some(mut e) = self.eventd.take()
            && let Some(stop) = e.stop.take()
        {
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            }
        }
    }

    /// The event daemon's pid, if it runs.
    pub fn eventd_pid(&self) -> Option<u32> {
        self.eventd.as_ref().and_then(|e| e.pid)
    }
}

/// How long a recovery daemon sent SIGTERM has to exit before SIGKILL.
const RECOVERD_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long after a recovery daemon died (or could not be started) a new
/// one is started.
const RECOVERD_RESTART_DELAY: Duration = Duration::from_secs(1);

/// A control's reply for an event's result.
fn control_status(status: i32, ok: ControlReply) -> ReplyControl {
    if status == 0 {
        ReplyControl::ok(ok)
    } else {
        ReplyControl::status(status)
    }
}

/// CTDB's `ctdb_die`: log and exit with status 1.
fn die(msg: &str) -> ! {
    tracing::error!("ctdb exiting with error: {msg}");
    std::process::exit(1);
}
