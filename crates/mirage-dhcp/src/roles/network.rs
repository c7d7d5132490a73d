//! The network role: moves frames between the AF_PACKET socket (opened and
//! filtered by the supervisor, fd 4) and the engine, with no capabilities.
//! Outbound frames are checked here, because the engine may be compromised:
//! only what a DHCP client sends as us passes ([`check_outbound`]), at a
//! bounded rate, and the only state the check uses comes from the
//! supervisor (what the actuator applied) and from this role's own settings
//! (its hello).

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use mirage_dhcp::plan::RoleSettings;
use mirage_ipc::{BoundAddress, FromNetwork, Lease, MAX_FRAME_LEN, NetworkBinding, ToNetwork};
use mirage_sdk::network_role::{self, CapReport, Relay, RelayLimits, Request, Verdict};
use mirage_sdk::packet::{self, OutboundPolicy, PacketSocket, check_outbound, offered_address};
use mirage_sdk::role::Starting;

use super::FD_PACKET;

/// Outbound frames a second, on average, and at once. The engine's busiest
/// legitimate moment is a bind: DISCOVER, REQUEST, the RFC 5227 probes and
/// the first announcement within a few hundred milliseconds (6 frames with
/// the defaults, 5 with RFC 5227's own timings, spread over seconds);
/// retransmissions double from at least 10 ms, so a whole back-off series
/// stays under 10 in its first second. A flood gets 30 frames, then 10 a
/// second: no pool can be emptied, no server swamped.
pub const RATE_PER_SECOND: u32 = 10;
pub const RATE_BURST: u32 = 30;
/// Addresses offered to us that a DECLINE may name (the last few).
const OFFERED_KEPT: usize = 16;
/// Frames waiting for an apply's answer (a bind's first announcement).
const HELD_MAX: usize = 4;

/// The SDK's relay with DHCP's outbound policy. Every frame asked for
/// counts against the cap, sent or refused: refusals are logged, and a
/// flood of junk must not become a flood of log lines. Rate-capped frames
/// are reported at most once a second.
const LIMITS: RelayLimits = RelayLimits {
    max_len: MAX_FRAME_LEN,
    per_second: RATE_PER_SECOND,
    burst: RATE_BURST,
    cap_before_policy: true,
    cap_report: CapReport::EveryMs(1000),
    io_errors: log::Level::Warn,
};

pub fn run(role: Starting) -> Result<(), String> {
    let args: RoleSettings = role.config()?;
    let client_id = args
        .client_id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or("the network role needs a client id")?;
    // Checked before the sandbox closes the calls that checking needs.
    let sock = PacketSocket::from_raw_fd(FD_PACKET).map_err(|e| format!("packet socket: {e}"))?;
    let chan = role.enter()?.channel;
    let mut out = Outbound {
        policy: OutboundPolicy {
            mac: args.mac,
            client_id,
            bound: None,
            offered: Vec::new(),
        },
        applying: None,
        held: Vec::new(),
    };
    network_role::run(&mut out, &sock, &chan, LIMITS)
}

/// The outbound policy: what this client sends as us, from the state the
/// supervisor tells (what the actuator applied), with frames held for an
/// apply under way.
struct Outbound {
    policy: OutboundPolicy,
    applying: Option<BoundAddress>,
    held: Vec<Vec<u8>>,
}

impl Relay for Outbound {
    type Socket = PacketSocket;
    type In = ToNetwork;
    type Out = FromNetwork;

    fn received(&mut self, frame: &[u8], r: packet::Received) -> Option<FromNetwork> {
        if r.truncated {
            log::debug!("dropped an oversized frame");
            return None;
        }
        if let Some(addr) = offered_address(frame, self.policy.mac) {
            self.remember_offer(addr);
        }
        Some(FromNetwork::Frame {
            data: frame.to_vec(),
            checksum_offloaded: r.checksum_offloaded,
        })
    }

    /// New state from the supervisor: held frames go out if it now allows
    /// them, keep waiting while their apply is still under way, else are
    /// refused.
    fn request(&mut self, msg: ToNetwork) -> Request {
        let b = match msg {
            ToNetwork::Transmit(frame) => return Request::Send(frame),
            ToNetwork::Binding(b) => b,
        };
        self.policy.bound = b.bound.map(|a| (a.address, a.server));
        self.applying = b.applying;
        let held = std::mem::take(&mut self.held);
        Request::Released(held.into_iter().map(|f| self.check(f)).collect())
    }

    fn check(&mut self, frame: Vec<u8>) -> Verdict {
        match check_outbound(&frame, &self.policy) {
            Ok(()) => Verdict::Send(frame),
            Err(_) if self.held.len() < HELD_MAX && self.allowed_once_applied(&frame) => {
                self.held.push(frame);
                Verdict::Held
            }
            Err(why) => Verdict::Refused(why.as_str().to_string()),
        }
    }

    fn refused(&mut self, reason: String) -> FromNetwork {
        log::warn!("refused an outbound frame: {reason}");
        FromNetwork::Refused { reason }
    }

    fn capped(&mut self, frames: u64) -> FromNetwork {
        log::warn!("rate cap ({RATE_PER_SECOND}/s, burst {RATE_BURST}): dropped {frames} outbound frames");
        FromNetwork::Capped { frames }
    }
}

impl Outbound {
    /// Whether `frame` passes once the address being applied is in force.
    fn allowed_once_applied(&self, frame: &[u8]) -> bool {
        let Some(a) = self.applying else { return false };
        let policy = OutboundPolicy {
            bound: Some((a.address, a.server)),
            ..self.policy.clone()
        };
        check_outbound(frame, &policy).is_ok()
    }

    fn remember_offer(&mut self, addr: Ipv4Addr) {
        let offered = &mut self.policy.offered;
        offered.retain(|&a| a != addr);
        if offered.len() == OFFERED_KEPT {
            offered.remove(0);
        }
        offered.push(addr);
    }
}

/// The supervisor's side: what to tell the network role, from the intents
/// it forwards to the actuator and the actuator's answers. The actuator
/// answers in order, so each ApplyLease answer belongs to the oldest apply
/// not answered yet.
#[derive(Default)]
pub struct BindingTracker {
    told: NetworkBinding,
    state: NetworkBinding,
    /// One entry per apply forwarded and not answered; `None` once a remove
    /// of its address followed it.
    applies: VecDeque<Option<BoundAddress>>,
}

impl BindingTracker {
    pub fn apply_forwarded(&mut self, lease: &Lease) {
        let a = BoundAddress {
            address: lease.address,
            server: lease.server_id,
        };
        self.applies.push_back(Some(a));
        self.state.applying = Some(a);
    }

    /// Narrowing needs no answer: from now on nothing more is sent as it.
    pub fn remove_forwarded(&mut self, lease: &Lease) {
        let gone = |a: &Option<BoundAddress>| a.is_some_and(|a| a.address == lease.address);
        if gone(&self.state.bound) {
            self.state.bound = None;
        }
        for a in &mut self.applies {
            if gone(a) {
                *a = None;
            }
        }
        self.state.applying = self.applies.back().copied().flatten();
    }

    /// The actuator's answer to the oldest apply: done puts it in force; a
    /// refusal or failure leaves what was in force.
    pub fn apply_answered(&mut self, done: bool) {
        if let Some(Some(a)) = self.applies.pop_front()
            && done
        {
            self.state.bound = Some(a);
        }
        self.state.applying = self.applies.back().copied().flatten();
    }

    /// The message to send if the state changed since the last one sent;
    /// call [`BindingTracker::sent`] once it is delivered.
    pub fn update(&self) -> Option<ToNetwork> {
        (self.state != self.told).then_some(ToNetwork::Binding(self.state))
    }

    pub fn sent(&mut self) {
        self.told = self.state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(addr: [u8; 4]) -> Lease {
        Lease {
            address: Ipv4Addr::from(addr),
            prefix_len: 24,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            routes: vec![],
            dns_servers: vec![],
            ntp_servers: vec![],
            domain_name: None,
            search: vec![],
            hostname: None,
            mtu: None,
            lease_secs: 600,
            renew_secs: 300,
            rebind_secs: 525,
            acquired_at: mirage_ipc::Instant(0),
        }
    }

    fn state(t: &BindingTracker) -> NetworkBinding {
        match t.update() {
            Some(ToNetwork::Binding(b)) => b,
            _ => t.told,
        }
    }

    fn addr(a: Option<BoundAddress>) -> Option<Ipv4Addr> {
        a.map(|a| a.address)
    }

    #[test]
    fn an_address_is_in_force_only_once_the_actuator_applied_it() {
        let mut t = BindingTracker::default();
        assert!(t.update().is_none());
        let a = lease([10, 0, 0, 5]);
        t.apply_forwarded(&a);
        assert_eq!(addr(state(&t).bound), None);
        assert_eq!(addr(state(&t).applying), Some(a.address));
        t.sent();
        assert!(t.update().is_none());
        t.apply_answered(true);
        assert_eq!(addr(state(&t).bound), Some(a.address));
        assert_eq!(state(&t).applying, None);
        // A refused apply of another address changes nothing in force.
        let b = lease([10, 0, 0, 6]);
        t.apply_forwarded(&b);
        t.apply_answered(false);
        assert_eq!(addr(state(&t).bound), Some(a.address));
        // Answers pair with applies in order.
        t.apply_forwarded(&b);
        t.apply_forwarded(&a);
        t.apply_answered(true);
        assert_eq!(addr(state(&t).bound), Some(b.address));
        assert_eq!(addr(state(&t).applying), Some(a.address));
        t.apply_answered(false);
        assert_eq!(addr(state(&t).bound), Some(b.address));
        // A remove narrows at once, also for an apply still under way.
        t.apply_forwarded(&b);
        t.remove_forwarded(&b);
        assert_eq!(state(&t).bound, None);
        assert_eq!(state(&t).applying, None);
        t.apply_answered(true);
        assert_eq!(state(&t).bound, None, "a removed address came back");
    }
}
