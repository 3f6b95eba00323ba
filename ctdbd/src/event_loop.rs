//! How the event loop learns which sockets to read, and reads them.
//!
//! Every client connection and every incoming node connection is
//! registered with the runtime's reactor for readability (tokio's
//! readiness API, [`AsyncFd`]), but no task waits on it. Instead each
//! connection has a waker of its own ([`ConnWaker`]): when the reactor
//! sees the socket become readable it wakes that waker, which puts the
//! connection's [`Token`] at the back of the loop's [`ReadyQueue`] (once,
//! however often it is woken) and wakes the loop. The loop takes the
//! connections that are ready at the start of a turn, in order, reads
//! each one itself and handles at most a fixed number of its packets;
//! a connection with more to give goes to the back of the queue. So
//! the reads happen in the loop, round-robin over ready connections, and
//! a flooding connection gets one budget per turn like everybody else.
//!
//! A connection stays in the reactor's interest list all the time; it is
//! polled (its waker handed to the reactor again) only when the loop has
//! drained what it had, so an idle connection costs nothing per turn.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::BytesMut;
use ctdb_protocol::framing::{Framer, SCRATCH};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::messaging::ClientId;

/// Names a connection the loop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Client(ClientId),
    /// Node `pnn`'s incoming connection number `link`.
    NodeIn {
        pnn: u32,
        link: u64,
    },
}

/// Connections with something to read (or to look at again), in the
/// order they became ready.
#[derive(Default)]
pub struct ReadyQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Token>,
    /// The loop, when it waits for a connection to become ready.
    waiter: Option<Waker>,
}

impl ReadyQueue {
    pub fn new() -> Arc<ReadyQueue> {
        Arc::new(ReadyQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, t: Token) {
        let waiter = {
            let mut i = self.lock();
            i.queue.push_back(t);
            i.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Ready when some connection is; otherwise the loop's waker is kept
    /// for the next connection that becomes ready.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut i = self.lock();
        if i.queue.is_empty() {
            match &i.waiter {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => i.waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connection that has waited longest.
    pub fn pop(&self) -> Option<Token> {
        self.lock().queue.pop_front()
    }
}

/// A connection's waker: queues the connection for the loop.
pub struct ConnWaker {
    token: Token,
    /// In the queue already (woken again, it is not queued twice).
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl ConnWaker {
    /// A waker for connection `token` feeding `queue`.
    pub fn new(token: Token, queue: &Arc<ReadyQueue>) -> Arc<ConnWaker> {
        Arc::new(ConnWaker {
            token,
            queued: AtomicBool::new(false),
            queue: Arc::clone(queue),
        })
    }

    /// The loop took the connection from the queue: the next wake-up
    /// queues it again.
    pub fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.token);
        }
    }
}

/// What [`SockReader::next_packet`] found.
#[derive(Debug)]
pub enum Next {
    Packet(BytesMut),
    /// Nothing more for now: the connection is queued again when its
    /// socket becomes readable.
    Pending,
    /// End of file (`None`) or an error (its description).
    Closed(Option<String>),
}

/// The read side of a connection: its socket registered for readability,
/// its waker, and what has arrived of a packet not yet complete.
pub struct SockReader<S: AsRawFd> {
    sock: AsyncFd<S>,
    waker: Arc<ConnWaker>,
    /// `waker` as a [`Waker`], made once.
    task_waker: Waker,
    framer: Framer,
}

impl<S: AsRawFd> SockReader<S>
where
    for<'a> &'a S: Read,
{
    /// Registers `sock` (non-blocking) for readability and queues the
    /// connection once, so whatever arrived before registration is read.
    #[allow(deprecated)]
    pub fn new(
        sock: S,
        token: Token,
        queue: &Arc<ReadyQueue>,
        max_packet: usize,
    ) -> io::Result<Self> {
        // See `ctdb_client::unix_io::register`: a std socket owns its
        // descriptor for as long as the registration lives.
        let sock = AsyncFd::with_interest(sock, Interest::READABLE)?;
        let waker = ConnWaker::new(token, queue);
        let task_waker = Waker::from(Arc::clone(&waker));
        task_waker.wake_by_ref();
        Ok(SockReader {
            sock,
            waker,
            task_waker,
            framer: Framer::new(max_packet),
        })
    }

    pub fn get_ref(&self) -> &S {
        self.sock.get_ref()
    }

    /// The connection's waker (to be woken when something other than its
    /// socket lets it go on, such as its outgoing queue draining).
    pub fn waker(&self) -> &Waker {
        &self.task_waker
    }

    /// The loop took the connection from the ready queue.
    pub fn taken(&self) {
        self.waker.taken();
    }

    /// Queues the connection again (at the back): it has more to give
    /// than its budget for this turn.
    pub fn requeue(&self) {
        self.task_waker.wake_by_ref();
    }

    /// A packet framed from what has arrived already, without reading.
    pub fn framed(&mut self) -> Result<Option<BytesMut>, String> {
        self.framer.next_packet().map_err(|e| e.to_string())
    }

    /// The next packet: one already framed, or one read now. `Pending`
    /// when the socket has nothing more (the connection's waker is with
    /// the reactor then).
    pub fn next_packet(&mut self) -> Next {
        loop {
            match self.framer.next_packet() {
                Ok(Some(p)) => return Next::Packet(p),
                Ok(None) => {}
                Err(e) => return Next::Closed(Some(e.to_string())),
            }
            let mut cx = Context::from_waker(&self.task_waker);
            let mut guard = match self.sock.poll_read_ready(&mut cx) {
                Poll::Pending => return Next::Pending,
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Next::Closed(Some(e.to_string())),
            };
            let framer = &mut self.framer;
            match guard.try_io(|s| framer.read_from(&mut s.get_ref())) {
                Ok(Ok(0)) => return Next::Closed(None),
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next
                    // edge rather than ask again and hear "would block".
                    if n < SCRATCH {
                        guard.clear_ready();
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Next::Closed(None);
                }
                Ok(Err(e)) => return Next::Closed(Some(e.to_string())),
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdb_protocol::header::HEADER_LEN;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn packet(len: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len as usize];
        p[..4].copy_from_slice(&len.to_le_bytes());
        p
    }

    #[test]
    fn a_connection_is_queued_once_however_often_woken() {
        let q = ReadyQueue::new();
        let a = Waker::from(ConnWaker::new(Token::Client(1), &q));
        let bw = ConnWaker::new(Token::Client(2), &q);
        let b = Waker::from(Arc::clone(&bw));
        a.wake_by_ref();
        b.wake_by_ref();
        a.wake_by_ref();
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(Token::Client(1)));
        assert_eq!(q.pop(), Some(Token::Client(2)));
        // Not taken yet: still counts as queued.
        b.wake_by_ref();
        assert!(q.is_empty());
        bw.taken();
        b.wake_by_ref();
        assert_eq!(q.pop(), Some(Token::Client(2)));
    }

    #[tokio::test]
    async fn reads_when_readable_and_waits_otherwise() {
        let q = ReadyQueue::new();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut r = SockReader::new(a, Token::Client(7), &q, 1024).unwrap();
        // Queued once at registration.
        assert_eq!(q.pop(), Some(Token::Client(7)));
        r.taken();
        assert!(matches!(r.next_packet(), Next::Pending));
        let mut bytes = packet(HEADER_LEN as u32, 1);
        bytes.extend(packet(HEADER_LEN as u32 + 8, 2));
        b.write_all(&bytes).unwrap();
        // The reactor queues the connection.
        std::future::poll_fn(|cx| q.poll_ready(cx)).await;
        assert_eq!(q.pop(), Some(Token::Client(7)));
        r.taken();
        assert!(matches!(r.next_packet(), Next::Packet(p) if p[4] == 1));
        assert!(matches!(r.next_packet(), Next::Packet(p) if p[4] == 2));
        assert!(matches!(r.next_packet(), Next::Pending));
        drop(b);
        std::future::poll_fn(|cx| q.poll_ready(cx)).await;
        assert_eq!(q.pop(), Some(Token::Client(7)));
        assert!(matches!(r.next_packet(), Next::Closed(None)));
    }
}
