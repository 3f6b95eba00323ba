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

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
/// start-up.
pub fn note_recovery_helper(path: &Path) {
    let r = probe(path);
    match &r {
        Ok(()) => info!(
            "recovery helper {} recovers keyed databases",
            path.display()
        ),
        Err(why) => warn!("keyed databases cannot be attached on this node: {why}"),
    }
    let _ = HELPER.set(r);
}

fn probe(path: &Path) -> Result<(), String> {
    let not = |why: String| {
        Err(format!(
            "the recovery helper {} does not speak ctdb-rs's copy-epoch protocol ({why}); \
             keyed databases need ctdb-rs's ctdb_recovery_helper (CTDB_RECOVERY_HELPER): \
             CTDB's merges them by rsn alone, which can bring back part of an \
             unacknowledged commit",
            path.display()
        ))
    };
    let mut child = match Command::new(path)
        .arg(FEATURES_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return not(format!("cannot run it: {e}")),
    };
    let deadline = Instant::now() + PROBE_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return not(format!("no answer in {PROBE_LIMIT:?}"));
            }
            Err(e) => return not(format!("cannot wait for it: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if status.success() && out.lines().any(|l| l.trim() == COPY_EPOCH_FEATURE) {
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
pub fn epoch(tdb: &tdb::Tdb) -> Result<u64, String> {
    Ok(epoch_record(tdb)?.map(|(e, _)| e).unwrap_or(0))
}

/// The epoch record: the epoch and the generation of the recovery that
/// wrote it.
fn epoch_record(tdb: &tdb::Tdb) -> Result<Option<(u64, u32)>, String> {
    let v = tdb
        .fetch(KEYED_EPOCH_KEY)
        .map_err(|e| format!("cannot read the copy epoch: {e}"))?;
    Ok(v.and_then(|v| {
        let (h, d) = LtdbHeader::split(&v).ok()?;
        let e = u64::from_le_bytes(d.get(..8)?.try_into().ok()?);
        Some((e, h.reserved1))
    }))
}

/// Whether the recovery transaction open on `tdb`, of the recovery to
/// `generation`, may commit: the copy it leaves carries an epoch record
/// written for this recovery with an epoch above `before` (this node's
/// before the recovery), or holds no record at all.
pub fn check_recovered(
    name: &str,
    before: u64,
    generation: u32,
    tdb: &tdb::Tdb,
) -> Result<(), String> {
    let (after, stamped) = epoch_record(tdb)?.unwrap_or((0, 0));
    if after > before && stamped == generation {
        return Ok(());
    }
    let empty = tdb
        .record_count()
        .map_err(|e| format!("cannot count records: {e}"))?
        == 0;
    if empty {
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
        assert!(check_recovered("k", 3, 9, &t).is_ok());
        t.store(b"a", &epoch_value(1, 0), tdb::StoreMode::Replace)
            .unwrap();
        let e = check_recovered("k", 0, 9, &t).unwrap_err();
        assert!(e.contains("copy epoch 0"), "{e}");
        t.store(KEYED_EPOCH_KEY, &epoch_value(4, 9), tdb::StoreMode::Replace)
            .unwrap();
        assert_eq!(epoch(&t).unwrap(), 4);
        assert!(check_recovered("k", 3, 9, &t).is_ok());
        // Not above the epoch held.
        assert!(check_recovered("k", 4, 9, &t).is_err());
        // Above it, but carried along from another recovery (CTDB's
        // helper pushing the highest copy's record to a node behind).
        let e = check_recovered("k", 2, 10, &t).unwrap_err();
        assert!(e.contains("generation 9"), "{e}");
    }

    #[test]
    fn a_helper_that_does_not_answer_the_features_is_not_ours() {
        let e = probe(Path::new("/bin/false")).unwrap_err();
        assert!(e.contains("copy-epoch"), "{e}");
        assert!(probe(Path::new("/nonexistent/helper")).is_err());
    }
}
