//! mirage-dhcp: a privilege-separated DHCPv4 client in one static binary.
//!
//! `run` starts the supervisor, which re-executes this binary as three
//! roles (hidden subcommands): `network` (packet socket, no capabilities),
//! `engine` (parses every untrusted byte, holds nothing) and `actuator`
//! (CAP_NET_ADMIN only, applies checked intents). See docs/security.md.

mod config;
mod roles;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::{Config, DEFAULT_CONFIG, DEFAULT_RUN_DIR, Overrides, SandboxKind};

#[derive(Parser, Debug)]
#[command(name = "mirage-dhcp", version, about = "Privilege-separated DHCPv4 client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Get a lease on an interface and keep it (runs until SIGTERM/SIGINT).
    Run(RunArgs),
    /// Print the status a running client published (status.json).
    Status {
        /// Runtime directory the client publishes to.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Print the raw JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Internal: a role started by the supervisor.
    #[command(hide = true)]
    Role(roles::RoleArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Interface to configure (overrides `interface` in the config file).
    #[arg(short, long)]
    interface: Option<String>,
    /// Configuration file (TOML). Absent default file is fine; an explicit one must exist.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Persistent state directory (lease, DUID) [default: /var/lib/mirage/dhcp].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Runtime directory (status.json, metrics.prom) [default: /run/mirage/dhcp].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// resolv.conf to write; an empty value disables it [default: /etc/resolv.conf].
    // OsString: clap's PathBuf parser refuses the empty value that means "off".
    #[arg(long, value_parser = clap::builder::OsStringValueParser::new())]
    resolv_conf: Option<std::ffi::OsString>,
    /// Sandbox for the engine role [default: seccomp].
    #[arg(long, value_enum)]
    sandbox: Option<SandboxKind>,
    /// Exit 0 once the lease is applied (the address stays), non-zero on timeout.
    #[arg(long)]
    oneshot: bool,
    /// Seconds before --oneshot gives up.
    // Bounded: the deadline is now + timeout, and std's Instant panics on overflow.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(..=u64::from(u32::MAX)))]
    timeout: u64,
    /// Skip RFC 5227 address conflict detection.
    #[arg(long)]
    no_acd: bool,
    /// Send DHCPRELEASE and remove the address on SIGTERM/SIGINT.
    #[arg(long)]
    release_on_stop: bool,
    /// First DHCP retransmission timeout in milliseconds (RFC 2131: 4000).
    #[arg(long)]
    first_retransmit_ms: Option<u32>,
    /// Shortest lease used, in seconds (4..=3600); shorter ones count as this
    /// long [default: 20].
    #[arg(long)]
    min_lease_secs: Option<u32>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            mirage_sdk::log::init(args.log_level, "[supervisor] ");
            let explicit = args.config.is_some();
            let path = args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
            let overrides = Overrides {
                interface: args.interface,
                state_dir: args.state_dir,
                run_dir: args.run_dir,
                resolv_conf: args.resolv_conf.map(PathBuf::from),
                sandbox: args.sandbox,
                no_acd: args.no_acd,
                release_on_stop: args.release_on_stop,
                first_retransmit_ms: args.first_retransmit_ms,
                min_lease_secs: args.min_lease_secs,
            };
            let euid = rustix::process::geteuid().as_raw();
            let egid = rustix::process::getegid().as_raw();
            let config = match Config::load(&path, explicit, overrides)
                .and_then(|mut c| c.fit_ids_to_process(euid, egid).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("mirage-dhcp: {e}");
                    return ExitCode::from(2);
                }
            };
            for w in config.id_warnings(euid == 0) {
                log::warn!("{w}");
            }
            let oneshot = args.oneshot.then(|| std::time::Duration::from_secs(args.timeout));
            match supervisor::run(config, args.log_level, oneshot) {
                Ok(code) => code,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { run_dir, json } => status(&run_dir, json),
        Command::Role(args) => roles::main(args),
    }
}

/// Largest status.json `status` reads (the actuator writes at most 16 KiB).
const MAX_STATUS: usize = 64 * 1024;

fn status(run_dir: &std::path::Path, raw: bool) -> ExitCode {
    let path = run_dir.join("status.json");
    // The file is written by a role's uid: no link is followed, a FIFO
    // neither blocks nor is read, and the size is bounded.
    let bytes = match mirage_sdk::files::open_dir_root_links_only(run_dir, None)
        .and_then(|(dir, _)| mirage_sdk::files::read_bounded(&dir, "status.json", MAX_STATUS))
    {
        Ok(Some(b)) => b,
        Ok(None) => {
            eprintln!(
                "mirage-dhcp: {} does not exist (is the client running?)",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!(
                "mirage-dhcp: cannot read {}: {} (is the client running?)",
                path.display(),
                printable(&e.to_string())
            );
            return ExitCode::FAILURE;
        }
    };
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mirage-dhcp: {} is not valid JSON: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if raw {
        // Valid JSON still, with every character a terminal could act on
        // written as a \u escape.
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        println!("{}", json_printable(&text));
        return ExitCode::SUCCESS;
    }
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => printable(s),
        serde_json::Value::Null => "?".into(),
        other => printable(&other.to_string()),
    };
    println!("interface  {}", show(&v["interface"]));
    println!("state      {}", show(&v["state"]));
    println!("sandbox    {}", show(&v["sandbox"]));
    let l = &v["lease"];
    if l.is_null() {
        println!("lease      none");
    } else {
        println!("address    {}/{}", show(&l["address"]), show(&l["prefix_len"]));
        println!("server     {}", show(&l["server_id"]));
        for r in l["routes"].as_array().into_iter().flatten() {
            println!(
                "route      {} via {}",
                show(&r["destination"]),
                show(&r["gateway"])
            );
        }
        let list = |k: &str| {
            l[k].as_array()
                .map(|a| a.iter().map(show).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        println!("dns        {}", list("dns_servers"));
        println!("search     {}", list("search"));
        println!("ntp        {}", list("ntp_servers"));
        if !l["mtu"].is_null() {
            println!("mtu        {}", show(&l["mtu"]));
        }
        println!(
            "lease      {} s left (renew in {} s, rebind in {} s)",
            show(&l["remaining_secs"]),
            show(&l["renew_in_secs"]),
            show(&l["rebind_in_secs"])
        );
    }
    println!("restarts   {}", show(&v["engine_restarts"]));
    println!("counters   {}", show(&v["counters"]));
    ExitCode::SUCCESS
}

/// Whether a terminal shows `c` as itself: not a control character (C0,
/// DEL, C1 such as CSI), not a format character (bidi overrides...), not a
/// line or paragraph separator. `escape_debug` knows Unicode's printable set.
fn shows_as_itself(c: char) -> bool {
    c == ' ' || (!c.is_control() && c.escape_debug().next() != Some('\\')) || matches!(c, '\\' | '"' | '\'')
}

/// `s` with everything that is not printable written as `\u{..}`, so a
/// published string can neither drive the terminal nor forge a line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c != '\\' && shows_as_itself(c) {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

/// JSON text with every non-printable character as a JSON `\uXXXX` escape
/// (UTF-16, surrogate pairs beyond the BMP). Outside strings JSON text is
/// printable ASCII, so the result is the same JSON value.
fn json_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || shows_as_itself(c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_resolv_conf_flag_parses_and_means_off() {
        let cli = Cli::try_parse_from(["mirage-dhcp", "run", "-i", "eth0", "--resolv-conf", ""]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.resolv_conf, Some(std::ffi::OsString::new()));
        let o = Overrides {
            interface: args.interface,
            resolv_conf: args.resolv_conf.map(PathBuf::from),
            ..Default::default()
        };
        let c = Config::resolve(std::path::Path::new("none"), Default::default(), o).unwrap();
        assert_eq!(c.resolv_conf, None);
    }

    #[test]
    fn an_oversized_oneshot_timeout_is_an_error_not_a_panic() {
        let parse =
            |t: &str| Cli::try_parse_from(["mirage-dhcp", "run", "-i", "eth0", "--oneshot", "--timeout", t]);
        assert!(parse(&u64::MAX.to_string()).is_err());
        let Command::Run(args) = parse(&u32::MAX.to_string()).unwrap().command else {
            panic!("not run")
        };
        // The largest accepted value still makes a deadline.
        assert!(
            std::time::Instant::now()
                .checked_add(std::time::Duration::from_secs(args.timeout))
                .is_some()
        );
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn published_strings_cannot_drive_the_terminal() {
        for (raw, want) in [
            ("eth0", "eth0"),
            ("b\u{e4}r 1", "b\u{e4}r 1"),
            ("\x1b[2J", "\\u{1b}[2J"),
            ("a\nstate      bound", "a\\u{a}state      bound"),
            ("\r\t\x7f", "\\u{d}\\u{9}\\u{7f}"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("\u{202e}x", "\\u{202e}x"),
            ("\u{2028}", "\\u{2028}"),
            ("back\\slash \"q\"", "back\\u{5c}slash \"q\""),
        ] {
            assert_eq!(printable(raw), want, "{raw:?}");
        }
        let v = serde_json::json!({"s": "\u{1b}]0;x\u{7}\u{9b}\u{202e}\u{1F600}"});
        let text = json_printable(&serde_json::to_string_pretty(&v).unwrap());
        assert!(
            text.chars()
                .all(|c| c == '\n' || (' '..='~').contains(&c) || c == '\u{1F600}'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
