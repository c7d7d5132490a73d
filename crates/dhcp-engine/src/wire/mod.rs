//! Wire formats: Ethernet/IPv4/UDP/ARP framing ([`frame`]) and DHCP messages
//! ([`dhcp`]). Parsing is strict: anything malformed is an error, never a
//! panic, never a partial accept.
pub mod dhcp;
pub mod frame;
