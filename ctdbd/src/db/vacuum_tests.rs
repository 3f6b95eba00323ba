//! The vacuuming rules, on node 1 of three (generation 5, volatile
//! `t.tdb`): what a run deletes at once, what goes to the lmaster or to
//! the other nodes, what `TRY_DELETE_RECORDS` keeps, and that a record
//! written again meanwhile is never deleted.

use std::time::Instant;

use ctdb_protocol::types::{KeyData, LtdbHeader, RecBuffer, record_flags};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl};

use crate::db::test_layer::{Layer, key_for};
use crate::db::{Effect, ltdb};
use crate::server::ReplyTo;

fn fixture() -> Layer {
    Layer::new("t.tdb", false)
}

fn hdr(rsn: u64, dmaster: u32, flags: u32) -> LtdbHeader {
    LtdbHeader {
        rsn,
        dmaster,
        reserved1: 0,
        flags,
    }
}

impl Layer {
    /// Stores a record empty, as a client deleting it, and schedules it.
    fn client_delete(&mut self, key: &[u8], h: LtdbHeader) {
        self.put(key, &h, b"");
        let r = self.dbs.schedule_for_deletion(&KeyData {
            db_id: self.id,
            header: h,
            key: key.to_vec(),
        });
        assert_eq!(r.status, 0);
    }

    /// A fast run, stepped until it waits for other nodes; the controls
    /// it sent.
    fn vacuum_run(&mut self) -> Vec<(u32, u64, ControlRequest)> {
        let id = self.id;
        self.with(|d, env| {
            d.vacuum_start(env, id, false, false, Some(ReplyTo::Nobody))
                .unwrap();
            for _ in 0..10 {
                d.vacuum_tick(env, Instant::now());
            }
            controls(d.take_effects())
        })
    }

    /// Hands the layer a reply to one of its vacuuming controls, and steps
    /// the run on.
    fn vacuum_reply(&mut self, tag: u64, r: ReplyControl) {
        self.dbs.vacuum_control_reply(tag, &Ok(r));
        self.with(|d, env| {
            for _ in 0..10 {
                d.vacuum_tick(env, Instant::now());
            }
        });
    }
}

fn controls(fx: Vec<Effect>) -> Vec<(u32, u64, ControlRequest)> {
    fx.into_iter()
        .filter_map(|e| match e {
            Effect::Control {
                dest,
                req,
                tag: Some(t),
            } => Some((dest, t, req.data)),
            _ => None,
        })
        .collect()
}

/// The delete queue: a record never migrated with data is deleted at once
/// on its lmaster; one that was goes to the other nodes first; one whose
/// lmaster is another node goes there with `VACUUM_FETCH`; one written
/// again (data, or a new rsn) since it was deleted stays.
#[test]
fn the_delete_queue_sorts_records_as_ctdb() {
    let mut f = fixture();
    let plain = key_for(1, 0);
    let moved = key_for(1, 1);
    let remote = key_for(2, 0);
    let revived = key_for(1, 2);
    let newer = key_for(1, 3);
    f.client_delete(&plain, hdr(3, 1, 0));
    f.client_delete(&moved, hdr(4, 1, record_flags::MIGRATED_WITH_DATA));
    f.client_delete(&remote, hdr(2, 1, 0));
    f.client_delete(&revived, hdr(5, 1, 0));
    f.put(&revived, &hdr(5, 1, 0), b"alive again");
    f.client_delete(&newer, hdr(5, 1, 0));
    f.put(&newer, &hdr(6, 1, 0), b"");
    let sent = f.vacuum_run();
    assert!(f.get(&plain).is_none(), "plain record not deleted");
    assert_eq!(f.get(&revived).unwrap().1, b"alive again");
    assert_eq!(f.get(&newer).unwrap().0.rsn, 6);
    // Still here until every node deleted its copy.
    assert!(f.get(&moved).is_some());
    let fetch: Vec<_> = sent
        .iter()
        .filter(|(_, _, r)| matches!(r, ControlRequest::VacuumFetch(_)))
        .collect();
    assert_eq!(fetch.len(), 1);
    assert_eq!(fetch[0].0, 2);
    let ControlRequest::VacuumFetch(rb) = &fetch[0].2 else {
        unreachable!()
    };
    assert_eq!(
        rb.iter().map(|r| r.key.to_vec()).collect::<Vec<_>>(),
        vec![remote.clone()]
    );
    // The lmaster answers; then TRY_DELETE_RECORDS goes to nodes 0 and 2.
    f.vacuum_reply(fetch[0].1, ReplyControl::ok(ControlReply::VacuumFetch));
    let tries = controls(f.dbs.take_effects());
    let mut dests: Vec<u32> = tries.iter().map(|(d, _, _)| *d).collect();
    dests.sort();
    assert_eq!(dests, vec![0, 2]);
    let ControlRequest::TryDeleteRecords(rb) = &tries[0].2 else {
        panic!("{:?}", tries[0].2)
    };
    let recs: Vec<_> = rb.iter().collect();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].key, moved.as_slice());
    assert_eq!(ltdb::split(recs[0].data).unwrap().0.rsn, 4);
    // Both deleted their copies: deleted here too.
    for (_, tag, _) in &tries {
        f.vacuum_reply(
            *tag,
            ReplyControl::ok(ControlReply::TryDeleteRecords(RecBuffer::new(f.id))),
        );
    }
    assert!(f.get(&moved).is_none(), "record not deleted on its lmaster");
}

/// A node that kept its copy (or a record migrated away meanwhile) keeps
/// the lmaster's copy too.
#[test]
fn a_record_kept_anywhere_is_kept_on_the_lmaster() {
    for kept_remotely in [true, false] {
        let mut f = fixture();
        let key = key_for(1, 0);
        f.client_delete(&key, hdr(4, 1, record_flags::MIGRATED_WITH_DATA));
        let sent = f.vacuum_run();
        let tries: Vec<_> = sent
            .iter()
            .filter(|(_, _, r)| matches!(r, ControlRequest::TryDeleteRecords(_)))
            .cloned()
            .collect();
        assert_eq!(tries.len(), 2);
        if !kept_remotely {
            // Meanwhile a client on node 2 fetched it (and this node
            // stored it as node 2's).
            f.put(&key, &hdr(4, 2, record_flags::MIGRATED_WITH_DATA), b"");
        }
        for (dest, tag, req) in tries {
            let ControlRequest::TryDeleteRecords(rb) = req else {
                unreachable!()
            };
            let kept = if kept_remotely && dest == 2 {
                rb
            } else {
                RecBuffer::new(f.id)
            };
            f.vacuum_reply(tag, ReplyControl::ok(ControlReply::TryDeleteRecords(kept)));
        }
        assert!(f.get(&key).is_some(), "kept_remotely {kept_remotely}");
    }
}

/// `TRY_DELETE_RECORDS` on a node that is not the lmaster: an older copy
/// (or none) is deleted; a newer copy, a copy this node masters, a
/// record it is lmaster of, or one with read-only flags is kept and
/// returned.
#[test]
fn try_delete_keeps_newer_copies() {
    let mut f = fixture();
    let old = key_for(0, 0);
    let newer = key_for(0, 1);
    let mine = key_for(0, 2);
    let absent = key_for(0, 3);
    let lmaster_here = key_for(1, 0);
    let ro = key_for(0, 4);
    f.put(&old, &hdr(3, 0, 0), b"stale data");
    f.put(&newer, &hdr(9, 0, 0), b"");
    f.put(&mine, &hdr(4, 1, 0), b"");
    f.put(&lmaster_here, &hdr(1, 0, 0), b"");
    f.put(&ro, &hdr(2, 0, record_flags::RO_HAVE_READONLY), b"");
    let mut rb = RecBuffer::new(f.id);
    for k in [&old, &newer, &mine, &absent, &lmaster_here, &ro] {
        rb.add(f.id, Some(&hdr(4, 0, 0)), k, &[]);
    }
    let ctx = crate::control::ControlCtx {
        srcnode: 0,
        client: None,
        client_id: 0,
    };
    let req = ctdb_protocol::ReqControl::new(ControlRequest::TryDeleteRecords(rb.clone()));
    let to = ReplyTo::Node { pnn: 0, reqid: 9 };
    let fx = f.with(|d, env| {
        assert!(d.try_delete_records(env, &ctx, &req, to, &rb).is_none());
        d.take_effects()
    });
    let Some(Effect::Reply(_, r)) = fx.first() else {
        panic!("{fx:?}")
    };
    let Some(ControlReply::TryDeleteRecords(kept)) = &r.data else {
        panic!("{r:?}")
    };
    let mut kept: Vec<Vec<u8>> = kept.iter().map(|r| r.key.to_vec()).collect();
    kept.sort();
    let mut want = vec![
        newer.clone(),
        mine.clone(),
        lmaster_here.clone(),
        ro.clone(),
    ];
    want.sort();
    assert_eq!(kept, want);
    assert!(f.get(&old).is_none());
    assert!(f.get(&newer).is_some() && f.get(&mine).is_some());
}

/// Scheduling keeps one entry per key (a newer header replaces the
/// older), and `VACUUM_FETCH` fills the fetch queue.
#[test]
fn queues() {
    let mut f = fixture();
    let k = key_for(2, 0);
    f.client_delete(&k, hdr(1, 1, 0));
    f.client_delete(&k, hdr(2, 1, 0));
    let v = &f.dbs.vacuum.dbs[&f.id];
    assert_eq!(v.delete_queue.len(), 1);
    assert_eq!(v.delete_queue.values().next().unwrap().hdr.rsn, 2);
    let mut rb = RecBuffer::new(f.id);
    rb.add(0, None, &k, &[]);
    assert_eq!(f.dbs.vacuum_fetch(&rb).status, 0);
    assert_eq!(f.dbs.vacuum.dbs[&f.id].fetch_queue.len(), 1);
    let mut unknown = RecBuffer::new(0x1234);
    unknown.add(0, None, &k, &[]);
    assert_ne!(f.dbs.vacuum_fetch(&unknown).status, 0);
}

/// A queued record whose chain a client holds when the run comes is not
/// forgotten (CTDB's fast path drops it until a full run): the next fast
/// run deletes it. (A file with mutexes: another thread of this process
/// holding an fcntl lock would not keep the loop out.)
#[test]
fn a_busy_record_stays_queued_for_the_next_run() {
    let mut f = Layer::new("t.tdb", true);
    let key = key_for(1, 0);
    f.client_delete(&key, hdr(3, 1, 0));
    let (_, release, client) = f.client_holds(&key);
    f.vacuum_run();
    // (Not read from the file while the client holds the chain: a repack
    // would wait for it.)
    let queued = &f.dbs.vacuum.dbs[&f.id].delete_queue;
    assert!(
        queued.values().any(|q| q.key == key),
        "the busy record left the delete queue"
    );
    drop(release);
    client.join().unwrap();
    // The run ends once its repack check (which waited for the chain too)
    // reports back.
    while f.dbs.vacuum.running() {
        let ev = f.next_event("the end of the first run");
        f.with(|d, env| {
            d.event(env, ev);
            d.vacuum_tick(env, Instant::now());
        });
    }
    f.vacuum_run();
    assert!(f.get(&key).is_none(), "the busy record was forgotten");
}
