//! The actuator role: the only role that changes the host. It holds
//! CAP_NET_ADMIN and nothing else, an rtnetlink socket bound to nothing but
//! what the policy allows, and directory fds for the files it writes.
//!
//! Every request is re-checked against the policy fixed at start (this
//! interface, [`Lease::check`] with the configured limits, a Remove only for
//! the lease in force), because the engine that asked may be compromised.
//! Refusals are logged, counted by the supervisor and answered.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use mirage_ipc::{FromActuator, INFINITE_LEASE, IntentKind, Lease, Limits, Outcome, Refusal, ToActuator};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::netlink::{LinkEvent, LinkMonitor, Rtnl};

use super::{
    FD_CHANNEL, FD_LINK_EVENTS, FD_RESOLV_DIR, FD_RESOLV_FILE, FD_RTNL, FD_RUN_DIR, FD_STATE_DIR, RoleArgs,
};

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
    args: &'a RoleArgs,
    limits: Limits,
    rtnl: Rtnl,
    /// The lease whose address is on the interface, as far as we know.
    applied: Option<Lease>,
    min_mtu: u32,
    max_mtu: u32,
}

fn dir(fd: RawFd) -> BorrowedFd<'static> {
    mirage_sdk::fd::borrow_fixed(fd)
}

pub fn run(args: &RoleArgs) -> Result<(), String> {
    let chan = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    let mut rtnl = Rtnl::from_raw_fd(FD_RTNL).map_err(|e| format!("rtnetlink: {e}"))?;
    let mut monitor =
        LinkMonitor::from_raw_fd(FD_LINK_EVENTS, args.ifindex).map_err(|e| format!("link events: {e}"))?;
    // Every fd is checked and wrapped before the sandbox closes the calls
    // that checking needs (getsockopt, fcntl).
    super::sandbox::enter(args, super::sandbox::Profile::Actuator)?;
    let link = rtnl
        .link(args.ifindex)
        .map_err(|e| format!("link {}: {e}", args.interface))?;
    let mut act = Actuator {
        args,
        limits: args.limits(),
        rtnl,
        applied: None,
        min_mtu: link.min_mtu.unwrap_or(0).max(576),
        max_mtu: link.max_mtu.unwrap_or(65535),
    };
    act.adopt_stored_lease();
    loop {
        let ready =
            wait_readable(&[chan.as_fd(), monitor.as_fd()], None).map_err(|e| format!("poll: {e}"))?;
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
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            };
            let (kind, outcome) = act.handle(msg);
            match &outcome {
                Outcome::Done => {}
                Outcome::Refused(r) => log::warn!("refused {kind:?}: {r}"),
                Outcome::Failed(e) => log::warn!("{kind:?} failed: {e}"),
            }
            chan.send(&FromActuator::Result { kind, outcome })
                .map_err(|e| format!("send: {e}"))?;
        }
    }
}

impl Actuator<'_> {
    /// After a daemon restart the previous run's address is still on the
    /// interface; knowing it lets a later NAK or expiry remove it.
    fn adopt_stored_lease(&mut self) {
        let name = super::lease_file_name(&self.args.interface);
        let Ok(Some(bytes)) = files::read_bounded(dir(FD_STATE_DIR), &name, 64 * 1024) else {
            return;
        };
        let Ok(stored) = StoredLease::from_json(&bytes) else {
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
            if let Some(mtu) = lease.mtu {
                let mtu = u32::from(mtu).clamp(self.min_mtu, self.max_mtu);
                let link = self.rtnl.link(index)?;
                if link.mtu != mtu {
                    self.rtnl.set_mtu(index, mtu)?;
                }
            }
            // Stale routes of the previous lease go; then ours, in order (host
            // routes to gateways come first in the lease, RFC 3442 / cloud /32).
            if let Some(old) = &self.applied {
                for r in old.routes.iter().filter(|r| !lease.routes.contains(r)) {
                    let _ = self.rtnl.delete_route(index, *r, route_metric(index));
                }
            }
            for r in &lease.routes {
                self.rtnl
                    .replace_route(index, *r, Some(lease.address), route_metric(index))?;
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
            let text = files::render_resolv_conf(&self.args.interface, lease);
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
            let _ = self.rtnl.delete_route(index, *r, route_metric(index));
        }
        match self.rtnl.delete_address(index, lease.address, lease.prefix_len) {
            Err(e) if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) => Err(e),
            _ => Ok(()),
        }
    }

    fn persist(&mut self, lease: Option<&Lease>) -> Outcome {
        let name = super::lease_file_name(&self.args.interface);
        let result = match lease {
            Some(l) => {
                if let Err(r) = l.check(&self.limits) {
                    return Outcome::Refused(r);
                }
                let stored = StoredLease::new(&self.args.interface, l, boottime(), realtime_ms());
                files::write_atomic(dir(FD_STATE_DIR), &name, stored.to_json().as_bytes(), 0o600)
            }
            None => files::remove(dir(FD_STATE_DIR), &name),
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(format!("{name}: {e}")),
        }
    }

    fn publish(&mut self, status: &mirage_ipc::PublishedStatus) -> Outcome {
        let json = files::render_status_json(status);
        let metrics = files::render_metrics(status);
        if json.len() > MAX_PUBLISHED || metrics.len() > MAX_PUBLISHED {
            return Outcome::Refused(Refusal::NotAllowed);
        }
        // metrics.prom first: whoever sees a state in status.json finds the
        // metrics of that state already in place.
        let r = files::write_atomic_runtime(dir(FD_RUN_DIR), "metrics.prom", metrics.as_bytes(), 0o644)
            .and_then(|()| {
                files::write_atomic_runtime(dir(FD_RUN_DIR), "status.json", json.as_bytes(), 0o644)
            });
        match r {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}
