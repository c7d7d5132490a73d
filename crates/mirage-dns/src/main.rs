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

/// dlmalloc keeps freed memory for reuse; musl's allocator gives an emptied
/// group of slots back to the kernel at once, which on the query path
/// cost an mmap and a munmap per batch in each role (docs/architecture.md).
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
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
/// A link-local IPv6 address needs its interface (`fe80::1%eth0`,
/// `[fe80::1%eth0]:53`, or the index, `fe80::1%2`): the name is resolved
/// here, at start, to the scope id the upstream sockets connect with.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let a = match split_scope(s) {
        Some((addr, port, scope)) => {
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("{s:?}: only an IPv6 address takes an interface (%{scope})"))?;
            let port = match port {
                Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
                None => dns_engine::DNS_PORT,
            };
            let index = scope_index(scope).map_err(|e| format!("{s:?}: {e}"))?;
            SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, index))
        }
        None => parse_addr(s)?,
    };
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(format!("{s:?} is not an address a query can be sent to"));
    }
    if let SocketAddr::V6(v6) = a
        && v6.ip().is_unicast_link_local()
        && v6.scope_id() == 0
    {
        return Err(format!(
            "{s:?} is a link-local address: give its interface too, e.g. {}%eth0",
            v6.ip()
        ));
    }
    Ok(a)
}

/// `ADDR%SCOPE` or `[ADDR%SCOPE]:PORT`: the address, the port, the scope.
fn split_scope(s: &str) -> Option<(&str, Option<&str>, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let (addr, scope) = inside.split_once('%')?;
        let port = after.strip_prefix(':');
        return Some((addr, port, scope));
    }
    let (addr, scope) = s.split_once('%')?;
    Some((addr, None, scope))
}

/// The interfaces named in upstreams, by index, for status and the
/// uplink resolv.conf (which show `fe80::1%eth0`, not the index).
static SCOPE_NAMES: std::sync::Mutex<std::collections::BTreeMap<u32, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// An interface's index: a number as it is, a name looked up (netlink).
fn scope_index(scope: &str) -> Result<u32, String> {
    if let Ok(index) = scope.parse::<u32>() {
        if index == 0 {
            return Err("scope id 0 names no interface".into());
        }
        return Ok(index);
    }
    let link = mirage_sdk::netlink::Rtnl::open()
        .and_then(|mut r| r.link_by_name(scope))
        .map_err(|e| format!("no interface {scope:?} ({e})"))?;
    SCOPE_NAMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(link.index, link.name);
    Ok(link.index)
}

/// An upstream as status, logs and resolv.conf show it: a scope by the
/// interface's name when it was given by name.
pub fn upstream_text(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V6(v6) if v6.scope_id() != 0 => {
            let names = SCOPE_NAMES.lock().unwrap_or_else(|e| e.into_inner());
            let scope = names
                .get(&v6.scope_id())
                .cloned()
                .unwrap_or_else(|| v6.scope_id().to_string());
            format!("[{}%{scope}]:{}", v6.ip(), v6.port())
        }
        _ => a.to_string(),
    }
}

/// The address alone, as a resolv.conf `nameserver` line takes it.
pub fn nameserver_text(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V6(v6) if v6.scope_id() != 0 => {
            let text = upstream_text(a);
            // "[ip%scope]:port" without the brackets and port.
            text[1..text.rfind(']').unwrap_or(text.len())].to_string()
        }
        _ => a.ip().to_string(),
    }
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
    for u in v["upstream_state"].as_array().into_iter().flatten() {
        let rtt = match u["rtt_ms"].as_f64() {
            Some(ms) => format!("{ms:.1} ms"),
            None => "not measured".into(),
        };
        let preferred = if u["preferred"] == true { ", preferred" } else { "" };
        out.line(
            &format!("  {}", text_of(&u["upstream"])),
            &format!(
                "{}, {rtt}{preferred}; {} answers, {} failures",
                text_of(&u["state"]),
                text_of(&u["answers"]),
                text_of(&u["failures"]),
            ),
        );
    }
    match v["sandbox_reason"].as_str() {
        Some(why) if !why.is_empty() => out.line("sandbox", &format!("{} ({why})", text_of(&v["sandbox"]))),
        _ => out.line("sandbox", &text_of(&v["sandbox"])),
    }
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
            "{} answers, {} octets; hit rate {}; misses {} negative hits {} stale {} local {} unusable {}",
            text_of(&e["cache_entries"]),
            text_of(&e["cache_bytes"]),
            match e["cache_hit_rate"].as_f64() {
                Some(r) => format!("{:.1}%", r * 100.0),
                None => "-".into(),
            },
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
        // Link-local: with an interface (a name resolved, or an index).
        let lo = parse_upstream("fe80::1%lo").unwrap();
        assert_eq!(lo, "[fe80::1%1]:53".parse().unwrap());
        match lo {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 1),
            _ => panic!("{lo}"),
        }
        assert_eq!(upstream_text(&lo), "[fe80::1%lo]:53");
        assert_eq!(nameserver_text(&lo), "fe80::1%lo");
        let with_port = parse_upstream("[fe80::1%lo]:5353").unwrap();
        assert_eq!((with_port.port(), with_port.ip()), (5353, lo.ip()));
        assert_eq!(upstream_text(&with_port), "[fe80::1%lo]:5353");
        assert_eq!(
            parse_upstream("fe80::2%7").unwrap(),
            "[fe80::2%7]:53".parse().unwrap()
        );
        assert_eq!(
            nameserver_text(&parse_upstream("fe80::2%7").unwrap()),
            "fe80::2%7"
        );
        assert_eq!(
            nameserver_text(&"[2001:db8::1]:53".parse().unwrap()),
            "2001:db8::1"
        );
        let no_scope = parse_upstream("fe80::1").unwrap_err();
        assert!(
            no_scope.contains("link-local") && no_scope.contains("fe80::1%eth0"),
            "{no_scope}"
        );
        assert!(parse_upstream("[fe80::1]:53").unwrap_err().contains("link-local"));
        let unknown = parse_upstream("fe80::1%nosuch0").unwrap_err();
        assert!(unknown.contains("no interface \"nosuch0\""), "{unknown}");
        assert!(
            parse_upstream("192.0.2.1%lo")
                .unwrap_err()
                .contains("only an IPv6")
        );
        assert!(parse_upstream("fe80::1%0").is_err());
        assert!(parse_upstream("[fe80::1%lo]:x").unwrap_err().contains("bad port"));
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
