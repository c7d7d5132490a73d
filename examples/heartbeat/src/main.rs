//! mirage-heartbeat: the SDK's worked example (docs/sdk.md). `run` is the
//! supervisor: it opens a UDP socket connected to the peer, starts two
//! sandboxed roles by re-executing this binary, routes between them and
//! publishes status.json and metrics.prom itself (it has no actuator: the
//! service changes nothing on the host). `status` prints what it published.
//!
//! ```text
//!   network --Datagram--> engine --Send--> network --> peer
//!   engine --Pong/Refused--> supervisor --> status.json, metrics.prom
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use clap::{Parser, Subcommand};
use heartbeat_engine::{Heartbeat, PING_LEN, TAG};
use mirage_engine::codec;
use mirage_engine::{FromEngineOf, ToEngineOf};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::boottime;
use mirage_sdk::packet::RateCap;
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleSpec, RoleStart, Runtime, Service, SignalPipe};
use mirage_sdk::sandbox::{DropPlan, seccomp};
use mirage_sdk::service::metrics::Metrics;
use mirage_sdk::service::publish::{Pacing, Publication, Publisher};
use mirage_sdk::service::status::{StatusText, text_of};
use mirage_sdk::service::{self, Common, CommonArgs, CommonLayer, SandboxKind, StatusArgs, launch};
use serde::{Deserialize, Serialize};

/// The service's name in the convention: paths, metrics, messages.
#[derive(Debug, Clone, Copy)]
struct Hb;
impl service::Service for Hb {
    const NAME: &'static str = "heartbeat";
    const NOUN: &'static str = "client";
}

/// The roles, by their index in the runtime.
const ENGINE: RoleId = 0;
const NETWORK: RoleId = 1;
/// The roles' uid = gid: ids of the service's own, not `nobody`'s.
const ENGINE_ID: u32 = 65524;
const NETWORK_ID: u32 = 65525;
/// The role's fixed descriptors (the channel is 3).
const FD_CHANNEL: i32 = 3;
const FD_SOCKET: i32 = 4;
/// status.json and metrics.prom are written at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Pings the network role sends a second, on average and at once: a
/// compromised engine cannot flood the peer.
const SEND_PER_SECOND: u32 = 25;
const SEND_BURST: u32 = 5;

/// Supervisor <-> network role.
#[derive(Serialize, Deserialize, Debug)]
enum ToNetwork {
    Send(Vec<u8>),
}
#[derive(Serialize, Deserialize, Debug)]
enum FromNetwork {
    Datagram(Vec<u8>),
    /// An outbound datagram failed the role's policy or rate cap.
    Refused,
}

#[derive(Parser, Debug)]
#[command(
    name = "mirage-heartbeat",
    version,
    about = "Sandboxed UDP heartbeat client (MirageSDK example)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ping the peer every period until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Print the status a running client published (status.json).
    Status(StatusArgs<Hb>),
    /// Internal: a role started by the supervisor.
    #[command(hide = true)]
    Role(RoleArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The echo peer, ADDR:PORT (overrides `peer` in the config file).
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Milliseconds between pings, 50..=3600000 [default: 1000].
    #[arg(long)]
    period_ms: Option<u64>,
    // --config, --state-dir, --run-dir, --sandbox, --log-level.
    #[command(flatten)]
    common: CommonArgs<Hb>,
}

/// The config file (`/etc/mirage/heartbeat/config.toml`).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    peer: Option<SocketAddr>,
    period_ms: Option<u64>,
    state_dir: Option<std::path::PathBuf>,
    run_dir: Option<std::path::PathBuf>,
    sandbox: Option<SandboxKind>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RoleName {
    Engine,
    Network,
}

/// A role's command line: `role NAME --uid --gid --sandbox --log-level`.
#[derive(clap::Args, Debug)]
struct RoleArgs {
    #[arg(value_enum)]
    role: RoleName,
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    #[arg(long, value_enum)]
    sandbox: SandboxKind,
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => {
            mirage_sdk::log::init(args.common.log_level, "[supervisor] ");
            match run(args) {
                Ok(code) => code,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status(args) => args.run(status_summary),
        Command::Role(args) => {
            mirage_sdk::log::init(args.log_level, "");
            match role_main(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `status` without `--json`: the client's fields as lines.
fn status_summary(v: &serde_json::Value, out: &mut StatusText) {
    for key in ["peer", "sandbox", "pings", "pongs", "refused"] {
        out.line(key, &text_of(&v[key]));
    }
    out.line("rtt", &format!("{} ms", text_of(&v["last_rtt_ms"])));
    out.line("restarts", &text_of(&v["engine_restarts"]));
}

/// The supervisor: settings, the socket, the roles, then the SDK's runtime.
fn run(args: RunArgs) -> Result<ExitCode, String> {
    let (path, file) = args
        .common
        .load_config::<FileConfig>()
        .map_err(|e| e.to_string())?;
    let file_layer = CommonLayer {
        state_dir: file.state_dir,
        run_dir: file.run_dir,
        sandbox: file.sandbox,
    };
    let common = Common::resolve::<Hb>(args.common.layer(), file_layer);
    let peer = args
        .peer
        .or(file.peer)
        .ok_or_else(|| format!("no peer: give --peer ADDR:PORT or `peer` in {}", path.display()))?;
    let period_ms = args.period_ms.or(file.period_ms).unwrap_or(1000);
    let periods = heartbeat_engine::MIN_PERIOD_MS..=heartbeat_engine::MAX_PERIOD_MS;
    if !periods.contains(&period_ms) {
        return Err(format!("period_ms {period_ms} is not within {periods:?}"));
    }
    if common.sandbox == SandboxKind::None {
        log::warn!("SANDBOX DISABLED (--sandbox none)");
    }
    let signals = SignalPipe::new()?;
    let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(&common.run_dir, Some(0o755))
        .map_err(|e| format!("runtime directory {}: {e}", common.run_dir.display()))?;
    let local: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    let socket = UdpSocket::bind(local)
        .and_then(|s| s.connect(peer).map(|()| s))
        .map_err(|e| format!("UDP socket to {peer}: {e}"))?;

    let mut hb = Supervisor {
        peer,
        period_ms,
        sandbox: common.sandbox,
        level: args.common.log_level,
        publisher: Publisher::new(run_dir, Pacing::every(PUBLISH_EVERY)),
        stats: Stats::default(),
    };
    let engine = hb.restart(ENGINE)?;
    let specs = [
        RoleSpec {
            name: "engine",
            exe: None,
            args: engine.args,
            fds: vec![],
            first: engine.first,
            restart: Restart::WithBackoff,
        },
        RoleSpec {
            name: "network",
            exe: None,
            args: hb.role_args("network", NETWORK_ID),
            fds: vec![socket.as_fd()],
            first: None,
            restart: Restart::Never,
        },
    ];
    let starting = launch::start_all(&specs)?;
    drop(specs);
    // The supervisor keeps no socket to the peer.
    drop(socket);
    // Keep only what starting and stopping roles needs, then the
    // supervisor's own allow-list.
    let roles = launch::confine(starting, common.sandbox)?;
    log::info!(
        "pinging {peer} every {period_ms} ms, sandbox {}",
        common.sandbox.as_str()
    );
    Ok(Runtime::new(hb, roles).run(&signals))
}

/// What the engine's messages said, for status.json and metrics.prom.
#[derive(Default, Debug)]
struct Stats {
    pings: u64,
    pongs: u64,
    refused: u64,
    outbound_refused: u64,
    last_rtt_ms: Option<u64>,
    engine_restarts: u32,
}

/// The routing and policy the runtime runs.
struct Supervisor {
    peer: SocketAddr,
    period_ms: u64,
    sandbox: SandboxKind,
    level: log::LevelFilter,
    /// status.json and metrics.prom, written by the supervisor itself:
    /// there is no actuator.
    publisher: Publisher,
    stats: Stats,
}

impl Supervisor {
    fn role_args(&self, name: &str, id: u32) -> Vec<String> {
        let level = self.level.to_string().to_lowercase();
        let (id, sandbox) = (id.to_string(), self.sandbox.as_str());
        [
            "role",
            name,
            "--uid",
            &id,
            "--gid",
            &id,
            "--sandbox",
            sandbox,
            "--log-level",
            &level,
        ]
        .map(String::from)
        .to_vec()
    }

    /// What status.json and metrics.prom say now (a function of the
    /// fields alone, so that rendering can borrow them while the publisher
    /// is busy).
    fn publication(peer: SocketAddr, sandbox: SandboxKind, s: &Stats) -> Publication {
        let status = serde_json::json!({
            "peer": peer.to_string(),
            "sandbox": sandbox.as_str(),
            "pings": s.pings,
            "pongs": s.pongs,
            "refused": s.refused,
            "outbound_refused": s.outbound_refused,
            "last_rtt_ms": s.last_rtt_ms,
            "engine_restarts": s.engine_restarts,
        });
        let mut m = Metrics::of::<Hb>();
        m.counter("pings_total", "Pings sent.", &[], s.pings);
        m.counter("pongs_total", "Pongs accepted.", &[], s.pongs);
        m.counter(
            "refused_total",
            "Datagrams from the peer refused.",
            &[],
            s.refused,
        );
        if let Some(rtt) = s.last_rtt_ms {
            m.gauge(
                "rtt_seconds",
                "Round-trip time of the last pong.",
                &[],
                rtt as f64 / 1000.0,
            );
        }
        Publication {
            status: status.to_string(),
            metrics: m.finish(),
        }
    }
}

impl Service for Supervisor {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
        self.publisher.mark_dirty();
        if from == ENGINE {
            match codec::decode::<FromEngineOf<Heartbeat>>(msg).map_err(|e| e.to_string())? {
                mirage_engine::FromEngine::Action(heartbeat_engine::Action::Send(ping)) => {
                    self.stats.pings += 1;
                    // Lossy: a full queue drops the ping, as a busy link would.
                    ctx.send_lossy(NETWORK, &ToNetwork::Send(ping));
                }
                mirage_engine::FromEngine::Action(heartbeat_engine::Action::Pong { rtt_ms }) => {
                    self.stats.pongs += 1;
                    self.stats.last_rtt_ms = Some(rtt_ms);
                }
                mirage_engine::FromEngine::Refused(why) => {
                    self.stats.refused += 1;
                    // Logged at 1, 2, 4, 8...: a hostile peer cannot flood the log.
                    if self.stats.refused.is_power_of_two() {
                        log::warn!(
                            "refused a datagram ({}); {} so far",
                            why.as_str(),
                            self.stats.refused
                        );
                    }
                }
            }
        } else {
            match codec::decode::<FromNetwork>(msg).map_err(|e| e.to_string())? {
                FromNetwork::Datagram(d) => {
                    let event: ToEngineOf<Heartbeat> =
                        mirage_engine::ToEngine::Event(heartbeat_engine::Event::Datagram(d));
                    ctx.send_lossy(ENGINE, &event);
                }
                FromNetwork::Refused => self.stats.outbound_refused += 1,
            }
        }
        Ok(())
    }

    /// A (re)started engine gets the period and a fresh seed.
    fn restart(&mut self, _role: RoleId) -> Result<RoleStart, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start: ToEngineOf<Heartbeat> = mirage_engine::ToEngine::Start {
            start: heartbeat_engine::Start {
                period_ms: self.period_ms,
            },
            seed,
        };
        Ok(RoleStart {
            exe: None,
            args: self.role_args("engine", ENGINE_ID),
            first: Some(codec::encode(&start).map_err(|e| e.to_string())?),
        })
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.stats.engine_restarts = ctx.restarts(ENGINE);
        self.publisher.mark_dirty();
    }

    /// Publishes when something changed, at most every [`PUBLISH_EVERY`];
    /// the deadline it returns brings a held-back state out in time.
    fn on_round(&mut self, _ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        let (peer, sandbox, stats) = (self.peer, self.sandbox, &self.stats);
        self.publisher
            .on_round(StdInstant::now(), || Self::publication(peer, sandbox, stats))
            .map_err(|e| e.to_string())
    }

    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {
        let (peer, sandbox, stats) = (self.peer, self.sandbox, &self.stats);
        if let Err(e) = self.publisher.flush(|| Self::publication(peer, sandbox, stats)) {
            log::warn!("{e}");
        }
    }
}

/// A role: take its descriptors, drop to its plan, then its loop.
fn role_main(args: &RoleArgs) -> Result<(), String> {
    let chan = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    let socket =
        (args.role == RoleName::Network).then(|| UdpSocket::from(mirage_sdk::fd::take_fixed(FD_SOCKET)));
    let mut plan = DropPlan::strict();
    plan.uid = args.uid;
    plan.gid = args.gid;
    plan.private_mount_ns = args.sandbox == SandboxKind::Seccomp;
    let report = mirage_sdk::sandbox::apply(&plan).map_err(|e| e.to_string())?;
    let profile = match args.role {
        RoleName::Engine => seccomp::Role::Engine,
        RoleName::Network => seccomp::Role::Network,
    };
    match args.sandbox {
        SandboxKind::Seccomp => {
            seccomp::install(profile).map_err(|e| format!("seccomp: {e}"))?;
            log::info!("sandbox: {report} seccomp={}", profile.as_str());
        }
        SandboxKind::None => log::warn!("sandbox: {report} seccomp=OFF"),
    }
    match socket {
        None => mirage_sdk::engine_role::run::<Heartbeat>(chan),
        Some(socket) => network(&chan, &socket),
    }
}

/// The network role: datagrams between the connected socket and the
/// channel. Outbound, only a ping's shape passes, at a capped rate: the
/// engine may be compromised. `send`/`recv` on a connected socket are
/// `sendto`/`recvfrom` without an address, which the network profile allows.
fn network(chan: &Channel, socket: &UdpSocket) -> Result<(), String> {
    let mut cap = RateCap::new(SEND_PER_SECOND, SEND_BURST, boottime().millis());
    let mut buf = [0u8; 512];
    loop {
        let ready = wait_readable(&[chan.as_fd(), socket.as_fd()], None).map_err(|e| format!("poll: {e}"))?;
        if ready[1] {
            match socket.recv(&mut buf) {
                Ok(n) => chan
                    .send(&FromNetwork::Datagram(buf[..n].to_vec()))
                    .map_err(|e| format!("send: {e}"))?,
                // ICMP port unreachable from an earlier ping: the peer is down.
                Err(e) => log::debug!("receive: {e}"),
            }
        }
        if ready[0] {
            match chan.recv::<ToNetwork>() {
                Ok(Some(ToNetwork::Send(d))) => {
                    if d.len() == PING_LEN && d.starts_with(TAG) && cap.take(boottime().millis()) {
                        if let Err(e) = socket.send(&d) {
                            log::debug!("send: {e}");
                        }
                    } else {
                        chan.send(&FromNetwork::Refused)
                            .map_err(|e| format!("send: {e}"))?;
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        }
    }
}
