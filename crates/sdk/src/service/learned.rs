//! `servers.json`: the servers a DHCP client learned, published in its
//! runtime directory (`/run/mirage/dhcp/servers.json`) for the services
//! that use them: mirage-ntp reads `ntp` (option 42), a DNS service reads
//! `dns` (option 6). One file for every consumer, so that a lease is
//! read once by the client that holds it and each consumer follows the
//! file, not the DHCP client's internals.
//!
//! The writer replaces the file atomically ([`write`]: a fresh temp file
//! renamed over it, so a reader never sees it torn) when a lease is
//! applied, and writes it with empty lists when the lease goes. A reader
//! polls it ([`read`]): absent or empty lists both mean "no server
//! learned". Readers ignore fields they do not know; a change that old
//! readers would misread takes a new `version`.
//!
//! ```
//! use mirage_sdk::service::learned::{self, LearnedServers};
//!
//! let dir = std::env::temp_dir().join(format!("sdk-learned-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let fd = mirage_sdk::files::open_dir(&dir).unwrap();
//! let path = dir.join(learned::SERVERS_FILE);
//! assert_eq!(learned::read(&path).unwrap(), None);
//! let s = LearnedServers::new("eth0", &["192.0.2.123".parse().unwrap()], &[]);
//! learned::write(&fd, &s).unwrap();
//! assert_eq!(learned::read(&path).unwrap(), Some(s));
//! learned::write(&fd, &LearnedServers::new("eth0", &[], &[])).unwrap();
//! assert!(learned::read(&path).unwrap().unwrap().ntp.is_empty());
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::{self, Versioned};

/// The file's name in the DHCP client's runtime directory.
pub const SERVERS_FILE: &str = "servers.json";
/// Largest file [`read`] accepts (a lease carries at most a few dozen
/// addresses).
pub const MAX_SERVERS_FILE_LEN: usize = 16 * 1024;

/// What `servers.json` holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LearnedServers {
    /// [`Versioned::VERSION`].
    pub version: u32,
    /// The interface whose lease this is.
    pub interface: String,
    /// NTP servers (DHCP option 42), in the server's order.
    pub ntp: Vec<IpAddr>,
    /// DNS servers (DHCP option 6), in the server's order.
    pub dns: Vec<IpAddr>,
    /// The lease's search domains (option 119, else option 15's domain),
    /// as the lease's policy accepted them; absent from files written
    /// before it existed (then empty). A reader checks them again before
    /// writing them anywhere (`crate::files::resolv_conf_text`).
    #[serde(default)]
    pub search: Vec<String>,
}

impl Versioned for LearnedServers {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "servers file";
}

impl LearnedServers {
    pub fn new(interface: &str, ntp: &[Ipv4Addr], dns: &[Ipv4Addr]) -> LearnedServers {
        LearnedServers {
            version: Self::VERSION,
            interface: interface.into(),
            ntp: ntp.iter().map(|&a| IpAddr::V4(a)).collect(),
            dns: dns.iter().map(|&a| IpAddr::V4(a)).collect(),
            search: Vec::new(),
        }
    }
}

/// Replace `servers.json` in `run_dir` atomically (runtime file: no
/// fsync; mode 0644, every service may read it).
pub fn write(run_dir: impl AsFd, servers: &LearnedServers) -> io::Result<()> {
    let text = state::to_json(servers);
    crate::files::write_atomic_runtime(run_dir, SERVERS_FILE, text.as_bytes(), 0o644)
}

/// Read the file at `path`: `Ok(None)` when it or its directory is
/// absent. Read as something another uid may have planted: the directory
/// walked with only root's links followed, the file itself never a link,
/// a FIFO or larger than [`MAX_SERVERS_FILE_LEN`].
pub fn read(path: &Path) -> Result<Option<LearnedServers>, String> {
    let shown = || path.display().to_string();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(format!("{}: not a file path", shown()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dir = match crate::files::open_dir_root_links_only(dir, None) {
        Ok((dir, _)) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", shown())),
    };
    match crate::files::read_bounded(&dir, name, MAX_SERVERS_FILE_LEN) {
        Ok(Some(bytes)) => state::from_json(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", shown())),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("{}: {e}", shown())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_other_versions_refused() {
        let text =
            br#"{"version":1,"interface":"eth0","ntp":["10.0.0.1","2001:db8::1"],"dns":[],"search":["x"]}"#;
        let s: LearnedServers = state::from_json(text).unwrap();
        assert_eq!(s.ntp.len(), 2);
        let e = state::from_json::<LearnedServers>(br#"{"version":2,"ntp":[]}"#).unwrap_err();
        assert_eq!(e, "unsupported servers file version 2");
        assert!(state::from_json::<LearnedServers>(br#"{"version":1,"ntp":["x"]}"#).is_err());
    }

    #[test]
    fn a_planted_link_or_fifo_is_refused_not_followed() {
        let dir = std::env::temp_dir().join(format!("sdk-learned-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SERVERS_FILE);
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(read(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(read(&path).is_err(), "a FIFO must not block or be read");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read(&dir.join(SERVERS_FILE)), Ok(None));
    }
}
