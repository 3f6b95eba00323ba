//! Scripted tool cases: a cluster state for `fake_ctdbd`, then commands with
//! their exact expected stdout, stderr and exit code.
//!
//! A case file (`tests/cases/NAME.case`) is a list of sections, each
//! started by a `--- ` line:
//!
//! ```text
//! --- about
//! what the case checks
//! --- state              (fake_ctdbd's input; absent: no daemon runs)
//! NODEMAP
//! 0 10.0.0.1 0x0 CURRENT RECMASTER
//! --- nodes              (optional: the nodes file in CTDB_BASE)
//! --- mask               (optional: `digits` masks numbers, day and month names)
//! --- file: NAME         (optional: a file to create in the scratch directory)
//! --- run: status -X     (a step: the tool's arguments; '' is an empty one)
//! --- stdin              (optional, for the step)
//! --- rc: 0
//! --- stdout
//! --- stderr
//! ```
//!
//! Paths under the case's scratch directory print as `$TMP`; `$REF` in an
//! argument is the reference data directory (`tests/reference/ctdb-4.17`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One command of a case and what it must print.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub rc: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A case file.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub path: PathBuf,
    pub about: String,
    pub state: Option<String>,
    pub nodes: Option<String>,
    pub mask_digits: bool,
    /// Files to create in the scratch directory first: (name, content).
    pub files: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

/// Splits a `run:` line into arguments (`'...'` quotes one argument).
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut have = false;
    for c in s.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                have = true;
            }
            ' ' if !quoted => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        out.push(cur);
    }
    out
}

fn join_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Case {
    pub fn parse(path: &Path) -> Case {
        let text = std::fs::read_to_string(path).unwrap();
        let mut case = Case {
            path: path.to_owned(),
            ..Default::default()
        };
        let mut section: Option<String> = None;
        let mut body = String::new();
        let flush = |case: &mut Case, section: &Option<String>, body: &mut String| {
            let b = std::mem::take(body);
            let Some(sec) = section else { return };
            let step = case.steps.last_mut();
            match sec.as_str() {
                "about" => case.about = b.trim_end().to_owned(),
                "state" => case.state = Some(b),
                "nodes" => case.nodes = Some(b),
                "mask" => case.mask_digits = b.contains("digits"),
                s if s.starts_with("file:") => {
                    case.files.push((s["file:".len()..].trim().to_owned(), b));
                }
                "stdin" => step.expect("stdin before run").stdin = Some(b),
                "stdout" => step.expect("stdout before run").stdout = b,
                "stderr" => step.expect("stderr before run").stderr = b,
                "stdout nonl" => step.expect("stdout before run").stdout = strip_nl(b),
                "stderr nonl" => step.expect("stderr before run").stderr = strip_nl(b),
                s if s.starts_with("run:") || s.starts_with("rc:") => {}
                other => panic!("{}: unknown section {other}", path.display()),
            }
        };
        for line in text.split_inclusive('\n') {
            if let Some(h) = line.strip_prefix("--- ") {
                flush(&mut case, &section, &mut body);
                let h = h.trim_end_matches('\n').to_owned();
                if let Some(a) = h.strip_prefix("run:") {
                    case.steps.push(Step {
                        args: split_args(a.trim()),
                        ..Default::default()
                    });
                } else if let Some(rc) = h.strip_prefix("rc:") {
                    case.steps.last_mut().expect("rc before run").rc = rc.trim().parse().unwrap();
                }
                section = Some(h);
            } else {
                body.push_str(line);
            }
        }
        flush(&mut case, &section, &mut body);
        case
    }

    /// Writes the case back (after its expectations were regenerated).
    pub fn write(&self) {
        let mut s = format!("--- about\n{}\n", self.about);
        if let Some(st) = &self.state {
            s.push_str("--- state\n");
            s.push_str(st);
        }
        if let Some(n) = &self.nodes {
            s.push_str("--- nodes\n");
            s.push_str(n);
        }
        if self.mask_digits {
            s.push_str("--- mask\ndigits\n");
        }
        for (name, content) in &self.files {
            s.push_str(&format!("--- file: {name}\n"));
            s.push_str(content);
        }
        for st in &self.steps {
            s.push_str(&format!("--- run: {}\n", join_args(&st.args)));
            if let Some(i) = &st.stdin {
                s.push_str("--- stdin\n");
                s.push_str(i);
            }
            s.push_str(&format!("--- rc: {}\n", st.rc));
            section(&mut s, "stdout", &st.stdout);
            section(&mut s, "stderr", &st.stderr);
        }
        std::fs::write(&self.path, s).unwrap();
    }

    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

fn strip_nl(mut b: String) -> String {
    if b.ends_with('\n') {
        b.pop();
    }
    b
}

/// Writes an output section; output without a final newline is marked.
fn section(s: &mut String, name: &str, body: &str) {
    if body.is_empty() || body.ends_with('\n') {
        s.push_str(&format!("--- {name}\n{body}"));
    } else {
        s.push_str(&format!("--- {name} nonl\n{body}\n"));
    }
}

/// Every case file, sorted by name.
pub fn all_cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .collect();
    v.sort();
    v.iter().map(|p| Case::parse(p)).collect()
}

pub use ctdb_tests::fake::FakeDaemon;

/// Starts `fake_ctdbd` with `state` in `dir`, serving `dir/ctdbd.socket`.
pub fn start_fake(dir: &Path, state: &str) -> FakeDaemon {
    FakeDaemon::start(dir, &dir.join("ctdbd.socket"), state, |_| {})
}

/// Masks what changes from run to run: numbers, day and month names.
pub fn mask(s: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    for w in [
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ] {
        out = out.replace(w, "Day");
    }
    // Column widths follow the numbers: squeeze runs of spaces.
    let mut squeezed = String::new();
    let mut prev_space = false;
    for c in out.chars() {
        if c == ' ' && prev_space {
            continue;
        }
        prev_space = c == ' ';
        squeezed.push(c);
    }
    squeezed
}

/// Runs every step of `case` with `tool`; returns the steps as they ran.
pub fn run_case(case: &Case, tool: &Path) -> Vec<Step> {
    let t0 = std::time::Instant::now();
    let r = run_case_inner(case, tool);
    if std::env::var_os("CTDB_CASE_TIMES").is_some() {
        eprintln!("TIME {:.2} {}", t0.elapsed().as_secs_f64(), case.name());
    }
    r
}

fn run_case_inner(case: &Case, tool: &Path) -> Vec<Step> {
    let dir = tempfile::Builder::new()
        .prefix("ctdb-case-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    if let Some(n) = &case.nodes {
        std::fs::write(d.join("nodes"), n).unwrap();
    }
    for (name, content) in &case.files {
        std::fs::write(d.join(name), content).unwrap();
    }
    let refdir = ctdb_tests::reference_dir().display().to_string();
    let _daemon = case.state.as_ref().map(|s| start_fake(d, s));
    let tmp = d.display().to_string();
    let mut out = Vec::new();
    for step in &case.steps {
        let mut cmd = Command::new(tool);
        // Its own process group: the reference tool's run-time limit kills
        // its whole group.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let args: Vec<String> = step
            .args
            .iter()
            .map(|a| a.replace("$REF", &refdir))
            .collect();
        cmd.args(&args)
            .env("CTDB_SOCKET", d.join("ctdbd.socket"))
            .env("CTDB_BASE", d)
            .env_remove("CTDB_TEST_MODE")
            .env_remove("CTDB_TIMEOUT")
            .env("TZ", "UTC")
            .current_dir(d)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = step.stdin.clone().unwrap_or_default();
        let mut sin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = sin.write_all(input.as_bytes());
        });
        let o = child.wait_with_output().unwrap();
        let _ = writer.join();
        let clean = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).replace(&tmp, "$TMP");
            if case.mask_digits { mask(&s) } else { s }
        };
        out.push(Step {
            args: step.args.clone(),
            stdin: step.stdin.clone(),
            rc: o.status.code().unwrap_or(-1),
            stdout: clean(&o.stdout),
            stderr: clean(&o.stderr),
        });
    }
    out
}

/// Differences between what a case expects and what ran, as text.
pub fn differences(case: &Case, got: &[Step]) -> Option<String> {
    let mut s = String::new();
    for (want, got) in case.steps.iter().zip(got) {
        let w_out = if case.mask_digits {
            mask(&want.stdout)
        } else {
            want.stdout.clone()
        };
        let w_err = if case.mask_digits {
            mask(&want.stderr)
        } else {
            want.stderr.clone()
        };
        if want.rc != got.rc || w_out != got.stdout || w_err != got.stderr {
            s.push_str(&format!(
                "--- {} : ctdb {}\n  rc: want {} got {}\n  stdout want:\n{}\n  stdout got:\n{}\n  stderr want:\n{}\n  stderr got:\n{}\n",
                case.name(),
                join_args(&want.args),
                want.rc,
                got.rc,
                w_out,
                got.stdout,
                w_err,
                got.stderr
            ));
        }
    }
    (!s.is_empty()).then_some(s)
}

/// Runs `f` over the cases on several threads (the cases mostly wait on
/// timers and sockets, so more threads than cores pay off), each thread
/// taking the next case from a shared queue; results come in case order.
pub fn parallel<T: Send>(cases: &[Case], f: impl Fn(&Case) -> T + Sync) -> Vec<T> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = 12.min(cases.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    let r = f(c);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every case ran"))
        .collect()
}
