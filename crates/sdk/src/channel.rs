//! IPC between roles: `SOCK_SEQPACKET` Unix socket pairs carrying one
//! postcard-encoded message per datagram (DESIGN.md section 3).
//!
//! SEQPACKET keeps message boundaries and is connection-oriented, so a peer
//! that dies shows up as end-of-file instead of silence. Each datagram is
//! capped at [`mirage_ipc::MAX_MESSAGE_LEN`]; anything larger, undecodable or
//! followed by trailing bytes is an error: the caller logs it and terminates
//! that peer, it never tries to resynchronise with a peer it cannot trust.
//!
//! Only plain system calls are used (`socketpair`, `sendto`, `recvfrom`,
//! `ppoll`, `close`) so that a seccomp allow-list can name every one of them.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use mirage_ipc::{CodecError, MAX_MESSAGE_LEN};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a message could not be sent or received.
#[derive(Debug)]
pub enum ChannelError {
    /// The kernel refused the call (includes `WouldBlock` on a non-blocking
    /// channel and `BrokenPipe` when sending to a peer that is gone).
    Io(io::Error),
    /// The message did not encode or decode, or had trailing bytes.
    Codec(CodecError),
    /// A received datagram was this many bytes, over the cap.
    Oversize(usize),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Io(e) => write!(f, "channel i/o: {e}"),
            ChannelError::Codec(e) => write!(f, "channel message: {e}"),
            ChannelError::Oversize(n) => {
                write!(
                    f,
                    "channel datagram of {n} bytes is over the {MAX_MESSAGE_LEN}-byte cap"
                )
            }
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        ChannelError::Io(e)
    }
}

/// What [`Channel::try_recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecv<T> {
    Message(T),
    /// Nothing queued now.
    Empty,
    /// The peer hung up.
    Closed,
}

/// One end of a `SOCK_SEQPACKET` socket pair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec (a role gets its end at a
    /// fixed fd number through [`crate::spawn`], which clears the flag on the
    /// copy it places).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair(2) needs.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success both descriptors are fresh and owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Adopt the channel a role inherited at a fixed fd number (3, 4, ...).
    ///
    /// To keep this safe without trusting the caller, the descriptor must
    /// look exactly like one [`crate::spawn`] placed: open, *not*
    /// close-on-exec (every descriptor Rust or this crate creates is
    /// close-on-exec, so an fd without the flag was inherited across `execve`
    /// and is owned by no object in this process) and an `AF_UNIX`
    /// `SOCK_SEQPACKET` socket. The flag is then set again so the channel does
    /// not leak into anything this process might execute. Call it once per
    /// fd, at the start of `main`: a second call fails because the flag is
    /// set by then.
    pub fn from_raw_fd(fd: RawFd) -> io::Result<Channel> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // 0-2 are inherited without close-on-exec too, but std's standard
        // streams use them.
        if fd <= 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a standard stream is not a channel",
            ));
        }
        // SAFETY: F_GETFD only reads descriptor flags; an invalid fd yields EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::FD_CLOEXEC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is close-on-exec, so it was not inherited as a channel",
            ));
        }
        let not_a_channel = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not an AF_UNIX SOCK_SEQPACKET socket",
            )
        };
        match sockopt_int(fd, libc::SO_DOMAIN).and_then(|d| Ok((d, sockopt_int(fd, libc::SO_TYPE)?))) {
            Ok((libc::AF_UNIX, libc::SOCK_SEQPACKET)) => {}
            Ok(_) => return Err(not_a_channel()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Err(not_a_channel()),
            Err(e) => return Err(e),
        }
        // SAFETY: F_SETFD on a descriptor we just checked is open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd is open and was inherited across execve (checked
        // above), so no other object in this process owns it; we take it.
        Ok(Channel {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Send one message as one datagram. Blocks while the socket buffer is
    /// full (unless the fd was made non-blocking); never raises SIGPIPE.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        let bytes = mirage_ipc::encode(msg).map_err(ChannelError::Codec)?;
        self.send_raw(&bytes)?;
        Ok(())
    }

    /// Like [`Channel::send`], but never blocks: `Ok(false)` when the peer's
    /// queue is full and the message was not sent. For traffic that may be
    /// lost (frames: UDP is lossy anyway), so that a peer that does not keep
    /// up can never stall the sender; a sender that blocks on a peer which
    /// is itself blocked sending back to it would deadlock both.
    pub fn try_send<T: Serialize>(&self, msg: &T) -> Result<bool, ChannelError> {
        let bytes = mirage_ipc::encode(msg).map_err(ChannelError::Codec)?;
        Ok(self.try_send_raw(&bytes)?)
    }

    /// [`Channel::try_send`] for already-encoded bytes: `Ok(false)` when the
    /// peer's queue is full.
    pub fn try_send_raw(&self, bytes: &[u8]) -> io::Result<bool> {
        match self.send_flags(bytes, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send already-encoded bytes as one datagram (also used by tests to play
    /// a misbehaving peer).
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.send_flags(bytes, libc::MSG_NOSIGNAL)
    }

    fn send_flags(&self, bytes: &[u8], flags: libc::c_int) -> io::Result<()> {
        loop {
            // SAFETY: `bytes` is valid for reads of its length; no address is
            // passed (the socket is connected).
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    flags,
                    std::ptr::null(),
                    0,
                )
            };
            if n >= 0 {
                // SEQPACKET sends all or nothing; a short count would be a kernel bug.
                return if usize::try_from(n).ok() == Some(bytes.len()) {
                    Ok(())
                } else {
                    Err(io::Error::from(io::ErrorKind::WriteZero))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receive one message. `Ok(None)` means end-of-file: the peer closed its
    /// end or died. A datagram over [`MAX_MESSAGE_LEN`] (detected with
    /// `MSG_TRUNC`, which makes the kernel report the real length), one that
    /// does not decode, or one with trailing bytes is an error; the datagram
    /// is consumed either way.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<T>, ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        match self.recv_into(&mut buf)? {
            None => Ok(None),
            Some(n) => mirage_ipc::decode(&buf[..n])
                .map(Some)
                .map_err(ChannelError::Codec),
        }
    }

    /// Receive one datagram's bytes into `buf` (at least
    /// [`MAX_MESSAGE_LEN`] long) without decoding it: `Ok(None)` at
    /// end-of-file, an error for a datagram over the cap.
    pub fn recv_into(&self, buf: &mut [u8]) -> Result<Option<usize>, ChannelError> {
        // Nothing queued on a channel someone made non-blocking: the
        // error it is.
        match self.recv_flags(buf, 0)? {
            Some(n) => Ok(n),
            None => Err(ChannelError::Io(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Receive one message if one is queued, without waiting: a loop that
    /// drains a channel this way needs no poll before each message.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<TryRecv<T>, ChannelError> {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        match self.recv_flags(&mut buf, libc::MSG_DONTWAIT)? {
            None => Ok(TryRecv::Empty),
            Some(None) => Ok(TryRecv::Closed),
            Some(Some(n)) => mirage_ipc::decode(&buf[..n])
                .map(TryRecv::Message)
                .map_err(ChannelError::Codec),
        }
    }

    /// `None`: nothing queued (with `MSG_DONTWAIT`, or on a non-blocking
    /// socket); `Some(None)`: the
    /// peer hung up; `Some(Some(n))`: a message of `n` bytes.
    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> Result<Option<Option<usize>>, ChannelError> {
        let n = loop {
            // SAFETY: `buf` is valid for writes of its length; no address is
            // requested.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | flags,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n.unsigned_abs();
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(ChannelError::Io(e)),
            }
        };
        if n > MAX_MESSAGE_LEN.min(buf.len()) {
            return Err(ChannelError::Oversize(n));
        }
        // SEQPACKET reports both end-of-file and an empty datagram as 0
        // bytes; only a hung-up socket is end-of-file.
        if n == 0 && self.peer_gone()? {
            return Ok(Some(None));
        }
        Ok(Some(Some(n)))
    }

    /// True when the peer has hung up (closed, died, or shut down its
    /// sending side).
    fn peer_gone(&self) -> io::Result<bool> {
        let revents = poll_once(&[self.fd.as_fd()], Some(0))?;
        Ok(revents
            .first()
            .is_some_and(|r| r & (libc::POLLHUP | libc::POLLRDHUP) != 0))
    }

    /// The same channel at the lowest free descriptor number `min` or
    /// above (close-on-exec); the number it had is closed. A KVM tender
    /// moves its peer's end out of the numbers its VM and vCPU must get
    /// ([`crate::kvm`]).
    pub fn moved_to_at_least(self, min: RawFd) -> io::Result<Channel> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own makes a new one and
        // touches no memory.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success `fd` is a fresh descriptor owned by nobody
        // else; `self` (the old number) is dropped, so closed, below.
        let moved = unsafe { OwnedFd::from_raw_fd(fd) };
        drop(self);
        Ok(Channel { fd: moved })
    }

    /// Switch the socket between blocking and non-blocking mode (event loops
    /// that call [`wait_readable`] first can stay blocking).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size
    // of `value`.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Channel {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.fd
    }
}

/// Messages for one peer that must not be lost but must never block the
/// sender: what the peer's socket cannot take now waits here, in order, up
/// to a bound. A sender that blocks on a peer which is itself blocked
/// sending back to it would deadlock both; an outbox that overflows instead
/// tells the caller that the peer does not read, and the caller ends it.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Vec<u8>>,
    max: usize,
}

/// Why [`Outbox::push`] failed.
#[derive(Debug)]
pub enum OutboxError {
    /// The peer has not taken the `max` messages queued before this one.
    Full,
    Channel(ChannelError),
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::Full => f.write_str("the peer does not read its channel (queue full)"),
            OutboxError::Channel(e) => e.fmt(f),
        }
    }
}

impl Outbox {
    /// An outbox that holds at most `max` messages the socket did not take.
    pub fn new(max: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            max,
        }
    }

    /// Send `msg` now if the socket takes it and nothing is waiting before
    /// it, else queue it. Never blocks.
    pub fn push<T: Serialize>(&mut self, chan: &Channel, msg: &T) -> Result<(), OutboxError> {
        let bytes = mirage_ipc::encode(msg).map_err(|e| OutboxError::Channel(ChannelError::Codec(e)))?;
        self.flush(chan).map_err(OutboxError::Channel)?;
        if self.queue.is_empty()
            && chan
                .try_send_raw(&bytes)
                .map_err(|e| OutboxError::Channel(e.into()))?
        {
            return Ok(());
        }
        if self.queue.len() >= self.max {
            return Err(OutboxError::Full);
        }
        self.queue.push_back(bytes);
        Ok(())
    }

    /// Send what is queued, in order, while the socket takes it.
    pub fn flush(&mut self, chan: &Channel) -> Result<(), ChannelError> {
        while let Some(bytes) = self.queue.front() {
            if !chan.try_send_raw(bytes)? {
                break;
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    /// Messages waiting for the peer.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What [`wait`] found for one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Data, or a hang-up the next read reports.
    pub readable: bool,
    /// Room to send (only reported when asked for).
    pub writable: bool,
}

/// Like [`wait_readable`], also waking when a descriptor whose flag is set
/// in `fds` has room to send (for draining an [`Outbox`]).
pub fn wait(fds: &[(BorrowedFd<'_>, bool)], timeout_ms: Option<u64>) -> io::Result<Vec<Ready>> {
    let events: Vec<(BorrowedFd<'_>, libc::c_short)> = fds
        .iter()
        .map(|(fd, write)| {
            (
                *fd,
                if *write {
                    READABLE | libc::POLLOUT
                } else {
                    READABLE
                },
            )
        })
        .collect();
    let revents = poll_events(&events, timeout_ms)?;
    Ok(revents
        .iter()
        .zip(fds)
        .map(|(r, (_, write))| Ready {
            readable: r & READABLE != 0,
            writable: *write && r & libc::POLLOUT != 0,
        })
        .collect())
}

/// Events that make a descriptor worth a read: data, or a hang-up/error that
/// the next read reports (end-of-file for a channel).
const READABLE: libc::c_short = libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP;

/// Wait until at least one of `fds` is readable (or hung up), or until
/// `timeout_ms` has passed (`None`: no timeout). Returns one flag per fd, all
/// false on timeout. Interrupted waits are resumed with the time left, so a
/// signal never ends the wait early. An fd that is not open is an error
/// (`EBADF`), not a silent "never readable".
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ms: Option<u64>) -> io::Result<Vec<bool>> {
    let revents = poll_once(fds, timeout_ms)?;
    Ok(revents.iter().map(|r| r & READABLE != 0).collect())
}

/// ppoll(2) with EINTR retried against a deadline on CLOCK_MONOTONIC.
fn poll_once(fds: &[BorrowedFd<'_>], timeout_ms: Option<u64>) -> io::Result<Vec<libc::c_short>> {
    let events: Vec<(BorrowedFd<'_>, libc::c_short)> = fds.iter().map(|fd| (*fd, READABLE)).collect();
    poll_events(&events, timeout_ms)
}

fn poll_events(
    fds: &[(BorrowedFd<'_>, libc::c_short)],
    timeout_ms: Option<u64>,
) -> io::Result<Vec<libc::c_short>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    let deadline = timeout_ms.map(|ms| monotonic_ms().saturating_add(ms));
    loop {
        let ts = deadline.map(|d| {
            let left = d.saturating_sub(monotonic_ms());
            libc::timespec {
                // Capped far beyond any timer we use; keeps the cast lossless.
                tv_sec: (left / 1000).min(i32::MAX as u64) as _,
                tv_nsec: ((left % 1000) * 1_000_000) as libc::c_long,
            }
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs;
        // `ts_ptr` is null or points to a live timespec; no signal mask.
        let rc = unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(pfds.iter().map(|p| p.revents).collect())
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec.max(0) as u64 / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_recv_takes_what_is_queued_and_never_waits() {
        let (a, b) = Channel::pair().unwrap();
        assert_eq!(b.try_recv::<u32>().unwrap(), TryRecv::Empty);
        a.send(&7u32).unwrap();
        a.send(&8u32).unwrap();
        assert_eq!(b.try_recv::<u32>().unwrap(), TryRecv::Message(7));
        assert_eq!(b.try_recv::<u32>().unwrap(), TryRecv::Message(8));
        assert_eq!(b.try_recv::<u32>().unwrap(), TryRecv::Empty);
        // An empty datagram from a live peer is a (bad) message, not the end.
        a.send_raw(&[]).unwrap();
        assert!(matches!(b.try_recv::<u32>(), Err(ChannelError::Codec(_))));
        drop(a);
        assert_eq!(b.try_recv::<u32>().unwrap(), TryRecv::Closed);
    }

    #[test]
    fn empty_datagram_from_live_peer_is_not_eof() {
        let (a, b) = Channel::pair().unwrap();
        a.send_raw(&[]).unwrap();
        // `()` encodes to zero bytes, so an empty datagram is a valid unit.
        assert!(matches!(b.recv::<()>(), Ok(Some(()))));
        // For a type that needs bytes it is a decode error, not end-of-file.
        a.send_raw(&[]).unwrap();
        assert!(matches!(b.recv::<u32>(), Err(ChannelError::Codec(_))));
        drop(a);
        assert!(matches!(b.recv::<u32>(), Ok(None)));
    }

    #[test]
    fn a_moved_channel_is_at_or_above_its_floor_and_still_connected() {
        let (a, b) = Channel::pair().unwrap();
        let old = b.as_raw_fd();
        let floor = old + 40;
        let b = b.moved_to_at_least(floor).unwrap();
        assert!(b.as_raw_fd() >= floor);
        a.send(&7u32).unwrap();
        assert_eq!(b.recv::<u32>().unwrap(), Some(7));
    }

    #[test]
    fn try_send_returns_instead_of_blocking_on_a_full_peer() {
        let (a, b) = Channel::pair().unwrap();
        let frame = vec![0u8; 1500];
        // Nobody reads `b`: the queue fills within its buffer size (a few
        // hundred KiB at most); a blocking send would hang here.
        let mut sent = 0usize;
        while a.try_send(&frame).unwrap() {
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        assert!(sent > 0);
        // Reading one makes room again, and what was queued is intact.
        assert_eq!(b.recv::<Vec<u8>>().unwrap(), Some(frame.clone()));
        assert!(a.try_send(&frame).unwrap());
        // A gone peer is an error, not "full".
        drop(b);
        assert!(matches!(a.try_send(&frame), Err(ChannelError::Io(_))));
    }

    #[test]
    fn outbox_queues_in_order_and_reports_a_peer_that_does_not_read() {
        let (a, b) = Channel::pair().unwrap();
        let mut out = Outbox::new(4);
        let big = vec![7u8; 4000];
        // Fill the socket first, then the outbox, without ever blocking.
        let mut sent = 0u32;
        let full = loop {
            match out.push(&a, &(sent, big.clone())) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the outbox never filled");
        };
        assert!(matches!(full, OutboxError::Full), "{full}");
        assert_eq!(out.len(), 4);
        // The peer asks for room: room shows as writable, and everything
        // queued arrives, in order, nothing twice.
        let mut next = 0u32;
        while next < sent {
            let r = wait(&[(b.as_fd(), false), (a.as_fd(), !out.is_empty())], Some(1000)).unwrap();
            assert!(r[0].readable, "message {next} of {sent} never came");
            let (n, body): (u32, Vec<u8>) = b.recv().unwrap().unwrap();
            assert_eq!((n, body.len()), (next, big.len()));
            next += 1;
            if r[1].writable {
                out.flush(&a).unwrap();
            }
            out.flush(&a).unwrap();
        }
        assert!(out.is_empty());
        assert!(wait(&[(a.as_fd(), true)], Some(0)).unwrap()[0].writable);
    }

    #[test]
    fn wait_times_out_and_rejects_closed_fds() {
        let (a, _b) = Channel::pair().unwrap();
        let start = monotonic_ms();
        assert_eq!(wait_readable(&[a.as_fd()], Some(30)).unwrap(), vec![false]);
        assert!(monotonic_ms() - start >= 29);
        // An fd number far above any open descriptor (closing a real one
        // would race with other tests reusing the number).
        // SAFETY: the borrowed fd is only passed to poll, which reports it
        // as invalid; it is never read, written or closed.
        let closed = unsafe { BorrowedFd::borrow_raw(1 << 29) };
        let err = wait_readable(&[closed], Some(0)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
