//! Non-blocking unix-socket I/O shared by the client library and the
//! daemon: registering a socket with the runtime for one interest only,
//! `sendmsg` without SIGPIPE, and a packet reader.
//!
//! Both ends register their sockets for readability only and write from
//! the task that produced the packet; a writer task waits for writability
//! (on a duplicate descriptor) only while a backlog exists. A socket
//! registered for writability all the time is signalled every time the
//! peer reads, which wakes the process for nothing.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::BytesMut;
use ctdb_protocol::framing::{FrameError, Framer, SCRATCH};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The socket type both ends use under [`AsyncFd`].
pub type Socket = std::os::unix::net::UnixStream;

/// Registers a socket with the runtime for `interest` only.
///
/// (`AsyncFd::with_interest` is deprecated because a wrapped type could
/// close or swap its descriptor behind the runtime's back; a std
/// `UnixStream` owns its descriptor until it is dropped, which is exactly
/// what the registration needs.)
#[allow(deprecated)]
pub fn register(s: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    AsyncFd::with_interest(s, interest)
}

/// A duplicate of `s`'s descriptor registered for writability alone, for
/// a writer task to wait on while a backlog lasts.
pub fn watch_writable(s: &Socket) -> io::Result<AsyncFd<Socket>> {
    register(s.try_clone()?, Interest::WRITABLE)
}

/// One non-blocking vectored `sendmsg`; a vanished peer is an error, not
/// a SIGPIPE. Retries on EINTR.
pub fn send_vectored(s: &Socket, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match socket2::SockRef::from(s).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Blocks the calling thread until `s` is writable (or its peer is gone:
/// the next write says how), for at most `limit`; `TimedOut` after that.
/// Only for a last write where no runtime can be relied on (a client's
/// last handle dropped while its runtime shuts down).
pub fn wait_writable_blocking(s: &Socket, limit: Duration) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Frames packets read from a registered socket, many per read
/// ([`Framer`]: no buffer held between packets).
pub struct PacketReader {
    framer: Framer,
}

impl PacketReader {
    /// A reader refusing packets over `max_packet` bytes.
    pub fn new(max_packet: usize) -> PacketReader {
        PacketReader {
            framer: Framer::new(max_packet),
        }
    }

    /// The next whole packet; `Ok(None)` at end of file (or a reset by the
    /// peer). A framing error (a length under a header or over the
    /// maximum) is returned and the stream cannot be read further.
    pub async fn next(&mut self, sock: &AsyncFd<Socket>) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if let Some(pkt) = self.framer.next_packet()? {
                return Ok(Some(pkt));
            }
            let mut guard = sock.readable().await?;
            let framer = &mut self.framer;
            match guard.try_io(|s| framer.read_from(&mut s.get_ref())) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => {
                    // A short read drained the socket: wait for the next
                    // edge rather than ask again and hear "would block".
                    if n < SCRATCH {
                        guard.clear_ready();
                    }
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Ok(Err(e)) => return Err(e.into()),
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

    fn packet(len: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len as usize];
        p[..4].copy_from_slice(&len.to_le_bytes());
        p
    }

    #[tokio::test]
    async fn reads_many_packets_per_read_then_end_of_file() {
        let (a, mut b) = Socket::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = register(a, Interest::READABLE).unwrap();
        let mut bytes = packet(HEADER_LEN as u32, 1);
        bytes.extend(packet(HEADER_LEN as u32 + 8, 2));
        b.write_all(&bytes).unwrap();
        drop(b);
        let mut r = PacketReader::new(1024);
        assert_eq!(r.next(&a).await.unwrap().unwrap()[4], 1);
        let second = r.next(&a).await.unwrap().unwrap();
        assert_eq!(second.len(), HEADER_LEN + 8);
        assert_eq!(second[4], 2);
        assert!(r.next(&a).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_length_is_a_framing_error() {
        let (a, mut b) = Socket::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = register(a, Interest::READABLE).unwrap();
        b.write_all(&packet(4096, 0)[..64]).unwrap();
        let mut r = PacketReader::new(1024);
        assert!(matches!(r.next(&a).await, Err(FrameError::Protocol(_))));
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = Socket::pair().unwrap();
        drop(b);
        let e = send_vectored(&a, &[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
