//! Domain names (RFC 1035 §3.1, §4.1.4), case-preserving.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};

use crate::message::HEADER_LEN;
use crate::{Error, Limits};

/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest name in wire form, length octets and the root's zero included
/// (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// The two top bits of a length octet that mark a compression pointer.
const POINTER: u8 = 0b1100_0000;

/// An absolute domain name, held in uncompressed wire form: length-prefixed
/// labels ending with the root's zero octet. Valid by construction (label
/// and name lengths). Labels may hold any octet (RFC 2181 §11); case is kept
/// as given, `==` and `Hash` ignore ASCII case (RFC 4343 §3),
/// [`Name::eq_exact`] does not.
#[derive(Clone)]
pub struct Name {
    wire: Vec<u8>,
}

/// What one parse may still spend (see [`Limits`]).
pub(crate) struct Budget {
    pub pointers: u32,
    pub decoded: u32,
}

impl Budget {
    pub fn new(limits: &Limits) -> Budget {
        Budget {
            pointers: limits.max_pointers,
            decoded: limits.max_decoded_bytes,
        }
    }

    pub fn spend_decoded(&mut self, bytes: usize) -> Result<(), Error> {
        let bytes = u32::try_from(bytes).map_err(|_| Error::DecodedBudget)?;
        self.decoded = self.decoded.checked_sub(bytes).ok_or(Error::DecodedBudget)?;
        Ok(())
    }
}

impl Name {
    /// The root, ".".
    pub fn root() -> Name {
        Name { wire: alloc::vec![0] }
    }

    /// A name from its text form: labels separated by dots, an optional
    /// final dot, "." alone for the root. For configuration (host names), so
    /// strict: printable ASCII without spaces or backslashes (no escapes),
    /// no empty label.
    pub fn from_ascii(text: &str) -> Result<Name, Error> {
        if text == "." {
            return Ok(Name::root());
        }
        let text = text.strip_suffix('.').unwrap_or(text);
        let mut labels = Vec::new();
        for label in text.split('.') {
            if label.is_empty() || !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
                return Err(Error::BadName);
            }
            labels.push(label.as_bytes());
        }
        Name::from_labels(labels)
    }

    /// A name from its labels, most specific first, the root left out.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Result<Name, Error> {
        let mut wire = Vec::new();
        for label in labels {
            if label.is_empty() {
                return Err(Error::BadName);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(Error::LabelTooLong);
            }
            wire.push(label.len() as u8);
            wire.extend_from_slice(label);
            if wire.len() + 1 > MAX_NAME_LEN {
                return Err(Error::NameTooLong);
            }
        }
        wire.push(0);
        Ok(Name { wire })
    }

    /// The uncompressed wire form.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.wire.len() == 1
    }

    /// The labels, most specific first, the root left out.
    pub fn labels(&self) -> Labels<'_> {
        Labels { rest: &self.wire }
    }

    /// Equal octet for octet, case included (for the 0x20 check).
    pub fn eq_exact(&self, other: &Name) -> bool {
        self.wire == other.wire
    }

    /// Whether `self` is `other` or below it (case-insensitive).
    pub fn ends_with(&self, other: &Name) -> bool {
        let mut offset = 0;
        while self.wire.len() - offset > other.wire.len() {
            offset += 1 + usize::from(self.wire[offset]);
        }
        self.wire.len() - offset == other.wire.len() && self.wire[offset..].eq_ignore_ascii_case(&other.wire)
    }

    /// The same name with the case of each ASCII letter drawn from
    /// `next_bit` (true: upper case), as a 0x20 query asks for.
    pub fn with_random_case(&self, mut next_bit: impl FnMut() -> bool) -> Name {
        let mut wire = self.wire.clone();
        let mut offset = 0;
        while wire[offset] != 0 {
            let len = usize::from(wire[offset]);
            for b in &mut wire[offset + 1..offset + 1 + len] {
                if b.is_ascii_alphabetic() {
                    *b = if next_bit() {
                        b.to_ascii_uppercase()
                    } else {
                        b.to_ascii_lowercase()
                    };
                }
            }
            offset += 1 + len;
        }
        Name { wire }
    }

    /// Decode the name at `start` of `message`. Returns the name and the
    /// offset just past its in-place part (its labels up to the root's zero
    /// or the first pointer). Every pointer must point strictly before the
    /// labels it ends and at or after the header, which rules out loops and
    /// forward references; each one costs a unit of `budget`.
    pub(crate) fn parse(message: &[u8], start: usize, budget: &mut Budget) -> Result<(Name, usize), Error> {
        // Decoded on the stack, then one allocation of the exact size (a
        // growing Vec reallocates a few times per name).
        let mut wire = [0u8; MAX_NAME_LEN];
        let mut n = 0;
        let mut pos = start;
        // Where the run of labels being read began: a pointer must go below.
        let mut run_start = start;
        let mut end = None;
        loop {
            let len = *message.get(pos).ok_or(Error::Truncated)?;
            match len & POINTER {
                0 => {
                    let len = usize::from(len);
                    if len == 0 {
                        // Room for it is kept below.
                        wire[n] = 0;
                        n += 1;
                        budget.spend_decoded(n)?;
                        let wire = wire[..n].to_vec();
                        return Ok((Name { wire }, end.unwrap_or(pos + 1)));
                    }
                    // Six bits: at most MAX_LABEL_LEN by construction.
                    let label = message.get(pos + 1..pos + 1 + len).ok_or(Error::Truncated)?;
                    // Room must remain for the root's zero octet.
                    if n + 1 + len + 1 > MAX_NAME_LEN {
                        return Err(Error::NameTooLong);
                    }
                    wire[n] = len as u8;
                    wire[n + 1..n + 1 + len].copy_from_slice(label);
                    n += 1 + len;
                    pos += 1 + len;
                }
                POINTER => {
                    let low = *message.get(pos + 1).ok_or(Error::Truncated)?;
                    let target = usize::from(u16::from_be_bytes([len & !POINTER, low]));
                    if target < HEADER_LEN || target >= run_start {
                        return Err(Error::BadPointer);
                    }
                    budget.pointers = budget.pointers.checked_sub(1).ok_or(Error::PointerBudget)?;
                    end.get_or_insert(pos + 2);
                    pos = target;
                    run_start = target;
                }
                // 0b01 (EDNS0 extended labels) and 0b10 are retired or
                // reserved (RFC 6891 §5).
                _ => return Err(Error::BadLabelType),
            }
        }
    }
}

/// The labels of a [`Name`].
pub struct Labels<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(*self.rest.first()?);
        if len == 0 {
            return None;
        }
        let label = &self.rest[1..1 + len];
        self.rest = &self.rest[1 + len..];
        Some(label)
    }
}

impl PartialEq for Name {
    /// Case-insensitive for ASCII letters (RFC 4343 §3).
    fn eq(&self, other: &Name) -> bool {
        self.wire.eq_ignore_ascii_case(&other.wire)
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in &self.wire {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for Name {
    /// Dotted text, without the final dot ("." for the root); octets that
    /// are not printable ASCII, dots and backslashes inside labels are
    /// escaped as `\DDD` and `\.` (RFC 1035 §5.1).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for &b in label {
                match b {
                    b'.' | b'\\' => write!(f, "\\{}", b as char)?,
                    b if b.is_ascii_graphic() => write!(f, "{}", b as char)?,
                    b => write!(f, "\\{b:03}")?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn parse(message: &[u8], start: usize) -> Result<(Name, usize), Error> {
        Name::parse(message, start, &mut Budget::new(&Limits::default()))
    }

    #[test]
    fn text_forms() {
        let name = Name::from_ascii("Pool.NTP.org.").unwrap();
        assert_eq!(name.as_wire(), b"\x04Pool\x03NTP\x03org\x00");
        assert_eq!(name.to_string(), "Pool.NTP.org");
        assert_eq!(name, Name::from_ascii("pool.ntp.org").unwrap());
        assert!(!name.eq_exact(&Name::from_ascii("pool.ntp.org").unwrap()));
        assert!(Name::from_ascii(".").unwrap().is_root());
        for bad in ["", "a..b", ".a", "a b", "a\\.b", "é.org"] {
            assert_eq!(Name::from_ascii(bad), Err(Error::BadName), "{bad:?}");
        }
        let long_label = "a".repeat(64);
        assert_eq!(Name::from_ascii(&long_label), Err(Error::LabelTooLong));
        assert!(Name::from_ascii(&"a".repeat(63)).is_ok());
        // 127 one-octet labels are 254 octets with the root: the longest.
        let longest = ["a"; 127].join(".");
        assert_eq!(Name::from_ascii(&longest).unwrap().as_wire().len(), 255);
        let too_long = ["a"; 128].join(".");
        assert_eq!(Name::from_ascii(&too_long), Err(Error::NameTooLong));
    }

    #[test]
    fn escapes_in_display() {
        let name = Name::from_labels([&b"a.b"[..], b"\x00\\"]).unwrap();
        assert_eq!(name.to_string(), "a\\.b.\\000\\\\");
    }

    #[test]
    fn suffixes_and_case() {
        let name = Name::from_ascii("a.Pool.ntp.org").unwrap();
        assert!(name.ends_with(&Name::from_ascii("pool.NTP.org").unwrap()));
        assert!(name.ends_with(&Name::root()));
        assert!(!name.ends_with(&Name::from_ascii("ool.ntp.org").unwrap()));
        let mut bits = [true, false].into_iter().cycle();
        let mixed = name.with_random_case(|| bits.next().unwrap());
        assert_eq!(mixed.to_string(), "A.pOoL.nTp.OrG");
        assert_eq!(mixed, name);
    }

    #[test]
    fn pointers_must_go_backwards() {
        let mut msg = alloc::vec![0u8; HEADER_LEN];
        msg.extend_from_slice(b"\x03org\x00"); // 12
        msg.extend_from_slice(b"\x03ntp\xc0\x0c"); // 17
        msg.extend_from_slice(b"\x04pool\xc0\x11"); // 23
        let (name, end) = parse(&msg, 23).unwrap();
        assert_eq!(name.to_string(), "pool.ntp.org");
        assert_eq!(end, msg.len());
        // A pointer to itself, forwards, into the header, and a loop
        // between two labels that each point at the other.
        for (bytes, start) in [
            (&b"\xc0\x0c"[..], 12),
            (b"\xc0\x0e\x00", 12),
            (b"\xc0\x02", 12),
            (b"\x01a\xc0\x10\x01b\xc0\x0c", 16),
        ] {
            let mut msg = alloc::vec![0u8; HEADER_LEN];
            msg.extend_from_slice(bytes);
            assert_eq!(
                parse(&msg, start).map(|_| ()),
                Err(Error::BadPointer),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn pointer_budget_and_label_types() {
        let mut msg = alloc::vec![0u8; HEADER_LEN];
        msg.extend_from_slice(b"\x03org\x00\xc0\x0c\xc0\x11");
        let mut budget = Budget {
            pointers: 1,
            decoded: 1000,
        };
        assert_eq!(
            Name::parse(&msg, 19, &mut budget).map(|_| ()),
            Err(Error::PointerBudget)
        );
        let mut budget = Budget {
            pointers: 2,
            decoded: 1000,
        };
        assert_eq!(Name::parse(&msg, 19, &mut budget).unwrap().1, 21);
        for bad in [0x40u8, 0x80] {
            let mut msg = alloc::vec![0u8; HEADER_LEN];
            msg.extend_from_slice(&[bad, 0]);
            assert_eq!(parse(&msg, 12).map(|_| ()), Err(Error::BadLabelType));
        }
    }

    #[test]
    fn length_limits_when_parsing() {
        // A length octet cannot say more than 63: 64 is the 0b01 type.
        let mut msg = alloc::vec![0u8; HEADER_LEN];
        msg.push(63);
        msg.extend_from_slice(&[b'a'; 63]);
        msg.push(0);
        assert_eq!(parse(&msg, 12).unwrap().0.labels().next(), Some(&[b'a'; 63][..]));
        msg[12] = 64;
        assert_eq!(parse(&msg, 12).map(|_| ()), Err(Error::BadLabelType));
        // 128 labels of one octet: 257 octets.
        let mut msg = alloc::vec![0u8; HEADER_LEN];
        for _ in 0..128 {
            msg.extend_from_slice(b"\x01a");
        }
        msg.push(0);
        assert_eq!(parse(&msg, 12).map(|_| ()), Err(Error::NameTooLong));
        // Compression cannot make a name longer either: 127 labels then a
        // pointer to one more label.
        let mut msg = alloc::vec![0u8; HEADER_LEN];
        msg.extend_from_slice(b"\x01b\x00");
        for _ in 0..127 {
            msg.extend_from_slice(b"\x01a");
        }
        msg.extend_from_slice(b"\xc0\x0c");
        assert_eq!(parse(&msg, 15).map(|_| ()), Err(Error::NameTooLong));
        assert_eq!(parse(&msg[..16], 15).map(|_| ()), Err(Error::Truncated));
    }
}
