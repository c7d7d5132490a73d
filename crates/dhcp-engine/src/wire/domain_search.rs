//! Option 119, the domain search list (RFC 3397), whose names use the DNS
//! message compression of RFC 1035 section 4.1.4.
//!
//! Decoding is where DHCP clients have been broken (CVE-2020-7461: a
//! compression pointer walked past the buffer), so the rules here are
//! deliberately narrower than RFC 1035 allows in DNS messages:
//! - a pointer must point strictly backwards from its own position inside
//!   the (concatenated, RFC 3396) option data. Every jump then lands earlier
//!   than the last one, so no sequence of pointers can loop;
//! - labels are 1..=63 bytes (the two high bits clear), the 01 and 10 label
//!   types (RFC 6891 extended labels) are refused;
//! - a name is at most 255 bytes in wire form (RFC 1035 2.3.4), counted over
//!   the labels actually followed;
//! - at most [`MAX_NAMES`] names.
//!
//! Any violation makes the whole option invalid: a list half decoded from a
//! hostile server is not worth keeping.

use alloc::string::String;
use alloc::vec::Vec;

/// Most names we decode from one option (resolv.conf takes far fewer).
pub const MAX_NAMES: usize = 32;
/// Longest name in wire form, terminating root label included (RFC 1035 2.3.4).
pub const MAX_NAME_WIRE_LEN: usize = 255;
/// Longest label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Decode a search list. `Err(())` for any malformed content, including an
/// empty option (RFC 3397 section 2: the option carries at least one name).
// `()` is the error type `Options::domain_search` carries: every violation
// means the same thing (drop the whole list).
#[allow(clippy::result_unit_err)]
pub fn decode(data: &[u8]) -> Result<Vec<String>, ()> {
    if data.is_empty() {
        return Err(());
    }
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if names.len() == MAX_NAMES {
            return Err(());
        }
        let (name, next) = decode_name(data, pos)?;
        names.push(name);
        pos = next;
    }
    Ok(names)
}

/// Decode the name starting at `start`; returns it and the offset just after
/// its in-place part (after the terminator or the first pointer).
fn decode_name(data: &[u8], start: usize) -> Result<(String, usize), ()> {
    let mut name: Vec<u8> = Vec::new();
    let mut wire_len = 0usize;
    let mut pos = start;
    // Where the caller continues: set at the first pointer followed.
    let mut resume: Option<usize> = None;
    loop {
        let len = *data.get(pos).ok_or(())?;
        match len >> 6 {
            0b00 => {
                let len = usize::from(len);
                wire_len += 1 + len;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(());
                }
                if len == 0 {
                    let next = resume.unwrap_or(pos + 1);
                    // Labels are bytes; anything not UTF-8 becomes U+FFFD
                    // here and is then refused by the name check in `lease`.
                    return Ok((String::from_utf8_lossy(&name).into_owned(), next));
                }
                let label = data.get(pos + 1..pos + 1 + len).ok_or(())?;
                if !name.is_empty() {
                    name.push(b'.');
                }
                name.extend_from_slice(label);
                pos += 1 + len;
            }
            0b11 => {
                let low = *data.get(pos + 1).ok_or(())?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                // Strictly backwards: this is what makes loops impossible
                // (each jump strictly decreases `pos`).
                if target >= pos {
                    return Err(());
                }
                if resume.is_none() {
                    resume = Some(pos + 2);
                }
                pos = target;
            }
            // 0b01 (RFC 6891 extended label) and 0b10 (reserved).
            _ => return Err(()),
        }
    }
}

/// Append `names` uncompressed in wire form. A name that cannot be written
/// (an empty or over-long label, over 255 bytes) is skipped: encoding is for
/// names we chose, and a skipped name cannot corrupt the others.
pub fn encode(names: &[String], out: &mut Vec<u8>) {
    for name in names {
        encode_name(name, out);
    }
}

/// Append one name in uncompressed wire form (a trailing dot is the root and
/// optional). Returns `false`, writing nothing, if it cannot be encoded.
pub fn encode_name(name: &str, out: &mut Vec<u8>) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let start = out.len();
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL_LEN {
                out.truncate(start);
                return false;
            }
            // label.len() <= 63 checked just above.
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    if out.len() - start > MAX_NAME_WIRE_LEN {
        out.truncate(start);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn rfc3397_section_4_example_decodes() {
        // RFC 3397 section 4: "eng.apple.com." and "marketing.apple.com.",
        // the second pointing at "apple.com" inside the first.
        let data = [
            3, b'e', b'n', b'g', 5, b'a', b'p', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 9, b'm', b'a',
            b'r', b'k', b'e', b't', b'i', b'n', b'g', 0xc0, 0x04,
        ];
        assert_eq!(
            decode(&data),
            Ok(vec![
                "eng.apple.com".to_string(),
                "marketing.apple.com".to_string()
            ])
        );
    }

    #[test]
    fn pointer_to_itself_or_forward_is_refused() {
        assert_eq!(decode(&[0xc0, 0x00]), Err(()));
        assert_eq!(decode(&[1, b'a', 0xc0, 0x02]), Err(()));
        assert_eq!(decode(&[0xc0, 0x02, 1, b'a', 0]), Err(()));
        // A pointer to a pointer that points back at the first: still refused
        // because the second one points forward.
        assert_eq!(decode(&[1, b'a', 0xc0, 0x04, 0xc0, 0x02]), Err(()));
    }

    #[test]
    fn truncation_and_reserved_label_types_are_refused() {
        assert_eq!(decode(&[]), Err(()));
        assert_eq!(decode(&[3, b'c', b'o']), Err(()));
        assert_eq!(decode(&[3, b'c', b'o', b'm']), Err(()));
        assert_eq!(decode(&[1, b'a', 0, 0xc0]), Err(()));
        assert_eq!(decode(&[0x40, 0]), Err(()));
        assert_eq!(decode(&[0x80, 0]), Err(()));
    }

    #[test]
    fn long_labels_and_names_are_refused() {
        // 64-byte label: its length byte has bit 6 set, i.e. label type 01.
        let mut d = vec![64u8];
        d.extend_from_slice(&[b'a'; 64]);
        d.push(0);
        assert_eq!(decode(&d), Err(()));
        // 5 labels of 63 bytes: 320 wire bytes > 255.
        let mut d = Vec::new();
        for _ in 0..5 {
            d.push(63);
            d.extend_from_slice(&[b'a'; 63]);
        }
        d.push(0);
        assert_eq!(decode(&d), Err(()));
        // Exactly 255: 3 * 64 + 62 + 1.
        let mut d = Vec::new();
        for _ in 0..3 {
            d.push(63);
            d.extend_from_slice(&[b'b'; 63]);
        }
        d.push(61);
        d.extend_from_slice(&[b'c'; 61]);
        d.push(0);
        assert_eq!(d.len(), 255);
        assert_eq!(decode(&d).map(|n| n.len()), Ok(1));
    }

    #[test]
    fn long_names_built_through_pointers_are_refused() {
        // Each name adds a 63-byte label in front of the previous name, via a
        // backwards pointer; the 4th name is 4 * 64 + 1 = 257 bytes long.
        let mut d = vec![63];
        d.extend_from_slice(&[b'x'; 63]);
        d.push(0);
        let mut prev = 0usize;
        for _ in 0..3 {
            let here = d.len();
            d.push(63);
            d.extend_from_slice(&[b'y'; 63]);
            d.push(0xc0 | (prev >> 8) as u8);
            d.push(prev as u8);
            prev = here;
        }
        assert_eq!(decode(&d), Err(()));
        d.truncate(d.len() - 66);
        assert_eq!(decode(&d).map(|n| n.len()), Ok(3));
    }

    #[test]
    fn name_count_is_capped() {
        let mut d = Vec::new();
        for _ in 0..MAX_NAMES {
            d.extend_from_slice(&[1, b'a', 0]);
        }
        assert_eq!(decode(&d).map(|n| n.len()), Ok(MAX_NAMES));
        d.extend_from_slice(&[1, b'a', 0]);
        assert_eq!(decode(&d), Err(()));
    }

    #[test]
    fn encode_round_trips_and_skips_unencodable_names() {
        let names = vec![
            "c.my-project.internal.".to_string(),
            "google.internal".to_string(),
            "bad..name".to_string(),
            "x".repeat(64),
        ];
        let mut out = Vec::new();
        encode(&names, &mut out);
        assert_eq!(
            decode(&out),
            Ok(vec![
                "c.my-project.internal".to_string(),
                "google.internal".to_string()
            ])
        );
        let mut out = Vec::new();
        assert!(!encode_name(&"a.".repeat(128), &mut out));
        assert!(out.is_empty());
    }
}
