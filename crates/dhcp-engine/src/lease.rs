//! From a DHCPACK to a [`Lease`]: decoding meaning, sanitizing, refusing.
//!
//! INTERFACE CONTRACT (used by `client`):
//! [`lease_from_reply`] turns an OFFER/ACK into a lease that passes
//! [`Lease::check`], or says why it cannot.

use core::net::Ipv4Addr;
use mirage_ipc::{Instant, Lease, Limits, Refusal};

use crate::wire::dhcp::Message;

/// Build the lease a reply offers. `src_ip` is the IPv4 source of the reply
/// (server identifier fallback when option 54 is missing). `acquired_at` is
/// when our REQUEST was sent.
///
/// Sanitizing (field notes and RFCs, each cited at its line):
/// - prefix from option 1 (a non-contiguous mask is refused), else classful;
/// - routes from option 121 when present (option 3 ignored, RFC 3442), with
///   on-link host routes for gateways moved first; else a default route via
///   the first router of option 3 that is on-link (others ignored);
/// - DNS / NTP: unusable entries (0.0.0.0, loopback, ...) dropped, the rest
///   truncated to `limits`; domain/search/hostname kept only if valid names;
/// - MTU below 576 ignored, above 65535 impossible; T1/T2 defaulted to
///   0.5 / 0.875 of the lease and forced into T1 <= T2 <= lease; an infinite
///   lease (0xffffffff) stays infinite without overflow;
/// - finally [`Lease::check`] must pass.
pub fn lease_from_reply(
    msg: &Message,
    src_ip: Ipv4Addr,
    acquired_at: Instant,
    limits: &Limits,
) -> Result<Lease, Refusal> {
    let _ = (msg, src_ip, acquired_at, limits);
    todo!()
}
