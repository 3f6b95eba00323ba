//! Processes as /proc shows them (tests that look for a daemon's
//! children, such as its recovery daemon).

/// Pids in /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// `(comm, state, ppid)` of a process, from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(String, char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    let mut rest = s[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The program a process runs (from /proc/PID/exe; a file replaced since
/// it started, as by a rebuild, still gives its path).
pub fn exe(pid: i32) -> Option<std::path::PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = exe.to_string_lossy();
    Some(s.strip_suffix(" (deleted)").unwrap_or(&s).into())
}

/// Live (not zombie) children of `parent`.
pub fn children(parent: i32) -> Vec<(i32, String)> {
    all_pids()
        .into_iter()
        .filter_map(|p| {
            let (comm, state, ppid) = stat(p)?;
            (ppid == parent && state != 'Z').then_some((p, comm))
        })
        .collect()
}

/// The recovery daemon of the daemon with pid `daemon`.
pub fn recoverd_of(daemon: i32) -> Option<i32> {
    let r: Vec<i32> = children(daemon)
        .into_iter()
        .filter(|(_, comm)| comm == "ctdb_recoverd")
        .map(|(p, _)| p)
        .collect();
    (r.len() == 1).then(|| r[0])
}

/// A child process killed and reaped when dropped (also when the test
/// fails), so nothing a test started outlives it.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
