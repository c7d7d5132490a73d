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
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// An NTP server: an IP address, with a port if not 123
    /// (192.0.2.1, 192.0.2.1:1123, 2001:db8::1, [2001:db8::1]:1123).
    /// Repeat for more servers (at most 16). Host names are not resolved
    /// yet. Replaces `servers` in the config file.
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
    }
}

/// `status` without `--json`: the state, the sandbox in force and why, the
/// estimate, one line a source.
fn status_summary(v: &serde_json::Value, out: &mut StatusText) {
    out.line("state", &text_of(&v["state"]));
    match v["sandbox_reason"].as_str() {
        Some(why) if !why.is_empty() => out.line("sandbox", &format!("{} ({why})", text_of(&v["sandbox"]))),
        _ => out.line("sandbox", &text_of(&v["sandbox"])),
    }
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
    }
}
