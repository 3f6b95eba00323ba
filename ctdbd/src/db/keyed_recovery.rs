//! Keyed databases and the recovery helper that recovers them.
//!
//! A keyed database (`db_flags::KEYED`) is safe against node failure only
//! when its recoveries merge the copies of the nodes at the highest copy
//! epoch and leave the others out (ctdb-rs's helper,
//! `recovery-helper/src/merge.rs`). CTDB's helper sees the kind as a
//! volatile database and merges every node's copy per record by rsn: a
//! node that missed a recovery can bring back part of a commit that was
//! never acknowledged. This daemon does not let that happen, in two places:
//!
//! * **Attach**: a new keyed database is attached only when this node's
//!   recovery helper says it speaks the copy-epoch protocol (asked once,
//!   at start-up: `HELPER --ctdb-rs-features` prints
//!   [`COPY_EPOCH_FEATURE`]; CTDB's helper prints its usage and fails).
//!   The probe that every other node answers before a keyed attach asks
//!   the same of each node's own helper, so whichever node leads a later
//!   recovery runs a helper that can recover it.
//! * **Recovery commit**: whatever helper drives it, a recovery
//!   transaction of a keyed database commits only if the copy it leaves
//!   holds an epoch record written for this very recovery (stamped with
//!   its generation, the transaction id) with an epoch above the one this
//!   node held before (every recovery by our helper writes the next
//!   epoch), or holds no record at all (`ctdb wipedb`). CTDB's helper
//!   carries the old epoch record along, stamped with an older generation:
//!   refused on every node, the one whose copy is behind included.
//!   Otherwise the transaction is cancelled, the node keeps its copy, and
//!   the commit fails with an error that names the cause: the recovery
//!   fails loudly instead of merging by rsn alone. This covers a keyed
//!   database that exists from before a node's helper was changed.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use ctdb_protocol::types::{KEYED_EPOCH_KEY, LtdbHeader};
use tracing::{info, warn};

/// The argument that asks a recovery helper which ctdb-rs protocols it
/// speaks (one per line on stdout, exit status 0).
pub const FEATURES_ARG: &str = "--ctdb-rs-features";

/// The protocol a helper must name to recover keyed databases.
pub const COPY_EPOCH_FEATURE: &str = "keyed-copy-epoch";

/// What [`note_recovery_helper`] found out.
static HELPER: OnceLock<Result<(), String>> = OnceLock::new();

/// How long the helper may take to answer [`FEATURES_ARG`].
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Asks the recovery helper at `path` whether it speaks the copy-epoch
/// protocol, and remembers the answer for [`helper_check`]. Called once at
/// start-up, before the event loop runs; it waits on the runtime (the
/// acceptors and signal handlers started before it go on meanwhile).
pub async fn note_recovery_helper(path: &Path) {
    let r = probe(path).await;
    match &r {
        Ok(()) => info!(
            "recovery helper {} recovers keyed databases",
            path.display()
        ),
        Err(why) => warn!("keyed databases cannot be attached on this node: {why}"),
    }
    let _ = HELPER.set(r);
}

/// Whether some line of the helper's output, read in pieces as it comes,
/// is [`COPY_EPOCH_FEATURE`]. Only the current line is kept, at most a
/// little longer than the feature's name: whatever the helper writes,
/// the probe's memory stays bounded.
#[derive(Default)]
struct FeatureScan {
    line: Vec<u8>,
    long: bool,
    found: bool,
}

impl FeatureScan {
    const KEEP: usize = COPY_EPOCH_FEATURE.len() + 64;

    fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i)),
                None => (chunk, None),
            };
            if self.line.len() + part.len() > Self::KEEP {
                self.long = true;
            } else {
                self.line.extend_from_slice(part);
            }
            match end {
                Some(i) => {
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => break,
            }
        }
    }

    fn end_line(&mut self) {
        if !self.long && self.line.trim_ascii() == COPY_EPOCH_FEATURE.as_bytes() {
            self.found = true;
        }
        self.line.clear();
        self.long = false;
    }
}

async fn probe(path: &Path) -> Result<(), String> {
    let not = |why: String| {
        Err(format!(
            "the recovery helper {} does not speak ctdb-rs's copy-epoch protocol ({why}); \
             keyed databases need ctdb-rs's ctdb_recovery_helper (CTDB_RECOVERY_HELPER): \
             CTDB's merges them by rsn alone, which can bring back part of an \
             unacknowledged commit",
            path.display()
        ))
    };
    let mut child = match tokio::process::Command::new(path)
        .arg(FEATURES_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return not(format!("cannot run it: {e}")),
    };
    let Some(mut stdout) = child.stdout.take() else {
        return not("no pipe to its output".to_owned());
    };
    // Its output is read while it runs: one that writes more than a pipe
    // holds must not wait for a reader that only comes once it exited.
    let answer = async {
        let read = async {
            let mut scan = FeatureScan::default();
            let mut buf = [0u8; 8192];
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                scan.feed(&buf[..n]);
            }
            scan.end_line();
            Ok::<bool, std::io::Error>(scan.found)
        };
        tokio::join!(read, child.wait())
    };
    let (found, status) = match tokio::time::timeout(PROBE_LIMIT, answer).await {
        Ok((found, Ok(status))) => (found.unwrap_or(false), status),
        Ok((_, Err(e))) => return not(format!("cannot wait for it: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            return not(format!("no answer in {PROBE_LIMIT:?}"));
        }
    };
    if status.success() && found {
        Ok(())
    } else {
        not(format!("`{FEATURES_ARG}` answered {status}"))
    }
}

/// Whether this node may attach a new keyed database: its recovery helper
/// speaks the copy-epoch protocol. A layer that never noted a helper (unit
/// tests of the database layer) may.
pub fn helper_check() -> Result<(), String> {
    HELPER.get().cloned().unwrap_or(Ok(()))
}

/// The copy epoch a keyed database's file holds (0 without the record).
/// An epoch record that cannot be read, or holds less than an epoch, is
/// an error, not epoch 0: see [`check_recovered`].
pub fn epoch(tdb: &tdb::Tdb) -> Result<u64, String> {
    Ok(epoch_record(tdb)?.map(|(e, _)| e).unwrap_or(0))
}

/// The epoch record: the epoch and the generation of the recovery that
/// wrote it. A record with no data (deleted) is none.
fn epoch_record(tdb: &tdb::Tdb) -> Result<Option<(u64, u32)>, String> {
    let v = tdb
        .fetch(KEYED_EPOCH_KEY)
        .map_err(|e| format!("cannot read the copy epoch: {e}"))?;
    let Some(v) = v else {
        return Ok(None);
    };
    let (h, d) = LtdbHeader::split(&v)
        .map_err(|e| format!("the copy epoch record is damaged (its header: {e})"))?;
    if d.is_empty() {
        return Ok(None);
    }
    let e = d
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| {
            format!(
                "the copy epoch record is damaged ({} bytes of data, not 8)",
                d.len()
            )
        })?;
    Ok(Some((e, h.reserved1)))
}

/// Whether the recovery transaction open on `tdb`, of the recovery to
/// `generation`, may commit: the copy it leaves carries an epoch record
/// written for this recovery with an epoch above `before` (this node's
/// before the recovery), or holds no record at all.
///
/// `before` is an error when this node's epoch could not be read when the
/// transaction started (a damaged epoch record). The helper saw this node
/// at epoch 0 too (`DB_CHANGELOG_INFO` cannot report an epoch it cannot
/// read), i.e. behind every node with a readable epoch, and pushed it the
/// current copy: that copy, stamped for this recovery, is taken (logged),
/// so the damage heals at the next recovery. Refusing it instead would
/// refuse every later recovery of the database on this node as well (a
/// ban credit each time, and no way out but a wipe of every node).
pub fn check_recovered(
    name: &str,
    before: &Result<u64, String>,
    generation: u32,
    tdb: &tdb::Tdb,
) -> Result<(), String> {
    let empty = || -> Result<bool, String> {
        Ok(tdb
            .record_count()
            .map_err(|e| format!("cannot count records: {e}"))?
            == 0)
    };
    let before = match before {
        Ok(b) => *b,
        Err(why) => {
            tracing::warn!(
                "keyed database {name}: its copy epoch was unknown when the recovery started \
                 ({why}): the copy pushed for this recovery replaces it"
            );
            0
        }
    };
    let (after, stamped) = match epoch_record(tdb) {
        Ok(r) => r.unwrap_or((0, 0)),
        Err(_) if empty()? => return Ok(()),
        Err(why) => {
            return Err(format!(
                "keyed database {name}: recovery refused, this node keeps its copy: the \
                 pushed copy's epoch cannot be read: {why}"
            ));
        }
    };
    if after > before && stamped == generation {
        return Ok(());
    }
    if empty()? {
        return Ok(());
    }
    Err(format!(
        "keyed database {name}: recovery refused, this node keeps its copy: the pushed \
         copy carries copy epoch {after} written in generation {stamped}, not a new epoch \
         (above the {before} held here) written for this recovery (generation \
         {generation}), so the recovery was not driven by a helper that speaks \
         ctdb-rs's copy-epoch protocol \
         (CTDB's ctdb_recovery_helper merges keyed databases by rsn alone, which can \
         bring back part of an unacknowledged commit); set CTDB_RECOVERY_HELPER to \
         ctdb-rs's ctdb_recovery_helper on every node"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_value(e: u64, generation: u32) -> Vec<u8> {
        LtdbHeader {
            reserved1: generation,
            ..Default::default()
        }
        .prepend(&e.to_le_bytes())
    }

    #[test]
    fn recovery_commits_only_past_the_held_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let t = tdb::OpenOptions::new()
            .create(true)
            .open(dir.path().join("k.tdb"))
            .unwrap();
        assert_eq!(epoch(&t).unwrap(), 0);
        // Empty: a wipe is fine whatever the epoch was.
        assert!(check_recovered("k", &Ok(3), 9, &t).is_ok());
        t.store(b"a", &epoch_value(1, 0), tdb::StoreMode::Replace)
            .unwrap();
        let e = check_recovered("k", &Ok(0), 9, &t).unwrap_err();
        assert!(e.contains("copy epoch 0"), "{e}");
        t.store(KEYED_EPOCH_KEY, &epoch_value(4, 9), tdb::StoreMode::Replace)
            .unwrap();
        assert_eq!(epoch(&t).unwrap(), 4);
        assert!(check_recovered("k", &Ok(3), 9, &t).is_ok());
        // Not above the epoch held.
        assert!(check_recovered("k", &Ok(4), 9, &t).is_err());
        // Above it, but carried along from another recovery (CTDB's
        // helper pushing the highest copy's record to a node behind).
        let e = check_recovered("k", &Ok(2), 10, &t).unwrap_err();
        assert!(e.contains("generation 9"), "{e}");
    }

    /// An epoch that could not be read is not epoch 0: a copy held at an
    /// unknown epoch is replaced by nothing but a wipe.
    #[test]
    fn an_unknown_epoch_takes_the_copy_pushed_for_this_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let t = tdb::OpenOptions::new()
            .create(true)
            .open(dir.path().join("k.tdb"))
            .unwrap();
        // A damaged epoch record is an error, not epoch 0.
        let short = LtdbHeader::default().prepend(&[1, 2, 3]);
        t.store(KEYED_EPOCH_KEY, &short, tdb::StoreMode::Replace)
            .unwrap();
        let why = epoch(&t).unwrap_err();
        assert!(why.contains("damaged"), "{why}");
        // Deleted (header only): none.
        t.store(
            KEYED_EPOCH_KEY,
            &LtdbHeader::default().prepend(&[]),
            tdb::StoreMode::Replace,
        )
        .unwrap();
        assert_eq!(epoch(&t).unwrap(), 0);
        let before = Err(why);
        // A new epoch written for this recovery replaces the damaged copy
        // (else every later recovery would be refused too); one not
        // written for it (another generation: not our helper) does not.
        t.store(KEYED_EPOCH_KEY, &epoch_value(1, 9), tdb::StoreMode::Replace)
            .unwrap();
        assert!(check_recovered("k", &Ok(0), 9, &t).is_ok());
        assert!(check_recovered("k", &before, 9, &t).is_ok());
        let e = check_recovered("k", &before, 10, &t).unwrap_err();
        assert!(e.contains("generation"), "{e}");
        // Wiped: fine.
        t.wipe_all().unwrap();
        assert!(check_recovered("k", &before, 9, &t).is_ok());
        // The pushed copy's record damaged: refused, also with the epoch
        // before known.
        t.store(KEYED_EPOCH_KEY, &short, tdb::StoreMode::Replace)
            .unwrap();
        let e = check_recovered("k", &Ok(0), 9, &t).unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_helper_that_does_not_answer_the_features_is_not_ours() {
        let rt = rt();
        let e = rt.block_on(probe(Path::new("/bin/false"))).unwrap_err();
        assert!(e.contains("copy-epoch"), "{e}");
        assert!(
            rt.block_on(probe(Path::new("/nonexistent/helper")))
                .is_err()
        );
    }

    /// A helper script `dir/name`: each script has a path of its own, so
    /// none is written over a file that was just run (a child that still
    /// runs it makes the write fail with ETXTBSY).
    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        assert!(!p.exists(), "{} written twice", p.display());
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A helper that writes more than a pipe holds (64 KiB) before its
    /// answer is read while it runs: read only after it exited, it would
    /// block on the full pipe until the probe's time limit.
    #[test]
    fn a_long_answer_is_read_while_the_helper_runs() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let long = script(
            dir.path(),
            "long",
            &format!(
                "head -c 300000 /dev/zero | tr '\\0' x; echo; echo {COPY_EPOCH_FEATURE}; \
                 head -c 300000 /dev/zero | tr '\\0' y"
            ),
        );
        let r = rt.block_on(probe(&long));
        assert!(r.is_ok(), "{r:?}");
        // The feature inside a longer line, or a helper that fails, is no.
        let inside = script(dir.path(), "inside", &format!("echo x{COPY_EPOCH_FEATURE}"));
        assert!(rt.block_on(probe(&inside)).is_err());
        let failing = script(
            dir.path(),
            "failing",
            &format!("echo {COPY_EPOCH_FEATURE}; exit 1"),
        );
        assert!(rt.block_on(probe(&failing)).is_err());
        let last_line = script(
            dir.path(),
            "last_line",
            &format!("printf ' {COPY_EPOCH_FEATURE} '"),
        );
        assert!(rt.block_on(probe(&last_line)).is_ok());
    }

    #[test]
    fn the_scan_finds_the_feature_across_pieces() {
        let mut s = FeatureScan::default();
        for piece in [&b"usage\nkeyed-co"[..], b"py-epo", b"ch\r\nmore"] {
            s.feed(piece);
        }
        assert!(s.found);
        let mut s = FeatureScan::default();
        s.feed(&vec![b'k'; 10_000]);
        s.feed(COPY_EPOCH_FEATURE.as_bytes());
        s.feed(b"\n");
        assert!(!s.found, "the tail of a long line is not a line");
    }
}
