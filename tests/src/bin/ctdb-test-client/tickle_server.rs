//! `ctdb-tickle-server`: a TCP server that registers its connections with
//! its node's `ctdbd` as Samba's smbd does, for the tickle tests.
//!
//! ```text
//! ctdb-tickle-server SOCKET ADDRESS:PORT
//! ```
//!
//! Listens on `ADDRESS:PORT` (a public address of the node it runs on) and
//! prints `listening`. For each connection it accepts it connects to the
//! daemon at `SOCKET` (one daemon client per TCP connection, as each smbd
//! is one) and sends `TCP_CLIENT` with the client's address as source and
//! its own as destination, then prints `registered CLIENT_IP:PORT` (or
//! `refused CLIENT_IP:PORT: ERROR` when the daemon fails the control, as
//! CTDB does for an address it does not host). The TCP connection and
//! the daemon client are both held until the process is killed: CTDB
//! forgets a client's connections when the client goes.

use ctdb_protocol::ControlRequest;
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::types::Connection;
use ctdb_tests::client_prog::{self, connect, say, usage};

async fn run(socket: String, listen: String) -> Result<(), String> {
    let l = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    say("listening");
    // What is accepted stays open until the process ends.
    let mut held = Vec::new();
    loop {
        let (tcp, peer) = l.accept().await.map_err(|e| format!("accept: {e}"))?;
        let local = tcp
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        let c = connect(&socket).await?;
        let conn = Connection {
            src: peer.into(),
            dst: local.into(),
        };
        match c
            .control(CTDB_CURRENT_NODE, ControlRequest::TcpClient(conn))
            .await
        {
            Ok(_) => say(&format!("registered {peer}")),
            Err(e) => say(&format!("refused {peer}: {e}")),
        }
        held.push((tcp, c));
    }
}

pub fn main(args: Vec<String>) {
    let [socket, listen] = <[String; 2]>::try_from(args)
        .unwrap_or_else(|_| usage("usage: ctdb-tickle-server SOCKET ADDRESS:PORT"));
    client_prog::run("ctdb-tickle-server", run(socket, listen))
}
