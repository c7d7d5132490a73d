//! The RFC 2131 client state machine.
//!
//! INTERFACE CONTRACT (used by the engine role, the KVM guest, fuzzers and
//! simulations; keep these signatures stable): [`Client::new`],
//! [`Client::handle`], [`Client::poll_at`].
//!
//! Model: one state ([`ClientState`]) with one state timer (retransmission,
//! probe, T1, T2...), plus three timers that live across states: lease
//! expiry, RFC 5227 announcements and ApplyLease retries. `handle` first
//! fires every timer that is due, then handles the event. The lease in
//! `Client::lease` is the one whose address is on the interface; a lease
//! being requested or probed is kept apart until it is bound, so an address
//! we still hold is never removed before its replacement is ready.

mod build;

use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::{
    ClientState, Counters, DropReason, EngineAction, EngineConfig, EngineEvent, Instant, IntentKind, Lease,
    Status,
};

use crate::lease::{floor_lease_times, lease_and_dropped_routes};
use crate::rng::Rng;
use crate::wire::dhcp::{Message, MessageType};
use crate::wire::frame::{self, ArpOp, ArpPacket, BROADCAST_MAC, DHCP_SERVER_PORT, Inbound, UdpDatagram};

pub use build::{MAX_MESSAGE_SIZE, PARAMETER_REQUEST_LIST, client_id_bytes};

/// REQUESTING gives up after this many transmissions (RFC 2131 3.1 item 5
/// leaves the count to the client; 4 covers ~1 min with the RFC timings).
const REQUEST_TRANSMISSIONS: u32 = 4;
/// INIT-REBOOT sends at 0, budget/4 and budget/2, then waits for the budget.
const INIT_REBOOT_TRANSMISSIONS: u32 = 3;
/// RFC 2131 4.4.5: retransmissions in RENEWING / REBINDING wait at least 60 s.
/// This spaces retransmissions only: an ACKed REQUEST starts a new lease
/// whose T1 comes next, which is why T1 itself has a floor
/// (`EngineConfig::min_lease_secs`).
const MIN_RENEW_RETRY_MS: u64 = 60_000;
/// RFC 5227 2.4 DEFEND_INTERVAL: at most one defending ARP per interval.
const DEFEND_INTERVAL_MS: u64 = 10_000;
/// A bound address is given up only when the conflict insisted (another
/// conflicting ARP within DEFEND_INTERVAL of our defence) after this many
/// defences in a row: RFC 5227 2.4 (b) gives up after one, which lets two
/// forged ARPs take away a DHCP-assigned address (docs/security.md).
const DEFENCES_BEFORE_YIELD: u32 = 3;
/// Pause before DISCOVER after a DECLINE; RFC 2131 3.1 item 5 asks for 10 s
/// between attempts, which we use once conflicts repeat.
const DECLINE_DELAY_MS: u64 = 1_000;
const DECLINE_DELAY_REPEATED_MS: u64 = 10_000;
const REPEATED_CONFLICTS: u32 = 3;
/// RFC 5227 2.1.1: from MAX_CONFLICTS conflicts on, at most one new address
/// per RATE_LIMIT_INTERVAL.
const MAX_CONFLICTS: u32 = 10;
const RATE_LIMIT_INTERVAL_MS: u64 = 60_000;
/// Back-off after repeated NAKs: the first NAK restarts at once (RFC 2131
/// 4.4.1), but a server that NAKs everything, or every renewal, must not
/// drive a NAK/DISCOVER/bind loop (dhcpcd does the same). The streak
/// survives binds and ends only once a lease has held for SETTLED_MS.
const NAK_BACKOFF_FIRST_MS: u64 = 1_000;
const NAK_BACKOFF_MAX_MS: u64 = 60_000;
/// A lease held this long ends a NAK or conflict streak.
const SETTLED_MS: u64 = 60_000;
/// The engine's own bound on frames it emits, in any state: a token bucket
/// of TX_BURST frames refilled by one every TX_REFILL_MS, so at most
/// 20 + 5 per second. Normal operation stays far below (a boot with ACD
/// sends six frames); a frame over the bound is not sent, as if lost.
const TX_BURST: u32 = 20;
const TX_REFILL_MS: u64 = 200;
/// ApplyLease retry back-off (field notes item 3: a slow or failing actuator
/// must not cost us the lease).
const APPLY_RETRY_FIRST_MS: u64 = 1_000;
const APPLY_RETRY_MAX_MS: u64 = 60_000;
/// With nothing else pending (infinite lease, link down) wake up this often,
/// so that `poll_at` is always finite.
const IDLE_WAKE_MS: u64 = 3_600_000;
/// Bound on timer firings per `handle` call. A caller that was asleep for
/// days catches up in a few steps, and zero-length timings (probe_count
/// probes 0 ms apart) take at most a few hundred; this only guards against
/// a logic loop. Anything left is due at once and `poll_at` says so.
const MAX_TIMER_STEPS: usize = 1024;

/// Shortest interval between two publications of changed counters alone.
const COUNTERS_PUBLISH_MS: u64 = 1000;

/// The DHCPv4 client engine. See the crate docs for the driving loop.
pub struct Client {
    config: EngineConfig,
    /// Option 61 as sent, compared with option 61 in replies (RFC 6842).
    client_id: Vec<u8>,
    rng: Rng,
    state: ClientState,
    /// False until the first `handle`: nothing is sent before it.
    started: bool,
    /// The latest `now` seen; time never goes backwards.
    now: Instant,
    counters: Counters,
    /// The lease in force; its address is on the interface (or the actuator
    /// was asked to put it there).
    lease: Option<Lease>,
    /// Bumped whenever `lease` changes; drives PublishStatus cheaply.
    lease_gen: u64,
    /// What was last published: (state, lease_gen).
    published: Option<(ClientState, u64)>,
    /// Counters as last published, and when changed counters alone are
    /// published next (`NEVER` when they are unchanged): metrics stay fresh
    /// while bound, at most one PublishStatus per COUNTERS_PUBLISH_MS.
    published_counters: Counters,
    counters_publish_at: Instant,
    /// Source MAC of the frame that carried the last ACK: the next hop to
    /// the server for unicast RENEWING and RELEASE.
    server_mac: [u8; 6],
    /// Source IP of that frame (the server, or the relay before it).
    server_src_ip: Ipv4Addr,
    /// Source MAC of the chosen OFFER: REQUESTING NAKs come from there.
    offer_mac: [u8; 6],
    /// When the address in force was first bound (renewals keep it).
    bound_since: Instant,

    // The transaction in progress.
    xid: u32,
    /// When this acquisition / renewal began ('secs', RFC 2131 table 1).
    exchange_started: Instant,
    /// When the REQUEST that a matching ACK answers was first sent: the lease
    /// starts then (RFC 2131 4.4.1).
    request_sent_at: Instant,
    transmissions: u32,
    /// Current retransmission base (RFC 2131 4.1 exponential back-off).
    retransmit_ms: u64,
    /// The state's own timer (retransmission, probe, T1, T2...).
    timer: Instant,
    /// The offer chosen in SELECTING: (address, server identifier).
    selected: Option<(Ipv4Addr, Ipv4Addr)>,

    // RFC 5227.
    /// The ACKed lease under probe; not applied yet.
    probing: Option<Lease>,
    probes_sent: u8,
    consecutive_conflicts: u32,
    /// NAKs since a lease last held for SETTLED_MS (see NAK_BACKOFF_FIRST_MS).
    consecutive_naks: u32,
    announces_left: u8,
    announce_at: Instant,
    last_defence: Option<Instant>,
    /// A conflicting ARP came within DEFEND_INTERVAL of `last_defence`.
    defence_insisted: bool,
    /// Defences in a row whose conflict insisted (see DEFENCES_BEFORE_YIELD).
    insisted_defences: u32,

    // Outbound rate bound (TX_BURST).
    tx_tokens: u32,
    tx_refilled_at: Instant,

    // Actuator failures.
    apply_retry_at: Instant,
    apply_backoff_ms: u64,
}

impl Client {
    /// `stored`: a lease from a previous run, already on this boot's clock;
    /// if still valid the client starts in INIT-REBOOT, else INIT.
    /// Nothing is sent until the first `handle` call.
    pub fn new(config: EngineConfig, stored: Option<Lease>, now: Instant, seed: [u8; 32]) -> Client {
        // A stored lease that fails today's policy (or has expired) is not
        // adopted: we could not ask to apply it, and the kernel lifetimes we
        // set last time have removed an expired address already.
        let stored = stored.filter(|l| l.check(&config.limits).is_ok() && l.expires_at() > now);
        let state = if stored.is_some() {
            ClientState::InitReboot
        } else {
            ClientState::Init
        };
        let first = u64::from(config.first_retransmit_ms).max(1);
        Client {
            client_id: build::client_id_bytes(&config),
            config,
            rng: Rng::from_seed(seed),
            state,
            started: false,
            now,
            counters: Counters::default(),
            // A restarted daemon finds its address on the interface already
            // (DESIGN.md principle 5): treat it as applied.
            lease: stored,
            lease_gen: 0,
            published: None,
            published_counters: Counters::default(),
            counters_publish_at: Instant::NEVER,
            server_mac: BROADCAST_MAC,
            server_src_ip: Ipv4Addr::UNSPECIFIED,
            offer_mac: BROADCAST_MAC,
            bound_since: now,
            xid: 0,
            exchange_started: now,
            request_sent_at: now,
            transmissions: 0,
            retransmit_ms: first,
            timer: Instant::NEVER,
            selected: None,
            probing: None,
            probes_sent: 0,
            consecutive_conflicts: 0,
            consecutive_naks: 0,
            announces_left: 0,
            announce_at: Instant::NEVER,
            last_defence: None,
            defence_insisted: false,
            insisted_defences: 0,
            tx_tokens: TX_BURST,
            tx_refilled_at: now,
            apply_retry_at: Instant::NEVER,
            apply_backoff_ms: APPLY_RETRY_FIRST_MS,
        }
    }

    /// Feed one event at time `now` (never earlier than a previous call).
    /// Actions are appended to `out` in the order they must be carried out.
    /// `Err` means a frame was dropped (counted already); the caller logs it.
    pub fn handle(
        &mut self,
        now: Instant,
        event: EngineEvent,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        // Time never goes backwards: an earlier `now` counts as the last one.
        let now = now.max(self.now);
        self.now = now;
        if self.lease.is_some() && self.holds_address_state() && now.since(self.bound_since) >= SETTLED_MS {
            self.consecutive_naks = 0;
            self.consecutive_conflicts = 0;
        }
        if self.state == ClientState::Stopped {
            if let EngineEvent::Frame { .. } = event {
                self.counters.frames_received += 1;
                self.counters.frames_dropped += 1;
                return Err(DropReason::Unexpected);
            }
            return Ok(());
        }
        if !self.started {
            // The stored lease may have run out between `new` and now.
            if self.lease.as_ref().is_some_and(|l| l.expires_at() <= now) {
                self.counters.expiries += 1;
                self.drop_lease(out);
                self.state = ClientState::Init;
            }
            self.started = true;
            match event {
                // Start in the state the event asks for, without sending.
                EngineEvent::LinkDown => {
                    self.enter_link_down(out);
                    return Ok(());
                }
                EngineEvent::Stop { force_release } => {
                    self.stop(force_release, out);
                    return Ok(());
                }
                _ => self.start(now, out),
            }
        }
        self.run_timers(now, out);
        let result = match event {
            EngineEvent::Frame {
                data,
                checksum_offloaded,
            } => self.on_frame(now, &data, checksum_offloaded, out),
            EngineEvent::Tick => Ok(()),
            EngineEvent::LinkUp => {
                self.on_link_up(now, out);
                Ok(())
            }
            EngineEvent::LinkDown => {
                self.enter_link_down(out);
                Ok(())
            }
            EngineEvent::IntentResult { kind, ok } => {
                self.on_intent_result(now, kind, ok);
                Ok(())
            }
            EngineEvent::Renew => {
                if self.state == ClientState::Bound {
                    self.enter_renewing(now, out);
                }
                Ok(())
            }
            EngineEvent::Stop { force_release } => {
                self.stop(force_release, out);
                Ok(())
            }
        };
        if result.is_err() {
            self.counters.frames_dropped += 1;
        }
        if self.state != ClientState::Stopped {
            self.run_timers(now, out);
        }
        self.publish(out);
        result
    }

    /// The next instant at which `handle(now, Tick)` must be called; always
    /// finite unless the client is stopped.
    pub fn poll_at(&self) -> Instant {
        if self.state == ClientState::Stopped {
            return Instant::NEVER;
        }
        if !self.started {
            return self.now;
        }
        let expiry = self.lease.as_ref().map_or(Instant::NEVER, Lease::expires_at);
        self.timer
            .min(self.counters_publish_at)
            .min(self.announce_at)
            .min(self.apply_retry_at)
            .min(expiry)
            .min(self.now.add_millis(IDLE_WAKE_MS))
    }

    /// The current RFC 2131 state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Counters so far (also carried by every PublishStatus).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The lease in force (its address is on the interface), if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// The current status, as PublishStatus carries it.
    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            lease: self.lease.clone(),
            counters: self.counters,
        }
    }

    // ---- output helpers -------------------------------------------------

    fn transmit(&mut self, frame: Vec<u8>, out: &mut Vec<EngineAction>) {
        if !self.take_tx_token() {
            self.counters.transmits_limited += 1;
            return;
        }
        self.counters.transmitted += 1;
        out.push(EngineAction::Transmit(frame));
    }

    /// One token of the outbound bucket (TX_BURST), if there is one.
    fn take_tx_token(&mut self) -> bool {
        let steps = self.now.since(self.tx_refilled_at) / TX_REFILL_MS;
        let tokens = u64::from(self.tx_tokens).saturating_add(steps);
        if tokens >= u64::from(TX_BURST) {
            // Full: credit does not pile up while idle.
            self.tx_tokens = TX_BURST;
            self.tx_refilled_at = self.now;
        } else {
            self.tx_tokens = tokens as u32;
            self.tx_refilled_at = self.tx_refilled_at.add_millis(steps * TX_REFILL_MS);
        }
        if self.tx_tokens == 0 {
            return false;
        }
        self.tx_tokens -= 1;
        true
    }

    /// PublishStatus if the state or the lease changed since the last one,
    /// or, rate-limited, if only the counters did (a flood of junk frames
    /// shows up in the metrics within a second, not at the next renewal).
    fn publish(&mut self, out: &mut Vec<EngineAction>) {
        let key = (self.state, self.lease_gen);
        let due = if self.published != Some(key) {
            true
        } else if self.counters == self.published_counters {
            false
        } else if self.counters_publish_at == Instant::NEVER {
            self.counters_publish_at = self.now.add_millis(COUNTERS_PUBLISH_MS);
            false
        } else {
            self.now >= self.counters_publish_at
        };
        if due {
            self.published = Some(key);
            self.published_counters = self.counters;
            self.counters_publish_at = Instant::NEVER;
            out.push(EngineAction::PublishStatus(self.status()));
        }
    }

    fn set_lease(&mut self, lease: Option<Lease>) {
        self.lease = lease;
        self.lease_gen += 1;
    }

    /// Forget the lease in force: remove its address, forget it on disk.
    fn drop_lease(&mut self, out: &mut Vec<EngineAction>) {
        if let Some(old) = self.lease.take() {
            self.lease_gen += 1;
            out.push(EngineAction::RemoveLease { lease: old });
            out.push(EngineAction::PersistLease(None));
        }
        self.apply_retry_at = Instant::NEVER;
        self.stop_announcing();
    }

    fn stop_announcing(&mut self) {
        self.announces_left = 0;
        self.announce_at = Instant::NEVER;
    }

    fn secs(&self, now: Instant) -> u16 {
        u16::try_from(now.since(self.exchange_started) / 1000).unwrap_or(u16::MAX)
    }

    fn new_exchange(&mut self, now: Instant) {
        self.xid = self.rng.next_u32();
        self.exchange_started = now;
        self.request_sent_at = now;
        self.transmissions = 0;
        self.retransmit_ms = u64::from(self.config.first_retransmit_ms).max(1);
    }

    /// RFC 2131 4.1: the next wait is the current base +/- min(1 s, base/4),
    /// and the base doubles up to the configured cap.
    fn next_retransmit(&mut self, now: Instant) -> Instant {
        let base = self.retransmit_ms;
        let wait = self.rng.jitter(base, (base / 4).min(1000));
        let cap = u64::from(self.config.max_retransmit_ms).max(u64::from(self.config.first_retransmit_ms));
        self.retransmit_ms = base.saturating_mul(2).min(cap).max(1);
        now.add_millis(wait)
    }

    fn send_dhcp(
        &mut self,
        o: &build::Outgoing,
        dst_mac: [u8; 6],
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        out: &mut Vec<EngineAction>,
    ) {
        let msg = build::message(&self.config, &self.client_id, o);
        let frame = build::udp_frame(self.config.mac, &msg, dst_mac, src_ip, dst_ip);
        self.transmit(frame, out);
    }

    /// A broadcast from 0.0.0.0 (RFC 2131 4.1: we have no address yet, so
    /// the BROADCAST flag asks servers to broadcast their reply).
    fn send_from_nowhere(
        &mut self,
        now: Instant,
        kind: MessageType,
        requested: Option<Ipv4Addr>,
        server_id: Option<Ipv4Addr>,
        out: &mut Vec<EngineAction>,
    ) {
        let o = build::Outgoing {
            kind,
            xid: self.xid,
            secs: self.secs(now),
            broadcast: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            requested,
            server_id,
        };
        self.send_dhcp(&o, BROADCAST_MAC, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, out);
    }

    // ---- start, INIT, SELECTING, REQUESTING -------------------------------

    fn start(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        if self.lease.is_some() {
            self.enter_init_reboot(now, out);
        } else {
            self.enter_init(now, 0, out);
        }
    }

    /// INIT: DISCOVER now, or after `delay_ms` (after a DECLINE).
    fn enter_init(&mut self, now: Instant, delay_ms: u64, out: &mut Vec<EngineAction>) {
        self.selected = None;
        self.probing = None;
        self.stop_announcing();
        self.new_exchange(now);
        if delay_ms > 0 {
            self.state = ClientState::Init;
            self.timer = now.add_millis(delay_ms);
        } else {
            self.state = ClientState::Selecting;
            self.send_discover(now, out);
        }
        self.publish(out);
    }

    /// RFC 2131 4.4.1: DISCOVER, broadcast, with our client id and wishes.
    fn send_discover(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.send_from_nowhere(now, MessageType::Discover, None, None, out);
        self.transmissions += 1;
        self.timer = self.next_retransmit(now);
    }

    /// RFC 2131 4.3.2 / 4.4.1: REQUEST in SELECTING names the chosen server
    /// (54) and address (50), and is broadcast so that the other servers
    /// learn their offers were declined. Same xid as the DISCOVER.
    fn send_select_request(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let Some((addr, server)) = self.selected else {
            return self.enter_init(now, 0, out);
        };
        if self.transmissions == 0 {
            self.request_sent_at = now;
        }
        self.send_from_nowhere(now, MessageType::Request, Some(addr), Some(server), out);
        self.transmissions += 1;
        self.timer = self.next_retransmit(now);
    }

    // ---- INIT-REBOOT / REBOOTING -------------------------------------------

    /// RFC 2131 3.2 / 4.3.2: verify a lease we hold with a broadcast REQUEST
    /// carrying 50 and no 54, ciaddr 0.
    fn enter_init_reboot(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.selected = None;
        self.probing = None;
        self.stop_announcing();
        self.new_exchange(now);
        self.state = ClientState::Rebooting;
        self.send_init_reboot(now, out);
        self.publish(out);
    }

    fn send_init_reboot(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let Some(addr) = self.lease.as_ref().map(|l| l.address) else {
            return self.enter_init(now, 0, out);
        };
        self.send_from_nowhere(now, MessageType::Request, Some(addr), None, out);
        self.transmissions += 1;
        let budget = u64::from(self.config.init_reboot_budget_ms);
        let offset = match self.transmissions {
            1 => budget / 4,
            2 => budget / 2,
            _ => budget,
        };
        self.timer = self.exchange_started.add_millis(offset).max(now);
    }

    // ---- PROBING (RFC 5227 2.1.1) -----------------------------------------

    fn enter_probing(&mut self, now: Instant, lease: Lease, out: &mut Vec<EngineAction>) {
        self.state = ClientState::Probing;
        self.probing = Some(lease);
        self.probes_sent = 0;
        // PROBE_WAIT: a random delay so that hosts powered on together do
        // not probe in lockstep.
        let wait = self.rng.between(0, u64::from(self.config.acd.probe_wait_ms));
        self.timer = now.add_millis(wait);
        self.publish(out);
    }

    fn probe_step(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let Some(addr) = self.probing.as_ref().map(|l| l.address) else {
            return self.enter_init(now, 0, out);
        };
        let acd = self.config.acd;
        if self.probes_sent < acd.probe_count {
            let frame = build::arp_probe(self.config.mac, addr);
            self.transmit(frame, out);
            self.probes_sent += 1;
            let wait = if self.probes_sent < acd.probe_count {
                self.rng
                    .between(u64::from(acd.probe_min_ms), u64::from(acd.probe_max_ms))
            } else {
                // ANNOUNCE_WAIT after the last probe.
                u64::from(acd.announce_wait_ms)
            };
            self.timer = now.add_millis(wait);
        } else if let Some(lease) = self.probing.take() {
            self.bind(now, lease, true, out);
        }
    }

    /// RFC 5227 2.1.1: a conflict during probing -> DECLINE (RFC 2131 4.4.1,
    /// broadcast, 50 + 54; systemd#39460 forgot this) and start over.
    fn decline(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let Some(lease) = self.probing.take() else {
            return;
        };
        self.send_from_nowhere(
            now,
            MessageType::Decline,
            Some(lease.address),
            Some(lease.server_id),
            out,
        );
        self.counters.declines += 1;
        self.counters.conflicts += 1;
        self.consecutive_conflicts += 1;
        let delay = self.conflict_delay();
        self.enter_init(now, delay, out);
    }

    /// Wait before trying another address after `consecutive_conflicts`.
    fn conflict_delay(&self) -> u64 {
        match self.consecutive_conflicts {
            n if n >= MAX_CONFLICTS => RATE_LIMIT_INTERVAL_MS,
            n if n >= REPEATED_CONFLICTS => DECLINE_DELAY_REPEATED_MS,
            _ => DECLINE_DELAY_MS,
        }
    }

    // ---- BOUND -------------------------------------------------------------

    /// Take `lease` into use. Order matters for the actuator: the old
    /// address goes first if it differs, then the new one, then the state
    /// file, then the status, then the RFC 5227 2.3 announcements.
    fn bind(&mut self, now: Instant, lease: Lease, announce: bool, out: &mut Vec<EngineAction>) {
        let same_address = self.lease.as_ref().is_some_and(|l| l.address == lease.address);
        if let Some(old) = self.lease.take()
            && old.address != lease.address
        {
            out.push(EngineAction::RemoveLease { lease: old });
        }
        if !same_address {
            self.bound_since = now;
            self.last_defence = None;
            self.insisted_defences = 0;
        }
        out.push(EngineAction::ApplyLease {
            lease: lease.clone(),
            valid_secs: lease.remaining_secs(now),
        });
        out.push(EngineAction::PersistLease(Some(lease.clone())));
        self.timer = lease.renew_at();
        self.set_lease(Some(lease));
        self.state = ClientState::Bound;
        self.selected = None;
        self.probing = None;
        // The NAK and conflict streaks survive a bind: a server that NAKs
        // every renewal, or a conflict that returns, must meet a growing
        // back-off; `handle` ends them once a lease has held SETTLED_MS.
        self.apply_retry_at = Instant::NEVER;
        self.apply_backoff_ms = APPLY_RETRY_FIRST_MS;
        self.stop_announcing();
        self.publish(out);
        let acd = self.config.acd;
        if announce && acd.enabled && acd.announce_count > 0 {
            self.announces_left = acd.announce_count;
            self.announce(now, out);
        }
    }

    fn announce(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let Some(addr) = self.lease.as_ref().map(|l| l.address) else {
            return self.stop_announcing();
        };
        if self.announces_left == 0 || !self.holds_address_state() {
            return self.stop_announcing();
        }
        let frame = build::arp_announce(self.config.mac, addr);
        self.transmit(frame, out);
        self.announces_left -= 1;
        self.announce_at = if self.announces_left > 0 {
            now.add_millis(u64::from(self.config.acd.announce_interval_ms))
        } else {
            Instant::NEVER
        };
    }

    fn holds_address_state(&self) -> bool {
        matches!(
            self.state,
            ClientState::Bound | ClientState::Renewing | ClientState::Rebinding
        )
    }

    // ---- RENEWING / REBINDING (RFC 2131 4.4.5) -----------------------------

    fn enter_renewing(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.new_exchange(now);
        self.state = ClientState::Renewing;
        self.send_renew(now, out);
        self.publish(out);
    }

    /// Unicast to the server that granted the lease, from our address, with
    /// ciaddr set and neither 50 nor 54 (RFC 2131 4.3.2 table 4).
    ///
    /// Every RENEWING / REBINDING transmission gets a fresh xid: they are at
    /// least a minute apart, and a fresh xid ties an ACK to the exact
    /// transmission it answers, whose time starts the new lease (4.4.1).
    fn send_renew(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.send_lease_request(now, false, out);
    }

    fn enter_rebinding(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.state = ClientState::Rebinding;
        self.transmissions = 0;
        self.send_rebind(now, out);
        self.publish(out);
    }

    /// Broadcast to any server, ciaddr set, no 50 / 54 (RFC 2131 4.4.5).
    fn send_rebind(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.send_lease_request(now, true, out);
    }

    /// The REQUEST of RENEWING (unicast to the server, until T2) and of
    /// REBINDING (broadcast, until expiry): ciaddr set, no 50 / 54, a fresh
    /// xid. The next try comes after half the time left to that deadline, at
    /// least 60 s, never past it (RFC 2131 4.4.5).
    fn send_lease_request(&mut self, now: Instant, rebinding: bool, out: &mut Vec<EngineAction>) {
        let Some(lease) = self.lease.as_ref() else {
            return self.enter_init(now, 0, out);
        };
        let addr = lease.address;
        let (dst_mac, dst_ip, deadline) = if rebinding {
            (BROADCAST_MAC, Ipv4Addr::BROADCAST, lease.expires_at())
        } else {
            (self.server_mac, lease.server_id, lease.rebind_at())
        };
        self.xid = self.rng.next_u32();
        self.request_sent_at = now;
        let o = build::Outgoing {
            kind: MessageType::Request,
            xid: self.xid,
            secs: self.secs(now),
            broadcast: false,
            ciaddr: addr,
            requested: None,
            server_id: None,
        };
        self.send_dhcp(&o, dst_mac, addr, dst_ip, out);
        self.transmissions += 1;
        let wait = (deadline.since(now) / 2).max(MIN_RENEW_RETRY_MS);
        self.timer = now.add_millis(wait).min(deadline);
    }

    // ---- timers -------------------------------------------------------------

    fn run_timers(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        for _ in 0..MAX_TIMER_STEPS {
            if self.expire_if_due(now, out) {
                continue;
            }
            if self.timer <= now {
                self.timer = Instant::NEVER;
                self.on_state_timer(now, out);
            } else if self.announce_at <= now {
                self.announce_at = Instant::NEVER;
                self.announce(now, out);
            } else if self.apply_retry_at <= now {
                self.apply_retry_at = Instant::NEVER;
                self.retry_apply(now, out);
            } else {
                return;
            }
        }
    }

    /// Lease expiry (RFC 2131 4.4.5: "the client MUST immediately stop any
    /// other network processing and requests INIT"). Returns whether it fired.
    fn expire_if_due(&mut self, now: Instant, out: &mut Vec<EngineAction>) -> bool {
        if self.lease.as_ref().is_none_or(|l| l.expires_at() > now) {
            return false;
        }
        self.counters.expiries += 1;
        self.drop_lease(out);
        match self.state {
            ClientState::Bound
            | ClientState::Renewing
            | ClientState::Rebinding
            | ClientState::InitReboot
            | ClientState::Rebooting => self.enter_init(now, 0, out),
            // A new acquisition is already under way, or the link is down:
            // only the old address goes.
            _ => self.publish(out),
        }
        true
    }

    fn on_state_timer(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        match self.state {
            ClientState::Init => {
                self.state = ClientState::Selecting;
                self.send_discover(now, out);
                self.publish(out);
            }
            ClientState::Selecting => self.send_discover(now, out),
            ClientState::Requesting => {
                if self.transmissions >= REQUEST_TRANSMISSIONS {
                    self.enter_init(now, 0, out);
                } else {
                    self.send_select_request(now, out);
                }
            }
            ClientState::Probing => self.probe_step(now, out),
            ClientState::Bound => self.enter_renewing(now, out),
            ClientState::Renewing => {
                let t2 = self.lease.as_ref().map_or(now, Lease::rebind_at);
                if now >= t2 {
                    self.enter_rebinding(now, out);
                } else {
                    self.send_renew(now, out);
                }
            }
            ClientState::Rebinding => self.send_rebind(now, out),
            ClientState::InitReboot | ClientState::Rebooting => {
                if self.transmissions >= INIT_REBOOT_TRANSMISSIONS {
                    // Silence: look for a server, keeping the address until
                    // it expires or another one replaces it.
                    self.enter_init(now, 0, out);
                } else {
                    self.send_init_reboot(now, out);
                }
            }
            ClientState::LinkDown | ClientState::Stopped => {}
        }
    }

    fn retry_apply(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        if let Some(lease) = &self.lease
            && lease.expires_at() > now
            && lease.check(&self.config.limits).is_ok()
        {
            out.push(EngineAction::ApplyLease {
                lease: lease.clone(),
                valid_secs: lease.remaining_secs(now),
            });
        }
    }

    // ---- other events ----------------------------------------------------

    fn on_intent_result(&mut self, now: Instant, kind: IntentKind, ok: bool) {
        if kind != IntentKind::ApplyLease {
            return;
        }
        if ok {
            self.apply_retry_at = Instant::NEVER;
            self.apply_backoff_ms = APPLY_RETRY_FIRST_MS;
        } else if self.lease.is_some() {
            // Keep the lease (field notes item 3) and ask again later.
            self.apply_retry_at = now.add_millis(self.apply_backoff_ms);
            self.apply_backoff_ms = (self.apply_backoff_ms * 2).min(APPLY_RETRY_MAX_MS);
        }
    }

    /// Carrier lost: stop transmitting, keep the lease and its expiry.
    fn enter_link_down(&mut self, out: &mut Vec<EngineAction>) {
        if self.state == ClientState::LinkDown {
            return;
        }
        self.state = ClientState::LinkDown;
        self.timer = Instant::NEVER;
        self.selected = None;
        self.probing = None;
        self.stop_announcing();
        self.publish(out);
    }

    /// Carrier back: we may be on another network now, so verify the lease
    /// at once (INIT-REBOOT) instead of waiting for T1 (field notes item 12).
    fn on_link_up(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        if self.state != ClientState::LinkDown {
            return;
        }
        if self.lease.is_some() {
            self.enter_init_reboot(now, out);
        } else {
            self.enter_init(now, 0, out);
        }
    }

    /// RFC 2131 4.4.6: RELEASE is unicast to the server, ciaddr set, 54
    /// included, 50 absent. Without a release the address stays (DESIGN.md
    /// principle 5: a restart re-adopts it).
    fn stop(&mut self, force_release: bool, out: &mut Vec<EngineAction>) {
        if self.config.release_on_stop || force_release {
            if let Some((addr, server)) = self.lease.as_ref().map(|l| (l.address, l.server_id))
                && self.state != ClientState::LinkDown
            {
                self.xid = self.rng.next_u32();
                let o = build::Outgoing {
                    kind: MessageType::Release,
                    xid: self.xid,
                    secs: 0,
                    broadcast: false,
                    ciaddr: addr,
                    requested: None,
                    server_id: Some(server),
                };
                let mac = self.server_mac;
                self.send_dhcp(&o, mac, addr, server, out);
            }
            self.drop_lease(out);
        }
        self.state = ClientState::Stopped;
        self.timer = Instant::NEVER;
        self.apply_retry_at = Instant::NEVER;
        self.selected = None;
        self.probing = None;
        self.stop_announcing();
        self.publish(out);
    }

    // ---- inbound frames ---------------------------------------------------

    fn on_frame(
        &mut self,
        now: Instant,
        data: &[u8],
        checksum_offloaded: bool,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        self.counters.frames_received += 1;
        match frame::parse_frame(data, checksum_offloaded)? {
            Inbound::Arp(arp) => self.on_arp(now, &arp, out),
            Inbound::Dhcp(udp) => self.on_dhcp(now, &udp, out),
        }
    }

    fn on_arp(
        &mut self,
        now: Instant,
        arp: &ArpPacket,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        match self.state {
            ClientState::Probing => {
                let Some(candidate) = self.probing.as_ref().map(|l| l.address) else {
                    return Err(DropReason::Unexpected);
                };
                // Our own probe echoed back is no conflict (field notes 15).
                if arp.sender_mac == self.config.mac {
                    return Ok(());
                }
                // RFC 5227 2.1.1: someone uses the address (sender IP), or
                // someone else probes for it at the same time.
                let probe_for_it =
                    arp.op == ArpOp::Request && arp.sender_ip.is_unspecified() && arp.target_ip == candidate;
                if arp.sender_ip == candidate || probe_for_it {
                    self.decline(now, out);
                }
                Ok(())
            }
            ClientState::Bound | ClientState::Renewing | ClientState::Rebinding => {
                let Some(addr) = self.lease.as_ref().map(|l| l.address) else {
                    return Err(DropReason::Unexpected);
                };
                if arp.sender_mac != self.config.mac && arp.sender_ip == addr {
                    self.defend(now, addr, out);
                }
                Ok(())
            }
            _ => Err(DropReason::Unexpected),
        }
    }

    /// RFC 5227 2.4: a conflicting ARP for the address we hold. We defend
    /// with one announcement per DEFEND_INTERVAL at most, as (b) and (c) ask.
    /// (b) would give the address up at the first conflict that insists
    /// (arrives within DEFEND_INTERVAL of our defence); a DHCP-assigned
    /// address is given up only when the conflict insisted after
    /// DEFENCES_BEFORE_YIELD defences in a row, each defence following the
    /// previous one within two intervals: a real duplicate that keeps using
    /// the address loses it to us or we to it within ~20 s, while a few
    /// forged ARPs only cost one announcement per 10 s.
    fn defend(&mut self, now: Instant, addr: Ipv4Addr, out: &mut Vec<EngineAction>) {
        self.counters.conflicts += 1;
        let since_defence = self.last_defence.map(|t| now.since(t));
        if since_defence.is_some_and(|d| d < DEFEND_INTERVAL_MS) {
            if !self.defence_insisted {
                self.defence_insisted = true;
                self.insisted_defences += 1;
                if self.insisted_defences >= DEFENCES_BEFORE_YIELD {
                    self.yield_address(now, out);
                }
            }
            return;
        }
        // The streak goes on only if the last defence was insisted upon and
        // the conflict did not pause for a whole interval since.
        let continues = self.defence_insisted && since_defence.is_some_and(|d| d < 2 * DEFEND_INTERVAL_MS);
        if !continues {
            self.insisted_defences = 0;
        }
        self.last_defence = Some(now);
        self.defence_insisted = false;
        let frame = build::arp_announce(self.config.mac, addr);
        self.transmit(frame, out);
    }

    /// Give up the bound address to a conflict that insisted; the next
    /// address waits as after a DECLINE (RFC 5227 2.1.1 rate limits).
    fn yield_address(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        self.last_defence = None;
        self.defence_insisted = false;
        self.insisted_defences = 0;
        self.consecutive_conflicts += 1;
        self.drop_lease(out);
        let delay = self.conflict_delay();
        self.enter_init(now, delay, out);
    }

    /// States in which a DHCP reply to our xid may arrive.
    fn awaiting_reply(&self) -> bool {
        matches!(
            self.state,
            ClientState::Selecting
                | ClientState::Requesting
                | ClientState::Rebooting
                | ClientState::Renewing
                | ClientState::Rebinding
        )
    }

    fn on_dhcp(
        &mut self,
        now: Instant,
        udp: &UdpDatagram<'_>,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        let mac = self.config.mac;
        // Cheap checks first, on the frame and the fixed header, so that
        // other clients' traffic and spoofing attempts cost no allocation.
        if udp.src_port != DHCP_SERVER_PORT || (udp.dst_mac != mac && udp.dst_mac != BROADCAST_MAC) {
            return Err(DropReason::NotForUs);
        }
        let h = build::peek_header(udp.payload).ok_or(DropReason::BadDhcp)?;
        if h.op != 2 || h.htype != 1 || h.hlen != 6 || h.chaddr != mac {
            return Err(DropReason::NotForUs);
        }
        if !self.awaiting_reply() {
            return Err(DropReason::Unexpected);
        }
        if h.xid != self.xid {
            return Err(DropReason::NotForUs);
        }
        let msg = Message::parse(udp.payload).map_err(|_| DropReason::BadDhcp)?;
        // RFC 6842 section 3: a reply carrying a client identifier must carry
        // ours, else it is for another client sharing our chaddr.
        if let Some(cid) = &msg.options.client_id
            && cid.as_slice() != self.client_id.as_slice()
        {
            return Err(DropReason::NotForUs);
        }
        match msg.options.message_type {
            Some(MessageType::Offer) => self.on_offer(now, &msg, udp, out),
            Some(MessageType::Ack) => self.on_ack(now, &msg, udp, out),
            Some(MessageType::Nak) => self.on_nak(now, &msg, udp, out),
            // FORCERENEW (RFC 3203) is accepted only with RFC 6704
            // authentication, which we do not implement: ignore it
            // (CVE-2020-13529). BOOTP replies and anything else: ignored.
            _ => Err(DropReason::Unexpected),
        }
    }

    /// `lease_from_reply` plus the policy check, counting refusals.
    fn lease_of(&mut self, msg: &Message, udp: &UdpDatagram<'_>, at: Instant) -> Result<Lease, DropReason> {
        let limits = self.config.limits;
        let (mut lease, dropped) = lease_and_dropped_routes(msg, udp.src_ip, at, &limits)
            .and_then(|(l, n)| l.check(&limits).map(|()| (l, n)))
            .map_err(|r| {
                self.counters.leases_refused += 1;
                DropReason::Refused(r)
            })?;
        self.counters.routes_dropped += dropped as u64;
        floor_lease_times(&mut lease, self.config.min_lease_secs);
        Ok(lease)
    }

    /// SELECTING: the first acceptable OFFER wins (RFC 2131 4.4.1 lets the
    /// client choose; waiting for more costs boot time).
    fn on_offer(
        &mut self,
        now: Instant,
        msg: &Message,
        udp: &UdpDatagram<'_>,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        if self.state != ClientState::Selecting {
            return Err(DropReason::Unexpected);
        }
        self.counters.offers += 1;
        let lease = self.lease_of(msg, udp, now)?;
        // 54 from the offer, or the reply's source when a server omits it
        // (field notes item 8: some servers NAK a REQUEST without 54).
        self.selected = Some((lease.address, lease.server_id));
        self.offer_mac = udp.src_mac;
        self.state = ClientState::Requesting;
        self.transmissions = 0;
        self.retransmit_ms = u64::from(self.config.first_retransmit_ms).max(1);
        self.send_select_request(now, out);
        self.publish(out);
        Ok(())
    }

    fn on_ack(
        &mut self,
        now: Instant,
        msg: &Message,
        udp: &UdpDatagram<'_>,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        match self.state {
            ClientState::Requesting => {
                let Some((addr, server)) = self.selected else {
                    return Err(DropReason::Unexpected);
                };
                // RFC 2131 4.3.2: the ACK to a SELECTING REQUEST confirms the
                // address named in its option 50; an ACK for another one
                // answers something we did not ask (as in RENEWING below).
                if msg.options.server_id.is_some_and(|s| s != server) || msg.yiaddr != addr {
                    return Err(DropReason::Unexpected);
                }
                self.counters.acks += 1;
                let lease = self.lease_of(msg, udp, self.request_sent_at)?;
                self.server_mac = udp.src_mac;
                self.server_src_ip = udp.src_ip;
                if self.config.acd.enabled {
                    self.enter_probing(now, lease, out);
                } else {
                    // No ACD: bind on the spot, boot speed matters.
                    self.bind(now, lease, false, out);
                }
            }
            ClientState::Rebooting => {
                let held = self.lease.as_ref().map(|l| l.address);
                if held != Some(msg.yiaddr) {
                    return Err(DropReason::Unexpected);
                }
                self.counters.acks += 1;
                let lease = self.lease_of(msg, udp, self.request_sent_at)?;
                self.server_mac = udp.src_mac;
                self.server_src_ip = udp.src_ip;
                // An address we already hold is not probed again; it is
                // announced (RFC 5227 2.3) since we may have moved.
                self.bind(now, lease, true, out);
            }
            ClientState::Renewing | ClientState::Rebinding => {
                let held = self.lease.as_ref().map(|l| l.address);
                if held != Some(msg.yiaddr) {
                    return Err(DropReason::Unexpected);
                }
                self.counters.acks += 1;
                let lease = self.lease_of(msg, udp, self.request_sent_at)?;
                if self.state == ClientState::Renewing {
                    self.counters.renewals += 1;
                } else {
                    self.counters.rebinds += 1;
                }
                self.server_mac = udp.src_mac;
                self.server_src_ip = udp.src_ip;
                self.bind(now, lease, false, out);
            }
            _ => return Err(DropReason::Unexpected),
        }
        Ok(())
    }

    /// RFC 2131 4.4.1 / 4.4.5: a NAK sends the client back to INIT.
    fn on_nak(
        &mut self,
        now: Instant,
        msg: &Message,
        udp: &UdpDatagram<'_>,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        // The xid (fresh per transmission) and chaddr were checked already.
        let from = msg.options.server_id.unwrap_or(udp.src_ip);
        let held = self.lease.as_ref().map(|l| (l.address, l.server_id));
        match self.state {
            ClientState::Requesting => {
                // Only the server we selected may refuse our REQUEST; the
                // others saw it as a decline of their own offers. Its NAK
                // comes the way its OFFER came: a copied option 54 from
                // another MAC is not it.
                let Some((addr, server)) = self.selected else {
                    return Err(DropReason::Unexpected);
                };
                if from != server || udp.src_mac != self.offer_mac {
                    return Err(DropReason::NotForUs);
                }
                self.counters.naks += 1;
                // An address still held from before stays unless it is the
                // very one refused.
                if held.is_some_and(|(a, _)| a == addr) {
                    self.drop_lease(out);
                }
            }
            // INIT-REBOOT: we may be on another network, whose server is
            // not the one we knew (field notes item 12); REBINDING asks
            // every server (RFC 2131 4.4.5). Any server answering our xid
            // counts; the back-off below bounds what that can cost.
            ClientState::Rebooting | ClientState::Rebinding => {
                self.counters.naks += 1;
                self.drop_lease(out);
            }
            // RENEWING was unicast to our server (RFC 2131 4.4.5): its NAK
            // names it (54), and comes from the MAC and address our ACKs
            // came from (the server's, or a relay's).
            ClientState::Renewing => {
                let Some((_, server)) = held else {
                    return Err(DropReason::Unexpected);
                };
                let from_our_server = from == server
                    && udp.src_mac == self.server_mac
                    && (udp.src_ip == server || udp.src_ip == self.server_src_ip);
                if !from_our_server {
                    return Err(DropReason::NotForUs);
                }
                self.counters.naks += 1;
                self.drop_lease(out);
            }
            _ => return Err(DropReason::Unexpected),
        }
        let delay = match self.consecutive_naks {
            0 => 0,
            n => NAK_BACKOFF_FIRST_MS
                .saturating_mul(1 << (n - 1).min(16))
                .min(NAK_BACKOFF_MAX_MS),
        };
        self.consecutive_naks = self.consecutive_naks.saturating_add(1);
        self.enter_init(now, delay, out);
        Ok(())
    }
}
