//! Property test: random operation sequences against an in-memory model,
//! including transactions, traversals that delete, repacks and reopening.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use proptest::prelude::*;
use tdb::{Error, OpenOptions, StoreMode, Tdb};

#[derive(Debug, Clone)]
enum Op {
    Store(u8, u16, u8),
    Delete(u8),
    Fetch(u8),
    Begin,
    Commit,
    Cancel,
    TraverseDeleteOdd,
    Repack,
    Reopen,
    Wipe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (any::<u8>(), 0u16..3000, 0u8..3).prop_map(|(k, l, m)| Op::Store(k % 40, l, m)),
        4 => any::<u8>().prop_map(|k| Op::Delete(k % 40)),
        4 => any::<u8>().prop_map(|k| Op::Fetch(k % 40)),
        1 => Just(Op::Begin),
        1 => Just(Op::Commit),
        1 => Just(Op::Cancel),
        1 => Just(Op::TraverseDeleteOdd),
        1 => Just(Op::Repack),
        1 => Just(Op::Reopen),
        1 => Just(Op::Wipe),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn value(k: u8, len: u16) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(k).wrapping_add(k))
        .collect()
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn verify(d: &Tdb, model: &Model) {
    let mut seen = Model::new();
    d.traverse_read(|k, v| {
        seen.insert(k.to_vec(), v.to_vec());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(&seen, model);
}

/// Apply one non-transactional operation to both the database and the model.
fn apply(d: &Tdb, model: &mut Model, op: Op, in_tx: bool) {
    match op {
        Op::Store(k, len, m) => {
            let (kk, v) = (key(k), value(k, len));
            let mode = [StoreMode::Replace, StoreMode::Insert, StoreMode::Modify][m as usize];
            let r = d.store(&kk, &v, mode);
            match (mode, model.contains_key(&kk)) {
                (StoreMode::Insert, true) => assert!(matches!(r, Err(Error::Exists))),
                (StoreMode::Modify, false) => assert!(matches!(r, Err(Error::NotFound))),
                _ => {
                    r.unwrap();
                    model.insert(kk, v);
                }
            }
        }
        Op::Delete(k) => {
            let r = d.delete(&key(k));
            if model.remove(&key(k)).is_some() {
                r.unwrap();
            } else {
                assert!(matches!(r, Err(Error::NotFound)));
            }
        }
        Op::Fetch(k) => assert_eq!(d.fetch(&key(k)).unwrap().as_ref(), model.get(&key(k))),
        Op::TraverseDeleteOdd => {
            d.traverse(|k, v| {
                if v.len() % 2 == 1 {
                    d.delete(k).unwrap();
                }
                ControlFlow::Continue(())
            })
            .unwrap();
            model.retain(|_, v| v.len() % 2 == 0);
        }
        Op::Repack if !in_tx => d.repack().unwrap(),
        Op::Wipe => {
            d.wipe_all().unwrap();
            model.clear();
        }
        _ => {}
    }
}

fn run(ops: Vec<Op>, hash_size: u32, max_dead: u32, mutex: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.tdb");
    let opts = OpenOptions::new()
        .create(true)
        .hash_size(hash_size)
        .max_dead(max_dead)
        .mutex_locking(mutex)
        .no_sync(true)
        .clone();
    let mut db = opts.open(&path).unwrap();
    let mut model = Model::new();
    let mut it = ops.into_iter();
    while let Some(op) = it.next() {
        match op {
            Op::Begin => {
                // Everything up to the next Commit/Cancel runs in the
                // transaction (the end of the list commits).
                let tx = db.transaction_start().unwrap();
                let saved = model.clone();
                let mut cancel = false;
                for op in it.by_ref() {
                    match op {
                        Op::Commit => break,
                        Op::Cancel => {
                            cancel = true;
                            break;
                        }
                        other => {
                            apply(&tx, &mut model, other, true);
                            verify(&tx, &model);
                        }
                    }
                }
                if cancel {
                    tx.cancel().unwrap();
                    model = saved;
                } else {
                    tx.commit().unwrap();
                }
            }
            Op::Reopen => {
                drop(db);
                db = opts.open(&path).unwrap();
            }
            other => apply(&db, &mut model, other, false),
        }
        verify(&db, &model);
    }
    let rep = db.check().unwrap();
    assert_eq!(rep.records, model.len());
    drop(db);
    let d = opts.open(&path).unwrap();
    assert_eq!(d.record_count().unwrap(), model.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_operations_match_model(
        ops in proptest::collection::vec(op(), 1..120),
        hash_size in prop_oneof![Just(1u32), Just(3), Just(31)],
        max_dead in prop_oneof![Just(0u32), Just(3)],
        mutex in any::<bool>(),
    ) {
        run(ops, hash_size, max_dead, mutex);
    }
}
