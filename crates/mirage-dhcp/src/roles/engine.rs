//! The engine role: every untrusted byte is parsed here, by a process with
//! no capabilities, no files, no sockets but its channel, and a seccomp
//! allow-list of a handful of calls. The SDK's runner relays between the
//! channel and the sans-IO [`dhcp_engine::Client`].

use dhcp_engine::Client;
use mirage_sdk::channel::Channel;

use super::{FD_CHANNEL, RoleArgs};

pub fn run(args: &RoleArgs) -> Result<(), String> {
    let chan = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    super::sandbox::enter(args, super::sandbox::Profile::Engine)?;
    mirage_sdk::engine_role::run::<Client>(chan)
}
