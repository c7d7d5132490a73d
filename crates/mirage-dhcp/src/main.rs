//! mirage-dhcp: a privilege-separated DHCPv4 client in one static binary.
//!
//! `run` starts the supervisor, which re-executes this binary as three
//! roles (`role NAME`, see `mirage_sdk::role`): `network` (packet socket, no capabilities),
//! `engine` (parses every untrusted byte, holds nothing) and `actuator`
//! (CAP_NET_ADMIN only, applies checked intents). See docs/security.md.

mod config;
mod roles;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mirage_sdk::service::status::{StatusText, list_of, text_of};
use mirage_sdk::service::{CommonArgs, StatusArgs};

use config::{Config, Dhcp, FileConfig, Overrides};

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
    Status(StatusArgs<Dhcp>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Interface to configure (overrides `interface` in the config file).
    #[arg(short, long)]
    interface: Option<String>,
    // --config, --state-dir, --run-dir, --sandbox, --log-level.
    #[command(flatten)]
    common: CommonArgs<Dhcp>,
    /// resolv.conf to write; an empty value disables it [default: /etc/resolv.conf].
    // OsString: clap's PathBuf parser refuses the empty value that means "off".
    #[arg(long, value_parser = clap::builder::OsStringValueParser::new())]
    resolv_conf: Option<std::ffi::OsString>,
    /// The one nameserver resolv.conf names (a local stub, e.g. mirage-dns
    /// on 127.0.0.53) instead of the lease's DNS servers, which then go to
    /// the stub through servers.json only (docs/operators.md).
    #[arg(long, value_name = "ADDR")]
    resolv_conf_nameserver: Option<String>,
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
}

impl RunArgs {
    /// What the command line sets, to lay over the config file.
    fn overrides(&self) -> Overrides {
        Overrides {
            interface: self.interface.clone(),
            state_dir: self.common.state_dir.clone(),
            run_dir: self.common.run_dir.clone(),
            resolv_conf: self.resolv_conf.clone().map(PathBuf::from),
            resolv_conf_nameserver: self.resolv_conf_nameserver.clone(),
            sandbox: self.common.sandbox,
            no_acd: self.no_acd,
            release_on_stop: self.release_on_stop,
            first_retransmit_ms: self.first_retransmit_ms,
            min_lease_secs: self.min_lease_secs,
        }
    }

    /// The configuration in force: the file (errors name file, line and
    /// key) under the command line, the role ids fitted to this process.
    fn config(&self, euid: u32, egid: u32) -> Result<Config, String> {
        let (path, file) = self
            .common
            .load_config::<FileConfig>()
            .map_err(|e| e.to_string())?;
        let mut c = Config::resolve(&path, file, self.overrides())?;
        c.fit_ids_to_process(euid, egid)?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    // A role (`role NAME`, started by the supervisor) parses no command
    // line: its hello says everything, and its start-up stays short.
    if let Some(code) = mirage_sdk::role::main_if_role(roles::ENTRIES) {
        return code;
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let level = args.common.log_level;
            mirage_sdk::log::init(level, "[supervisor] ");
            let euid = rustix::process::geteuid().as_raw();
            let egid = rustix::process::getegid().as_raw();
            let config = match args.config(euid, egid) {
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
            mirage_sdk::service::exit_code(supervisor::run(config, level, oneshot))
        }
        Command::Status(args) => args.run(status_summary),
    }
}

/// `mirage-dhcp status` without `--json`: the client's fields as lines.
fn status_summary(v: &serde_json::Value, out: &mut StatusText) {
    out.line("interface", &text_of(&v["interface"]));
    out.line("state", &text_of(&v["state"]));
    match v["sandbox_reason"].as_str() {
        Some(why) if !why.is_empty() => out.line("sandbox", &format!("{} ({why})", text_of(&v["sandbox"]))),
        _ => out.line("sandbox", &text_of(&v["sandbox"])),
    }
    let l = &v["lease"];
    if l.is_null() {
        out.line("lease", "none");
    } else {
        out.line(
            "address",
            &format!("{}/{}", text_of(&l["address"]), text_of(&l["prefix_len"])),
        );
        out.line("server", &text_of(&l["server_id"]));
        for r in l["routes"].as_array().into_iter().flatten() {
            out.line(
                "route",
                &format!("{} via {}", text_of(&r["destination"]), text_of(&r["gateway"])),
            );
        }
        out.line("dns", &list_of(&l["dns_servers"]));
        out.line("search", &list_of(&l["search"]));
        out.line("ntp", &list_of(&l["ntp_servers"]));
        if !l["mtu"].is_null() {
            out.line("mtu", &text_of(&l["mtu"]));
        }
        out.line(
            "lease",
            &format!(
                "{} s left (renew in {} s, rebind in {} s)",
                text_of(&l["remaining_secs"]),
                text_of(&l["renew_in_secs"]),
                text_of(&l["rebind_in_secs"])
            ),
        );
    }
    out.line("restarts", &text_of(&v["engine_restarts"]));
    out.line("counters", &text_of(&v["counters"]));
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
    fn the_resolv_conf_nameserver_flag_reaches_the_config() {
        let cli = Cli::try_parse_from([
            "mirage-dhcp",
            "run",
            "-i",
            "eth0",
            "--resolv-conf-nameserver",
            "127.0.0.53",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = Config::resolve(std::path::Path::new("none"), Default::default(), args.overrides()).unwrap();
        assert_eq!(c.resolv_conf_nameserver, Some("127.0.0.53".parse().unwrap()));
        let cli = Cli::try_parse_from([
            "mirage-dhcp",
            "run",
            "-i",
            "eth0",
            "--resolv-conf-nameserver",
            "x",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let e =
            Config::resolve(std::path::Path::new("none"), Default::default(), args.overrides()).unwrap_err();
        assert!(e.contains("resolv_conf_nameserver"), "{e}");
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
    fn flags_win_over_the_file_and_the_file_over_the_convention() {
        let dir = std::env::temp_dir().join(format!("mirage-dhcp-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(
            &file,
            "interface = \"eth1\"\nstate_dir = \"/srv/state\"\nrun_dir = \"/srv/run\"\nsandbox = \"none\"\n",
        )
        .unwrap();
        let config = |extra: &[&str]| {
            let mut argv = vec!["mirage-dhcp", "run", "-c", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not run")
            };
            args.config(0, 0)
        };
        let c = config(&[]).unwrap();
        assert_eq!(
            (
                c.interface.as_str(),
                c.state_dir.to_str(),
                c.run_dir.to_str(),
                c.sandbox
            ),
            (
                "eth1",
                Some("/srv/state"),
                Some("/srv/run"),
                config::SandboxKind::None
            )
        );
        let c = config(&["-i", "eth2", "--state-dir", "/s", "--sandbox", "seccomp"]).unwrap();
        assert_eq!(
            (
                c.interface.as_str(),
                c.state_dir.to_str(),
                c.run_dir.to_str(),
                c.sandbox
            ),
            ("eth2", Some("/s"), Some("/srv/run"), config::SandboxKind::Seccomp)
        );
        // A bad key: the file and line, before anything else.
        std::fs::write(&file, "interface = \"eth1\"\n\nstate_dri = \"/x\"\n").unwrap();
        let e = config(&[]).unwrap_err();
        assert!(e.starts_with(&format!("{}:3:", file.display())), "{e}");
        assert!(e.contains("state_dri"), "{e}");
        // An explicit file must exist.
        std::fs::remove_file(&file).unwrap();
        assert!(config(&["-i", "eth0"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_status_summary_lists_the_lease() {
        let v = serde_json::json!({
            "interface": "eth0", "state": "bound", "sandbox": "seccomp",
            "lease": {
                "address": "10.0.0.5", "prefix_len": 24, "server_id": "10.0.0.1",
                "routes": [
                    {"destination": "0.0.0.0/0", "gateway": "10.0.0.1"},
                    {"destination": "10.1.0.0/16", "gateway": "10.0.0.2"},
                ],
                "dns_servers": ["10.0.0.1", "10.0.0.2"], "ntp_servers": [],
                "search": ["a.example.org", "example.org"], "mtu": 1400,
                "remaining_secs": 3540, "renew_in_secs": 1740, "rebind_in_secs": 3090,
            },
            "engine_restarts": 1,
            "counters": {"frames_received": 3, "acks": 1},
        });
        let text = mirage_sdk::service::status::render(&v, false, status_summary);
        assert_eq!(
            text,
            "interface  eth0\n\
             state      bound\n\
             sandbox    seccomp\n\
             address    10.0.0.5/24\n\
             server     10.0.0.1\n\
             route      0.0.0.0/0 via 10.0.0.1\n\
             route      10.1.0.0/16 via 10.0.0.2\n\
             dns        10.0.0.1 10.0.0.2\n\
             search     a.example.org example.org\n\
             ntp        \n\
             mtu        1400\n\
             lease      3540 s left (renew in 1740 s, rebind in 3090 s)\n\
             restarts   1\n\
             counters   {\"acks\":1,\"frames_received\":3}\n"
        );
        let none = serde_json::json!({"state": "selecting", "lease": null});
        let text = mirage_sdk::service::status::render(&none, false, status_summary);
        assert_eq!(
            text,
            "interface  ?\nstate      selecting\nsandbox    ?\nlease      none\nrestarts   ?\ncounters   ?\n"
        );
    }
}
