//! The supervisor: reads config and stored state, opens the privileged fds,
//! spawns the roles, then only routes typed messages between them, relays
//! their logs, restarts a dead engine and handles signals.
//!
//! Message routing (the supervisor never parses frames; it decodes only
//! size-capped typed messages and re-checks nothing the actuator will check):
//! ```text
//!   network --Frame--> engine --Transmit--> network
//!   engine --Apply/Remove/Persist--> actuator --Result--> engine
//!   actuator --LinkUp/LinkDown--> engine
//!   engine --PublishStatus--> (supervisor adds its counters) --> actuator
//! ```

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_ipc::{
    ClientIdKind, EngineAction, EngineConfig, EngineEvent, FromActuator, FromEngine, FromNetwork, IntentKind,
    Lease, Outcome, PublishedStatus, Status, ToActuator, ToEngine, ToNetwork,
};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::{boottime, realtime_ms};
use mirage_sdk::files::{self, StoredLease};
use mirage_sdk::netlink::{LinkMonitor, Rtnl};
use mirage_sdk::packet::PacketSocket;

use crate::config::{ClientIdMode, Config, SandboxKind};
use crate::roles::{self, RoleName};

/// Engine restart back-off: doubles from the first value to the cap, and
/// resets once an engine has lived for `STABLE`.
const RESTART_FIRST: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(60);
/// Engine messages handled in one round of the event loop (see there).
const ENGINE_BURST: usize = 64;
/// How long a stop waits for the engine's last actions (RELEASE...).
const STOP_GRACE: Duration = Duration::from_secs(2);
/// status.json / metrics.prom are refreshed at least this often.
const REPUBLISH: Duration = Duration::from_secs(30);

/// A running role: its process, channel and log pipe.
struct Role {
    name: RoleName,
    child: mirage_sdk::spawn::RoleProcess,
    chan: Channel,
    log: std::process::ChildStderr,
    log_buf: Vec<u8>,
    started: StdInstant,
}

impl Role {
    /// Relay complete lines from the role's stderr; `false` at EOF.
    fn relay_logs(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.log.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        self.log_buf.extend_from_slice(&buf[..n]);
        while let Some(pos) = self.log_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.log_buf.drain(..=pos).collect();
            eprintln!(
                "{}",
                mirage_sdk::log::relay_line(self.name.as_str(), &line[..line.len() - 1])
            );
        }
        if self.log_buf.len() > mirage_sdk::log::MAX_RELAYED_LINE {
            let line: Vec<u8> = std::mem::take(&mut self.log_buf);
            eprintln!("{}", mirage_sdk::log::relay_line(self.name.as_str(), &line));
        }
        true
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
    /// Intents forwarded to the actuator and not answered yet.
    outstanding: u32,
    drop_log: DropLog,
    applied: bool,
    /// Frames not delivered because the receiving role's queue was full.
    frames_shed: u64,
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

    let mut sup = Supervisor {
        config: config.clone(),
        level,
        ifindex: link.index,
        mac,
        engine_config,
        engine: Some(engine),
        network,
        actuator,
        lease: stored,
        link_up: link.carrier,
        status: Status::default(),
        engine_restarts: 0,
        frames_refused: 0,
        intents_refused: 0,
        restart_delay: RESTART_FIRST,
        restart_at: None,
        last_publish: StdInstant::now(),
        outstanding: 0,
        applied: false,
        drop_log: DropLog::default(),
        frames_shed: 0,
    };
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

struct RoleCommon<'a> {
    config: &'a Config,
    resolv_name: Option<String>,
    level: log::LevelFilter,
    ifindex: u32,
    mac: [u8; 6],
    /// DUID text for the actuator to store (first start only).
    new_duid: Option<String>,
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
            c.uid.to_string(),
            "--gid".into(),
            c.gid.to_string(),
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
        ];
        if name == RoleName::Network && c.acd.enabled {
            args.push("--with-arp".into());
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
        Ok(Role {
            name,
            child,
            chan: self.chan,
            log,
            log_buf: Vec::new(),
            started: self.started,
        })
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
        config: config.clone(),
        stored,
        seed,
        link_up,
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

    fn send_engine(&mut self, event: EngineEvent) {
        if let Some(e) = &self.engine
            && let Err(err) = e.chan.send(&ToEngine::Event(event))
        {
            self.engine_failed(&format!("send: {err}"));
        }
    }

    /// Hand a frame on without ever blocking: the supervisor must not wait
    /// on a role that may itself be blocked sending to the supervisor (both
    /// would hang, e.g. under a flood of junk frames). A full queue drops
    /// the frame, as a busy link would; DHCP retransmits.
    fn send_frame<T: serde::Serialize>(&mut self, to: RoleName, msg: &T) -> Result<(), String> {
        let chan = match to {
            RoleName::Engine => match &self.engine {
                Some(e) => &e.chan,
                None => return Ok(()),
            },
            RoleName::Network => &self.network.chan,
            RoleName::Actuator => &self.actuator.chan,
        };
        match chan.try_send(msg) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.frames_shed += 1;
                // Logged at 1, 2, 4, 8... so a flood cannot flood the log.
                if self.frames_shed.is_power_of_two() {
                    log::warn!(
                        "the {} role's queue is full: {} frames dropped so far",
                        to.as_str(),
                        self.frames_shed
                    );
                }
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", to.as_str())),
        }
    }

    fn send_actuator(&mut self, msg: ToActuator) -> Result<(), String> {
        self.outstanding += 1;
        self.actuator
            .chan
            .send(&msg)
            .map_err(|e| format!("actuator: {e}"))
    }

    fn publish(&mut self) -> Result<(), String> {
        self.last_publish = StdInstant::now();
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
            FromEngine::Dropped(reason) => self.drop_log.record(reason),
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
                self.send_actuator(ToActuator::Apply { lease, valid_secs })?;
            }
            FromEngine::Action(EngineAction::RemoveLease { lease }) => {
                log::info!("removing {}/{}", lease.address, lease.prefix_len);
                self.applied = false;
                self.send_actuator(ToActuator::Remove { lease })?;
            }
            FromEngine::Action(EngineAction::PersistLease(lease)) => {
                self.lease = lease.clone();
                self.send_actuator(ToActuator::Persist(lease))?;
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
                self.status = status;
                self.publish()?;
            }
        }
        Ok(())
    }

    fn on_actuator_message(&mut self, msg: FromActuator) {
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
                self.outstanding = self.outstanding.saturating_sub(1);
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
                if kind != IntentKind::PublishStatus {
                    self.send_engine(EngineEvent::IntentResult { kind, ok });
                }
            }
        }
    }

    fn event_loop(&mut self, signals: &SignalPipe, deadline: Option<StdInstant>) -> ExitCode {
        loop {
            if let Some(d) = deadline {
                if self.applied && self.outstanding == 0 {
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
            if self.last_publish.elapsed() >= REPUBLISH
                && let Err(e) = self.publish()
            {
                log::error!("{e}");
                return ExitCode::FAILURE;
            }

            let mut fds: Vec<BorrowedFd<'_>> = vec![
                signals.read.as_fd(),
                self.network.chan.as_fd(),
                self.network.log.as_fd(),
                self.actuator.chan.as_fd(),
                self.actuator.log.as_fd(),
            ];
            if let Some(e) = &self.engine {
                fds.push(e.chan.as_fd());
                fds.push(e.log.as_fd());
            }
            let mut timeout = REPUBLISH.saturating_sub(self.last_publish.elapsed());
            if let Some(at) = self.restart_at {
                timeout = timeout.min(at.saturating_duration_since(StdInstant::now()));
            }
            if let Some(d) = deadline {
                timeout = timeout.min(d.saturating_duration_since(StdInstant::now()));
            }
            let ready = wait_readable(&fds, Some(timeout.as_millis().min(60_000) as u64 + 1));
            drop(fds);
            let ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    log::error!("poll: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if ready[0] {
                let sig = signals.read();
                log::info!("signal {sig}: stopping");
                self.stop();
                return ExitCode::SUCCESS;
            }
            if ready[2] && !self.network.relay_logs() {
                log::error!("the network role exited");
                return ExitCode::FAILURE;
            }
            if ready[4] && !self.actuator.relay_logs() {
                log::error!("the actuator role exited");
                return ExitCode::FAILURE;
            }
            if ready.len() > 6 && ready[6] && !self.engine.as_mut().is_some_and(|e| e.relay_logs()) {
                self.engine_failed("exited");
            }
            if ready[1] {
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
                    Ok(None) => {
                        log::error!("the network role closed its channel");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        log::error!("bad message from the network role: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if ready[3] {
                match self.actuator.chan.recv::<FromActuator>() {
                    Ok(Some(msg)) => self.on_actuator_message(msg),
                    Ok(None) => {
                        log::error!("the actuator role closed its channel");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        log::error!("bad message from the actuator role: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            // Everything the engine has queued, up to a bound: with one
            // message a round, an engine that answers some frames with two
            // (a drop report, then a status) falls behind under a flood
            // until it blocks sending while we block forwarding to it.
            let mut burst = 0;
            while ready.len() > 5 && ready[5] && burst < ENGINE_BURST {
                burst += 1;
                let msg = self.engine.as_ref().map(|e| e.chan.recv::<FromEngine>());
                match msg {
                    Some(Ok(Some(msg))) => {
                        if let Err(e) = self.on_engine_message(msg) {
                            log::error!("{e}");
                            return ExitCode::FAILURE;
                        }
                    }
                    Some(Ok(None)) => self.engine_failed("closed its channel"),
                    Some(Err(e)) => self.engine_failed(&format!("sent a bad message: {e}")),
                    None => {}
                }
                let more = self
                    .engine
                    .as_ref()
                    .map(|e| wait_readable(&[e.chan.as_fd()], Some(0)));
                if !matches!(more, Some(Ok(r)) if r[0]) {
                    break;
                }
            }
        }
    }

    /// SIGTERM/SIGINT: let the engine release (if configured) and finish its
    /// last intents, within a grace period.
    fn stop(&mut self) {
        self.send_engine(EngineEvent::Stop { force_release: false });
        let until = StdInstant::now() + STOP_GRACE;
        while StdInstant::now() < until {
            let Some(engine) = &self.engine else { break };
            let fds = [engine.chan.as_fd(), self.actuator.chan.as_fd()];
            let left = until.saturating_duration_since(StdInstant::now()).as_millis() as u64;
            let ready = match wait_readable(&fds, Some(left.clamp(1, 200))) {
                Ok(r) => r,
                Err(_) => break,
            };
            if ready[0] {
                match engine.chan.recv::<FromEngine>() {
                    Ok(Some(msg)) => {
                        if self.on_engine_message(msg).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if ready[1] {
                match self.actuator.chan.recv::<FromActuator>() {
                    Ok(Some(FromActuator::Result { .. })) => {
                        self.outstanding = self.outstanding.saturating_sub(1)
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            if !ready[0] && !ready[1] && self.outstanding == 0 {
                break;
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

/// resolv.conf as the actuator gets it: the directory that really holds it
/// (symlinks resolved, so a link such as /etc/resolv.conf -> /run/... is
/// followed, not replaced), the file itself opened for writing, its name.
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

/// State dir and run dir (created if missing, owned by the roles' ids so the
/// unprivileged actuator can write them) and the resolv.conf target.
fn prepare_dirs(c: &Config) -> Result<(OwnedFd, OwnedFd, Option<ResolvTarget>), String> {
    use std::os::unix::fs::DirBuilderExt;
    let mk = |p: &Path, mode: u32| -> Result<OwnedFd, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(p)
            .map_err(|e| format!("creating {}: {e}", p.display()))?;
        std::os::unix::fs::chown(p, Some(c.uid), Some(c.gid))
            .map_err(|e| format!("giving {} to uid {}: {e}", p.display(), c.uid))?;
        files::open_dir(p).map_err(|e| format!("opening {}: {e}", p.display()))
    };
    let state = mk(&c.state_dir, 0o700)?;
    let run = mk(&c.run_dir, 0o755)?;
    let resolv = match &c.resolv_conf {
        None => None,
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| format!("opening {}: {e}", p.display()))?;
            let real = std::fs::canonicalize(p).map_err(|e| format!("resolving {}: {e}", p.display()))?;
            let parent = real.parent().unwrap_or(Path::new("/"));
            let name = real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = files::open_dir(parent).map_err(|e| format!("opening {}: {e}", parent.display()))?;
            Some((dir, OwnedFd::from(file), name))
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
        let mut role = Role {
            name: RoleName::Engine,
            child: child.into(),
            chan: Channel::pair().expect("socketpair").0,
            log,
            log_buf: Vec::new(),
            started: StdInstant::now(),
        };
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
