//! The actuator role: the only role that changes the host. It holds
//! CAP_NET_ADMIN and nothing else, an rtnetlink socket bound to nothing but
//! what the policy allows, and directory fds for the files it writes.
//!
//! Every request is re-checked against the policy fixed at start (this
//! interface, [`Lease::check`] with the configured limits, a Remove only for
//! the lease in force), because the engine that asked may be compromised.
//! Refusals are logged, counted by the supervisor and answered.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use mirage_ipc::{
    FromActuator, INFINITE_LEASE, IntentKind, Lease, Limits, PublishedStatus, Refusal, ToActuator,
};
use mirage_sdk::actuator_role::{self, HeldWrites, Outcome};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::netlink::{LinkEvent, LinkMonitor, MAIN_TABLE, Rtnl};
use mirage_sdk::service::learned::{self, LearnedServers};
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
    let monitor =
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
    let mut held = HeldWrites::<Deferred>::new(DEFER);
    if let Some(duid) = args.store_duid.clone() {
        held.hold(Instant::now()).duid = Some(duid);
    }
    actuator_role::run(&mut act, &chan, Some(monitor), held)
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
#[derive(Debug, Default, PartialEq)]
struct Deferred {
    /// The newest status not written yet.
    status: Option<PublishedStatus>,
    /// A new DUID (hex text) for the state directory.
    duid: Option<String>,
}

impl actuator_role::Actuator for Actuator<'_> {
    type Intent = ToActuator;
    type Kind = IntentKind;
    type Refusal = Refusal;
    type Reply = FromActuator;
    type Held = Deferred;

    fn kind(intent: &ToActuator) -> IntentKind {
        match intent {
            ToActuator::Apply { .. } => IntentKind::ApplyLease,
            ToActuator::Remove { .. } => IntentKind::RemoveLease,
            ToActuator::Persist(_) => IntentKind::PersistLease,
            ToActuator::Publish(_) => IntentKind::PublishStatus,
        }
    }

    /// The policy fixed at start: a lease within the limits, applied for a
    /// time it grants; a remove of the lease in force only.
    fn check(&self, intent: &ToActuator) -> Result<(), Refusal> {
        match intent {
            ToActuator::Apply { lease, valid_secs } => {
                lease.check(&self.limits)?;
                // The kernel refuses a zero lifetime; an expired lease is removed, not applied.
                if *valid_secs == 0 || (lease.lease_secs != INFINITE_LEASE && *valid_secs > lease.lease_secs)
                {
                    return Err(Refusal::BadLeaseTimes);
                }
                Ok(())
            }
            ToActuator::Remove { lease } => match &self.applied {
                Some(a) if a.address == lease.address && a.prefix_len == lease.prefix_len => Ok(()),
                _ => Err(Refusal::NotOurLease),
            },
            ToActuator::Persist(Some(lease)) => lease.check(&self.limits),
            ToActuator::Persist(None) | ToActuator::Publish(_) => Ok(()),
        }
    }

    fn apply(&mut self, intent: ToActuator, held: &mut HeldWrites<Deferred>) -> Option<Outcome<Refusal>> {
        Some(match intent {
            ToActuator::Apply { lease, valid_secs } => self.apply(&lease, valid_secs),
            ToActuator::Remove { .. } => self.remove(),
            ToActuator::Persist(lease) => self.persist(lease.as_ref()),
            ToActuator::Publish(status) => {
                // Answered now, never written: a newer status replaced it.
                let replaced = held.hold(Instant::now()).status.replace(status);
                return replaced.map(|_| Outcome::Done);
            }
        })
    }

    /// The held-back writes, the DUID first: it is the one that must last.
    fn write_held(&mut self, held: Deferred) -> Vec<(IntentKind, Outcome<Refusal>)> {
        if let Some(text) = held.duid {
            store_duid(&text);
        }
        let status = held.status.map(|s| self.publish(&s));
        status
            .map(|o| (IntentKind::PublishStatus, o))
            .into_iter()
            .collect()
    }

    fn answer(kind: IntentKind, outcome: Outcome<Refusal>) -> FromActuator {
        let outcome = match outcome {
            Outcome::Done => mirage_ipc::Outcome::Done,
            Outcome::Refused(r) => mirage_ipc::Outcome::Refused(r),
            Outcome::Failed(e) => mirage_ipc::Outcome::Failed(e),
        };
        FromActuator::Result { kind, outcome }
    }

    fn link_event(&mut self, event: LinkEvent) -> Option<FromActuator> {
        Some(match event {
            LinkEvent::CarrierUp => FromActuator::LinkUp,
            LinkEvent::CarrierDown => FromActuator::LinkDown,
        })
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

    fn apply(&mut self, lease: &Lease, valid_secs: u32) -> Outcome<Refusal> {
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
        // With a stub named (`resolv_conf_nameserver`), resolv.conf names
        // it whatever the lease's DNS servers: they reach the stub through
        // servers.json.
        if let Some(name) = &self.args.resolv_name
            && (self.args.resolv_nameserver.is_some() || !lease.dns_servers.is_empty())
        {
            let resolv = match self.args.resolv_nameserver {
                Some(stub) => files::resolv_conf_naming(&self.args.interface, lease, &[stub]),
                None => files::resolv_conf(&self.args.interface, lease),
            };
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
            let (text, file) = (resolv.text.as_bytes(), dir(FD_RESOLV_FILE));
            if let Err(e) = files::replace_or_rewrite(dir(FD_RESOLV_DIR), name, file, text, 0o644) {
                return Outcome::Failed(format!("writing {name}: {e}"));
            }
        }
        let search = if lease.search.is_empty() {
            lease.domain_name.iter().cloned().collect()
        } else {
            lease.search.clone()
        };
        self.publish_servers(&lease.ntp_servers, &lease.dns_servers, search)
    }

    /// servers.json for the services that use what DHCP learned (NTP,
    /// DNS): replaced atomically, with empty lists once no lease is in
    /// force (`mirage_sdk::service::learned`).
    fn publish_servers(
        &mut self,
        ntp: &[std::net::Ipv4Addr],
        dns: &[std::net::Ipv4Addr],
        search: Vec<String>,
    ) -> Outcome<Refusal> {
        let mut servers = LearnedServers::new(&self.args.interface, ntp, dns);
        servers.search = search;
        match learned::write(dir(FD_RUN_DIR), &servers) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(format!("writing {}: {e}", learned::SERVERS_FILE)),
        }
    }

    /// Remove the lease in force (the policy checked it is the one asked for).
    fn remove(&mut self) -> Outcome<Refusal> {
        let Some(applied) = self.applied.clone() else {
            return Outcome::Refused(Refusal::NotOurLease);
        };
        match self.unconfigure(&applied) {
            Ok(()) => {
                self.applied = None;
                self.publish_servers(&[], &[], Vec::new())
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

    fn persist(&mut self, lease: Option<&Lease>) -> Outcome<Refusal> {
        let name = super::lease_file_name(&self.args.interface);
        let result = match lease {
            Some(l) => {
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

    fn publish(&mut self, status: &PublishedStatus) -> Outcome<Refusal> {
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
