//! A minimal, deterministic POSIX ustar writer (POSIX.1-2001 `pax` spec,
//! "ustar Interchange Format").
//!
//! Only what an image layer of a static binary needs: regular files and
//! directories with numeric owners, fixed modification times and no user or
//! group names, so the same entries always give the same bytes. Anything the
//! plain ustar header cannot hold (long names, huge files) is an error, never
//! a silently different archive.

use std::fmt;

/// Size of a header and of the unit data is padded to.
const BLOCK: usize = 512;
/// `name` field length; longer paths would need the `prefix` split or pax
/// headers, which no image we build needs.
const NAME_LEN: usize = 100;
/// Largest size the 11 octal digits of the `size` field hold (8 GiB - 1).
const MAX_SIZE: u64 = 0o77_777_777_777;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
}

/// One archive member. `path` is relative ("usr/bin/x", no leading slash);
/// directories are written with a trailing slash, as tar(1) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
}

/// Why an entry cannot be written.
#[derive(Debug, PartialEq, Eq)]
pub enum TarError {
    /// Empty, absolute, or with `.`/`..`/empty components or a NUL.
    BadPath(String),
    /// Longer than the ustar `name` field.
    PathTooLong(String),
    TooLarge(String),
    /// Mode bits beyond 0o7777, or an id that does not fit 7 octal digits.
    BadField(String),
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::BadPath(p) => write!(f, "tar: bad path {p:?}"),
            TarError::PathTooLong(p) => write!(f, "tar: path longer than {NAME_LEN} bytes: {p:?}"),
            TarError::TooLarge(p) => write!(f, "tar: file too large for ustar: {p:?}"),
            TarError::BadField(p) => write!(f, "tar: mode or owner out of range for {p:?}"),
        }
    }
}

impl std::error::Error for TarError {}

/// Write `value` as zero-padded octal filling `field` but its last byte,
/// which stays NUL. Returns false if it does not fit.
fn octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() != digits {
        return false;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    true
}

fn check_path(path: &str) -> Result<(), TarError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(TarError::BadPath(path.to_owned()));
    }
    Ok(())
}

fn header(entry: &Entry) -> Result<[u8; BLOCK], TarError> {
    check_path(&entry.path)?;
    let (name, size, typeflag) = match &entry.kind {
        Kind::Dir => (format!("{}/", entry.path), 0u64, b'5'),
        Kind::File(data) => (entry.path.clone(), data.len() as u64, b'0'),
    };
    if name.len() > NAME_LEN {
        return Err(TarError::PathTooLong(entry.path.clone()));
    }
    if size > MAX_SIZE {
        return Err(TarError::TooLarge(entry.path.clone()));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let fields_fit = entry.mode <= 0o7777
        && octal(&mut h[100..108], u64::from(entry.mode))
        && octal(&mut h[108..116], u64::from(entry.uid))
        && octal(&mut h[116..124], u64::from(entry.gid));
    if !fields_fit {
        return Err(TarError::BadField(entry.path.clone()));
    }
    octal(&mut h[124..136], size);
    // Modification time: always the epoch, so rebuilding at another time
    // (or from a checkout with other file times) gives the same bytes.
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // Checksum: sum of all header bytes with the checksum field read as
    // eight spaces, stored as six octal digits, NUL, space.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// The archive of `entries`, in the order given, with the two zero blocks
/// that end a tar archive.
pub fn archive(entries: &[Entry]) -> Result<Vec<u8>, TarError> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&header(e)?);
        if let Kind::File(data) = &e.kind {
            out.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            out.resize(out.len() + pad, 0);
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            kind: Kind::File(data.to_vec()),
        }
    }

    /// Reads back a header field as the octal number it holds.
    fn field(h: &[u8], range: std::ops::Range<usize>) -> u64 {
        let text: String = h[range]
            .iter()
            .take_while(|&&b| b != 0 && b != b' ')
            .map(|&b| b as char)
            .collect();
        u64::from_str_radix(&text, 8).unwrap()
    }

    #[test]
    fn header_fields_and_padding() {
        let out = archive(&[file("a/b", b"hello")]).unwrap();
        // Header, one padded data block, two end blocks.
        assert_eq!(out.len(), 4 * BLOCK);
        let h = &out[..BLOCK];
        assert_eq!(&h[..4], b"a/b\0");
        assert_eq!(field(h, 100..108), 0o755);
        assert_eq!(field(h, 124..136), 5);
        assert_eq!(field(h, 136..148), 0);
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(field(h, 148..156), sum);
        assert_eq!(&out[BLOCK..BLOCK + 5], b"hello");
        assert!(out[BLOCK + 5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn directories_get_a_slash_and_no_data() {
        let d = Entry {
            path: "var/lib".into(),
            mode: 0o700,
            uid: 65534,
            gid: 65534,
            kind: Kind::Dir,
        };
        let out = archive(&[d]).unwrap();
        assert_eq!(out.len(), 3 * BLOCK);
        assert_eq!(&out[..8], b"var/lib/");
        assert_eq!(out[156], b'5');
        assert_eq!(field(&out, 108..116), 65534);
    }

    #[test]
    fn same_entries_same_bytes_and_exact_multiple_needs_no_padding() {
        let entries = [file("x", &[7u8; BLOCK])];
        let a = archive(&entries).unwrap();
        assert_eq!(a, archive(&entries).unwrap());
        assert_eq!(a.len(), 4 * BLOCK);
    }

    #[test]
    fn refuses_what_ustar_cannot_hold() {
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a\0b"] {
            assert_eq!(
                archive(&[file(bad, b"")]),
                Err(TarError::BadPath(bad.into())),
                "{bad:?}"
            );
        }
        let long = "d/".repeat(50) + "f";
        assert_eq!(
            archive(&[file(&long, b"")]),
            Err(TarError::PathTooLong(long.clone()))
        );
        let mut e = file("f", b"");
        e.mode = 0o10000;
        assert!(matches!(archive(&[e]), Err(TarError::BadField(_))));
        let mut e = file("f", b"");
        e.uid = 0o10_000_000;
        assert!(matches!(archive(&[e]), Err(TarError::BadField(_))));
    }
}
