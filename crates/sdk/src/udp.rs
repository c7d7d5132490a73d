//! UDP datagrams stamped with the kernel's receive time, and fresh
//! connected sockets for a role that opens one per request
//! ([`connected_socket`]).
//!
//! A time client measures how long its request took to come back; the
//! moment a reply arrived is best taken by the kernel when it queued the
//! datagram (`SO_TIMESTAMPNS`), not when a process woke up to read it: the
//! wake-up adds scheduling delay, on one side of the exchange only, which
//! reads as offset. The supervisor turns the option on
//! ([`enable_receive_timestamps`], `setsockopt` is in no role's allow-list)
//! before it hands the socket over; the role reads with [`recv_timestamped`]
//! (`recvmsg`, [`crate::sandbox::seccomp::PACKET_IN`]), whose control
//! message parsing is the unsafe part this module keeps out of the service.
//! The kernel turns arrival stamping on for the whole system shortly after
//! the first socket asks for it (a deferred static key); datagrams that
//! arrive before are stamped when they are read, which is no worse than a
//! reading taken by the role.
//!
//! ```
//! use std::net::UdpSocket;
//! use mirage_sdk::udp::{enable_receive_timestamps, recv_timestamped};
//!
//! let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
//! enable_receive_timestamps(&rx).unwrap();
//! let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
//! tx.send_to(b"ping", rx.local_addr().unwrap()).unwrap();
//! rx.set_nonblocking(false).unwrap();
//! let mut buf = [0u8; 16];
//! let got = recv_timestamped(&rx, &mut buf, false).unwrap();
//! assert_eq!((&buf[..got.len], got.truncated), (&b"ping"[..], false));
//! let at = got.at.expect("the kernel stamped it");
//! let now = mirage_sdk::clock::realtime();
//! assert!(now.nanos_since(at) >= 0 && now.nanos_since(at) < 5_000_000_000);
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::clock::RealTime;

/// `SO_TIMESTAMPNS` and its control message type. On 64-bit targets the
/// old and the 64-bit-time options are the same number (35), and the
/// control message carries a native `struct timespec`.
#[cfg(target_pointer_width = "64")]
const SO_TIMESTAMPNS: libc::c_int = 35;
#[cfg(target_pointer_width = "64")]
const SCM_TIMESTAMPNS: libc::c_int = SO_TIMESTAMPNS;

/// Ask the kernel to stamp every datagram `socket` receives with
/// `CLOCK_REALTIME` (nanoseconds).
pub fn enable_receive_timestamps(socket: impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open for the duration of the call (borrowed); the
    // option value is a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A fresh UDP socket connected to `peer`, non-blocking and close-on-exec,
/// made with `socket` and `connect` only: no `bind`, so the kernel picks
/// the source port when it connects, at random from the ephemeral range
/// (the source-port randomisation of RFC 5452 section 9.2, which a
/// resolver needs a fresh port per query for). A role that opens these
/// after its filter needs `socket` (for the peer's family) and `connect` in
/// its allow-list, never `bind`; the kernel delivers it only `peer`'s
/// datagrams, and `send` (`sendto` without an address) reaches only `peer`.
///
/// ```
/// use std::net::UdpSocket;
/// let server = UdpSocket::bind("127.0.0.1:0").unwrap();
/// let s = mirage_sdk::udp::connected_socket(server.local_addr().unwrap()).unwrap();
/// assert_eq!(s.peer_addr().unwrap(), server.local_addr().unwrap());
/// assert_ne!(s.local_addr().unwrap().port(), 0);
/// ```
pub fn connected_socket(peer: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let family = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; a non-negative result is a new
    // descriptor nobody else owns.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by no one else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr_of(peer);
    // SAFETY: `storage` is a live sockaddr_storage holding a sockaddr_in or
    // sockaddr_in6 of exactly `len` bytes; the fd is open (owned above).
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::UdpSocket::from(owned))
}

/// `addr` as the kernel's socket address.
pub(crate) fn sockaddr_of(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in; the write is within it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// One datagram as [`recv_timestamped`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (the rest is lost).
    pub truncated: bool,
    /// When the kernel received it; `None` when the socket has no
    /// timestamping on or the control message did not fit.
    pub at: Option<RealTime>,
}

/// Room for one `SCM_TIMESTAMPNS` message and then some, aligned for
/// `cmsghdr` (an array of u64: 8-byte alignment, as the header needs).
const CONTROL_WORDS: usize = 16;

/// Read one datagram from `socket` (connected or not: the sender is not
/// reported) with its kernel receive timestamp. `nonblocking`: return
/// `WouldBlock` rather than wait when nothing is queued.
pub fn recv_timestamped(socket: impl AsFd, buf: &mut [u8], nonblocking: bool) -> io::Result<Received> {
    recv_inner(socket.as_fd(), buf, nonblocking, None)
}

/// As [`recv_timestamped`], on an unconnected socket: also the sender's
/// address (`None` if the kernel reported no IPv4 or IPv6 address).
pub fn recv_timestamped_from(
    socket: impl AsFd,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<(Received, Option<std::net::SocketAddr>)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let got = recv_inner(socket.as_fd(), buf, nonblocking, Some(&mut name))?;
    Ok((got, socket_addr_of(&name)))
}

/// The IPv4 or IPv6 address in `name` (as recvmsg filled it).
fn socket_addr_of(name: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // fits in (and is less aligned than) sockaddr_storage.
            let sin: &libc::sockaddr_in = unsafe { &*(name as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(name as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn recv_inner(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
    name: Option<&mut libc::sockaddr_storage>,
) -> io::Result<Received> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data for which all-zero is a valid value (no
    // name, no iovecs, no control buffer); the fields used are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    if let Some(name) = name {
        msg.msg_name = (name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `msg` points at `iov` (which covers exactly `buf`), at
    // `control` and at the name storage if any (its exact size given), all
    // alive and exclusively borrowed for the call; the fd is borrowed open.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = usize::try_from(n).unwrap_or(0).min(buf.len());
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    let at = if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        None
    } else {
        timestamp_of(&msg)
    };
    Ok(Received { len, truncated, at })
}

/// The `SCM_TIMESTAMPNS` control message of `msg`, if any.
fn timestamp_of(msg: &libc::msghdr) -> Option<RealTime> {
    let want = std::mem::size_of::<libc::timespec>();
    // SAFETY: `msg` was filled by a successful recvmsg: msg_control points
    // at our live control buffer and msg_controllen says how much of it the
    // kernel wrote, which is all CMSG_FIRSTHDR/CMSG_NXTHDR read.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers from CMSG_FIRSTHDR/NXTHDR lie within
        // the written part of the control buffer.
        let hdr = unsafe { &*cmsg };
        // SAFETY: CMSG_LEN is arithmetic on its argument only.
        let full = unsafe { libc::CMSG_LEN(want as u32) } as usize;
        if hdr.cmsg_level == libc::SOL_SOCKET
            && hdr.cmsg_type == SCM_TIMESTAMPNS
            && hdr.cmsg_len as usize >= full
        {
            // SAFETY: the header says its data holds a whole timespec
            // (checked just above); the data may be unaligned, so it is
            // read unaligned.
            let ts: libc::timespec = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            let nanos = u32::try_from(ts.tv_nsec).ok().filter(|&n| n < 1_000_000_000)?;
            return Some(RealTime {
                secs: ts.tv_sec,
                nanos,
            });
        }
        // SAFETY: as for CMSG_FIRSTHDR; NXTHDR returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

/// Datagrams read at once by [`RecvBatch::recv_from`] (`recvmmsg`): one
/// system call drains up to `slots` queued datagrams, where `recv_from`
/// takes one each.
pub struct RecvBatch {
    storage: Vec<u8>,
    slot: usize,
    names: Vec<libc::sockaddr_storage>,
    got: Vec<(usize, bool)>,
}

impl RecvBatch {
    /// Room for `slots` datagrams of up to `slot_size` bytes each.
    pub fn new(slots: usize, slot_size: usize) -> RecvBatch {
        let slots = slots.max(1);
        RecvBatch {
            storage: vec![0; slots * slot_size.max(1)],
            slot: slot_size.max(1),
            // SAFETY: sockaddr_storage is plain data; all-zero is valid.
            names: vec![unsafe { std::mem::zeroed() }; slots],
            got: Vec::with_capacity(slots),
        }
    }

    /// Read what is queued on the unconnected `socket`, up to the batch's
    /// room, without waiting (`MSG_DONTWAIT`): `WouldBlock` when nothing
    /// is. Returns how many datagrams were read ([`RecvBatch::get`]).
    pub fn recv_from(&mut self, socket: impl AsFd) -> io::Result<usize> {
        self.got.clear();
        let slots = self.names.len();
        let mut iovs: Vec<libc::iovec> = self
            .storage
            .chunks_exact_mut(self.slot)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid value
                // (no name, no iovecs, no control); the fields used are set.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h
            })
            .collect();
        // The system call itself, as for sendmmsg ([`send_many_to`]).
        // SAFETY: `hdrs` holds `slots` headers, each pointing at its own
        // iovec (covering its own slot of `storage`) and its own name
        // storage (exact size given); all alive and exclusively borrowed
        // for the call; a null timeout; the fd is borrowed open. The
        // headers' padding (musl's 32-bit iovlen) is zero, so each length
        // reads as the kernel's size_t.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmmsg,
                socket.as_fd().as_raw_fd(),
                hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for h in &hdrs[..n as usize] {
            let len = (h.msg_len as usize).min(self.slot);
            self.got.push((len, h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0));
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last read: its bytes, whether it was longer than
    /// a slot (the rest is lost), and its sender (`None` if not IPv4 or
    /// IPv6). Panics if `i` is not below the count the read returned.
    pub fn get(&self, i: usize) -> (&[u8], bool, Option<std::net::SocketAddr>) {
        let (len, truncated) = self.got[i];
        let start = i * self.slot;
        (
            &self.storage[start..start + len],
            truncated,
            socket_addr_of(&self.names[i]),
        )
    }
}

/// Send datagrams from the unconnected `socket`, each to its address, in
/// one system call (`sendmmsg`) per call. Returns how many left, in
/// order: the first that the kernel refused is `datagrams[n]`; an error
/// means the first one failed (the caller skips it and goes on).
pub fn send_many_to(socket: impl AsFd, datagrams: &[(&[u8], std::net::SocketAddr)]) -> io::Result<usize> {
    if datagrams.is_empty() {
        return Ok(0);
    }
    let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        datagrams.iter().map(|(_, to)| sockaddr_of(*to)).collect();
    let mut iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|(data, _)| libc::iovec {
            // The kernel only reads from a send's iovec.
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(names.iter_mut())
        .map(|(iov, (name, len))| {
            // SAFETY: as in RecvBatch::recv_from.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = *len;
            h
        })
        .collect();
    // The system call itself: musl's 64-bit sendmmsg is a loop of sendmsg
    // (no saving, and a call the allow-list does not name).
    // SAFETY: each header points at its own iovec (over a live borrowed
    // slice the kernel only reads) and its own address of the given
    // length; all alive for the call; the padding is zero (as above); the
    // fd is borrowed open.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendmmsg,
            socket.as_fd().as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_connected_socket_talks_only_with_its_peer_from_a_fresh_port() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let peer = UdpSocket::bind(local).unwrap();
            let other = UdpSocket::bind(local).unwrap();
            let a = connected_socket(peer.local_addr().unwrap()).unwrap();
            let b = connected_socket(peer.local_addr().unwrap()).unwrap();
            let (pa, pb) = (a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
            assert!(pa != 0 && pb != 0 && pa != pb, "{pa} {pb}");
            a.send(b"q").unwrap();
            let mut buf = [0u8; 8];
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"q"[..], a.local_addr().unwrap()));
            // Another sender is not delivered: the socket is connected.
            other.send_to(b"spoof", a.local_addr().unwrap()).unwrap();
            peer.send_to(b"r", from).unwrap();
            a.set_nonblocking(false).unwrap();
            let n = a.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"r");
            a.set_nonblocking(true).unwrap();
            assert_eq!(a.recv(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
    }

    #[test]
    fn without_the_option_there_is_no_timestamp_and_truncation_is_reported() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
        let mut small = [0u8; 10];
        let got = recv_timestamped(&rx, &mut small, false).unwrap();
        assert_eq!((got.len, got.truncated, got.at), (10, true, None));
        // Nothing queued: nonblocking returns at once.
        let e = recv_timestamped(&rx, &mut small, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn the_sender_is_reported_on_an_unconnected_socket() {
        for (local, any) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let rx = UdpSocket::bind(local).unwrap();
            enable_receive_timestamps(&rx).unwrap();
            let tx = UdpSocket::bind(any).unwrap();
            tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 16];
            let (got, from) = recv_timestamped_from(&rx, &mut buf, false).unwrap();
            assert_eq!(&buf[..got.len], b"hello");
            assert_eq!(from, Some(tx.local_addr().unwrap()));
            assert!(got.at.is_some());
        }
    }

    #[test]
    fn the_kernel_stamp_is_taken_on_arrival_not_when_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_receive_timestamps(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel turns arrival stamping on for the whole system a
        // little after the first socket asks (a deferred static key);
        // until then it stamps when the datagram is read. So: bounded tries.
        let mut seen = Vec::new();
        for _ in 0..50 {
            let before = crate::clock::realtime();
            tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut buf = [0u8; 4];
            let got = recv_timestamped(&rx, &mut buf, false).unwrap();
            let after = crate::clock::realtime();
            let at = got.at.expect("stamped");
            assert!(at.nanos_since(before) >= 0, "{at:?} before {before:?}");
            assert!(after.nanos_since(at) >= 0, "{at:?} after the read {after:?}");
            if after.nanos_since(at) >= 40_000_000 {
                return;
            }
            seen.push(after.nanos_since(at));
        }
        panic!("never stamped on arrival; read-to-stamp gaps (ns): {seen:?}");
    }

    #[test]
    fn a_batch_reads_several_datagrams_and_sends_several_at_once() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let rx = UdpSocket::bind(local).unwrap();
            let tx = UdpSocket::bind(local).unwrap();
            let mut batch = RecvBatch::new(4, 8);
            // Nothing queued: no wait.
            assert_eq!(
                batch.recv_from(&rx).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            for d in [&b"one"[..], b"two", b"longer than eight", b"four", b"five"] {
                tx.send_to(d, rx.local_addr().unwrap()).unwrap();
            }
            let n = batch.recv_from(&rx).unwrap();
            assert_eq!(n, 4);
            let from = Some(tx.local_addr().unwrap());
            assert_eq!(batch.get(0), (&b"one"[..], false, from));
            assert_eq!(batch.get(1), (&b"two"[..], false, from));
            assert_eq!(batch.get(2), (&b"longer t"[..], true, from));
            assert_eq!(batch.get(3), (&b"four"[..], false, from));
            assert_eq!(batch.recv_from(&rx).unwrap(), 1);
            assert_eq!(batch.get(0).0, b"five");
            // The answers go back, each to its own address.
            let other = UdpSocket::bind(local).unwrap();
            let to = [
                (&b"a"[..], tx.local_addr().unwrap()),
                (&b"bb"[..], other.local_addr().unwrap()),
            ];
            assert_eq!(send_many_to(&rx, &to).unwrap(), 2);
            assert_eq!(send_many_to(&rx, &[]).unwrap(), 0);
            let mut buf = [0u8; 8];
            let (n, f) = tx.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], f), (&b"a"[..], rx.local_addr().unwrap()));
            let (n, f) = other.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], f), (&b"bb"[..], rx.local_addr().unwrap()));
        }
    }
}
