//! The actuator role: the only role that changes the host. It holds
//! CAP_NET_ADMIN and nothing else, an rtnetlink socket bound to nothing but
//! what the policy allows, and directory fds for the files it writes.
//!
//! Every request is re-checked against the policy fixed at start (this
//! interface, [`Lease::check`] with the configured limits, a Remove only for
//! the lease in force), because the engine that asked may be compromised.
//! Refusals are logged, counted by the supervisor and answered.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use mirage_ipc::{
    FromActuator, INFINITE_LEASE, IntentKind, Lease, Limits, Outcome, PublishedStatus, Refusal, ToActuator,
};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::netlink::{LinkEvent, LinkMonitor, MAIN_TABLE, Rtnl};
use mirage_sdk::service::publish::{self, Publication};
use mirage_sdk::service::state;

use mirage_dhcp::plan::RoleSettings;
use mirage_sdk::role::Starting;

use super::{FD_LINK_EVENTS, FD_RESOLV_DIR, FD_RESOLV_FILE, FD_RTNL, FD_RUN_DIR, FD_STATE_DIR};

/// Route metric for what we install: one per interface (as dhcpcd does),
/// because the kernel matches routes on destination and metric only, so two
/// interfaces must never share one; above static routes' usual 0..=100.
fn route_metric(ifindex: u32) -> u32 {
    1000 + ifindex
}

/// Largest status message accepted for publishing (bounded anyway by the
/// IPC cap; this keeps the files small).
const MAX_PUBLISHED: usize = 16 * 1024;

struct Actuator<'a> {
    args: &'a RoleSettings,
    limits: Limits,
    rtnl: Rtnl,
    /// The lease whose address is on the interface, as far as we know.
    applied: Option<Lease>,
    min_mtu: u32,
    max_mtu: u32,
    /// The device's MTU before a lease first changed it, put back when no
    /// lease asks for one any more (RemoveLease, a lease without option 26).
    mtu_before: Option<u32>,
    /// Routing table for the lease's routes (`route_table`).
    table: u32,
}

fn dir(fd: RawFd) -> BorrowedFd<'static> {
    mirage_sdk::fd::borrow_fixed(fd)
}

pub fn run(role: Starting) -> Result<(), String> {
    let settings: RoleSettings = role.config()?;
    let args = &settings;
    let mut rtnl = Rtnl::from_raw_fd(FD_RTNL).map_err(|e| format!("rtnetlink: {e}"))?;
    let mut monitor =
        LinkMonitor::from_raw_fd(FD_LINK_EVENTS, args.ifindex).map_err(|e| format!("link events: {e}"))?;
    // Every fd is checked and wrapped before the sandbox closes the calls
    // that checking needs (getsockopt, fcntl).
    let chan = role.enter()?.channel;
    let link = rtnl
        .link(args.ifindex)
        .map_err(|e| format!("link {}: {e}", args.interface))?;
    let mut act = Actuator {
        args,
        limits: args.limits,
        rtnl,
        applied: None,
        min_mtu: link.min_mtu.unwrap_or(0).max(576),
        max_mtu: link.max_mtu.unwrap_or(65535),
        mtu_before: None,
        table: args.route_table.unwrap_or(MAIN_TABLE),
    };
    act.adopt_stored_lease();
    let mut deferred = Deferred::with_duid(args.store_duid.clone(), Instant::now());
    loop {
        let timeout = deferred.timeout_ms(Instant::now());
        let ready =
            wait_readable(&[chan.as_fd(), monitor.as_fd()], timeout).map_err(|e| format!("poll: {e}"))?;
        if ready[1] {
            match monitor.read_events() {
                Ok(events) => {
                    for ev in events {
                        let msg = match ev {
                            LinkEvent::CarrierUp => FromActuator::LinkUp,
                            LinkEvent::CarrierDown => FromActuator::LinkDown,
                        };
                        chan.send(&msg).map_err(|e| format!("send: {e}"))?;
                    }
                }
                Err(e) => log::warn!("link events: {e}"),
            }
        }
        if ready[0] {
            let msg = match chan.recv::<ToActuator>() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    // The supervisor is stopping: nothing deferred is lost.
                    act.run_deferred(&mut deferred, &chan)?;
                    return Ok(());
                }
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            };
            match msg {
                ToActuator::Publish(status) => {
                    if deferred.publish(status, Instant::now()) {
                        // Answered now, never written: a newer status replaced it.
                        answer(&chan, IntentKind::PublishStatus, Outcome::Done)?;
                    }
                }
                other => {
                    let (kind, outcome) = act.handle(other);
                    answer(&chan, kind, outcome)?;
                }
            }
        }
        if deferred.is_due(Instant::now()) {
            act.run_deferred(&mut deferred, &chan)?;
        }
    }
}

fn answer(chan: &Channel, kind: IntentKind, outcome: Outcome) -> Result<(), String> {
    match &outcome {
        Outcome::Done => {}
        Outcome::Refused(r) => log::warn!("refused {kind:?}: {r}"),
        Outcome::Failed(e) => log::warn!("{kind:?} failed: {e}"),
    }
    chan.send(&FromActuator::Result { kind, outcome })
        .map_err(|e| format!("send: {e}"))
}

/// How long file writes that nobody waits for are held back.
///
/// Status publishes (status.json and metrics.prom) and storing a first
/// start's DUID are the actuator's slowest work: each creates files, with
/// fsyncs for the DUID, which takes from tens of microseconds on tmpfs to
/// milliseconds on a busy disk. At start-up they arrive while the lease is
/// being acquired, and written at once they would delay the ApplyLease that
/// follows a round trip later. Held back, the lease goes first, and a
/// status that a newer one replaces in the meantime is not written at all
/// (RFC 2131 exchanges on a LAN take a few milliseconds; the files lag
/// behind by at most this).
const DEFER: Duration = Duration::from_millis(25);

/// Writes held back by [`DEFER`].
#[derive(Debug, Default)]
struct Deferred {
    /// The newest status not written yet.
    status: Option<PublishedStatus>,
    /// A new DUID (hex text) for the state directory.
    duid: Option<String>,
    /// When the held-back writes are done; set by the first of them, so no
    /// stream of newer ones can postpone them for ever.
    due: Option<Instant>,
}

impl Deferred {
    fn with_duid(duid: Option<String>, now: Instant) -> Self {
        Deferred {
            due: duid.as_ref().map(|_| now + DEFER),
            status: None,
            duid,
        }
    }

    /// Hold `status` back; true if it replaced one that was held back (that
    /// one is answered without being written).
    fn publish(&mut self, status: PublishedStatus, now: Instant) -> bool {
        self.due.get_or_insert(now + DEFER);
        self.status.replace(status).is_some()
    }

    /// Milliseconds until the writes are due (rounded up, so the wake-up is
    /// never early), or `None` with nothing held back.
    fn timeout_ms(&self, now: Instant) -> Option<u64> {
        self.due
            .map(|d| d.saturating_duration_since(now).as_micros().div_ceil(1000) as u64)
    }

    fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| now >= d)
    }

    fn take(&mut self) -> (Option<PublishedStatus>, Option<String>) {
        self.due = None;
        (self.status.take(), self.duid.take())
    }
}

/// Store a first start's DUID durably (atomic replace with fsyncs), for
/// the supervisor to read on later starts. A failure is only a warning: the
/// DUID-LL is derived from the MAC again next time.
fn store_duid(text: &str) {
    if !valid_duid_text(text) {
        log::warn!("not storing a malformed DUID");
        return;
    }
    let line = format!("{text}\n");
    if let Err(e) = files::write_atomic(dir(FD_STATE_DIR), "duid", line.as_bytes(), 0o600) {
        log::warn!("cannot store the DUID: {e}");
    }
}

/// A DUID as the supervisor passes it: hex digits, 2 per byte, at most the
/// 130 bytes RFC 8415 section 11.1 allows.
fn valid_duid_text(hex: &str) -> bool {
    !hex.is_empty()
        && hex.len().is_multiple_of(2)
        && hex.len() <= 260
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Actuator<'_> {
    /// Do the held-back writes (DUID first: it is the one that must last),
    /// answering the status publish.
    fn run_deferred(&mut self, deferred: &mut Deferred, chan: &Channel) -> Result<(), String> {
        let (status, duid) = deferred.take();
        if let Some(text) = duid {
            store_duid(&text);
        }
        if let Some(status) = status {
            let outcome = self.publish(&status);
            answer(chan, IntentKind::PublishStatus, outcome)?;
        }
        Ok(())
    }

    /// After a daemon restart the previous run's address is still on the
    /// interface; knowing it lets a later NAK or expiry remove it.
    fn adopt_stored_lease(&mut self) {
        let name = super::lease_file_name(&self.args.interface);
        let Ok(Some(stored)) = state::load::<StoredLease>(dir(FD_STATE_DIR), &name) else {
            return;
        };
        let lease = stored.rebase(boottime(), realtime_ms());
        let present = self.rtnl.addresses(self.args.ifindex).map(|addrs| {
            addrs
                .iter()
                .any(|a| a.addr == lease.address && a.prefix_len == lease.prefix_len)
        });
        if matches!(present, Ok(true)) && lease.check(&self.limits).is_ok() {
            self.applied = Some(lease);
        }
    }

    fn handle(&mut self, msg: ToActuator) -> (IntentKind, Outcome) {
        match msg {
            ToActuator::Apply { lease, valid_secs } => {
                (IntentKind::ApplyLease, self.apply(&lease, valid_secs))
            }
            ToActuator::Remove { lease } => (IntentKind::RemoveLease, self.remove(&lease)),
            ToActuator::Persist(lease) => (IntentKind::PersistLease, self.persist(lease.as_ref())),
            ToActuator::Publish(status) => (IntentKind::PublishStatus, self.publish(&status)),
        }
    }

    /// The policy for ApplyLease, without side effects.
    fn vet_apply(&self, lease: &Lease, valid_secs: u32) -> Result<(), Refusal> {
        lease.check(&self.limits)?;
        // The kernel refuses a zero lifetime; an expired lease is removed, not applied.
        if valid_secs == 0 || (lease.lease_secs != INFINITE_LEASE && valid_secs > lease.lease_secs) {
            return Err(Refusal::BadLeaseTimes);
        }
        Ok(())
    }

    fn apply(&mut self, lease: &Lease, valid_secs: u32) -> Outcome {
        if let Err(r) = self.vet_apply(lease, valid_secs) {
            return Outcome::Refused(r);
        }
        let index = self.args.ifindex;
        // A different address replaces the old one: remove the old first so
        // that its routes do not linger with a stale source.
        if let Some(old) = self.applied.clone()
            && (old.address != lease.address || old.prefix_len != lease.prefix_len)
            && let Err(e) = self.unconfigure(&old)
        {
            return Outcome::Failed(format!("removing the previous address: {e}"));
        }
        let result = (|| -> std::io::Result<()> {
            // Same address again: NLM_F_REPLACE updates the lifetimes in place,
            // the address never disappears (a restart or renewal keeps TCP up).
            self.rtnl.replace_address(
                index,
                lease.address,
                lease.prefix_len,
                (lease.prefix_len < 31).then(|| lease.broadcast()),
                valid_secs,
                valid_secs,
            )?;
            match lease.mtu {
                Some(mtu) => {
                    let mtu = u32::from(mtu).clamp(self.min_mtu, self.max_mtu);
                    let link = self.rtnl.link(index)?;
                    if link.mtu != mtu {
                        self.rtnl.set_mtu(index, mtu)?;
                        self.mtu_before.get_or_insert(link.mtu);
                    }
                }
                None => self.restore_mtu()?,
            }
            // Stale routes of the previous lease go; then ours, in order (host
            // routes to gateways come first in the lease, RFC 3442 / cloud /32).
            if let Some(old) = &self.applied {
                for r in old.routes.iter().filter(|r| !lease.routes.contains(r)) {
                    let _ = self
                        .rtnl
                        .delete_route_in(self.table, index, *r, route_metric(index));
                }
            }
            for r in &lease.routes {
                self.rtnl.replace_route_in(
                    self.table,
                    index,
                    *r,
                    Some(lease.address),
                    route_metric(index),
                )?;
            }
            Ok(())
        })();
        // Whatever part succeeded is on the interface now.
        self.applied = Some(lease.clone());
        if let Err(e) = result {
            return Outcome::Failed(e.to_string());
        }
        if let Some(name) = &self.args.resolv_name
            && !lease.dns_servers.is_empty()
        {
            let resolv = files::resolv_conf(&self.args.interface, lease);
            if !resolv.dropped.is_empty() {
                log::warn!(
                    "{name}: left out {} search domain(s) that are resolv.conf keywords or do not fit \
                     what resolvers read (at most {} domains in {} bytes): {}",
                    resolv.dropped.len(),
                    files::MAX_SEARCH_DOMAINS,
                    files::MAX_SEARCH_LINE,
                    resolv.dropped.join(" ")
                );
            }
            let text = resolv.text;
            if let Err(e) = files::write_atomic(dir(FD_RESOLV_DIR), name, text.as_bytes(), 0o644) {
                log::debug!("{name} cannot be replaced ({e}); rewriting it in place");
                if let Err(e) = files::rewrite_in_place(dir(FD_RESOLV_FILE), text.as_bytes()) {
                    return Outcome::Failed(format!("writing {name}: {e}"));
                }
            }
        }
        Outcome::Done
    }

    fn remove(&mut self, lease: &Lease) -> Outcome {
        let Some(applied) = self.applied.clone() else {
            return Outcome::Refused(Refusal::NotOurLease);
        };
        if applied.address != lease.address || applied.prefix_len != lease.prefix_len {
            return Outcome::Refused(Refusal::NotOurLease);
        }
        match self.unconfigure(&applied) {
            Ok(()) => {
                self.applied = None;
                Outcome::Done
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    fn unconfigure(&mut self, lease: &Lease) -> std::io::Result<()> {
        let index = self.args.ifindex;
        for r in lease.routes.iter().rev() {
            let _ = self
                .rtnl
                .delete_route_in(self.table, index, *r, route_metric(index));
        }
        match self.rtnl.delete_address(index, lease.address, lease.prefix_len) {
            Err(e) if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) => return Err(e),
            _ => {}
        }
        self.restore_mtu()
    }

    /// Put back the MTU the device had before a lease changed it, if one did.
    fn restore_mtu(&mut self) -> std::io::Result<()> {
        let Some(mtu) = self.mtu_before else {
            return Ok(());
        };
        let index = self.args.ifindex;
        if self.rtnl.link(index)?.mtu != mtu {
            self.rtnl.set_mtu(index, mtu)?;
        }
        self.mtu_before = None;
        Ok(())
    }

    fn persist(&mut self, lease: Option<&Lease>) -> Outcome {
        let name = super::lease_file_name(&self.args.interface);
        let result = match lease {
            Some(l) => {
                if let Err(r) = l.check(&self.limits) {
                    return Outcome::Refused(r);
                }
                let stored = StoredLease::new(&self.args.interface, l, boottime(), realtime_ms());
                state::save(dir(FD_STATE_DIR), &name, &stored)
            }
            None => files::remove(dir(FD_STATE_DIR), &name),
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(format!("{name}: {e}")),
        }
    }

    fn publish(&mut self, status: &PublishedStatus) -> Outcome {
        // Which search domains resolv.conf leaves out follows from the lease
        // alone (`resolv_conf` is pure), so the status says it for the very
        // lease it shows.
        let search_dropped = match (&self.args.resolv_name, &status.status.lease) {
            (Some(_), Some(l)) if !l.dns_servers.is_empty() => {
                files::resolv_conf(&self.args.interface, l).dropped
            }
            _ => Vec::new(),
        };
        let p = Publication {
            status: files::render_status_json(status, &search_dropped),
            metrics: files::render_metrics(status),
        };
        if p.status.len() > MAX_PUBLISHED || p.metrics.len() > MAX_PUBLISHED {
            return Outcome::Refused(Refusal::NotAllowed);
        }
        match publish::write(dir(FD_RUN_DIR), &p) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(n: u32) -> PublishedStatus {
        PublishedStatus {
            engine_restarts: n,
            ..Default::default()
        }
    }

    #[test]
    fn publishes_are_held_back_and_only_the_newest_is_kept() {
        let t0 = Instant::now();
        let mut d = Deferred::default();
        assert_eq!(d.timeout_ms(t0), None);
        assert!(!d.is_due(t0));
        assert!(!d.publish(status(1), t0));
        assert_eq!(d.timeout_ms(t0), Some(DEFER.as_millis() as u64));
        // A newer status replaces the held one but does not postpone it.
        assert!(d.publish(status(2), t0 + Duration::from_millis(10)));
        assert_eq!(d.timeout_ms(t0 + Duration::from_millis(10)), Some(15));
        assert!(!d.is_due(t0 + DEFER - Duration::from_micros(1)));
        assert!(d.is_due(t0 + DEFER));
        assert_eq!(d.take(), (Some(status(2)), None));
        assert_eq!(d.timeout_ms(t0 + DEFER), None);
        assert!(!d.is_due(t0 + DEFER * 10));
    }

    #[test]
    fn the_wake_up_is_never_early() {
        let t0 = Instant::now();
        let mut d = Deferred::default();
        d.publish(status(1), t0);
        // 0.5 ms left rounds up to 1 ms, not down to a busy 0.
        assert_eq!(d.timeout_ms(t0 + DEFER - Duration::from_micros(500)), Some(1));
        assert_eq!(d.timeout_ms(t0 + DEFER * 2), Some(0));
    }

    #[test]
    fn a_new_duid_is_held_back_too() {
        let t0 = Instant::now();
        let mut d = Deferred::with_duid(Some("0003000102005e100001".into()), t0);
        assert!(!d.is_due(t0));
        assert!(d.is_due(t0 + DEFER));
        // A publish in between keeps the DUID's (earlier) due time.
        assert!(!d.publish(status(1), t0 + Duration::from_millis(5)));
        assert!(d.is_due(t0 + DEFER));
        assert_eq!(d.take(), (Some(status(1)), Some("0003000102005e100001".into())));
        assert_eq!(Deferred::with_duid(None, t0).timeout_ms(t0), None);
    }

    #[test]
    fn only_well_formed_duid_text_is_stored() {
        assert!(valid_duid_text("0003000102005e100001"));
        assert!(valid_duid_text("00030001AABBCCDDEEFF"));
        for bad in [
            "",
            "\n",
            "0011\n",
            "abc",
            "zz",
            "../../x",
            "00 11",
            &"00".repeat(131),
            "é0",
        ] {
            assert!(!valid_duid_text(bad), "{bad:?}");
        }
        assert!(valid_duid_text(&"00".repeat(130)));
    }
}
