//! A programmable NTP server for hostile-server suites: UDP sockets in a
//! network namespace the test made, whose every answer is built by a
//! *script* from the request.
//!
//! The server binds its address (the one the client is configured with)
//! and any number of extra sockets (another address, another port) in the
//! namespace. For each datagram received on its address, the script returns
//! zero or more [`Datagram`]s: honest replies, bent ones, byte soup, sent
//! from the server's address or from an extra socket, to the client or
//! elsewhere, at once or after a delay (late replies). The test thread can
//! also send unsolicited datagrams ([`NtpServer::inject`]) and flood
//! ([`NtpServer::flood`]). Every request and every datagram sent is
//! recorded, with the tag the script gave it, so that a suite can derive
//! exactly what its client must have received and refused.
//!
//! Unlike the rest of the kit this module knows one protocol: the NTP
//! header ([`Header`]), written here independently of the engine under
//! test, so that the suite does not check the engine against its own
//! encoder. Times come from the host's realtime clock (optionally shifted):
//! a server in a namespace on the same host shares the client's clock, so
//! an honest server's offset is the measurement's error.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::scripted::{Delayed, bind_udp};

/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (RFC 5905 section 6).
pub const UNIX_EPOCH_NTP_SECS: u64 = 2_208_988_800;
/// The NTP header's length (RFC 5905 figure 8).
pub const HEADER_LEN: usize = 48;
/// How long the server loop waits for a datagram before it looks at its
/// stop flag and its delayed sends again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Bound on the server's start-up (namespace, bind).
const START_WITHIN: Duration = Duration::from_secs(10);

/// The realtime clock as a 64-bit NTP timestamp, moved by `offset_ns`
/// (a server whose clock is that far ahead).
pub fn ntp_now(offset_ns: i64) -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    ntp_of_unix_nanos(since.as_nanos() as i128 + i128::from(offset_ns))
}

/// A Unix time in nanoseconds as an NTP timestamp (seconds wrap into the
/// next era as on the wire).
pub fn ntp_of_unix_nanos(nanos: i128) -> u64 {
    let ntp = nanos + i128::from(UNIX_EPOCH_NTP_SECS) * 1_000_000_000;
    let secs = ntp.div_euclid(1_000_000_000) as u64;
    let frac = ((ntp.rem_euclid(1_000_000_000) << 32) / 1_000_000_000) as u64;
    (secs << 32) | frac
}

/// `t` moved by `nanos` (either way).
pub fn ntp_add_nanos(t: u64, nanos: i64) -> u64 {
    t.wrapping_add((((nanos as i128) << 32) / 1_000_000_000) as i64 as u64)
}

/// Seconds in the 16.16 short format (root delay, root dispersion).
pub fn short_of_millis(ms: u32) -> u32 {
    ((u64::from(ms) << 16) / 1000) as u32
}

/// An NTP header (RFC 5905 section 7.3), every field as on the wire and
/// free to be set to anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 0..=3.
    pub leap: u8,
    /// 0..=7.
    pub version: u8,
    /// 0..=7.
    pub mode: u8,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: u32,
    pub root_dispersion: u32,
    pub reference_id: [u8; 4],
    pub reference: u64,
    pub origin: u64,
    pub receive: u64,
    pub transmit: u64,
}

impl Header {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.push(((self.leap & 3) << 6) | ((self.version & 7) << 3) | (self.mode & 7));
        b.push(self.stratum);
        b.push(self.poll as u8);
        b.push(self.precision as u8);
        b.extend_from_slice(&self.root_delay.to_be_bytes());
        b.extend_from_slice(&self.root_dispersion.to_be_bytes());
        b.extend_from_slice(&self.reference_id);
        for t in [self.reference, self.origin, self.receive, self.transmit] {
            b.extend_from_slice(&t.to_be_bytes());
        }
        b
    }

    /// The header of `b`, if it has 48 bytes or more.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        Some(Header {
            leap: b[0] >> 6,
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: u32_at(4),
            root_dispersion: u32_at(8),
            reference_id: b[12..16].try_into().unwrap(),
            reference: u64_at(16),
            origin: u64_at(24),
            receive: u64_at(32),
            transmit: u64_at(40),
        })
    }
}

/// One datagram the server received on its address.
#[derive(Clone, Debug)]
pub struct Request {
    /// The client's address and port.
    pub from: SocketAddr,
    pub data: Vec<u8>,
    /// Its header, if it has one.
    pub header: Option<Header>,
    /// When it was read (the realtime clock, unshifted): T2.
    pub received: u64,
    /// 0 for the first request, then counting.
    pub nth: usize,
}

impl Request {
    /// What an honest stratum-2 server whose clock is `offset_ns` ahead
    /// answers (RFC 5905 section 8): the request's transmit timestamp as
    /// origin, T2 when it was read, T3 now.
    pub fn reply(&self, offset_ns: i64) -> Header {
        let t2 = ntp_add_nanos(self.received, offset_ns);
        Header {
            leap: 0,
            version: 4,
            mode: 4,
            stratum: 2,
            poll: self.header.map_or(6, |h| h.poll),
            precision: -20,
            root_delay: short_of_millis(4),
            root_dispersion: short_of_millis(4),
            reference_id: [192, 0, 2, 1],
            reference: ntp_add_nanos(t2, -16_000_000_000),
            origin: self.header.map_or(0, |h| h.transmit),
            receive: t2,
            transmit: ntp_now(offset_ns),
        }
    }
}

/// Which socket a datagram leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The server's own address and port.
    Server,
    /// The extra socket of that index ([`NtpServer::start`]'s `extras`).
    Extra(usize),
}

/// A datagram to send.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub data: Vec<u8>,
    pub via: Via,
    /// `None`: to whoever sent the request.
    pub to: Option<SocketAddr>,
    /// Sent this long after the request (late replies).
    pub after: Duration,
    /// The script's label, recorded with the send (what the client should
    /// make of it, say).
    pub tag: &'static str,
}

impl Datagram {
    /// `data` from the server's address to the requester, now.
    pub fn reply(data: Vec<u8>, tag: &'static str) -> Datagram {
        Datagram {
            data,
            via: Via::Server,
            to: None,
            after: Duration::ZERO,
            tag,
        }
    }
    pub fn via(mut self, via: Via) -> Datagram {
        self.via = via;
        self
    }
    pub fn to(mut self, to: SocketAddr) -> Datagram {
        self.to = Some(to);
        self
    }
    pub fn after(mut self, after: Duration) -> Datagram {
        self.after = after;
        self
    }
}

/// A datagram the server sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub tag: &'static str,
    pub via: Via,
    /// The socket it left from.
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub len: usize,
    /// The send error, if it failed.
    pub error: Option<String>,
}

/// What a script is: the request, and those before it (oldest first), to
/// the datagrams to send.
pub type Script = Box<dyn FnMut(&Request, &[Request]) -> Vec<Datagram> + Send>;

struct Shared {
    seen: Mutex<Vec<Request>>,
    sent: Mutex<Vec<Sent>>,
    /// Delayed sends not made yet.
    pending: AtomicUsize,
}

/// The running server; stops and joins its thread on drop.
pub struct NtpServer {
    addr: SocketAddr,
    sockets: Arc<Vec<UdpSocket>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NtpServer {
    /// Serve on `addr` in namespace `ns`, with `extras` bound too (sockets
    /// to send from, never read). Returns once every socket is bound.
    pub fn start(ns: &str, addr: SocketAddr, extras: &[SocketAddr], script: Script) -> NtpServer {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<Vec<UdpSocket>>, String>>();
        let (ns, extras) = (ns.to_owned(), extras.to_vec());
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let opened = (|| -> Result<Arc<Vec<UdpSocket>>, String> {
                crate::netns::enter(&ns).map_err(|e| format!("setns {ns}: {e}"))?;
                let sockets = bind_udp(addr, extras)?;
                sockets[0]
                    .set_read_timeout(Some(IDLE_WAIT))
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(sockets))
            })();
            let sockets = match opened {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(s.clone()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve(&sockets, &shared2, &stop2, script);
        });
        let sockets = ready_rx
            .recv_timeout(START_WITHIN)
            .expect("NTP server did not start")
            .unwrap_or_else(|e| panic!("NTP server {addr}: {e}"));
        NtpServer {
            addr,
            sockets,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Request> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// Delayed datagrams the script asked for and the server has not sent
    /// yet.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Every datagram sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.sent.lock().unwrap().clone()
    }

    /// Sends that failed (a case whose datagrams did not all go out proves
    /// nothing: suites assert this is empty).
    pub fn send_errors(&self) -> Vec<String> {
        self.sent().into_iter().filter_map(|s| s.error).collect()
    }

    /// Send `d` now, unsolicited, to `to`.
    pub fn inject(&self, d: Datagram, to: SocketAddr) {
        send(&self.sockets, &self.shared, d, to);
    }

    /// Send `make(i)` from the server's address to `to` at `per_sec`
    /// datagrams a second for `duration`, from the calling thread (in
    /// batches every 10 ms). Returns how many went out; they are counted
    /// apart from [`NtpServer::sent`] (as one entry tagged `tag`, whose
    /// `len` is the count).
    pub fn flood(
        &self,
        to: SocketAddr,
        per_sec: u64,
        duration: Duration,
        tag: &'static str,
        mut make: impl FnMut(u64) -> Vec<u8>,
    ) -> u64 {
        const TICK: Duration = Duration::from_millis(10);
        let start = Instant::now();
        let (mut due, mut sent) = (0u64, 0u64);
        while start.elapsed() < duration {
            let target = start.elapsed().as_millis() as u64 * per_sec / 1000;
            while due < target {
                if self.sockets[0].send_to(&make(due), to).is_ok() {
                    sent += 1;
                }
                due += 1;
            }
            std::thread::sleep(TICK);
        }
        self.shared.sent.lock().unwrap().push(Sent {
            tag,
            via: Via::Server,
            from: self.addr,
            to,
            len: sent as usize,
            error: None,
        });
        sent
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send(sockets: &[UdpSocket], shared: &Shared, d: Datagram, to: SocketAddr) {
    let socket = match d.via {
        Via::Server => &sockets[0],
        Via::Extra(i) => &sockets[i + 1],
    };
    let error = socket.send_to(&d.data, to).err().map(|e| e.to_string());
    shared.sent.lock().unwrap().push(Sent {
        tag: d.tag,
        via: d.via,
        from: socket.local_addr().expect("bound"),
        to,
        len: d.data.len(),
        error,
    });
}

fn serve(sockets: &[UdpSocket], shared: &Shared, stop: &AtomicBool, mut script: Script) {
    let mut buf = vec![0u8; 65536];
    let mut later = Delayed::new();
    while !stop.load(Ordering::Relaxed) {
        let due = |d, to| {
            send(sockets, shared, d, to);
            shared.pending.fetch_sub(1, Ordering::SeqCst);
        };
        // Timeouts, ICMP errors from earlier sends and the like: keep serving.
        let Some((len, from)) = later.send_due_then_recv(&sockets[0], &mut buf, IDLE_WAIT, due) else {
            continue;
        };
        let received = ntp_now(0);
        let data = buf[..len].to_vec();
        let (request, before) = {
            let mut seen = shared.seen.lock().unwrap();
            let request = Request {
                from,
                header: Header::parse(&data),
                data,
                received,
                nth: seen.len(),
            };
            let before = seen.clone();
            seen.push(request.clone());
            (request, before)
        };
        for d in script(&request, &before) {
            let to = d.to.unwrap_or(from);
            if d.after.is_zero() {
                send(sockets, shared, d, to);
            } else {
                shared.pending.fetch_add(1, Ordering::SeqCst);
                later.push(d.after, d, to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_headers_round_trip() {
        // 2036-02-07 06:28:16 UTC is second 0 of era 1.
        assert_eq!(ntp_of_unix_nanos(2_085_978_496_000_000_000), 0);
        assert_eq!(ntp_of_unix_nanos(0), UNIX_EPOCH_NTP_SECS << 32);
        assert_eq!(ntp_of_unix_nanos(500_000_000) & 0xffff_ffff, 1 << 31);
        assert_eq!(ntp_add_nanos(10 << 32, -1_000_000_000), 9 << 32);
        assert_eq!(short_of_millis(1000), 1 << 16);
        let h = Header {
            leap: 3,
            version: 4,
            mode: 4,
            stratum: 2,
            poll: -6,
            precision: -20,
            root_delay: 1,
            root_dispersion: 2,
            reference_id: *b"GPS\0",
            reference: 3,
            origin: 4,
            receive: 5,
            transmit: 6,
        };
        let b = h.to_bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(b[0], 0xe4);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..47]), None);
    }

    /// Needs root (a network namespace).
    #[test]
    fn the_script_answers_from_the_socket_it_names_and_late() {
        let ns = crate::netns::Netns::add_unique("kn");
        let addr: SocketAddr = "127.0.0.1:1123".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:1124".parse().unwrap();
        let server = NtpServer::start(
            ns.name(),
            addr,
            &[other],
            Box::new(|req, before| {
                let honest = req.reply(0).to_bytes();
                vec![
                    Datagram::reply(honest.clone(), "now"),
                    Datagram::reply(honest, "late")
                        .via(Via::Extra(0))
                        .after(Duration::from_millis(100)),
                    Datagram::reply(vec![before.len() as u8], "count"),
                ]
            }),
        );
        let client = crate::netns::in_netns(ns.name(), move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut request = Header::parse(&[0u8; 48]).unwrap();
            request.version = 4;
            request.mode = 3;
            request.transmit = 0x1234_5678_9abc_def0;
            s.send_to(&request.to_bytes(), addr).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 100];
            for _ in 0..3 {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                got.push((buf[..n].to_vec(), from));
            }
            got
        });
        let reply = Header::parse(&client[0].0).unwrap();
        assert_eq!(client[0].1, addr);
        assert_eq!((reply.mode, reply.origin), (4, 0x1234_5678_9abc_def0));
        assert!(reply.transmit >= reply.receive);
        assert_eq!(client[1], (vec![0u8], addr), "the count of earlier requests");
        assert_eq!(client[2].1, other, "the late one, from the extra socket");
        // A send is recorded once send_to returned: maybe after the client
        // read it.
        crate::wait::wait_for(Duration::from_secs(5), "three sends recorded", || {
            server.sent().len() == 3
        });
        let sent = server.sent();
        assert_eq!(
            sent.iter().map(|s| s.tag).collect::<Vec<_>>(),
            ["now", "count", "late"]
        );
        assert_eq!(server.requests(), 1);
        assert_eq!(server.send_errors(), Vec::<String>::new());
    }
}
