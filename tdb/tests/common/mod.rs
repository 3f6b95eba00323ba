//! Helpers shared by the integration tests: reference files, the reference
//! tools (tdbdump, python's tdb through a helper script), child processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tdb::{OpenOptions, Tdb, flags};

/// Python with the `tdb` module (Debian's python3-tdb installs it for the
/// system interpreter, not for a pyenv one that may come first in PATH).
pub const PYTHON: &str = "/usr/bin/python3";
pub const TDBDUMP: &str = "/usr/bin/tdbdump";

/// A file in mutex mode as ctdbd keeps a volatile database, which libtdb
/// opens beside it: robust mutexes, wiped by its first opener, the
/// Jenkins hash.
pub const MUTEX_FLAGS: u32 =
    flags::MUTEX_LOCKING | flags::CLEAR_IF_FIRST | flags::INCOMPATIBLE_HASH;

/// Options that open (creating it with 131 chains) such a file.
pub fn mutex_options() -> OpenOptions {
    OpenOptions::new()
        .create(true)
        .hash_size(131)
        .tdb_flags(MUTEX_FLAGS)
        .clone()
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/reference/ctdb-4.17/tdb` in the repository.
pub fn reference_dir() -> PathBuf {
    let d = manifest_dir().join("../tests/reference/ctdb-4.17/tdb");
    assert!(
        d.is_dir(),
        "reference files missing: {} (they are part of the repository)",
        d.display()
    );
    d
}

/// Make sure a reference tool is installed; fail (not skip) otherwise.
pub fn require_tool(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run scripts/install-deps.sh (tdb-tools, python3-tdb)"
    );
}

pub fn require_python_tdb() {
    require_tool(PYTHON);
    let out = Command::new(PYTHON)
        .args(["-c", "import tdb, ctypes; ctypes.CDLL('libtdb.so.1')"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 cannot import tdb / load libtdb.so.1 (install python3-tdb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Decompress a reference `.gz` file into `dir`.
pub fn gunzip(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_stem().unwrap();
    let dst = dir.join(name);
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(src)
        .output()
        .expect("run gzip");
    assert!(out.status.success(), "gzip -dc {} failed", src.display());
    std::fs::write(&dst, out.stdout).unwrap();
    dst
}

/// Our traversal, printed as tdbdump prints it.
pub fn dump(db: &Tdb) -> String {
    let mut s = String::new();
    db.traverse_read(|k, v| {
        s.push_str(&tdb::tdbdump_record(k, v));
        ControlFlow::Continue(())
    })
    .expect("traverse");
    s
}

/// What the reference tdbdump prints for a file.
pub fn tdbdump(path: &Path) -> String {
    require_tool(TDBDUMP);
    let out = Command::new(TDBDUMP)
        .arg(path)
        .output()
        .expect("run tdbdump");
    assert!(
        out.status.success(),
        "tdbdump {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tdbdump output is ASCII")
}

/// Poll `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A python process driving libtdb (python's `tdb` module, and libtdb's C
/// functions through ctypes for what the module lacks, like chain locks).
/// It reads one command per line and answers one line per command.
pub struct LibTdb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

impl LibTdb {
    /// Start the helper and open `path` with libtdb `tdb_open` flags.
    pub fn open(path: &Path, hash_size: u32, flags: u32) -> LibTdb {
        require_python_tdb();
        let script = manifest_dir().join("tests/helpers/libtdb_driver.py");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python libtdb driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = LibTdb {
            child,
            stdin,
            stdout,
        };
        let r = d.cmd(&format!("open {} {} {}", path.display(), hash_size, flags));
        assert_eq!(r, "ok", "libtdb open failed: {r}");
        d
    }

    /// Send a command, return the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut r = String::new();
        self.stdout.read_line(&mut r).expect("read driver reply");
        assert!(!r.is_empty(), "libtdb driver died on: {line}");
        r.trim_end().to_string()
    }

    pub fn store(&mut self, k: &[u8], v: &[u8]) {
        let r = self.cmd(&format!("store {} {}", hex(k), hex(v)));
        assert_eq!(r, "ok", "libtdb store: {r}");
    }

    pub fn fetch(&mut self, k: &[u8]) -> Option<Vec<u8>> {
        let r = self.cmd(&format!("fetch {}", hex(k)));
        if r == "none" {
            None
        } else {
            Some(unhex(
                r.strip_prefix("val").expect("fetch reply").trim_start(),
            ))
        }
    }

    pub fn delete(&mut self, k: &[u8]) -> bool {
        let r = self.cmd(&format!("delete {}", hex(k)));
        r == "ok"
    }

    /// All records as (key, value), in libtdb traversal order.
    pub fn items(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let r = self.cmd("items");
        let body = r.strip_prefix("items").expect("items reply").trim();
        if body.is_empty() {
            return vec![];
        }
        body.split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once(':').unwrap();
                (unhex(k), unhex(v))
            })
            .collect()
    }

    pub fn close(mut self) {
        let _ = self.cmd("close");
        let _ = self.child.wait();
    }
}

impl Drop for LibTdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Re-run this test binary as a child process executing only the test
/// `name`, with `env` set (the child test does nothing without it).
pub fn spawn_child(name: &str, env: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn child test process")
}

/// Read the child's protocol lines (those starting with "@@").
pub struct ChildLines(pub BufReader<ChildStdout>);

impl ChildLines {
    pub fn new(child: &mut Child) -> Self {
        ChildLines(BufReader::new(child.stdout.take().unwrap()))
    }
    /// Next protocol line, or None at EOF (child gone).
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            let mut l = String::new();
            if self.0.read_line(&mut l).ok()? == 0 {
                return None;
            }
            if let Some(rest) = l.strip_prefix("@@") {
                return Some(rest.trim_end().to_string());
            }
        }
    }
}

pub fn sigkill(child: &Child) {
    kill_pid(child.id() as i32);
}

pub fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
