//! The DHCP client's supervisor: reads config and stored state, opens the
//! privileged fds, starts the three roles, then hands them to the SDK's
//! runtime ([`mirage_sdk::runtime`]) with the DHCP routing and policy below.
//! The runtime reads, queues, restarts and stops; this file says where each
//! message goes.
//!
//! Message routing (the supervisor never parses frames; it decodes only
//! size-capped typed messages and re-checks nothing the actuator will check):
//! ```text
//!   network --Frame--> engine --Transmit--> network
//!   engine --Apply/Remove/Persist--> actuator --Result--> engine
//!   (Apply/Remove forwarded, Apply answered) --Binding--> network
//!   actuator --LinkUp/LinkDown--> engine
//!   engine --PublishStatus--> (supervisor adds its counters) --> actuator
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_dhcp::plan::{self, RoleSettings};
use mirage_ipc::{
    ClientIdKind, EngineAction, EngineConfig, EngineEvent, EngineStart, FromActuator, FromEngine,
    FromNetwork, IntentKind, Lease, Outcome, PublishedStatus, Status, ToActuator, ToEngine, ToNetwork,
};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::log::EventLog;
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;
use mirage_sdk::role::{RoleOptions, RolePlan};
use mirage_sdk::runtime::{Ctx, Intents, Restart, RoleId, RoleStart, Runtime, Service, Shed, SignalPipe};
use mirage_sdk::service::dirs::{self, Owner};
use mirage_sdk::service::publish::{Pacing, Schedule};
use mirage_sdk::service::{launch, state};

use crate::config::{ClientIdMode, Config, SandboxKind};
use crate::roles;

/// The roles, by their index in the runtime.
const ENGINE: RoleId = 0;
const NETWORK: RoleId = 1;
const ACTUATOR: RoleId = 2;
/// Intents of one engine the actuator has not answered yet. A real engine
/// has at most three at a time (apply, persist, and a retry); one past the
/// cap floods the actuator and is restarted.
const MAX_ENGINE_INTENTS: usize = 16;
/// Status publications: each engine status at once (the actuator holds
/// them back briefly and writes only the newest), refreshed at least every
/// 30 s, and at most two in flight at the actuator; newer ones wait, and
/// only the newest of those is sent.
const PUBLISHING: Pacing = Pacing {
    min_interval: Duration::ZERO,
    refresh: Some(Duration::from_secs(30)),
    max_in_flight: Some(MAX_PUBLISHES_IN_FLIGHT),
};
const MAX_PUBLISHES_IN_FLIGHT: u32 = 2;
/// The published reason for the sandbox, in characters (a configured
/// device path and an OS error could make it long).
const MAX_SANDBOX_REASON: usize = 256;

pub fn run(config: Config, level: log::LevelFilter, oneshot: Option<Duration>) -> Result<ExitCode, String> {
    if config.sandbox == SandboxKind::None {
        log::warn!("SANDBOX DISABLED (--sandbox none): the engine parses network input without seccomp");
    }
    // The sandbox in force: with kvm or auto the KVM device is opened and
    // a guest booted once, beside the rest of the start-up.
    // A configured guest image is opened here, as root, and booted by the
    // probe instead of the built-in one.
    let guest_image = (config.kvm_guest_image.as_deref())
        .map(mirage_sdk::kvm::GuestImage::open)
        .transpose()?;
    let (requested, device) = (config.sandbox, config.kvm_device.clone());
    let probe_image = guest_image.as_ref().map(|g| g.bytes.clone());
    let choosing = std::thread::spawn(move || {
        let image = probe_image.as_deref().unwrap_or(crate::roles::engine::GUEST);
        mirage_sdk::kvm::choose(requested, Some(image), &device)
    });
    let signals = SignalPipe::new()?;
    // Opened for the actuator (docs/security.md, "Files").
    let ids = config.ids.actuator;
    let owner = Owner {
        role: "actuator",
        uid: ids.uid,
        gid: ids.gid,
    };
    let (state_dir, run_dir) =
        dirs::open_role_dirs::<crate::config::Dhcp>(&config.state_dir, &config.run_dir, owner)?;
    let resolv = (config.resolv_conf.as_deref())
        .map(|p| dirs::open_role_file(p, 0o644, owner, "resolv.conf"))
        .transpose()?;

    let mut rtnl = Rtnl::open().map_err(|e| format!("rtnetlink: {e}"))?;
    let link = rtnl.link_up_by_name(&config.interface)?;
    let mac = link
        .mac
        .ok_or_else(|| format!("{} has no Ethernet address", config.interface))?;
    let (client_id, new_duid) = client_id(&config, &state_dir, mac)?;
    let stored = load_stored_lease(&config, &state_dir);

    let mut engine_config = EngineConfig::new(mac, client_id);
    engine_config.hostname = config.hostname.clone();
    engine_config.vendor_class = config.vendor_class.clone();
    engine_config.first_retransmit_ms = config.timing.first_retransmit_ms;
    engine_config.max_retransmit_ms = config.timing.max_retransmit_ms;
    engine_config.init_reboot_budget_ms = config.timing.init_reboot_budget_ms;
    engine_config.min_lease_secs = config.timing.min_lease_secs;
    engine_config.acd = config.acd;
    engine_config.limits = config.limits;
    engine_config.release_on_stop = config.release_on_stop;

    let packet = PacketSocket::open(link.index, config.acd.enabled)
        .map_err(|e| format!("packet socket on {}: {e}", config.interface))?;
    let monitor = LinkMonitor::open(link.index).map_err(|e| format!("link monitor: {e}"))?;

    let choice = choosing
        .join()
        .map_err(|_| "choosing the sandbox panicked".to_owned())??;
    let mut dhcp = Dhcp::new(
        config.clone(),
        level,
        (link.index, mac),
        engine_config,
        stored,
        link.carrier,
    );
    dhcp.deadline = oneshot.map(|d| StdInstant::now() + d);
    dhcp.sandbox = choice.kind;
    dhcp.sandbox_reason = choice.reason.chars().take(MAX_SANDBOX_REASON).collect();
    // Kept for each engine started later; the engine role gets it at
    // mirage_sdk::kvm::FD_KVM.
    dhcp.kvm_device = choice
        .device_fd()
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(|e| format!("the KVM device: {e}"))?;
    // And the configured guest image, at mirage_sdk::kvm::FD_GUEST_IMAGE.
    match (guest_image, &dhcp.kvm_device, &config.kvm_guest_image) {
        (Some(image), Some(_), Some(path)) => {
            log::warn!(
                "the engine runs the guest image {}, not the built-in one (kvm_guest_image)",
                path.display()
            );
            dhcp.guest_image = Some(image.file.into());
        }
        (Some(_), _, _) => log::warn!(
            "kvm_guest_image is not used: the engine does not run as a KVM guest (sandbox {})",
            dhcp.sandbox.as_str()
        ),
        (None, _, _) => {}
    }
    let mut network_settings = dhcp.settings();
    network_settings.client_id = Some(dhcp_engine::client::client_id_bytes(&dhcp.engine_config));
    network_settings.with_arp = config.acd.enabled;
    let mut actuator_settings = dhcp.settings();
    actuator_settings.resolv_name = resolv.as_ref().map(|r| r.name.clone());
    actuator_settings.resolv_nameserver = config.resolv_conf_nameserver;
    actuator_settings.route_table = config.route_table;
    // A first start's DUID is stored durably (atomic replace, fsyncs) by the
    // actuator once the lease is applied, off the path to it: the engine has
    // the DUID already, and a crash before it is stored derives the same
    // DUID-LL from the MAC again.
    actuator_settings.store_duid = new_duid;
    let engine_plan = dhcp.engine_plan();
    let network_id = config.ids.network;
    let network_plan = plan::network(network_id.uid, network_id.gid);
    let actuator_id = config.ids.actuator;
    let actuator_plan = plan::actuator(actuator_id.uid, actuator_id.gid, resolv.is_some());
    let options = dhcp.options();
    let mut actuator_fds = vec![rtnl.as_fd(), monitor.as_fd(), state_dir.as_fd(), run_dir.as_fd()];
    if let Some(r) = &resolv {
        actuator_fds.push(r.dir.as_fd());
        actuator_fds.push(r.file.as_fd());
    }
    // Side by side, the engine first: it and the network role are on the
    // path to the first DISCOVER.
    let engine_fds = choice
        .device_fd()
        .into_iter()
        .chain(dhcp.guest_image.as_ref().map(|f| f.as_fd()))
        .collect();
    let specs = [
        engine_plan.spec(
            options,
            &(),
            Some(dhcp.engine_start()?),
            engine_fds,
            Restart::WithBackoff,
        )?,
        network_plan.spec(
            options,
            &network_settings,
            None,
            vec![packet.as_fd()],
            Restart::Never,
        )?,
        actuator_plan.spec(options, &actuator_settings, None, actuator_fds, Restart::Never)?,
    ];
    let starting = launch::start_all(&specs)?;
    // The supervisor keeps none of the privileged fds.
    drop(specs);
    drop((packet, rtnl, monitor, state_dir, run_dir, resolv, choice));
    let roles = launch::confine(
        starting,
        dhcp.sandbox,
        &[&engine_plan, &network_plan, &actuator_plan],
    )?;
    log::info!(
        "started on {} (index {}, {}), sandbox {}: {}",
        config.interface,
        link.index,
        roles::format_mac(&mac),
        dhcp.sandbox.as_str(),
        dhcp.sandbox_reason
    );
    Ok(Runtime::new(dhcp, roles).run(&signals))
}

/// The DHCP routing and policy, run by the SDK's runtime.
struct Dhcp {
    config: Config,
    level: log::LevelFilter,
    ifindex: u32,
    mac: [u8; 6],
    engine_config: EngineConfig,
    /// The lease last persisted (given to a restarted engine).
    lease: Option<Lease>,
    link_up: bool,
    status: Status,
    frames_refused: u64,
    intents_refused: u64,
    /// When status.json / metrics.prom are written (by the actuator).
    publishing: Schedule,
    /// Each apply/remove/persist forwarded to the actuator and not
    /// answered yet, by engine generation.
    intents: Intents,
    /// Dropped frames, logged one by one at most 50 a second (the
    /// counters in status.json and metrics count every drop).
    drop_log: EventLog,
    applied: bool,
    /// Frames not delivered because the receiving role's queue was full.
    frames_shed: Shed,
    binding: roles::network::BindingTracker,
    /// Restarts of the engine (published).
    engine_restarts: u32,
    /// `--oneshot`: give up at this time.
    deadline: Option<StdInstant>,
    /// Stopping: the engine was told.
    stopping: bool,
    /// The sandbox in force (`auto` resolved) and why.
    sandbox: SandboxKind,
    sandbox_reason: String,
    /// The KVM device, for every engine started (with `kvm`).
    kvm_device: Option<OwnedFd>,
    /// The configured guest image file (with `kvm`), for every engine
    /// started: each reads it as it is then.
    guest_image: Option<OwnedFd>,
}

impl Dhcp {
    fn new(
        config: Config,
        level: log::LevelFilter,
        (ifindex, mac): (u32, [u8; 6]),
        engine_config: EngineConfig,
        lease: Option<Lease>,
        link_up: bool,
    ) -> Dhcp {
        Dhcp {
            config,
            level,
            ifindex,
            mac,
            engine_config,
            lease,
            link_up,
            status: Status::default(),
            frames_refused: 0,
            intents_refused: 0,
            // The first status is the engine's.
            publishing: Schedule::starting_clean(PUBLISHING, StdInstant::now()),
            intents: Intents::new(ENGINE, ACTUATOR, MAX_ENGINE_INTENTS),
            drop_log: EventLog::new(50),
            applied: false,
            frames_shed: Shed::default(),
            binding: Default::default(),
            engine_restarts: 0,
            deadline: None,
            stopping: false,
            sandbox: SandboxKind::Seccomp,
            sandbox_reason: String::new(),
            kvm_device: None,
            guest_image: None,
        }
    }

    /// What every role is told in its hello besides its plan.
    fn options(&self) -> RoleOptions {
        RoleOptions {
            sandbox: self.sandbox,
            log_level: self.level,
        }
    }

    /// The engine's plan under its configured ids: with kvm, a tender's.
    fn engine_plan(&self) -> RolePlan {
        let id = self.config.ids.engine;
        let plan = plan::engine(id.uid, id.gid);
        match self.sandbox {
            SandboxKind::Kvm => mirage_sdk::kvm::tender_plan(plan),
            _ => plan,
        }
    }

    /// The settings the network role and the actuator share.
    fn settings(&self) -> RoleSettings {
        let c = &self.config;
        RoleSettings::new(&c.interface, self.ifindex, self.mac, c.limits)
    }

    /// The engine's `Start`: the lease last persisted, the carrier as it is
    /// now and a fresh seed.
    fn engine_start(&self) -> Result<Vec<u8>, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start = ToEngine::Start {
            start: EngineStart {
                config: self.engine_config.clone(),
                stored: self.lease.clone(),
                link_up: self.link_up,
            },
            seed,
        };
        mirage_ipc::encode(&start).map_err(|e| format!("starting the engine: {e}"))
    }

    /// Hand an event to the engine; it queues (never blocks), and an engine
    /// that leaves its queue full is restarted by the runtime.
    fn send_engine(&mut self, ctx: &mut Ctx<'_>, event: EngineEvent) {
        ctx.send(ENGINE, &ToEngine::Event(event));
    }

    /// Tell the network role about our address, never blocking; a state it
    /// could not take now is sent again next round.
    fn tell_network(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(msg) = self.binding.update()
            && ctx.send_lossy(NETWORK, &msg)
        {
            self.binding.sent();
        }
    }

    /// Requests the actuator has not answered yet.
    fn outstanding(&self) -> usize {
        self.intents.len() + self.publishing.in_flight() as usize
    }

    /// Forward an engine's intent; one past [`MAX_ENGINE_INTENTS`] is a
    /// flood, and the engine is restarted instead. Says whether it was
    /// forwarded.
    fn forward_intent(&mut self, ctx: &mut Ctx<'_>, msg: ToActuator) -> bool {
        let forwarded = self.intents.forward(ctx, &msg);
        self.intents_refused += u64::from(!forwarded);
        forwarded
    }

    /// Send the status to the actuator if [`PUBLISHING`] says it is due.
    fn publish(&mut self, ctx: &mut Ctx<'_>) {
        if !self.publishing.take_due(StdInstant::now()) {
            return;
        }
        let p = PublishedStatus {
            status: self.status.clone(),
            interface: self.config.interface.clone(),
            sandbox: self.sandbox.as_str().into(),
            sandbox_reason: self.sandbox_reason.clone(),
            engine_restarts: self.engine_restarts,
            frames_refused: self.frames_refused,
            intents_refused: self.intents_refused,
            now: boottime(),
        };
        ctx.send(ACTUATOR, &ToActuator::Publish(p));
    }

    fn on_engine_message(&mut self, ctx: &mut Ctx<'_>, msg: FromEngine) -> Result<(), String> {
        match msg {
            FromEngine::Refused(reason) => {
                let summary = |n| log::info!("{n} more dropped frames not logged one by one");
                if self.drop_log.admit(StdInstant::now(), summary) {
                    log::debug!("engine dropped a frame: {reason:?}");
                }
            }
            FromEngine::Action(EngineAction::Transmit(frame)) => {
                self.frames_shed.send(ctx, NETWORK, &ToNetwork::Transmit(frame));
            }
            FromEngine::Action(EngineAction::ApplyLease { lease, valid_secs }) => {
                log::info!(
                    "applying {}/{} from {} ({} s)",
                    lease.address,
                    lease.prefix_len,
                    lease.server_id,
                    valid_secs
                );
                let address = lease.clone();
                if self.forward_intent(ctx, ToActuator::Apply { lease, valid_secs }) {
                    self.binding.apply_forwarded(&address);
                    self.tell_network(ctx);
                }
            }
            FromEngine::Action(EngineAction::RemoveLease { lease }) => {
                log::info!("removing {}/{}", lease.address, lease.prefix_len);
                self.applied = false;
                let address = lease.clone();
                if self.forward_intent(ctx, ToActuator::Remove { lease }) {
                    self.binding.remove_forwarded(&address);
                    self.tell_network(ctx);
                }
            }
            FromEngine::Action(EngineAction::PersistLease(lease)) => {
                self.lease = lease.clone();
                self.forward_intent(ctx, ToActuator::Persist(lease));
            }
            FromEngine::Action(EngineAction::PublishStatus(status)) => {
                if !forwardable(&status, &self.config.interface) {
                    // Only a misbehaving engine sends one (a real status is a
                    // few hundred bytes): the send to the actuator would fail.
                    return Err("published a status too large to forward".into());
                }
                if status.state != self.status.state {
                    log::info!(
                        "state {} -> {}",
                        self.status.state.as_str(),
                        status.state.as_str()
                    );
                }
                let dropped = status.counters.routes_dropped;
                if dropped > self.status.counters.routes_dropped {
                    // The engine logs nothing itself; its counter says the
                    // policy dropped routes from a server's reply.
                    log::warn!(
                        "the lease policy dropped {} route(s) from the server's replies \
                         (see [limits] min_route_prefix_len, ignore_classless_routes)",
                        dropped - self.status.counters.routes_dropped
                    );
                }
                self.status = status;
                self.publishing.mark_dirty();
                self.publish(ctx);
            }
        }
        Ok(())
    }

    fn on_network_message(&mut self, ctx: &mut Ctx<'_>, msg: FromNetwork) {
        match msg {
            FromNetwork::Frame {
                data,
                checksum_offloaded,
            } => {
                let event = ToEngine::Event(EngineEvent::Frame {
                    data,
                    checksum_offloaded,
                });
                self.frames_shed.send(ctx, ENGINE, &event);
            }
            FromNetwork::Refused { reason } => {
                self.frames_refused += 1;
                log::warn!("network role refused a frame from the engine: {reason}");
            }
            FromNetwork::Capped { frames } => self.frames_refused += frames,
        }
    }

    fn on_actuator_message(&mut self, ctx: &mut Ctx<'_>, msg: FromActuator) {
        match msg {
            FromActuator::LinkUp => {
                log::info!("carrier up");
                self.link_up = true;
                self.send_engine(ctx, EngineEvent::LinkUp);
            }
            FromActuator::LinkDown => {
                log::info!("carrier down");
                self.link_up = false;
                self.send_engine(ctx, EngineEvent::LinkDown);
            }
            FromActuator::Result { kind, outcome } => {
                // Whether it answers this engine's intent; `None` for a publish.
                let current = if kind == IntentKind::PublishStatus {
                    self.publishing.done();
                    None
                } else {
                    Some(self.intents.answered(ctx))
                };
                let ok = matches!(outcome, Outcome::Done);
                match outcome {
                    Outcome::Refused(r) => {
                        self.intents_refused += 1;
                        log::warn!("actuator refused {kind:?}: {r}");
                    }
                    Outcome::Failed(e) => log::warn!("actuator: {kind:?} failed: {e}"),
                    Outcome::Done => {
                        if kind == IntentKind::ApplyLease {
                            self.applied = true;
                        }
                    }
                }
                if kind == IntentKind::ApplyLease {
                    self.binding.apply_answered(ok);
                    self.tell_network(ctx);
                }
                match current {
                    // A status that waited for this answer goes now.
                    None => self.publish(ctx),
                    Some(true) => self.send_engine(ctx, EngineEvent::IntentResult { kind, ok }),
                    // An answer to an engine that was restarted since.
                    Some(false) => {}
                }
            }
        }
    }
}

impl Service for Dhcp {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
        match from {
            ENGINE => self.on_engine_message(ctx, decode(msg)?),
            NETWORK => {
                self.on_network_message(ctx, decode(msg)?);
                Ok(())
            }
            _ => {
                self.on_actuator_message(ctx, decode(msg)?);
                Ok(())
            }
        }
    }

    /// A new engine gets the lease last persisted, the carrier as it is now
    /// and a fresh seed; the address stays meanwhile, and the engine
    /// verifies it (INIT-REBOOT).
    fn restart(&mut self, role: RoleId) -> Result<RoleStart, String> {
        debug_assert_eq!(role, ENGINE);
        let mut start = self
            .engine_plan()
            .start(self.options(), &(), Some(self.engine_start()?))?;
        if let Some(kvm) = &self.kvm_device {
            let kvm = kvm.try_clone().map_err(|e| format!("the KVM device: {e}"))?;
            start.fds.push(kvm);
            if let Some(image) = &self.guest_image {
                let image = image.try_clone().map_err(|e| format!("the guest image: {e}"))?;
                start.fds.push(image);
            }
        }
        Ok(start)
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.engine_restarts = ctx.restarts(ENGINE);
    }

    fn on_round(&mut self, ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        // A binding state the network role could not take last round.
        self.tell_network(ctx);
        self.publish(ctx);
        let next = [self.publishing.next_due(), self.deadline];
        Ok(next.into_iter().flatten().min())
    }

    fn on_stop(&mut self, ctx: &mut Ctx<'_>) {
        self.stopping = true;
        self.send_engine(ctx, EngineEvent::Stop { force_release: false });
    }

    fn stop_done(&self) -> bool {
        self.outstanding() == 0
    }

    fn finished(&self) -> Option<ExitCode> {
        let deadline = self.deadline?;
        if self.applied && self.outstanding() == 0 {
            log::info!("lease applied; exiting (--oneshot)");
            return Some(ExitCode::SUCCESS);
        }
        if StdInstant::now() >= deadline {
            log::error!("no lease before the --oneshot timeout");
            return Some(ExitCode::from(3));
        }
        None
    }
}

fn decode<T: serde::de::DeserializeOwned>(msg: &[u8]) -> Result<T, String> {
    mirage_ipc::decode(msg).map_err(|e| e.to_string())
}

/// Option 61. RFC 4361: IAID + DUID; the DUID is kept in the state directory
/// so it survives restarts; a new one is DUID-LL (RFC 8415 11.4) from the
/// MAC, which is stable without state and unique per NIC even on cloned VMs.
///
/// Returns the client id and, on a first start, the DUID in hex for the
/// actuator to store.
fn client_id(
    c: &Config,
    state_dir: &OwnedFd,
    mac: [u8; 6],
) -> Result<(ClientIdKind, Option<String>), String> {
    if c.client_id == ClientIdMode::Mac {
        return Ok((ClientIdKind::Mac, None));
    }
    let iaid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let stored = files::read_bounded(state_dir, "duid", 1024)
        .ok()
        .flatten()
        .and_then(|b| roles::parse_hex(&b));
    let (duid, new) = match stored {
        Some(d) if (4..=130).contains(&d.len()) => (d, None),
        _ => {
            let mut d = vec![0, 3, 0, 1];
            d.extend_from_slice(&mac);
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            (d, Some(hex))
        }
    };
    Ok((ClientIdKind::Duid { iaid, duid }, new))
}

/// The stored lease, rebased onto this boot. A corrupt or foreign file is
/// warned about and ignored: the client starts with a fresh DISCOVER.
fn load_stored_lease(c: &Config, state_dir: &OwnedFd) -> Option<Lease> {
    let name = roles::lease_file_name(&c.interface);
    let ignored = |why: &dyn std::fmt::Display| -> Option<Lease> {
        log::warn!("ignoring the stored lease {name}: {why}");
        None
    };
    let stored = match state::load::<StoredLease>(state_dir, &name) {
        Ok(s) => s?,
        Err(e) => return ignored(&e),
    };
    if stored.interface != c.interface {
        return ignored(&format_args!("it is for {}", stored.interface));
    }
    let lease = stored.rebase(boottime(), realtime_ms());
    if let Err(r) = lease.check(&c.limits) {
        return ignored(&r);
    }
    Some(lease)
}

/// Whether the engine's `status` still fits one message once the supervisor
/// adds its fields, checked with the largest values those can take, so that
/// no later publish of the same status can fail.
fn forwardable(status: &Status, interface: &str) -> bool {
    let worst = PublishedStatus {
        status: status.clone(),
        interface: interface.into(),
        sandbox: SandboxKind::Seccomp.as_str().into(),
        sandbox_reason: "x".repeat(MAX_SANDBOX_REASON * 4),
        engine_restarts: u32::MAX,
        frames_refused: u64::MAX,
        intents_refused: u64::MAX,
        now: mirage_ipc::Instant::NEVER,
    };
    mirage_ipc::encode(&ToActuator::Publish(worst)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};
    use mirage_sdk::channel::Channel;
    use mirage_sdk::runtime::Role;
    use std::io::Write as _;
    use std::path::Path;

    /// A stand-in role: a real child process (`sh -c script`) whose stderr
    /// is the role's log, and the channel's far end for the test to play
    /// the role with.
    fn stand_in(name: &'static str, script: &str) -> (Role, Channel) {
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let log = child.stderr.take().expect("piped stderr");
        let (ours, theirs) = Channel::pair().expect("socketpair");
        (
            Role::new(name, child.into(), ours, log, StdInstant::now()),
            theirs,
        )
    }

    /// The DHCP service over three stand-in roles, and their far ends
    /// (engine, network, actuator). Restarts are scheduled but never due
    /// during a test: a restart would re-execute the test binary as a role.
    fn dhcp_with_stand_ins() -> (Runtime<Dhcp>, [Channel; 3]) {
        let config = Config::resolve(
            Path::new("config.toml"),
            FileConfig::default(),
            Overrides {
                interface: Some("eth0".into()),
                ..Overrides::default()
            },
        )
        .expect("a valid config");
        let mac = [2, 0, 0, 0, 0, 1];
        let (engine, e) = stand_in("engine", "exec sleep 60");
        let (network, n) = stand_in("network", "exec sleep 60");
        let (actuator, a) = stand_in("actuator", "exec sleep 60");
        let dhcp = Dhcp::new(
            config,
            log::LevelFilter::Info,
            (1, mac),
            EngineConfig::new(mac, ClientIdKind::Mac),
            None,
            true,
        );
        let mut rt = Runtime::new(dhcp, vec![engine.restartable(), network, actuator]);
        rt.set_restart_delay(Duration::from_secs(3600));
        (rt, [e, n, a])
    }

    /// Runs the runtime on a thread, raises the stop signal after `after`,
    /// and returns it once it has returned; fails if it did not return
    /// within its stop grace plus a margin for slow machines.
    fn stop_after(mut rt: Runtime<Dhcp>, after: Duration) -> Runtime<Dhcp> {
        let signals = SignalPipe::for_test().unwrap();
        let mut raise = signals.raiser().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = rt.run(&signals);
            let _ = tx.send((code, rt));
        });
        std::thread::sleep(after);
        raise.write_all(b"T").unwrap();
        let (code, rt) = rx
            .recv_timeout(mirage_sdk::runtime::STOP_GRACE + Duration::from_secs(10))
            .expect("the supervisor did not honour the signal: it is blocked");
        assert_eq!(code, ExitCode::SUCCESS);
        rt
    }

    fn apply() -> FromEngine {
        FromEngine::Action(EngineAction::ApplyLease {
            lease: Lease {
                address: std::net::Ipv4Addr::new(10, 0, 0, 5),
                prefix_len: 24,
                server_id: std::net::Ipv4Addr::new(10, 0, 0, 1),
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
            },
            valid_secs: 600,
        })
    }

    #[test]
    fn an_engine_flooding_intents_is_restarted_and_signals_still_work() {
        let (rt, [engine, _network, actuator]) = dhcp_with_stand_ins();
        // The engine sends intents as fast as the supervisor takes them.
        std::thread::spawn(move || while engine.send(&apply()).is_ok() {});
        // The actuator answers every request, sending each answer before it
        // reads the next request (as the real one does): with blocking
        // sends both ways, it and the supervisor wedge each other.
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = answered.clone();
        std::thread::spawn(move || {
            while let Ok(Some(msg)) = actuator.recv::<ToActuator>() {
                let kind = match msg {
                    ToActuator::Publish(_) => IntentKind::PublishStatus,
                    _ => IntentKind::ApplyLease,
                };
                let result = FromActuator::Result {
                    kind,
                    outcome: Outcome::Done,
                };
                if actuator.send(&result).is_err() {
                    break;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let rt = stop_after(rt, Duration::from_millis(500));
        assert!(!rt.is_up(ENGINE), "the flooding engine was not stopped");
        assert!(rt.restart_at(ENGINE).is_some(), "no restart was scheduled");
        assert!(rt.service.intents_refused >= 1);
        let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            answered <= (MAX_ENGINE_INTENTS + mirage_sdk::runtime::OUTBOX_MAX) as u64 + 8,
            "{answered} intents reached the actuator: the cap did not hold"
        );
    }

    #[test]
    fn an_engine_that_stops_reading_is_restarted_and_signals_still_work() {
        let (rt, [engine, _network, actuator]) = dhcp_with_stand_ins();
        // The engine never reads; the actuator reports carrier changes
        // without pause, each of which the supervisor hands to the engine.
        std::thread::spawn(move || {
            let mut up = false;
            loop {
                up = !up;
                let msg = if up {
                    FromActuator::LinkUp
                } else {
                    FromActuator::LinkDown
                };
                if actuator.send(&msg).is_err() {
                    break;
                }
            }
        });
        let rt = stop_after(rt, Duration::from_millis(500));
        drop(engine);
        assert!(!rt.is_up(ENGINE), "the engine that does not read was not stopped");
        assert!(rt.restart_at(ENGINE).is_some(), "no restart was scheduled");
    }

    #[test]
    fn an_actuator_that_stops_reading_never_wedges_the_supervisor() {
        let (mut rt, [engine, _network, actuator]) = dhcp_with_stand_ins();
        // Under the intent cap, but the actuator never answers or reads.
        std::thread::spawn(move || {
            for _ in 0..MAX_ENGINE_INTENTS - 1 {
                let _ = engine.send(&apply());
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        for _ in 0..mirage_sdk::runtime::OUTBOX_MAX * 4 {
            // What each status from the engine does.
            rt.with_ctx(|dhcp, ctx| {
                dhcp.publishing.mark_dirty();
                dhcp.publish(ctx)
            });
        }
        // Publishes beyond those in flight are coalesced, never queued.
        assert_eq!(rt.service.publishing.in_flight(), MAX_PUBLISHES_IN_FLIGHT);
        assert!(rt.service.publishing.is_dirty(), "the newest status was lost");
        let rt = stop_after(rt, Duration::from_millis(300));
        assert!(rt.service.outstanding() <= MAX_ENGINE_INTENTS + MAX_PUBLISHES_IN_FLIGHT as usize);
        drop(actuator);
    }

    #[test]
    fn duid_hex_parses_and_bad_files_never_panic() {
        assert_eq!(
            roles::parse_hex(b" 00030001aabb\n"),
            Some(vec![0, 3, 0, 1, 0xaa, 0xbb])
        );
        assert_eq!(roles::parse_hex(b"0A0b"), Some(vec![0x0a, 0x0b]));
        for bad in [
            &b"abc"[..],
            b"zz",
            b"+1",
            "aé0".as_bytes(),
            "éé".as_bytes(),
            b"\xff\xfe",
        ] {
            assert_eq!(roles::parse_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_oversized_engine_status_is_caught_before_forwarding() {
        let status = Status::default();
        assert!(forwardable(&status, "eth0"));
        // Exactly one full engine message, so it passes the engine channel's
        // size check, but not once the supervisor's fields are added.
        let mut lease = Lease {
            address: std::net::Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            server_id: std::net::Ipv4Addr::new(10, 0, 0, 1),
            routes: vec![],
            dns_servers: vec![],
            ntp_servers: vec![],
            domain_name: None,
            search: vec![],
            hostname: Some("h".repeat(200)),
            mtu: None,
            lease_secs: 600,
            renew_secs: 300,
            rebind_secs: 525,
            acquired_at: mirage_ipc::Instant(0),
        };
        let wrap = |l: &Lease| {
            FromEngine::Action(EngineAction::PublishStatus(Status {
                lease: Some(l.clone()),
                ..Status::default()
            }))
        };
        let len = mirage_ipc::encode(&wrap(&lease)).unwrap().len();
        lease.hostname = Some("h".repeat(200 + mirage_ipc::MAX_MESSAGE_LEN - len));
        assert_eq!(
            mirage_ipc::encode(&wrap(&lease)).map(|b| b.len()),
            Ok(mirage_ipc::MAX_MESSAGE_LEN)
        );
        let big = Status {
            lease: Some(lease),
            ..Status::default()
        };
        assert!(!forwardable(&big, "eth0"));
    }
}
