//! mirage-dns's library: what the binary and its tests share, so a test
//! starts a role from the very plan and settings the supervisor uses.
//!
//! - [`config`]: the `[cache]` table of the config file, checked;
//! - [`plan`]: the two roles as data (ids, descriptors, seccomp tables)
//!   and the settings in their hello;
//! - [`messages`]: what the network role tells the supervisor;
//! - [`policy`]: the network role's rules, whatever the engine asks: upstream
//!   queries only to configured upstreams, answers only to clients with a
//!   query outstanding, bounded in size.
#![forbid(unsafe_code)]

pub mod config;
pub mod messages;
pub mod plan;
pub mod policy;

/// The service's name in the SDK convention: `/etc/mirage/dns`,
/// `/var/lib/mirage/dns`, `/run/mirage/dns`, metrics `mirage_dns_`.
#[derive(Debug, Clone, Copy)]
pub struct Dns;

impl mirage_sdk::service::Service for Dns {
    const NAME: &'static str = "dns";
    const NOUN: &'static str = "forwarder";
}
