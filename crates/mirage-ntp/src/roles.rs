//! The roles' entries (`mirage-ntp role NAME`, started by the supervisor
//! from the plans of `mirage_ntp::plan`): each takes its descriptors, enters
//! its sandbox, then serves its channel.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mirage_ntp::messages::{FromActuator, FromNetwork, OutboundRefusal, Outcome, ToActuator, ToNetwork};
use mirage_ntp::plan::{self, ActuatorSettings, DriftFile, NetworkSettings};
use mirage_ntp::policy::{ClockIntent, ClockRefusal, PolicyState};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::{self, ClockStatus, KernelLeap, RealTime, boottime};
use mirage_sdk::role::Starting;
use mirage_sdk::service::state;
use ntp_engine::wire::Repr;
use ntp_engine::{Leap, Ntp, NtpTimestamp};

/// The engine as a KVM guest (guest/images/ntp, built by build.rs).
pub const GUEST: &[u8] = mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-ntp.elf"));

/// The engine role: its plan in force, then the SDK's engine runner, or
/// with `--sandbox kvm` the tender of [`GUEST`].
pub fn engine_role(role: Starting) -> Result<(), String> {
    mirage_sdk::engine_role::run_sandboxed::<Ntp>(role, Some(GUEST))
}

/// Requests to one server: a burst of 4 (the engine's start-up burst),
/// then one every 2 s at most (the burst's spacing; polls are 16 s and
/// more). A compromised engine cannot flood a server.
const REQUEST_BURST: u32 = 4;
const REQUEST_EVERY_MS: u64 = 2000;
/// Datagrams read from one socket per wake-up (a flood cannot starve the
/// channel or the other servers).
const READS_PER_ROUND: usize = 16;

fn ntp_time(t: RealTime) -> NtpTimestamp {
    NtpTimestamp::from_unix_nanos(t.unix_nanos())
}

/// A token bucket (per server, per resolved source, for DNS queries), in
/// the role's boot-clock milliseconds.
struct Bucket {
    tokens: u32,
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, now_ms: u64) -> bool {
        self.take_at(now_ms, REQUEST_BURST, REQUEST_EVERY_MS)
    }

    fn take_at(&mut self, now_ms: u64, burst: u32, every_ms: u64) -> bool {
        let earned = now_ms.saturating_sub(self.at_ms) / every_ms;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(burst)) as u32;
            self.at_ms += earned * every_ms;
        }
        if self.tokens == burst {
            self.at_ms = now_ms;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// DNS queries: a burst of 16 (a lookup is two queries, one per family,
/// and all names, at most 8, start together), then one a second.
const QUERY_BURST: u32 = 16;
const QUERY_EVERY_MS: u64 = 1000;
/// How long a DNS socket stays with its query: answers later than this are
/// dropped and the socket may carry another query (the engine gives up on
/// a lookup after 5 s).
const QUERY_LIFE_MS: u64 = 6_000;
/// Largest DNS query the role sends (RFC 1035 §4.2.1's UDP size).
const MAX_QUERY_LEN: usize = 512;

/// A DNS socket's query in flight: the engine's handle, and until when.
#[derive(Clone, Copy)]
struct InFlight {
    query: u64,
    until_ms: u64,
}

/// A source resolved from a name, reached through an unconnected socket:
/// its bucket and when it was last asked (the oldest goes when the table
/// is full).
struct Dynamic {
    addr: SocketAddr,
    bucket: Bucket,
    used_ms: u64,
}

/// The network role: the sockets are taken (and checked to be UDP)
/// before the sandbox.
pub fn network_role(role: Starting) -> Result<(), String> {
    let settings: NetworkSettings = role.config()?;
    let sockets: Vec<UdpSocket> = (0..settings.sockets())
        .map(|i| {
            let fd: OwnedFd = mirage_sdk::fd::take_fixed(plan::FD_FIRST_SOCKET + i as i32);
            UdpSocket::from(fd)
        })
        .collect();
    let connected = settings.servers.iter().chain(&settings.resolvers);
    let mut unrouted = Vec::new();
    for (s, peer_wanted) in sockets.iter().zip(connected) {
        // Connected by the supervisor to exactly this server or resolver;
        // or, when there was no route to it at start, not connected yet
        // (the supervisor connects it once there is one): bound, of the
        // peer's family.
        match s.peer_addr() {
            Ok(peer) if peer == *peer_wanted => unrouted.push(false),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotConnected
                    && s.local_addr().map(|a| a.is_ipv4()).ok() == Some(peer_wanted.is_ipv4()) =>
            {
                unrouted.push(true)
            }
            other => return Err(format!("socket for {peer_wanted} is connected to {other:?}")),
        }
    }
    let unconnected = &sockets[settings.servers.len() + settings.resolvers.len()..];
    for (s, local) in unconnected.iter().zip(&settings.named_sockets) {
        if s.peer_addr().is_ok() || s.local_addr().map(|a| a.is_ipv4()).ok() != Some(local.is_ipv4()) {
            return Err(format!(
                "the socket for {local} is not an unconnected one of its family"
            ));
        }
    }
    let started = role.enter()?;
    Network::new(settings, sockets, unrouted).serve(&started.channel)
}

struct Network {
    settings: NetworkSettings,
    sockets: Vec<UdpSocket>,
    buckets: Vec<Bucket>,
    /// Per DNS socket (index from the first DNS socket).
    in_flight: Vec<Option<InFlight>>,
    /// The DNS socket each resolver used last.
    last_slot: Vec<usize>,
    queries: Bucket,
    dynamic: Vec<Dynamic>,
    /// Per server and DNS socket: not connected at start (no route then).
    /// Until the supervisor connects it, anyone may send to it, so what it
    /// reads is taken only from its peer (`getpeername` is not in the
    /// role's filter: it does not learn when that happens).
    unrouted: Vec<bool>,
}

impl Network {
    fn new(settings: NetworkSettings, sockets: Vec<UdpSocket>, unrouted: Vec<bool>) -> Network {
        let now = boottime().millis();
        let bucket = || Bucket {
            tokens: REQUEST_BURST,
            at_ms: now,
        };
        Network {
            buckets: settings.servers.iter().map(|_| bucket()).collect(),
            in_flight: vec![None; settings.resolvers.len()],
            last_slot: vec![0; settings.resolvers.len()],
            queries: Bucket {
                tokens: QUERY_BURST,
                at_ms: now,
            },
            dynamic: Vec::new(),
            settings,
            sockets,
            unrouted,
        }
    }

    fn dns_base(&self) -> usize {
        self.settings.servers.len()
    }

    fn named_base(&self) -> usize {
        self.settings.servers.len() + self.settings.resolvers.len()
    }

    fn serve(&mut self, chan: &Channel) -> Result<(), String> {
        let mut buf = [0u8; 2048];
        loop {
            let ready = {
                let mut fds: Vec<BorrowedFd<'_>> = vec![chan.as_fd()];
                fds.extend(self.sockets.iter().map(|s| s.as_fd()));
                wait_readable(&fds, None).map_err(|e| format!("poll: {e}"))?
            };
            for i in 0..self.sockets.len() {
                if ready[i + 1] {
                    self.read_socket(chan, i, &mut buf)?;
                }
            }
            if ready[0] {
                match chan.recv::<ToNetwork>() {
                    Ok(Some(ToNetwork::Send { to, transmit, data })) => {
                        self.send_request(chan, to, transmit, &data)?
                    }
                    Ok(Some(ToNetwork::Resolve { query, to, data })) => {
                        self.send_query(chan, query, to, &data)?
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(format!("bad message from the supervisor: {e}")),
                }
            }
        }
    }

    /// Up to [`READS_PER_ROUND`] datagrams from socket `i` (a flood cannot
    /// starve the channel or the other sockets).
    fn read_socket(&mut self, chan: &Channel, i: usize, buf: &mut [u8]) -> Result<(), String> {
        let send = |m: &FromNetwork| chan.send(m).map_err(|e| format!("send: {e}"));
        for _ in 0..READS_PER_ROUND {
            let unrouted = self.unrouted.get(i).copied().unwrap_or(false);
            let got = if i >= self.named_base() || unrouted {
                mirage_sdk::udp::recv_timestamped_from(&self.sockets[i], buf, true)
            } else {
                mirage_sdk::udp::recv_timestamped(&self.sockets[i], buf, true).map(|g| (g, None))
            };
            let (got, sender) = match got {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP port unreachable from an earlier request: the peer
                // is down; the engine sees silence.
                Err(e) => {
                    log::debug!("receive on socket {i}: {e}");
                    break;
                }
            };
            if unrouted {
                let peer = if i < self.dns_base() {
                    self.settings.servers[i]
                } else {
                    self.settings.resolvers[i - self.dns_base()]
                };
                if sender.map(canonical) != Some(peer) {
                    log::debug!("a datagram from {sender:?} on the socket for {peer} dropped");
                    continue;
                }
            }
            if got.truncated {
                let from = if i < self.dns_base() {
                    Some(self.settings.servers[i])
                } else if i < self.named_base() {
                    Some(self.settings.resolvers[i - self.dns_base()])
                } else {
                    sender.map(canonical)
                };
                match from {
                    Some(from) => log::debug!("oversized datagram from {from} dropped"),
                    None => log::debug!("oversized datagram dropped"),
                }
                continue;
            }
            let data = buf[..got.len].to_vec();
            let (at, kernel_stamp) = match got.at {
                Some(t) => (t, true),
                None => (clock::realtime(), false),
            };
            if i < self.dns_base() {
                send(&FromNetwork::Received {
                    from: self.settings.servers[i],
                    data,
                    at: ntp_time(at),
                    kernel_stamp,
                })?;
            } else if i < self.named_base() {
                let slot = i - self.dns_base();
                let now = boottime().millis();
                match self.in_flight[slot] {
                    Some(q) if q.until_ms > now => send(&FromNetwork::Resolved {
                        query: q.query,
                        from: self.settings.resolvers[slot],
                        data,
                    })?,
                    _ => log::debug!("a late DNS answer from {} dropped", self.settings.resolvers[slot]),
                }
            } else {
                // Only from a source we asked: anyone may send to an
                // unconnected socket.
                let from = sender.map(canonical);
                match from.filter(|f| self.dynamic.iter().any(|d| d.addr == *f)) {
                    Some(from) => send(&FromNetwork::Received {
                        from,
                        data,
                        at: ntp_time(at),
                        kernel_stamp,
                    })?,
                    None => log::debug!("a datagram from {sender:?}, not a source, dropped"),
                }
            }
        }
        Ok(())
    }

    fn send_request(
        &mut self,
        chan: &Channel,
        to: SocketAddr,
        transmit: NtpTimestamp,
        data: &[u8],
    ) -> Result<(), String> {
        let now = boottime().millis();
        let verdict = match check_request(&self.settings.servers, to, transmit, data) {
            Ok(i) if self.buckets[i].take(now) => Ok(i),
            Ok(_) => Err(OutboundRefusal::RateCapped),
            Err(OutboundRefusal::NotAServer) => self.dynamic_socket(to, transmit, data, now),
            Err(why) => Err(why),
        };
        match verdict {
            Ok(socket) => {
                // T1 is read right before the send, not after it: a server
                // on the same host or LAN answers within microseconds, on
                // another core, so a reading after send() returned can come
                // after the reply's kernel receive stamp (T4 < T1, refused
                // by the engine). Before the send, T1 is early by the send
                // path alone (a few us, half of which shows as offset); the
                // kernel's transmit timestamp is the later refinement.
                let at = ntp_time(clock::realtime());
                // (Whether a socket is connected is known by its index:
                // getpeername is not in the role's filter.)
                let sent = if socket < self.named_base() {
                    self.sockets[socket].send(data)
                } else {
                    self.sockets[socket].send_to(data, to)
                };
                match sent {
                    Ok(_) => chan
                        .send(&FromNetwork::Sent { to, transmit, at })
                        .map_err(|e| format!("send: {e}")),
                    Err(e) if no_route(&e) => {
                        log::debug!("send to {to}: {e}");
                        chan.send(&FromNetwork::NoRoute { to })
                            .map_err(|e| format!("send: {e}"))
                    }
                    Err(e) => {
                        log::debug!("send to {to}: {e}");
                        Ok(())
                    }
                }
            }
            Err(why) => chan
                .send(&FromNetwork::Refused { to, why })
                .map_err(|e| format!("send: {e}")),
        }
    }

    /// The unconnected socket (its index) for a request to `to`, a source the engine
    /// resolved from a name: only on a configured name's port, only our
    /// request, each destination rate-capped as a server is, at most
    /// `MAX_SOURCES` of them at once (the least recently asked goes).
    fn dynamic_socket(
        &mut self,
        to: SocketAddr,
        transmit: NtpTimestamp,
        data: &[u8],
        now: u64,
    ) -> Result<usize, OutboundRefusal> {
        let socket = self
            .settings
            .named_sockets
            .iter()
            .position(|l| l.is_ipv4() == to.is_ipv4());
        let allowed = !self.settings.named_ports.is_empty()
            && self.settings.named_ports.contains(&to.port())
            && !to.ip().is_unspecified()
            && !to.ip().is_multicast();
        let (Some(socket), true) = (socket, allowed) else {
            return Err(OutboundRefusal::NotAServer);
        };
        if transmit.is_zero() || data != Repr::client_request(transmit).to_bytes() {
            return Err(OutboundRefusal::NotARequest);
        }
        let i = match self.dynamic.iter().position(|d| d.addr == to) {
            Some(i) => i,
            None => {
                if self.dynamic.len() >= ntp_engine::MAX_SOURCES {
                    let oldest = (0..self.dynamic.len())
                        .min_by_key(|&i| self.dynamic[i].used_ms)
                        .unwrap_or(0);
                    self.dynamic.swap_remove(oldest);
                }
                self.dynamic.push(Dynamic {
                    addr: to,
                    bucket: Bucket {
                        tokens: REQUEST_BURST,
                        at_ms: now,
                    },
                    used_ms: now,
                });
                self.dynamic.len() - 1
            }
        };
        let d = &mut self.dynamic[i];
        d.used_ms = now;
        if !d.bucket.take(now) {
            return Err(OutboundRefusal::RateCapped);
        }
        Ok(self.named_base() + socket)
    }

    fn send_query(&mut self, chan: &Channel, query: u64, to: SocketAddr, data: &[u8]) -> Result<(), String> {
        let now = boottime().millis();
        let verdict = check_query(&self.settings, to, data).and_then(|()| {
            // The next socket of this resolver with nothing in flight.
            let slots: Vec<usize> = (0..self.settings.resolvers.len())
                .filter(|&k| self.settings.resolvers[k] == to)
                .collect();
            let start = self.last_slot.get(slots[0]).copied().unwrap_or(0);
            let free = (1..=slots.len())
                .map(|k| slots[(start + k) % slots.len()])
                .find(|&k| self.in_flight[k].is_none_or(|q| q.until_ms <= now))
                .ok_or(OutboundRefusal::ResolverBusy)?;
            if !self.queries.take_at(now, QUERY_BURST, QUERY_EVERY_MS) {
                return Err(OutboundRefusal::RateCapped);
            }
            self.last_slot[slots[0]] = slots.iter().position(|&k| k == free).unwrap_or(0);
            Ok(free)
        });
        match verdict {
            Ok(slot) => {
                let socket = &self.sockets[self.dns_base() + slot];
                // Whatever came after the last query's life is stale.
                let mut scratch = [0u8; 16];
                while mirage_sdk::udp::recv_timestamped(socket, &mut scratch, true).is_ok() {}
                self.in_flight[slot] = Some(InFlight {
                    query,
                    until_ms: now + QUERY_LIFE_MS,
                });
                if let Err(e) = socket.send(data) {
                    log::debug!("DNS query to {to}: {e}");
                }
                Ok(())
            }
            Err(why) => chan
                .send(&FromNetwork::Refused { to, why })
                .map_err(|e| format!("send: {e}")),
        }
    }
}

/// A send that failed for want of a route: none to the peer, or the
/// socket not connected yet because there was none at start.
fn no_route(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    [
        Errno::NETUNREACH,
        Errno::HOSTUNREACH,
        Errno::DESTADDRREQ,
        Errno::NOTCONN,
    ]
    .iter()
    .any(|n| code == Some(n.raw_os_error()))
}

/// An IPv4-mapped IPv6 sender as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Whether `data` to `to` is a DNS query the engine may send: to a
/// configured resolver, at most 512 octets, exactly one standard query
/// (RD set, nothing but the question) for A or AAAA in class IN of a
/// configured name (any case: the engine randomizes it).
pub fn check_query(settings: &NetworkSettings, to: SocketAddr, data: &[u8]) -> Result<(), OutboundRefusal> {
    if !settings.resolvers.contains(&to) {
        return Err(OutboundRefusal::NotAResolver);
    }
    let query = dns_wire::Message::parse(data).map_err(|_| OutboundRefusal::NotAQuery)?;
    let h = &query.header;
    let shape = data.len() <= MAX_QUERY_LEN
        && !h.response
        && h.opcode == 0
        && h.recursion_desired
        && query.questions.len() == 1
        && query.answers.is_empty()
        && query.authorities.is_empty()
        && query.additionals.is_empty()
        && query.edns.is_none();
    let q = query.questions.first().ok_or(OutboundRefusal::NotAQuery)?;
    let asks = (q.qtype == dns_wire::Type::A || q.qtype == dns_wire::Type::AAAA)
        && q.qclass == dns_wire::Class::IN
        && settings
            .names
            .iter()
            .any(|n| dns_wire::Name::from_ascii(n).is_ok_and(|n| n == q.name));
    if shape && asks {
        Ok(())
    } else {
        Err(OutboundRefusal::NotAQuery)
    }
}

/// Server `to`'s index if `data` is exactly the client request this
/// client sends (mode 3, version 4, nothing but the transmit cookie):
/// whatever the engine says, nothing else leaves, and only to a
/// configured server.
pub fn check_request(
    servers: &[SocketAddr],
    to: SocketAddr,
    transmit: NtpTimestamp,
    data: &[u8],
) -> Result<usize, OutboundRefusal> {
    let i = servers
        .iter()
        .position(|s| *s == to)
        .ok_or(OutboundRefusal::NotAServer)?;
    if transmit.is_zero() || data != Repr::client_request(transmit).to_bytes() {
        return Err(OutboundRefusal::NotARequest);
    }
    Ok(i)
}

/// The actuator: the state directory is taken before the sandbox.
pub fn actuator_role(role: Starting) -> Result<(), String> {
    let settings: ActuatorSettings = role.config()?;
    let state_dir = (!settings.observe).then(|| mirage_sdk::fd::take_fixed(plan::FD_STATE_DIR));
    let started = role.enter()?;
    let mut actuator = Actuator::new(settings, state_dir);
    actuator.serve(&started.channel)
}

struct Actuator {
    settings: ActuatorSettings,
    state_dir: Option<OwnedFd>,
    policy: PolicyState,
    steerable: bool,
    /// The last status the kernel was given, re-applied with each step so
    /// a step leaves the clock marked synchronised with sane error bounds.
    status: ClockStatus,
    /// Refusals so far: each is logged at the 1st, 2nd, 4th, 8th... of its
    /// reason, so an engine asking in a loop cannot flood the log (the
    /// supervisor's status counts them all).
    refusals: [u64; ClockRefusal::ALL.len()],
}

impl Actuator {
    fn new(settings: ActuatorSettings, state_dir: Option<OwnedFd>) -> Actuator {
        let steerable = !settings.observe
            && match clock::probe_clock_control() {
                Ok(()) => true,
                Err(e) => {
                    log::error!(
                        "THE CLOCK IS NOT STEERABLE HERE ({e}): CAP_SYS_TIME must be held in the \
                         initial user namespace; measuring only, every clock intent is refused"
                    );
                    false
                }
            };
        Actuator {
            policy: PolicyState::new(settings.policy, boottime().millis()),
            settings,
            state_dir,
            steerable,
            status: ClockStatus {
                synchronized: true,
                max_error_us: 500_000,
                est_error_us: 0,
                leap: KernelLeap::None,
            },
            refusals: [0; ClockRefusal::ALL.len()],
        }
    }

    fn serve(&mut self, chan: &Channel) -> Result<(), String> {
        chan.send(&FromActuator::Ready {
            observe: self.settings.observe,
            steerable: self.steerable,
        })
        .map_err(|e| format!("send: {e}"))?;
        loop {
            match chan.recv::<ToActuator>() {
                Ok(Some(ToActuator::Apply { id, intent })) => {
                    let before = self.policy.acceptance(boottime().millis());
                    let outcome = self.handle(&intent);
                    let after = self.policy.acceptance(boottime().millis());
                    let accepted = if before.is_some() && after.is_none() {
                        " (the operator's acceptance)"
                    } else {
                        ""
                    };
                    match &outcome {
                        Outcome::Refused(r) => {
                            let i = ClockRefusal::ALL.iter().position(|x| x == r).unwrap_or(0);
                            self.refusals[i] += 1;
                            let n = self.refusals[i];
                            if n.is_power_of_two() {
                                log::warn!("REFUSED {intent:?}: {} ({n} so far)", r.as_str());
                            }
                        }
                        Outcome::Failed(e) => log::warn!("{intent:?} failed: {e}"),
                        Outcome::Applied => match intent {
                            ClockIntent::Step { delta_ns } => {
                                log::warn!("stepped the clock by {delta_ns} ns{accepted}")
                            }
                            _ => log::debug!("applied {intent:?}"),
                        },
                        Outcome::Observed => log::debug!("observing: not applied {intent:?}"),
                    }
                    chan.send(&FromActuator::Result { id, outcome })
                        .map_err(|e| format!("send: {e}"))?;
                }
                Ok(Some(ToActuator::AcceptStep(a))) => {
                    let outcome = match self.policy.accept_step(a, boottime().millis()) {
                        Ok(()) => {
                            log::warn!(
                                "an operator accepted one step of at most {} ms {} within {} s",
                                a.max_ns / 1_000_000,
                                match a.forward {
                                    Some(true) => "forward",
                                    Some(false) => "back",
                                    None => "either way",
                                },
                                a.valid_ms / 1000
                            );
                            Outcome::Applied
                        }
                        Err(r) => {
                            log::warn!("REFUSED the step acceptance {a:?}: {}", r.as_str());
                            Outcome::Refused(r)
                        }
                    };
                    chan.send(&FromActuator::Acceptance { outcome })
                        .map_err(|e| format!("send: {e}"))?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        }
    }

    /// Policy first, whatever the mode; then the clock only when steering.
    fn handle(&mut self, intent: &ClockIntent) -> Outcome {
        let now = boottime().millis();
        if let Err(r) = self.policy.check(intent, now, clock::realtime().secs) {
            return Outcome::Refused(r);
        }
        if self.settings.observe {
            // What it would have done counts, so the policy's state (the
            // start-up phase, the step budget) is the one steering would have.
            self.policy.applied(intent, now);
            return Outcome::Observed;
        }
        if !self.steerable {
            return Outcome::Refused(ClockRefusal::NotSteerable);
        }
        match self.apply(intent) {
            Ok(()) => {
                self.policy.applied(intent, now);
                Outcome::Applied
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    fn apply(&mut self, intent: &ClockIntent) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        match *intent {
            ClockIntent::Slew { delta_ns } => clock::slew_clock(delta_ns).map_err(io),
            ClockIntent::SetFrequency { scaled_ppm } => clock::set_frequency(scaled_ppm).map_err(io),
            ClockIntent::Step { delta_ns } => {
                let status = ClockStatus {
                    synchronized: true,
                    ..self.status
                };
                clock::step_clock(delta_ns, &status).map_err(io)?;
                self.status = status;
                Ok(())
            }
            ClockIntent::SetStatus(s) => {
                let status = ClockStatus {
                    synchronized: s.synchronized,
                    max_error_us: s.max_error_ns / 1000,
                    est_error_us: s.est_error_ns / 1000,
                    leap: match s.leap {
                        Leap::Insert => KernelLeap::Insert,
                        Leap::Delete => KernelLeap::Delete,
                        Leap::None | Leap::Unknown => KernelLeap::None,
                    },
                };
                clock::set_clock_status(&status).map_err(io)?;
                self.status = status;
                Ok(())
            }
            ClockIntent::SaveDrift { scaled_ppm } => {
                let dir = self.state_dir.as_ref().ok_or("no state directory")?;
                let drift = DriftFile {
                    version: 1,
                    scaled_ppm,
                    saved_unix_secs: i64::try_from(clock::realtime().unix_nanos() / 1_000_000_000).ok(),
                };
                state::save(dir, plan::DRIFT_FILE, &drift).map_err(io)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_request_to_a_configured_server_passes() {
        let servers: Vec<SocketAddr> = vec![
            "192.0.2.1:123".parse().unwrap(),
            "[2001:db8::1]:123".parse().unwrap(),
        ];
        let cookie = NtpTimestamp(0x1234_5678_9abc_def0);
        let good = Repr::client_request(cookie).to_bytes();
        assert_eq!(check_request(&servers, servers[1], cookie, &good), Ok(1));
        let other_port: SocketAddr = "192.0.2.1:124".parse().unwrap();
        assert_eq!(
            check_request(&servers, other_port, cookie, &good),
            Err(OutboundRefusal::NotAServer)
        );
        let mut leaky = good;
        leaky[40] ^= 1; // another transmit than the one reported
        assert_eq!(
            check_request(&servers, servers[0], cookie, &leaky),
            Err(OutboundRefusal::NotARequest)
        );
        let mut server_mode = good;
        server_mode[0] = (server_mode[0] & !7) | 4;
        assert_eq!(
            check_request(&servers, servers[0], cookie, &server_mode),
            Err(OutboundRefusal::NotARequest)
        );
        let mut longer = good.to_vec();
        longer.extend([0u8; 20]);
        assert_eq!(
            check_request(&servers, servers[0], cookie, &longer),
            Err(OutboundRefusal::NotARequest)
        );
        let zero = Repr::client_request(NtpTimestamp::ZERO).to_bytes();
        assert_eq!(
            check_request(&servers, servers[0], NtpTimestamp::ZERO, &zero),
            Err(OutboundRefusal::NotARequest)
        );
    }

    #[test]
    fn only_a_query_for_a_configured_name_to_a_resolver_passes() {
        let resolver: SocketAddr = "192.0.2.53:53".parse().unwrap();
        let settings = NetworkSettings {
            resolvers: vec![resolver; 2],
            names: vec!["pool.test".into()],
            ..NetworkSettings::default()
        };
        let query =
            |name: &str, qtype| dns_wire::Message::query(7, dns_wire::Name::from_ascii(name).unwrap(), qtype);
        let bytes = |m: &dns_wire::Message| m.to_bytes().unwrap();
        let good = query("PoOl.TeSt", dns_wire::Type::AAAA);
        assert_eq!(check_query(&settings, resolver, &bytes(&good)), Ok(()));
        let elsewhere: SocketAddr = "192.0.2.54:53".parse().unwrap();
        assert_eq!(
            check_query(&settings, elsewhere, &bytes(&good)),
            Err(OutboundRefusal::NotAResolver)
        );
        let other_port: SocketAddr = "192.0.2.53:5353".parse().unwrap();
        assert_eq!(
            check_query(&settings, other_port, &bytes(&good)),
            Err(OutboundRefusal::NotAResolver)
        );
        let mut response = good.clone();
        response.header.response = true;
        let mut with_edns = good.clone();
        with_edns.edns = Some(dns_wire::Edns::new(4096));
        let mut two = good.clone();
        two.questions.push(two.questions[0].clone());
        for bad in [
            bytes(&query("other.test", dns_wire::Type::A)),
            bytes(&query("pool.test", dns_wire::Type::TXT)),
            bytes(&response),
            bytes(&with_edns),
            bytes(&two),
            vec![0; 12],
        ] {
            assert_eq!(
                check_query(&settings, resolver, &bad),
                Err(OutboundRefusal::NotAQuery)
            );
        }
    }

    #[test]
    fn mapped_senders_read_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:123".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.1:123".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:123".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn a_server_gets_its_burst_then_one_request_every_two_seconds() {
        let mut b = Bucket {
            tokens: REQUEST_BURST,
            at_ms: 0,
        };
        let sent = (0..100).filter(|_| b.take(10)).count();
        assert_eq!(sent, 4);
        assert!(!b.take(1999));
        assert!(b.take(2010));
        assert!(!b.take(2011));
        let later = (0..100u64).filter(|k| b.take(4000 + k * 100)).count();
        // Over the next 10 s: one every 2 s, no burst (it was spent).
        assert!((4..=6).contains(&later), "{later}");
    }
}
