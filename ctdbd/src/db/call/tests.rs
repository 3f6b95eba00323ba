//! Unit tests of record calls and migration.

use super::*;
use crate::db::Effect;
use crate::db::test_layer::{Layer, key_for};
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
    let call = ReqCall {
        flags: call_flags::IMMEDIATE_MIGRATION,
        db_id,
        callid: call_id::NULL_FUNC,
        hopcount: 3,
        key: key.clone(),
        calldata: Vec::new(),
    };
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
    let call = ReqCall {
        flags: call_flags::IMMEDIATE_MIGRATION,
        db_id,
        callid: call_id::NULL_FUNC,
        hopcount: 1,
        key: key.clone(),
        calldata: Vec::new(),
    };
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
    let fx = f.req_call(
        2,
        5,
        ReqCall {
            flags: call_flags::IMMEDIATE_MIGRATION,
            db_id,
            callid: call_id::NULL_FUNC,
            hopcount: 1,
            key: key.clone(),
            calldata: Vec::new(),
        },
    );
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
