//! The run-time limit (`-T`, `CTDB_TIMEOUT`): when it passes, the tool
//! prints "Maximum runtime exceeded - exiting" and exits 1, after sending
//! SIGTERM to every process it started (the `lvs`, `natgw` and `event`
//! helpers and whatever they run), so that nothing it started prints after
//! it, as CTDB's tool does by signalling its process group.
//!
//! Unlike CTDB's tool, it never signals its own caller: it ends its
//! descendants only (found through `/proc`), not every process of the
//! group it was started in.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Set once the limit has passed.
static FIRED: AtomicBool = AtomicBool::new(false);

/// Starts the clock: after `secs` seconds the process ends as described
/// above. Nothing happens for 0.
pub fn start(secs: u64) {
    if secs == 0 {
        return;
    }
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        FIRED.store(true, Ordering::SeqCst);
        // Held until the exit, so that the command, woken by a helper's
        // death, prints nothing more. Stdout is not flushed (a command may
        // hold its lock for a whole listing); its complete lines are out
        // already, as with CTDB's line-buffered stdout.
        let mut err = std::io::stderr().lock();
        // All at once, as a signal to a process group is: stopped first, so
        // that none can report another's death ("Terminated") before its own.
        let all: Vec<Pid> = descendants(std::process::id() as i32)
            .into_iter()
            .map(Pid::from_raw)
            .collect();
        for sig in [Signal::SIGSTOP, Signal::SIGTERM, Signal::SIGCONT] {
            for &p in &all {
                let _ = kill(p, sig);
            }
        }
        let _ = writeln!(err, "Maximum runtime exceeded - exiting");
        std::process::exit(1);
    });
}

/// Called before the tool exits on its own: once the limit has passed, the
/// limit's exit is the one that happens, so this never returns then.
pub fn wait_if_fired() {
    while FIRED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Every process whose chain of parents leads to `root` (not `root`),
/// parents before their children.
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = match std::fs::read_dir("/proc") {
        Ok(dir) => dir
            .filter_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some((pid, parent_of(&stat)?))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The parent pid in a `/proc/PID/stat` line (the field after the state,
/// which follows the command name's closing parenthesis).
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_field_after_a_name_with_parentheses() {
        assert_eq!(parent_of("42 (a (b) c) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let sh = child.id() as i32;
        let parent = |p: i32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parent_of(&s))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (found, sleeper) = loop {
            let d = descendants(me);
            let sleeper = d.iter().copied().find(|&p| parent(p) == Some(sh));
            if sleeper.is_some() || std::time::Instant::now() > deadline {
                break (d, sleeper);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(p) = sleeper {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&sh), "{found:?} lacks the shell {sh}");
        assert!(sleeper.is_some(), "{found:?} lacks the shell's child");
        assert!(!found.contains(&me));
    }
}
