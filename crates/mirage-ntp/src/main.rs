//! mirage-ntp: a privilege-separated NTP client (docs/ntp.md, "The
//! service"). `run` is the supervisor: it opens one connected UDP socket
//! per server (kernel receive timestamps on) and, with host names or
//! pools, sockets to the resolvers of resolv.conf and one unconnected
//! socket per family for the sources the engine resolves, the state and runtime
//! directories, starts three sandboxed roles by re-executing this binary,
//! routes between them and publishes status.json and metrics.prom. `status`
//! prints what it published.
//!
//! ```text
//!   network --Received/Sent--> engine --Send--> network --> servers
//!   engine --Resolve--> network --> resolvers --> network --Resolved--> engine
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
    /// An NTP server: an IP address or a host name, with a port if not
    /// 123 (192.0.2.1, 192.0.2.1:1123, 2001:db8::1, [2001:db8::1]:1123,
    /// ntp1.example.net, ntp1.example.net:1123). A name is resolved by the
    /// engine through the resolvers of resolv.conf; its first address is
    /// used. Repeat for more servers (at most 16). Replaces `servers` in
    /// the config file.
    #[arg(long = "server", value_name = "HOST[:PORT]", value_parser = parse_server)]
    servers: Vec<ServerSpec>,
    /// A pool (pool.ntp.org, or NAME:PORT): up to 4 of its addresses
    /// become sources, and it is resolved again when they fail. Repeat
    /// for more (names, with --server's, at most 8). Replaces `pools` in
    /// the config file.
    #[arg(long = "pool", value_name = "NAME[:PORT]", value_parser = parse_pool)]
    pools: Vec<(String, u16)>,
    /// Measure and publish, never touch the clock: the actuator runs
    /// without any capability and applies nothing.
    #[arg(long)]
    observe: bool,
    // --config, --state-dir, --run-dir, --sandbox, --log-level.
    #[command(flatten)]
    common: CommonArgs<Ntp>,
}

/// A server as the command line and the config file give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSpec {
    Address(SocketAddr),
    /// A host name and the NTP port.
    Name(String, u16),
}

/// A server: an address with an optional port, or a host name with one.
pub fn parse_server(s: &str) -> Result<ServerSpec, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ServerSpec::Address(addr));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ServerSpec::Address(SocketAddr::new(ip, ntp_engine::NTP_PORT)));
    }
    parse_name(s)
        .map(|(name, port)| ServerSpec::Name(name, port))
        .map_err(|e| format!("{s:?} is neither an IP address with an optional port nor {e}"))
}

/// A pool: a host name with an optional port.
pub fn parse_pool(s: &str) -> Result<(String, u16), String> {
    parse_name(s).map_err(|e| format!("{s:?} is not {e}"))
}

/// `NAME[:PORT]`: letters, digits, `-` and `_` in dot-separated labels
/// (RFC 1123 host names, and `_` as some zones use), not all digits.
fn parse_name(s: &str) -> Result<(String, u16), String> {
    const WHAT: &str = "a host name with an optional port";
    let (name, port) = match s.rsplit_once(':') {
        Some((name, port)) => (name, port.parse::<u16>().map_err(|_| WHAT.to_string())?),
        None => (s, ntp_engine::NTP_PORT),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let has_letter = name.bytes().any(|b| b.is_ascii_alphabetic());
    if port == 0 || !chars_ok || !has_letter || dns_wire::Name::from_ascii(name).is_err() {
        return Err(WHAT.to_string());
    }
    Ok((name.to_string(), port))
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

/// `status` without `--json`: the state, the estimate, one line a source,
/// one a host name or pool.
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
    if let Some(names) = v["names"].as_array() {
        for n in names {
            out.line(
                if n["pool"] == true { "pool" } else { "name" },
                &format!(
                    "{} sources {} lookups {} failures {}{}",
                    text_of(&n["name"]),
                    text_of(&n["sources"]),
                    text_of(&n["lookups"]),
                    text_of(&n["failures"]),
                    if n["resolving"] == true {
                        " (resolving)"
                    } else {
                        ""
                    },
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
    fn servers_are_addresses_or_names_with_an_optional_port() {
        let addr = |s: &str| ServerSpec::Address(s.parse().unwrap());
        assert_eq!(parse_server("192.0.2.1").unwrap(), addr("192.0.2.1:123"));
        assert_eq!(parse_server("192.0.2.1:1123").unwrap(), addr("192.0.2.1:1123"));
        assert_eq!(parse_server("2001:db8::1").unwrap(), addr("[2001:db8::1]:123"));
        assert_eq!(parse_server("[2001:db8::1]:5").unwrap(), addr("[2001:db8::1]:5"));
        assert_eq!(
            parse_server("ntp1.example.net").unwrap(),
            ServerSpec::Name("ntp1.example.net".into(), 123)
        );
        assert_eq!(
            parse_server("ntp1.example.net.:1123").unwrap(),
            ServerSpec::Name("ntp1.example.net".into(), 1123)
        );
        for bad in [
            "2001:db8::zz",
            "192.0.2",
            "a b",
            "ntp.example:0",
            "ntp.example:x",
            "a..b",
            "",
        ] {
            assert!(parse_server(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_pool("pool.ntp.org").unwrap(), ("pool.ntp.org".into(), 123));
        assert!(parse_pool("192.0.2.1").is_err());
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
        let cli = Cli::try_parse_from([
            "mirage-ntp",
            "run",
            "--server",
            "ntp.example",
            "--pool",
            "pool.ntp.org",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else { panic!() };
        assert_eq!(args.servers, [ServerSpec::Name("ntp.example".into(), 123)]);
        assert_eq!(args.pools, [("pool.ntp.org".to_string(), 123)]);
        assert!(Cli::try_parse_from(["mirage-ntp", "run", "--server", "ntp example"]).is_err());
        assert!(Cli::try_parse_from(["mirage-ntp", "status", "--json"]).is_ok());
    }
}
