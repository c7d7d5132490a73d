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
use mirage_heartbeat::plan::{self, FD_SOCKET};
use mirage_sdk::network_role::{self, CapReport, Relay, RelayLimits, Request, Verdict};
use mirage_sdk::role::{RoleOptions, Starting};
use mirage_sdk::runtime::{Ctx, Restart, RoleId, RoleStart, Runtime, Service, Shed, SignalPipe};
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
/// status.json and metrics.prom are written at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// The network role's relay: pings it sends a second, on average and at
/// once (a compromised engine cannot flood the peer); only pings take a
/// token, and each capped one is refused at once. `send`/`recv` on a
/// connected socket are `sendto`/`recvfrom` without an address, which the
/// network plan allows; their errors are the peer's ICMP (it is down).
const RELAY: RelayLimits = RelayLimits {
    max_len: 512,
    per_second: 25,
    burst: 5,
    cap_before_policy: false,
    cap_report: CapReport::Each,
    io_errors: log::Level::Debug,
};

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

fn main() -> ExitCode {
    // A role (`role NAME`, started by the supervisor) parses no command
    // line: its hello says everything.
    if let Some(code) = mirage_sdk::role::main_if_role(&[("engine", engine_role), ("network", network_role)])
    {
        return code;
    }
    match Cli::parse().command {
        Command::Run(args) => {
            mirage_sdk::log::init(args.common.log_level, "[supervisor] ");
            mirage_sdk::service::exit_code(run(args))
        }
        Command::Status(args) => args.run(status_summary),
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
    // The example embeds no guest image: auto resolves to seccomp, and
    // --sandbox kvm is an error that says so.
    let device = std::path::Path::new(mirage_sdk::kvm::DEFAULT_DEVICE);
    let sandbox = mirage_sdk::kvm::choose(common.sandbox, None, device)?;
    let signals = SignalPipe::new()?;
    let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(&common.run_dir, Some(0o755))
        .map_err(|e| format!("runtime directory {}: {e}", common.run_dir.display()))?;
    let local: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    let socket = UdpSocket::bind(local)
        .and_then(|s| s.connect(peer).map(|()| s))
        .map_err(|e| format!("UDP socket to {peer}: {e}"))?;

    let hb = Supervisor {
        peer,
        period_ms,
        options: RoleOptions {
            sandbox: sandbox.kind,
            log_level: args.common.log_level,
        },
        publisher: Publisher::new(run_dir, Pacing::every(PUBLISH_EVERY)),
        stats: Stats::default(),
        shed: Shed::default(),
    };
    let (engine, network) = (plan::engine(), plan::network());
    let specs = [
        engine.spec(
            hb.options,
            &(),
            Some(hb.engine_start()?),
            vec![],
            Restart::WithBackoff,
        )?,
        network.spec(hb.options, &(), None, vec![socket.as_fd()], Restart::Never)?,
    ];
    let starting = launch::start_all(&specs)?;
    drop(specs);
    // The supervisor keeps no socket to the peer.
    drop(socket);
    // Keep only what starting and stopping roles needs, then the
    // supervisor's own allow-list (its own calls and every role's).
    let roles = launch::confine(starting, sandbox.kind, &[&engine, &network])?;
    log::info!(
        "pinging {peer} every {period_ms} ms, sandbox {}: {}",
        sandbox.kind.as_str(),
        sandbox.reason
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
    options: RoleOptions,
    /// status.json and metrics.prom, written by the supervisor itself:
    /// there is no actuator.
    publisher: Publisher,
    stats: Stats,
    /// Datagrams dropped because a role's queue was full.
    shed: Shed,
}

impl Supervisor {
    /// The engine's `Start`: the period and a fresh seed.
    fn engine_start(&self) -> Result<Vec<u8>, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
        let start: ToEngineOf<Heartbeat> = mirage_engine::ToEngine::Start {
            start: heartbeat_engine::Start {
                period_ms: self.period_ms,
            },
            seed,
        };
        codec::encode(&start).map_err(|e| e.to_string())
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
                    self.shed.send(ctx, NETWORK, &ToNetwork::Send(ping));
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
                    self.shed.send(ctx, ENGINE, &event);
                }
                FromNetwork::Refused => self.stats.outbound_refused += 1,
            }
        }
        Ok(())
    }

    /// A restarted engine gets a fresh hello, the period and a fresh seed.
    fn restart(&mut self, _role: RoleId) -> Result<RoleStart, String> {
        plan::engine().start(self.options, &(), Some(self.engine_start()?))
    }

    fn on_role_up(&mut self, ctx: &mut Ctx<'_>, _role: RoleId) {
        self.stats.engine_restarts = ctx.restarts(ENGINE);
        self.publisher.mark_dirty();
    }

    /// Publishes when something changed, at most every [`PUBLISH_EVERY`];
    /// the deadline it returns brings a held-back state out in time.
    fn on_round(&mut self, _ctx: &mut Ctx<'_>) -> Result<Option<StdInstant>, String> {
        let (peer, sandbox, stats) = (self.peer, self.options.sandbox, &self.stats);
        self.publisher
            .on_round(StdInstant::now(), || Self::publication(peer, sandbox, stats))
            .map_err(|e| e.to_string())
    }

    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {
        let (peer, sandbox, stats) = (self.peer, self.options.sandbox, &self.stats);
        if let Err(e) = self.publisher.flush(|| Self::publication(peer, sandbox, stats)) {
            log::warn!("{e}");
        }
    }
}

/// The engine role: its plan in force, then the SDK's engine runner.
fn engine_role(role: Starting) -> Result<(), String> {
    mirage_sdk::engine_role::run_sandboxed::<Heartbeat>(role, None)
}

/// The network role: the socket is taken (and checked) before the
/// sandbox, then the SDK's relay runs with [`PingsOnly`].
fn network_role(role: Starting) -> Result<(), String> {
    let socket = UdpSocket::from(mirage_sdk::fd::take_fixed(FD_SOCKET));
    let started = role.enter()?;
    network_role::run(&mut PingsOnly, &socket, &started.channel, RELAY)
}

/// The network role's policy: outbound, only a ping's shape passes (the
/// engine may be compromised); inbound, every datagram goes to the engine.
struct PingsOnly;

impl Relay for PingsOnly {
    type Socket = UdpSocket;
    type In = ToNetwork;
    type Out = FromNetwork;

    fn received(&mut self, datagram: &[u8], (): ()) -> Option<FromNetwork> {
        Some(FromNetwork::Datagram(datagram.to_vec()))
    }

    fn request(&mut self, msg: ToNetwork) -> Request {
        let ToNetwork::Send(datagram) = msg;
        Request::Send(datagram)
    }

    fn check(&mut self, d: Vec<u8>) -> Verdict {
        if d.len() == PING_LEN && d.starts_with(TAG) {
            Verdict::Send(d)
        } else {
            Verdict::Refused("not a ping".into())
        }
    }

    fn refused(&mut self, _reason: String) -> FromNetwork {
        FromNetwork::Refused
    }

    fn capped(&mut self, _datagrams: u64) -> FromNetwork {
        FromNetwork::Refused
    }
}
