//! Guest images for the tender's tests, built by this crate's build script
//! from the guest workspace.
#![forbid(unsafe_code)]

/// The heartbeat example's engine as a guest.
pub const HEARTBEAT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-heartbeat.elf"));

/// mirage-dhcp's engine (the DHCPv4 client) as a guest.
pub const DHCP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-dhcp.elf"));

/// mirage-ntp's engine (the NTPv4 client) as a guest.
pub const NTP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-ntp.elf"));

/// An engine with a direct channel (guest/images/relay): even events go
/// on to its peer, odd ones are refused.
pub const RELAY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-relay.elf"));

/// The attacker (guest/images/hostile): its first message picks the attack.
#[cfg(feature = "hostile")]
pub const HOSTILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-hostile.elf"));
