//! mirage-dns: a privilege-separated caching DNS forwarder for the host
//! (docs/dns.md). `run` is the supervisor: it binds the listeners (UDP and
//! TCP, 127.0.0.53:53 by default) while it may, starts two sandboxed roles
//! by re-executing this binary, links them with a direct channel, and
//! publishes status.json and metrics.prom. `status` prints what it
//! published.
//!
//! ```text
//!   clients <-> network role <-- batches, direct channel --> engine
//!               |  (listeners, one socket per upstream query)    |
//!               +--> upstreams                                   +--> supervisor: status, refusals
//! ```

mod network;
mod supervisor;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirage_dns::Dns;
use mirage_sdk::service::status::{StatusText, text_of};
use mirage_sdk::service::{CommonArgs, StatusArgs};

#[derive(Parser, Debug)]
#[command(
    name = "mirage-dns",
    version,
    about = "Privilege-separated DNS forwarder for the host: sandboxed engine, a network role that answers only clients that asked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Forward queries to the upstreams until SIGTERM/SIGINT (nothing is
    /// kept in the state directory yet).
    Run(RunArgs),
    /// Print the status a running forwarder published (status.json).
    Status(StatusArgs<Dns>),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Where to answer, UDP and TCP: an IP address with an optional port
    /// (53 if none). Repeat for more. Replaces `listen` in the config file
    /// [default: 127.0.0.53:53].
    #[arg(long = "listen", value_name = "ADDR[:PORT]", value_parser = parse_listen)]
    listen: Vec<SocketAddr>,
    /// An upstream server: an IP address with an optional port (53 if
    /// none), asked in the order given. Repeat for more (at most 8). Host
    /// names are not resolved. Replaces `upstreams` in the config file.
    #[arg(long = "upstream", value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    upstreams: Vec<SocketAddr>,
    // --config, --state-dir, --run-dir, --sandbox, --log-level.
    #[command(flatten)]
    common: CommonArgs<Dns>,
}

/// An address as the command line and the config file give it: with a
/// port, or without (53).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, dns_engine::DNS_PORT))
        .map_err(|_| {
            format!("{s:?} is not an IP address with an optional port (host names are not resolved)")
        })
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    parse_addr(s)
}

/// An upstream: [`parse_addr`], and not port 0 nor an unspecified address.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let a = parse_addr(s)?;
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(format!("{s:?} is not an address a query can be sent to"));
    }
    Ok(a)
}

fn main() -> ExitCode {
    // A role (`role NAME`, started by the supervisor) parses no command
    // line: its hello says everything.
    if let Some(code) = mirage_sdk::role::main_if_role(&[
        ("engine", supervisor::engine_role),
        ("network", network::network_role),
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

/// `status` without `--json`.
fn status_summary(v: &serde_json::Value, out: &mut StatusText) {
    let list = |key: &str| -> String {
        v[key]
            .as_array()
            .map(|a| a.iter().map(text_of).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    out.line("listen", &list("listen"));
    out.line("upstreams", &list("upstreams"));
    out.line("sandbox", &text_of(&v["sandbox"]));
    let e = &v["engine"];
    out.line(
        "queries",
        &format!(
            "{} answered {} from cache {} servfail {} formerr {} notimp {} merged {} pending {}",
            text_of(&e["queries"]),
            text_of(&e["answered"]),
            text_of(&e["cache_hits"]),
            text_of(&e["servfail"]),
            text_of(&e["formerr"]),
            text_of(&e["notimp"]),
            text_of(&e["merged"]),
            text_of(&e["pending"]),
        ),
    );
    out.line(
        "upstream",
        &format!(
            "{} queries, {} replies, {} timeouts",
            text_of(&e["upstream_queries"]),
            text_of(&e["upstream_replies"]),
            text_of(&e["upstream_timeouts"]),
        ),
    );
    out.line(
        "cache",
        &format!(
            "{} answers, {} octets; misses {} negative hits {} stale {} local {} unusable {}",
            text_of(&e["cache_entries"]),
            text_of(&e["cache_bytes"]),
            text_of(&e["cache_misses"]),
            text_of(&e["negative_hits"]),
            text_of(&e["stale_answers"]),
            text_of(&e["local_answers"]),
            text_of(&e["unusable"]),
        ),
    );
    let d = &v["network"]["dropped"];
    out.line(
        "dropped",
        &format!(
            "{} not allowed, {} rate-limited",
            text_of(&d["not-allowed"]),
            text_of(&d["rate-limited"])
        ),
    );
    if !v["dhcp"].is_null() {
        out.line(
            "dhcp",
            &format!(
                "{} ({} changes){}",
                text_of(&v["dhcp"]["file"]),
                text_of(&v["dhcp"]["changes"]),
                v["dhcp"]["error"]
                    .as_str()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ),
        );
    }
    out.line("refused", &format!("{}", v["refused"]));
    out.line("outbound_refused", &format!("{}", v["network"]["refused"]));
    out.line("restarts", &text_of(&v["engine_restarts"]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_an_optional_port() {
        assert_eq!(
            parse_addr("127.0.0.53").unwrap(),
            "127.0.0.53:53".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:5353").unwrap().port(), 5353);
        assert_eq!(parse_addr("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(parse_addr("dns.example").unwrap_err().contains("not resolved"));
        assert!(parse_upstream("0.0.0.0").is_err());
        assert!(parse_upstream("192.0.2.1:0").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "mirage-dns",
            "run",
            "--listen",
            "127.0.0.53",
            "--listen",
            "[::1]:5353",
            "--upstream",
            "192.0.2.1",
            "--run-dir",
            "/tmp/r",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else { panic!() };
        assert_eq!(args.listen.len(), 2);
        assert_eq!(args.upstreams, ["192.0.2.1:53".parse::<SocketAddr>().unwrap()]);
        assert!(Cli::try_parse_from(["mirage-dns", "run", "--upstream", "dns.example"]).is_err());
        assert!(Cli::try_parse_from(["mirage-dns", "status", "--json"]).is_ok());
    }
}
