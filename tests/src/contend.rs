//! A `ctdb-contend` client process on a node, as the lock-fairness tests
//! drive it: start it, read its one-line reports, tell it to go, wait for
//! its end (see `src/bin/ctdb-test-client/contend.rs` for its modes and what it says).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::{Cluster, test_client};

pub struct Contender {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Contender {
    /// `ctdb-contend` on node `node`'s socket with `args` (mode and its
    /// arguments).
    pub fn start(c: &Cluster, node: usize, args: &[&str]) -> Contender {
        let mut child = test_client("ctdb-contend")
            .arg(c.socket(node))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ctdb-contend");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        Contender { child, stdin, out }
    }

    /// Its next line ("" once it has exited).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out
            .read_line(&mut l)
            .expect("read ctdb-contend's output");
        l.trim().to_owned()
    }

    /// Its next line, which must start with `what`.
    pub fn expect(&mut self, what: &str) -> String {
        let l = self.line();
        assert!(
            l.starts_with(what),
            "client said {l:?}, expected {what:?} (exit: {:?})",
            self.child.try_wait()
        );
        l
    }

    /// Starts its loop (it waits for "go" after saying "ready").
    pub fn go(&mut self) {
        let mut i = self.stdin.take().expect("go said once");
        i.write_all(b"go\n").expect("tell ctdb-contend to go");
    }

    /// The number after `word` in its next line.
    pub fn number(&mut self, word: &str) -> u128 {
        let l = self.expect(word);
        l[word.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("client said {l:?}"))
    }

    /// Waits for its end, which must be a success.
    pub fn finish(mut self) {
        let st = self.child.wait().expect("wait for ctdb-contend");
        assert!(st.success(), "client failed: {st}");
    }

    /// Its final "count N", once it has finished successfully.
    pub fn count(mut self) -> u64 {
        let n = self.number("count") as u64;
        self.finish();
        n
    }
}
