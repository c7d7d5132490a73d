//! TCP connections a role opens without waiting: [`connect_nonblocking`]
//! starts the handshake and returns at once, so a role's event loop never
//! stalls on a peer that does not answer (std's `connect` and
//! `connect_timeout` block). The role polls the stream for writing; a
//! refused or unreachable peer shows as the error of the first write or
//! read.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec TCP stream whose connection to `peer` is
/// under way (or done), made with `socket` and `connect` only: the kernel
/// picks the source port. A role that calls it after its filter needs
/// `socket` for the peer's family and `connect` in its allow-list, and
/// `peer`'s port in its plan's `tcp_connect_ports` (Landlock).
///
/// ```
/// let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let s = mirage_sdk::tcp::connect_nonblocking(server.local_addr().unwrap()).unwrap();
/// let (accepted, from) = server.accept().unwrap();
/// assert_eq!(from, s.local_addr().unwrap());
/// # drop(accepted);
/// ```
pub fn connect_nonblocking(peer: SocketAddr) -> io::Result<TcpStream> {
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
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by no one else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = crate::udp::sockaddr_of(peer);
    // SAFETY: `storage` holds a sockaddr_in or sockaddr_in6 of exactly
    // `len` bytes; the fd is open (owned above).
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_connection_completes_later_and_a_refused_one_fails_on_use() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = connect_nonblocking(server.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = server.accept().unwrap();
        let ready = crate::channel::wait(&[(std::os::fd::AsFd::as_fd(&s), true)], Some(5000)).unwrap();
        assert!(ready[0].writable);
        s.write_all(b"query").unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"query");

        // Nothing listens on a port just freed: refused, reported on use.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        match connect_nonblocking(free) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(mut s) => {
                crate::channel::wait(&[(std::os::fd::AsFd::as_fd(&s), true)], Some(5000)).unwrap();
                let e = s.write(b"x").unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
        }
    }
}
