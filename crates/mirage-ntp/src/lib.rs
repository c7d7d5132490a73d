//! mirage-ntp's library: what the binary and its tests share, so a test
//! starts a role from the very plan and settings the supervisor uses.
//!
//! - [`plan`]: the three roles as data (ids, descriptors, seccomp tables,
//!   capabilities) and the settings in their hello;
//! - [`messages`]: what the supervisor and the network role and actuator
//!   say to each other;
//! - [`policy`]: the actuator's clock policy, fixed at start, which every
//!   clock intent must pass;
//! - [`accept`]: an operator's acceptance of a held step, from
//!   `mirage-ntp accept-step` to the actuator.
#![forbid(unsafe_code)]

pub mod accept;
pub mod messages;
pub mod plan;
pub mod policy;

/// The service's name in the SDK convention: `/etc/mirage/ntp`,
/// `/var/lib/mirage/ntp`, `/run/mirage/ntp`, metrics `mirage_ntp_`.
#[derive(Debug, Clone, Copy)]
pub struct Ntp;

impl mirage_sdk::service::Service for Ntp {
    const NAME: &'static str = "ntp";
    const NOUN: &'static str = "client";
}
