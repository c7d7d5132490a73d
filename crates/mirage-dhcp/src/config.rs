//! mirage-dhcp configuration: `/etc/mirage/dhcp/config.toml` by convention,
//! every key optional, every key also reachable from the command line.

use std::path::{Path, PathBuf};

use mirage_ipc::{AcdConfig, EngineConfig, Limits, is_valid_domain_name};
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/mirage/dhcp/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mirage/dhcp";
pub const DEFAULT_RUN_DIR: &str = "/run/mirage/dhcp";
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// `nobody`: numeric, because a static binary cannot look names up.
pub const DEFAULT_ROLE_ID: u32 = 65534;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// Engine in its own process under a seccomp allow-list (default).
    #[default]
    Seccomp,
    /// No sandbox at all: for debugging only.
    None,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Seccomp => "seccomp",
            SandboxKind::None => "none",
        }
    }
}

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
    pub sandbox: Option<SandboxKind>,
    pub client_id: ClientIdMode,
    pub hostname: Option<String>,
    pub vendor_class: Option<String>,
    pub release_on_stop: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
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

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub interface: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
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
    pub sandbox: SandboxKind,
    pub client_id: ClientIdMode,
    pub hostname: Option<String>,
    pub vendor_class: Option<String>,
    pub release_on_stop: bool,
    pub uid: u32,
    pub gid: u32,
    pub timing: TimingConfig,
    pub acd: AcdConfig,
    pub limits: Limits,
}

impl Config {
    /// Read `path` (absent is fine unless `explicit`), apply overrides,
    /// validate. Errors name the file, line and key.
    pub fn load(path: &Path, explicit: bool, o: Overrides) -> Result<Config, String> {
        let file: FileConfig = mirage_sdk::config::load(path, explicit)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        Self::resolve(path, file, o)
    }

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
        let resolv_conf = match o.resolv_conf.or(f.resolv_conf) {
            None => Some(PathBuf::from(DEFAULT_RESOLV_CONF)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => {
                if p.file_name().is_none() || p.parent().is_none() {
                    return Err(bad("resolv_conf", "must be a file path"));
                }
                Some(p)
            }
        };
        Ok(Config {
            interface,
            state_dir: o
                .state_dir
                .or(f.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            run_dir: o.run_dir.or(f.run_dir).unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
            resolv_conf,
            sandbox: o.sandbox.or(f.sandbox).unwrap_or_default(),
            client_id: f.client_id,
            hostname: f.hostname,
            vendor_class: f.vendor_class,
            release_on_stop: f.release_on_stop || o.release_on_stop,
            uid: f.uid.unwrap_or(DEFAULT_ROLE_ID),
            gid: f.gid.unwrap_or(DEFAULT_ROLE_ID),
            timing,
            acd,
            limits,
        })
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
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
        assert_eq!(c.resolv_conf, Some(PathBuf::from(DEFAULT_RESOLV_CONF)));
        assert_eq!(c.sandbox, SandboxKind::Seccomp);
        assert_eq!((c.uid, c.gid), (65534, 65534));
        assert!(c.acd.enabled);
        assert_eq!(c.timing.min_lease_secs, 20);
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
}
