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

/// The engine role: its plan in force, then the SDK's engine runner.
pub fn engine_role(role: Starting) -> Result<(), String> {
    mirage_sdk::engine_role::run::<Ntp>(role.enter()?.channel)
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

/// A token bucket per server, in the role's boot-clock milliseconds.
struct Bucket {
    tokens: u32,
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, now_ms: u64) -> bool {
        let earned = now_ms.saturating_sub(self.at_ms) / REQUEST_EVERY_MS;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(REQUEST_BURST)) as u32;
            self.at_ms += earned * REQUEST_EVERY_MS;
        }
        if self.tokens == REQUEST_BURST {
            self.at_ms = now_ms;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The network role: the sockets are taken (and checked to be UDP)
/// before the sandbox.
pub fn network_role(role: Starting) -> Result<(), String> {
    let settings: NetworkSettings = role.config()?;
    let sockets: Vec<UdpSocket> = (0..settings.servers.len())
        .map(|i| {
            let fd: OwnedFd = mirage_sdk::fd::take_fixed(plan::FD_FIRST_SOCKET + i as i32);
            UdpSocket::from(fd)
        })
        .collect();
    for (s, server) in sockets.iter().zip(&settings.servers) {
        // Connected by the supervisor to exactly this server.
        match s.peer_addr() {
            Ok(peer) if peer == *server => {}
            other => return Err(format!("socket for {server} is connected to {other:?}")),
        }
    }
    let started = role.enter()?;
    network(&started.channel, &settings.servers, &sockets)
}

fn network(chan: &Channel, servers: &[SocketAddr], sockets: &[UdpSocket]) -> Result<(), String> {
    let now = boottime().millis();
    let mut buckets: Vec<Bucket> = servers
        .iter()
        .map(|_| Bucket {
            tokens: REQUEST_BURST,
            at_ms: now,
        })
        .collect();
    let mut fds: Vec<BorrowedFd<'_>> = vec![chan.as_fd()];
    fds.extend(sockets.iter().map(|s| s.as_fd()));
    let mut buf = [0u8; 2048];
    loop {
        let ready = wait_readable(&fds, None).map_err(|e| format!("poll: {e}"))?;
        for (i, socket) in sockets.iter().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            for _ in 0..READS_PER_ROUND {
                match mirage_sdk::udp::recv_timestamped(socket, &mut buf, true) {
                    Ok(got) if got.truncated => log::debug!("oversized datagram from {} dropped", servers[i]),
                    Ok(got) => {
                        let (at, kernel_stamp) = match got.at {
                            Some(t) => (t, true),
                            None => (clock::realtime(), false),
                        };
                        chan.send(&FromNetwork::Received {
                            from: servers[i],
                            data: buf[..got.len].to_vec(),
                            at: ntp_time(at),
                            kernel_stamp,
                        })
                        .map_err(|e| format!("send: {e}"))?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ICMP port unreachable from an earlier request: the
                    // server is down; the engine sees silence.
                    Err(e) => {
                        log::debug!("receive from {}: {e}", servers[i]);
                        break;
                    }
                }
            }
        }
        if ready[0] {
            match chan.recv::<ToNetwork>() {
                Ok(Some(ToNetwork::Send { to, transmit, data })) => {
                    let verdict = check_request(servers, to, transmit, &data).and_then(|i| {
                        if buckets[i].take(boottime().millis()) {
                            Ok(i)
                        } else {
                            Err(OutboundRefusal::RateCapped)
                        }
                    });
                    match verdict {
                        Ok(i) => {
                            // T1 is read right before the send, not after
                            // it: a server on the same host or LAN answers
                            // within microseconds, on another core, so a
                            // reading after send() returned can come after
                            // the reply's kernel receive stamp (T4 < T1,
                            // refused by the engine). Before the send, T1
                            // is early by the send path alone (a few us,
                            // half of which shows as offset); the kernel's
                            // transmit timestamp is the later refinement.
                            let at = ntp_time(clock::realtime());
                            match sockets[i].send(&data) {
                                Ok(_) => chan
                                    .send(&FromNetwork::Sent { to, transmit, at })
                                    .map_err(|e| format!("send: {e}"))?,
                                Err(e) => log::debug!("send to {to}: {e}"),
                            }
                        }
                        Err(why) => chan
                            .send(&FromNetwork::Refused { to, why })
                            .map_err(|e| format!("send: {e}"))?,
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        }
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
                        Outcome::Refused(r) => log::warn!("REFUSED {intent:?}: {}", r.as_str()),
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
