//! A scripted DNS upstream for hostile-upstream suites: UDP and TCP on one
//! address in a network namespace the test made, whose every reply is
//! built by a *script* from the query.
//!
//! The server binds its address for UDP and TCP, and any number of extra
//! UDP sockets (another address, another port) to send from. For each
//! query (a datagram, or one length-framed message on a TCP connection,
//! RFC 7766 section 8) the script returns zero or more [`Reply`]s: honest
//! answers built with `dns_wire` ([`Query::answer`]), bent ones, raw
//! crafted bytes, sent from the server's address or from an extra socket,
//! to the querier or elsewhere, at once, after a delay, or held until the
//! test releases them ([`DnsServer::release`]); over TCP a reply can also
//! close the connection unanswered ([`Reply::close`]). The test thread can
//! send unsolicited datagrams ([`DnsServer::inject`]) and floods
//! ([`DnsServer::flood`]). Every query received is recorded, so a suite
//! counts what its forwarder asked.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use dns_wire::{Class, Edns, Header, Message, Question, RData, Record};

use crate::scripted::{Delayed, bind_udp};

/// How long the loops wait before they look at the stop flag and their
/// delayed sends again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Bound on the server's start-up (namespace, bind).
const START_WITHIN: Duration = Duration::from_secs(10);

/// How a query came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query the server received.
#[derive(Clone, Debug)]
pub struct Query {
    /// The querier's address and port.
    pub from: SocketAddr,
    pub transport: Transport,
    pub data: Vec<u8>,
    /// The parsed message, if it parses.
    pub message: Option<Message>,
    /// 0 for the first query, then counting (both transports).
    pub nth: usize,
}

impl Query {
    /// The (first) question, as the querier spelled it.
    pub fn question(&self) -> Option<&Question> {
        self.message.as_ref()?.questions.first()
    }

    /// The question's name in lower case text, without the final dot
    /// (empty for a query without one).
    pub fn name(&self) -> String {
        self.question()
            .map(|q| q.name.to_string().trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The id as on the wire (even for a query that does not parse).
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([
            self.data.first().copied().unwrap_or(0),
            self.data.get(1).copied().unwrap_or(0),
        ])
    }

    /// An honest empty response: QR, the id, RD as asked, RA, the question
    /// echoed exactly (its 0x20 case), EDNS 1232 if the query had EDNS.
    pub fn response(&self) -> Message {
        let q = self.message.clone().unwrap_or_else(|| Message {
            header: Header::default(),
            questions: Vec::new(),
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
        });
        Message {
            header: Header {
                id: q.header.id,
                response: true,
                opcode: q.header.opcode,
                recursion_desired: q.header.recursion_desired,
                recursion_available: true,
                checking_disabled: q.header.checking_disabled,
                ..Header::default()
            },
            questions: q.questions,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: q.edns.map(|_| Edns::new(1232)),
        }
    }

    /// The honest response with `data` for the question's name, `ttl`.
    pub fn answer(&self, ttl: u32, data: RData) -> Message {
        let mut m = self.response();
        if let Some(q) = self.question() {
            m.answers.push(record(q.name.clone(), ttl, data));
        }
        m
    }

    /// The honest response with one A record.
    pub fn answer_a(&self, ttl: u32, a: Ipv4Addr) -> Message {
        self.answer(ttl, RData::A(a))
    }
}

/// A class IN record.
pub fn record(name: dns_wire::Name, ttl: u32, data: RData) -> Record {
    Record {
        name,
        class: Class::IN,
        ttl,
        data,
    }
}

/// `m` in wire form (a message built from parsed parts always encodes).
pub fn bytes(m: &Message) -> Vec<u8> {
    m.to_bytes().expect("the message encodes")
}

/// Which socket a UDP reply leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The server's own address and port.
    Server,
    /// The extra socket of that index ([`DnsServer::start`]'s `extras`).
    Extra(usize),
}

/// When a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Now,
    After(Duration),
    /// When the test calls [`DnsServer::release`] (UDP only: over TCP it
    /// goes at once).
    Held,
}

/// A reply to send.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The message octets (framed with their length over TCP).
    pub data: Vec<u8>,
    pub via: Via,
    /// `None`: to the querier (UDP).
    pub to: Option<SocketAddr>,
    pub when: When,
    /// Over TCP: close the connection instead of sending `data`.
    pub close: bool,
    /// Over TCP: with `close`, reset it (SO_LINGER 0: an RST, as a
    /// server that refuses the connection's traffic).
    pub reset: bool,
    /// Over TCP: `data` as it is, without the length prefix (a length
    /// that lies, a message cut short).
    pub unframed: bool,
}

impl Reply {
    /// `data` from the server's address to the querier, now.
    pub fn raw(data: Vec<u8>) -> Reply {
        Reply {
            data,
            via: Via::Server,
            to: None,
            when: When::Now,
            close: false,
            reset: false,
            unframed: false,
        }
    }
    /// `m` encoded.
    pub fn message(m: &Message) -> Reply {
        Reply::raw(bytes(m))
    }
    /// Over TCP: close the connection (an upstream that takes the
    /// connection and refuses to answer on it).
    pub fn close() -> Reply {
        Reply {
            close: true,
            ..Reply::raw(Vec::new())
        }
    }
    /// Over TCP: reset the connection (an RST) unanswered.
    pub fn reset() -> Reply {
        Reply {
            reset: true,
            ..Reply::close()
        }
    }
    /// Over TCP: send `data` without its length prefix.
    pub fn unframed(mut self) -> Reply {
        self.unframed = true;
        self
    }
    pub fn via(mut self, via: Via) -> Reply {
        self.via = via;
        self
    }
    pub fn to(mut self, to: SocketAddr) -> Reply {
        self.to = Some(to);
        self
    }
    pub fn after(mut self, after: Duration) -> Reply {
        self.when = When::After(after);
        self
    }
    pub fn held(mut self) -> Reply {
        self.when = When::Held;
        self
    }
}

/// What a script is: a query to the replies to send.
pub type Script = Box<dyn FnMut(&Query) -> Vec<Reply> + Send>;

struct Shared {
    seen: Mutex<Vec<Query>>,
    held: Mutex<Vec<(Reply, SocketAddr)>>,
    script: Mutex<Script>,
    tcp_connections: AtomicUsize,
    send_errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Record `q` and run the script on it.
    fn on_query(&self, from: SocketAddr, transport: Transport, data: Vec<u8>) -> (Query, Vec<Reply>) {
        let q = {
            let mut seen = self.seen.lock().unwrap();
            let q = Query {
                from,
                transport,
                message: Message::parse(&data).ok(),
                data,
                nth: seen.len(),
            };
            seen.push(q.clone());
            q
        };
        let replies = (self.script.lock().unwrap())(&q);
        (q, replies)
    }
}

/// The running server; stops and joins its threads on drop.
pub struct DnsServer {
    addr: SocketAddr,
    sockets: Arc<Vec<UdpSocket>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serve on `addr` (UDP and TCP) in namespace `ns`, with `extras` bound
    /// for UDP too (sockets to send from, never read). Returns once every
    /// socket is bound and listening.
    pub fn start(ns: &str, addr: SocketAddr, extras: &[SocketAddr], script: Script) -> DnsServer {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            tcp_connections: AtomicUsize::new(0),
            send_errors: Mutex::new(Vec::new()),
        });
        type Opened = (Arc<Vec<UdpSocket>>, TcpListener);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Opened, String>>();
        let (ns2, extras) = (ns.to_owned(), extras.to_vec());
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let udp_thread = std::thread::spawn(move || {
            let opened = (|| -> Result<Opened, String> {
                crate::netns::enter(&ns2).map_err(|e| format!("setns {ns2}: {e}"))?;
                let sockets = bind_udp(addr, extras)?;
                let tcp = TcpListener::bind(addr).map_err(|e| format!("TCP bind {addr}: {e}"))?;
                tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok((Arc::new(sockets), tcp))
            })();
            let sockets = match opened {
                Ok((s, tcp)) => {
                    let _ = ready_tx.send(Ok((s.clone(), tcp)));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve_udp(&sockets, &shared2, &stop2);
        });
        let (sockets, listener) = ready_rx
            .recv_timeout(START_WITHIN)
            .expect("DNS server did not start")
            .unwrap_or_else(|e| panic!("DNS server {addr}: {e}"));
        let (stop3, shared3) = (stop.clone(), shared.clone());
        let tcp_thread = std::thread::spawn(move || serve_tcp(listener, &shared3, &stop3));
        DnsServer {
            addr,
            sockets,
            shared,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query so far, in arrival order.
    pub fn seen(&self) -> Vec<Query> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The queries so far that `pick` selects.
    pub fn queries(&self, pick: impl Fn(&Query) -> bool) -> Vec<Query> {
        self.seen().into_iter().filter(|q| pick(q)).collect()
    }

    /// TCP connections accepted so far.
    pub fn tcp_connections(&self) -> usize {
        self.shared.tcp_connections.load(Ordering::SeqCst)
    }

    /// Sends that failed (a case whose replies did not go out proves
    /// nothing: suites assert this is empty).
    pub fn send_errors(&self) -> Vec<String> {
        self.shared.send_errors.lock().unwrap().clone()
    }

    /// Replace the script.
    pub fn set_script(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
    }

    /// Send the held replies now; returns how many.
    pub fn release(&self) -> usize {
        let held = std::mem::take(&mut *self.shared.held.lock().unwrap());
        let n = held.len();
        for (r, to) in held {
            send(&self.sockets, &self.shared, &r, to);
        }
        n
    }

    /// Send `r` now, unsolicited, to `to` (its `when` is ignored).
    pub fn inject(&self, r: &Reply, to: SocketAddr) {
        send(&self.sockets, &self.shared, r, to);
    }

    /// Send `make(i)` for i in 0..count from socket `via` to `to` as fast
    /// as the socket takes them, from the calling thread. Returns how many
    /// went out.
    pub fn flood(&self, via: Via, to: SocketAddr, count: u64, mut make: impl FnMut(u64) -> Vec<u8>) -> u64 {
        let s = socket(&self.sockets, via);
        (0..count).filter(|&i| s.send_to(&make(i), to).is_ok()).count() as u64
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn socket(sockets: &[UdpSocket], via: Via) -> &UdpSocket {
    match via {
        Via::Server => &sockets[0],
        Via::Extra(i) => &sockets[i + 1],
    }
}

fn send(sockets: &[UdpSocket], shared: &Shared, r: &Reply, to: SocketAddr) {
    if let Err(e) = socket(sockets, r.via).send_to(&r.data, to) {
        shared.send_errors.lock().unwrap().push(format!("to {to}: {e}"));
    }
}

fn serve_udp(sockets: &[UdpSocket], shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let mut later = Delayed::new();
    while !stop.load(Ordering::Relaxed) {
        let due = |r: Reply, to| send(sockets, shared, &r, to);
        // Timeouts, and ICMP errors from earlier sends: keep serving.
        let Some((len, from)) = later.send_due_then_recv(&sockets[0], &mut buf, IDLE_WAIT, due) else {
            continue;
        };
        let (_, replies) = shared.on_query(from, Transport::Udp, buf[..len].to_vec());
        for r in replies {
            let to = r.to.unwrap_or(from);
            match r.when {
                When::Now => send(sockets, shared, &r, to),
                When::After(d) => later.push(d, r, to),
                When::Held => shared.held.lock().unwrap().push((r, to)),
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                shared.tcp_connections.fetch_add(1, Ordering::SeqCst);
                let (shared, stop) = (shared.clone(), stop.clone());
                conns.push(std::thread::spawn(move || {
                    serve_conn(stream, from, &shared, &stop)
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(IDLE_WAIT / 4),
            Err(_) => std::thread::sleep(IDLE_WAIT),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// One TCP connection: framed queries in, framed replies out.
fn serve_conn(mut stream: TcpStream, from: SocketAddr, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IDLE_WAIT));
    let mut input = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while input.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([input[0], input[1]]));
            if input.len() < 2 + len {
                break;
            }
            let data: Vec<u8> = input.drain(..2 + len).skip(2).collect();
            let (_, replies) = shared.on_query(from, Transport::Tcp, data);
            for r in replies {
                if let When::After(d) = r.when {
                    std::thread::sleep(d);
                }
                if r.close {
                    if r.reset {
                        let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
                    }
                    return;
                }
                let mut framed = Vec::new();
                if !r.unframed {
                    framed.extend_from_slice(&(r.data.len() as u16).to_be_bytes());
                }
                framed.extend_from_slice(&r.data);
                if let Err(e) = stream.write_all(&framed) {
                    shared
                        .send_errors
                        .lock()
                        .unwrap()
                        .push(format!("TCP to {from}: {e}"));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dns_wire::{Name, Type};

    fn query(id: u16, name: &str) -> Vec<u8> {
        Message::query(id, Name::from_ascii(name).unwrap(), Type::A)
            .to_bytes()
            .unwrap()
    }

    /// Needs root (a network namespace).
    #[test]
    fn the_script_answers_over_udp_and_tcp_from_the_socket_it_names_late_and_held() {
        let ns = crate::netns::Netns::add_unique("kd");
        let addr: SocketAddr = "127.0.0.1:1053".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:1054".parse().unwrap();
        let server = DnsServer::start(
            ns.name(),
            addr,
            &[other],
            Box::new(|q: &Query| {
                let good = q.answer_a(60, Ipv4Addr::new(192, 0, 2, 1));
                let mut wrong = good.clone();
                wrong.header.id ^= 1;
                match q.transport {
                    Transport::Udp => vec![
                        Reply::message(&good),
                        Reply::message(&wrong)
                            .via(Via::Extra(0))
                            .after(Duration::from_millis(50)),
                        Reply::raw(vec![q.nth as u8]).held(),
                    ],
                    Transport::Tcp if q.name().starts_with("close") => vec![Reply::close()],
                    Transport::Tcp if q.name().starts_with("reset") => vec![Reply::reset()],
                    Transport::Tcp => vec![
                        Reply::raw(vec![0xde, 0xad]),
                        Reply::raw(vec![0, 1]).unframed(),
                        Reply::raw(vec![0xbe]).unframed(),
                        Reply::message(&good),
                    ],
                }
            }),
        );
        let (udp, tcp, closed) = crate::netns::in_netns(ns.name(), move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&query(7, "A.Example"), addr).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                got.push((buf[..n].to_vec(), from));
            }
            let mut t = TcpStream::connect(addr).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let q = query(8, "b.example");
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            t.write_all(&framed).unwrap();
            let mut tcp = vec![0u8; 4 + 3 + 2];
            t.read_exact(&mut tcp).unwrap();
            let len = usize::from(u16::from_be_bytes([tcp[7], tcp[8]]));
            let mut m = vec![0u8; len];
            t.read_exact(&mut m).unwrap();
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let q = query(9, "close.example");
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            c.write_all(&framed).unwrap();
            let mut rest = Vec::new();
            let closed = c.read_to_end(&mut rest).map(|n| n == 0).unwrap_or(true);
            let mut r = TcpStream::connect(addr).unwrap();
            r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let q = query(10, "reset.example");
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            r.write_all(&framed).unwrap();
            let reset = r.read_to_end(&mut rest).map_err(|e| e.kind());
            assert_eq!(reset, Err(io::ErrorKind::ConnectionReset));
            (got, (tcp[..7].to_vec(), m), closed)
        });
        let good = Message::parse(&udp[0].0).unwrap();
        assert_eq!(udp[0].1, addr);
        assert_eq!(good.header.id, 7);
        assert!(good.header.response);
        assert_eq!(good.questions[0].name.to_string(), "A.Example", "the case echoed");
        assert_eq!(good.answers[0].data, RData::A(Ipv4Addr::new(192, 0, 2, 1)));
        let late = Message::parse(&udp[1].0).unwrap();
        assert_eq!(
            (udp[1].1, late.header.id),
            (other, 6),
            "late, from the extra socket"
        );
        assert_eq!(
            tcp.0,
            [0, 2, 0xde, 0xad, 0, 1, 0xbe],
            "the raw reply framed, the unframed ones as they are"
        );
        assert_eq!(Message::parse(&tcp.1).unwrap().header.id, 8);
        assert!(closed, "the connection closed unanswered");
        assert_eq!(server.seen().len(), 4);
        assert_eq!(server.queries(|q| q.transport == Transport::Tcp).len(), 3);
        assert_eq!(server.seen()[0].name(), "a.example");
        assert_eq!(server.tcp_connections(), 3);
        // The held reply goes when released (to a socket now closed).
        assert_eq!(server.release(), 1);
        assert_eq!(server.release(), 0);
        assert_eq!(server.send_errors(), Vec::<String>::new());
        // A flood and an injection reach a client's port.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn({
            let ns = ns.name().to_owned();
            move || {
                crate::netns::enter(&ns).unwrap();
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                tx.send(s.local_addr().unwrap()).unwrap();
                let mut buf = [0u8; 16];
                (0..11)
                    .map(|_| s.recv(&mut buf).map(|n| buf[..n].to_vec()).unwrap())
                    .collect::<Vec<_>>()
            }
        });
        let client = rx.recv().unwrap();
        assert_eq!(server.flood(Via::Extra(0), client, 10, |i| vec![i as u8]), 10);
        server.inject(&Reply::raw(vec![0xee]), client);
        let got = reader.join().unwrap();
        assert_eq!(got[..10], (0..10u8).map(|i| vec![i]).collect::<Vec<_>>()[..]);
        assert_eq!(got[10], [0xee]);
    }
}
