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

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_dhcp::plan::{self, RoleSettings};
use mirage_ipc::{
    ClientIdKind, EngineAction, EngineConfig, EngineEvent, EngineStart, FromActuator, FromEngine,
    FromNetwork, IntentKind, Lease, Outcome, PublishedStatus, Status, ToActuator, ToEngine, ToNetwork,
};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;
use mirage_sdk::role::{RoleOptions, RolePlan};
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleStart, Runtime, Service, SignalPipe};

use crate::config::{ClientIdMode, Config, SandboxKind};
use crate::roles::{self, RoleName};

/// The roles, by their index in the runtime.
const ENGINE: RoleId = 0;
const NETWORK: RoleId = 1;
const ACTUATOR: RoleId = 2;
/// Intents of one engine the actuator has not answered yet. A real engine
/// has at most three at a time (apply, persist, and a retry); one past the
/// cap floods the actuator and is restarted.
const MAX_ENGINE_INTENTS: usize = 16;
/// Status publications in flight at the actuator; newer ones wait, and only
/// the newest of those is sent (the actuator writes files for each).
const MAX_PUBLISHES_IN_FLIGHT: u32 = 2;
/// status.json / metrics.prom are refreshed at least this often.
const REPUBLISH: Duration = Duration::from_secs(30);

pub fn run(config: Config, level: log::LevelFilter, oneshot: Option<Duration>) -> Result<ExitCode, String> {
    if config.sandbox == SandboxKind::None {
        log::warn!("SANDBOX DISABLED (--sandbox none): the engine parses network input without seccomp");
    }
    let signals = SignalPipe::new()?;
    let (state_dir, run_dir, resolv) = prepare_dirs(&config)?;

    let mut rtnl = Rtnl::open().map_err(|e| format!("rtnetlink: {e}"))?;
    let link = rtnl
        .link_by_name(&config.interface)
        .map_err(|e| format!("interface {}: {e}", config.interface))?;
    if !link.up {
        rtnl.set_link_up(link.index)
            .map_err(|e| format!("bringing {} up: {e}", config.interface))?;
    }
    let link = rtnl
        .link(link.index)
        .map_err(|e| format!("interface {}: {e}", config.interface))?;
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

    let mut dhcp = Dhcp::new(
        config.clone(),
        level,
        (link.index, mac),
        engine_config,
        stored,
        link.carrier,
    );
    dhcp.deadline = oneshot.map(|d| StdInstant::now() + d);
    let mut network_settings = dhcp.settings();
    network_settings.client_id = Some(dhcp_engine::client::client_id_bytes(&dhcp.engine_config));
    network_settings.with_arp = config.acd.enabled;
    let mut actuator_settings = dhcp.settings();
    actuator_settings.resolv_name = resolv.as_ref().map(|(_, _, name)| name.clone());
    actuator_settings.route_table = config.route_table;
    // A first start's DUID is stored durably (atomic replace, fsyncs) by the
    // actuator once the lease is applied, off the path to it: the engine has
    // the DUID already, and a crash before it is stored derives the same
    // DUID-LL from the MAC again.
    actuator_settings.store_duid = new_duid;
    let engine_plan = dhcp.engine_plan();
    let network_id = config.ids.of(RoleName::Network);
    let network_plan = plan::network(network_id.uid, network_id.gid);
    let actuator_id = config.ids.of(RoleName::Actuator);
    let actuator_plan = plan::actuator(actuator_id.uid, actuator_id.gid, resolv.is_some());
    let options = dhcp.options();
    let mut actuator_fds = vec![rtnl.as_fd(), monitor.as_fd(), state_dir.as_fd(), run_dir.as_fd()];
    if let Some((dir, file, _)) = &resolv {
        actuator_fds.push(dir.as_fd());
        actuator_fds.push(file.as_fd());
    }
    // All three roles start side by side: each fork returns at once, and
    // the children exec and drop their privileges in parallel instead of
    // one after the other (their start-up, not the DHCP exchange, is most
    // of the time to a lease). The engine first: it and the network role
    // are on the path to the first DISCOVER. Messages to a role wait in
    // its channel until it is ready.
    let specs = [
        engine_plan.spec(
            options,
            &(),
            Some(dhcp.engine_start()?),
            vec![],
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
    let starting = specs.iter().map(|s| s.start()).collect::<Result<Vec<_>, _>>()?;
    // The supervisor keeps none of the privileged fds.
    drop(specs);
    drop((packet, rtnl, monitor, state_dir, run_dir, resolv));
    // Sandbox the supervisor now, before the roles' exec is confirmed: the
    // children are past the fork and inherit nothing more from us, and
    // confirming takes no privilege, so the filter's compile and install
    // overlap the roles' start-up instead of delaying the first frames.
    mirage_sdk::sandbox::drop_supervisor().map_err(|e| format!("dropping supervisor privileges: {e}"))?;
    if config.sandbox == SandboxKind::Seccomp {
        // Restarted engines inherit this filter and stack their own on top:
        // it holds every role's list.
        mirage_sdk::sandbox::seccomp::install_supervisor(&[&engine_plan, &network_plan, &actuator_plan])
            .map_err(|e| format!("supervisor seccomp: {e}"))?;
    }
    let roles = starting
        .into_iter()
        .map(|s| s.finish())
        .collect::<Result<Vec<_>, _>>()?;
    log::info!(
        "started on {} (index {}, {}), sandbox {}",
        config.interface,
        link.index,
        roles::format_mac(&mac),
        config.sandbox.as_str()
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
    last_publish: StdInstant,
    /// The engine generation of each apply/remove/persist forwarded to the
    /// actuator and not answered yet, oldest first (the actuator answers
    /// those in order).
    intents: VecDeque<u64>,
    publishes_in_flight: u32,
    /// A status to publish once one in flight is answered.
    publish_pending: bool,
    drop_log: DropLog,
    applied: bool,
    /// Frames not delivered because the receiving role's queue was full.
    frames_shed: u64,
    binding: roles::network::BindingTracker,
    /// Restarts of the engine (published).
    engine_restarts: u32,
    /// `--oneshot`: give up at this time.
    deadline: Option<StdInstant>,
    /// Stopping: the engine was told.
    stopping: bool,
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
            last_publish: StdInstant::now(),
            intents: VecDeque::new(),
            publishes_in_flight: 0,
            publish_pending: false,
            drop_log: DropLog::default(),
            applied: false,
            frames_shed: 0,
            binding: Default::default(),
            engine_restarts: 0,
            deadline: None,
            stopping: false,
        }
    }

    /// What every role is told in its hello besides its plan.
    fn options(&self) -> RoleOptions {
        RoleOptions {
            sandbox: self.config.sandbox,
            log_level: self.level,
        }
    }

    /// The engine's plan under its configured ids.
    fn engine_plan(&self) -> RolePlan {
        let id = self.config.ids.of(RoleName::Engine);
        plan::engine(id.uid, id.gid)
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

    /// Hand a frame on, dropped when the role's socket is full, as a busy
    /// link would; DHCP retransmits.
    fn send_frame<T: serde::Serialize>(&mut self, ctx: &mut Ctx<'_>, to: RoleId, msg: &T) {
        if ctx.is_up(to) && !ctx.send_lossy(to, msg) {
            self.frames_shed += 1;
            // Logged at 1, 2, 4, 8... so a flood cannot flood the log.
            if self.frames_shed.is_power_of_two() {
                log::warn!(
                    "the {} role's queue is full: {} frames dropped so far",
                    ctx.name(to),
                    self.frames_shed
                );
            }
        }
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
        self.intents.len() + self.publishes_in_flight as usize
    }

    /// Forward an engine's intent, unless that engine already has
    /// [`MAX_ENGINE_INTENTS`] unanswered: then it floods the actuator (a
    /// real engine never does) and is restarted instead. Says whether it
    /// was forwarded.
    fn forward_intent(&mut self, ctx: &mut Ctx<'_>, msg: ToActuator) -> bool {
        let generation = ctx.generation(ENGINE);
        let mine = self.intents.iter().filter(|&&g| g == generation).count();
        if mine >= MAX_ENGINE_INTENTS {
            self.intents_refused += 1;
            ctx.fault(
                ENGINE,
                format!("more than {MAX_ENGINE_INTENTS} intents waiting for the actuator"),
            );
            return false;
        }
        self.intents.push_back(generation);
        ctx.send(ACTUATOR, &msg);
        true
    }

    /// Publish the status; while [`MAX_PUBLISHES_IN_FLIGHT`] are being
    /// written, only remember that a newer one is due.
    fn publish(&mut self, ctx: &mut Ctx<'_>) {
        self.last_publish = StdInstant::now();
        if self.publishes_in_flight >= MAX_PUBLISHES_IN_FLIGHT {
            self.publish_pending = true;
            return;
        }
        self.publish_pending = false;
        self.publishes_in_flight += 1;
        let p = PublishedStatus {
            status: self.status.clone(),
            interface: self.config.interface.clone(),
            sandbox: self.config.sandbox.as_str().into(),
            engine_restarts: self.engine_restarts,
            frames_refused: self.frames_refused,
            intents_refused: self.intents_refused,
            now: boottime(),
        };
        ctx.send(ACTUATOR, &ToActuator::Publish(p));
    }

    fn on_engine_message(&mut self, ctx: &mut Ctx<'_>, msg: FromEngine) -> Result<(), String> {
        match msg {
            FromEngine::Refused(reason) => self.drop_log.record(reason),
            FromEngine::Action(EngineAction::Transmit(frame)) => {
                self.send_frame(ctx, NETWORK, &ToNetwork::Transmit(frame));
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
                self.send_frame(ctx, ENGINE, &event);
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
                // Whose intent this answers; `None` for a publish.
                let generation = if kind == IntentKind::PublishStatus {
                    self.publishes_in_flight = self.publishes_in_flight.saturating_sub(1);
                    None
                } else {
                    Some(self.intents.pop_front())
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
                match generation {
                    None if self.publish_pending => self.publish(ctx),
                    None => {}
                    Some(g) if g == Some(ctx.generation(ENGINE)) => {
                        self.send_engine(ctx, EngineEvent::IntentResult { kind, ok })
                    }
                    // An answer to an engine that was restarted since.
                    Some(_) => {}
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
        self.engine_plan()
            .start(self.options(), &(), Some(self.engine_start()?))
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.engine_restarts = ctx.restarts(ENGINE);
    }

    fn on_round(&mut self, ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        // A binding state the network role could not take last round.
        self.tell_network(ctx);
        if self.last_publish.elapsed() >= REPUBLISH {
            self.publish(ctx);
        }
        let mut next = self.last_publish + REPUBLISH;
        if let Some(d) = self.deadline {
            next = next.min(d);
        }
        Ok(Some(next))
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

/// resolv.conf as the actuator gets it: the directory that really holds it
/// (root's symlinks resolved, so a link such as /etc/resolv.conf -> /run/...
/// is followed, not replaced; anyone else's is refused), the file itself
/// opened for writing, its name.
type ResolvTarget = (OwnedFd, OwnedFd, String);

/// Log lines for dropped frames, rate-limited: a flood of junk must not
/// turn into a flood of log lines (the counters in status.json and metrics
/// count every drop).
#[derive(Default)]
struct DropLog {
    window: Option<StdInstant>,
    logged: u32,
    suppressed: u64,
}

impl DropLog {
    /// Lines per second logged one by one; the rest are summed up.
    const PER_SECOND: u32 = 50;

    fn record(&mut self, reason: mirage_ipc::DropReason) {
        let now = StdInstant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                log::info!("{} more dropped frames not logged one by one", self.suppressed);
            }
            *self = DropLog {
                window: Some(now),
                logged: 0,
                suppressed: 0,
            };
        }
        if self.logged < Self::PER_SECOND {
            self.logged += 1;
            log::debug!("engine dropped a frame: {reason:?}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// State dir and run dir, and the resolv.conf target, opened for the
/// actuator without following any link that is not root's (docs/security.md,
/// "Files"): the directories are created if missing and then given to the
/// actuator's ids; an existing one must already be the actuator's, because
/// taking over a directory that someone else owns would hand the roles
/// whatever that owner left in it (or make root write where it points).
fn prepare_dirs(c: &Config) -> Result<(OwnedFd, OwnedFd, Option<ResolvTarget>), String> {
    let owner = c.ids.actuator;
    let mk = |p: &Path, mode: u32, what: &str| -> Result<OwnedFd, String> {
        let (dir, created) = files::open_dir_root_links_only(p, Some(mode))
            .map_err(|e| format!("{what} {}: {e}", p.display()))?;
        if created {
            rustix::fs::fchown(
                &dir,
                Some(rustix::fs::Uid::from_raw(owner.uid)),
                Some(rustix::fs::Gid::from_raw(owner.gid)),
            )
            .and_then(|()| rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(mode)))
            .map_err(|e| {
                format!(
                    "giving the new {what} {} to {}:{}: {e}",
                    p.display(),
                    owner.uid,
                    owner.gid
                )
            })?;
            return Ok(dir);
        }
        let st = rustix::fs::fstat(&dir).map_err(|e| format!("{what} {}: {e}", p.display()))?;
        if st.st_uid != owner.uid {
            return Err(format!(
                "{what} {} belongs to uid {}, not to the actuator's uid {}: refusing to take it over. \
                 Give it to the actuator (chown {}:{} {}) or remove it so that mirage-dhcp creates it",
                p.display(),
                st.st_uid,
                owner.uid,
                owner.uid,
                owner.gid,
                p.display()
            ));
        }
        if st.st_mode & 0o002 != 0 {
            return Err(format!(
                "{what} {} is writable by everyone: chmod o-w {}",
                p.display(),
                p.display()
            ));
        }
        Ok(dir)
    };
    let state = mk(&c.state_dir, 0o700, "state directory")?;
    let run = mk(&c.run_dir, 0o755, "runtime directory")?;
    let resolv = match &c.resolv_conf {
        None => None,
        Some(p) => {
            let w = files::open_file_root_links_only(p, 0o644)
                .map_err(|e| format!("resolv.conf {}: {e}", p.display()))?;
            // In a directory where others than root may add names, they may
            // have put a hard link to any file there: only a file of the
            // actuator's own is written.
            if w.dir_shared {
                let file_owner = rustix::fs::fstat(&w.file).map_err(|e| e.to_string())?.st_uid;
                if w.created {
                    rustix::fs::fchown(
                        &w.file,
                        Some(rustix::fs::Uid::from_raw(owner.uid)),
                        Some(rustix::fs::Gid::from_raw(owner.gid)),
                    )
                    .map_err(|e| format!("giving {} to {}:{}: {e}", p.display(), owner.uid, owner.gid))?;
                } else if file_owner != owner.uid {
                    return Err(format!(
                        "resolv.conf {} is in a directory others may write (owner uid {}) but belongs to \
                         uid {file_owner}, not to the actuator's uid {}: refusing to write it",
                        p.display(),
                        w.dir_owner,
                        owner.uid
                    ));
                }
            }
            Some((w.dir, w.file, w.name))
        }
    };
    Ok((state, run, resolv))
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
    let bytes = match files::read_bounded(state_dir, &name, 64 * 1024) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("ignoring the stored lease {name}: {e}");
            return None;
        }
    };
    let stored = match StoredLease::from_json(&bytes) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("ignoring the stored lease {name}: {e}");
            return None;
        }
    };
    if stored.interface != c.interface {
        log::warn!("ignoring the stored lease {name}: it is for {}", stored.interface);
        return None;
    }
    let lease = stored.rebase(boottime(), realtime_ms());
    if let Err(r) = lease.check(&c.limits) {
        log::warn!("ignoring the stored lease {name}: {r}");
        return None;
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
            rt.with_ctx(|dhcp, ctx| dhcp.publish(ctx));
        }
        // Publishes beyond those in flight are coalesced, never queued.
        assert_eq!(rt.service.publishes_in_flight, MAX_PUBLISHES_IN_FLIGHT);
        let rt = stop_after(rt, Duration::from_millis(300));
        assert!(rt.service.outstanding() <= MAX_ENGINE_INTENTS + MAX_PUBLISHES_IN_FLIGHT as usize);
        drop(actuator);
    }

    fn config_in(dir: &Path, resolv: &str) -> Config {
        let o = crate::config::Overrides {
            interface: Some("eth0".into()),
            state_dir: Some(dir.join("state")),
            run_dir: Some(dir.join("run")),
            resolv_conf: Some(dir.join(resolv)),
            ..Default::default()
        };
        Config::resolve(Path::new("test"), Default::default(), o).unwrap()
    }

    fn test_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mirage-sup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn owner(p: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).unwrap().uid()
    }

    #[test]
    fn directories_are_created_for_the_actuator_and_foreign_ones_refused() {
        use std::os::unix::fs::MetadataExt;
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let d = test_dir("dirs");
        let c = config_in(&d, "resolv.conf");
        let act = c.ids.actuator;
        prepare_dirs(&c).unwrap();
        for (sub, mode) in [("state", 0o700), ("run", 0o755)] {
            let m = std::fs::metadata(d.join(sub)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (act.uid, act.gid, mode),
                "{sub}"
            );
        }
        // Ours already: used again as it is.
        prepare_dirs(&c).unwrap();
        // Root's (or anyone else's): refused with the fix, never chowned.
        for (sub, other) in [("state", 0), ("run", 0), ("state", 65534)] {
            std::os::unix::fs::chown(d.join(sub), Some(other), Some(other)).unwrap();
            let e = prepare_dirs(&c).unwrap_err();
            assert!(e.contains(&d.join(sub).display().to_string()), "{e}");
            assert!(e.contains(&format!("belongs to uid {other}")), "{e}");
            assert!(e.contains(&format!("chown {}:{}", act.uid, act.gid)), "{e}");
            assert_eq!(owner(&d.join(sub)), other, "{sub} was taken over");
            std::os::unix::fs::chown(d.join(sub), Some(act.uid), Some(act.gid)).unwrap();
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn links_planted_by_a_role_are_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let d = test_dir("links");
        let act = config_in(&d, "x").ids.actuator;
        let vault = d.join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(vault.join("secret"), b"root only").unwrap();
        std::fs::set_permissions(vault.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // The roles' runtime directory, where the systemd and LinuxKit
        // layouts keep resolv.conf: the actuator's uid plants links in it.
        let c = config_in(&d, "run/resolv.conf");
        prepare_dirs(&c).unwrap();
        let plant = |target: &Path, at: &Path, uid: u32| {
            let _ = std::fs::remove_file(at);
            std::os::unix::fs::symlink(target, at).unwrap();
            std::os::unix::fs::lchown(at, Some(uid), Some(uid)).unwrap();
        };
        let resolv = d.join("run/resolv.conf");
        for target in [vault.join("secret"), vault.join("created")] {
            plant(&target, &resolv, act.uid);
            let e = prepare_dirs(&c).unwrap_err();
            assert!(
                e.contains("owned by uid") && e.contains("only links owned by root"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(vault.join("secret")).unwrap(), b"root only");
        assert!(!vault.join("created").exists());
        // A hard link the role made (fs.protected_hardlinks = 0) to a file
        // it does not own is not written either.
        std::fs::remove_file(&resolv).unwrap();
        std::fs::hard_link(vault.join("secret"), &resolv).unwrap();
        let e = prepare_dirs(&c).unwrap_err();
        assert!(e.contains("refusing to write it"), "{e}");
        std::fs::remove_file(&resolv).unwrap();
        // The same for the directories: a link at the state dir's path.
        plant(&vault, &d.join("state2"), act.uid);
        let mut c2 = config_in(&d, "run/resolv.conf");
        c2.state_dir = d.join("state2");
        assert!(
            prepare_dirs(&c2)
                .unwrap_err()
                .contains("only links owned by root")
        );
        c2.state_dir = d.join("state2/sub");
        assert!(
            prepare_dirs(&c2)
                .unwrap_err()
                .contains("only links owned by root")
        );
        assert!(!vault.join("sub").exists());
        assert_eq!(owner(&vault), 0);
        // Root's link (/etc/resolv.conf -> /run/systemd/resolve/...) works:
        // the file it points to and the directory that holds it.
        std::fs::create_dir(d.join("stub")).unwrap();
        std::fs::write(d.join("stub/stub-resolv.conf"), b"old").unwrap();
        plant(&d.join("stub/stub-resolv.conf"), &d.join("resolv.conf"), 0);
        let c3 = config_in(&d, "resolv.conf");
        let (_, _, r) = prepare_dirs(&c3).unwrap();
        let (dir, file, name) = r.unwrap();
        assert_eq!(name, "stub-resolv.conf");
        files::rewrite_in_place(&file, b"new").unwrap();
        files::write_atomic(&dir, &name, b"newer", 0o644).unwrap();
        assert_eq!(std::fs::read(d.join("stub/stub-resolv.conf")).unwrap(), b"newer");
        // A file the supervisor creates in the role's directory is the role's.
        let (_, _, r) = prepare_dirs(&c).unwrap();
        assert!(r.is_some());
        assert_eq!(owner(&resolv), act.uid);
        // The same in a root directory that everyone may write (/tmp): a
        // root file found there may be anyone's hard link.
        std::fs::create_dir(d.join("shared")).unwrap();
        std::fs::set_permissions(d.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(d.join("shared/resolv.conf"), b"root's").unwrap();
        let c4 = config_in(&d, "shared/resolv.conf");
        assert!(prepare_dirs(&c4).unwrap_err().contains("refusing to write it"));
        std::fs::remove_file(d.join("shared/resolv.conf")).unwrap();
        prepare_dirs(&c4).unwrap();
        assert_eq!(owner(&d.join("shared/resolv.conf")), act.uid);
        std::fs::remove_dir_all(&d).unwrap();
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
