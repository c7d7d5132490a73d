//! State files: JSON with a format version, written atomically and
//! durably ([`crate::files::write_atomic`]: a fresh temp file, never one
//! found in place, renamed over the target) and read as something another
//! uid may have planted ([`crate::files::read_bounded`]: no link followed,
//! no FIFO opened for reading, regular files only, bounded size).
//!
//! ```
//! use mirage_sdk::service::state::{self, Versioned};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(deny_unknown_fields)]
//! struct Drift {
//!     version: u32,
//!     ppm: i32,
//! }
//! impl Versioned for Drift {
//!     const VERSION: u32 = 1;
//!     const WHAT: &'static str = "drift file";
//! }
//!
//! let text = state::to_json(&Drift { version: 1, ppm: -12 });
//! assert_eq!(state::from_json::<Drift>(text.as_bytes()).unwrap().ppm, -12);
//! let e = state::from_json::<Drift>(b"{\"version\": 2, \"ppm\": 1, \"new\": 0}").unwrap_err();
//! assert_eq!(e, "unsupported drift file version 2");
//! ```

use std::io;
use std::os::fd::AsFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A state file's content. The type has a `version: u32` field, written
/// as [`Versioned::VERSION`]; a file with another version is refused as
/// such before its other fields are looked at.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The format version this code writes and reads.
    const VERSION: u32;
    /// What the file is, for messages: "lease file".
    const WHAT: &'static str;
}

/// Largest state file [`load`] reads.
pub const MAX_STATE_LEN: usize = 64 * 1024;

/// The file's text: pretty JSON and a final newline.
pub fn to_json<T: Versioned>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("state serializes");
    s.push('\n');
    s
}

/// Parse a state file of version [`Versioned::VERSION`].
pub fn from_json<T: Versioned>(bytes: &[u8]) -> Result<T, String> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if version != T::VERSION {
        return Err(format!("unsupported {} version {version}", T::WHAT));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Write `dir/name` atomically and durably, readable by the owner only.
pub fn save<T: Versioned>(dir: impl AsFd, name: &str, v: &T) -> io::Result<()> {
    crate::files::write_atomic(dir, name, to_json(v).as_bytes(), 0o600)
}

/// Read `dir/name`: `Ok(None)` when absent; an error (to log, then start
/// afresh) when it is not a plain file, too large, or not this version.
pub fn load<T: Versioned>(dir: impl AsFd, name: &str) -> Result<Option<T>, String> {
    match crate::files::read_bounded(dir, name, MAX_STATE_LEN) {
        Ok(Some(bytes)) => from_json(&bytes).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Counter {
        version: u32,
        n: u64,
    }
    impl Versioned for Counter {
        const VERSION: u32 = 3;
        const WHAT: &'static str = "counter file";
    }

    #[test]
    fn versions_are_checked_first() {
        let c = Counter { version: 3, n: 9 };
        let text = to_json(&c);
        assert_eq!(text, "{\n  \"version\": 3,\n  \"n\": 9\n}\n");
        assert_eq!(from_json::<Counter>(text.as_bytes()).unwrap(), c);
        // A newer file with other fields: named as a version mismatch.
        let e = from_json::<Counter>(br#"{"version": 4, "count": "x"}"#).unwrap_err();
        assert_eq!(e, "unsupported counter file version 4");
        for bad in [
            &b"{}"[..],
            b"garbage",
            br#"{"version": 3}"#,
            br#"{"version": 3, "n": 1, "x": 0}"#,
        ] {
            assert!(
                from_json::<Counter>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn saved_files_load_and_planted_ones_are_refused() {
        let d = std::env::temp_dir().join(format!("mirage-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let dir = crate::files::open_dir(&d).unwrap();
        assert_eq!(load::<Counter>(&dir, "c.json").unwrap(), None);
        save(&dir, "c.json", &Counter { version: 3, n: 1 }).unwrap();
        assert_eq!(
            load::<Counter>(&dir, "c.json").unwrap(),
            Some(Counter { version: 3, n: 1 })
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(d.join("c.json")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A link planted in place of the file is neither followed when
        // read nor written through.
        std::fs::write(d.join("elsewhere"), to_json(&Counter { version: 3, n: 666 })).unwrap();
        std::fs::remove_file(d.join("c.json")).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("c.json")).unwrap();
        assert!(load::<Counter>(&dir, "c.json").is_err());
        save(&dir, "c.json", &Counter { version: 3, n: 2 }).unwrap();
        assert!(!d.join("c.json").is_symlink());
        assert_eq!(load::<Counter>(&dir, "c.json").unwrap().unwrap().n, 2);
        assert!(
            std::fs::read_to_string(d.join("elsewhere"))
                .unwrap()
                .contains("666")
        );
        std::fs::write(d.join("big.json"), vec![b' '; MAX_STATE_LEN + 1]).unwrap();
        assert!(load::<Counter>(&dir, "big.json").unwrap_err().contains("over"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
