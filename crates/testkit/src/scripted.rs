//! What the scripted servers ([`crate::dns`], [`crate::ntp`]) share: their
//! UDP sockets, and their late replies, each waiting in a queue until it is
//! due while the server's receive loop wakes for the earliest instead of
//! polling.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The server's UDP socket on `addr`, then one on each of `extras` (sockets
/// to send from, never read), in the namespace the calling thread is in.
pub(crate) fn bind_udp(addr: SocketAddr, extras: Vec<SocketAddr>) -> Result<Vec<UdpSocket>, String> {
    std::iter::once(addr)
        .chain(extras)
        .map(|a| UdpSocket::bind(a).map_err(|e| format!("bind {a}: {e}")))
        .collect()
}

/// Sends not due yet: when, what, to whom.
pub(crate) struct Delayed<T>(Vec<(Instant, T, SocketAddr)>);

impl<T> Delayed<T> {
    pub(crate) fn new() -> Delayed<T> {
        Delayed(Vec::new())
    }

    /// `item` to `to`, `after` from now.
    pub(crate) fn push(&mut self, after: Duration, item: T, to: SocketAddr) {
        self.0.push((Instant::now() + after, item, to));
    }

    /// Hand what is due to `send`, then wait for one datagram on `socket`
    /// until the next send is due (at least 1 ms, at most `idle`, so the
    /// caller still looks at its stop flag). `None`: nothing came (the
    /// wait ended, or an ICMP error from an earlier send surfaced).
    pub(crate) fn send_due_then_recv(
        &mut self,
        socket: &UdpSocket,
        buf: &mut [u8],
        idle: Duration,
        mut send: impl FnMut(T, SocketAddr),
    ) -> Option<(usize, SocketAddr)> {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = self.0.drain(..).partition(|(at, ..)| *at <= now);
        self.0 = rest;
        for (_, item, to) in due {
            send(item, to);
        }
        let wait = self
            .0
            .iter()
            .map(|(at, ..)| at.saturating_duration_since(now))
            .min()
            .unwrap_or(idle)
            .clamp(Duration::from_millis(1), idle);
        let _ = socket.set_read_timeout(Some(wait));
        socket.recv_from(buf).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_goes_once_when_due_and_the_wait_ends_for_it() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let mut later = Delayed::new();
        later.push(Duration::from_millis(30), "late", to);
        later.push(Duration::ZERO, "now", to);
        let mut buf = [0u8; 16];
        let mut sent = Vec::new();
        // The one due now goes on the first pass; the late one only once
        // its time has come, whatever the idle wait.
        while sent.len() < 2 {
            let got = later.send_due_then_recv(&socket, &mut buf, Duration::from_secs(5), |item, _| {
                sent.push(item)
            });
            assert_eq!(got, None, "nothing was sent to the socket");
        }
        assert_eq!(sent, ["now", "late"]);
        // Nothing left: the wait is the idle one, cut short by a datagram.
        socket.send_to(b"x", to).unwrap();
        let got = later.send_due_then_recv(&socket, &mut buf, Duration::from_secs(5), |_, _| unreachable!());
        assert_eq!(got, Some((1, to)));
    }
}
