//! Option 121, classless static routes (RFC 3442).
//!
//! Each entry is a width byte (0..=32), the significant octets of the
//! destination (ceil(width / 8) of them), then a 4-byte router (RFC 3442
//! section 3). A router of 0.0.0.0 means the destination is on-link.

use alloc::vec::Vec;
use core::net::Ipv4Addr;
use mirage_ipc::{Route, prefix_mask};

/// Decode the whole (concatenated) option. `Err(())` for a width over 32, a
/// truncated entry, an empty option (RFC 3442 section 3: minimum length 5),
/// or a destination with bits set past its width. RFC 3442 sends only the
/// significant octets, so such bits can only sit in the last one (10.31/12);
/// we refuse the entry rather than guess which of two routes was meant.
// `()` is the error type `Options::classless_routes` carries.
#[allow(clippy::result_unit_err)]
pub fn decode(data: &[u8]) -> Result<Vec<Route>, ()> {
    if data.is_empty() {
        return Err(());
    }
    let mut routes = Vec::new();
    let mut rest = data;
    while let Some((&width, tail)) = rest.split_first() {
        if width > 32 {
            return Err(());
        }
        let significant = usize::from(width).div_ceil(8);
        if tail.len() < significant + 4 {
            return Err(());
        }
        let mut dest = [0u8; 4];
        dest[..significant].copy_from_slice(&tail[..significant]);
        let destination = Ipv4Addr::from(dest);
        if u32::from(destination) & !prefix_mask(width) != 0 {
            return Err(());
        }
        let mut gw = [0u8; 4];
        gw.copy_from_slice(&tail[significant..significant + 4]);
        routes.push(Route {
            destination,
            prefix_len: width,
            gateway: Ipv4Addr::from(gw),
        });
        rest = &tail[significant + 4..];
    }
    Ok(routes)
}

/// Append `routes` in RFC 3442 form. Bits of the destination past the
/// prefix are masked off (they cannot be expressed); a prefix length over 32
/// is written as 32, since the wire cannot carry more.
pub fn encode(routes: &[Route], out: &mut Vec<u8>) {
    for r in routes {
        let width = r.prefix_len.min(32);
        let dest = (u32::from(r.destination) & prefix_mask(width)).to_be_bytes();
        out.push(width);
        out.extend_from_slice(&dest[..usize::from(width).div_ceil(8)]);
        out.extend_from_slice(&r.gateway.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn route(d: [u8; 4], p: u8, g: [u8; 4]) -> Route {
        Route {
            destination: Ipv4Addr::from(d),
            prefix_len: p,
            gateway: Ipv4Addr::from(g),
        }
    }

    #[test]
    fn rfc3442_examples_decode() {
        // Section 3 table: 0/0, 10/8, 10.17/16, 10.27.129/24, 10.229.0.128/25.
        let data = [
            0, 10, 0, 0, 1, //
            8, 10, 10, 0, 0, 1, //
            16, 10, 17, 10, 0, 0, 1, //
            24, 10, 27, 129, 10, 0, 0, 1, //
            25, 10, 229, 0, 128, 10, 0, 0, 1,
        ];
        let gw = [10, 0, 0, 1];
        assert_eq!(
            decode(&data),
            Ok(vec![
                route([0, 0, 0, 0], 0, gw),
                route([10, 0, 0, 0], 8, gw),
                route([10, 17, 0, 0], 16, gw),
                route([10, 27, 129, 0], 24, gw),
                route([10, 229, 0, 128], 25, gw),
            ])
        );
        let mut out = Vec::new();
        encode(&decode(&data).unwrap(), &mut out);
        assert_eq!(out, data);
    }

    #[test]
    fn bad_widths_truncation_and_stray_bits_are_refused() {
        assert_eq!(decode(&[]), Err(()));
        assert_eq!(decode(&[33, 1, 2, 3, 4, 5, 6, 7, 8]), Err(()));
        assert_eq!(decode(&[0xff, 1, 2, 3, 4, 5, 6, 7, 8]), Err(()));
        assert_eq!(decode(&[24, 10, 0, 0, 10, 0, 0]), Err(()));
        assert_eq!(decode(&[0, 10, 0, 0, 1, 8]), Err(()));
        // /12 with 0x1f in the second octet: bits past the prefix.
        assert_eq!(decode(&[12, 10, 0x1f, 10, 0, 0, 1]), Err(()));
        assert_eq!(
            decode(&[12, 10, 0x10, 10, 0, 0, 1]),
            Ok(vec![route([10, 16, 0, 0], 12, [10, 0, 0, 1])])
        );
        assert_eq!(
            decode(&[32, 10, 128, 0, 1, 0, 0, 0, 0]),
            Ok(vec![route([10, 128, 0, 1], 32, [0, 0, 0, 0])])
        );
    }
}
