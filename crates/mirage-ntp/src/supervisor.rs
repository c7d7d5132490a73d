//! The supervisor: settings, sockets and directories opened with its
//! privilege, the three roles, then the SDK's runtime with the routing
//! below. It parses no byte from the network: datagrams pass through it
//! inside typed messages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use mirage_engine::{FromEngine, FromEngineOf, ToEngine, ToEngineOf, codec};
use mirage_ntp::Ntp as Svc;
use mirage_ntp::accept;
use mirage_ntp::messages::{FromActuator, FromNetwork, Outcome, ToActuator, ToNetwork};
use mirage_ntp::plan::{self, ActuatorSettings, DRIFT_FILE, DriftFile, IdsConfig, NetworkSettings, RoleIds};
use mirage_ntp::policy::{ClockIntent, ClockPolicy, MAX_FREQ_SCALED};
use mirage_sdk::role::RoleOptions;
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleStart, Runtime, Service, SignalPipe};
use mirage_sdk::service::dirs::{self, Owner};
use mirage_sdk::service::learned;
use mirage_sdk::service::metrics::{Kind, Metrics};
use mirage_sdk::service::publish::{Pacing, Publication, Publisher};
use mirage_sdk::service::{Common, CommonLayer, SandboxKind, launch, state};
use ntp_engine::{
    Action, Config, Event, IntentKind, Leap, MAX_NAMES, MAX_RESOLVERS, MAX_SOURCES, NTP_PORT, NameConfig,
    Ntp, POLL_RANGE, Start, Status,
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
/// How often the DHCP client's servers.json and an operator's step
/// acceptance are looked for.
const FILES_EVERY: Duration = Duration::from_secs(1);
/// The DHCP client's servers file, by the SDK's convention
/// (`/run/mirage/dhcp/servers.json`).
fn default_dhcp_servers() -> PathBuf {
    mirage_sdk::service::Paths::of("dhcp")
        .run_dir
        .join(learned::SERVERS_FILE)
}
/// How often a socket left unconnected for want of a route is connected
/// again.
const ROUTE_RETRY: Duration = Duration::from_secs(2);
/// The published reason for the sandbox, in characters (a configured
/// device path and an OS error could make it long).
const MAX_SANDBOX_REASON: usize = 256;

/// The config file (`/etc/mirage/ntp/config.toml`): unknown keys are errors.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    /// Servers as on the command line: "ADDR", "ADDR:PORT", "HOST" or
    /// "HOST:PORT".
    servers: Vec<String>,
    /// The DHCP client's servers.json to follow (its `ntp` list); absent:
    /// the default file when no server is configured, none otherwise;
    /// `""`: never.
    dhcp_servers: Option<PathBuf>,
    /// Pools as on the command line: "NAME" or "NAME:PORT".
    pools: Vec<String>,
    /// Where the resolvers for host names and pools are read (its
    /// `nameserver` lines), at start; default /etc/resolv.conf.
    resolv_conf: Option<PathBuf>,
    observe: Option<bool>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    sandbox: Option<SandboxKind>,
    /// The engine's step threshold (RFC 5905 STEPT), ms: offsets above it
    /// are stepped, below slewed.
    step_threshold_ms: Option<u64>,
    /// The poll bounds, log2 s (chrony's minpoll and maxpoll): each source
    /// is asked at most every 2^min_poll s and the poll climbs to at most
    /// 2^max_poll s while the estimates stay in the noise.
    min_poll: Option<i64>,
    max_poll: Option<i64>,
    /// The KVM device for `sandbox = "kvm"` or `"auto"`.
    kvm_device: Option<PathBuf>,
    policy: ClockPolicy,
    ids: IdsConfig,
}

/// Largest `step_threshold_ms`: the policy's slews stop at 0.5 s anyway.
const MAX_STEP_THRESHOLD_MS: u64 = 10_000;

/// The poll bounds from the config file's keys, the engine's defaults for
/// those absent; a bad value is named by its key. The range is the
/// engine's (RFC 5905 MINPOLL 4 to MAXPOLL 17: 16 s to 36 h), which would
/// otherwise clamp silently.
fn poll_bounds(min: Option<i64>, max: Option<i64>) -> Result<(u8, u8), (&'static str, String)> {
    let default = Config::default();
    let (lo, hi) = (*POLL_RANGE.start(), *POLL_RANGE.end());
    let check = |key: &'static str, v: Option<i64>, default: u8| match v {
        None => Ok(default),
        Some(v) => u8::try_from(v)
            .ok()
            .filter(|v| POLL_RANGE.contains(v))
            .ok_or((key, format!("{v} is out of range: must be {lo}..={hi} (log2 s)"))),
    };
    let min_poll = check("min_poll", min, default.min_poll)?;
    let max_poll = check("max_poll", max, default.max_poll)?;
    if min_poll > max_poll {
        let key = if max.is_some() { "max_poll" } else { "min_poll" };
        return Err((
            key,
            format!("min_poll {min_poll} is above max_poll {max_poll}: must be min_poll <= max_poll"),
        ));
    }
    Ok((min_poll, max_poll))
}

/// Which servers.json to follow, if any: the key when given (`""` turns it
/// off), else the convention's file when no server is configured.
fn dhcp_servers_file(key: Option<PathBuf>, servers_configured: bool) -> Option<PathBuf> {
    match key {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
        None if servers_configured => None,
        None => Some(default_dhcp_servers()),
    }
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
    let bad = |key: &str, why: &str| format!("{}: {key}: {why}", path.display());
    let mut ids = RoleIds::resolve(&file.ids).map_err(|(key, why)| bad(&key, why))?;
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    ids.fit_to_process::<Svc>(&file.ids, euid, egid)?;
    if euid != 0 {
        log::info!("not root: every role runs as {euid}:{egid}");
    }
    for w in ids.warnings(euid == 0) {
        log::warn!("{w}");
    }
    let step_threshold_ms = file
        .step_threshold_ms
        .unwrap_or(Config::default().step_threshold_ns / 1_000_000);
    if !(1..=MAX_STEP_THRESHOLD_MS).contains(&step_threshold_ms) {
        return Err(bad("step_threshold_ms", "must be 1..=10000"));
    }
    let (min_poll, max_poll) =
        poll_bounds(file.min_poll, file.max_poll).map_err(|(key, why)| bad(key, &why))?;
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
    let dhcp_file = dhcp_servers_file(file.dhcp_servers, !servers.is_empty() || !names.is_empty());
    if servers.is_empty() && names.is_empty() && dhcp_file.is_none() {
        return Err(format!(
            "no server: give --server HOST[:PORT], --pool NAME, or `servers`, `pools` or `dhcp_servers` in {}",
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
    // With kvm or auto the KVM device is opened and the engine's guest
    // booted once (mirage_sdk::kvm), beside the opens below; auto falls
    // back to seccomp, saying why.
    let requested = common.sandbox;
    let device = (file.kvm_device.clone()).unwrap_or_else(|| mirage_sdk::kvm::DEFAULT_DEVICE.into());
    let choosing =
        std::thread::spawn(move || mirage_sdk::kvm::choose(requested, Some(crate::roles::GUEST), &device));
    let signals = SignalPipe::new()?;

    // The privileged opens: directories, then one socket per server.
    let owner = Owner {
        role: "actuator",
        uid: ids.actuator.uid,
        gid: ids.actuator.gid,
    };
    let state_dir =
        dirs::open_role_dir::<Svc>(&common.state_dir, dirs::STATE_DIR_MODE, owner, "state directory")?;
    let drift = stored_drift(&state_dir);
    let time_floor = time_floor(&state_dir);
    let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(&common.run_dir, Some(dirs::RUN_DIR_MODE))
        .map_err(|e| format!("runtime directory {}: {e}", common.run_dir.display()))?;
    // An acceptance left from before this run is no operator's answer to
    // anything this run holds.
    if let Err(e) = mirage_sdk::files::remove(&run_dir, accept::REQUEST_FILE) {
        log::warn!("{}: {e}", accept::REQUEST_FILE);
    }
    let mut dhcp = dhcp_file.map(|path| DhcpFollow {
        path,
        servers: Vec::new(),
        error: None,
    });
    if let Some(d) = &mut dhcp {
        d.refresh();
    }
    let all = network_servers(&servers, dhcp.as_ref());
    let (network_settings, sockets, unrouted) = network_sockets(&all, &names, &resolvers)?;
    let no_route: BTreeSet<SocketAddr> = unrouted.iter().map(|u| u.peer).collect();
    for peer in &no_route {
        log::warn!(
            "no route to {peer}: starting without it, trying again every {} s",
            ROUTE_RETRY.as_secs()
        );
    }
    let sandbox = choosing
        .join()
        .map_err(|_| "choosing the sandbox panicked".to_owned())??;
    let common = Common {
        sandbox: sandbox.kind,
        ..common
    };
    let sandbox_reason: String = sandbox.reason.chars().take(MAX_SANDBOX_REASON).collect();
    log::info!("sandbox {}: {}", sandbox.kind.as_str(), sandbox_reason);
    // Kept for each engine started later; the engine role gets it at
    // mirage_sdk::kvm::FD_KVM.
    let kvm_device = (sandbox.device_fd())
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(|e| format!("the KVM device: {e}"))?;

    let options = RoleOptions {
        sandbox: common.sandbox,
        log_level: args.common.log_level,
    };
    let start = Start {
        config: Config {
            servers: servers.clone(),
            names: names.clone(),
            resolvers: resolvers.clone(),
            use_dhcp_servers: dhcp.is_some(),
            observe,
            time_floor_unix_secs: Some(time_floor),
            step_threshold_ns: step_threshold_ms * 1_000_000,
            min_poll,
            max_poll,
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
        ids,
        names: names.clone(),
        resolvers: resolvers.clone(),
        sandbox_reason,
        kvm_device,
        observe,
        start,
        configured: servers.clone(),
        dhcp,
        requests: run_dir
            .try_clone()
            .map_err(|e| format!("runtime directory: {e}"))?,
        next_files_at: StdInstant::now() + FILES_EVERY,
        publisher: Publisher::new(run_dir, Pacing::every(PUBLISH_EVERY)),
        status: None,
        stats: Stats::default(),
        next_id: 0,
        pending: HashMap::new(),
        actuator: None,
        pending_steps: HashMap::new(),
        unrouted,
        no_route,
        next_route_at: StdInstant::now() + ROUTE_RETRY,
        routed_on_restart: Vec::new(),
        synchronized: false,
    };
    let (engine, network, actuator) = (
        sandbox.engine_plan(plan::engine(ids.engine)),
        plan::network(ids.network, network_settings.sockets(), !names.is_empty()),
        actuator_plan(ids.actuator, observe),
    );
    let actuator_fds = if observe { vec![] } else { vec![state_dir.as_fd()] };
    let specs = [
        engine.spec(
            options,
            &(),
            Some(sup.engine_first()?),
            sandbox.device_fd().into_iter().collect(),
            Restart::WithBackoff,
        )?,
        network.spec(
            options,
            &network_settings,
            None,
            sockets.iter().map(|s| s.as_fd()).collect(),
            // Started again on purpose (Ctx::restart) with new sockets when
            // the DHCP servers change; a crash ends the service.
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
    drop(sandbox);
    let udp_setup = plan::udp_setup();
    let mut plans = vec![&engine, &network, &actuator];
    // New sockets for new DHCP servers, or a connect once a route appears.
    if sup.dhcp.is_some() || !sup.unrouted.is_empty() {
        plans.push(&udp_setup);
    }
    let roles = launch::confine(starting, common.sandbox, &plans)?;
    let mut list: Vec<String> = all.iter().map(SocketAddr::to_string).collect();
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
        "servers {}{}, {}, sandbox {}",
        list.join(" "),
        match &sup.dhcp {
            Some(d) => format!(" (following {})", d.path.display()),
            None => String::new(),
        },
        if observe {
            "observing (the clock is never touched)"
        } else {
            "keeping the clock"
        },
        common.sandbox.as_str()
    );
    sup.publisher.mark_dirty();
    let mut runtime = Runtime::new(sup, roles);
    // The first status now, with the privileges it will always have (no
    // CAP_DAC_OVERRIDE): a runtime directory it cannot write is an error
    // at start, not a service that runs without status files.
    if let Err(e) = runtime.service.publish_now() {
        runtime.shutdown();
        let dir = common.run_dir.display();
        return Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                format!(
                    "runtime directory {dir}: {e}: it must be writable by uid {euid} (chown {euid}:{egid} {dir})"
                )
            }
            _ => format!("runtime directory {dir}: {e}"),
        });
    }
    // The engine learns the DHCP servers read at start like any later list.
    runtime.with_ctx(|sup, ctx| sup.tell_engine_dhcp(ctx));
    Ok(runtime.run(&signals))
}

/// The actuator's plan: with `CAP_SYS_TIME` only when this process holds
/// it to give. Started without it (a container without the capability)
/// the service still starts, measures and publishes: the actuator's probe
/// finds the clock not steerable and status says `not-steerable`.
fn actuator_plan(id: mirage_sdk::service::ids::RoleId, observe: bool) -> mirage_sdk::role::RolePlan {
    let mut plan = plan::actuator(id, observe);
    if !observe && !mirage_sdk::sandbox::holds(mirage_sdk::sandbox::Capability::CAP_SYS_TIME) {
        log::error!(
            "CAP_SYS_TIME is not held (not in this process's effective or bounding set: a container \
             started without it?): the clock cannot be steered; measuring and publishing only"
        );
        plan.keep_caps.clear();
    }
    plan
}

/// The servers the network role gets sockets for: the configured ones,
/// then DHCP's (port 123) not configured already, at most
/// [`MAX_SOURCES`] in all (the engine's own bound).
fn network_servers(configured: &[SocketAddr], dhcp: Option<&DhcpFollow>) -> Vec<SocketAddr> {
    let mut all = configured.to_vec();
    for ip in dhcp.map(|d| d.servers.as_slice()).unwrap_or_default() {
        let addr = SocketAddr::new(*ip, NTP_PORT);
        if all.len() < MAX_SOURCES && !all.contains(&addr) {
            all.push(addr);
        }
    }
    all
}

/// The network role's settings and its sockets, in their order: one per
/// server (`servers`: configured, then DHCP's); with names, then
/// [`plan::DNS_SOCKETS_PER_RESOLVER`] per resolver and one unconnected
/// socket per family for the sources the engine resolves.
fn network_sockets(
    servers: &[SocketAddr],
    names: &[NameConfig],
    resolvers: &[SocketAddr],
) -> Result<(NetworkSettings, Vec<OwnedFd>, Vec<Unrouted>), String> {
    let mut sockets = Vec::new();
    let mut unrouted = Vec::new();
    let mut take = |opened: Opened, peer: SocketAddr, server: bool| -> Result<(), String> {
        let socket = match opened {
            Opened::Connected(s) => s,
            Opened::Unrouted(s) => {
                let socket = s.try_clone().map_err(|e| format!("socket for {peer}: {e}"))?;
                unrouted.push(Unrouted {
                    peer,
                    server,
                    socket: socket.into(),
                });
                s
            }
        };
        sockets.push(OwnedFd::from(socket));
        Ok(())
    };
    for &server in servers {
        take(open_socket(server)?, server, true)?;
    }
    let mut settings = NetworkSettings {
        servers: servers.to_vec(),
        ..NetworkSettings::default()
    };
    if !names.is_empty() {
        for &resolver in resolvers {
            for _ in 0..plan::DNS_SOCKETS_PER_RESOLVER {
                take(open_dns_socket(resolver)?, resolver, false)?;
                settings.resolvers.push(resolver);
            }
        }
    }
    if names.is_empty() {
        return Ok((settings, sockets, unrouted));
    }
    settings.names = names.iter().map(|n| n.name.clone()).collect();
    settings.named_ports = names.iter().map(|n| n.port).collect();
    for any in ["0.0.0.0:0", "[::]:0"] {
        match open_unconnected(any.parse().expect("a literal address")) {
            Ok((fd, local)) => {
                sockets.push(fd);
                settings.named_sockets.push(local);
            }
            // A host without IPv6 reaches IPv4 sources only.
            Err(e) => log::warn!("{e}: sources resolved from names on that family are unreachable"),
        }
    }
    Ok((settings, sockets, unrouted))
}

/// The DHCP client's servers file, followed by polling.
#[derive(Debug)]
struct DhcpFollow {
    path: PathBuf,
    /// Its `ntp` list as last read (empty: none, or no file).
    servers: Vec<IpAddr>,
    /// Why the last read failed (the list is kept meanwhile).
    error: Option<String>,
}

impl DhcpFollow {
    /// Read the file again; true when the list changed.
    fn refresh(&mut self) -> bool {
        let servers = match learned::read(&self.path) {
            Ok(Some(s)) => s.ntp,
            Ok(None) => Vec::new(),
            Err(e) => {
                if self.error.as_ref() != Some(&e) {
                    log::warn!("{e}; keeping the DHCP servers {:?}", self.servers);
                }
                self.error = Some(e);
                return false;
            }
        };
        self.error = None;
        // Only addresses a server can have, at most what the engine takes.
        let mut usable: Vec<IpAddr> = Vec::new();
        for ip in servers {
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            let bad = ip.is_unspecified() || ip.is_multicast() || broadcast;
            if !bad && !usable.contains(&ip) && usable.len() < MAX_SOURCES {
                usable.push(ip);
            }
        }
        if usable == self.servers {
            return false;
        }
        log::info!(
            "DHCP servers from {}: {:?} (were {:?})",
            self.path.display(),
            usable,
            self.servers
        );
        self.servers = usable;
        true
    }
}

/// A UDP socket on an ephemeral port (RFC 9109), connected to `server`,
/// with kernel receive timestamps; `Unrouted` when there is no route to it
/// yet (see [`open_connected`]).
fn open_socket(server: SocketAddr) -> Result<Opened, String> {
    let opened = open_connected(server).map_err(|e| format!("UDP socket to {server}: {e}"))?;
    mirage_sdk::udp::enable_receive_timestamps(opened.socket())
        .map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    Ok(opened)
}

/// A UDP socket on an ephemeral port connected to a resolver (no
/// timestamps: DNS needs none).
fn open_dns_socket(resolver: SocketAddr) -> Result<Opened, String> {
    open_connected(resolver).map_err(|e| format!("UDP socket to resolver {resolver}: {e}"))
}

/// A socket [`open_connected`] opened.
enum Opened {
    Connected(UdpSocket),
    /// Bound, not connected: there was no route to the peer.
    Unrouted(UdpSocket),
}

impl Opened {
    fn socket(&self) -> &UdpSocket {
        match self {
            Opened::Connected(s) | Opened::Unrouted(s) => s,
        }
    }
}

/// A UDP socket on an ephemeral port of `peer`'s family, connected to it.
/// No route to it (a host at boot, before DHCP gave it an address): the
/// socket is returned bound and unconnected, and the supervisor connects it
/// once a route appears ([`Supervisor::retry_routes`]); the service starts
/// either way.
fn open_connected(peer: SocketAddr) -> std::io::Result<Opened> {
    let local: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("a literal address");
    let socket = UdpSocket::bind(local)?;
    match socket.connect(peer) {
        Ok(()) => Ok(Opened::Connected(socket)),
        Err(e) if is_no_route(e.raw_os_error()) => Ok(Opened::Unrouted(socket)),
        Err(e) => Err(e),
    }
}

/// ENETUNREACH or EHOSTUNREACH: the peer cannot be reached for want of a
/// route (or of any address), as at boot before DHCP.
fn is_no_route(code: Option<i32>) -> bool {
    use rustix::io::Errno;
    code == Some(Errno::NETUNREACH.raw_os_error()) || code == Some(Errno::HOSTUNREACH.raw_os_error())
}

/// A socket handed to the network role unconnected, for want of a route
/// at start: the supervisor keeps a duplicate and connects it when it can.
#[derive(Debug)]
struct Unrouted {
    peer: SocketAddr,
    /// A server's (else a resolver's).
    server: bool,
    socket: OwnedFd,
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
    /// The last step the actuator refused (what `accept-step` accepts).
    refused_step_ns: Option<i64>,
    /// The last operator acceptance and what became of it.
    last_acceptance: Option<String>,
    /// Times the network role started again with new DHCP servers.
    dhcp_changes: u64,
}

fn bump(map: &mut BTreeMap<&'static str, u64>, key: &'static str) -> u64 {
    let n = map.entry(key).or_default();
    *n += 1;
    *n
}

/// The published view of a [`Supervisor`], borrowing its fields one by one
/// (the publisher beside it stays free to borrow).
macro_rules! view {
    ($sup:expr) => {
        View {
            observe: $sup.observe,
            sandbox: $sup.options.sandbox,
            sandbox_reason: &$sup.sandbox_reason,
            status: $sup.status.as_ref(),
            stats: &$sup.stats,
            actuator: $sup.actuator,
            dhcp: $sup.dhcp.as_ref(),
            no_route: &$sup.no_route,
        }
    };
}

/// The routing the runtime runs.
struct Supervisor {
    options: RoleOptions,
    ids: RoleIds,
    /// Why the sandbox in force was chosen (status.json).
    sandbox_reason: String,
    /// The KVM device with `--sandbox kvm` (or `auto` resolved to it), for
    /// each engine started.
    kvm_device: Option<OwnedFd>,
    observe: bool,
    /// The servers from the command line or the config file.
    configured: Vec<SocketAddr>,
    /// Host names and pools the engine resolves, and the resolvers it asks
    /// (the network role gets sockets for them at each start).
    names: Vec<NameConfig>,
    resolvers: Vec<SocketAddr>,
    /// The DHCP client's servers file, when followed.
    dhcp: Option<DhcpFollow>,
    /// The runtime directory, where `accept-step` leaves its request.
    requests: OwnedFd,
    /// When the files above are looked at next.
    next_files_at: StdInstant,
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
    /// Steps sent to the actuator and not answered: their size.
    pending_steps: HashMap<u64, i64>,
    /// The network role's sockets left unconnected for want of a route.
    unrouted: Vec<Unrouted>,
    /// Servers and resolvers with no route: from start, or since a request
    /// to them could not leave (until one does).
    no_route: BTreeSet<SocketAddr>,
    /// When [`Supervisor::retry_routes`] runs next.
    next_route_at: StdInstant,
    /// Servers without a route that the network role's new sockets (a
    /// restart for new DHCP servers) reach: the engine is told once it runs.
    routed_on_restart: Vec<SocketAddr>,
    /// What was last published as `synchronized` (its changes are logged).
    synchronized: bool,
}

impl Supervisor {
    /// Publish the current state at once (at start and on stop).
    fn publish_now(&mut self) -> std::io::Result<()> {
        let view = view!(self);
        self.publisher.flush(|| view.publication())
    }

    fn engine_first(&self) -> Result<Vec<u8>, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start: ToEngineOf<Ntp> = ToEngine::Start {
            start: self.start.clone(),
            seed,
        };
        codec::encode(&start).map_err(|e| e.to_string())
    }

    /// The engine learns the DHCP servers the network role has sockets
    /// for (so it never asks for one the role cannot reach).
    fn tell_engine_dhcp(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(d) = &self.dhcp {
            let event: ToEngineOf<Ntp> = ToEngine::Event(Event::DhcpServers(d.servers.clone()));
            ctx.send(ENGINE, &event);
        }
    }

    /// Every [`ROUTE_RETRY`] while a socket is unconnected: connect it (the
    /// network role's socket is the same); a server's source starts a new
    /// burst at once.
    fn retry_routes(&mut self, ctx: &mut Ctx<'_>) {
        let now = StdInstant::now();
        if self.unrouted.is_empty() || now < self.next_route_at {
            return;
        }
        self.next_route_at = now + ROUTE_RETRY;
        let mut up = Vec::new();
        self.unrouted
            .retain(|u| match rustix::net::connect(&u.socket, &u.peer) {
                Ok(()) => {
                    up.push((u.peer, u.server));
                    false
                }
                Err(e) if is_no_route(Some(e.raw_os_error())) => true,
                Err(e) => {
                    // Not for want of a route: say so, and keep trying.
                    log::debug!("connecting the socket for {}: {e}", u.peer);
                    true
                }
            });
        for (peer, server) in up {
            // Other sockets to the same peer (a resolver's) may wait still.
            if self.unrouted.iter().any(|u| u.peer == peer) {
                continue;
            }
            log::info!("a route to {peer} appeared: its socket is connected");
            self.no_route.remove(&peer);
            self.publisher.mark_dirty();
            if server {
                let event: ToEngineOf<Ntp> = ToEngine::Event(Event::RouteUp(peer));
                ctx.send(ENGINE, &event);
            }
        }
    }

    /// Every [`FILES_EVERY`]: a new DHCP server list starts the network
    /// role again with sockets for it; an operator's acceptance goes to the
    /// actuator.
    fn check_files(&mut self, ctx: &mut Ctx<'_>) {
        let now = StdInstant::now();
        if now < self.next_files_at {
            return;
        }
        self.next_files_at = now + FILES_EVERY;
        if let Some(d) = &mut self.dhcp
            && d.refresh()
        {
            self.stats.dhcp_changes += 1;
            self.publisher.mark_dirty();
            // Its sockets are fixed at start: it starts again with the new
            // list's (Service::restart) and the engine is told once it runs.
            ctx.restart(NETWORK, "the DHCP servers changed: new sockets");
        }
        match accept::take(&self.requests) {
            Ok(None) => {}
            Ok(Some(request)) => {
                log::warn!(
                    "an operator accepts one step of at most {} s within {} s",
                    request.max_ns as f64 / 1e9,
                    request.valid_ms / 1000
                );
                self.stats.last_acceptance = Some(format!(
                    "at most {} s within {} s: sent to the actuator",
                    request.max_ns as f64 / 1e9,
                    request.valid_ms / 1000
                ));
                self.publisher.mark_dirty();
                ctx.send(ACTUATOR, &ToActuator::AcceptStep(request.acceptance()));
            }
            Err(e) => {
                log::warn!("{e}");
                self.stats.last_acceptance = Some(format!("refused: {e}"));
                self.publisher.mark_dirty();
            }
        }
    }

    /// Whether `peer` is one we send to: a configured or learned server, a
    /// resolver, or a source the engine last reported (resolved from a
    /// name or pool).
    fn asks(&self, peer: SocketAddr) -> bool {
        network_servers(&self.configured, self.dhcp.as_ref()).contains(&peer)
            || self.resolvers.contains(&peer)
            || (self.status.as_ref()).is_some_and(|s| s.sources.iter().any(|x| x.address == peer))
    }

    /// The network role's start: its settings and a socket per server,
    /// opened now (the first start's are opened before the sandbox).
    fn network_start(&mut self) -> Result<RoleStart, String> {
        let all = network_servers(&self.configured, self.dhcp.as_ref());
        let (settings, sockets, unrouted) = network_sockets(&all, &self.names, &self.resolvers)?;
        for u in &unrouted {
            if self.no_route.insert(u.peer) {
                log::warn!(
                    "no route to {}: trying again every {} s",
                    u.peer,
                    ROUTE_RETRY.as_secs()
                );
            }
        }
        // Peers without a route before whose new socket is connected: routed
        // now (their sources get a new burst once the role runs); peers no
        // longer asked (a DHCP server gone) are no longer reported.
        for peer in &self.no_route {
            if !unrouted.iter().any(|u| u.peer == *peer)
                && (all.contains(peer) || self.resolvers.contains(peer))
            {
                log::info!("a route to {peer} appeared: its new socket is connected");
                if all.contains(peer) {
                    self.routed_on_restart.push(*peer);
                }
            }
        }
        self.no_route.retain(|p| unrouted.iter().any(|u| u.peer == *p));
        self.unrouted = unrouted;
        let plan = plan::network(self.ids.network, settings.sockets(), !self.names.is_empty());
        let mut start = plan.start(self.options, &settings, None)?;
        start.fds = sockets;
        Ok(start)
    }

    /// Log when synchronisation is gained or lost, once each change.
    fn note_sync(&mut self) {
        let (state, now) = view!(self).state();
        if let Some(line) = sync_change(self.synchronized, now, state, self.status.as_ref()) {
            log::info!("{line}");
        }
        self.synchronized = now;
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
                if let ClockIntent::Step { delta_ns } = intent {
                    self.pending_steps.insert(id, delta_ns);
                }
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
            FromNetwork::Sent { to, transmit, at } => {
                if !self.unrouted.iter().any(|u| u.peer == to) && self.no_route.remove(&to) {
                    log::info!("a route to {to} is back: requests leave again");
                }
                Event::Sent { to, transmit, at }
            }
            FromNetwork::NoRoute { to } => {
                // Only a peer we ask: the set (and its log lines) stays
                // within the servers, resolvers and sources, whatever a
                // compromised network role names.
                if self.asks(to) && self.no_route.insert(to) {
                    log::warn!("no route to {to}: its requests cannot leave");
                }
                return Ok(());
            }
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
                if kind == IntentKind::Step {
                    self.stats.refused_step_ns = match (&outcome, self.pending_steps.remove(&id)) {
                        (Outcome::Refused(_), Some(delta)) => Some(delta),
                        _ => None,
                    };
                }
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
            FromActuator::Acceptance { outcome } => {
                let what = match &outcome {
                    Outcome::Applied => "recorded by the actuator".to_string(),
                    Outcome::Refused(r) => format!("refused by the actuator: {}", r.as_str()),
                    other => other.as_str().to_string(),
                };
                if let Some(last) = &mut self.stats.last_acceptance
                    && let Some(at) = last.find(": sent to the actuator")
                {
                    last.truncate(at);
                    last.push_str(": ");
                    last.push_str(&what);
                }
                if outcome == Outcome::Applied {
                    // A held engine asks again now instead of after the stepout.
                    let event: ToEngineOf<Ntp> = ToEngine::Event(Event::StepAccepted);
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

    /// A restarted engine gets a fresh hello, its start and a fresh seed
    /// (and, as a KVM guest's tender, the device); the network role,
    /// started again for new DHCP servers, their sockets.
    fn restart(&mut self, role: RoleId) -> Result<RoleStart, String> {
        if role == NETWORK {
            return self.network_start();
        }
        let plan = match self.options.sandbox {
            SandboxKind::Kvm => mirage_sdk::kvm::tender_plan(plan::engine(self.ids.engine)),
            _ => plan::engine(self.ids.engine),
        };
        let mut start = plan.start(self.options, &(), Some(self.engine_first()?))?;
        if let Some(kvm) = &self.kvm_device {
            start
                .fds
                .push(kvm.try_clone().map_err(|e| format!("the KVM device: {e}"))?);
        }
        Ok(start)
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, role: RoleId) {
        self.stats.engine_restarts = ctx.restarts(ENGINE);
        // A new engine, or a network role with the current DHCP servers'
        // sockets: the engine gets the list, then the servers those sockets
        // reach that had no route before.
        self.tell_engine_dhcp(ctx);
        if role == NETWORK {
            for peer in std::mem::take(&mut self.routed_on_restart) {
                let event: ToEngineOf<Ntp> = ToEngine::Event(Event::RouteUp(peer));
                ctx.send(ENGINE, &event);
            }
        }
        self.publisher.mark_dirty();
    }

    fn on_round(&mut self, ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        self.check_files(ctx);
        self.retry_routes(ctx);
        self.note_sync();
        let view = view!(self);
        let next = self
            .publisher
            .on_round(StdInstant::now(), || view.publication())
            .map_err(|e| e.to_string())?;
        let mut wake = self.next_files_at;
        if !self.unrouted.is_empty() {
            wake = wake.min(self.next_route_at);
        }
        Ok(Some(next.map_or(wake, |n| n.min(wake))))
    }

    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {
        if let Err(e) = self.publish_now() {
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

/// The line logged when `synchronized` changes from `was` to `now`, if it
/// changed.
fn sync_change(was: bool, now: bool, state: &str, status: Option<&Status>) -> Option<String> {
    match (was, now, status) {
        (false, true, Some(s)) => Some(format!(
            "synchronised: offset {:.3} ms, stratum {}, {} of {} sources agree",
            ms(s.offset_ns),
            s.stratum,
            s.agreeing,
            s.sources.len()
        )),
        (false, true, None) => Some("synchronised".to_string()),
        (true, false, _) => Some(format!("synchronisation lost: {state}")),
        _ => None,
    }
}

/// What is published, borrowed from the supervisor.
struct View<'a> {
    observe: bool,
    sandbox: SandboxKind,
    sandbox_reason: &'a str,
    status: Option<&'a Status>,
    stats: &'a Stats,
    actuator: Option<(bool, bool)>,
    dhcp: Option<&'a DhcpFollow>,
    no_route: &'a BTreeSet<SocketAddr>,
}

impl View<'_> {
    /// The published state and `synchronized`: the engine's, but for a
    /// clock this process cannot steer (`not-steerable`), and synchronised
    /// only when the actuator steers the clock (not observing, steerable):
    /// an estimate alone is no synchronised clock.
    fn state(&self) -> (&'static str, bool) {
        let steering = self.actuator == Some((false, true)) && !self.observe;
        if !self.observe && self.actuator == Some((false, false)) {
            return ("not-steerable", false);
        }
        let s = self.status;
        let state = s.map_or("starting", |s| state_str(s.state));
        (state, steering && s.is_some_and(|s| s.synchronized))
    }

    /// A source's published state: `no_route` while its requests cannot
    /// leave, else the engine's.
    fn source_state(&self, src: &ntp_engine::SourceStatus) -> &'static str {
        if self.no_route.contains(&src.address) {
            "no_route"
        } else {
            src.state.as_str()
        }
    }

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
                            "state": self.source_state(src),
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
        let (state, synchronized) = self.state();
        let st = self.stats;
        let status = serde_json::json!({
            "state": state,
            "synchronized": synchronized,
            "no_route": self.no_route.iter().map(SocketAddr::to_string).collect::<Vec<_>>(),
            "held": s.is_some_and(|s| s.state == ntp_engine::SyncState::Held),
            "observe": self.observe,
            "sandbox": self.sandbox.as_str(),
            "sandbox_reason": self.sandbox_reason,
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
                "refused_step_s": st.refused_step_ns.map(|ns| ns as f64 / 1e9),
                "last_acceptance": st.last_acceptance,
            },
            "dhcp": self.dhcp.map(|d| serde_json::json!({
                "file": d.path.display().to_string(),
                "servers": d.servers.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                "error": d.error,
                "changes": st.dhcp_changes,
            })),
            "requests": s.map(|s| s.counters.requests),
            "replies": st.replies,
            "replies_without_kernel_stamp": st.replies_without_kernel_stamp,
            "refused": st.engine_refused,
            "outbound_refused": st.outbound_refused,
            "engine_restarts": st.engine_restarts,
        });
        Publication {
            status: status.to_string(),
            metrics: self.metrics(state, synchronized),
        }
    }

    fn metrics(&self, state: &str, synchronized: bool) -> String {
        let mut m = Metrics::of::<Svc>();
        let s = self.status;
        let st = self.stats;
        m.gauge(
            "synchronized",
            "1 when this client steers the clock by an estimate.",
            &[],
            u8::from(synchronized),
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
                    &[("address", &a), ("state", self.source_state(src))],
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

    fn parse(text: &str) -> Result<FileConfig, String> {
        mirage_sdk::config::parse(std::path::Path::new("ntp.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_config_file_takes_ids_dhcp_servers_and_the_step_threshold() {
        let f = parse(
            "servers = [\"192.0.2.1\"]\ndhcp_servers = \"/srv/servers.json\"\nstep_threshold_ms = 20\n\
             [ids]\nengine = 900\nactuator = \"901:902\"\n",
        )
        .unwrap();
        assert_eq!(f.step_threshold_ms, Some(20));
        let ids = RoleIds::resolve(&f.ids).unwrap();
        assert_eq!(
            (ids.engine.uid, ids.network.uid, ids.actuator.gid),
            (900, 65527, 902)
        );
        let e = parse("[ids]\nengine = 0\n").map(|f| RoleIds::resolve(&f.ids).map_err(|e| e.0));
        assert_eq!(e.unwrap(), Err("ids.engine".to_string()));
        assert!(parse("[ids]\ndns = 1\n").unwrap_err().contains("ntp.toml:2"));
        assert!(parse("dhcp_server = \"x\"\n").is_err(), "unknown keys are errors");
        // Which servers.json is followed.
        let default = PathBuf::from("/run/mirage/dhcp/servers.json");
        assert_eq!(dhcp_servers_file(None, false), Some(default));
        assert_eq!(dhcp_servers_file(None, true), None);
        assert_eq!(dhcp_servers_file(Some("".into()), false), None);
        assert_eq!(
            dhcp_servers_file(Some("/srv/s.json".into()), true),
            Some(PathBuf::from("/srv/s.json"))
        );
    }

    #[test]
    fn the_poll_bounds_are_checked_and_a_bad_one_is_named() {
        let f = parse("min_poll = 4\nmax_poll = 7\n").unwrap();
        assert_eq!(poll_bounds(f.min_poll, f.max_poll), Ok((4, 7)));
        assert_eq!(poll_bounds(None, None), Ok((6, 10)), "chrony's defaults");
        assert_eq!(
            poll_bounds(Some(17), None),
            Err((
                "min_poll",
                "min_poll 17 is above max_poll 10: must be min_poll <= max_poll".into()
            ))
        );
        assert_eq!(poll_bounds(Some(4), Some(4)), Ok((4, 4)));
        assert_eq!(poll_bounds(None, Some(17)), Ok((6, 17)));
        for (min, max, key) in [
            (Some(3), None, "min_poll"),
            (Some(-1), None, "min_poll"),
            (Some(256 + 6), None, "min_poll"),
            (None, Some(18), "max_poll"),
            (None, Some(0), "max_poll"),
            (Some(8), Some(7), "max_poll"),
            (None, Some(5), "max_poll"),
        ] {
            let (k, why) = poll_bounds(min, max).unwrap_err();
            assert_eq!(k, key, "{min:?} {max:?}: {why}");
            assert!(
                why.contains("4..=17") || why.contains("min_poll <= max_poll"),
                "{why}"
            );
        }
        assert!(parse("min_poll = \"6\"\n").is_err(), "a number, not a string");
    }

    #[test]
    fn dhcp_servers_join_the_configured_ones_once_and_bad_addresses_are_dropped() {
        let dir = std::env::temp_dir().join(format!("mirage-ntp-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("servers.json");
        let mut d = DhcpFollow {
            path: path.clone(),
            servers: Vec::new(),
            error: None,
        };
        assert!(!d.refresh(), "no file: no change from none");
        std::fs::write(
            &path,
            r#"{"version":1,"interface":"eth0","ntp":["192.0.2.1","0.0.0.0","224.0.0.1","255.255.255.255","192.0.2.7","192.0.2.7"],"dns":[]}"#,
        )
        .unwrap();
        assert!(d.refresh());
        assert!(!d.refresh(), "the same list again is no change");
        let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.7".parse().unwrap()];
        assert_eq!(d.servers, ips);
        let configured: Vec<SocketAddr> = vec![
            "192.0.2.1:123".parse().unwrap(),
            "192.0.2.9:1123".parse().unwrap(),
        ];
        let all = network_servers(&configured, Some(&d));
        assert_eq!(
            all,
            [configured[0], configured[1], "192.0.2.7:123".parse().unwrap()]
        );
        // A broken file keeps the list and says why.
        std::fs::write(&path, "{").unwrap();
        assert!(!d.refresh());
        assert_eq!(d.servers, ips);
        assert!(d.error.is_some());
        // The lease gone: empty lists.
        std::fs::write(&path, r#"{"version":1,"interface":"eth0","ntp":[],"dns":[]}"#).unwrap();
        assert!(d.refresh());
        assert!(d.servers.is_empty() && d.error.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A status with the engine's `state`, and one source.
    fn engine_status(state: ntp_engine::SyncState) -> Status {
        let ntp = Ntp::new(
            Start {
                config: Config {
                    servers: vec!["192.0.2.1:123".parse().unwrap()],
                    ..Config::default()
                },
                drift: None,
            },
            ntp_engine::Instant(0),
            [7; 32],
        );
        let mut s = ntp.status();
        s.state = state;
        s.synchronized = state == ntp_engine::SyncState::Synchronized;
        s
    }

    #[test]
    fn synchronized_is_claimed_only_when_this_client_steers_the_clock() {
        use ntp_engine::SyncState as S;
        let stats = Stats::default();
        let no_route = BTreeSet::new();
        let synced = engine_status(S::Synchronized);
        let observing = engine_status(S::Observing);
        let published = |observe, actuator, status: &Status| {
            let view = View {
                observe,
                sandbox: SandboxKind::Seccomp,
                sandbox_reason: "",
                status: Some(status),
                stats: &stats,
                actuator,
                dhcp: None,
                no_route: &no_route,
            };
            let (state, synchronized) = view.state();
            let v: serde_json::Value = serde_json::from_str(&view.publication().status).unwrap();
            assert_eq!(
                (v["state"].as_str(), v["synchronized"].as_bool()),
                (Some(state), Some(synchronized))
            );
            (state, synchronized)
        };
        assert_eq!(
            published(false, Some((false, true)), &synced),
            ("synchronized", true)
        );
        // Before the actuator said it can steer: not yet.
        assert_eq!(published(false, None, &synced), ("synchronized", false));
        // A clock it cannot steer: never synchronised, whatever the engine says.
        assert_eq!(
            published(false, Some((false, false)), &synced),
            ("not-steerable", false)
        );
        assert_eq!(
            published(false, Some((false, false)), &observing),
            ("not-steerable", false)
        );
        // Observing: the estimate only.
        assert_eq!(
            published(true, Some((true, false)), &observing),
            ("observing", false)
        );
    }

    #[test]
    fn a_source_without_a_route_is_published_as_no_route() {
        let stats = Stats::default();
        let status = engine_status(ntp_engine::SyncState::Starting);
        let mut no_route = BTreeSet::new();
        no_route.insert("192.0.2.1:123".parse::<SocketAddr>().unwrap());
        let view = View {
            observe: true,
            sandbox: SandboxKind::Seccomp,
            sandbox_reason: "",
            status: Some(&status),
            stats: &stats,
            actuator: Some((true, false)),
            dhcp: None,
            no_route: &no_route,
        };
        let p = view.publication();
        let v: serde_json::Value = serde_json::from_str(&p.status).unwrap();
        assert_eq!(v["sources"][0]["state"], "no_route", "{v}");
        assert_eq!(v["no_route"][0], "192.0.2.1:123", "{v}");
        assert!(p.metrics.contains("state=\"no_route\""), "{}", p.metrics);
    }

    #[test]
    fn gaining_and_losing_synchronisation_is_said_once_each() {
        let status = engine_status(ntp_engine::SyncState::Synchronized);
        let gained = sync_change(false, true, "synchronized", Some(&status)).unwrap();
        assert!(gained.starts_with("synchronised: offset"), "{gained}");
        assert!(gained.contains("of 1 sources"), "{gained}");
        assert_eq!(
            sync_change(true, false, "not-enough-sources", None).unwrap(),
            "synchronisation lost: not-enough-sources"
        );
        // No change, no line: nothing at every poll.
        assert_eq!(sync_change(true, true, "synchronized", Some(&status)), None);
        assert_eq!(sync_change(false, false, "observing", Some(&status)), None);
    }

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
