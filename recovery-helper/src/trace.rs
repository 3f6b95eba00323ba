//! Machine-readable progress events, for tests and benchmarks.
//!
//! When `CTDB_RECOVERY_HELPER_TRACE` names a file, the helper appends one
//! line per event to it:
//!
//! ```text
//! pid=4242 seq=17 us=10532 ev=pull-start db=0x2b432a4d node=1
//! ```
//!
//! `seq` orders the events of one helper process (lines are written under
//! a lock, so file order is `seq` order), `us` is microseconds since the
//! process started. Several helper runs may append to the same file; `pid`
//! tells them apart. Without the variable, events cost nothing.

use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

struct Sink {
    file: Mutex<(File, u64)>,
    start: Instant,
}

static SINK: OnceLock<Option<Sink>> = OnceLock::new();

/// Opens the trace file (once); `None` turns events off.
pub fn init(path: Option<&Path>) {
    let sink = path.and_then(
        |p| match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(Sink {
                file: Mutex::new((f, 0)),
                start: Instant::now(),
            }),
            Err(e) => {
                tracing::warn!("cannot open trace file {}: {e}", p.display());
                None
            }
        },
    );
    let _ = SINK.set(sink);
}

/// Whether events are being recorded.
pub fn enabled() -> bool {
    matches!(SINK.get(), Some(Some(_)))
}

/// Appends one event line.
pub fn emit(ev: &str, fields: Arguments<'_>) {
    let Some(Some(sink)) = SINK.get() else {
        return;
    };
    let us = sink.start.elapsed().as_micros();
    let mut g = sink.file.lock().unwrap_or_else(|e| e.into_inner());
    g.1 += 1;
    let line = format!(
        "pid={} seq={} us={us} ev={ev} {fields}\n",
        std::process::id(),
        g.1
    );
    let _ = g.0.write_all(line.as_bytes());
}

/// `trace_event!("pull-start", "db={:#010x} node={}", id, pnn)`
#[macro_export]
macro_rules! trace_event {
    ($ev:expr) => {
        if $crate::trace::enabled() {
            $crate::trace::emit($ev, format_args!(""))
        }
    };
    ($ev:expr, $($arg:tt)*) => {
        if $crate::trace::enabled() {
            $crate::trace::emit($ev, format_args!($($arg)*))
        }
    };
}

/// The process's peak resident set size in KiB (`VmHWM`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
