//! A client workload for whole-cluster tests: on every node a separate
//! client process (`ctdb-increment persistent-loop`, as real clients are
//! processes: a client's g_lock dies with it) increments its own key in
//! persistent transactions without pause (or, [`Mode::Volatile`], under
//! fetch-lock in a volatile database), and is started again whenever it
//! exits (its node went away, a commit gave up during a recovery), until
//! the workload is stopped. Each node's [`ClientLoad`] counts the commits
//! attempted and acknowledged, when each was acknowledged, and the errors
//! the client processes exited with.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::test_client;

/// How many distinct client errors a [`ClientLoad`] keeps.
const MAX_ERRORS: usize = 10;

/// What one node's clients saw.
#[derive(Default)]
pub struct ClientLoad {
    acks: Mutex<Vec<Instant>>,
    acked: AtomicU64,
    attempted: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Per client process: when it started, and its acks.
    processes: Mutex<Vec<(SystemTime, u64)>>,
}

impl ClientLoad {
    /// Commits acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Commits attempted so far (acknowledged or not).
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::SeqCst)
    }

    /// When each acknowledgement arrived, in order.
    pub fn acks(&self) -> Vec<Instant> {
        self.acks.lock().unwrap().clone()
    }

    /// Acks of the client processes started after `t` (those that can
    /// only have spoken to a daemon started again after a kill before
    /// `t`); a process still running counts once the workload stopped.
    pub fn acked_by_clients_started_after(&self, t: SystemTime) -> u64 {
        self.processes
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s > t)
            .map(|(_, n)| n)
            .sum()
    }

    /// The distinct errors client processes exited with (the first ten).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Counts one output line of a client; true for an ack.
    fn line(&self, line: &str) -> bool {
        match line {
            "attempt" => {
                self.attempted.fetch_add(1, Ordering::SeqCst);
                false
            }
            "ack" => {
                self.acks.lock().unwrap().push(Instant::now());
                self.acked.fetch_add(1, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    fn error(&self, msg: &str) {
        let msg = msg.trim();
        if msg.is_empty() {
            return;
        }
        let mut e = self.errors.lock().unwrap();
        if !e.iter().any(|m| m == msg) && e.len() < MAX_ERRORS {
            e.push(msg.to_owned());
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Persistent transactions (`ctdb-increment persistent-loop`); an ack
    /// is a commit the daemon acknowledged.
    Persistent,
    /// Fetch-lock increments in a volatile database (`ctdb-increment
    /// volatile-loop`); an ack is an increment stored under the lock.
    Volatile,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent-loop",
            Mode::Volatile => "volatile-loop",
        }
    }
}

/// The running workload; [`Workload::stop`] ends it.
pub struct Workload {
    stop: Arc<AtomicBool>,
    loads: Vec<Arc<ClientLoad>>,
    children: Vec<Arc<Mutex<Option<Child>>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts one client per socket: the client of `sockets[k]` increments
    /// key `{key_prefix}{k}` of persistent database `db` (attached
    /// beforehand).
    pub fn start(sockets: Vec<PathBuf>, db: &str, key_prefix: &str) -> Workload {
        Workload::start_mode(sockets, Mode::Persistent, db, key_prefix)
    }

    /// Starts one client per socket doing `mode`'s increments of key
    /// `{key_prefix}{k}` of `db` (attached beforehand, of `mode`'s kind).
    pub fn start_mode(sockets: Vec<PathBuf>, mode: Mode, db: &str, key_prefix: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = Workload {
            stop,
            loads: Vec::new(),
            children: Vec::new(),
            workers: Vec::new(),
        };
        for (k, socket) in sockets.into_iter().enumerate() {
            let load = Arc::<ClientLoad>::default();
            let child = Arc::<Mutex<Option<Child>>>::default();
            let (stop, l, ch) = (w.stop.clone(), load.clone(), child.clone());
            let (db, key) = (db.to_owned(), format!("{key_prefix}{k}"));
            w.workers.push(std::thread::spawn(move || {
                client_loop(&socket, mode, &db, &key, &stop, &l, &ch)
            }));
            w.loads.push(load);
            w.children.push(child);
        }
        w
    }

    /// What node `k`'s clients saw so far.
    pub fn load(&self, k: usize) -> &ClientLoad {
        &self.loads[k]
    }

    /// Commits acknowledged so far by node `k`'s clients.
    pub fn acked(&self, k: usize) -> u64 {
        self.loads[k].acked()
    }

    /// Acknowledged commits of all nodes' clients.
    pub fn total_acked(&self) -> u64 {
        self.loads.iter().map(|l| l.acked()).sum()
    }

    /// Stops every client (killed where running) and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for ch in &self.children {
            if let Some(ch) = ch.lock().unwrap().as_mut() {
                let _ = ch.kill();
            }
        }
        for w in self.workers.drain(..) {
            w.join().unwrap();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        } else {
            // Leave no client running; do not wait on threads mid-panic.
            self.stop.store(true, Ordering::SeqCst);
            for ch in &self.children {
                if let Ok(mut g) = ch.lock()
                    && let Some(ch) = g.as_mut()
                {
                    let _ = ch.kill();
                }
            }
        }
    }
}

/// One node's client, started again whenever it exits, until `stop`.
fn client_loop(
    socket: &std::path::Path,
    mode: Mode,
    db: &str,
    key: &str,
    stop: &AtomicBool,
    load: &ClientLoad,
    child: &Mutex<Option<Child>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let started = SystemTime::now();
        let mut ch = test_client("ctdb-increment")
            .arg(socket)
            .args([mode.arg(), db, key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctdb-increment");
        let out = ch.stdout.take().unwrap();
        let mut err = ch.stderr.take().unwrap();
        *child.lock().unwrap() = Some(ch);
        // Its errors are read alongside, so no amount of them can block it.
        let errors = std::thread::spawn(move || {
            let mut msg = String::new();
            let _ = err.read_to_string(&mut msg);
            msg
        });
        let mut acks = 0;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            acks += u64::from(load.line(&line));
        }
        load.processes.lock().unwrap().push((started, acks));
        if let Some(mut ch) = child.lock().unwrap().take() {
            let _ = ch.wait();
        }
        load.error(&errors.join().unwrap_or_default());
        if !stop.load(Ordering::SeqCst) {
            // Its node is away or in recovery: start again shortly.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
