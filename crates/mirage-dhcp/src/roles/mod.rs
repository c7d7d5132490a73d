//! The three sandboxed roles, each a hidden subcommand of this binary that
//! the supervisor starts by re-executing `/proc/self/exe`. Every role finds
//! its channel to the supervisor at fd 3 and the other fds it needs at the
//! fixed numbers below; everything else was closed by the spawner.

mod actuator;
mod engine;
pub mod network;
pub mod sandbox;

use std::os::fd::RawFd;
use std::process::ExitCode;

use crate::config::SandboxKind;

/// Every role: channel to the supervisor.
pub const FD_CHANNEL: RawFd = 3;
/// Network role: the AF_PACKET socket.
pub const FD_PACKET: RawFd = 4;
/// Actuator role: rtnetlink request socket.
pub const FD_RTNL: RawFd = 4;
/// Actuator role: rtnetlink link-event socket.
pub const FD_LINK_EVENTS: RawFd = 5;
/// Actuator role: state directory (lease file).
pub const FD_STATE_DIR: RawFd = 6;
/// Actuator role: runtime directory (status.json, metrics.prom).
pub const FD_RUN_DIR: RawFd = 7;
/// Actuator role: directory holding resolv.conf (only with --resolv-name).
pub const FD_RESOLV_DIR: RawFd = 8;
/// Actuator role: resolv.conf itself, opened for writing, for targets that
/// cannot be replaced by rename (bind mounts, directories we may not write).
pub const FD_RESOLV_FILE: RawFd = 9;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    Engine,
    Network,
    Actuator,
}

impl RoleName {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Engine => "engine",
            RoleName::Network => "network",
            RoleName::Actuator => "actuator",
        }
    }
}

/// Arguments the supervisor passes to a role. Nothing here is secret; the
/// role trusts them because only the supervisor can start it with the fds.
#[derive(clap::Args, Debug, Clone)]
pub struct RoleArgs {
    #[arg(value_enum)]
    pub role: RoleName,
    #[arg(long)]
    pub interface: String,
    #[arg(long)]
    pub ifindex: u32,
    /// Interface MAC, aa:bb:cc:dd:ee:ff.
    #[arg(long, value_parser = parse_mac)]
    pub mac: [u8; 6],
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    #[arg(long, value_enum)]
    pub sandbox: SandboxKind,
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Network role: also pass ARP (needed by conflict detection).
    #[arg(long)]
    pub with_arp: bool,
    /// Network role: option 61 exactly as the engine sends it (hex); frames
    /// with another client identifier are refused.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Actuator role: resolv.conf file name inside fd 8's directory.
    #[arg(long)]
    pub resolv_name: Option<String>,
    /// Actuator role: a first start's DUID (hex) to store in the state
    /// directory, off the path to the first lease.
    #[arg(long)]
    pub store_duid: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_routes: u16,
    #[arg(long, default_value_t = 8)]
    pub max_dns_servers: u8,
    #[arg(long, default_value_t = 8)]
    pub max_ntp_servers: u8,
    #[arg(long, default_value_t = 16)]
    pub max_search_domains: u8,
    #[arg(long)]
    pub ignore_classless_routes: bool,
    #[arg(long, default_value_t = 8)]
    pub min_route_prefix_len: u8,
    #[arg(long, default_value_t = 8)]
    pub min_subnet_prefix_len: u8,
    /// Actuator role: routing table for the lease's routes (default: main).
    #[arg(long)]
    pub route_table: Option<u32>,
}

impl RoleArgs {
    pub fn limits(&self) -> mirage_ipc::Limits {
        mirage_ipc::Limits {
            max_routes: self.max_routes,
            max_dns_servers: self.max_dns_servers,
            max_ntp_servers: self.max_ntp_servers,
            max_search_domains: self.max_search_domains,
            ignore_classless_routes: self.ignore_classless_routes,
            min_route_prefix_len: self.min_route_prefix_len,
            min_subnet_prefix_len: self.min_subnet_prefix_len,
        }
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC {s:?}"));
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Hex digits (surrounding white space ignored) to bytes. Works on bytes,
/// not `str` slices: a DUID file is written by a role's uid, and slicing a
/// multi-byte character in half would panic.
pub fn parse_hex(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = bytes.trim_ascii();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Name of the lease file for an interface in the state directory.
pub fn lease_file_name(interface: &str) -> String {
    format!("lease-{interface}.json")
}

pub fn main(args: RoleArgs) -> ExitCode {
    mirage_sdk::log::init(args.log_level, "");
    let result = match args.role {
        RoleName::Engine => engine::run(&args),
        RoleName::Network => network::run(&args),
        RoleName::Actuator => actuator::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:00:5e:10:00:0a").unwrap();
        assert_eq!(format_mac(&m), "02:00:5e:10:00:0a");
        assert!(parse_mac("02:00:5e:10:00").is_err());
        assert!(parse_mac("02:00:5e:10:00:zz").is_err());
    }
}
