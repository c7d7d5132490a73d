//! The three sandboxed roles' loops. The supervisor starts each by
//! re-executing `/proc/self/exe` as `role NAME`; the SDK reads its hello,
//! applies its plan (`mirage_dhcp::plan`) and calls its entry here. Every
//! role finds its channel to the supervisor at fd 3 and the other fds it
//! needs at the plan's fixed numbers; everything else was closed by the
//! spawner.

mod actuator;
pub mod engine;
pub mod network;

pub use mirage_dhcp::plan::{
    FD_LINK_EVENTS, FD_PACKET, FD_RESOLV_DIR, FD_RESOLV_FILE, FD_RTNL, FD_RUN_DIR, FD_STATE_DIR,
};

/// The roles' entries, for [`mirage_sdk::role::main_if_role`].
pub const ENTRIES: &[mirage_sdk::role::Entry] = &[
    ("engine", engine::run),
    ("network", network::run),
    ("actuator", actuator::run),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_format() {
        assert_eq!(format_mac(&[2, 0, 0x5e, 0x10, 0, 0x0a]), "02:00:5e:10:00:0a");
    }
}
