//! The supervisor: settings, the listeners bound with its privilege, the
//! two roles linked by a direct channel, then the SDK's runtime with the
//! routing below. It parses no byte from the network: queries and answers
//! never pass through it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use dns_engine::{Action, Forwarder, Start, Status};
use mirage_dns::Dns as Svc;
use mirage_dns::config::CacheConfig;
use mirage_dns::messages::{FromNetwork, NetworkStats};
use mirage_dns::plan::{
    self, FD_ENGINE_PEER, FD_ENGINE_PEER_KVM, IdsConfig, NetworkLimits, NetworkSettings, RoleIds,
};
use mirage_dns::policy::Cidr;
use mirage_engine::{FromEngine, FromEngineOf, ToEngine, ToEngineOf, codec};
use mirage_sdk::role::{RoleOptions, RolePlan, Starting};
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleStart, Runtime, Service, SignalPipe, link_pair};
use mirage_sdk::service::learned;
use mirage_sdk::service::metrics::{Kind, Metrics};
use mirage_sdk::service::publish::{Pacing, Publication, Publisher};
use mirage_sdk::service::{Common, CommonLayer, SandboxKind, launch};
use serde::Deserialize;

use crate::RunArgs;

/// The roles, by their index in the runtime.
const ENGINE: RoleId = 0;
const NETWORK: RoleId = 1;
/// status.json and metrics.prom are written at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Upstreams a query can name (an index of one octet; a handful is plenty).
const MAX_UPSTREAMS: usize = 8;
/// Addresses to listen on.
const MAX_LISTEN: usize = 16;
/// Blocks in the access list.
const MAX_ALLOW: usize = 64;
/// How often the DHCP client's servers.json is read.
const DHCP_EVERY: Duration = Duration::from_secs(1);
/// The resolv.conf for container runtimes, in the run directory: the
/// upstreams themselves, since a container cannot reach the host's
/// loopback stub (docs/dns.md, "resolv.conf for containers").
pub const UPLINK_RESOLV_CONF: &str = "resolv.conf";

/// The DHCP client's servers file, by the SDK's convention
/// (`/run/mirage/dhcp/servers.json`).
fn default_dhcp_servers() -> PathBuf {
    mirage_sdk::service::Paths::of("dhcp")
        .run_dir
        .join(learned::SERVERS_FILE)
}

/// The engine as a KVM guest (guest/images/dns, built by build.rs).
pub const GUEST: &[u8] = mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-dns.elf"));

/// The published reason for the sandbox, in characters (a configured
/// device path is in it).
const MAX_SANDBOX_REASON: usize = 512;

/// The engine role: its plan in force, then the SDK's engine runner with
/// the direct channel to the network role, or with `--sandbox kvm` the
/// tender of [`GUEST`], which relays both channels. The channel is taken
/// before the sandbox (its checks need calls the filter does not hold);
/// a tender has its KVM device first, so the channel after it.
pub fn engine_role(role: Starting) -> Result<(), String> {
    let fd = match role.sandbox() {
        SandboxKind::Kvm => FD_ENGINE_PEER_KVM,
        _ => FD_ENGINE_PEER,
    };
    let peer = mirage_sdk::channel::Channel::from_raw_fd(fd)
        .map_err(|e| format!("the network role's channel: {e}"))?;
    mirage_sdk::engine_role::run_sandboxed_with_peer::<Forwarder>(role, Some(GUEST), peer)
}

/// The config file (`/etc/mirage/dns/config.toml`): unknown keys are errors.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    /// As on the command line: "ADDR" or "ADDR:PORT".
    listen: Vec<String>,
    upstreams: Vec<String>,
    /// One upstream attempt (ms) and attempts per query.
    attempt_ms: Option<u32>,
    attempts: Option<u8>,
    /// The DHCP client's servers.json, whose `dns` list is followed;
    /// `""`: off. Default: on when no upstream is configured.
    dhcp_servers: Option<PathBuf>,
    /// The clients answered, as address blocks; default: loopback and
    /// the listen addresses.
    allow: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    sandbox: Option<SandboxKind>,
    /// The KVM device for `sandbox = "kvm"` or `"auto"`.
    kvm_device: Option<PathBuf>,
    /// The engine's guest memory (MiB) under kvm; default: sized for
    /// `cache.bytes` (`mirage_sdk::kvm::guest_memory_mib_for`).
    kvm_memory_mib: Option<u32>,
    /// All roles on one CPU, the one the service starts on (default
    /// true): a query's hand-offs between the network role and the engine
    /// are then context switches, not cross-CPU wake-ups
    /// (`mirage_sdk::cpu`); false: wherever the kernel puts them.
    one_cpu: Option<bool>,
    limits: NetworkLimits,
    cache: CacheConfig,
    ids: IdsConfig,
}

fn addrs(
    flags: &[SocketAddr],
    file: &[String],
    key: &str,
    path: &std::path::Path,
    parse: fn(&str) -> Result<SocketAddr, String>,
) -> Result<Vec<SocketAddr>, String> {
    let list = if flags.is_empty() {
        file.iter()
            .map(|s| parse(s).map_err(|e| format!("{}: {key}: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags.to_vec()
    };
    let mut unique = Vec::new();
    for a in list {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    Ok(unique)
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
    let mut listen = addrs(&args.listen, &file.listen, "listen", &path, crate::parse_addr)?;
    if listen.is_empty() {
        listen.push("127.0.0.53:53".parse().expect("a literal address"));
    }
    if listen.len() > MAX_LISTEN {
        return Err(format!("{} listen addresses: at most {MAX_LISTEN}", listen.len()));
    }
    let upstreams = addrs(
        &args.upstreams,
        &file.upstreams,
        "upstreams",
        &path,
        crate::parse_upstream,
    )?;
    let dhcp_path = match file.dhcp_servers.clone() {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p),
        None if upstreams.is_empty() => Some(default_dhcp_servers()),
        None => None,
    };
    if upstreams.is_empty() && dhcp_path.is_none() {
        return Err(format!(
            "no upstream: give --upstream ADDR[:PORT], `upstreams` or `dhcp_servers` in {}",
            path.display()
        ));
    }
    if upstreams.len() > MAX_UPSTREAMS {
        return Err(format!("{} upstreams: at most {MAX_UPSTREAMS}", upstreams.len()));
    }
    // Forwarding to ourselves would loop each query until it times out.
    if let Some(a) = upstreams.iter().find(|u| is_ours(&listen, **u)) {
        return Err(format!(
            "upstream {a} is one of our own listen addresses: a forwarding loop"
        ));
    }
    let allow = match &file.allow {
        Some(list) => list
            .iter()
            .map(|s| Cidr::parse(s).map_err(|e| format!("{}: allow: {e}", path.display())))
            .collect::<Result<Vec<_>, _>>()?,
        None => default_allow(&listen),
    };
    if allow.len() > MAX_ALLOW {
        return Err(format!("{} allow blocks: at most {MAX_ALLOW}", allow.len()));
    }
    let mut dhcp = dhcp_path.map(|path| DhcpFollow {
        path,
        servers: Vec::new(),
        search: Vec::new(),
        error: None,
        changes: 0,
        self_loops: Vec::new(),
    });
    if let Some(d) = dhcp.as_mut() {
        d.poll(&listen);
        log::info!(
            "following the DNS servers in {} ({})",
            d.path.display(),
            if d.servers.is_empty() {
                "none yet".to_string()
            } else {
                join(&d.servers)
            }
        );
    }
    let configured = upstreams.clone();
    let upstreams = merged(&configured, dhcp.as_ref());
    file.limits
        .check()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.cache
        .check()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ids =
        RoleIds::resolve(&file.ids).map_err(|(key, why)| format!("{}: {key}: {why}", path.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    ids.fit_to_process::<Svc>(&file.ids, euid, egid)?;
    if euid != 0 {
        // A container or a systemd unit: port 53 needs CAP_NET_BIND_SERVICE,
        // ambient, which the drop below takes from every set.
        log::info!("not root: every role runs as {euid}:{egid}");
    }
    for w in ids.warnings(euid == 0) {
        log::warn!("{w}");
    }
    if common.sandbox == SandboxKind::None {
        log::warn!("SANDBOX DISABLED (--sandbox none)");
    }
    // The guest's memory holds the cache: checked whatever the sandbox, so
    // a config that is wrong under kvm is wrong everywhere.
    let cache_bytes = file.cache.bytes as usize;
    let guest_memory = match file.kvm_memory_mib {
        Some(mib) => mirage_sdk::kvm::check_guest_memory_mib(mib, cache_bytes)
            .map_err(|e| format!("{}: kvm_memory_mib: {e} (cache.bytes)", path.display()))?,
        None => (mirage_sdk::kvm::guest_memory_mib_for(cache_bytes) as usize) << 20,
    };
    // With kvm or auto the KVM device is opened and the engine's guest
    // booted once (mirage_sdk::kvm); auto falls back to seccomp and says why.
    let device = (file.kvm_device.clone()).unwrap_or_else(|| mirage_sdk::kvm::DEFAULT_DEVICE.into());
    let sandbox = mirage_sdk::kvm::choose(common.sandbox, Some(GUEST), &device)?;
    let sandbox_reason: String = sandbox.reason.chars().take(MAX_SANDBOX_REASON).collect();
    log::info!("sandbox {}: {}", sandbox.kind.as_str(), sandbox_reason);
    if sandbox.kind == SandboxKind::Kvm {
        log::info!("the engine's guest has {} MiB of memory", guest_memory >> 20);
    }
    let kvm_device = (sandbox.device_fd())
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(|e| format!("the KVM device: {e}"))?;
    let file_one_cpu = file.one_cpu.unwrap_or(true);
    let signals = SignalPipe::new()?;

    // The privileged opens: the run directory, then the listeners (port 53
    // needs CAP_NET_BIND_SERVICE, which the drop below takes away).
    let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(
        &common.run_dir,
        Some(mirage_sdk::service::dirs::RUN_DIR_MODE),
    )
    .map_err(|e| format!("runtime directory {}: {e}", common.run_dir.display()))?;
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for &a in &listen {
        let u = UdpSocket::bind(a).map_err(|e| format!("UDP listener on {a}: {e}"))?;
        u.set_nonblocking(true).map_err(|e| e.to_string())?;
        let t = TcpListener::bind(a).map_err(|e| format!("TCP listener on {a}: {e}"))?;
        t.set_nonblocking(true).map_err(|e| e.to_string())?;
        udp.push((u.local_addr().map_err(|e| e.to_string())?, OwnedFd::from(u)));
        tcp.push((t.local_addr().map_err(|e| e.to_string())?, OwnedFd::from(t)));
    }
    let limits = fit_limits(file.limits, udp.len() + tcp.len())?;
    let settings = NetworkSettings {
        udp: udp.iter().map(|(a, _)| *a).collect(),
        tcp: tcp.iter().map(|(a, _)| *a).collect(),
        upstreams: upstreams.clone(),
        allow,
        limits,
    };
    let listeners: Vec<OwnedFd> = udp.into_iter().chain(tcp).map(|(_, fd)| fd).collect();
    let options = RoleOptions {
        sandbox: sandbox.kind,
        log_level: args.common.log_level,
    };
    let defaults = Start::default();
    let mut start = Start {
        upstreams: upstreams.clone(),
        attempt_ms: file.attempt_ms.unwrap_or(defaults.attempt_ms),
        attempts: file.attempts.unwrap_or(defaults.attempts),
        ..defaults
    };
    let uplink_dir = run_dir
        .try_clone()
        .map_err(|e| format!("runtime directory: {e}"))?;
    file.cache.apply(&mut start);
    let mut sup = Supervisor {
        options,
        sandbox_reason,
        kvm_device,
        guest_memory,
        ids,
        start,
        settings,
        listeners,
        configured,
        dhcp,
        next_poll: StdInstant::now() + DHCP_EVERY,
        planned_restarts: 0,
        uplink_dir,
        publisher: Publisher::new(run_dir, Pacing::every(PUBLISH_EVERY)),
        status: None,
        network: None,
        refused: BTreeMap::new(),
        engine_restarts: 0,
    };
    let (engine, network) = (
        sup.engine_plan(),
        plan::network(
            &sup.ids,
            sup.listeners.len(),
            &sup.settings.limits,
            &sup.settings.upstreams,
        ),
    );
    let (engine_end, network_end) = link_pair()?;
    // A tender's KVM device first (mirage_sdk::kvm::FD_KVM), then the
    // direct channel.
    let mut engine_fds: Vec<_> = sandbox.device_fd().into_iter().collect();
    engine_fds.push(engine_end.as_fd());
    let mut network_fds: Vec<_> = sup.listeners.iter().map(|l| l.as_fd()).collect();
    network_fds.push(network_end.as_fd());
    let specs = [
        engine.spec(
            options,
            &(),
            Some(sup.engine_first()?),
            engine_fds,
            Restart::WithBackoff,
        )?,
        network.spec(options, &sup.settings, None, network_fds, Restart::WithBackoff)?,
    ];
    if file_one_cpu {
        match mirage_sdk::cpu::share_one() {
            Ok(Some(cpu)) => log::info!("the roles run on CPU {cpu} (one_cpu = false: any)"),
            Ok(None) => {}
            // Only the speed of the hand-offs depends on it.
            Err(e) => log::warn!("the roles could not be kept on one CPU: {e}"),
        }
    }
    let starting = launch::start_all(&specs)?;
    drop(specs);
    // Each role holds the only copy of its end of the direct channel.
    drop((engine_end, network_end));
    // The supervisor keeps its duplicate of the device for restarts.
    drop(sandbox);
    let roles = launch::confine(starting, sup.options.sandbox, &[&engine, &network])?;
    sup.write_uplink();
    sup.publisher.mark_dirty();
    let mut runtime = Runtime::new(sup, roles).link(ENGINE, NETWORK)?;
    // The first status now, with the privileges it will always have (no
    // CAP_DAC_OVERRIDE): a runtime directory it cannot write is an error
    // at start, not a service that runs without status files.
    let view = runtime.service.view();
    if let Err(e) = runtime.service.publisher.flush(|| view.publication()) {
        runtime.shutdown();
        return Err(format!(
            "runtime directory {}: {e}: it must be writable by uid {euid} (chown {euid}:{egid} {})",
            common.run_dir.display(),
            common.run_dir.display()
        ));
    }
    log::info!(
        "listening on {}, upstreams {}, sandbox {}",
        join(&listen),
        join(&upstreams),
        runtime.service.options.sandbox.as_str()
    );
    Ok(runtime.run(&signals))
}

/// `[limits]` fitted to the descriptor limit the roles inherit (many
/// container runtimes give 1024): one warning with the numbers when they
/// are lowered, an error at start when not even the minimum fits (a
/// network role that cannot set its limit would fail at every restart).
fn fit_limits(limits: NetworkLimits, listeners: usize) -> Result<NetworkLimits, String> {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let (fitted, lowered) = limits.fit(listeners, hard)?;
    if let Some(was) = lowered {
        log::warn!(
            "the descriptor limit (RLIMIT_NOFILE, hard) is {hard}, below the {} [limits] need: \
             limits.upstream_sockets lowered from {} to {}, limits.tcp_clients from {} to {} \
             (raise the limit to keep them: podman --ulimit nofile=4096:4096, systemd LimitNOFILE=4096)",
            was.wanted,
            was.upstream_sockets,
            fitted.upstream_sockets,
            was.tcp_clients,
            fitted.tcp_clients
        );
    }
    Ok(fitted)
}

/// Whether `upstream` is one of our listen addresses (one that listens on
/// every address covers loopback and the host's on its port).
fn is_ours(listen: &[SocketAddr], upstream: SocketAddr) -> bool {
    listen.iter().any(|l| {
        let up = upstream.ip().to_canonical();
        l.port() == upstream.port()
            && (l.ip().to_canonical() == up || (l.ip().is_unspecified() && up.is_loopback()))
    })
}

/// The access list by default: loopback and the listen addresses (the
/// host's own, where it listens on more than loopback).
fn default_allow(listen: &[SocketAddr]) -> Vec<Cidr> {
    let mut allow = vec![
        Cidr::parse("127.0.0.0/8").expect("a literal block"),
        Cidr::parse("::1/128").expect("a literal block"),
    ];
    for l in listen {
        let c = Cidr::host(l.ip());
        if !l.ip().is_unspecified() && !allow.iter().any(|a| a.contains(l.ip())) && !allow.contains(&c) {
            allow.push(c);
        }
    }
    allow
}

/// The configured upstreams first, then the learned ones, without
/// repeats, at most [`MAX_UPSTREAMS`].
fn merged(configured: &[SocketAddr], dhcp: Option<&DhcpFollow>) -> Vec<SocketAddr> {
    let mut all = configured.to_vec();
    for s in dhcp.map(|d| d.servers.as_slice()).unwrap_or_default() {
        if !all.contains(s) {
            all.push(*s);
        }
    }
    all.truncate(MAX_UPSTREAMS);
    all
}

/// Following the DNS servers mirage-dhcp learned (`servers.json`).
struct DhcpFollow {
    path: PathBuf,
    /// The learned servers in use (port 53), self-loops left out.
    servers: Vec<SocketAddr>,
    /// The lease's search domains, for the uplink resolv.conf.
    search: Vec<String>,
    /// Why the file could not be read last time (the last list is kept).
    error: Option<String>,
    /// Times the list or the search domains changed.
    changes: u64,
    /// Learned servers refused: our own listen addresses.
    self_loops: Vec<SocketAddr>,
}

impl DhcpFollow {
    /// Read the file; whether what is in use changed.
    fn poll(&mut self, listen: &[SocketAddr]) -> bool {
        let (dns, search) = match learned::read(&self.path) {
            Ok(None) => (Vec::new(), Vec::new()),
            Ok(Some(s)) => (s.dns, s.search),
            Err(e) => {
                if self.error.as_ref() != Some(&e) {
                    log::warn!("{e} (the DNS servers learned before are kept)");
                }
                self.error = Some(e);
                return false;
            }
        };
        self.error = None;
        let mut servers = Vec::new();
        let mut self_loops = Vec::new();
        for ip in dns {
            let a = SocketAddr::new(ip.to_canonical(), dns_engine::DNS_PORT);
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
                continue;
            }
            // servers.json carries no interface: a link-local server
            // could not be reached (configure it as `fe80::1%eth0`).
            if let IpAddr::V6(v6) = a.ip()
                && v6.is_unicast_link_local()
            {
                continue;
            }
            if is_ours(listen, a) {
                self_loops.push(a);
            } else if !servers.contains(&a) {
                servers.push(a);
            }
        }
        if self_loops != self.self_loops {
            for a in self_loops.iter().filter(|a| !self.self_loops.contains(a)) {
                log::warn!(
                    "{}: refused the learned DNS server {a}: it is one of our own listen addresses (a forwarding loop)",
                    self.path.display()
                );
            }
            self.self_loops = self_loops;
        }
        if servers == self.servers && search == self.search {
            return false;
        }
        self.servers = servers;
        self.search = search;
        self.changes += 1;
        true
    }
}

fn join(list: &[SocketAddr]) -> String {
    list.iter()
        .map(crate::upstream_text)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The routing the runtime runs.
struct Supervisor {
    options: RoleOptions,
    /// Why the sandbox in force was chosen (status.json).
    sandbox_reason: String,
    /// The KVM device with `--sandbox kvm` (or `auto` resolved to it), for
    /// every engine started.
    kvm_device: Option<OwnedFd>,
    /// The engine guest's memory in bytes (its plan's, under kvm).
    guest_memory: usize,
    ids: RoleIds,
    start: Start,
    settings: NetworkSettings,
    /// The listeners, kept for the network roles started later.
    listeners: Vec<OwnedFd>,
    /// The upstreams configured (`upstreams`, `--upstream`), asked before
    /// the learned ones.
    configured: Vec<SocketAddr>,
    dhcp: Option<DhcpFollow>,
    next_poll: StdInstant,
    /// Restarts of the pair on purpose (new upstreams), not faults.
    planned_restarts: u32,
    /// The run directory, for the uplink resolv.conf.
    uplink_dir: OwnedFd,
    publisher: Publisher,
    status: Option<Status>,
    network: Option<NetworkStats>,
    /// Items the engine refused, by reason.
    refused: BTreeMap<&'static str, u64>,
    engine_restarts: u32,
}

impl Supervisor {
    /// Read servers.json when due; a new upstream list starts the pair
    /// again with it (the engine numbers the upstreams, the network role
    /// checks them and Landlock names their ports, so both take it from
    /// their start).
    fn follow_dhcp(&mut self, ctx: &mut Ctx<'_>, now: StdInstant) {
        if now < self.next_poll {
            return;
        }
        self.next_poll = now + DHCP_EVERY;
        let Some(d) = self.dhcp.as_mut() else { return };
        if !d.poll(&self.settings.udp) {
            return;
        }
        self.publisher.mark_dirty();
        let upstreams = merged(&self.configured, self.dhcp.as_ref());
        if upstreams != self.settings.upstreams {
            log::info!(
                "the DHCP-learned DNS servers changed: upstreams {}",
                if upstreams.is_empty() {
                    "none".to_string()
                } else {
                    join(&upstreams)
                }
            );
            self.settings.upstreams = upstreams.clone();
            self.start.upstreams = upstreams;
            self.planned_restarts += 1;
            ctx.restart(ENGINE, "the upstreams changed");
            ctx.restart(NETWORK, "the upstreams changed");
        }
        self.write_uplink();
    }

    /// The uplink resolv.conf: the upstreams in use on port 53 (resolv.conf
    /// has no port), and the lease's search domains when following DHCP.
    fn write_uplink(&self) {
        // A link-local one with its interface, `fe80::1%eth0` (glibc and
        // musl take it; without it the address is useless).
        let servers: Vec<String> = self
            .settings
            .upstreams
            .iter()
            .filter(|a| a.port() == dns_engine::DNS_PORT)
            .map(crate::nameserver_text)
            .collect();
        let search: Vec<&str> = self
            .dhcp
            .as_ref()
            .map(|d| d.search.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let text = mirage_sdk::files::resolv_conf_text(
            "Generated by mirage-dns: its upstreams, for container runtimes; changes are overwritten.",
            &search,
            &servers,
        );
        if !text.dropped.is_empty() {
            log::warn!(
                "{UPLINK_RESOLV_CONF}: left out search domains: {}",
                text.dropped.join(" ")
            );
        }
        if let Err(e) = mirage_sdk::files::write_atomic_runtime(
            &self.uplink_dir,
            UPLINK_RESOLV_CONF,
            text.text.as_bytes(),
            0o644,
        ) {
            log::warn!("writing {UPLINK_RESOLV_CONF}: {e}");
        }
    }

    fn engine_first(&self) -> Result<Vec<u8>, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start: ToEngineOf<Forwarder> = ToEngine::Start {
            start: self.start.clone(),
            seed,
        };
        codec::encode(&start).map_err(|e| e.to_string())
    }

    fn on_engine(&mut self, msg: &[u8]) -> Result<(), String> {
        match codec::decode::<FromEngineOf<Forwarder>>(msg).map_err(|e| e.to_string())? {
            FromEngine::Action(Action::Status(s)) => self.status = Some(s),
            FromEngine::Action(Action::Batch(_)) => {
                return Err("a batch sent to the supervisor, not the network role".into());
            }
            FromEngine::Refused(r) => {
                for (reason, count) in r.counts {
                    let n = self.refused.entry(reason.as_str()).or_default();
                    let before = *n;
                    *n += u64::from(count);
                    // Logged when the count passes a power of two.
                    if before.checked_ilog2() != n.checked_ilog2() {
                        log::warn!("refused {} ({}); {n} so far", reason.as_str(), count);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Service for Supervisor {
    fn on_message(&mut self, _ctx: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
        self.publisher.mark_dirty();
        match from {
            ENGINE => self.on_engine(msg),
            _ => match codec::decode::<FromNetwork>(msg).map_err(|e| e.to_string())? {
                FromNetwork::Stats(s) => {
                    self.network = Some(s);
                    Ok(())
                }
            },
        }
    }

    /// The pair restarts together: a fresh engine with a fresh seed, and a
    /// network role with duplicates of the listeners (the runtime adds the
    /// fresh direct channel after them).
    fn restart(&mut self, role: RoleId) -> Result<RoleStart, String> {
        if role == ENGINE {
            let mut start = self
                .engine_plan()
                .start(self.options, &(), Some(self.engine_first()?))?;
            // A tender gets the device again (the runtime adds the fresh
            // direct channel after it).
            if let Some(kvm) = &self.kvm_device {
                start
                    .fds
                    .push(kvm.try_clone().map_err(|e| format!("the KVM device: {e}"))?);
            }
            return Ok(start);
        }
        let mut start = plan::network(
            &self.ids,
            self.listeners.len(),
            &self.settings.limits,
            &self.settings.upstreams,
        )
        .start(self.options, &self.settings, None)?;
        start.fds = self
            .listeners
            .iter()
            .map(|l| l.try_clone().map_err(|e| format!("a listener: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(start)
    }

    fn on_role_down(&mut self, _ctx: &mut Ctx<'_>, role: RoleId) {
        // A new pair starts from zero: its counters are its own.
        if role == NETWORK {
            self.network = None;
        } else {
            self.status = None;
        }
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.engine_restarts = ctx.restarts(ENGINE).saturating_sub(self.planned_restarts);
        self.publisher.mark_dirty();
    }

    fn on_round(&mut self, ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        let now = StdInstant::now();
        if self.dhcp.is_some() {
            self.follow_dhcp(ctx, now);
        }
        let view = self.view();
        let next = self
            .publisher
            .on_round(now, || view.publication())
            .map_err(|e| e.to_string())?;
        Ok(match (&self.dhcp, next) {
            (Some(_), Some(at)) => Some(at.min(self.next_poll)),
            (Some(_), None) => Some(self.next_poll),
            (None, next) => next,
        })
    }

    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {
        let view = self.view();
        if let Err(e) = self.publisher.flush(|| view.publication()) {
            log::warn!("{e}");
        }
    }
}

impl Supervisor {
    /// The engine's plan for the sandbox in force: a tender's with kvm,
    /// with the guest memory the cache needs.
    fn engine_plan(&self) -> RolePlan {
        match self.options.sandbox {
            SandboxKind::Kvm => {
                let mut plan = mirage_sdk::kvm::tender_plan(plan::engine(&self.ids));
                plan.guest_memory = self.guest_memory;
                plan
            }
            _ => plan::engine(&self.ids),
        }
    }

    fn view(&self) -> View {
        View {
            listen: self.settings.udp.clone(),
            upstreams: self.settings.upstreams.clone(),
            allow: self.settings.allow.clone(),
            dhcp: self.dhcp.as_ref().map(|d| {
                serde_json::json!({
                    "file": d.path.display().to_string(),
                    "servers": d.servers.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>(),
                    "search": d.search,
                    "error": d.error,
                    "changes": d.changes,
                    "self_loops": d.self_loops.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>(),
                })
            }),
            sandbox: self.options.sandbox,
            sandbox_reason: self.sandbox_reason.clone(),
            guest_memory: self.kvm_device.as_ref().map(|_| self.guest_memory),
            status: self.status.clone(),
            network: self.network.clone(),
            refused: self.refused.clone(),
            engine_restarts: self.engine_restarts,
        }
    }
}

/// What is published.
struct View {
    listen: Vec<SocketAddr>,
    upstreams: Vec<SocketAddr>,
    allow: Vec<Cidr>,
    dhcp: Option<serde_json::Value>,
    sandbox: SandboxKind,
    sandbox_reason: String,
    /// The engine guest's memory (bytes), under kvm.
    guest_memory: Option<usize>,
    status: Option<Status>,
    network: Option<NetworkStats>,
    refused: BTreeMap<&'static str, u64>,
    engine_restarts: u32,
}

/// Of the questions the cache was asked, the share it answered (0 to 1,
/// three decimals); null before the first.
fn hit_rate(hits: u64, misses: u64) -> Option<f64> {
    let asked = hits + misses;
    (asked > 0).then(|| (hits as f64 * 1000.0 / asked as f64).round() / 1000.0)
}

impl View {
    /// Each upstream in use as the engine ranks it (docs/dns.md,
    /// "Upstream choice"): `unknown` before its first answer or failure,
    /// `up` when its last question was answered, `failing` after a
    /// failure in a row; its smoothed round-trip time in milliseconds.
    fn upstream_state(&self) -> Vec<serde_json::Value> {
        let known = self.status.as_ref().map(|s| &s.upstreams[..]).unwrap_or_default();
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let k = known.get(i).copied().unwrap_or_default();
                let state = if k.failures_in_a_row > 0 {
                    "failing"
                } else if k.answers > 0 {
                    "up"
                } else {
                    "unknown"
                };
                serde_json::json!({
                    "upstream": crate::upstream_text(a),
                    "state": state,
                    "rtt_ms": k.rtt_eighths_ms.map(|e| f64::from(e) / 8.0),
                    "preferred": k.preferred,
                    "answers": k.answers,
                    "failures": k.failures,
                    "failures_in_a_row": k.failures_in_a_row,
                })
            })
            .collect()
    }

    fn publication(&self) -> Publication {
        let c = self.status.as_ref().map(|s| s.counters).unwrap_or_default();
        let n = self.network.clone().unwrap_or_default();
        let outbound: BTreeMap<&str, u64> = n.refused.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let status = serde_json::json!({
            "listen": self.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "upstreams": self.upstreams.iter().map(crate::upstream_text).collect::<Vec<_>>(),
            "upstream_state": self.upstream_state(),
            "allow": self.allow.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "dhcp": self.dhcp,
            "sandbox": self.sandbox.as_str(),
            "sandbox_reason": self.sandbox_reason,
            "guest_memory_mib": self.guest_memory.map(|b| b >> 20),
            "engine": {
                "pending": self.status.as_ref().map_or(0, |s| s.pending),
                "queries": c.queries,
                "answered": c.answered,
                "truncated": c.truncated,
                "formerr": c.formerr,
                "notimp": c.notimp,
                "servfail": c.servfail,
                "merged": c.merged,
                "cache_hits": c.cache_hits,
                "negative_hits": c.negative_hits,
                "cache_misses": c.cache_misses,
                "cache_hit_rate": hit_rate(c.cache_hits, c.cache_misses),
                "stale_answers": c.stale_answers,
                "local_answers": c.local_answers,
                "prefetches": c.prefetches,
                "unusable": c.unusable,
                "cache_entries": self.status.as_ref().map_or(0, |s| s.cache_entries),
                "cache_bytes": self.status.as_ref().map_or(0, |s| s.cache_bytes),
                "upstream_queries": c.upstream_queries,
                "tcp_retries": c.tcp_retries,
                "upstream_replies": c.upstream_replies,
                "upstream_timeouts": c.upstream_timeouts,
                "upstream_failures": c.upstream_failures,
            },
            "network": {
                "udp_queries": n.udp_queries,
                "tcp_queries": n.tcp_queries,
                "tcp_accepted": n.tcp_accepted,
                "tcp_over_limit": n.tcp_over_limit,
                "tcp_closed_idle": n.tcp_closed_idle,
                "tcp_closed_bad": n.tcp_closed_bad,
                "answers": n.answers,
                "not_queries": n.not_queries,
                "pending_full": n.pending_full,
                "dropped": {
                    "not-allowed": n.not_allowed,
                    "rate-limited": n.rate_limited,
                },
                "expired": n.expired,
                "engine_busy": n.engine_busy,
                "upstream_queries": n.upstream_queries,
                "tcp_upstream_queries": n.tcp_upstream_queries,
                "upstream_replies": n.upstream_replies,
                "upstream_errors": n.upstream_errors,
                "refused": outbound,
            },
            "refused": self.refused,
            "engine_restarts": self.engine_restarts,
        });
        Publication {
            status: status.to_string(),
            metrics: self.metrics(&c, &n, &outbound),
        }
    }

    fn metrics(&self, c: &dns_engine::Counters, n: &NetworkStats, outbound: &BTreeMap<&str, u64>) -> String {
        let mut m = Metrics::of::<Svc>();
        let mut f = m.family(
            Kind::Counter,
            "queries_total",
            "Client queries received, by transport.",
        );
        f.sample(&[("transport", "udp")], n.udp_queries);
        f.sample(&[("transport", "tcp")], n.tcp_queries);
        let mut f = m.family(Kind::Counter, "responses_total", "Answers by kind.");
        f.sample(&[("kind", "answered")], c.answered);
        f.sample(&[("kind", "servfail")], c.servfail);
        f.sample(&[("kind", "formerr")], c.formerr);
        f.sample(&[("kind", "notimp")], c.notimp);
        m.counter(
            "truncated_total",
            "Answers truncated to the client's size.",
            &[],
            c.truncated,
        );
        m.counter(
            "merged_total",
            "Queries joined to an identical one in flight.",
            &[],
            c.merged,
        );
        m.counter(
            "cache_hits_total",
            "Queries answered from the cache.",
            &[],
            c.cache_hits,
        );
        m.counter(
            "cache_negative_hits_total",
            "Queries answered from the cache with NXDOMAIN or NODATA.",
            &[],
            c.negative_hits,
        );
        m.counter(
            "cache_misses_total",
            "Queries the cache could not answer.",
            &[],
            c.cache_misses,
        );
        m.counter(
            "stale_answers_total",
            "Expired answers served because the upstreams failed (RFC 8767).",
            &[],
            c.stale_answers,
        );
        m.counter(
            "local_answers_total",
            "Special-use names answered without an upstream (localhost, invalid, onion).",
            &[],
            c.local_answers,
        );
        m.counter(
            "prefetches_total",
            "Cached answers asked for again before they expired (cache.prefetch).",
            &[],
            c.prefetches,
        );
        m.counter(
            "unusable_answers_total",
            "Upstream answers refused for their CNAME chain (loop, ambiguous, over 16 hops).",
            &[],
            c.unusable,
        );
        m.gauge(
            "cache_bytes",
            "The cache's estimated memory.",
            &[],
            self.status.as_ref().map_or(0, |s| s.cache_bytes),
        );
        m.gauge(
            "cache_entries",
            "Answers in the cache.",
            &[],
            self.status.as_ref().map_or(0, |s| s.cache_entries),
        );
        m.gauge(
            "pending",
            "Client queries waiting for an upstream.",
            &[],
            self.status.as_ref().map_or(0, |s| s.pending),
        );
        m.counter(
            "upstream_queries_total",
            "Queries sent upstream.",
            &[],
            c.upstream_queries,
        );
        m.counter(
            "tcp_retries_total",
            "Upstream queries asked again over TCP after a truncated answer.",
            &[],
            c.tcp_retries,
        );
        m.counter(
            "upstream_replies_total",
            "Upstream replies accepted.",
            &[],
            c.upstream_replies,
        );
        m.counter(
            "upstream_timeouts_total",
            "Upstream attempts timed out.",
            &[],
            c.upstream_timeouts,
        );
        m.counter(
            "upstream_errors_total",
            "Upstream sockets that failed.",
            &[],
            n.upstream_errors,
        );
        // Per upstream (docs/dns.md, "Upstream choice").
        let known = self.status.as_ref().map(|s| &s.upstreams[..]).unwrap_or_default();
        let names: Vec<String> = self.upstreams.iter().map(crate::upstream_text).collect();
        let per = |i: usize| known.get(i).copied().unwrap_or_default();
        let mut f = m.family(
            Kind::Gauge,
            "upstream_rtt_seconds",
            "Smoothed round-trip time of an upstream's UDP answers (absent before the first).",
        );
        for (i, name) in names.iter().enumerate() {
            if let Some(e) = per(i).rtt_eighths_ms {
                f.sample(&[("upstream", name)], f64::from(e) / 8000.0);
            }
        }
        let mut f = m.family(
            Kind::Gauge,
            "upstream_preferred",
            "1 for the upstream the next question goes to.",
        );
        for (i, name) in names.iter().enumerate() {
            f.sample(&[("upstream", name)], per(i).preferred);
        }
        let mut f = m.family(
            Kind::Counter,
            "upstream_answers_total",
            "Answers accepted, per upstream.",
        );
        for (i, name) in names.iter().enumerate() {
            f.sample(&[("upstream", name)], per(i).answers);
        }
        let mut f = m.family(
            Kind::Counter,
            "upstream_failures_total",
            "Timeouts, socket errors, REFUSED and SERVFAIL, per upstream.",
        );
        for (i, name) in names.iter().enumerate() {
            f.sample(&[("upstream", name)], per(i).failures);
        }
        let mut f = m.family(
            Kind::Counter,
            "refused_total",
            "Inbound items the engine refused, by reason.",
        );
        for (k, v) in &self.refused {
            f.sample(&[("reason", k)], *v);
        }
        let mut f = m.family(
            Kind::Counter,
            "outbound_refused_total",
            "What the engine asked that the network role refused, by reason.",
        );
        for (k, v) in outbound {
            f.sample(&[("reason", k)], *v);
        }
        m.counter(
            "dropped_total",
            "Client queries dropped before the engine (table full, engine busy).",
            &[],
            n.pending_full + n.engine_busy,
        );
        let mut f = m.family(
            Kind::Counter,
            "clients_dropped_total",
            "Client queries dropped unanswered, by reason (not in the access list, over the client's rate).",
        );
        f.sample(&[("reason", "not-allowed")], n.not_allowed);
        f.sample(&[("reason", "rate-limited")], n.rate_limited);
        m.counter(
            "engine_restarts_total",
            "Times the engine and network role were restarted.",
            &[],
            self.engine_restarts,
        );
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hit_rate_is_a_share_or_null() {
        assert_eq!(hit_rate(0, 0), None);
        assert_eq!(hit_rate(3, 1), Some(0.75));
        assert_eq!(hit_rate(2, 1), Some(0.667));
        assert_eq!(hit_rate(5, 0), Some(1.0));
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn our_own_listen_addresses_are_no_upstream() {
        let stub = [a("127.0.0.53:53")];
        assert!(is_ours(&stub, a("127.0.0.53:53")));
        assert!(!is_ours(&stub, a("127.0.0.53:5353")));
        assert!(!is_ours(&stub, a("127.0.0.1:53")));
        let any = [a("0.0.0.0:53")];
        assert!(is_ours(&any, a("127.0.0.1:53")));
        assert!(!is_ours(&any, a("192.0.2.1:53")));
        assert!(is_ours(&[a("[::ffff:10.0.0.1]:53")], a("10.0.0.1:53")));
    }

    #[test]
    fn the_default_access_list_is_loopback_and_the_listen_addresses() {
        let list = |l: &[SocketAddr]| default_allow(l).iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(list(&[a("127.0.0.53:53")]), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(
            list(&[a("127.0.0.53:53"), a("10.0.0.1:53"), a("0.0.0.0:5353")]),
            ["127.0.0.0/8", "::1/128", "10.0.0.1/32"]
        );
    }

    #[test]
    fn learned_servers_follow_the_configured_ones_without_repeats_or_loops() {
        let dir = std::env::temp_dir().join(format!("mirage-dns-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(learned::SERVERS_FILE);
        let mut d = DhcpFollow {
            path: path.clone(),
            servers: Vec::new(),
            search: Vec::new(),
            error: None,
            changes: 0,
            self_loops: Vec::new(),
        };
        let listen = [a("127.0.0.53:53")];
        assert!(!d.poll(&listen), "no file: nothing learned, no change");
        std::fs::write(
            &path,
            r#"{"version":1,"interface":"eth0","ntp":[],"dns":["192.0.2.1","127.0.0.53","0.0.0.0","224.0.0.1","192.0.2.2","192.0.2.1"]}"#,
        )
        .unwrap();
        assert!(d.poll(&listen));
        assert_eq!(d.servers, [a("192.0.2.1:53"), a("192.0.2.2:53")]);
        assert_eq!(d.self_loops, [a("127.0.0.53:53")]);
        assert!(d.search.is_empty(), "a file without search: none");
        assert!(!d.poll(&listen), "the same file: no change");
        let configured = [a("192.0.2.2:53"), a("198.51.100.1:5353")];
        assert_eq!(
            merged(&configured, Some(&d)),
            [a("192.0.2.2:53"), a("198.51.100.1:5353"), a("192.0.2.1:53")]
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(!d.poll(&listen));
        assert!(d.error.is_some());
        assert_eq!(d.servers.len(), 2, "an unreadable file keeps the last list");
        assert_eq!(d.changes, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
