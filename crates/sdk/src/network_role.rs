//! The network role's loop, written once: a datagram socket (a packet
//! socket, a connected UDP socket) relayed to and from the channel. What a
//! service writes is its outbound policy and its messages ([`Relay`]).
//!
//! Inbound, every datagram becomes a message for the supervisor (the
//! engine parses it, not this role). Outbound, the engine may be
//! compromised: each datagram it asks for passes the service's policy
//! ([`Relay::check`]) and a rate cap ([`RateCap`]) before it is sent, and
//! what either refused is reported, the capped ones one by one or summed
//! up at most once per interval ([`CapReport`]).

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::{Channel, wait_readable};
use crate::clock::boottime;
use crate::packet::{self, PacketSocket, RateCap};

/// A socket that carries whole datagrams.
pub trait Datagrams: AsFd {
    /// What a receive says besides the bytes.
    type Meta;
    /// Receive one datagram into `buf`: its length and what else was said.
    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, Self::Meta)>;
    fn send_datagram(&self, datagram: &[u8]) -> io::Result<()>;
}

impl Datagrams for PacketSocket {
    type Meta = packet::Received;

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, packet::Received)> {
        self.recv(buf).map(|r| (r.len, r))
    }

    fn send_datagram(&self, frame: &[u8]) -> io::Result<()> {
        self.send(frame)
    }
}

/// A connected UDP socket (`send`/`recv` are `sendto`/`recvfrom` without
/// an address, in the SDK's base seccomp list).
impl Datagrams for UdpSocket {
    type Meta = ();

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, ())> {
        self.recv(buf).map(|n| (n, ()))
    }

    fn send_datagram(&self, datagram: &[u8]) -> io::Result<()> {
        match self.send(datagram)? {
            n if n == datagram.len() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "datagram sent only in part",
            )),
        }
    }
}

/// What the outbound policy says of one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Send(Vec<u8>),
    /// The service kept it, to decide once its policy changes (a message
    /// from the supervisor releases it).
    Held,
    /// Refused, and why.
    Refused(String),
}

/// What a message from the supervisor asks of the role.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Send this datagram, if the rate cap and the policy allow it.
    Send(Vec<u8>),
    /// The policy changed: what it now says of datagrams the service held
    /// (these took the rate cap's token when they were first asked for).
    Released(Vec<Verdict>),
}

/// How datagrams the rate cap dropped are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapReport {
    /// Each at once, with [`Relay::capped`]`(1)`.
    Each,
    /// Summed up, at most once per this many milliseconds: a flood is one
    /// report a second, not one message per datagram.
    EveryMs(u64),
}

/// The role's limits, fixed by the service.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// Longest datagram received.
    pub max_len: usize,
    /// Datagrams sent a second on average, and at once.
    pub per_second: u32,
    pub burst: u32,
    /// Whether every datagram asked for takes a token, refused or not (a
    /// flood of junk is then also a bounded flood of refusals), or only
    /// those the policy allows.
    pub cap_before_policy: bool,
    pub cap_report: CapReport,
    /// The level of socket errors in the log (a connected UDP socket
    /// reports a peer's ICMP errors on its next call: not worth a warning).
    pub io_errors: log::Level,
}

/// A service's network role: its messages and its outbound policy, run by
/// [`run`].
pub trait Relay {
    type Socket: Datagrams;
    /// From the supervisor.
    type In: DeserializeOwned;
    /// To the supervisor.
    type Out: Serialize;

    /// A datagram received: the message for the supervisor, or `None` to
    /// drop it.
    fn received(&mut self, datagram: &[u8], meta: <Self::Socket as Datagrams>::Meta) -> Option<Self::Out>;

    /// A message from the supervisor.
    fn request(&mut self, msg: Self::In) -> Request;

    /// The outbound policy for one datagram.
    fn check(&mut self, datagram: Vec<u8>) -> Verdict;

    /// The report of a refused datagram (the service logs it if it wants).
    fn refused(&mut self, reason: String) -> Self::Out;

    /// The report of `n` datagrams dropped by the rate cap.
    fn capped(&mut self, n: u64) -> Self::Out;
}

/// Run relay `relay` between `socket` and `chan` until the supervisor
/// closes the channel.
pub fn run<R: Relay>(
    relay: &mut R,
    socket: &R::Socket,
    chan: &Channel,
    limits: RelayLimits,
) -> Result<(), String> {
    let mut out = Outbound {
        socket,
        chan,
        limits,
        cap: RateCap::new(limits.per_second, limits.burst, boottime().millis()),
        capped: 0,
        capped_since: 0,
    };
    let mut buf = vec![0u8; limits.max_len];
    loop {
        let ready = wait_readable(&[chan.as_fd(), socket.as_fd()], out.report_timeout())
            .map_err(|e| format!("poll: {e}"))?;
        out.report_capped(relay)?;
        if ready[1] {
            match socket.recv_datagram(&mut buf) {
                Ok((n, meta)) => {
                    if let Some(msg) = relay.received(&buf[..n.min(buf.len())], meta) {
                        out.tell(&msg)?;
                    }
                }
                Err(e) => log::log!(limits.io_errors, "receive: {e}"),
            }
        }
        if ready[0] {
            match chan.recv::<R::In>() {
                Ok(Some(msg)) => match relay.request(msg) {
                    Request::Send(datagram) => out.transmit(relay, datagram)?,
                    Request::Released(verdicts) => {
                        for v in verdicts {
                            out.release(relay, v)?;
                        }
                    }
                },
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        }
    }
}

/// The outbound side: the socket, the rate cap, capped datagrams not
/// reported yet.
struct Outbound<'a, S> {
    socket: &'a S,
    chan: &'a Channel,
    limits: RelayLimits,
    cap: RateCap,
    capped: u64,
    /// When the first datagram not reported yet was capped (boot-clock ms).
    capped_since: u64,
}

impl<S: Datagrams> Outbound<'_, S> {
    fn tell<T: Serialize>(&self, msg: &T) -> Result<(), String> {
        self.chan.send(msg).map_err(|e| format!("send: {e}"))
    }

    fn transmit<R: Relay<Socket = S>>(&mut self, relay: &mut R, datagram: Vec<u8>) -> Result<(), String> {
        if self.limits.cap_before_policy && !self.take(relay)? {
            return Ok(());
        }
        match relay.check(datagram) {
            Verdict::Send(d) if self.limits.cap_before_policy || self.take(relay)? => {
                self.send(&d);
                Ok(())
            }
            Verdict::Send(_) | Verdict::Held => Ok(()),
            Verdict::Refused(why) => self.tell(&relay.refused(why)),
        }
    }

    fn release<R: Relay<Socket = S>>(&mut self, relay: &mut R, verdict: Verdict) -> Result<(), String> {
        match verdict {
            Verdict::Send(d) => self.send(&d),
            Verdict::Held => {}
            Verdict::Refused(why) => self.tell(&relay.refused(why))?,
        }
        Ok(())
    }

    fn send(&self, datagram: &[u8]) {
        if let Err(e) = self.socket.send_datagram(datagram) {
            log::log!(self.limits.io_errors, "send: {e}");
        }
    }

    /// Takes a token; without one the datagram is counted as capped.
    fn take<R: Relay>(&mut self, relay: &mut R) -> Result<bool, String> {
        let now = boottime().millis();
        if self.cap.take(now) {
            return Ok(true);
        }
        match self.limits.cap_report {
            CapReport::Each => self.tell(&relay.capped(1))?,
            CapReport::EveryMs(_) => {
                if self.capped == 0 {
                    self.capped_since = now;
                }
                self.capped += 1;
            }
        }
        Ok(false)
    }

    /// How long the poll may sleep before capped datagrams are due to be
    /// reported.
    fn report_timeout(&self) -> Option<u64> {
        let CapReport::EveryMs(every) = self.limits.cap_report else {
            return None;
        };
        let waited = boottime().millis().saturating_sub(self.capped_since);
        (self.capped > 0).then(|| every.saturating_sub(waited) + 1)
    }

    fn report_capped<R: Relay>(&mut self, relay: &mut R) -> Result<(), String> {
        let CapReport::EveryMs(every) = self.limits.cap_report else {
            return Ok(());
        };
        if self.capped == 0 || boottime().millis().saturating_sub(self.capped_since) < every {
            return Ok(());
        }
        let msg = relay.capped(std::mem::take(&mut self.capped));
        self.tell(&msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum ToNet {
        Send(Vec<u8>),
        /// Datagrams starting with this byte pass from now on.
        Allow(u8),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum FromNet {
        Datagram(Vec<u8>),
        Refused(String),
        Capped(u64),
    }

    /// Sends datagrams starting with `b'A'`; holds those starting with
    /// the byte it may be allowed later (`b'B'`), up to two.
    struct Toy {
        allowed: Vec<u8>,
        held: Vec<Vec<u8>>,
    }
    impl Relay for Toy {
        type Socket = UdpSocket;
        type In = ToNet;
        type Out = FromNet;
        fn received(&mut self, d: &[u8], (): ()) -> Option<FromNet> {
            (!d.is_empty()).then(|| FromNet::Datagram(d.to_vec()))
        }
        fn request(&mut self, msg: ToNet) -> Request {
            match msg {
                ToNet::Send(d) => Request::Send(d),
                ToNet::Allow(b) => {
                    self.allowed.push(b);
                    let held = std::mem::take(&mut self.held);
                    Request::Released(held.into_iter().map(|d| self.check(d)).collect())
                }
            }
        }
        fn check(&mut self, d: Vec<u8>) -> Verdict {
            match d.first() {
                Some(b) if self.allowed.contains(b) => Verdict::Send(d),
                Some(b'B') if self.held.len() < 2 => {
                    self.held.push(d);
                    Verdict::Held
                }
                _ => Verdict::Refused(format!("{d:?}")),
            }
        }
        fn refused(&mut self, why: String) -> FromNet {
            FromNet::Refused(why)
        }
        fn capped(&mut self, n: u64) -> FromNet {
            FromNet::Capped(n)
        }
    }

    /// The toy relay on a connected socket pair; the test is its
    /// supervisor and its peer.
    fn relay(limits: RelayLimits) -> (Channel, UdpSocket, std::thread::JoinHandle<Result<(), String>>) {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(peer.local_addr().unwrap()).unwrap();
        peer.connect(sock.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let (ours, theirs) = Channel::pair().unwrap();
        let role = std::thread::spawn(move || {
            let mut toy = Toy {
                allowed: vec![b'A'],
                held: vec![],
            };
            run(&mut toy, &sock, &theirs, limits)
        });
        (ours, peer, role)
    }

    fn limits(cap_before_policy: bool, cap_report: CapReport) -> RelayLimits {
        RelayLimits {
            max_len: 64,
            per_second: 1,
            burst: 3,
            cap_before_policy,
            cap_report,
            io_errors: log::Level::Debug,
        }
    }

    fn sent(peer: &UdpSocket) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 64];
        std::iter::from_fn(|| peer.recv(&mut buf).ok().map(|n| buf[..n].to_vec())).collect()
    }

    #[test]
    fn datagrams_pass_the_policy_and_held_ones_wait_for_a_change() {
        let (ours, peer, role) = relay(limits(false, CapReport::Each));
        ours.send(&ToNet::Send(b"A1".to_vec())).unwrap();
        ours.send(&ToNet::Send(b"C1".to_vec())).unwrap();
        assert_eq!(
            ours.recv::<FromNet>().unwrap(),
            Some(FromNet::Refused("[67, 49]".into()))
        );
        ours.send(&ToNet::Send(b"B1".to_vec())).unwrap();
        assert_eq!(sent(&peer), [b"A1".to_vec()]);
        // Released by the change, past the cap it already took.
        ours.send(&ToNet::Allow(b'B')).unwrap();
        assert_eq!(sent(&peer), [b"B1".to_vec()]);
        peer.send(b"in").unwrap();
        assert_eq!(
            ours.recv::<FromNet>().unwrap(),
            Some(FromNet::Datagram(b"in".to_vec()))
        );
        drop(ours);
        assert_eq!(role.join().unwrap(), Ok(()));
    }

    #[test]
    fn refused_datagrams_take_no_token_unless_the_cap_comes_first() {
        // Policy first: junk is refused without using the burst.
        let (ours, peer, _role) = relay(limits(false, CapReport::Each));
        for _ in 0..5 {
            ours.send(&ToNet::Send(b"C".to_vec())).unwrap();
            assert!(matches!(
                ours.recv::<FromNet>().unwrap(),
                Some(FromNet::Refused(_))
            ));
        }
        for _ in 0..5 {
            ours.send(&ToNet::Send(b"A".to_vec())).unwrap();
        }
        assert_eq!(ours.recv::<FromNet>().unwrap(), Some(FromNet::Capped(1)));
        assert_eq!(ours.recv::<FromNet>().unwrap(), Some(FromNet::Capped(1)));
        assert_eq!(sent(&peer).len(), 3);
        // Cap first: the junk used the burst, and every frame past it is
        // counted, then reported once, summed up.
        let (ours, peer, _role) = relay(limits(true, CapReport::EveryMs(200)));
        for _ in 0..3 {
            ours.send(&ToNet::Send(b"C".to_vec())).unwrap();
            assert!(matches!(
                ours.recv::<FromNet>().unwrap(),
                Some(FromNet::Refused(_))
            ));
        }
        for _ in 0..4 {
            ours.send(&ToNet::Send(b"A".to_vec())).unwrap();
        }
        let t0 = std::time::Instant::now();
        assert_eq!(ours.recv::<FromNet>().unwrap(), Some(FromNet::Capped(4)));
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "reported before its interval"
        );
        assert!(sent(&peer).is_empty());
    }
}
