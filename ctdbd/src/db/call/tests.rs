//! Unit tests of record calls and migration.

use super::*;
use crate::db::Effect;
use crate::db::test_layer::{Layer, Recovery, key_for};
use ctdb_protocol::Packet;

/// Node 1 of three, generation 5, with volatile database `t.tdb`.
fn fixture() -> Layer {
    Layer::new("t.tdb", false)
}

impl Layer {
    /// A `REQ_CALL` from node `src` in `generation`, handed to the layer:
    /// what it does.
    fn req_call(&mut self, src: u32, generation: u32, call: ReqCall) -> Vec<Effect> {
        let mut h = Header::new(Operation::ReqCall, 1, src, 77);
        h.generation = generation;
        self.packet(Packet::new(h, Body::ReqCall(call)).encode().into())
    }

    /// A recovery begins: the node in recovery mode, with the new vnn map
    /// (0, 1, 2) of `generation`.
    fn recovery_begins(&mut self, generation: u32) {
        use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, VnnMap};

        self.node.recovery_mode = CTDB_RECOVERY_ACTIVE;
        self.node
            .set_vnnmap(VnnMap {
                generation,
                map: vec![0, 1, 2],
            })
            .unwrap();
    }

    /// A call of client 7 (its request 3), handed to the layer: what it
    /// does.
    fn client_call(&mut self, call: ReqCall) -> Vec<Effect> {
        self.with(|d, env| {
            d.client_call(env, 7, 3, call);
            d.take_effects()
        })
    }
}

/// A call (the null function) that migrates record `key` of `db_id` to
/// the caller, on its `hopcount`-th hop.
fn migrate_call(db_id: u32, key: &[u8], hopcount: u32) -> ReqCall {
    ReqCall {
        flags: call_flags::IMMEDIATE_MIGRATION,
        db_id,
        callid: call_id::NULL_FUNC,
        hopcount,
        key: key.to_vec(),
        calldata: Vec::new(),
    }
}

/// A client's fetch of record `key` of `db_id`.
fn fetch_call(db_id: u32, key: &[u8]) -> ReqCall {
    ReqCall {
        flags: 0,
        db_id,
        callid: call_id::FETCH_FUNC,
        hopcount: 0,
        key: key.to_vec(),
        calldata: Vec::new(),
    }
}

fn decode(e: &Effect) -> (u32, Packet) {
    match e {
        Effect::ToNode(d, b) => (*d, Packet::decode_request(b).unwrap()),
        other => panic!("unexpected effect {other:?}"),
    }
}

#[test]
fn calls_are_redirected_through_the_lmaster_until_the_hop_limit() {
    let mut f = fixture();
    let db_id = ltdb::db_id("t.tdb");
    let key = key_for(2, 0);
    let call = migrate_call(db_id, &key, 3);
    // Not ours: on to the lmaster, one hop more, as the requester's.
    let fx = f.req_call(0, 5, call.clone());
    assert_eq!(fx.len(), 1);
    let (dest, p) = decode(&fx[0]);
    assert_eq!((dest, p.header.srcnode, p.header.reqid), (2, 0, 77));
    let Body::ReqCall(c) = p.body else { panic!() };
    assert_eq!(c.hopcount, 4);
    // A call that went round too often: an error and a recovery.
    let fx = f.req_call(
        0,
        5,
        ReqCall {
            hopcount: MAX_HOPCOUNT - 1,
            ..call.clone()
        },
    );
    assert!(matches!(&fx[1], Effect::RecoveryActive(_)), "{fx:?}");
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 0);
    assert!(matches!(p.body, Body::ReplyError(_)));
    // Another generation's packets are dropped.
    assert!(f.req_call(0, 4, call.clone()).is_empty());
    // An unknown database gets an error reply.
    let fx = f.req_call(
        2,
        5,
        ReqCall {
            db_id: 0x1234,
            ..call
        },
    );
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 2);
    assert!(matches!(p.body, Body::ReplyError(_)));
}

#[test]
fn a_record_pinned_for_a_local_client_waits_until_it_speaks() {
    let mut f = fixture();
    let db_id = ltdb::db_id("t.tdb");
    let key = key_for(1, 0);
    // As if a migration had just brought the record here for client 5
    // (the pin's limit far enough ahead that the test's own pace cannot
    // reach it: a pin past its limit holds nothing).
    let later = std::time::Instant::now() + std::time::Duration::from_secs(600);
    f.dbs.calls.pins.pin(db_id, &key, 5, later);
    let call = migrate_call(db_id, &key, 1);
    // Node 2's request waits: nothing is sent.
    assert!(f.req_call(2, 5, call).is_empty());
    assert!(!f.dbs.has_ready());
    // Another client speaking changes nothing; client 5 ends the pin.
    f.dbs.client_spoke(6);
    assert!(!f.dbs.has_ready());
    f.dbs.client_spoke(5);
    assert!(f.dbs.has_ready());
    let fx = f.run_ready();
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 2);
    assert!(matches!(p.body, Body::ReplyDmaster(_)), "{:?}", p.body);
}

#[test]
fn the_lmaster_migrates_a_new_record_to_the_caller() {
    let mut f = fixture();
    let db_id = ltdb::db_id("t.tdb");
    let key = key_for(1, 0);
    let fx = f.req_call(2, 5, migrate_call(db_id, &key, 1));
    let (dest, p) = decode(&fx[0]);
    assert_eq!(dest, 2);
    let Body::ReplyDmaster(r) = p.body else {
        panic!("{:?}", p.body)
    };
    // Created here (rsn 1), handed over with that rsn.
    assert_eq!((r.rsn, r.key.as_slice()), (1, key.as_slice()));
    let tdb = f.dbs.dbs[&db_id].tdb.as_ref().unwrap();
    let (h, _) = ltdb::split(&tdb.fetch(&key).unwrap().unwrap())
        .map(|(h, d)| (h, d.to_vec()))
        .unwrap();
    assert_eq!((h.dmaster, h.rsn), (2, 1));
    assert_eq!(f.dbs.dbs[&db_id].stats.hop_count_bucket[1], 1);
}

/// Freeze, transaction `tid`, wipe, push of `recs`, commit: the steps of
/// a volatile database's recovery up to its thaw.
fn recover(r: &mut Recovery, f: &mut Layer, tid: u32, recs: &[(&[u8], LtdbHeader, &[u8])]) {
    use ctdb_protocol::ControlRequest;
    use ctdb_protocol::types::{RecBuffer, TransDb};

    let t = TransDb { db_id: f.id, tid };
    r.start(f, tid);
    r.control(f, ControlRequest::WipeDatabase(t));
    let mut b = RecBuffer::new(f.id);
    for (k, h, v) in recs {
        b.add(0, Some(h), k, v);
    }
    r.push(f, 0x5052_0000_0000_0002, b);
    r.control(f, ControlRequest::DbTransactionCommit(t));
}

/// The sequence behind a rolling-upgrade stall: a recovery sets the new
/// generation on every node (`SETVNNMAP`) before it recovers the
/// databases, and until a database's recovery commits its copies are the
/// old ones. A migration of such a copy sent in that window (here the
/// lmaster's `REPLY_DMASTER` to this node, which asked for the record, as
/// our daemon sent it stamped with the node's new generation) waited for
/// the frozen handle and was applied after the recovery, over the copy
/// the recovery had made current: this node a second data master of the
/// record, holding an older rsn than the copies elsewhere that named
/// another node (the CI snapshot: rsn 43134 here as dmaster, 44822 on a
/// node naming it). CTDB stamps and checks the database's generation
/// (the one its last recovery committed), so nothing of the window is
/// served by a node already recovered, or by one that has yet to attach
/// the database. So do we now: the call this node sends in the window
/// carries the database's old generation, a dmaster packet of the new one
/// for a database not yet recovered is dropped, and the call is sent
/// again, in the new generation, when the database thaws.
#[test]
fn a_migration_from_before_a_recovery_is_not_applied_after_it() {
    let mut f = fixture();
    let db_id = f.id;
    // The lmaster is node 0; the copy here names node 0 as data master.
    let key = key_for(0, 0);
    let here = LtdbHeader {
        rsn: 10,
        dmaster: 0,
        ..Default::default()
    };
    f.put(&key, &here, b"old");
    // Recovery to generation 6: the new vnn map first.
    f.recovery_begins(6);
    // Until the database's recovery commits, a call in the new generation
    // is not served here (nor one in the old: the node's is checked first).
    let call = migrate_call(db_id, &key, 1);
    for g in [6, 5] {
        assert!(f.req_call(2, g, call.clone()).is_empty(), "generation {g}");
    }
    // A client's fetch, before the database is frozen, goes to node 0 in
    // the generation the database is still in.
    let fx = f.client_call(fetch_call(db_id, &key));
    assert_eq!(fx.len(), 1, "{fx:?}");
    let (dest, p) = decode(&fx[0]);
    assert!(matches!(p.body, Body::ReqCall(_)), "{:?}", p.body);
    assert_eq!((dest, p.header.generation), (0, 5));
    let reqid = p.header.reqid;
    let mut r = Recovery::new();
    r.control(&mut f, ctdb_protocol::ControlRequest::DbFreeze(db_id));
    // Node 0 hands the record over with the copy it held then; sent with
    // the new generation (an older daemon of ours) or the old one.
    let reply = |generation: u32| -> Bytes {
        let mut h = Header::new(Operation::ReplyDmaster, 1, 0, reqid);
        h.generation = generation;
        let body = Body::ReplyDmaster(ReplyDmaster {
            db_id,
            rsn: 40,
            key: key.clone(),
            data: b"stale".to_vec(),
            record_flags: 0,
        });
        Packet::new(h, body).encode().into()
    };
    for g in [6, 5] {
        assert!(f.packet(reply(g)).is_empty(), "generation {g}");
    }
    // The recovery makes node 2's newer copy current everywhere.
    let recovered = LtdbHeader {
        rsn: 100,
        dmaster: 2,
        ..Default::default()
    };
    recover(&mut r, &mut f, 6, &[(&key, recovered, b"recovered")]);
    r.thaw(&mut f);
    let fx = std::mem::take(&mut r.other);
    let (h, d) = f.get(&key).unwrap();
    assert_eq!(
        (h.rsn, h.dmaster, d.as_slice()),
        (100, 2, b"recovered".as_slice()),
        "{fx:?}"
    );
    // Nothing went to the client yet: its call was sent again (to this
    // node, which routes it anew), in the new generation.
    let sent: Vec<(u32, Packet)> = fx
        .iter()
        .filter(|e| matches!(e, Effect::ToNode(..)))
        .map(decode)
        .collect();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::ToClient(..))),
        "{fx:?}"
    );
    assert_eq!(sent.len(), 1, "{fx:?}");
    let (dest, p) = &sent[0];
    assert!(matches!(p.body, Body::ReqCall(_)), "{:?}", p.body);
    assert_eq!((*dest, p.header.generation), (1, 6));
    assert_ne!(p.header.reqid, reqid);
    // Routed anew: on to the lmaster, in the new generation.
    f.node.recovery_mode = ctdb_protocol::types::CTDB_RECOVERY_NORMAL;
    let resent = fx.iter().find_map(|e| match e {
        Effect::ToNode(_, b) => Some(b.clone()),
        _ => None,
    });
    let fx = f.packet(resent.unwrap());
    let (dest, p) = decode(&fx[0]);
    assert!(matches!(p.body, Body::ReqCall(_)), "{:?}", p.body);
    assert_eq!((dest, p.header.generation), (0, 6));
}

/// A client call that arrives while its database is frozen waits for the
/// handle and goes out once, after the thaw: the thaw resends the calls
/// that were out before it runs what waited (before, the waiting call was
/// sent, then sent again under another request id by the resend).
#[test]
fn a_call_that_waited_for_the_thaw_is_sent_once() {
    let mut f = fixture();
    let db_id = f.id;
    let key = key_for(0, 0);
    f.put(
        &key,
        &LtdbHeader {
            rsn: 10,
            dmaster: 0,
            ..Default::default()
        },
        b"there",
    );
    f.recovery_begins(6);
    let mut r = Recovery::new();
    r.control(&mut f, ctdb_protocol::ControlRequest::DbFreeze(db_id));
    let fx = f.client_call(fetch_call(db_id, &key));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::ToNode(..))),
        "sent while frozen: {fx:?}"
    );
    recover(
        &mut r,
        &mut f,
        6,
        &[(
            &key,
            LtdbHeader {
                rsn: 100,
                dmaster: 2,
                ..Default::default()
            },
            b"recovered",
        )],
    );
    r.thaw(&mut f);
    let fx = std::mem::take(&mut r.other);
    let calls: Vec<(u32, Packet)> = fx
        .iter()
        .filter(|e| matches!(e, Effect::ToNode(..)))
        .map(decode)
        .filter(|(_, p)| matches!(p.body, Body::ReqCall(_)))
        .collect();
    assert_eq!(calls.len(), 1, "{fx:?}");
    assert_eq!(calls[0].1.header.generation, 6);
}

/// A node that becomes inactive (banned or stopped) takes its databases
/// out of their generation, as CTDB 4.17 does: until a recovery commits
/// them anew, a client's call made there (before anything froze the
/// database) goes out in the invalid generation, which no node serves,
/// not in the one the rest of the cluster may still be in; and a record
/// packet in the invalid generation (another inactive node's) is not
/// served here either, though this node's generation is the invalid one
/// too.
#[test]
fn an_inactive_node_sends_record_packets_in_no_generation_a_node_serves() {
    use ctdb_protocol::header::INVALID_GENERATION;

    let mut f = fixture();
    let db_id = f.id;
    let there = LtdbHeader {
        rsn: 10,
        dmaster: 0,
        ..Default::default()
    };
    let (before, after) = (key_for(0, 0), key_for(0, 1));
    f.put(&before, &there, b"there");
    f.put(&after, &there, b"there");
    let fx = f.client_call(fetch_call(db_id, &before));
    let (dest, p) = decode(&fx[0]);
    assert_eq!((dest, p.header.generation), (0, 5));
    f.node.stop();
    assert!(f.node.take_became_inactive());
    f.with(|d, _| d.node_inactive());
    let fx = f.client_call(fetch_call(db_id, &after));
    assert_eq!(fx.len(), 1, "{fx:?}");
    let (dest, p) = decode(&fx[0]);
    assert!(matches!(p.body, Body::ReqCall(_)), "{:?}", p.body);
    assert_eq!((dest, p.header.generation), (0, INVALID_GENERATION));
    // A record this node is data master of, asked for by node 2.
    let mine = key_for(1, 0);
    f.put(
        &mine,
        &LtdbHeader {
            rsn: 3,
            dmaster: 1,
            ..Default::default()
        },
        b"mine",
    );
    for g in [INVALID_GENERATION, 5] {
        let fx = f.req_call(2, g, migrate_call(db_id, &mine, 1));
        assert!(fx.is_empty(), "generation {g}: {fx:?}");
    }
    let (h, d) = f.get(&mine).unwrap();
    assert_eq!((h.dmaster, d.as_slice()), (1, b"mine".as_slice()));
}
