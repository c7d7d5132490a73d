//! State and published files, written so that a crash never leaves a torn
//! file behind: temp file in the same directory, write, fsync, rename over the
//! target, fsync the directory (DESIGN.md section 1, "nothing lost").
//!
//! Everything works relative to directory file descriptors: the actuator gets
//! its directories as fds at start and may live in a mount namespace where
//! the host paths do not exist.

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use mirage_ipc::{Instant, Lease, PublishedStatus};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// Open a directory for use with the `*_at` writers below.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Replace `dir/name` with `contents` atomically and durably.
pub fn write_atomic(dir: impl AsFd, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    replace(dir, name, contents, mode, true)
}

/// Replace `dir/name` atomically, without fsync: for runtime files
/// (status.json, metrics.prom) that readers must never see torn but that
/// need not survive a power cut (they live on /run, usually tmpfs). Saves
/// the syncs on every state change, which would otherwise sit between a
/// DHCPACK and the address being configured.
pub fn write_atomic_runtime(dir: impl AsFd, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    replace(dir, name, contents, mode, false)
}

fn replace(dir: impl AsFd, name: &str, contents: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    validate_name(name)?;
    let tmp = format!(".{name}.tmp");
    // A fresh temp file, never one found in place: the directory may be
    // writable by another uid than ours (the roles' one, when the root
    // supervisor writes the DUID), which could have left a FIFO there (an
    // open that blocks forever) or a link to some other file.
    match rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let file = rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?;
    let result = (|| -> io::Result<()> {
        let mut rest = contents;
        while !rest.is_empty() {
            let n = rustix::io::write(&file, rest)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            rest = &rest[n..];
        }
        // The mode given at creation is filtered by the umask; make it exact.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
        if durable {
            rustix::fs::fsync(&file)?;
        }
        Ok(())
    })();
    drop(file);
    if let Err(e) = result {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    if let Err(e) = rustix::fs::renameat(&dir, tmp.as_str(), &dir, name) {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    if durable {
        rustix::fs::fsync(&dir)?;
    }
    Ok(())
}

/// Rewrite an open file in place: write everything at offset 0, cut the
/// rest, fsync. Not atomic for concurrent readers, so it is only the fallback
/// for targets that cannot be renamed over: a bind-mounted file (containers
/// mount /etc/resolv.conf that way: rename fails with EBUSY) or a directory
/// the role may not write.
pub fn rewrite_in_place(file: impl AsFd, contents: &[u8]) -> io::Result<()> {
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))?;
    let mut rest = contents;
    while !rest.is_empty() {
        let n = rustix::io::write(&file, rest)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        rest = &rest[n..];
    }
    rustix::fs::ftruncate(&file, contents.len() as u64)?;
    rustix::fs::fsync(&file)?;
    Ok(())
}

/// Remove `dir/name` if present, durably.
pub fn remove(dir: impl AsFd, name: &str) -> io::Result<()> {
    validate_name(name)?;
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) => Ok(rustix::fs::fsync(&dir)?),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Read `dir/name`, refusing files over `max` bytes. `Ok(None)` if absent.
pub fn read_bounded(dir: impl AsFd, name: &str, max: usize) -> io::Result<Option<Vec<u8>>> {
    validate_name(name)?;
    // NONBLOCK: opening a FIFO someone put there must not hang us (it has
    // no effect on regular files); anything but a regular file is refused.
    let file = match rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&file)?.st_mode)
        != rustix::fs::FileType::RegularFile
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not a regular file"),
        ));
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = rustix::io::read(&file, &mut buf)?;
        if n == 0 {
            return Ok(Some(out));
        }
        if out.len() + n > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is over {max} bytes"),
            ));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Only plain names in the directory: no separators, no dot-dot.
fn validate_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad file name {name:?}"),
        ));
    }
    Ok(())
}

/// resolv.conf for a lease (resolv.conf(5)). Names were validated by the
/// lease policy, so no value can add a directive; only what a resolver uses
/// is written: `search` (option 119, else option 15) and `nameserver` lines.
pub fn render_resolv_conf(interface: &str, lease: &Lease) -> String {
    let mut s = format!("# Generated by mirage-dhcp for {interface}; changes are overwritten.\n");
    let search: Vec<&str> = if lease.search.is_empty() {
        lease.domain_name.iter().map(|d| d.as_str()).collect()
    } else {
        lease.search.iter().map(|d| d.as_str()).collect()
    };
    if !search.is_empty() {
        let _ = writeln!(s, "search {}", search.join(" "));
    }
    for ns in &lease.dns_servers {
        let _ = writeln!(s, "nameserver {ns}");
    }
    s
}

/// Current version of the lease file format.
pub const LEASE_FILE_VERSION: u32 = 1;

/// The lease as stored under the state directory. Boot-time instants mean
/// nothing after a reboot, so the file carries the wall-clock time of the
/// lease start and [`StoredLease::rebase`] maps it back onto this boot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredLease {
    pub version: u32,
    pub interface: String,
    /// Milliseconds since the Unix epoch when the lease started.
    pub acquired_unix_ms: u64,
    pub lease: Lease,
}

impl StoredLease {
    pub fn new(interface: &str, lease: &Lease, now_boot: Instant, now_unix_ms: u64) -> Self {
        let age = now_boot.since(lease.acquired_at);
        StoredLease {
            version: LEASE_FILE_VERSION,
            interface: interface.to_string(),
            acquired_unix_ms: now_unix_ms.saturating_sub(age),
            lease: lease.clone(),
        }
    }

    /// The lease on this boot's clock. A lease that started before this boot
    /// has its times shortened by the part that lies before boot time zero.
    pub fn rebase(&self, now_boot: Instant, now_unix_ms: u64) -> Lease {
        let age = now_unix_ms.saturating_sub(self.acquired_unix_ms);
        let mut lease = self.lease.clone();
        if age <= now_boot.0 {
            lease.acquired_at = Instant(now_boot.0 - age);
        } else {
            let before_boot_secs = u32::try_from((age - now_boot.0).div_ceil(1000)).unwrap_or(u32::MAX);
            let shorten = |v: u32| {
                if v == mirage_ipc::INFINITE_LEASE {
                    v
                } else {
                    v.saturating_sub(before_boot_secs)
                }
            };
            lease.lease_secs = shorten(lease.lease_secs);
            lease.renew_secs = shorten(lease.renew_secs);
            lease.rebind_secs = shorten(lease.rebind_secs);
            lease.acquired_at = Instant(0);
        }
        lease
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("lease serializes");
        s.push('\n');
        s
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let stored: StoredLease = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if stored.version != LEASE_FILE_VERSION {
            return Err(format!("unsupported lease file version {}", stored.version));
        }
        Ok(stored)
    }
}

/// status.json: the published view, for `mirage-dhcp status` and operators.
pub fn render_status_json(p: &PublishedStatus) -> String {
    let s = &p.status;
    let lease = s.lease.as_ref().map(|l| {
        serde_json::json!({
            "address": l.address.to_string(),
            "prefix_len": l.prefix_len,
            "server_id": l.server_id.to_string(),
            "routes": l.routes.iter().map(|r| serde_json::json!({
                "destination": format!("{}/{}", r.destination, r.prefix_len),
                "gateway": r.gateway.to_string(),
            })).collect::<Vec<_>>(),
            "dns_servers": l.dns_servers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "ntp_servers": l.ntp_servers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "domain_name": l.domain_name,
            "search": l.search,
            "hostname": l.hostname,
            "mtu": l.mtu,
            "lease_secs": l.lease_secs,
            "remaining_secs": l.remaining_secs(p.now),
            "renew_in_secs": l.renew_at().since(p.now) / 1000,
            "rebind_in_secs": l.rebind_at().since(p.now) / 1000,
        })
    });
    let c = &s.counters;
    let v = serde_json::json!({
        "interface": p.interface,
        "state": s.state.as_str(),
        "sandbox": p.sandbox,
        "lease": lease,
        "engine_restarts": p.engine_restarts,
        "frames_refused": p.frames_refused,
        "intents_refused": p.intents_refused,
        "counters": {
            "frames_received": c.frames_received,
            "frames_dropped": c.frames_dropped,
            "offers": c.offers,
            "acks": c.acks,
            "naks": c.naks,
            "leases_refused": c.leases_refused,
            "renewals": c.renewals,
            "rebinds": c.rebinds,
            "declines": c.declines,
            "expiries": c.expiries,
            "transmitted": c.transmitted,
            "conflicts": c.conflicts,
            "transmits_limited": c.transmits_limited,
        },
    });
    let mut out = serde_json::to_string_pretty(&v).expect("status serializes");
    out.push('\n');
    out
}

/// metrics.prom in the Prometheus text exposition format, for the node
/// exporter's textfile collector.
pub fn render_metrics(p: &PublishedStatus) -> String {
    let s = &p.status;
    let c = &s.counters;
    let iface = escape_label(&p.interface);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP mirage_dhcp_{name} {help}");
        let _ = writeln!(out, "# TYPE mirage_dhcp_{name} gauge");
        let _ = writeln!(out, "mirage_dhcp_{name}{{interface=\"{iface}\"}} {value}");
    };
    gauge(
        "bound",
        "1 when a lease is held and applied.",
        u8::from(s.lease.is_some()).to_string(),
    );
    let remaining = s.lease.as_ref().map_or(0, |l| l.remaining_secs(p.now));
    gauge(
        "lease_remaining_seconds",
        "Seconds until the lease expires.",
        remaining.to_string(),
    );
    gauge(
        "engine_restarts",
        "Times the engine role was restarted.",
        p.engine_restarts.to_string(),
    );
    let _ = writeln!(out, "# HELP mirage_dhcp_state Current client state (RFC 2131).");
    let _ = writeln!(out, "# TYPE mirage_dhcp_state gauge");
    let _ = writeln!(
        out,
        "mirage_dhcp_state{{interface=\"{iface}\",state=\"{}\"}} 1",
        s.state.as_str()
    );
    let _ = writeln!(out, "# HELP mirage_dhcp_sandbox Sandbox in force for the engine.");
    let _ = writeln!(out, "# TYPE mirage_dhcp_sandbox gauge");
    let _ = writeln!(
        out,
        "mirage_dhcp_sandbox{{interface=\"{iface}\",kind=\"{}\"}} 1",
        escape_label(&p.sandbox)
    );
    let counters: [(&str, &str, u64); 15] = [
        (
            "frames_received_total",
            "Frames given to the engine.",
            c.frames_received,
        ),
        (
            "frames_dropped_total",
            "Frames the engine dropped.",
            c.frames_dropped,
        ),
        ("offers_total", "DHCPOFFERs accepted.", c.offers),
        ("acks_total", "DHCPACKs accepted.", c.acks),
        ("naks_total", "DHCPNAKs honoured.", c.naks),
        (
            "leases_refused_total",
            "Offers or ACKs refused by the lease policy.",
            c.leases_refused,
        ),
        ("renewals_total", "Leases renewed.", c.renewals),
        ("rebinds_total", "Leases rebound.", c.rebinds),
        ("declines_total", "DHCPDECLINEs sent.", c.declines),
        ("expiries_total", "Leases that expired.", c.expiries),
        (
            "transmitted_total",
            "Frames the engine asked to send.",
            c.transmitted,
        ),
        ("conflicts_total", "Address conflicts detected.", c.conflicts),
        (
            "transmits_limited_total",
            "Frames the engine did not send: over its rate bound.",
            c.transmits_limited,
        ),
        (
            "frames_refused_total",
            "Outbound frames refused by the network role.",
            p.frames_refused,
        ),
        (
            "intents_refused_total",
            "Intents refused by the actuator.",
            p.intents_refused,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP mirage_dhcp_{name} {help}");
        let _ = writeln!(out, "# TYPE mirage_dhcp_{name} counter");
        let _ = writeln!(out, "mirage_dhcp_{name}{{interface=\"{iface}\"}} {value}");
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirage_ipc::{Route, Status};
    use std::net::Ipv4Addr;

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            routes: vec![Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
            }],
            dns_servers: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
            ntp_servers: vec![],
            domain_name: Some("example.org".into()),
            search: vec!["a.example.org".into(), "example.org".into()],
            hostname: None,
            mtu: Some(1400),
            lease_secs: 3600,
            renew_secs: 1800,
            rebind_secs: 3150,
            acquired_at: Instant(5_000),
        }
    }

    fn tempdir() -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mirage-files-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempdir();
        let dir = open_dir(&d).unwrap();
        write_atomic(&dir, "x", b"one", 0o644).unwrap();
        write_atomic_runtime(&dir, "x", b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(d.join("x")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x")]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(d.join("x")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(write_atomic(&dir, "../escape", b"", 0o644).is_err());
        assert_eq!(read_bounded(&dir, "x", 10).unwrap().unwrap(), b"two");
        assert!(read_bounded(&dir, "x", 2).is_err());
        assert!(read_bounded(&dir, "absent", 2).unwrap().is_none());
        remove(&dir, "x").unwrap();
        remove(&dir, "x").unwrap();
        std::fs::write(d.join("y"), b"a much longer old content").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.join("y"))
            .unwrap();
        rewrite_in_place(&f, b"short").unwrap();
        assert_eq!(std::fs::read(d.join("y")).unwrap(), b"short");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn planted_fifos_and_links_neither_hang_nor_get_written_through() {
        let d = tempdir();
        let dir = open_dir(&d).unwrap();
        // Opening a FIFO without O_NONBLOCK blocks until a writer comes: run
        // on a thread so that a regression fails the test instead of hanging it.
        rustix::fs::mknodat(
            &dir,
            "lease",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        rustix::fs::mknodat(
            &dir,
            ".x.tmp",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(d.join("victim"), b"keep").unwrap();
        std::fs::hard_link(d.join("victim"), d.join(".y.tmp")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = d.clone();
        std::thread::spawn(move || {
            let dir = open_dir(&path).unwrap();
            let read = read_bounded(&dir, "lease", 1024).map_err(|e| e.kind());
            let write_x = write_atomic(&dir, "x", b"new", 0o600).map_err(|e| e.kind());
            let write_y = write_atomic(&dir, "y", b"new", 0o600).map_err(|e| e.kind());
            let _ = tx.send((read, write_x, write_y));
        });
        let (read, write_x, write_y) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a FIFO in the directory blocked the reader or the writer");
        assert_eq!(read, Err(io::ErrorKind::InvalidData));
        assert_eq!(write_x, Ok(()));
        assert_eq!(write_y, Ok(()));
        assert_eq!(std::fs::read(d.join("x")).unwrap(), b"new");
        assert_eq!(std::fs::read(d.join("y")).unwrap(), b"new");
        // The file the planted temp name was linked to is untouched.
        assert_eq!(std::fs::read(d.join("victim")).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resolv_conf_lists_search_then_servers() {
        let text = render_resolv_conf("eth0", &lease());
        assert!(text.contains("search a.example.org example.org\n"));
        assert!(text.contains("nameserver 10.0.0.1\nnameserver 10.0.0.2\n"));
        let mut l = lease();
        l.search.clear();
        assert!(render_resolv_conf("eth0", &l).contains("search example.org\n"));
    }

    #[test]
    fn stored_lease_round_trips_and_rebases() {
        let l = lease();
        // Written at boot time 65 s (60 s after the lease started), wall 1_000_000 s.
        let stored = StoredLease::new("eth0", &l, Instant(65_000), 1_000_000_000);
        assert_eq!(stored.acquired_unix_ms, 999_940_000);
        let back = StoredLease::from_json(stored.to_json().as_bytes()).unwrap();
        assert_eq!(back, stored);
        // Same boot, 10 s later.
        let same = back.rebase(Instant(75_000), 1_000_010_000);
        assert_eq!(same.acquired_at, Instant(5_000));
        assert_eq!(same.lease_secs, 3600);
        // After a reboot: boot clock at 20 s, wall 100 s after the write.
        let rebooted = back.rebase(Instant(20_000), 1_000_100_000);
        assert_eq!(rebooted.acquired_at, Instant(0));
        assert_eq!(rebooted.lease_secs, 3600 - 140);
        assert!(StoredLease::from_json(b"{\"version\":1}").is_err());
        assert!(StoredLease::from_json(b"garbage").is_err());
    }

    #[test]
    fn status_and_metrics_render() {
        let p = PublishedStatus {
            status: Status {
                state: mirage_ipc::ClientState::Bound,
                lease: Some(lease()),
                ..Default::default()
            },
            interface: "eth0".into(),
            sandbox: "seccomp".into(),
            now: Instant(65_000),
            ..Default::default()
        };
        let j: serde_json::Value = serde_json::from_str(&render_status_json(&p)).unwrap();
        assert_eq!(j["state"], "bound");
        assert_eq!(j["lease"]["address"], "10.0.0.5");
        assert_eq!(j["lease"]["remaining_secs"], 3540);
        let m = render_metrics(&p);
        assert!(m.contains("mirage_dhcp_bound{interface=\"eth0\"} 1\n"));
        assert!(m.contains("mirage_dhcp_lease_remaining_seconds{interface=\"eth0\"} 3540\n"));
        assert!(m.contains("mirage_dhcp_state{interface=\"eth0\",state=\"bound\"} 1\n"));
    }
}
