//! The supervisor: settings, sockets and directories opened with its
//! privilege, the three roles, then the SDK's runtime with the routing
//! below. It parses no byte from the network: datagrams pass through it
//! inside typed messages.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_engine::{FromEngine, FromEngineOf, ToEngine, ToEngineOf, codec};
use mirage_ntp::Ntp as Svc;
use mirage_ntp::messages::{FromActuator, FromNetwork, Outcome, ToActuator, ToNetwork};
use mirage_ntp::plan::{self, ActuatorSettings, DRIFT_FILE, DriftFile, NetworkSettings};
use mirage_ntp::policy::{ClockIntent, ClockPolicy, MAX_FREQ_SCALED};
use mirage_sdk::role::RoleOptions;
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleStart, Runtime, Service, SignalPipe};
use mirage_sdk::service::dirs::{self, Owner};
use mirage_sdk::service::metrics::{Kind, Metrics};
use mirage_sdk::service::publish::{Pacing, Publication, Publisher};
use mirage_sdk::service::{Common, CommonLayer, SandboxKind, launch, state};
use ntp_engine::{
    Action, Config, Event, IntentKind, Leap, MAX_NAMES, MAX_RESOLVERS, MAX_SOURCES, NameConfig, Ntp, Start,
    Status,
};
use serde::Deserialize;

use crate::{RunArgs, ServerSpec};

/// The resolv.conf read when the config file names none.
const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The roles, by their index in the runtime.
const ENGINE: RoleId = 0;
const NETWORK: RoleId = 1;
const ACTUATOR: RoleId = 2;
/// status.json and metrics.prom are written at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Clock intents one engine generation may have unanswered; one more is a
/// flood and the engine is restarted.
const MAX_IN_FLIGHT: usize = 16;

/// The config file (`/etc/mirage/ntp/config.toml`): unknown keys are errors.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    /// Servers as on the command line: "ADDR", "ADDR:PORT", "HOST" or
    /// "HOST:PORT".
    servers: Vec<String>,
    /// Pools as on the command line: "NAME" or "NAME:PORT".
    pools: Vec<String>,
    /// Where the resolvers for host names and pools are read (its
    /// `nameserver` lines), at start; default /etc/resolv.conf.
    resolv_conf: Option<PathBuf>,
    observe: Option<bool>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    sandbox: Option<SandboxKind>,
    policy: ClockPolicy,
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let (path, file) = args
        .common
        .load_config::<FileConfig>()
        .map_err(|e| e.to_string())?;
    let common = Common::resolve::<Svc>(
        args.common.layer(),
        CommonLayer {
            state_dir: file.state_dir,
            run_dir: file.run_dir,
            sandbox: file.sandbox,
        },
    );
    let specs = if args.servers.is_empty() {
        file.servers
            .iter()
            .map(|s| crate::parse_server(s).map_err(|e| format!("{}: servers: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.servers.clone()
    };
    let pools = if args.pools.is_empty() {
        file.pools
            .iter()
            .map(|s| crate::parse_pool(s).map_err(|e| format!("{}: pools: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.pools.clone()
    };
    let mut servers = Vec::new();
    let mut names: Vec<NameConfig> = Vec::new();
    for spec in specs {
        match spec {
            ServerSpec::Address(a) if !servers.contains(&a) => servers.push(a),
            ServerSpec::Address(_) => {}
            ServerSpec::Name(name, port) => names.push(NameConfig {
                name,
                port,
                pool: false,
            }),
        }
    }
    names.extend(pools.into_iter().map(|(name, port)| NameConfig {
        name,
        port,
        pool: true,
    }));
    let mut unique: Vec<NameConfig> = Vec::new();
    for n in names {
        if !unique
            .iter()
            .any(|u| u.name.eq_ignore_ascii_case(&n.name) && u.port == n.port && u.pool == n.pool)
        {
            unique.push(n);
        }
    }
    let names = unique;
    if servers.is_empty() && names.is_empty() {
        return Err(format!(
            "no server: give --server HOST[:PORT], --pool NAME or `servers`/`pools` in {}",
            path.display()
        ));
    }
    if servers.len() > MAX_SOURCES {
        return Err(format!("{} servers: at most {MAX_SOURCES}", servers.len()));
    }
    if names.len() > MAX_NAMES {
        return Err(format!(
            "{} host names and pools: at most {MAX_NAMES}",
            names.len()
        ));
    }
    let resolvers = if names.is_empty() {
        Vec::new()
    } else {
        let resolv_conf = file
            .resolv_conf
            .clone()
            .unwrap_or_else(|| DEFAULT_RESOLV_CONF.into());
        let text = std::fs::read_to_string(&resolv_conf)
            .map_err(|e| format!("{}: {e} (needed for host names and pools)", resolv_conf.display()))?;
        let resolvers = nameservers(&text);
        if resolvers.is_empty() {
            return Err(format!(
                "{}: no usable nameserver line (needed for host names and pools)",
                resolv_conf.display()
            ));
        }
        resolvers
    };
    let observe = args.observe || file.observe.unwrap_or(false);
    if common.sandbox == SandboxKind::None {
        log::warn!("SANDBOX DISABLED (--sandbox none)");
    }
    // No guest image for the NTP engine yet: auto resolves to seccomp, and
    // --sandbox kvm is an error that says so.
    let device = std::path::Path::new(mirage_sdk::kvm::DEFAULT_DEVICE);
    let sandbox = mirage_sdk::kvm::choose(common.sandbox, None, device)?;
    let common = Common {
        sandbox: sandbox.kind,
        ..common
    };
    log::info!("sandbox {}: {}", sandbox.kind.as_str(), sandbox.reason);
    let signals = SignalPipe::new()?;

    // The privileged opens: directories, then one socket per server.
    let owner = Owner {
        role: "actuator",
        uid: plan::ACTUATOR_ID,
        gid: plan::ACTUATOR_ID,
    };
    let state_dir =
        dirs::open_role_dir::<Svc>(&common.state_dir, dirs::STATE_DIR_MODE, owner, "state directory")?;
    let drift = stored_drift(&state_dir);
    let time_floor = time_floor(&state_dir);
    let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(&common.run_dir, Some(dirs::RUN_DIR_MODE))
        .map_err(|e| format!("runtime directory {}: {e}", common.run_dir.display()))?;
    let mut sockets = servers
        .iter()
        .map(|&s| open_socket(s))
        .collect::<Result<Vec<OwnedFd>, String>>()?;
    // With names: sockets to each resolver, then one unconnected socket
    // per family for the sources the engine resolves.
    let mut network_settings = NetworkSettings {
        servers: servers.clone(),
        ..NetworkSettings::default()
    };
    if !names.is_empty() {
        for &resolver in &resolvers {
            for _ in 0..plan::DNS_SOCKETS_PER_RESOLVER {
                sockets.push(open_dns_socket(resolver)?);
                network_settings.resolvers.push(resolver);
            }
        }
        network_settings.names = names.iter().map(|n| n.name.clone()).collect();
        network_settings.named_ports = names.iter().map(|n| n.port).collect();
        for any in ["0.0.0.0:0", "[::]:0"] {
            match open_unconnected(any.parse().expect("a literal address")) {
                Ok((fd, local)) => {
                    sockets.push(fd);
                    network_settings.named_sockets.push(local);
                }
                // A host without IPv6 reaches IPv4 sources only.
                Err(e) => log::warn!("{e}: sources resolved from names on that family are unreachable"),
            }
        }
    }

    let options = RoleOptions {
        sandbox: common.sandbox,
        log_level: args.common.log_level,
    };
    let start = Start {
        config: Config {
            servers: servers.clone(),
            names: names.clone(),
            resolvers: resolvers.clone(),
            // Option 42 from mirage-dhcp is a later step.
            use_dhcp_servers: false,
            observe,
            time_floor_unix_secs: Some(time_floor),
            ..Config::default()
        },
        drift,
    };
    if start.config.mixes_smearing() {
        log::warn!(
            "the servers mix leap-smearing ones (cloud link-local time services) with others: \
             around a leap second they disagree by up to 0.5 s; use one kind only"
        );
    }
    let mut sup = Supervisor {
        options,
        observe,
        start,
        publisher: Publisher::new(run_dir, Pacing::every(PUBLISH_EVERY)),
        status: None,
        stats: Stats::default(),
        next_id: 0,
        pending: HashMap::new(),
        actuator: None,
    };
    let (engine, network, actuator) = (
        plan::engine(),
        plan::network(network_settings.sockets(), !names.is_empty()),
        plan::actuator(observe),
    );
    let actuator_fds = if observe { vec![] } else { vec![state_dir.as_fd()] };
    let specs = [
        engine.spec(
            options,
            &(),
            Some(sup.engine_first()?),
            vec![],
            Restart::WithBackoff,
        )?,
        network.spec(
            options,
            &network_settings,
            None,
            sockets.iter().map(|s| s.as_fd()).collect(),
            Restart::Never,
        )?,
        actuator.spec(
            options,
            &ActuatorSettings {
                observe,
                policy: file.policy,
            },
            None,
            actuator_fds,
            Restart::Never,
        )?,
    ];
    let starting = launch::start_all(&specs)?;
    drop(specs);
    // The supervisor keeps no socket to the servers and no state directory.
    drop(sockets);
    drop(state_dir);
    let roles = launch::confine(starting, common.sandbox, &[&engine, &network, &actuator])?;
    let mut list: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    list.extend(
        names
            .iter()
            .map(|n| format!("{}{}:{}", if n.pool { "pool " } else { "" }, n.name, n.port)),
    );
    if !resolvers.is_empty() {
        let r: Vec<String> = resolvers.iter().map(SocketAddr::to_string).collect();
        log::info!("resolvers {}", r.join(" "));
    }
    log::info!(
        "servers {}, {}, sandbox {}",
        list.join(" "),
        if observe {
            "observing (the clock is never touched)"
        } else {
            "keeping the clock"
        },
        common.sandbox.as_str()
    );
    sup.publisher.mark_dirty();
    Ok(Runtime::new(sup, roles).run(&signals))
}

/// A UDP socket on an ephemeral port (RFC 9109), connected to `server`,
/// with kernel receive timestamps.
fn open_socket(server: SocketAddr) -> Result<OwnedFd, String> {
    let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("a literal address");
    let socket = UdpSocket::bind(local)
        .and_then(|s| s.connect(server).map(|()| s))
        .map_err(|e| format!("UDP socket to {server}: {e}"))?;
    mirage_sdk::udp::enable_receive_timestamps(&socket).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    Ok(socket.into())
}

/// A UDP socket on an ephemeral port connected to a resolver (no
/// timestamps: DNS needs none).
fn open_dns_socket(resolver: SocketAddr) -> Result<OwnedFd, String> {
    let local: SocketAddr = if resolver.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("a literal address");
    let socket = UdpSocket::bind(local)
        .and_then(|s| s.connect(resolver).map(|()| s))
        .map_err(|e| format!("UDP socket to resolver {resolver}: {e}"))?;
    Ok(socket.into())
}

/// An unconnected UDP socket on an ephemeral port of `any`'s family, with
/// kernel receive timestamps, and its local address.
fn open_unconnected(any: SocketAddr) -> Result<(OwnedFd, SocketAddr), String> {
    let socket = UdpSocket::bind(any).map_err(|e| format!("UDP socket on {any}: {e}"))?;
    mirage_sdk::udp::enable_receive_timestamps(&socket).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("UDP socket on {any}: {e}"))?;
    Ok((socket.into(), local))
}

/// The resolvers of a resolv.conf: its `nameserver` lines (resolv.conf(5);
/// every other line is ignored), IP addresses on port 53, at most
/// `MAX_RESOLVERS` (the resolver library's MAXNS), without repeats. A
/// line that is not an address (an IPv6 address with a zone) is skipped.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        match words.next().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(ip)) => {
                let a = SocketAddr::new(ip, 53);
                if !out.contains(&a) && out.len() < MAX_RESOLVERS {
                    out.push(a);
                }
            }
            _ => log::warn!("resolv.conf: {line:?} is not a nameserver address we can use; skipped"),
        }
    }
    out
}

/// The frequency a previous run saved, if it is readable and in range.
fn stored_drift(state_dir: &OwnedFd) -> Option<i64> {
    match state::load::<DriftFile>(state_dir, DRIFT_FILE) {
        Ok(Some(d)) if d.scaled_ppm.abs() <= MAX_FREQ_SCALED => Some(d.scaled_ppm),
        Ok(Some(d)) => {
            log::warn!(
                "{DRIFT_FILE}: {} scaled ppm is out of range, ignored",
                d.scaled_ppm
            );
            None
        }
        Ok(None) => None,
        Err(e) => {
            log::warn!("{DRIFT_FILE}: {e}; starting without a stored frequency");
            None
        }
    }
}

/// The time no server may take the clock back past: the later of the
/// build floor and when the drift file was last saved (field notes item
/// 13). A saved time beyond the era window is ignored (a corrupt file must
/// not refuse every server for good).
fn time_floor(state_dir: &OwnedFd) -> i64 {
    const ERA_WINDOW_SECS: i64 = 60 * 365 * 86_400;
    let saved = match state::load::<DriftFile>(state_dir, DRIFT_FILE) {
        Ok(Some(d)) => d.saved_unix_secs,
        _ => None,
    };
    match saved {
        Some(t) if t > plan::BUILD_TIME_FLOOR_UNIX_SECS + ERA_WINDOW_SECS => {
            log::warn!("{DRIFT_FILE}: saved at {t}, beyond the era window: ignored as a time floor");
            plan::BUILD_TIME_FLOOR_UNIX_SECS
        }
        Some(t) => t.max(plan::BUILD_TIME_FLOOR_UNIX_SECS),
        None => plan::BUILD_TIME_FLOOR_UNIX_SECS,
    }
}

/// Counters for status.json and metrics.prom.
#[derive(Default, Debug)]
struct Stats {
    /// Replies the engine refused, by reason.
    engine_refused: BTreeMap<&'static str, u64>,
    /// Requests the network role refused to send, by reason.
    outbound_refused: BTreeMap<&'static str, u64>,
    /// Clock intents by outcome, and refusals by reason.
    intents: BTreeMap<&'static str, u64>,
    clock_refused: BTreeMap<&'static str, u64>,
    replies: u64,
    replies_without_kernel_stamp: u64,
    /// Datagrams from resolvers.
    dns_answers: u64,
    engine_restarts: u32,
    /// The last refused or failed intent, for operators.
    last_refusal: Option<String>,
}

fn bump(map: &mut BTreeMap<&'static str, u64>, key: &'static str) -> u64 {
    let n = map.entry(key).or_default();
    *n += 1;
    *n
}

/// The routing the runtime runs.
struct Supervisor {
    options: RoleOptions,
    observe: bool,
    /// The engine's start (the stored frequency follows what was saved).
    start: Start,
    publisher: Publisher,
    status: Option<Status>,
    stats: Stats,
    next_id: u64,
    /// Intents sent to the actuator: engine generation, kind.
    pending: HashMap<u64, (u64, IntentKind)>,
    /// The actuator's `Ready`: (observe, steerable).
    actuator: Option<(bool, bool)>,
}

impl Supervisor {
    fn engine_first(&self) -> Result<Vec<u8>, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start: ToEngineOf<Ntp> = ToEngine::Start {
            start: self.start.clone(),
            seed,
        };
        codec::encode(&start).map_err(|e| e.to_string())
    }

    fn on_engine(&mut self, ctx: &mut Ctx<'_>, msg: &[u8]) -> Result<(), String> {
        match codec::decode::<FromEngineOf<Ntp>>(msg).map_err(|e| e.to_string())? {
            FromEngine::Action(Action::Send { to, transmit, data }) => {
                // Lossy: a full queue drops the request, as a busy link would.
                ctx.send_lossy(NETWORK, &ToNetwork::Send { to, transmit, data });
            }
            FromEngine::Action(Action::Resolve { query, to, data }) => {
                ctx.send_lossy(NETWORK, &ToNetwork::Resolve { query, to, data });
            }
            FromEngine::Action(Action::PublishStatus(status)) => self.status = Some(status),
            FromEngine::Action(action) => {
                let Some(intent) = ClockIntent::of(&action) else {
                    return Ok(());
                };
                let generation = ctx.generation(ENGINE);
                let in_flight = self.pending.values().filter(|(g, _)| *g == generation).count();
                if in_flight >= MAX_IN_FLIGHT {
                    ctx.fault(
                        ENGINE,
                        format!("{MAX_IN_FLIGHT} clock intents unanswered: a flood"),
                    );
                    return Ok(());
                }
                if let ClockIntent::SaveDrift { scaled_ppm } = intent {
                    // What the next engine starts from if this one restarts.
                    if scaled_ppm.abs() <= MAX_FREQ_SCALED {
                        self.start.drift = Some(scaled_ppm);
                    }
                }
                let id = self.next_id;
                self.next_id += 1;
                self.pending.insert(id, (generation, intent.kind()));
                ctx.send(ACTUATOR, &ToActuator::Apply { id, intent });
            }
            FromEngine::Refused(why) => {
                let n = bump(&mut self.stats.engine_refused, why.as_str());
                // Logged at 1, 2, 4, 8...: a hostile server cannot flood the log.
                if n.is_power_of_two() {
                    log::warn!("refused a reply ({}); {n} so far", why.as_str());
                }
            }
        }
        Ok(())
    }

    fn on_network(&mut self, ctx: &mut Ctx<'_>, msg: &[u8]) -> Result<(), String> {
        let event = match codec::decode::<FromNetwork>(msg).map_err(|e| e.to_string())? {
            FromNetwork::Received {
                from,
                data,
                at,
                kernel_stamp,
            } => {
                self.stats.replies += 1;
                if !kernel_stamp {
                    self.stats.replies_without_kernel_stamp += 1;
                }
                Event::Received { from, data, at }
            }
            FromNetwork::Sent { to, transmit, at } => Event::Sent { to, transmit, at },
            FromNetwork::Resolved { query, from, data } => {
                self.stats.dns_answers += 1;
                Event::Resolved { query, from, data }
            }
            FromNetwork::Refused { to, why } => {
                let n = bump(&mut self.stats.outbound_refused, why.as_str());
                if n.is_power_of_two() {
                    log::warn!(
                        "the network role refused a request to {to} ({}); {n} so far",
                        why.as_str()
                    );
                }
                return Ok(());
            }
        };
        let event: ToEngineOf<Ntp> = ToEngine::Event(event);
        ctx.send_lossy(ENGINE, &event);
        Ok(())
    }

    fn on_actuator(&mut self, ctx: &mut Ctx<'_>, msg: &[u8]) -> Result<(), String> {
        match codec::decode::<FromActuator>(msg).map_err(|e| e.to_string())? {
            FromActuator::Ready { observe, steerable } => {
                if !observe && !steerable {
                    log::error!("the clock cannot be steered here: measuring only (see the actuator's log)");
                }
                self.actuator = Some((observe, steerable));
            }
            FromActuator::Result { id, outcome } => {
                let Some((generation, kind)) = self.pending.remove(&id) else {
                    return Err(format!("an answer to intent {id}, which was not asked"));
                };
                bump(&mut self.stats.intents, outcome.as_str());
                match &outcome {
                    Outcome::Refused(r) => {
                        bump(&mut self.stats.clock_refused, r.as_str());
                        self.stats.last_refusal = Some(format!("{kind:?}: {}", r.as_str()));
                    }
                    Outcome::Failed(e) => self.stats.last_refusal = Some(format!("{kind:?} failed: {e}")),
                    Outcome::Applied | Outcome::Observed => {}
                }
                // An answer for an engine that was since restarted would
                // confuse its successor.
                if generation == ctx.generation(ENGINE) {
                    let event: ToEngineOf<Ntp> = ToEngine::Event(Event::IntentResult {
                        kind,
                        ok: outcome == Outcome::Applied,
                    });
                    ctx.send(ENGINE, &event);
                }
            }
        }
        Ok(())
    }
}

impl Service for Supervisor {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
        self.publisher.mark_dirty();
        match from {
            ENGINE => self.on_engine(ctx, msg),
            NETWORK => self.on_network(ctx, msg),
            _ => self.on_actuator(ctx, msg),
        }
    }

    /// A restarted engine gets a fresh hello, its start and a fresh seed.
    fn restart(&mut self, _role: RoleId) -> Result<RoleStart, String> {
        plan::engine().start(self.options, &(), Some(self.engine_first()?))
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.stats.engine_restarts = ctx.restarts(ENGINE);
        self.publisher.mark_dirty();
    }

    fn on_round(&mut self, _ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        let view = View {
            observe: self.observe,
            sandbox: self.options.sandbox,
            status: self.status.as_ref(),
            stats: &self.stats,
            actuator: self.actuator,
        };
        self.publisher
            .on_round(StdInstant::now(), || view.publication())
            .map_err(|e| e.to_string())
    }

    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {
        let view = View {
            observe: self.observe,
            sandbox: self.options.sandbox,
            status: self.status.as_ref(),
            stats: &self.stats,
            actuator: self.actuator,
        };
        if let Err(e) = self.publisher.flush(|| view.publication()) {
            log::warn!("{e}");
        }
    }
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn ppm(scaled: i64) -> f64 {
    scaled as f64 / 65536.0
}

fn leap_str(l: Leap) -> &'static str {
    match l {
        Leap::None => "none",
        Leap::Insert => "insert",
        Leap::Delete => "delete",
        Leap::Unknown => "unknown",
    }
}

fn state_str(s: ntp_engine::SyncState) -> &'static str {
    use ntp_engine::SyncState as S;
    match s {
        S::Starting => "starting",
        S::Synchronized => "synchronized",
        S::NotEnoughSources => "not-enough-sources",
        S::Held => "held",
        S::Observing => "observing",
        S::NoSources => "no-sources",
    }
}

/// What is published, borrowed from the supervisor.
struct View<'a> {
    observe: bool,
    sandbox: SandboxKind,
    status: Option<&'a Status>,
    stats: &'a Stats,
    actuator: Option<(bool, bool)>,
}

impl View<'_> {
    fn publication(&self) -> Publication {
        let s = self.status;
        let sources: Vec<serde_json::Value> = s
            .map(|s| {
                s.sources
                    .iter()
                    .map(|src| {
                        serde_json::json!({
                            "address": src.address.to_string(),
                            "origin": match src.origin {
                                ntp_engine::SourceOrigin::Configured => "configured",
                                ntp_engine::SourceOrigin::Dhcp => "dhcp",
                                ntp_engine::SourceOrigin::Server(_) => "server",
                                ntp_engine::SourceOrigin::Pool(_) => "pool",
                            },
                            "name": src.origin.name(),
                            "state": src.state.as_str(),
                            "offset_ms": ms(src.offset_ns),
                            "delay_ms": ms(src.delay_ns),
                            "jitter_ms": ms(src.jitter_ns),
                            "stratum": src.stratum,
                            "reach": src.reach,
                            "poll_s": 1u64 << src.poll.min(63),
                            "requests": src.requests,
                            "smearing": src.smearing,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let names: Vec<serde_json::Value> = s
            .map(|s| {
                s.names
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "name": n.name,
                            "pool": n.pool,
                            "sources": n.sources,
                            "resolving": n.resolving,
                            "failures": n.failures,
                            "lookups": n.lookups,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let state = s.map_or("starting", |s| state_str(s.state));
        let st = self.stats;
        let status = serde_json::json!({
            "state": state,
            "synchronized": s.is_some_and(|s| s.synchronized),
            "held": s.is_some_and(|s| s.state == ntp_engine::SyncState::Held),
            "observe": self.observe,
            "sandbox": self.sandbox.as_str(),
            "offset_ms": s.map(|s| ms(s.offset_ns)),
            "jitter_ms": s.map(|s| ms(s.jitter_ns)),
            "root_delay_ms": s.map(|s| ms(s.root_delay_ns)),
            "root_dispersion_ms": s.map(|s| ms(s.root_dispersion_ns)),
            "frequency_ppm": s.map(|s| ppm(s.frequency_scaled_ppm)),
            "stratum": s.map_or(16, |s| s.stratum),
            "leap": s.map_or("none", |s| leap_str(s.leap)),
            "poll_s": s.map(|s| 1u64 << s.poll.min(63)),
            "agreeing": s.map(|s| s.agreeing),
            "quorum": s.map(|s| s.quorum),
            "sources": sources,
            "names": names,
            "dns_answers": st.dns_answers,
            "clock": {
                "steerable": self.actuator.map(|(_, steerable)| steerable),
                "intents": st.intents,
                "refused": st.clock_refused,
                "last_refusal": st.last_refusal,
                "steps_asked": s.map(|s| s.counters.steps_asked),
                "steps_refused": s.map(|s| s.counters.steps_refused),
            },
            "requests": s.map(|s| s.counters.requests),
            "replies": st.replies,
            "replies_without_kernel_stamp": st.replies_without_kernel_stamp,
            "refused": st.engine_refused,
            "outbound_refused": st.outbound_refused,
            "engine_restarts": st.engine_restarts,
        });
        Publication {
            status: status.to_string(),
            metrics: self.metrics(state),
        }
    }

    fn metrics(&self, state: &str) -> String {
        let mut m = Metrics::of::<Svc>();
        let s = self.status;
        let st = self.stats;
        m.gauge(
            "synchronized",
            "1 when the clock is disciplined by an estimate.",
            &[],
            u8::from(s.is_some_and(|s| s.synchronized)),
        );
        m.gauge(
            "state",
            "The client's state (1 for the current one).",
            &[("state", state)],
            1,
        );
        if let Some(s) = s {
            m.gauge(
                "offset_seconds",
                "Local clock minus reference, at the last estimate.",
                &[],
                s.offset_ns as f64 / 1e9,
            );
            m.gauge(
                "frequency_ppm",
                "The clock's frequency correction.",
                &[],
                ppm(s.frequency_scaled_ppm),
            );
            m.gauge("stratum", "The client's stratum (16: none).", &[], s.stratum);
            m.counter(
                "requests_total",
                "Requests sent to servers.",
                &[],
                s.counters.requests,
            );
            let mut f = m.family(
                Kind::Gauge,
                "source_offset_seconds",
                "A source's offset (local minus source).",
            );
            for src in &s.sources {
                let a = src.address.to_string();
                f.sample(
                    &[("address", &a), ("state", src.state.as_str())],
                    src.offset_ns as f64 / 1e9,
                );
            }
            let mut f = m.family(Kind::Gauge, "source_reach", "A source's reachability register.");
            for src in &s.sources {
                f.sample(&[("address", &src.address.to_string())], src.reach);
            }
        }
        m.counter(
            "replies_total",
            "Datagrams received from servers.",
            &[],
            st.replies,
        );
        let by = |m: &mut Metrics, name: &str, help: &str, label: &str, map: &BTreeMap<&'static str, u64>| {
            let mut f = m.family(Kind::Counter, name, help);
            for (k, n) in map {
                f.sample(&[(label, k)], *n);
            }
        };
        by(
            &mut m,
            "replies_refused_total",
            "Replies the engine refused, by reason.",
            "reason",
            &st.engine_refused,
        );
        by(
            &mut m,
            "requests_refused_total",
            "Requests the network role refused to send, by reason.",
            "reason",
            &st.outbound_refused,
        );
        by(
            &mut m,
            "clock_intents_total",
            "Clock intents by outcome.",
            "outcome",
            &st.intents,
        );
        by(
            &mut m,
            "clock_refusals_total",
            "Clock intents the actuator's policy refused, by reason.",
            "reason",
            &st.clock_refused,
        );
        m.counter(
            "engine_restarts_total",
            "Times the engine was restarted.",
            &[],
            st.engine_restarts,
        );
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_are_the_nameserver_lines_at_most_three() {
        let text = "# comment\nsearch example.net\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n\
                    nameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver not-an-address\n\
                    options edns0\n nameserver 192.0.2.54\nnameserver 192.0.2.55\nnameserver 192.0.2.56\n";
        let got = nameservers(text);
        let want: Vec<SocketAddr> = ["192.0.2.53:53", "[2001:db8::53]:53", "192.0.2.54:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(nameservers("domain example.net\n").is_empty());
    }
}
