//! A connection's outgoing packets, written straight from the event loop.
//!
//! The loop queues the packets it produces for a connection while it
//! handles a batch of events, then flushes every connection it touched
//! with one `sendmsg` each (several packets per call when a batch produced
//! several). Only when the kernel's socket buffer is full does a writer
//! task take over: it waits for the socket to drain and writes the rest,
//! while packets the loop produces meanwhile queue behind (so order is
//! kept), and hands the connection back once the queue is empty.
//!
//! Writing from the loop saves a task hand-off per packet; more
//! importantly it lets unix sockets be registered for readability only
//! (see [`crate::clients`]): a socket registered for writability too
//! wakes the daemon every time the peer reads what it was sent.
//!
//! The queue counts its bytes, so a client that does not read can be
//! held back ([`Outbox::hold_until_below`]: the loop stops reading its
//! requests until the queue has drained, and the queue wakes the
//! connection then) and messages for it dropped; the queue's own storage
//! shrinks back once a burst has been written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Mutex;

use std::task::Waker;

use bytes::Bytes;

/// Most packets handed to one `sendmsg`.
const MAX_IOV: usize = 64;
/// Queue slots kept after a burst has been written.
const KEEP_SLOTS: usize = 16;

/// The outgoing queue of one connection (shared by the loop and, while
/// the socket is full, its writer task).
#[derive(Default)]
pub struct Outbox {
    q: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Packets not yet written; the first may be partly written already
    /// (it is then a slice of what is left).
    packets: VecDeque<Bytes>,
    /// Bytes in `packets`.
    bytes: usize,
    /// A writer task owns the queue until it is empty again.
    blocked: bool,
    /// The connection failed: nothing more is queued.
    broken: bool,
    /// A held-back connection is woken (with the waker) once `bytes`
    /// is at most this, or the connection breaks.
    resume_at: Option<(usize, Waker)>,
}

impl Queue {
    fn clear(&mut self) {
        self.packets = VecDeque::new();
        self.bytes = 0;
    }
}

/// What [`Outbox::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written (or there was nothing to write).
    Done,
    /// The socket is full: start a writer task for the rest.
    Blocked,
    /// A writer task already owns the queue.
    Busy,
    /// The connection failed; the queue was dropped.
    Broken,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet. Returns `true` when the queue was empty and idle
    /// (the caller must flush it later), `false` when a flush is already
    /// due, a writer has it, or the connection is broken.
    pub fn push(&self, b: Bytes) -> bool {
        let mut q = self.lock();
        if q.broken {
            return false;
        }
        let was_idle = q.packets.is_empty() && !q.blocked;
        q.bytes += b.len();
        q.packets.push_back(b);
        was_idle
    }

    /// Packets waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().packets.len()
    }

    /// Bytes waiting to be written.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Holds a connection back until at most `limit` bytes are queued:
    /// `waker` is woken then (or when the connection breaks). Returns
    /// `false`, keeping nothing, when the queue is that low already or
    /// broken.
    pub fn hold_until_below(&self, limit: usize, waker: &Waker) -> bool {
        let mut q = self.lock();
        if q.broken || q.bytes <= limit {
            q.resume_at = None;
            return false;
        }
        q.resume_at = Some((limit, waker.clone()));
        true
    }

    /// After a write: wakes a held-back connection if the queue is low
    /// enough, and lets the queue's storage go once it is empty.
    fn after_write(&self, q: &mut Queue) {
        if q.resume_at
            .as_ref()
            .is_some_and(|(r, _)| q.bytes <= *r || q.broken)
            && let Some((_, w)) = q.resume_at.take()
        {
            w.wake();
        }
        if q.packets.is_empty() && q.packets.capacity() > KEEP_SLOTS {
            q.packets = VecDeque::new();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_broken(&self) -> bool {
        self.lock().broken
    }

    /// Writes what is queued with `send` (non-blocking). See [`Flush`].
    pub fn flush(&self, send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>) -> Flush {
        let mut q = self.lock();
        if q.broken {
            return Flush::Broken;
        }
        if q.blocked {
            return Flush::Busy;
        }
        let r = match write_queue(&mut q, send) {
            Ok(()) => Flush::Done,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                q.blocked = true;
                Flush::Blocked
            }
            Err(_) => {
                q.broken = true;
                q.clear();
                Flush::Broken
            }
        };
        self.after_write(&mut q);
        r
    }

    /// For the writer task: writes what it can. `Ok(())` once the queue is
    /// empty (the loop writes directly again); `WouldBlock` when the
    /// socket is full again; any other error breaks the connection.
    pub fn drain(&self, send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>) -> io::Result<()> {
        let mut q = self.lock();
        if q.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection broken",
            ));
        }
        let r = match write_queue(&mut q, send) {
            Ok(()) => {
                q.blocked = false;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                q.broken = true;
                q.blocked = false;
                q.clear();
                Err(e)
            }
        };
        self.after_write(&mut q);
        r
    }

    /// Marks the connection broken and forgets what is queued.
    pub fn close(&self) {
        let mut q = self.lock();
        q.broken = true;
        q.clear();
        self.after_write(&mut q);
    }
}

/// Writes queued packets until the queue is empty or `send` fails
/// (`WouldBlock` included).
fn write_queue(
    q: &mut Queue,
    mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<()> {
    while !q.packets.is_empty() {
        let n = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for (slot, p) in iov.iter_mut().zip(q.packets.iter()) {
                *slot = IoSlice::new(p);
                k += 1;
            }
            loop {
                match send(&iov[..k]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket wrote nothing",
            ));
        }
        q.bytes -= n.min(q.bytes);
        consume(&mut q.packets, n);
    }
    Ok(())
}

/// Drops `n` written bytes from the front of the queue.
fn consume(packets: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = packets.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            packets.pop_front();
        } else {
            let rest = front.slice(n..);
            *front = rest;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes, then would block.
    struct Sink {
        got: Vec<u8>,
        room: usize,
    }

    impl Sink {
        fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room);
                self.got.extend_from_slice(&b[..take]);
                self.room -= take;
                n += take;
                if self.room == 0 {
                    break;
                }
            }
            Ok(n)
        }
    }

    #[test]
    fn writes_in_order_across_a_full_socket() {
        let o = Outbox::new();
        let mut s = Sink {
            got: Vec::new(),
            room: 5,
        };
        assert!(o.push(Bytes::from_static(b"abc")));
        assert!(!o.push(Bytes::from_static(b"defg")));
        assert_eq!(o.flush(|b| s.send(b)), Flush::Blocked);
        assert_eq!(s.got, b"abcde");
        // Later packets queue behind; the loop may not write meanwhile.
        assert!(!o.push(Bytes::from_static(b"hi")));
        assert_eq!(o.flush(|b| s.send(b)), Flush::Busy);
        assert_eq!(o.len(), 2);
        s.room = 2;
        assert_eq!(
            o.drain(|b| s.send(b)).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        s.room = 100;
        o.drain(|b| s.send(b)).unwrap();
        assert_eq!(s.got, b"abcdefghi");
        // Back to the loop.
        assert!(o.push(Bytes::from_static(b"j")));
        assert_eq!(o.flush(|b| s.send(b)), Flush::Done);
        assert_eq!(s.got, b"abcdefghij");
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_held_connection_is_woken_when_the_queue_drains() {
        let o = Outbox::new();
        let count = std::sync::Arc::new(Count(Default::default()));
        let woken = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let w = Waker::from(std::sync::Arc::clone(&count));
        let mut s = Sink {
            got: Vec::new(),
            room: 0,
        };
        for _ in 0..10 {
            o.push(Bytes::from(vec![7u8; 100]));
        }
        assert_eq!(o.bytes(), 1000);
        assert!(!o.hold_until_below(1000, &w));
        assert_eq!(o.flush(|b| s.send(b)), Flush::Blocked);
        assert!(o.hold_until_below(300, &w));
        s.room = 650;
        assert!(o.drain(|b| s.send(b)).is_err());
        assert_eq!(o.bytes(), 350);
        assert_eq!(woken(), 0);
        s.room = 100;
        assert!(o.drain(|b| s.send(b)).is_err());
        assert_eq!(woken(), 1);
        // Woken once only.
        s.room = 100;
        assert!(o.drain(|b| s.send(b)).is_err());
        assert_eq!(woken(), 1);
        // A broken connection wakes a held one too.
        for _ in 0..10 {
            o.push(Bytes::from(vec![7u8; 100]));
        }
        assert!(o.hold_until_below(10, &w));
        o.close();
        assert_eq!(woken(), 2);
        assert_eq!(o.bytes(), 0);
        assert!(!o.hold_until_below(10, &w));
    }

    #[test]
    fn a_failed_write_breaks_the_connection() {
        let o = Outbox::new();
        o.push(Bytes::from_static(b"abc"));
        let r = o.flush(|_| Err(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(r, Flush::Broken);
        assert!(o.is_broken() && o.is_empty());
        assert!(!o.push(Bytes::from_static(b"x")));
        assert!(o.is_empty());
    }
}
