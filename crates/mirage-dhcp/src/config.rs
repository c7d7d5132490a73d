//! mirage-dhcp configuration: `/etc/mirage/dhcp/config.toml` by the SDK's
//! convention (`mirage_sdk::service`), every key optional, the common ones
//! and some others also reachable from the command line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mirage_ipc::{AcdConfig, EngineConfig, Limits, is_valid_domain_name};
use mirage_sdk::service::cli::layered;
#[cfg(test)]
use mirage_sdk::service::ids::RoleId;
use mirage_sdk::service::{Common, CommonLayer, Service};
use serde::Deserialize;

pub use mirage_sdk::service::SandboxKind;

/// The DHCP client's name in the convention: its paths, flags' help,
/// messages and metrics (`mirage_dhcp_...`).
#[derive(Debug, Clone, Copy)]
pub struct Dhcp;

impl Service for Dhcp {
    const NAME: &'static str = "dhcp";
    const NOUN: &'static str = "client";
}

pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Default uid = gid of each role when the supervisor starts as root: ids
/// of this service alone, so that no other program (not `nobody`, 65534,
/// which unrelated software shares) can signal a role or write its files,
/// and one per role, so that a compromised engine's uid owns nothing.
/// Numeric, because a static binary cannot look names up; from the range
/// systemd leaves unused (65520..=65533, systemd.io/UIDS-GIDS) so that no
/// distribution or user database hands them out.
pub const DEFAULT_NETWORK_ID: u32 = 65520;
pub const DEFAULT_ENGINE_ID: u32 = 65521;
pub const DEFAULT_ACTUATOR_ID: u32 = 65522;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdMode {
    /// RFC 4361 DUID + IAID (default).
    #[default]
    Duid,
    /// Hardware type 1 + MAC, for networks with MAC-keyed reservations.
    Mac,
}

/// The file's shape. Unknown keys are errors.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub interface: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    /// Where resolv.conf is written; `""` disables it.
    pub resolv_conf: Option<PathBuf>,
    /// The one nameserver resolv.conf names (a local stub such as
    /// mirage-dns on 127.0.0.53) instead of the lease's DNS servers, which
    /// then reach the stub through servers.json only.
    pub resolv_conf_nameserver: Option<String>,
    pub sandbox: Option<SandboxKind>,
    /// The KVM device for `sandbox = "kvm"` or `"auto"`.
    pub kvm_device: Option<PathBuf>,
    /// A guest image file to run as the engine instead of the built-in one
    /// (testing; docs/operators.md).
    pub kvm_guest_image: Option<PathBuf>,
    pub client_id: ClientIdMode,
    pub hostname: Option<String>,
    pub vendor_class: Option<String>,
    pub release_on_stop: bool,
    /// Replaced by `[ids]`; kept in the shape only to say so.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Routing table for the lease's routes; absent: the main table.
    pub route_table: Option<u32>,
    pub ids: IdsConfig,
    pub timing: TimingConfig,
    pub acd: AcdConfig,
    pub limits: Limits,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    pub first_retransmit_ms: u32,
    pub max_retransmit_ms: u32,
    pub init_reboot_budget_ms: u32,
    /// Shorter leases are used as this long, T1 / T2 kept at or above half
    /// and 7/8 of it (docs/security.md, "A hostile or misconfigured server").
    pub min_lease_secs: u32,
}

impl Default for TimingConfig {
    fn default() -> Self {
        let d = EngineConfig::new([0; 6], mirage_ipc::ClientIdKind::Mac);
        TimingConfig {
            first_retransmit_ms: d.first_retransmit_ms,
            max_retransmit_ms: d.max_retransmit_ms,
            init_reboot_budget_ms: d.init_reboot_budget_ms,
            min_lease_secs: d.min_lease_secs,
        }
    }
}

mirage_sdk::role_ids! {
    /// `[ids]`: who each role runs as.
    pub struct IdsConfig =>
    /// The ids each role runs as, once [`Config::fit_ids_to_process`] ran.
    pub struct RoleIds {
        network: DEFAULT_NETWORK_ID,
        engine: DEFAULT_ENGINE_ID,
        /// Also owns the state and runtime directories.
        actuator: DEFAULT_ACTUATOR_ID,
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub interface: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub resolv_conf_nameserver: Option<String>,
    pub sandbox: Option<SandboxKind>,
    pub no_acd: bool,
    pub release_on_stop: bool,
    pub first_retransmit_ms: Option<u32>,
    pub min_lease_secs: Option<u32>,
}

/// The configuration in force after file + command line, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interface: String,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// [`FileConfig::resolv_conf_nameserver`], checked.
    pub resolv_conf_nameserver: Option<IpAddr>,
    /// As asked for: `auto` is resolved at start (`mirage_sdk::kvm`).
    pub sandbox: SandboxKind,
    pub kvm_device: PathBuf,
    /// The engine's guest image file instead of the built-in one
    /// ([`mirage_sdk::kvm::GuestImage`]).
    pub kvm_guest_image: Option<PathBuf>,
    pub client_id: ClientIdMode,
    pub hostname: Option<String>,
    pub vendor_class: Option<String>,
    pub release_on_stop: bool,
    pub route_table: Option<u32>,
    /// What `[ids]` said; [`Config::ids`] is what is in force.
    pub ids_config: IdsConfig,
    pub ids: RoleIds,
    pub timing: TimingConfig,
    pub acd: AcdConfig,
    pub limits: Limits,
}

impl Config {
    /// The file's values (read from `path`, named in messages) under the
    /// command line's, validated. Errors name the file and key.
    pub fn resolve(path: &Path, f: FileConfig, o: Overrides) -> Result<Config, String> {
        let bad = |key: &str, why: &str| format!("{}: {key}: {why}", path.display());
        let interface = o
            .interface
            .or(f.interface)
            .ok_or_else(|| "no interface: give --interface or `interface` in the config".to_string())?;
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', '\0', ' ']) {
            return Err(bad("interface", "not a valid interface name"));
        }
        if let Some(h) = &f.hostname
            && (!is_valid_domain_name(h) || h.contains('.'))
        {
            return Err(bad(
                "hostname",
                "must be one DNS label (letters, digits, hyphens)",
            ));
        }
        if let Some(v) = &f.vendor_class
            && (v.is_empty() || v.len() > 255 || !v.is_ascii())
        {
            return Err(bad("vendor_class", "must be 1..=255 ASCII characters"));
        }
        let mut timing = f.timing;
        if let Some(ms) = o.first_retransmit_ms {
            timing.first_retransmit_ms = ms;
        }
        if !(10..=64_000).contains(&timing.first_retransmit_ms) {
            return Err(bad("timing.first_retransmit_ms", "must be 10..=64000"));
        }
        if timing.max_retransmit_ms < timing.first_retransmit_ms || timing.max_retransmit_ms > 600_000 {
            return Err(bad(
                "timing.max_retransmit_ms",
                "must be first_retransmit_ms..=600000",
            ));
        }
        if timing.init_reboot_budget_ms > 60_000 {
            return Err(bad("timing.init_reboot_budget_ms", "must be at most 60000"));
        }
        if let Some(secs) = o.min_lease_secs {
            timing.min_lease_secs = secs;
        }
        // Below 4 s T1 would fall under 2 s; above an hour the floor would
        // override ordinary leases.
        if !(4..=3600).contains(&timing.min_lease_secs) {
            return Err(bad("timing.min_lease_secs", "must be 4..=3600"));
        }
        let mut acd = f.acd;
        if acd.probe_min_ms > acd.probe_max_ms || acd.probe_max_ms > 10_000 || acd.probe_wait_ms > 10_000 {
            return Err(bad(
                "acd",
                "need probe_min_ms <= probe_max_ms <= 10000 and probe_wait_ms <= 10000",
            ));
        }
        if acd.enabled && acd.probe_count == 0 {
            return Err(bad("acd.probe_count", "must be at least 1 when acd is enabled"));
        }
        acd.enabled &= !o.no_acd;
        let limits = f.limits;
        if limits.max_routes == 0 || limits.max_routes > 256 {
            return Err(bad("limits.max_routes", "must be 1..=256"));
        }
        if limits.max_dns_servers == 0 || limits.max_search_domains > 64 {
            return Err(bad(
                "limits",
                "max_dns_servers must be >= 1 and max_search_domains <= 64",
            ));
        }
        if limits.min_route_prefix_len > 32 {
            return Err(bad("limits.min_route_prefix_len", "must be 0..=32"));
        }
        if !(1..=32).contains(&limits.min_subnet_prefix_len) {
            return Err(bad("limits.min_subnet_prefix_len", "must be 1..=32"));
        }
        // 0 means "unspecified" to the kernel and 255 is its local table.
        if matches!(f.route_table, Some(0 | 255)) {
            return Err(bad(
                "route_table",
                "must be 1..=254 or above 255 (0 is unspecified, 255 the kernel's local table)",
            ));
        }
        if f.uid.is_some() || f.gid.is_some() {
            return Err(bad(
                if f.uid.is_some() { "uid" } else { "gid" },
                "replaced by [ids]: one uid/gid per role (network, engine, actuator); \
                 remove uid and gid (see the README, configuration reference)",
            ));
        }
        let ids = RoleIds::resolve(&f.ids).map_err(|(key, why)| bad(&key, why))?;
        let kvm_guest_image = f.kvm_guest_image;
        if kvm_guest_image.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(bad("kvm_guest_image", "must be an absolute path"));
        }
        let resolv_conf = layered(o.resolv_conf, f.resolv_conf, || DEFAULT_RESOLV_CONF.into());
        let resolv_conf = if resolv_conf.as_os_str().is_empty() {
            None
        } else if resolv_conf.file_name().is_none() || resolv_conf.parent().is_none() {
            return Err(bad("resolv_conf", "must be a file path"));
        } else {
            Some(resolv_conf)
        };
        let resolv_conf_nameserver = match o.resolv_conf_nameserver.or(f.resolv_conf_nameserver) {
            None => None,
            Some(s) => Some(parse_stub(&s).map_err(|why| bad("resolv_conf_nameserver", &why))?),
        };
        if resolv_conf_nameserver.is_some() && resolv_conf.is_none() {
            return Err(bad(
                "resolv_conf_nameserver",
                "names what resolv.conf lists, but resolv_conf is off",
            ));
        }
        let common = Common::resolve::<Dhcp>(
            CommonLayer {
                state_dir: o.state_dir,
                run_dir: o.run_dir,
                sandbox: o.sandbox,
            },
            CommonLayer {
                state_dir: f.state_dir,
                run_dir: f.run_dir,
                sandbox: f.sandbox,
            },
        );
        Ok(Config {
            interface,
            state_dir: common.state_dir,
            run_dir: common.run_dir,
            resolv_conf,
            resolv_conf_nameserver,
            sandbox: common.sandbox,
            kvm_device: f
                .kvm_device
                .unwrap_or_else(|| mirage_sdk::kvm::DEFAULT_DEVICE.into()),
            kvm_guest_image,
            client_id: f.client_id,
            hostname: f.hostname,
            vendor_class: f.vendor_class,
            release_on_stop: f.release_on_stop || o.release_on_stop,
            route_table: f.route_table,
            ids_config: f.ids,
            ids,
            timing,
            acd,
            limits,
        })
    }
}

/// A nameserver for resolv.conf: an IP address (resolv.conf has no port),
/// one a query can be sent to.
fn parse_stub(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address (resolv.conf names no port nor host name)"))?;
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        return Err(format!("{ip} is not an address a resolver can ask"));
    }
    Ok(ip)
}

impl Config {
    /// Fit the role ids to the process the supervisor runs as
    /// ([`mirage_sdk::service::ids::fit_to_process`]): as root each role switches to its own.
    pub fn fit_ids_to_process(&mut self, euid: u32, egid: u32) -> Result<(), String> {
        self.ids.fit_to_process::<Dhcp>(&self.ids_config, euid, egid)
    }

    /// Id choices that work but weaken the split, for the log
    /// ([`mirage_sdk::service::ids::warnings`]).
    pub fn id_warnings(&self, distinct_possible: bool) -> Vec<String> {
        self.ids.warnings(distinct_possible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let p = Path::new("config.toml");
        let f: FileConfig = mirage_sdk::config::parse(p, text).map_err(|e| e.to_string())?;
        Config::resolve(p, f, Overrides::default())
    }

    #[test]
    fn defaults_follow_the_convention() {
        let c = parse("interface = \"eth0\"").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/mirage/dhcp"));
        assert_eq!(c.run_dir, PathBuf::from("/run/mirage/dhcp"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from(DEFAULT_RESOLV_CONF)));
        assert_eq!(c.sandbox, SandboxKind::Auto);
        assert_eq!(c.kvm_device, PathBuf::from("/dev/kvm"));
        assert_eq!(c.kvm_guest_image, None);
        assert_eq!(c.ids, RoleIds::DEFAULT);
        let all = [c.ids.network, c.ids.engine, c.ids.actuator];
        // One id per role, none shared with `nobody` or root.
        for (i, a) in all.iter().enumerate() {
            assert!(
                ![0, 65534].contains(&a.uid) && ![0, 65534].contains(&a.gid),
                "{a:?}"
            );
            assert!(all[i + 1..].iter().all(|b| b.uid != a.uid), "{all:?}");
        }
        assert!(c.acd.enabled);
        assert_eq!(c.timing.min_lease_secs, 20);
        assert_eq!(c.route_table, None);
        assert_eq!(c.limits.min_route_prefix_len, 8);
        assert_eq!(c.limits.min_subnet_prefix_len, 8);
        assert!(!c.limits.ignore_classless_routes);
    }

    #[test]
    fn route_policy_settings_are_read_and_checked() {
        let c = parse(
            "interface = \"eth0\"\nroute_table = 100\n[limits]\nignore_classless_routes = true\n\
             min_route_prefix_len = 16\nmin_subnet_prefix_len = 20\n",
        )
        .unwrap();
        assert_eq!(c.route_table, Some(100));
        assert!(c.limits.ignore_classless_routes);
        assert_eq!(c.limits.min_route_prefix_len, 16);
        assert_eq!(c.limits.min_subnet_prefix_len, 20);
        for (text, key) in [
            ("route_table = 0", "route_table"),
            ("route_table = 255", "route_table"),
            ("[limits]\nmin_route_prefix_len = 33", "min_route_prefix_len"),
            ("[limits]\nmin_subnet_prefix_len = 0", "min_subnet_prefix_len"),
            ("[limits]\nmin_subnet_prefix_len = 33", "min_subnet_prefix_len"),
        ] {
            let e = parse(&format!("interface = \"eth0\"\n{text}\n")).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn min_lease_secs_is_bounded_and_overridable() {
        let c = parse("interface = \"eth0\"\n[timing]\nmin_lease_secs = 60\n").unwrap();
        assert_eq!(c.timing.min_lease_secs, 60);
        for bad in ["0", "3", "3601"] {
            let e = parse(&format!(
                "interface = \"eth0\"\n[timing]\nmin_lease_secs = {bad}\n"
            ))
            .unwrap_err();
            assert!(e.contains("timing.min_lease_secs"), "{e}");
        }
        let p = Path::new("c.toml");
        let f: FileConfig = mirage_sdk::config::parse(p, "interface = \"a\"\n").unwrap();
        let o = Overrides {
            min_lease_secs: Some(6),
            ..Default::default()
        };
        assert_eq!(Config::resolve(p, f, o).unwrap().timing.min_lease_secs, 6);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let e = parse("interface = \"eth0\"\n[acd]\nenabeld = false\n").unwrap_err();
        assert!(e.starts_with("config.toml:3:"), "{e}");
        assert!(e.contains("enabeld"), "{e}");
        let c = parse("interface = \"eth0\"\nkvm_guest_image = \"/srv/guest.elf\"\n").unwrap();
        assert_eq!(c.kvm_guest_image, Some(PathBuf::from("/srv/guest.elf")));
        let e = parse("interface = \"eth0\"\nkvm_guest_image = \"guest.elf\"\n").unwrap_err();
        assert!(e.contains("kvm_guest_image: must be an absolute path"), "{e}");
        let e = parse("interface = \"eth0\"\nsandbox = \"kvmm\"\n").unwrap_err();
        assert!(e.starts_with("config.toml:2:"), "{e}");
        let e = parse("interface = \"eth0\"\nhostname = \"a;b\"\n").unwrap_err();
        assert!(e.contains("hostname"), "{e}");
        assert!(parse("").unwrap_err().contains("no interface"));
    }

    #[test]
    fn overrides_win_and_empty_resolv_conf_disables() {
        let p = Path::new("c.toml");
        let f: FileConfig = mirage_sdk::config::parse(
            p,
            "interface = \"a\"\nresolv_conf = \"\"\n[acd]\nenabled = true\n",
        )
        .unwrap();
        let o = Overrides {
            interface: Some("b".into()),
            no_acd: true,
            ..Default::default()
        };
        let c = Config::resolve(p, f, o).unwrap();
        assert_eq!(c.interface, "b");
        assert_eq!(c.resolv_conf, None);
        assert!(!c.acd.enabled);
    }

    #[test]
    fn resolv_conf_nameserver_is_one_checked_address() {
        let c = parse("interface = \"eth0\"\nresolv_conf_nameserver = \"127.0.0.53\"\n").unwrap();
        assert_eq!(c.resolv_conf_nameserver, Some("127.0.0.53".parse().unwrap()));
        assert_eq!(
            parse("interface = \"eth0\"\n").unwrap().resolv_conf_nameserver,
            None
        );
        let c = parse("interface = \"eth0\"\nresolv_conf_nameserver = \"::1\"\n").unwrap();
        assert_eq!(c.resolv_conf_nameserver, Some("::1".parse().unwrap()));
        for bad in [
            "127.0.0.53:53",
            "dns.example",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "",
        ] {
            let e = parse(&format!(
                "interface = \"eth0\"\nresolv_conf_nameserver = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(e.contains("resolv_conf_nameserver"), "{bad}: {e}");
        }
        let e = parse("interface = \"eth0\"\nresolv_conf = \"\"\nresolv_conf_nameserver = \"127.0.0.53\"\n")
            .unwrap_err();
        assert!(e.contains("resolv_conf is off"), "{e}");
        // The command line's wins over the file's.
        let p = Path::new("c.toml");
        let f: FileConfig =
            mirage_sdk::config::parse(p, "interface = \"a\"\nresolv_conf_nameserver = \"127.0.0.53\"\n")
                .unwrap();
        let o = Overrides {
            resolv_conf_nameserver: Some("127.0.0.54".into()),
            ..Default::default()
        };
        let c = Config::resolve(p, f, o).unwrap();
        assert_eq!(c.resolv_conf_nameserver, Some("127.0.0.54".parse().unwrap()));
    }

    #[test]
    fn role_ids_parse_and_root_is_refused_unless_allowed() {
        let c = parse("interface = \"eth0\"\n[ids]\nnetwork = 900\nactuator = \"901:902\"\n").unwrap();
        assert_eq!(c.ids.network, RoleId { uid: 900, gid: 900 });
        assert_eq!(c.ids.engine, RoleIds::DEFAULT.engine);
        assert_eq!(c.ids.actuator, RoleId { uid: 901, gid: 902 });
        for bad in ["engine = 0", "actuator = \"900:0\"", "network = \"0:900\""] {
            let e = parse(&format!("interface = \"eth0\"\n[ids]\n{bad}\n")).unwrap_err();
            assert!(
                e.contains("ids.") && e.contains("root") && e.contains("allow_root"),
                "{bad}: {e}"
            );
        }
        let c = parse("interface = \"eth0\"\n[ids]\nengine = 0\nallow_root = true\n").unwrap();
        assert_eq!(c.ids.engine, RoleId { uid: 0, gid: 0 });
        for bad in [
            "engine = \"x\"",
            "engine = \"1:\"",
            "engine = -1",
            "engine = 4294967295",
            "nobody = 1",
        ] {
            let e = parse(&format!("interface = \"eth0\"\n[ids]\n{bad}\n")).unwrap_err();
            assert!(e.starts_with("config.toml:3:"), "{bad}: {e}");
        }
        // The old shared keys say what replaced them.
        for old in ["uid = 65534", "gid = 0"] {
            let e = parse(&format!("interface = \"eth0\"\n{old}\n")).unwrap_err();
            assert!(e.contains("replaced by [ids]"), "{old}: {e}");
        }
    }

    #[test]
    fn a_non_root_supervisor_keeps_its_own_ids() {
        let mut c = parse("interface = \"eth0\"").unwrap();
        c.fit_ids_to_process(0, 0).unwrap();
        assert_eq!(c.ids, RoleIds::DEFAULT);
        c.fit_ids_to_process(1234, 1235).unwrap();
        let own = RoleId { uid: 1234, gid: 1235 };
        assert_eq!(
            c.ids,
            RoleIds {
                network: own,
                engine: own,
                actuator: own
            }
        );
        let mut c = parse("interface = \"eth0\"\n[ids]\nengine = \"1234:1235\"\n").unwrap();
        c.fit_ids_to_process(1234, 1235).unwrap();
        let mut c = parse("interface = \"eth0\"\n[ids]\nengine = 77\n").unwrap();
        let e = c.fit_ids_to_process(1234, 1235).unwrap_err();
        assert!(e.contains("ids.engine") && e.contains("not root"), "{e}");
    }

    #[test]
    fn nobody_and_shared_ids_are_warned_about() {
        assert!(
            parse("interface = \"eth0\"")
                .unwrap()
                .id_warnings(true)
                .is_empty()
        );
        let c = parse("interface = \"eth0\"\n[ids]\nnetwork = 65534\nengine = 65522\n").unwrap();
        let w = c.id_warnings(true);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("ids.network") && w[0].contains("nobody"), "{w:?}");
        assert!(
            w[1].contains("ids.engine and ids.actuator share uid 65522"),
            "{w:?}"
        );
        assert_eq!(c.id_warnings(false).len(), 1);
    }
}
