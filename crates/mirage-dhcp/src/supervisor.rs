//! The supervisor: reads config and stored state, opens the privileged fds,
//! spawns the roles, then only routes typed messages between them, relays
//! their logs, restarts a dead engine and handles signals.
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
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_ipc::{
    ClientIdKind, EngineAction, EngineConfig, EngineEvent, EngineStart, FromActuator, FromEngine,
    FromNetwork, IntentKind, Lease, Outcome, PublishedStatus, Status, ToActuator, ToEngine, ToNetwork,
};
use mirage_sdk::channel::{Channel, Outbox, OutboxError, wait, wait_readable};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::log::{LineLimiter, LineVerdict};
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;

use crate::config::{ClientIdMode, Config, SandboxKind};
use crate::roles::{self, RoleName};

/// Engine restart back-off: doubles from the first value to the cap, and
/// resets once an engine has lived for `STABLE`.
const RESTART_FIRST: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(60);
/// Messages read from one role in one round of the event loop: every role
/// is drained in turn, so none can starve the others (or the signal pipe).
const BURST: usize = 64;
/// Messages for one role that its socket could not take yet. A role that
/// leaves this many unread does not read its channel: an engine is then
/// restarted, the network role or actuator stops the service.
const OUTBOX_MAX: usize = 64;
/// Intents of one engine the actuator has not answered yet. A real engine
/// has at most three at a time (apply, persist, and a retry); one past the
/// cap floods the actuator and is restarted.
const MAX_ENGINE_INTENTS: usize = 16;
/// Status publications in flight at the actuator; newer ones wait, and only
/// the newest of those is sent (the actuator writes files for each).
const MAX_PUBLISHES_IN_FLIGHT: u32 = 2;
/// Lines a role's dead channel may still hold, read after it exited.
const DRAIN_MAX: usize = 1024;
/// How long a stop waits for the engine's last actions (RELEASE...).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// status.json / metrics.prom are refreshed at least this often.
const REPUBLISH: Duration = Duration::from_secs(30);

/// A running role: its process, channel and log pipe.
struct Role {
    name: RoleName,
    child: mirage_sdk::spawn::RoleProcess,
    chan: Channel,
    /// What the role's socket could not take yet (never a blocking send).
    outbox: Outbox,
    log: std::process::ChildStderr,
    log_buf: Vec<u8>,
    log_limit: LineLimiter,
    started: StdInstant,
}

impl Role {
    fn new(
        name: RoleName,
        child: mirage_sdk::spawn::RoleProcess,
        chan: Channel,
        log: std::process::ChildStderr,
        started: StdInstant,
    ) -> Role {
        Role {
            name,
            child,
            chan,
            outbox: Outbox::new(OUTBOX_MAX),
            log,
            log_buf: Vec::new(),
            log_limit: LineLimiter::new(
                LineLimiter::ROLE_PER_SECOND,
                LineLimiter::ROLE_BURST,
                StdInstant::now(),
            ),
            started,
        }
    }

    /// Relay complete lines from the role's stderr, rate-limited; `false`
    /// at EOF.
    fn relay_logs(&mut self) -> bool {
        self.relay_logs_to(&mut |line| eprintln!("{line}"))
    }

    fn relay_logs_to(&mut self, out: &mut dyn FnMut(&str)) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.log.read(&mut buf) {
            Ok(0) | Err(_) => {
                let n = self.log_limit.take_suppressed();
                if n > 0 {
                    out(&format!(
                        "[{}] {n} more log lines not relayed (rate limit)",
                        self.name.as_str()
                    ));
                }
                return false;
            }
            Ok(n) => n,
        };
        self.log_buf.extend_from_slice(&buf[..n]);
        while let Some(pos) = self.log_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.log_buf.drain(..=pos).collect();
            self.relay_line(&line[..line.len() - 1], out);
        }
        if self.log_buf.len() > mirage_sdk::log::MAX_RELAYED_LINE {
            let line: Vec<u8> = std::mem::take(&mut self.log_buf);
            self.relay_line(&line, out);
        }
        true
    }

    fn relay_line(&mut self, line: &[u8], out: &mut dyn FnMut(&str)) {
        let name = self.name.as_str();
        match self.log_limit.check(StdInstant::now()) {
            LineVerdict::Drop => {}
            LineVerdict::Relay => out(&mirage_sdk::log::relay_line(name, line)),
            LineVerdict::RelayAfter(n) => {
                out(&format!("[{name}] {n} log lines not relayed (rate limit)"));
                out(&mirage_sdk::log::relay_line(name, line));
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill the role, then relay what it logged until its stderr ends. In
    /// this order: a live role (one that sent a bad message and keeps its
    /// stderr open) would otherwise block the supervisor in the read forever.
    fn kill_and_drain(&mut self) {
        self.kill();
        while self.relay_logs() {}
    }
}

/// Everything the supervisor knows while it runs.
struct Supervisor {
    config: Config,
    level: log::LevelFilter,
    ifindex: u32,
    mac: [u8; 6],
    engine_config: EngineConfig,
    engine: Option<Role>,
    network: Role,
    actuator: Role,
    /// The lease last persisted (given to a restarted engine).
    lease: Option<Lease>,
    link_up: bool,
    status: Status,
    engine_restarts: u32,
    frames_refused: u64,
    intents_refused: u64,
    restart_delay: Duration,
    restart_at: Option<StdInstant>,
    last_publish: StdInstant,
    /// Which engine this is (counts restarts): answers to a dead engine's
    /// intents are not handed to its successor.
    engine_generation: u64,
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
    /// What the network role is told about our address.
    binding: roles::network::BindingTracker,
}

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

    let resolv_name = resolv.as_ref().map(|(_, _, name)| name.clone());
    let common = RoleCommon {
        config: &config,
        resolv_name,
        level,
        ifindex: link.index,
        mac,
        // A first start's DUID is stored durably (atomic replace, fsyncs)
        // by the actuator once the lease is applied, off the path to it: the
        // engine has the DUID already, and a crash before it is stored
        // derives the same DUID-LL from the MAC again.
        new_duid,
        client_id: Some(
            dhcp_engine::client::client_id_bytes(&engine_config)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ),
    };
    // All three roles start side by side: each fork returns at once, and
    // the children exec and drop their privileges in parallel instead of
    // one after the other (their start-up, not the DHCP exchange, is most
    // of the time to a lease). The engine first: it and the network role
    // are on the path to the first DISCOVER. Messages to a role wait in
    // its channel until it is ready.
    let engine = launch_engine(&common, &engine_config, stored.clone(), link.carrier)?;
    let network = common.start(RoleName::Network, &[packet.as_fd()])?;
    drop(packet);
    let mut actuator_fds = vec![rtnl.as_fd(), monitor.as_fd(), state_dir.as_fd(), run_dir.as_fd()];
    if let Some((dir, file, _)) = &resolv {
        actuator_fds.push(dir.as_fd());
        actuator_fds.push(file.as_fd());
    }
    let actuator = common.start(RoleName::Actuator, &actuator_fds)?;
    drop(actuator_fds);
    // The supervisor keeps none of the privileged fds.
    drop((rtnl, monitor, state_dir, run_dir, resolv));
    // Sandbox the supervisor now, before the roles' exec is confirmed: the
    // children are past the fork and inherit nothing more from us, and
    // confirming takes no privilege, so the filter's compile and install
    // overlap the roles' start-up instead of delaying the first frames.
    roles::sandbox::drop_supervisor().map_err(|e| format!("dropping supervisor privileges: {e}"))?;
    if config.sandbox == SandboxKind::Seccomp {
        // Restarted engines inherit this filter and stack their own on top.
        mirage_sdk::sandbox::seccomp::install(mirage_sdk::sandbox::seccomp::Role::Supervisor)
            .map_err(|e| format!("supervisor seccomp: {e}"))?;
    }
    let (engine, network, actuator) = (engine.finish()?, network.finish()?, actuator.finish()?);

    let mut sup = Supervisor::new(
        config.clone(),
        level,
        (link.index, mac),
        engine_config,
        [engine, network, actuator],
        stored,
        link.carrier,
    );
    log::info!(
        "started on {} (index {}, {}), sandbox {}",
        config.interface,
        link.index,
        roles::format_mac(&mac),
        config.sandbox.as_str()
    );
    let deadline = oneshot.map(|d| StdInstant::now() + d);
    let code = sup.event_loop(&signals, deadline);
    sup.shutdown();
    Ok(code)
}

impl Supervisor {
    /// The supervisor of running roles (engine, network, actuator).
    fn new(
        config: Config,
        level: log::LevelFilter,
        (ifindex, mac): (u32, [u8; 6]),
        engine_config: EngineConfig,
        [engine, network, actuator]: [Role; 3],
        lease: Option<Lease>,
        link_up: bool,
    ) -> Supervisor {
        Supervisor {
            config,
            level,
            ifindex,
            mac,
            engine_config,
            engine: Some(engine),
            network,
            actuator,
            lease,
            link_up,
            status: Status::default(),
            engine_restarts: 0,
            frames_refused: 0,
            intents_refused: 0,
            restart_delay: RESTART_FIRST,
            restart_at: None,
            last_publish: StdInstant::now(),
            engine_generation: 0,
            intents: VecDeque::new(),
            publishes_in_flight: 0,
            publish_pending: false,
            applied: false,
            drop_log: DropLog::default(),
            frames_shed: 0,
            binding: Default::default(),
        }
    }
}

struct RoleCommon<'a> {
    config: &'a Config,
    resolv_name: Option<String>,
    level: log::LevelFilter,
    ifindex: u32,
    mac: [u8; 6],
    /// DUID text for the actuator to store (first start only).
    new_duid: Option<String>,
    /// Option 61 in hex, for the network role's policy.
    client_id: Option<String>,
}

impl RoleCommon<'_> {
    /// Start a role without waiting for its exec; [`StartingRole::finish`]
    /// confirms it.
    fn start(&self, name: RoleName, extra_fds: &[BorrowedFd<'_>]) -> Result<StartingRole, String> {
        let c = self.config;
        let (ours, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut args: Vec<String> = vec![
            "role".into(),
            name.as_str().into(),
            "--interface".into(),
            c.interface.clone(),
            "--ifindex".into(),
            self.ifindex.to_string(),
            "--mac".into(),
            roles::format_mac(&self.mac),
            "--uid".into(),
            c.ids.of(name).uid.to_string(),
            "--gid".into(),
            c.ids.of(name).gid.to_string(),
            "--sandbox".into(),
            c.sandbox.as_str().into(),
            "--log-level".into(),
            self.level.to_string().to_lowercase(),
            "--max-routes".into(),
            c.limits.max_routes.to_string(),
            "--max-dns-servers".into(),
            c.limits.max_dns_servers.to_string(),
            "--max-ntp-servers".into(),
            c.limits.max_ntp_servers.to_string(),
            "--max-search-domains".into(),
            c.limits.max_search_domains.to_string(),
            "--min-route-prefix-len".into(),
            c.limits.min_route_prefix_len.to_string(),
            "--min-subnet-prefix-len".into(),
            c.limits.min_subnet_prefix_len.to_string(),
        ];
        if c.limits.ignore_classless_routes {
            args.push("--ignore-classless-routes".into());
        }
        if name == RoleName::Actuator
            && let Some(table) = c.route_table
        {
            args.push("--route-table".into());
            args.push(table.to_string());
        }
        if name == RoleName::Network && c.acd.enabled {
            args.push("--with-arp".into());
        }
        if name == RoleName::Network
            && let Some(id) = &self.client_id
        {
            args.extend(["--client-id".into(), id.clone()]);
        }
        if name == RoleName::Actuator
            && let Some(name) = &self.resolv_name
        {
            args.push("--resolv-name".into());
            args.push(name.clone());
        }
        if name == RoleName::Actuator
            && let Some(duid) = &self.new_duid
        {
            args.push("--store-duid".into());
            args.push(duid.clone());
        }
        let mut fds = vec![theirs.as_fd()];
        fds.extend_from_slice(extra_fds);
        let pending = mirage_sdk::spawn::start(None, &args, &fds)
            .map_err(|e| format!("starting the {} role: {e}", name.as_str()))?;
        // Our copy of the role's end closes here; the role holds the only one.
        drop(theirs);
        Ok(StartingRole {
            name,
            pending,
            chan: ours,
            started: StdInstant::now(),
        })
    }
}

/// A role whose process exists but whose exec is not confirmed yet.
struct StartingRole {
    name: RoleName,
    pending: mirage_sdk::spawn::PendingRole,
    chan: Channel,
    started: StdInstant,
}

impl StartingRole {
    /// Wait until the role runs our binary, or say why it could not.
    fn finish(self) -> Result<Role, String> {
        let name = self.name;
        let child = self
            .pending
            .finish()
            .map_err(|e| format!("starting the {} role: {e}", name.as_str()))?;
        let (child, log) = child.into_parts();
        Ok(Role::new(name, child, self.chan, log, self.started))
    }
}

/// Start an engine and hand it its Start message (it may sit in the channel
/// until the engine has dropped its privileges and reads it).
fn launch_engine(
    common: &RoleCommon<'_>,
    config: &EngineConfig,
    stored: Option<Lease>,
    link_up: bool,
) -> Result<StartingRole, String> {
    let role = common.start(RoleName::Engine, &[])?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
    let start = ToEngine::Start {
        start: EngineStart {
            config: config.clone(),
            stored,
            link_up,
        },
        seed,
    };
    role.chan
        .send(&start)
        .map_err(|e| format!("starting the engine: {e}"))?;
    Ok(role)
}

impl Supervisor {
    fn common(&self) -> RoleCommon<'_> {
        RoleCommon {
            config: &self.config,
            resolv_name: None,
            level: self.level,
            ifindex: self.ifindex,
            mac: self.mac,
            new_duid: None,
            client_id: None,
        }
    }

    fn start_engine(&mut self) -> Result<(), String> {
        let role = launch_engine(
            &self.common(),
            &self.engine_config,
            self.lease.clone(),
            self.link_up,
        )?
        .finish()?;
        self.engine = Some(role);
        self.engine_generation += 1;
        Ok(())
    }

    /// The engine died or misbehaved: kill it and schedule a restart. The
    /// address stays: the new engine verifies the lease (INIT-REBOOT).
    fn engine_failed(&mut self, why: &str) {
        if let Some(mut e) = self.engine.take() {
            e.kill_and_drain();
            if e.started.elapsed() >= STABLE {
                self.restart_delay = RESTART_FIRST;
            }
            log::error!("engine stopped ({why}); restarting in {:?}", self.restart_delay);
            self.restart_at = Some(StdInstant::now() + self.restart_delay);
            self.restart_delay = (self.restart_delay * 2).min(RESTART_MAX);
        }
    }

    /// Hand an event to the engine without ever blocking (see [`Outbox`]);
    /// an engine that leaves [`OUTBOX_MAX`] of them unread is restarted.
    fn send_engine(&mut self, event: EngineEvent) {
        let Some(e) = &mut self.engine else { return };
        if let Err(err) = e.outbox.push(&e.chan, &ToEngine::Event(event)) {
            self.engine_failed(&format!("send: {err}"));
        }
    }

    /// Hand a frame on without ever blocking: a frame that the receiving
    /// role's socket cannot take now, or that would overtake messages
    /// queued before it, is dropped, as a busy link would; DHCP retransmits.
    fn send_frame<T: serde::Serialize>(&mut self, to: RoleName, msg: &T) -> Result<(), String> {
        let role = match to {
            RoleName::Engine => match &self.engine {
                Some(e) => e,
                None => return Ok(()),
            },
            RoleName::Network => &self.network,
            RoleName::Actuator => &self.actuator,
        };
        let sent = if role.outbox.is_empty() {
            role.chan
                .try_send(msg)
                .map_err(|e| format!("{}: {e}", to.as_str()))?
        } else {
            false
        };
        if !sent {
            self.frames_shed += 1;
            // Logged at 1, 2, 4, 8... so a flood cannot flood the log.
            if self.frames_shed.is_power_of_two() {
                log::warn!(
                    "the {} role's queue is full: {} frames dropped so far",
                    to.as_str(),
                    self.frames_shed
                );
            }
        }
        Ok(())
    }

    /// Tell the network role about our address, never blocking; a state it
    /// could not take now is sent again next round.
    fn tell_network(&mut self) {
        if let Some(msg) = self.binding.update()
            && let Ok(true) = self.network.chan.try_send(&msg)
        {
            self.binding.sent();
        }
    }

    /// Queue a message for the actuator (it answers every one). It never
    /// blocks; an actuator that leaves [`OUTBOX_MAX`] unread stops the
    /// service, since nothing else can apply or remove the lease.
    fn send_actuator(&mut self, msg: ToActuator) -> Result<(), String> {
        match &msg {
            ToActuator::Publish(_) => self.publishes_in_flight += 1,
            _ => self.intents.push_back(self.engine_generation),
        }
        let a = &mut self.actuator;
        a.outbox.push(&a.chan, &msg).map_err(|e| match e {
            OutboxError::Full => "the actuator does not read its channel".to_string(),
            OutboxError::Channel(e) => format!("actuator: {e}"),
        })
    }

    /// Requests the actuator has not answered yet.
    fn outstanding(&self) -> usize {
        self.intents.len() + self.publishes_in_flight as usize
    }

    /// Forward an engine's intent, unless that engine already has
    /// [`MAX_ENGINE_INTENTS`] unanswered: then it floods the actuator (a
    /// real engine never does) and is restarted instead. Says whether it
    /// was forwarded.
    fn forward_intent(&mut self, msg: ToActuator) -> Result<bool, String> {
        let mine = self
            .intents
            .iter()
            .filter(|&&g| g == self.engine_generation)
            .count();
        if mine >= MAX_ENGINE_INTENTS {
            self.intents_refused += 1;
            self.engine_failed(&format!(
                "more than {MAX_ENGINE_INTENTS} intents waiting for the actuator"
            ));
            return Ok(false);
        }
        self.send_actuator(msg)?;
        Ok(true)
    }

    /// Publish the status; while [`MAX_PUBLISHES_IN_FLIGHT`] are being
    /// written, only remember that a newer one is due.
    fn publish(&mut self) -> Result<(), String> {
        self.last_publish = StdInstant::now();
        if self.publishes_in_flight >= MAX_PUBLISHES_IN_FLIGHT {
            self.publish_pending = true;
            return Ok(());
        }
        self.publish_pending = false;
        let p = PublishedStatus {
            status: self.status.clone(),
            interface: self.config.interface.clone(),
            sandbox: self.config.sandbox.as_str().into(),
            engine_restarts: self.engine_restarts,
            frames_refused: self.frames_refused,
            intents_refused: self.intents_refused,
            now: boottime(),
        };
        self.send_actuator(ToActuator::Publish(p))
    }

    fn on_engine_message(&mut self, msg: FromEngine) -> Result<(), String> {
        match msg {
            FromEngine::Refused(reason) => self.drop_log.record(reason),
            FromEngine::Action(EngineAction::Transmit(frame)) => {
                self.send_frame(RoleName::Network, &ToNetwork::Transmit(frame))?;
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
                if self.forward_intent(ToActuator::Apply { lease, valid_secs })? {
                    self.binding.apply_forwarded(&address);
                    self.tell_network();
                }
            }
            FromEngine::Action(EngineAction::RemoveLease { lease }) => {
                log::info!("removing {}/{}", lease.address, lease.prefix_len);
                self.applied = false;
                let address = lease.clone();
                if self.forward_intent(ToActuator::Remove { lease })? {
                    self.binding.remove_forwarded(&address);
                    self.tell_network();
                }
            }
            FromEngine::Action(EngineAction::PersistLease(lease)) => {
                self.lease = lease.clone();
                self.forward_intent(ToActuator::Persist(lease))?;
            }
            FromEngine::Action(EngineAction::PublishStatus(status)) => {
                if !forwardable(&status, &self.config.interface) {
                    // Only a misbehaving engine sends one (a real status is a
                    // few hundred bytes): restart it; the send to the
                    // actuator would fail and stop the whole service.
                    self.engine_failed("published a status too large to forward");
                    return Ok(());
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
                self.publish()?;
            }
        }
        Ok(())
    }

    fn on_actuator_message(&mut self, msg: FromActuator) -> Result<(), String> {
        match msg {
            FromActuator::LinkUp => {
                log::info!("carrier up");
                self.link_up = true;
                self.send_engine(EngineEvent::LinkUp);
            }
            FromActuator::LinkDown => {
                log::info!("carrier down");
                self.link_up = false;
                self.send_engine(EngineEvent::LinkDown);
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
                    self.tell_network();
                }
                match generation {
                    None if self.publish_pending => self.publish()?,
                    None => {}
                    Some(g) if g == Some(self.engine_generation) => {
                        self.send_engine(EngineEvent::IntentResult { kind, ok })
                    }
                    // An answer to an engine that was restarted since.
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn event_loop(&mut self, signals: &SignalPipe, deadline: Option<StdInstant>) -> ExitCode {
        loop {
            if let Some(d) = deadline {
                if self.applied && self.outstanding() == 0 {
                    log::info!("lease applied; exiting (--oneshot)");
                    return ExitCode::SUCCESS;
                }
                if StdInstant::now() >= d {
                    log::error!("no lease before the --oneshot timeout");
                    return ExitCode::from(3);
                }
            }
            if self.engine.is_none()
                && let Some(at) = self.restart_at
                && StdInstant::now() >= at
            {
                self.restart_at = None;
                self.engine_restarts += 1;
                if let Err(e) = self.start_engine() {
                    log::error!("{e}");
                    self.restart_at = Some(StdInstant::now() + self.restart_delay);
                }
            }
            self.tell_network();
            if self.last_publish.elapsed() >= REPUBLISH
                && let Err(e) = self.publish()
            {
                log::error!("{e}");
                return ExitCode::FAILURE;
            }
            let mut timeout = REPUBLISH.saturating_sub(self.last_publish.elapsed());
            if let Some(at) = self.restart_at {
                timeout = timeout.min(at.saturating_duration_since(StdInstant::now()));
            }
            if let Some(d) = deadline {
                timeout = timeout.min(d.saturating_duration_since(StdInstant::now()));
            }
            let timeout_ms = timeout.as_millis().min(60_000) as u64 + 1;
            match self.round(Some(signals.read.as_fd()), timeout_ms) {
                Ok(Progress { signal: true, .. }) => {
                    let sig = signals.read();
                    log::info!("signal {sig}: stopping");
                    self.stop();
                    return ExitCode::SUCCESS;
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    /// One round of the event loop: wait up to `timeout_ms` for any role
    /// (or `signal`), then send what the roles' sockets take, relay logs and
    /// read at most [`BURST`] messages from each role. Nothing here blocks,
    /// so a role that floods or stops reading can slow a round but never
    /// hold the supervisor. An error stops the service.
    fn round(&mut self, signal: Option<BorrowedFd<'_>>, timeout_ms: u64) -> Result<Progress, String> {
        // A binding state the network role could not take last round.
        self.tell_network();
        let mut fds: Vec<(BorrowedFd<'_>, bool)> = vec![
            (self.network.chan.as_fd(), !self.network.outbox.is_empty()),
            (self.network.log.as_fd(), false),
            (self.actuator.chan.as_fd(), !self.actuator.outbox.is_empty()),
            (self.actuator.log.as_fd(), false),
        ];
        if let Some(e) = &self.engine {
            fds.push((e.chan.as_fd(), !e.outbox.is_empty()));
            fds.push((e.log.as_fd(), false));
        }
        if let Some(fd) = signal {
            fds.push((fd, false));
        }
        let ready = wait(&fds, Some(timeout_ms)).map_err(|e| format!("poll: {e}"))?;
        drop(fds);
        let has_engine = self.engine.is_some();
        let (engine_chan, engine_log) = if has_engine {
            (ready[4].readable, ready[5].readable)
        } else {
            (false, false)
        };
        let progress = Progress {
            signal: signal.is_some() && ready.last().is_some_and(|r| r.readable),
            any: ready.iter().any(|r| r.readable),
        };

        self.network
            .outbox
            .flush(&self.network.chan)
            .map_err(|e| format!("network: {e}"))?;
        self.actuator
            .outbox
            .flush(&self.actuator.chan)
            .map_err(|e| format!("actuator: {e}"))?;
        if let Some(e) = &mut self.engine
            && let Err(err) = e.outbox.flush(&e.chan)
        {
            self.engine_failed(&format!("send: {err}"));
        }

        if ready[1].readable && !self.network.relay_logs() {
            return Err("the network role exited".into());
        }
        if ready[3].readable && !self.actuator.relay_logs() {
            return Err("the actuator role exited".into());
        }
        let engine_exited = engine_log && !self.engine.as_mut().is_some_and(|e| e.relay_logs());

        let mut readable = ready[0].readable;
        for _ in 0..BURST {
            if !readable {
                break;
            }
            match self.network.chan.recv::<FromNetwork>() {
                Ok(Some(FromNetwork::Frame {
                    data,
                    checksum_offloaded,
                })) => {
                    let event = ToEngine::Event(EngineEvent::Frame {
                        data,
                        checksum_offloaded,
                    });
                    if let Err(e) = self.send_frame(RoleName::Engine, &event) {
                        self.engine_failed(&format!("send: {e}"));
                    }
                }
                Ok(Some(FromNetwork::Refused { reason })) => {
                    self.frames_refused += 1;
                    log::warn!("network role refused a frame from the engine: {reason}");
                }
                Ok(Some(FromNetwork::Capped { frames })) => {
                    self.frames_refused += frames;
                }
                Ok(None) => return Err("the network role closed its channel".into()),
                Err(e) => return Err(format!("bad message from the network role: {e}")),
            }
            readable = more(&self.network.chan)?;
        }

        let mut readable = ready[2].readable;
        for _ in 0..BURST {
            if !readable {
                break;
            }
            match self.actuator.chan.recv::<FromActuator>() {
                Ok(Some(msg)) => self.on_actuator_message(msg)?,
                Ok(None) => return Err("the actuator role closed its channel".into()),
                Err(e) => return Err(format!("bad message from the actuator role: {e}")),
            }
            readable = more(&self.actuator.chan)?;
        }

        // An engine that exited may have sent its last intents (a lease to
        // persist) just before: read everything it left before acting on
        // its exit.
        let budget = if engine_exited { DRAIN_MAX } else { BURST };
        let mut readable = engine_chan || engine_exited;
        for _ in 0..budget {
            if !readable {
                break;
            }
            let Some(e) = &self.engine else { break };
            match e.chan.recv::<FromEngine>() {
                Ok(Some(msg)) => self.on_engine_message(msg)?,
                Ok(None) => self.engine_failed("closed its channel"),
                Err(e) => self.engine_failed(&format!("sent a bad message: {e}")),
            }
            readable = match &self.engine {
                Some(e) => more(&e.chan)?,
                None => false,
            };
        }
        if engine_exited {
            self.engine_failed("exited");
        }
        Ok(progress)
    }

    /// SIGTERM/SIGINT: let the engine release (if configured) and finish its
    /// last intents, within a grace period that nothing can extend: every
    /// round is bounded and nothing in it blocks.
    fn stop(&mut self) {
        self.send_engine(EngineEvent::Stop { force_release: false });
        let until = StdInstant::now() + STOP_GRACE;
        while StdInstant::now() < until {
            let left = until.saturating_duration_since(StdInstant::now()).as_millis() as u64;
            match self.round(None, left.clamp(1, 200)) {
                Ok(p) => {
                    let queued = !self.actuator.outbox.is_empty() || !self.network.outbox.is_empty();
                    if !p.any && !queued && self.outstanding() == 0 {
                        break;
                    }
                    if self.engine.is_none() && self.outstanding() == 0 && !queued {
                        break;
                    }
                }
                Err(e) => {
                    log::error!("{e}");
                    break;
                }
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(mut e) = self.engine.take() {
            e.kill();
        }
        self.network.kill();
        self.actuator.kill();
        while self.network.relay_logs() {}
        while self.actuator.relay_logs() {}
    }
}

/// What one [`Supervisor::round`] saw.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// The signal pipe was readable.
    signal: bool,
    /// Anything was readable.
    any: bool,
}

/// Whether another message waits on `chan` (a zero-timeout poll).
fn more(chan: &Channel) -> Result<bool, String> {
    wait_readable(&[chan.as_fd()], Some(0))
        .map(|r| r[0])
        .map_err(|e| format!("poll: {e}"))
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
        .and_then(|b| parse_hex(&b));
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

/// Hex digits (surrounding white space ignored) to bytes. Works on bytes,
/// not `str` slices: the file is written by a role's uid, and slicing a
/// multi-byte character in half would panic.
fn parse_hex(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = bytes.trim_ascii();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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

/// SIGTERM, SIGINT and SIGHUP turned into a readable pipe for poll.
struct SignalPipe {
    read: std::os::unix::net::UnixStream,
}

impl SignalPipe {
    fn new() -> Result<Self, String> {
        let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        read.set_nonblocking(true).map_err(|e| e.to_string())?;
        write.set_nonblocking(true).map_err(|e| e.to_string())?;
        for sig in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            let w = OwnedFd::from(write.try_clone().map_err(|e| e.to_string())?);
            signal_hook::low_level::pipe::register_raw(sig, w).map_err(|e| e.to_string())?;
        }
        Ok(SignalPipe { read })
    }

    fn read(&self) -> String {
        let mut buf = [0u8; 16];
        let _ = (&self.read).read(&mut buf);
        "received".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};
    use std::io::Write as _;

    /// A stand-in role: a real child process (`sh -c script`) whose stderr
    /// is the role's log, and the channel's far end for the test to play
    /// the role with.
    fn stand_in(name: RoleName, script: &str) -> (Role, Channel) {
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

    /// A supervisor over three stand-in roles, and their far ends (engine,
    /// network, actuator). Restarts are scheduled but never due during a
    /// test: a restart would re-execute the test binary as a role.
    fn supervisor_with_stand_ins() -> (Supervisor, [Channel; 3]) {
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
        let (engine, e) = stand_in(RoleName::Engine, "exec sleep 60");
        let (network, n) = stand_in(RoleName::Network, "exec sleep 60");
        let (actuator, a) = stand_in(RoleName::Actuator, "exec sleep 60");
        let mut sup = Supervisor::new(
            config,
            log::LevelFilter::Info,
            (1, mac),
            EngineConfig::new(mac, ClientIdKind::Mac),
            [engine, network, actuator],
            None,
            true,
        );
        sup.restart_delay = Duration::from_secs(3600);
        (sup, [e, n, a])
    }

    /// Runs the event loop on a thread, sends it a signal after `after`,
    /// and returns the supervisor once the loop has returned; fails if it
    /// did not return within its stop grace plus a margin for slow machines.
    fn stop_after(mut sup: Supervisor, after: Duration) -> Supervisor {
        let (read, write) = std::os::unix::net::UnixStream::pair().unwrap();
        read.set_nonblocking(true).unwrap();
        let signals = SignalPipe { read };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = sup.event_loop(&signals, None);
            let _ = tx.send((code, sup));
        });
        std::thread::sleep(after);
        (&write).write_all(b"T").unwrap();
        let (code, mut sup) = rx
            .recv_timeout(STOP_GRACE + Duration::from_secs(10))
            .expect("the supervisor did not honour the signal: it is blocked");
        assert_eq!(code, ExitCode::SUCCESS);
        sup.shutdown();
        sup
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
        let (sup, [engine, _network, actuator]) = supervisor_with_stand_ins();
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
        let sup = stop_after(sup, Duration::from_millis(500));
        assert!(sup.engine.is_none(), "the flooding engine was not stopped");
        assert!(sup.restart_at.is_some(), "no restart was scheduled");
        assert!(sup.intents_refused >= 1);
        let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            answered <= (MAX_ENGINE_INTENTS + OUTBOX_MAX) as u64 + 8,
            "{answered} intents reached the actuator: the cap did not hold"
        );
    }

    #[test]
    fn an_engine_that_stops_reading_is_restarted_and_signals_still_work() {
        let (sup, [engine, _network, actuator]) = supervisor_with_stand_ins();
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
        let sup = stop_after(sup, Duration::from_millis(500));
        drop(engine);
        assert!(
            sup.engine.is_none(),
            "the engine that does not read was not stopped"
        );
        assert!(sup.restart_at.is_some(), "no restart was scheduled");
    }

    #[test]
    fn an_actuator_that_stops_reading_never_wedges_the_supervisor() {
        let (mut sup, [engine, _network, actuator]) = supervisor_with_stand_ins();
        // Under the intent cap, but the actuator never answers or reads.
        std::thread::spawn(move || {
            for _ in 0..MAX_ENGINE_INTENTS - 1 {
                let _ = engine.send(&apply());
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        for _ in 0..OUTBOX_MAX * 4 {
            let _ = sup.publish();
        }
        // Publishes beyond those in flight are coalesced, never queued.
        assert_eq!(sup.publishes_in_flight, MAX_PUBLISHES_IN_FLIGHT);
        let sup = stop_after(sup, Duration::from_millis(300));
        assert!(sup.outstanding() <= MAX_ENGINE_INTENTS + MAX_PUBLISHES_IN_FLIGHT as usize);
        drop(actuator);
    }

    #[test]
    fn a_role_flooding_its_log_is_relayed_at_a_bounded_rate() {
        let (mut role, _chan) = stand_in(RoleName::Engine, "exec yes 'INFO flood' >&2");
        let start = StdInstant::now();
        let (mut relayed, mut summaries) = (0u64, 0u64);
        while start.elapsed() < Duration::from_millis(1500) {
            assert!(role.relay_logs_to(&mut |line| {
                if line.contains("not relayed (rate limit)") {
                    summaries += 1;
                } else {
                    assert_eq!(line, "[engine] INFO flood");
                    relayed += 1;
                }
            }));
        }
        let secs = start.elapsed().as_secs() + 1;
        let bound = u64::from(LineLimiter::ROLE_BURST) + secs * u64::from(LineLimiter::ROLE_PER_SECOND);
        assert!(relayed <= bound, "{relayed} lines relayed (bound {bound})");
        assert!(relayed >= u64::from(LineLimiter::ROLE_BURST), "{relayed}");
        assert!(summaries >= 1 && summaries <= secs, "{summaries} summary lines");
        role.kill();
    }

    #[test]
    fn stopping_a_live_role_that_keeps_its_stderr_open_returns() {
        // A misbehaving engine is still alive when it is stopped; reading
        // its stderr to the end before killing it would wait for ever.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sleep(1) runs");
        let log = child.stderr.take().expect("piped stderr");
        let chan = Channel::pair().expect("socketpair").0;
        let mut role = Role::new(RoleName::Engine, child.into(), chan, log, StdInstant::now());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            role.kill_and_drain();
            let _ = tx.send(role.child.try_wait().map(|s| s.is_some()));
        });
        let reaped = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stopping the role blocked on its log pipe");
        assert!(matches!(reaped, Ok(true)), "the role was not killed and reaped");
    }

    /// A config whose directories and resolv.conf are under `dir`.
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
        assert_eq!(parse_hex(b" 00030001aabb\n"), Some(vec![0, 3, 0, 1, 0xaa, 0xbb]));
        assert_eq!(parse_hex(b"0A0b"), Some(vec![0x0a, 0x0b]));
        for bad in [
            &b"abc"[..],
            b"zz",
            b"+1",
            "aé0".as_bytes(),
            "éé".as_bytes(),
            b"\xff\xfe",
        ] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
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
