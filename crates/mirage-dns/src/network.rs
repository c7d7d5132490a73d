//! The network role (docs/dns.md, "The network role"): the listeners the
//! supervisor bound, one fresh connected UDP socket per upstream query (a
//! TCP connection for a truncated answer's retry), and the TCP client
//! connections; datagrams go to the engine and come back in
//! batches over the direct channel, and every answer and upstream query
//! passes `mirage_dns::policy` first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use dns_engine::{
    BATCH_BYTES, Event, Forwarder, ITEM_OVERHEAD, Inbound, MAX_DATAGRAM, MAX_TCP_REPLY, Outbound, Transport,
};
use mirage_dns::messages::{FromNetwork, NetworkStats, ToNetwork};
use mirage_dns::plan::{FD_FIRST_LISTENER, NetworkLimits, NetworkSettings};
use mirage_dns::policy::{
    Admission, AnswerParts, Cidr, ClientLimiter, Clients, Origin, OutboundRefusal, TokenBucket, allowed,
    check_query,
};
use mirage_engine::{FromEngine, FromEngineOf, ToEngine, ToEngineOf, codec};
use mirage_sdk::channel::{Channel, TryRecv, wait};
use mirage_sdk::clock::boottime;
use mirage_sdk::role::Starting;

/// Datagrams read from one socket per wake-up, so a flood on one cannot
/// starve the others or the engine's answers.
const READS_PER_ROUND: usize = 256;
/// Client datagrams one `recvmmsg` reads (a listener is read until it is
/// drained or [`READS_PER_ROUND`] is reached).
const RECV_BATCH: usize = 32;
/// Messages read from the engine per wake-up.
const ENGINE_MESSAGES_PER_ROUND: usize = 64;
/// Bytes waiting to be written to one TCP client; a client that does not
/// read is closed beyond this.
const MAX_TCP_BACKLOG: usize = 256 * 1024;
/// The counters go to the supervisor at most this often.
const STATS_EVERY_MS: u64 = 1000;
/// The longest sleep (the loop's timers are all shorter or re-armed).
const MAX_SLEEP_MS: u64 = 1000;

/// The network role: the listeners and the direct channel are taken
/// before the sandbox. The listeners come bound and non-blocking from the
/// supervisor (a restarted role gets duplicates, which share both); the
/// role makes no call on them here that the supervisor's filter, under
/// which a restarted role starts, does not hold (no `getsockname`).
pub fn network_role(role: Starting) -> Result<(), String> {
    let settings: NetworkSettings = role.config()?;
    settings.limits.check()?;
    let mut fd = FD_FIRST_LISTENER;
    let mut next_fd = || {
        let f = mirage_sdk::fd::take_fixed(fd);
        fd += 1;
        f
    };
    let udp: Vec<UdpSocket> = settings.udp.iter().map(|_| UdpSocket::from(next_fd())).collect();
    let tcp: Vec<TcpListener> = settings
        .tcp
        .iter()
        .map(|_| TcpListener::from(next_fd()))
        .collect();
    let peer = Channel::from_raw_fd(settings.peer_fd()).map_err(|e| format!("the engine's channel: {e}"))?;
    let started = role.enter()?;
    Network::new(&settings, &udp, &tcp).run(&started.channel, &peer)
}

/// One upstream query in flight: its own socket.
struct Upstream {
    socket: UdpSocket,
    expires_ms: u64,
}

/// One upstream query over TCP (a truncated answer's retry): its own
/// connection, closed after the answer.
struct TcpUpstream {
    stream: TcpStream,
    /// The framed query, until written.
    output: Vec<u8>,
    input: Vec<u8>,
    expires_ms: u64,
}

/// One TCP client connection (RFC 7766): two-octet length-prefixed
/// messages both ways.
struct Conn {
    stream: TcpStream,
    /// The client's address: its rate is its address's.
    peer: IpAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active_ms: u64,
    /// The client closed its side: close once everything is answered.
    read_closed: bool,
}

struct Network<'a> {
    udp: &'a [UdpSocket],
    tcp: &'a [TcpListener],
    upstreams: Vec<SocketAddr>,
    limits: NetworkLimits,
    /// Who may ask (`allow`), and each address's rate.
    allow: Vec<Cidr>,
    limiter: ClientLimiter,
    clients: Clients,
    /// TCP answers arriving from the engine in parts.
    parts: AnswerParts,
    in_flight: HashMap<u32, Upstream>,
    tcp_in_flight: HashMap<u32, TcpUpstream>,
    /// When each upstream socket expires, in the order they were opened
    /// (all live equally long); entries of sockets closed since are
    /// skipped.
    expiries: VecDeque<(u64, u32)>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    bucket: TokenBucket,
    stats: NetworkStats,
    stats_sent: Option<NetworkStats>,
    stats_at_ms: u64,
    batch: Vec<Inbound>,
    batch_bytes: usize,
    /// The encoded batch: one buffer for the role's life (no allocation
    /// per batch).
    encoded: Vec<u8>,
    /// Client datagrams read at once from a UDP listener.
    rx: Option<mirage_sdk::udp::RecvBatch>,
    /// UDP answers of the engine's batch, per listener, sent together
    /// (`sendmmsg`) once the batch is through the policy.
    answers: Vec<Vec<(SocketAddr, Vec<u8>)>>,
}

/// What one descriptor in the poll set is.
#[derive(Clone, Copy)]
enum Slot {
    Supervisor,
    Engine,
    Udp(usize),
    Tcp(usize),
    Upstream(u32),
    TcpUpstream(u32),
    Conn(u64),
}

impl<'a> Network<'a> {
    fn new(settings: &NetworkSettings, udp: &'a [UdpSocket], tcp: &'a [TcpListener]) -> Network<'a> {
        let now = boottime().millis();
        let limits = settings.limits;
        Network {
            udp,
            tcp,
            upstreams: settings.upstreams.clone(),
            limits,
            allow: settings.allow.clone(),
            limiter: ClientLimiter::new(
                limits.client_per_second,
                limits.client_burst,
                limits.client_table as usize,
                limits.client_rate_loopback,
            )
            .ipv6_prefix(limits.client_ipv6_prefix),
            clients: Clients::new(
                limits.pending_queries as usize,
                u64::from(limits.query_timeout_ms),
            ),
            parts: AnswerParts::default(),
            in_flight: HashMap::new(),
            tcp_in_flight: HashMap::new(),
            expiries: VecDeque::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            bucket: TokenBucket::new(limits.upstream_per_second, limits.upstream_burst, now),
            stats: NetworkStats::default(),
            stats_sent: None,
            stats_at_ms: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            encoded: vec![0u8; mirage_engine::codec::MAX_MESSAGE_LEN],
            rx: Some(mirage_sdk::udp::RecvBatch::new(RECV_BATCH, MAX_DATAGRAM + 1)),
            answers: udp.iter().map(|_| Vec::new()).collect(),
        }
    }

    fn run(&mut self, chan: &Channel, peer: &Channel) -> Result<(), String> {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let now = boottime().millis();
            let (slots, ready) = {
                let mut slots = vec![Slot::Supervisor, Slot::Engine];
                let mut fds: Vec<(BorrowedFd<'_>, bool)> = vec![(chan.as_fd(), false), (peer.as_fd(), false)];
                for (i, s) in self.udp.iter().enumerate() {
                    slots.push(Slot::Udp(i));
                    fds.push((s.as_fd(), false));
                }
                for (&q, u) in &self.in_flight {
                    slots.push(Slot::Upstream(q));
                    fds.push((u.socket.as_fd(), false));
                }
                for (&q, u) in &self.tcp_in_flight {
                    slots.push(Slot::TcpUpstream(q));
                    fds.push((u.stream.as_fd(), !u.output.is_empty()));
                }
                let pipeline = self.limits.tcp_pipeline as usize;
                for (&id, c) in &self.conns {
                    // A client at its pipeline limit is not read: its
                    // further queries wait in its socket (RFC 7766 6.2.1.1).
                    let read = !c.read_closed && self.clients.on_conn(id) < pipeline;
                    if read || !c.output.is_empty() {
                        slots.push(Slot::Conn(id));
                        fds.push((c.stream.as_fd(), !c.output.is_empty()));
                    }
                }
                // The listeners last: a round closes the connections whose
                // clients left before it accepts new ones against
                // `tcp_clients`, so a client that closed and connected
                // again is not refused for its own old connection (unless
                // that one sits at its pipeline limit, not read, so its
                // end of file is not seen yet).
                for (i, s) in self.tcp.iter().enumerate() {
                    slots.push(Slot::Tcp(i));
                    fds.push((s.as_fd(), false));
                }
                let timeout = self.next_deadline(now).saturating_sub(now).min(MAX_SLEEP_MS);
                let ready = wait(&fds, Some(timeout)).map_err(|e| format!("poll: {e}"))?;
                (slots, ready)
            };
            for (slot, r) in slots.into_iter().zip(ready) {
                if !r.readable && !r.writable {
                    continue;
                }
                match slot {
                    Slot::Supervisor => match chan.recv::<ToNetwork>() {
                        Ok(None) => return Ok(()),
                        Ok(Some(never)) => match never {},
                        Err(e) => return Err(format!("bad message from the supervisor: {e}")),
                    },
                    Slot::Engine => {
                        if !self.read_engine(peer)? {
                            // The pair stops together: on an orderly stop,
                            // or when the engine failed, which the
                            // supervisor reports; nothing to add here.
                            log::debug!("the engine's channel closed: stopping");
                            return Ok(());
                        }
                    }
                    Slot::Udp(i) => self.read_udp(i, peer),
                    Slot::Tcp(i) => self.accept(i),
                    Slot::Upstream(q) => self.read_upstream(q, &mut buf, peer),
                    Slot::TcpUpstream(q) => self.serve_tcp_upstream(q, r.readable, r.writable, peer),
                    Slot::Conn(id) => self.serve_conn(id, r.readable, r.writable, peer),
                }
            }
            self.timers(boottime().millis(), chan);
            // Queries a connection buffered beyond its pipeline limit go
            // on as its answers (or expiries) free room.
            let buffered: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.input.len() >= 2)
                .map(|(id, _)| *id)
                .collect();
            for id in buffered {
                self.parse_conn(id, peer);
            }
            self.flush(peer);
        }
    }

    /// The earliest time something must be done.
    fn next_deadline(&self, now: u64) -> u64 {
        let mut at = now + MAX_SLEEP_MS;
        if let Some(e) = self.clients.next_expiry() {
            at = at.min(e);
        }
        if let Some(&(e, _)) = self.expiries.front() {
            at = at.min(e);
        }
        let idle = u64::from(self.limits.tcp_idle_ms);
        for (&id, c) in &self.conns {
            // Only a connection with nothing outstanding idles out.
            if self.clients.on_conn(id) == 0 {
                at = at.min(c.last_active_ms + idle);
            }
        }
        if self.stats_sent.as_ref() != Some(&self.stats) {
            at = at.min(self.stats_at_ms + STATS_EVERY_MS);
        }
        at
    }

    fn refused(&mut self, why: OutboundRefusal) {
        let n = self.stats.refused.entry(why).or_default();
        *n += 1;
        // Logged at 1, 2, 4, 8...: a compromised engine cannot flood the log.
        if n.is_power_of_two() {
            log::warn!("refused what the engine asked ({}); {n} so far", why.as_str());
        }
    }

    /// Queue an item for the engine; a full batch goes at once.
    fn push(&mut self, item: Inbound, peer: &Channel) {
        let size = ITEM_OVERHEAD
            + match &item {
                Inbound::Query { data, .. }
                | Inbound::Reply { data, .. }
                | Inbound::ReplyPart { data, .. } => data.len(),
                Inbound::Failed { .. } => 0,
            };
        if self.batch_bytes + size > BATCH_BYTES {
            self.flush(peer);
        }
        self.batch_bytes += size;
        self.batch.push(item);
    }

    /// Send the batch to the engine without waiting: a busy engine loses
    /// it, as a busy server would (clients retry).
    fn flush(&mut self, peer: &Channel) {
        if self.batch.is_empty() {
            return;
        }
        let event: ToEngineOf<Forwarder> = ToEngine::Event(Event::Batch(std::mem::take(&mut self.batch)));
        self.batch_bytes = 0;
        let encoded = codec::encode_into(&event, &mut self.encoded);
        // The batch's vector is kept for the next one.
        if let ToEngine::Event(Event::Batch(mut items)) = event {
            items.clear();
            self.batch = items;
        }
        match encoded {
            Ok(bytes) => match peer.try_send_raw(bytes) {
                Ok(true) => {}
                Ok(false) => self.stats.engine_busy += 1,
                Err(e) => log::debug!("send to the engine: {e}"),
            },
            Err(e) => log::error!("a batch does not encode: {e}"),
        }
    }

    fn read_udp(&mut self, i: usize, peer: &Channel) {
        // Moved out while its datagrams go through `admit` (which needs
        // `self`), and put back.
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        self.read_udp_with(i, &mut rx, peer);
        self.rx = Some(rx);
    }

    fn read_udp_with(&mut self, i: usize, rx: &mut mirage_sdk::udp::RecvBatch, peer: &Channel) {
        let mut read = 0;
        while read < READS_PER_ROUND {
            let n = match rx.recv_from(&self.udp[i]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("receive on UDP listener {i}: {e}");
                    return;
                }
            };
            read += n;
            for k in 0..n {
                let (data, truncated, from) = rx.get(k);
                if truncated || data.len() > MAX_DATAGRAM {
                    self.stats.not_queries += 1;
                    continue;
                }
                let Some(from) = from else { continue };
                // Dropped, not answered: no REFUSED to reflect.
                if !self.client_may_ask(from.ip()) {
                    continue;
                }
                let origin = Origin::Udp {
                    listener: i,
                    client: from,
                };
                self.admit(origin, Transport::Udp, data, peer);
            }
            if n < RECV_BATCH {
                // Drained: the batch goes to the engine now (the loop's
                // flush), never waiting for more.
                return;
            }
        }
    }

    /// Whether `ip` is in the access list and within its rate; counted
    /// when it is not.
    fn client_may_ask(&mut self, ip: IpAddr) -> bool {
        if !allowed(&self.allow, ip) {
            self.stats.not_allowed += 1;
            return false;
        }
        if !self.limiter.take(ip, boottime().millis()) {
            self.stats.rate_limited += 1;
            return false;
        }
        true
    }

    fn admit(&mut self, origin: Origin, transport: Transport, data: &[u8], peer: &Channel) {
        match self.clients.admit(origin, data, boottime().millis()) {
            Ok(client) => {
                match transport {
                    Transport::Udp => self.stats.udp_queries += 1,
                    Transport::Tcp => self.stats.tcp_queries += 1,
                }
                let item = Inbound::Query {
                    client,
                    transport,
                    data: data.to_vec(),
                };
                self.push(item, peer);
            }
            Err(Admission::NotAQuery) => self.stats.not_queries += 1,
            Err(Admission::Full) => self.stats.pending_full += 1,
        }
    }

    fn accept(&mut self, i: usize) {
        for _ in 0..READS_PER_ROUND {
            match self.tcp[i].accept() {
                Ok((stream, from)) => {
                    if !allowed(&self.allow, from.ip()) {
                        self.stats.not_allowed += 1;
                        continue; // dropped: closed at once, nothing read
                    }
                    if self.conns.len() >= self.limits.tcp_clients as usize {
                        self.stats.tcp_over_limit += 1;
                        continue; // dropped: closed at once
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::debug!("a TCP client: {e}");
                        continue;
                    }
                    self.stats.tcp_accepted += 1;
                    self.next_conn += 1;
                    self.conns.insert(
                        self.next_conn,
                        Conn {
                            stream,
                            peer: from.ip(),
                            input: Vec::new(),
                            output: Vec::new(),
                            last_active_ms: boottime().millis(),
                            read_closed: false,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("accept on TCP listener {i}: {e}");
                    return;
                }
            }
        }
    }

    fn close_conn(&mut self, id: u64) {
        self.conns.remove(&id);
        self.clients.forget_conn(id);
    }

    fn serve_conn(&mut self, id: u64, readable: bool, writable: bool, peer: &Channel) {
        let now = boottime().millis();
        let Some(c) = self.conns.get_mut(&id) else { return };
        if writable && !c.output.is_empty() {
            match c.stream.write(&c.output) {
                Ok(n) => {
                    c.output.drain(..n);
                    c.last_active_ms = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.close_conn(id);
                    return;
                }
            }
        }
        // A client that closed its side stays readable (end of file) for
        // good: one that does not take its answers either would keep the
        // loop awake, so it is closed.
        if c.read_closed && !c.output.is_empty() && !writable {
            self.stats.tcp_closed_bad += 1;
            self.close_conn(id);
            return;
        }
        let mut chunk = [0u8; 4096];
        // At most one query's worth beyond what is buffered, so a client
        // cannot make the role hold more than one message per connection.
        if readable && c.input.len() < 2 + MAX_DATAGRAM {
            match c.stream.read(&mut chunk) {
                Ok(0) => c.read_closed = true,
                Ok(n) => {
                    c.input.extend_from_slice(&chunk[..n]);
                    c.last_active_ms = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.close_conn(id);
                    return;
                }
            }
        }
        self.parse_conn(id, peer);
    }

    /// Take the complete messages a connection has buffered, up to its
    /// pipeline limit.
    fn parse_conn(&mut self, id: u64, peer: &Channel) {
        let pipeline = self.limits.tcp_pipeline as usize;
        loop {
            if self.clients.on_conn(id) >= pipeline {
                return;
            }
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.input.len() < 2 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([c.input[0], c.input[1]]));
            if !(12..=MAX_DATAGRAM).contains(&len) {
                self.stats.tcp_closed_bad += 1;
                self.close_conn(id);
                return;
            }
            if c.input.len() < 2 + len {
                break;
            }
            let message: Vec<u8> = c.input.drain(..2 + len).skip(2).collect();
            let ip = c.peer;
            if !self.client_may_ask(ip) {
                continue;
            }
            self.admit(Origin::Tcp { conn: id }, Transport::Tcp, &message, peer);
        }
        let done = self
            .conns
            .get(&id)
            .is_some_and(|c| c.read_closed && c.output.is_empty() && self.clients.on_conn(id) == 0);
        if done {
            self.close_conn(id);
        }
    }

    fn read_upstream(&mut self, q: u32, buf: &mut [u8], peer: &Channel) {
        for _ in 0..READS_PER_ROUND {
            let Some(u) = self.in_flight.get(&q) else { return };
            match u.socket.recv(buf) {
                Ok(n) if n > MAX_DATAGRAM => {}
                Ok(n) => {
                    self.stats.upstream_replies += 1;
                    let data = buf[..n].to_vec();
                    self.push(Inbound::Reply { query: q, data }, peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // ICMP port unreachable for an earlier send: the upstream
                // is down; the engine may ask another at once.
                Err(e) => {
                    log::debug!("upstream query {q}: {e}");
                    self.stats.upstream_errors += 1;
                    self.in_flight.remove(&q);
                    self.push(Inbound::Failed { query: q }, peer);
                    return;
                }
            }
        }
    }

    /// Write the query, read the framed answer (RFC 7766 section 8), pass
    /// it on and close; any error or an answer over [`MAX_TCP_REPLY`] is a
    /// failed query.
    fn serve_tcp_upstream(&mut self, q: u32, readable: bool, writable: bool, peer: &Channel) {
        let Some(u) = self.tcp_in_flight.get_mut(&q) else {
            return;
        };
        let mut failed = false;
        if writable && !u.output.is_empty() {
            match u.stream.write(&u.output) {
                Ok(n) => {
                    u.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("TCP upstream query {q}: {e}");
                    failed = true;
                }
            }
        }
        if readable && !failed {
            let mut chunk = [0u8; 4096];
            let room = (2 + MAX_TCP_REPLY).saturating_sub(u.input.len()).min(chunk.len());
            match u.stream.read(&mut chunk[..room]) {
                Ok(0) => failed = true,
                Ok(n) => u.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::debug!("TCP upstream query {q}: {e}");
                    failed = true;
                }
            }
        }
        let mut answer = None;
        if !failed && u.input.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([u.input[0], u.input[1]]));
            if !(12..=MAX_TCP_REPLY).contains(&len) {
                failed = true;
            } else if u.input.len() >= 2 + len {
                answer = Some(u.input[2..2 + len].to_vec());
            }
        }
        if failed {
            self.tcp_in_flight.remove(&q);
            self.stats.upstream_errors += 1;
            self.push(Inbound::Failed { query: q }, peer);
        } else if let Some(data) = answer {
            self.tcp_in_flight.remove(&q);
            self.stats.upstream_replies += 1;
            // Over one part's size: in parts, the last one as the reply.
            let total = u16::try_from(data.len()).unwrap_or(u16::MAX);
            let (head, last) = dns_engine::parts(&data);
            for part in head {
                let item = Inbound::ReplyPart {
                    query: q,
                    total,
                    data: part.to_vec(),
                };
                self.push(item, peer);
            }
            self.push(
                Inbound::Reply {
                    query: q,
                    data: last.to_vec(),
                },
                peer,
            );
        }
    }

    /// Read what the engine sent; `false` once its channel closed.
    fn read_engine(&mut self, peer: &Channel) -> Result<bool, String> {
        let open = self.read_engine_messages(peer);
        self.send_answers();
        open
    }

    /// Send the UDP answers the policy passed, one `sendmmsg` per listener
    /// (more if the kernel takes part of them); one the kernel refuses is
    /// dropped, as a lost datagram (the client retries).
    fn send_answers(&mut self) {
        for (listener, answers) in self.answers.iter_mut().enumerate() {
            if answers.is_empty() {
                continue;
            }
            let out: Vec<(&[u8], SocketAddr)> = answers.iter().map(|(to, d)| (&d[..], *to)).collect();
            let mut done = 0;
            while done < out.len() {
                match mirage_sdk::udp::send_many_to(&self.udp[listener], &out[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => {
                        log::debug!("answer to {}: {e}", out[done].1);
                        done += 1;
                    }
                }
            }
            drop(out);
            answers.clear();
        }
    }

    fn read_engine_messages(&mut self, peer: &Channel) -> Result<bool, String> {
        // Drained without a poll per message: the first was ready, the
        // rest are taken while they are queued.
        for _ in 0..ENGINE_MESSAGES_PER_ROUND {
            match peer.try_recv::<FromEngineOf<Forwarder>>() {
                Ok(TryRecv::Message(FromEngine::Action(dns_engine::Action::Batch(items)))) => {
                    for item in items {
                        self.outbound(item, peer);
                    }
                }
                // The engine routes these to the supervisor; on this
                // channel they mean nothing.
                Ok(TryRecv::Message(FromEngine::Action(dns_engine::Action::Status(_))))
                | Ok(TryRecv::Message(FromEngine::Refused(_))) => {}
                Ok(TryRecv::Empty) => break,
                Ok(TryRecv::Closed) => return Ok(false),
                Err(e) => return Err(format!("bad message from the engine: {e}")),
            }
        }
        Ok(true)
    }

    /// One thing the engine asks, through the policy.
    fn outbound(&mut self, item: Outbound, peer: &Channel) {
        match item {
            Outbound::AnswerPart { client, total, data } => {
                if let Err(why) = self.parts.part(&self.clients, client, total, &data) {
                    self.refused(why);
                }
            }
            Outbound::Answer { client, data } => match self
                .parts
                .finish(client, data)
                .and_then(|data| self.clients.answer(client, &data).map(|p| (p, data)))
            {
                Ok((p, data)) => {
                    self.stats.answers += 1;
                    match p.origin {
                        Origin::Udp { listener, client } => self.answers[listener].push((client, data)),
                        Origin::Tcp { conn } => {
                            let Some(c) = self.conns.get_mut(&conn) else {
                                return;
                            };
                            if c.output.len() + data.len() > MAX_TCP_BACKLOG {
                                self.stats.tcp_closed_bad += 1;
                                self.close_conn(conn);
                                return;
                            }
                            c.output.extend_from_slice(&(data.len() as u16).to_be_bytes());
                            c.output.extend_from_slice(&data);
                        }
                    }
                }
                Err(why) => self.refused(why),
            },
            Outbound::Drop { client } => {
                if let Err(why) = self.clients.drop_query(client) {
                    self.refused(why);
                }
            }
            Outbound::Query {
                query,
                upstream,
                data,
            } => {
                match self.send_upstream(query, upstream, &data) {
                    Ok(true) => {}
                    Ok(false) => self.push(Inbound::Failed { query }, peer),
                    Err(why) => {
                        self.refused(why);
                        // The engine may answer its client at once; a
                        // second use of a number in flight changes nothing.
                        if why != OutboundRefusal::QueryInFlight {
                            self.push(Inbound::Failed { query }, peer);
                        }
                    }
                }
            }
            Outbound::TcpQuery {
                query,
                upstream,
                data,
            } => match self.send_tcp_upstream(query, upstream, &data) {
                Ok(true) => {}
                Ok(false) => self.push(Inbound::Failed { query }, peer),
                Err(why) => {
                    self.refused(why);
                    if why != OutboundRefusal::QueryInFlight {
                        self.push(Inbound::Failed { query }, peer);
                    }
                }
            },
            Outbound::Close { query } => {
                self.in_flight.remove(&query);
                self.tcp_in_flight.remove(&query);
            }
        }
    }

    /// The policy for upstream query `query` of `data` to `upstream`
    /// (UDP or TCP alike): its address, or why not.
    fn admit_upstream(
        &mut self,
        query: u32,
        upstream: u8,
        data: &[u8],
        now: u64,
    ) -> Result<SocketAddr, OutboundRefusal> {
        let to = check_query(&self.upstreams, upstream, data)?;
        if self.in_flight.contains_key(&query) || self.tcp_in_flight.contains_key(&query) {
            return Err(OutboundRefusal::QueryInFlight);
        }
        let open = self.in_flight.len() + self.tcp_in_flight.len();
        if open >= self.limits.upstream_sockets as usize || !self.bucket.take(now) {
            return Err(OutboundRefusal::UpstreamCapped);
        }
        Ok(to)
    }

    /// Start TCP upstream query `query`; `Ok(false)`: the connection failed.
    fn send_tcp_upstream(&mut self, query: u32, upstream: u8, data: &[u8]) -> Result<bool, OutboundRefusal> {
        let now = boottime().millis();
        let to = self.admit_upstream(query, upstream, data, now)?;
        match mirage_sdk::tcp::connect_nonblocking(to) {
            Ok(stream) => {
                self.stats.upstream_queries += 1;
                self.stats.tcp_upstream_queries += 1;
                let mut output = (data.len() as u16).to_be_bytes().to_vec();
                output.extend_from_slice(data);
                let expires_ms = now + u64::from(self.limits.query_timeout_ms);
                self.tcp_in_flight.insert(
                    query,
                    TcpUpstream {
                        stream,
                        output,
                        input: Vec::new(),
                        expires_ms,
                    },
                );
                self.expiries.push_back((expires_ms, query));
                Ok(true)
            }
            Err(e) => {
                log::debug!("TCP upstream {to}: {e}");
                self.stats.upstream_errors += 1;
                Ok(false)
            }
        }
    }

    /// Send upstream query `query`; `Ok(false)`: the socket failed.
    fn send_upstream(&mut self, query: u32, upstream: u8, data: &[u8]) -> Result<bool, OutboundRefusal> {
        let now = boottime().millis();
        let to = self.admit_upstream(query, upstream, data, now)?;
        let sent = mirage_sdk::udp::connected_socket(to).and_then(|s| s.send(data).map(|_| s));
        match sent {
            Ok(socket) => {
                self.stats.upstream_queries += 1;
                let expires_ms = now + u64::from(self.limits.query_timeout_ms);
                self.in_flight.insert(query, Upstream { socket, expires_ms });
                self.expiries.push_back((expires_ms, query));
            }
            Err(e) => {
                // Not a refusal: the engine hears `Failed` all the same.
                log::debug!("upstream {to}: {e}");
                self.stats.upstream_errors += 1;
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn timers(&mut self, now: u64, chan: &Channel) {
        self.stats.expired += self.clients.expire(now) as u64;
        self.parts.retain(&self.clients);
        while let Some(&(e, q)) = self.expiries.front()
            && e <= now
        {
            self.expiries.pop_front();
            if self.in_flight.get(&q).is_some_and(|u| u.expires_ms == e) {
                self.in_flight.remove(&q);
            }
            if self.tcp_in_flight.get(&q).is_some_and(|u| u.expires_ms == e) {
                self.tcp_in_flight.remove(&q);
            }
        }
        let idle = u64::from(self.limits.tcp_idle_ms);
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, c)| c.last_active_ms + idle <= now && self.clients.on_conn(**id) == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.stats.tcp_closed_idle += 1;
            self.close_conn(id);
        }
        if self.stats_sent.as_ref() != Some(&self.stats) && now >= self.stats_at_ms + STATS_EVERY_MS {
            match chan.try_send(&FromNetwork::Stats(self.stats.clone())) {
                Ok(true) => {
                    self.stats_sent = Some(self.stats.clone());
                    self.stats_at_ms = now;
                }
                Ok(false) => {}
                Err(e) => log::debug!("stats: {e}"),
            }
        }
    }
}
