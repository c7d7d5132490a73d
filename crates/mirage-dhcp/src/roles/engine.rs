//! The engine role: every untrusted byte is parsed here, by a process with
//! no capabilities, no files, no sockets but its channel, and a seccomp
//! allow-list of a handful of calls; or, with `--sandbox kvm`, by the same
//! engine built as a guest ([`GUEST`]) in a KVM micro-VM of its own, whose
//! tender process holds little more than `KVM_RUN` on its vCPU. The SDK's
//! runner relays between the channel and the sans-IO
//! [`dhcp_engine::Client`]; its `Start` follows the hello on the channel.

use dhcp_engine::Client;
use mirage_sdk::role::Starting;

/// `guest/images/dhcp`: the engine and the guest runtime, built by this
/// crate's build script, in a section of its own (see
/// [`mirage_sdk::guest_image`]).
pub const GUEST: &[u8] = mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-dhcp.elf"));

pub fn run(role: Starting) -> Result<(), String> {
    mirage_sdk::engine_role::run_sandboxed::<Client>(role, Some(GUEST))
}
