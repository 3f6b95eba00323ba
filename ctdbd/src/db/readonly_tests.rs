//! Read-only delegations through the layer, on node 1 of three
//! (generation 5, volatile `t.tdb` marked read-only): copies handed out
//! instead of migrations, the revocation a write or migration waits for,
//! its failure, and the reader's side.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::call::{ReplyCall, ReqCall, call_flags, call_id};
use ctdb_protocol::types::{LtdbHeader, db_flags, record_flags as rf};
use ctdb_protocol::{Body, ControlRequest, Header, Operation, Packet, ReplyControl};

use super::readonly::{RO_GRACE, tracking_nodes};
use super::test_layer::{Layer, key_for};
use super::{Effect, ltdb};

fn fixture() -> Layer {
    fixture_with(false)
}

/// With robust mutexes for record locks when `mutexes`.
fn fixture_with(mutexes: bool) -> Layer {
    let mut f = Layer::new("t.tdb", mutexes);
    let id = f.id;
    let r = f.with(|d, env| d.set_db_readonly(env, id));
    assert_eq!(r.status, 0);
    assert_ne!(f.dbs.dbs[&id].flags & db_flags::READONLY, 0);
    f
}

impl Layer {
    fn node_call(
        &mut self,
        src: u32,
        reqid: u32,
        flags: u32,
        callid: u32,
        key: &[u8],
    ) -> Vec<Effect> {
        let call = ReqCall {
            flags,
            db_id: self.id,
            callid,
            hopcount: 1,
            key: key.to_vec(),
            calldata: Vec::new(),
        };
        let mut h = Header::new(Operation::ReqCall, 1, src, reqid);
        h.generation = 5;
        let b: Bytes = Packet::new(h, Body::ReqCall(call)).encode().into();
        self.packet(b)
    }

    /// A record this node masters (`rsn`, `data`), a read-only copy of it
    /// handed to node 2, then node 0 asking for the record: the
    /// revocation's updates.
    fn delegated_then_wanted(
        &mut self,
        key: &[u8],
        rsn: u64,
        data: &[u8],
    ) -> Vec<(u32, u64, LtdbHeader, Vec<u8>)> {
        let h = LtdbHeader {
            rsn,
            dmaster: 1,
            ..Default::default()
        };
        self.put(key, &h, data);
        self.node_call(2, 1, RO, call_id::FETCH_WITH_HEADER_FUNC, key);
        let fx = self.node_call(
            0,
            2,
            call_flags::IMMEDIATE_MIGRATION,
            call_id::NULL_FUNC,
            key,
        );
        updates(&fx)
    }

    fn tracked(&self, key: &[u8]) -> Vec<u32> {
        let t = &self.dbs.ro_tracking(self.id).unwrap();
        tracking_nodes(&t.fetch(key).unwrap().unwrap_or_default())
    }
}

const RO: u32 = call_flags::IMMEDIATE_MIGRATION | call_flags::WANT_READONLY;

fn decode(e: &Effect) -> (u32, Packet) {
    match e {
        Effect::ToNode(d, b) => (*d, Packet::decode_request(b).unwrap()),
        other => panic!("unexpected effect {other:?}"),
    }
}

/// The `UPDATE_RECORD`s of a revocation: (node, tag, header, data).
fn updates(fx: &[Effect]) -> Vec<(u32, u64, LtdbHeader, Vec<u8>)> {
    fx.iter()
        .map(|e| match e {
            Effect::Control {
                dest,
                req,
                tag: Some(tag),
            } => match &req.data {
                ControlRequest::UpdateRecord(rb) => {
                    let rec = rb.iter().next().unwrap();
                    let (h, d) = rec.header().unwrap();
                    (*dest, *tag, h, d.to_vec())
                }
                other => panic!("unexpected control {other:?}"),
            },
            other => panic!("unexpected effect {other:?}"),
        })
        .collect()
}

#[test]
fn copies_are_delegated_and_revoked_before_a_migration() {
    let mut f = fixture();
    let key = key_for(1, 0);
    f.put(
        &key,
        &LtdbHeader {
            rsn: 10,
            dmaster: 1,
            ..Default::default()
        },
        b"v1",
    );
    // Nodes 2 and 0 ask for read-only copies: they get them, the record
    // stays here.
    for src in [2, 0] {
        let fx = f.node_call(src, 40 + src, RO, call_id::FETCH_WITH_HEADER_FUNC, &key);
        assert_eq!(fx.len(), 1, "{fx:?}");
        let (dest, p) = decode(&fx[0]);
        assert_eq!(dest, src);
        let Body::ReplyCall(r) = p.body else {
            panic!("{:?}", p.body)
        };
        let (h, d) = ltdb::split(&r.data).unwrap();
        assert_eq!(
            (h.rsn, h.dmaster, h.flags, d),
            (11, 1, rf::RO_HAVE_READONLY, &b"v1"[..])
        );
    }
    let (h, _) = f.get(&key).unwrap();
    assert_eq!(
        (h.rsn, h.dmaster, h.flags),
        (13, 1, rf::RO_HAVE_DELEGATIONS)
    );
    assert_eq!(f.tracked(&key), [0, 2]);
    assert_eq!(f.dbs.dbs[&f.id].stats.db_ro_delegations, 2);

    // Node 2 wants the record itself: the copies are revoked first.
    let fx = f.node_call(
        2,
        50,
        call_flags::IMMEDIATE_MIGRATION,
        call_id::NULL_FUNC,
        &key,
    );
    let ups = updates(&fx);
    assert_eq!(ups.iter().map(|u| u.0).collect::<Vec<_>>(), [0, 2]);
    for (_, _, h, d) in &ups {
        assert_eq!((h.rsn, h.dmaster, h.flags), (12, 1, rf::MIGRATED_WITH_DATA));
        assert_eq!(d, b"v1");
    }
    let (h, _) = f.get(&key).unwrap();
    assert_eq!(h.flags, rf::RO_HAVE_DELEGATIONS | rf::RO_REVOKING_READONLY);
    // Calls meanwhile wait, read-only requests included.
    assert!(
        f.node_call(0, 51, RO, call_id::FETCH_WITH_HEADER_FUNC, &key)
            .is_empty()
    );
    assert_eq!(f.dbs.ro_revokes_active(), 1);

    // Both copies revoked: the revocation is complete, the migration runs.
    f.with(|d, env| d.control_reply(env, ups[0].1, Ok(ReplyControl::status(0))));
    assert!(!f.dbs.has_ready(), "one holder has not answered");
    f.with(|d, env| d.control_reply(env, ups[1].1, Ok(ReplyControl::status(0))));
    assert_eq!(f.dbs.ro_revokes_active(), 0);
    let (h, _) = f.get(&key).unwrap();
    assert_eq!(h.rsn, 14);
    assert_ne!(h.flags & rf::RO_REVOKE_COMPLETE, 0);
    let fx = f.run_ready();
    assert_eq!(fx.len(), 1, "only the migration runs now: {fx:?}");
    let (dest, p) = decode(&fx[0]);
    assert_eq!((dest, p.header.reqid), (2, 50));
    let Body::ReplyDmaster(r) = p.body else {
        panic!("{:?}", p.body)
    };
    assert_eq!((r.rsn, r.record_flags & rf::RO_FLAGS), (15, 0));
    let (h, _) = f.get(&key).unwrap();
    assert_eq!((h.dmaster, h.flags & rf::RO_FLAGS), (2, 0));
    assert!(f.tracked(&key).is_empty());
    assert_eq!(f.dbs.dbs[&f.id].stats.db_ro_revokes, 1);

    // The read-only request waits out the grace, then finds the record
    // gone: redirected to its new dmaster.
    f.dbs.ro_tick(Instant::now());
    assert!(!f.dbs.has_ready());
    f.dbs
        .ro_tick(Instant::now() + RO_GRACE + Duration::from_millis(1));
    let fx = f.run_ready();
    let (dest, p) = decode(&fx[0]);
    assert_eq!((dest, p.header.reqid, p.header.srcnode), (2, 51, 0));
    assert!(matches!(p.body, Body::ReqCall(_)));
}

#[test]
fn a_failed_revocation_keeps_the_delegations_and_is_tried_again() {
    let mut f = fixture();
    let key = key_for(1, 0);
    let ups = f.delegated_then_wanted(&key, 4, b"x");
    assert_eq!(ups.len(), 1);
    f.with(|d, env| d.control_reply(env, ups[0].1, Err("node is disconnected".into())));
    let (h, _) = f.get(&key).unwrap();
    assert_eq!(
        h.flags,
        rf::RO_HAVE_DELEGATIONS,
        "revoking cleared, delegations kept"
    );
    assert!(
        !f.dbs.has_ready(),
        "after a failure every call waits a moment"
    );
    f.dbs
        .ro_tick(Instant::now() + RO_GRACE + Duration::from_millis(1));
    let fx = f.run_ready();
    // The call starts the next revocation.
    assert_eq!(updates(&fx).len(), 1);
}

#[test]
fn a_readers_copy_is_stored_and_a_local_write_revokes_on_the_dmaster() {
    let mut f = fixture();
    // A record node 0 masters: a local client asks for a read-only copy.
    let key = key_for(0, 0);
    f.put(
        &key,
        &LtdbHeader {
            rsn: 7,
            dmaster: 0,
            ..Default::default()
        },
        b"old",
    );
    let call = ReqCall {
        flags: RO,
        db_id: f.id,
        callid: call_id::NULL_FUNC,
        hopcount: 0,
        key: key.clone(),
        calldata: Vec::new(),
    };
    let fx = f.with(|d, env| {
        d.client_call(env, 9, 77, call);
        d.take_effects()
    });
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 0);
    let Body::ReqCall(sent) = p.body else {
        panic!()
    };
    assert_eq!(
        sent.callid,
        call_id::FETCH_WITH_HEADER_FUNC,
        "turned into a fetch with header"
    );
    assert_ne!(sent.flags & call_flags::WANT_READONLY, 0);
    // Node 0's copy arrives: stored here with its read-only flag.
    let copy = LtdbHeader {
        rsn: 9,
        dmaster: 0,
        reserved1: 0,
        flags: rf::RO_HAVE_READONLY,
    };
    let mut data = ltdb::header_bytes(&copy).to_vec();
    data.extend_from_slice(b"new");
    let mut h = Header::new(Operation::ReplyCall, 1, 0, p.header.reqid);
    h.generation = 5;
    let b: Bytes = Packet::new(
        h,
        Body::ReplyCall(ReplyCall {
            status: 0,
            data: data.clone(),
        }),
    )
    .encode()
    .into();
    let fx = f.packet(b);
    assert!(matches!(&fx[0], Effect::ToClient(9, _)), "{fx:?}");
    assert_eq!(f.get(&key).unwrap(), (copy, b"new".to_vec()));

    // On a record this node masters with delegations, a local client's
    // write waits for the revocation.
    let mine = key_for(1, 0);
    f.put(
        &mine,
        &LtdbHeader {
            rsn: 20,
            dmaster: 1,
            reserved1: 0,
            flags: 0,
        },
        b"m",
    );
    f.node_call(2, 3, RO, call_id::FETCH_WITH_HEADER_FUNC, &mine);
    let call = ReqCall {
        flags: call_flags::IMMEDIATE_MIGRATION,
        db_id: f.id,
        callid: call_id::NULL_FUNC,
        hopcount: 0,
        key: mine.clone(),
        calldata: Vec::new(),
    };
    let fx = f.with(|d, env| {
        d.client_call(env, 9, 78, call);
        d.take_effects()
    });
    let ups = updates(&fx);
    assert_eq!(ups.len(), 1, "{fx:?}");
    f.with(|d, env| d.control_reply(env, ups[0].1, Ok(ReplyControl::status(0))));
    let fx = f.run_ready();
    assert!(matches!(&fx[0], Effect::ToClient(9, _)), "{fx:?}");
    let (h, _) = f.get(&mine).unwrap();
    // 20 +3 (delegation), +1 (complete), +1 (flags cleared), +1 (the call).
    assert_eq!((h.rsn, h.flags), (26, 0));

    // A recovery abandons a revocation under way; its calls run again.
    f.node_call(2, 4, RO, call_id::FETCH_WITH_HEADER_FUNC, &mine);
    let fx = f.node_call(
        0,
        5,
        call_flags::IMMEDIATE_MIGRATION,
        call_id::NULL_FUNC,
        &mine,
    );
    assert_eq!(updates(&fx).len(), 1);
    f.dbs.ro_recovered(f.id);
    assert_eq!(f.dbs.ro_revokes_active(), 0);
    assert!(f.dbs.has_ready());
    assert!(f.tracked(&mine).is_empty());
}

#[test]
fn the_end_of_a_revocation_waits_for_a_clients_record_lock() {
    let mut f = fixture_with(true);
    let key = key_for(1, 0);
    let ups = f.delegated_then_wanted(&key, 2, b"v");
    // A client holds the record's lock when the holders have answered.
    assert!(f.dbs.dbs[&f.id].tdb.as_ref().unwrap().uses_mutexes());
    let (_, release_tx, client) = f.client_holds(&key);
    f.with(|d, env| d.control_reply(env, ups[0].1, Ok(ReplyControl::status(0))));
    assert!(!f.dbs.has_ready(), "nothing runs while the lock is held");
    assert_eq!(f.dbs.ro_revokes_active(), 1);
    assert_eq!(f.dbs.dbs[&f.id].locks.helpers(), 1, "a helper waits for it");
    // The client lets go: the helper hands the chain to the layer, the
    // revocation completes and the migration goes out.
    drop(release_tx);
    client.join().unwrap();
    // (The migration may find the chain still held by the helper that is
    // letting go, and wait for it once more.)
    let mut fx = Vec::new();
    for _ in 0..10 {
        if !fx.is_empty() {
            break;
        }
        let ev = f.next_event("the lock helper's report");
        fx = f.with(|d, env| {
            d.event(env, ev);
            d.run_ready(env);
            d.take_effects()
        });
    }
    assert_eq!(f.dbs.ro_revokes_active(), 0);
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 0);
    assert!(matches!(p.body, Body::ReplyDmaster(_)), "{:?}", p.body);
}

/// A revocation's final store that went back to the ready queue (its lock
/// helper failed) releases the migration that waited for it, and that
/// migration runs in the same round of ready work: before, it waited for
/// the next event (on a quiet node the loop's 100 ms tick), because the
/// round that finished the revocation produced no effect of its own.
#[test]
fn work_released_by_ready_work_runs_in_the_same_round() {
    let mut f = fixture_with(true);
    let key = key_for(1, 0);
    let ups = f.delegated_then_wanted(&key, 2, b"v");
    // A client holds the record's lock when the holders have answered: the
    // final store waits for a helper.
    let (bucket, release_tx, client) = f.client_holds(&key);
    f.with(|d, env| d.control_reply(env, ups[0].1, Ok(ReplyControl::status(0))));
    let helper = f.dbs.dbs[&f.id]
        .locks
        .helper_id(bucket)
        .expect("a helper waits");
    // The helper fails: its work goes back to the ready queue.
    let id = f.id;
    f.with(|d, env| {
        d.event(
            env,
            super::DbEvent::LockHeld {
                db: id,
                bucket,
                id: helper,
                result: Err("injected".into()),
            },
        )
    });
    assert!(f.dbs.has_ready(), "the final store is ready to run again");
    // The client lets go; the dismissed helper then gets the chain, says
    // so (to nobody: its entry is gone) and lets go at once. Taking the
    // chain here waits for that, so the store below finds it free.
    let waiter = f.dbs.dbs[&f.id]
        .tdb
        .as_ref()
        .unwrap()
        .chain_waiter()
        .unwrap();
    drop(release_tx);
    client.join().unwrap();
    f.next_event("the dismissed helper's report");
    drop(waiter.lock(bucket).unwrap());
    // One round of ready work: the final store ends the revocation, and
    // the migration it released goes out with it.
    let fx = f.run_ready();
    assert_eq!(f.dbs.ro_revokes_active(), 0, "the revocation ended");
    assert!(
        !fx.is_empty(),
        "the released migration ran in the same round"
    );
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 0);
    assert!(matches!(p.body, Body::ReplyDmaster(_)), "{:?}", p.body);
}
