//! The engine role: every untrusted byte is parsed here, by a process with
//! no capabilities, no files, no sockets but its channel, and a seccomp
//! allow-list of a handful of calls. The SDK's runner relays between the
//! channel and the sans-IO [`dhcp_engine::Client`]; its `Start` follows the
//! hello on the channel.

use dhcp_engine::Client;
use mirage_sdk::role::Starting;

pub fn run(role: Starting) -> Result<(), String> {
    mirage_sdk::engine_role::run::<Client>(role.enter()?.channel)
}
