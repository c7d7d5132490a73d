//! Wire formats: Ethernet/IPv4/UDP/ARP framing ([`frame`]) and DHCP messages
//! ([`dhcp`]), with the option value codecs that need more than a length
//! check ([`domain_search`], [`classless_routes`]). Parsing is strict:
//! anything malformed is an error, never a panic, never a partial accept.
pub mod classless_routes;
pub mod dhcp;
pub mod domain_search;
pub mod frame;
