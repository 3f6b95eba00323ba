//! The client against the reference CTDB daemon.

use std::time::Duration;

use ctdb_client::{Client, DbKind};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

#[test]
fn controls_messages_and_traverse_against_reference() {
    require_reference();
    let cluster = Cluster::start(ClusterOptions::new(Daemon::Reference, 3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::connect(cluster.socket(1)).await.unwrap();
        assert_eq!(c.pnn(), 1);
        assert_eq!(c.get_pnn(2).await.unwrap(), 2);
        let nodemap = c.get_nodemap(CTDB_CURRENT_NODE).await.unwrap();
        assert_eq!(nodemap.nodes.len(), 3);
        assert_eq!(nodemap.nodes[2].addr.ip(), Some(cluster.ip(2).into()));
        let vnn = c.get_vnnmap(0).await.unwrap();
        assert_eq!(vnn.map.len(), 3);
        let t = c.get_all_tunables(1).await.unwrap();
        assert_eq!(
            t.recover_timeout,
            c.get_tunable(1, "RecoverTimeout").await.unwrap()
        );
        assert!(
            c.list_tunables(1)
                .await
                .unwrap()
                .names()
                .any(|n| n == "RecBufferSizeLimit")
        );
        c.ping(0).await.unwrap();
        assert!(c.get_pid(1).await.unwrap() > 0);

        // Messages between two clients on different nodes.
        let a = Client::connect(cluster.socket(0)).await.unwrap();
        let srvid = 0xAE00_0000_0000_1234;
        let mut rx = a.register_srvid(srvid).await.unwrap();
        c.send_message(0, srvid, b"hello").unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.data, b"hello");

        // Attach and traverse an (empty) database.
        let id = c
            .db_attach(CTDB_CURRENT_NODE, "client_test.tdb", DbKind::Volatile, 0)
            .await
            .unwrap();
        assert_eq!(c.get_dbname(1, id).await.unwrap(), "client_test.tdb");
        let recs = c
            .traverse(id, false)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert!(recs.is_empty());

        // A failing control is an error with the daemon's status.
        assert!(c.get_dbname(1, 0xdead_beef).await.is_err());
    });
}

#[test]
fn records_and_transactions_against_reference() {
    require_reference();
    let cluster = Cluster::start(ClusterOptions::new(Daemon::Reference, 3));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c0 = Client::connect(cluster.socket(0)).await.unwrap();
        let c2 = Client::connect(cluster.socket(2)).await.unwrap();

        // A volatile record written on node 0 migrates to node 2 on use.
        let v0 = c0
            .attach("client_vol.tdb", DbKind::Volatile, 0)
            .await
            .unwrap();
        v0.store(b"k", b"one").await.unwrap();
        let v2 = c2
            .attach("client_vol.tdb", DbKind::Volatile, 0)
            .await
            .unwrap();
        assert_eq!(v0.id(), v2.id());
        let r = v2.fetch(b"k").await.unwrap();
        assert_eq!(r.data, b"one");
        assert_eq!(r.header.dmaster, 2);
        // Increment under the lock on both nodes in turn.
        for i in 0..10u32 {
            let db = if i % 2 == 0 { &v0 } else { &v2 };
            db.fetch_lock(b"counter", |r| {
                let n = if r.data.is_empty() {
                    0
                } else {
                    u32::from_le_bytes(r.data[..4].try_into().unwrap())
                };
                (
                    ctdb_client::Update::Store((n + 1).to_le_bytes().to_vec()),
                    (),
                )
            })
            .await
            .unwrap();
        }
        let r = v0.fetch(b"counter").await.unwrap();
        assert_eq!(u32::from_le_bytes(r.data[..4].try_into().unwrap()), 10);
        // The reference tool agrees.
        let out = cluster.tool_ok(1, &["readkey", "client_vol.tdb", "k"]);
        assert!(out.contains("one"), "{out}");

        // A persistent transaction on node 0 is visible on every node.
        let p0 = c0
            .attach("client_pers.tdb", DbKind::Persistent, 0)
            .await
            .unwrap();
        let mut t = p0.transaction_start(false).await.unwrap();
        for i in 0..100 {
            t.store(format!("key{i}").as_bytes(), format!("value{i}").as_bytes())
                .unwrap();
        }
        t.commit().await.unwrap();
        let p2 = c2
            .attach("client_pers.tdb", DbKind::Persistent, 0)
            .await
            .unwrap();
        let (_, v) = p2.fetch_local(b"key42").unwrap().unwrap();
        assert_eq!(v, b"value42");
        assert_eq!(c2.get_db_seqnum(2, p2.id()).await.unwrap(), 1);
        let out = cluster.tool_ok(1, &["pfetch", "client_pers.tdb", "key7"]);
        assert_eq!(out.trim(), "value7");
        // A second transaction after the first released its g_lock.
        let mut t = p2.transaction_start(false).await.unwrap();
        t.delete(b"key42").unwrap();
        t.commit().await.unwrap();
        assert!(
            p0.fetch_local(b"key42")
                .unwrap()
                .is_none_or(|(_, v)| v.is_empty())
        );
    });
}
