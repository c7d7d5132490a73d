//! mirage-ntp: a privilege-separated NTP client (docs/ntp.md, "The
//! service"). `run` is the supervisor: it opens one connected UDP socket
//! per server (kernel receive timestamps on), the state and runtime
//! directories, starts three sandboxed roles by re-executing this binary,
//! routes between them and publishes status.json and metrics.prom. `status`
//! prints what it published.
//!
//! ```text
//!   network --Received/Sent--> engine --Send--> network --> servers
//!   engine --Slew/Step/SetFrequency/SetStatus/SaveDrift--> actuator (policy, clock)
//!   engine --PublishStatus--> supervisor --> status.json, metrics.prom
//! ```

mod roles;
mod supervisor;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirage_ntp::Ntp;
use mirage_sdk::service::status::{StatusText, text_of};
use mirage_sdk::service::{CommonArgs, StatusArgs};

#[derive(Parser, Debug)]
#[command(
    name = "mirage-ntp",
    version,
    about = "Privilege-separated NTP client: sandboxed engine, CAP_SYS_TIME actuator with a step policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Keep the clock with the servers until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Print the status a running client published (status.json).
    Status(StatusArgs<Ntp>),
    /// Accept one step the actuator's policy held, bounded in size and time.
    ///
    /// One step of at most --max-s either way, within --valid-s (`held` in
    /// status). The running client's actuator records and checks it; the
    /// held client steps at its next estimate. Run as the client's uid
    /// (root): the request is a file in its runtime directory. Exits 1 when
    /// no client took it or the actuator refused it.
    AcceptStep(AcceptArgs),
}

#[derive(clap::Args, Debug)]
pub struct AcceptArgs {
    /// Runtime directory the client publishes to [default: /run/mirage/ntp]
    #[arg(long)]
    run_dir: Option<std::path::PathBuf>,
    /// The largest step accepted, either way, in seconds (fractions
    /// allowed: 0.05). Default: the held step in status.json plus 0.5 s
    /// (what a clock drifting at 500 ppm moves in 10 minutes, rounded up),
    /// in the held step's direction only.
    #[arg(long, value_name = "SECONDS")]
    max_s: Option<f64>,
    /// How long the acceptance lasts, in seconds (at most 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = mirage_ntp::accept::DEFAULT_VALID_S)]
    valid_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// An NTP server: an IP address, with a port if not 123
    /// (192.0.2.1, 192.0.2.1:1123, 2001:db8::1, [2001:db8::1]:1123).
    /// Repeat for more servers (at most 16). Host names are not resolved
    /// yet. Replaces `servers` in the config file. With no server, the
    /// DHCP client's /run/mirage/dhcp/servers.json is followed
    /// (`dhcp_servers` in the config file).
    #[arg(long = "server", value_name = "ADDR[:PORT]", value_parser = parse_server)]
    servers: Vec<SocketAddr>,
    /// Measure and publish, never touch the clock: the actuator runs
    /// without any capability and applies nothing.
    #[arg(long)]
    observe: bool,
    // --config, --state-dir, --run-dir, --sandbox, --log-level.
    #[command(flatten)]
    common: CommonArgs<Ntp>,
}

/// A server as the command line and the config file give it.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, ntp_engine::NTP_PORT))
        .map_err(|_| {
            format!("{s:?} is not an IP address with an optional port (host names are not resolved yet)")
        })
}

fn main() -> ExitCode {
    // A role (`role NAME`, started by the supervisor) parses no command
    // line: its hello says everything.
    if let Some(code) = mirage_sdk::role::main_if_role(&[
        ("engine", roles::engine_role),
        ("network", roles::network_role),
        ("actuator", roles::actuator_role),
    ]) {
        return code;
    }
    match Cli::parse().command {
        Command::Run(args) => {
            mirage_sdk::log::init(args.common.log_level, "[supervisor] ");
            mirage_sdk::service::exit_code(supervisor::run(args))
        }
        Command::Status(args) => args.run(status_summary),
        Command::AcceptStep(args) => match accept_step(&args) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mirage-ntp: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// How long `accept-step` waits for the client to take its request, and
/// then for the actuator's answer in status.json.
const ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `accept-step`: the request file, then what the client made of it.
fn accept_step(args: &AcceptArgs) -> Result<String, String> {
    use mirage_ntp::accept::{self, AcceptRequest};
    use mirage_sdk::service::Service;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| Ntp::paths().run_dir);
    let (max_s, forward) = match args.max_s {
        Some(s) => (s, None),
        None => {
            let v = mirage_sdk::service::status::read(&run_dir)
                .map_err(|e| format!("{}/status.json {e} (is the client running?)", run_dir.display()))?;
            match (v["held"].as_bool(), v["clock"]["refused_step_s"].as_f64()) {
                (Some(true), Some(step)) => (
                    step.abs() + accept::DEFAULT_MARGIN_NS as f64 / 1e9,
                    Some(step > 0.0),
                ),
                _ => {
                    return Err(format!(
                        "no held step in {}/status.json (state {}): give --max-s to accept one ahead",
                        run_dir.display(),
                        text_of(&v["state"])
                    ));
                }
            }
        }
    };
    let request = AcceptRequest::new(max_s, args.valid_s, forward)?;
    let (dir, _) = mirage_sdk::files::open_dir_root_links_only(&run_dir, None)
        .map_err(|e| format!("{}: {e}", run_dir.display()))?;
    accept::write(&dir, &request).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let way = match forward {
        Some(true) => "forward",
        Some(false) => "back",
        None => "either way",
    };
    let shown = format!("one step of at most {max_s} s {way} within {} s", args.valid_s);
    let deadline = std::time::Instant::now() + ACCEPT_WAIT;
    let gone = || {
        matches!(
            mirage_sdk::files::read_bounded(&dir, accept::REQUEST_FILE, 4096),
            Ok(None)
        )
    };
    while !gone() {
        if std::time::Instant::now() >= deadline {
            // Never left for a later run to find.
            let _ = mirage_sdk::files::remove(&dir, accept::REQUEST_FILE);
            return Err(format!(
                "no client took the request within {} s: is mirage-ntp running with --run-dir {}?",
                ACCEPT_WAIT.as_secs(),
                run_dir.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The actuator's answer, as the client publishes it.
    let deadline = std::time::Instant::now() + ACCEPT_WAIT;
    while std::time::Instant::now() < deadline {
        let said = mirage_sdk::service::status::read(&run_dir)
            .ok()
            .and_then(|v| v["clock"]["last_acceptance"].as_str().map(str::to_owned));
        match said {
            Some(s) if s.contains("recorded") => return Ok(format!("accepted {shown}: {s}")),
            Some(s) if s.contains("refused") => return Err(format!("{shown}: {s}")),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    Ok(format!(
        "the client took the request ({shown}); its answer is not in status.json yet"
    ))
}

/// `status` without `--json`: the state, the estimate, one line a source.
fn status_summary(v: &serde_json::Value, out: &mut StatusText) {
    out.line("state", &text_of(&v["state"]));
    out.line("synced", &text_of(&v["synchronized"]));
    out.line(
        "offset",
        &format!("{} ms (local minus reference)", text_of(&v["offset_ms"])),
    );
    out.line("frequency", &format!("{} ppm", text_of(&v["frequency_ppm"])));
    out.line("stratum", &text_of(&v["stratum"]));
    out.line("leap", &text_of(&v["leap"]));
    if let Some(sources) = v["sources"].as_array() {
        for s in sources {
            out.line(
                "source",
                &format!(
                    "{} {} offset {} ms delay {} ms jitter {} ms stratum {} reach {} poll {} s",
                    text_of(&s["address"]),
                    text_of(&s["state"]),
                    text_of(&s["offset_ms"]),
                    text_of(&s["delay_ms"]),
                    text_of(&s["jitter_ms"]),
                    text_of(&s["stratum"]),
                    text_of(&s["reach"]),
                    text_of(&s["poll_s"]),
                ),
            );
        }
    }
    out.line("clock", &format!("{}", v["clock"]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_addresses_with_an_optional_port() {
        assert_eq!(
            parse_server("192.0.2.1").unwrap(),
            "192.0.2.1:123".parse().unwrap()
        );
        assert_eq!(parse_server("192.0.2.1:1123").unwrap().port(), 1123);
        assert_eq!(
            parse_server("2001:db8::1").unwrap(),
            "[2001:db8::1]:123".parse().unwrap()
        );
        assert_eq!(parse_server("[2001:db8::1]:5").unwrap().port(), 5);
        let e = parse_server("pool.ntp.org").unwrap_err();
        assert!(e.contains("host names are not resolved yet"), "{e}");
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "mirage-ntp",
            "run",
            "--server",
            "192.0.2.1",
            "--server",
            "[2001:db8::1]:123",
            "--observe",
            "--run-dir",
            "/tmp/r",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else { panic!() };
        assert_eq!(args.servers.len(), 2);
        assert!(args.observe);
        assert!(Cli::try_parse_from(["mirage-ntp", "run", "--server", "ntp.example"]).is_err());
        assert!(Cli::try_parse_from(["mirage-ntp", "status", "--json"]).is_ok());
        let cli =
            Cli::try_parse_from(["mirage-ntp", "accept-step", "--max-s", "0.05", "--run-dir", "/r"]).unwrap();
        let Command::AcceptStep(a) = cli.command else {
            panic!()
        };
        assert_eq!((a.max_s, a.valid_s), (Some(0.05), 600));
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn accept_step_without_a_client_says_so_and_leaves_no_request() {
        let dir = std::env::temp_dir().join(format!("mirage-ntp-accept-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = |max_s| AcceptArgs {
            run_dir: Some(dir.clone()),
            max_s,
            valid_s: 600,
        };
        // No --max-s and no status: nothing to size the acceptance by.
        let e = accept_step(&args(None)).unwrap_err();
        assert!(e.contains("is the client running"), "{e}");
        // A status that holds nothing.
        std::fs::write(
            dir.join("status.json"),
            r#"{"state":"synchronized","held":false,"clock":{}}"#,
        )
        .unwrap();
        let e = accept_step(&args(None)).unwrap_err();
        assert!(e.contains("no held step") && e.contains("synchronized"), "{e}");
        let e = accept_step(&args(Some(0.0))).unwrap_err();
        assert!(e.contains("--max-s"), "{e}");
        // Nobody takes the request: it is removed again.
        let e = accept_step(&args(Some(1.0))).unwrap_err();
        assert!(e.contains("no client took the request"), "{e}");
        assert!(!dir.join(mirage_ntp::accept::REQUEST_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
