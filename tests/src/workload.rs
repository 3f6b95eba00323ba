//! A client workload for whole-cluster tests: on every node a separate
//! client process (`ctdb-increment persistent-loop`, as real clients are
//! processes: a client's g_lock dies with it) increments its own key in
//! persistent transactions without pause, and is started again whenever it
//! exits (its node went away, a commit gave up during a recovery), until
//! the workload is stopped. Each node's [`ClientLoad`] counts the commits
//! attempted and acknowledged, when each was acknowledged, and the errors
//! the client processes exited with.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::our_bin;

/// How many distinct client errors a [`ClientLoad`] keeps.
const MAX_ERRORS: usize = 10;

/// What one node's clients saw.
#[derive(Default)]
pub struct ClientLoad {
    acks: Mutex<Vec<Instant>>,
    acked: AtomicU64,
    attempted: AtomicU64,
    errors: Mutex<Vec<String>>,
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

    /// The distinct errors client processes exited with (the first ten).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn line(&self, line: &str) {
        match line {
            "attempt" => {
                self.attempted.fetch_add(1, Ordering::SeqCst);
            }
            "ack" => {
                self.acks.lock().unwrap().push(Instant::now());
                self.acked.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
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
                client_loop(&socket, &db, &key, &stop, &l, &ch)
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
    db: &str,
    key: &str,
    stop: &AtomicBool,
    load: &ClientLoad,
    child: &Mutex<Option<Child>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut ch = Command::new(our_bin("ctdb-increment"))
            .arg(socket)
            .args(["persistent-loop", db, key])
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
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            load.line(&line);
        }
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
