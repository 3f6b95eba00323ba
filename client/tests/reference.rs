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
