//! State and published files, written so that a crash never leaves a torn
//! file behind: temp file in the same directory, write, fsync, rename over the
//! target, fsync the directory (DESIGN.md section 1, "nothing lost").
//!
//! Everything works relative to directory file descriptors: the actuator gets
//! its directories as fds at start and may live in a mount namespace where
//! the host paths do not exist.

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use mirage_ipc::{Instant, Lease, PublishedStatus};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::service::metrics::Metrics;
use crate::service::state::{self, Versioned};

/// Open a directory for use with the `*_at` writers below.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Symbolic links followed on the way to one target, as the kernel allows
/// (`MAXSYMLINKS`, path_resolution(7)).
const MAX_LINKS: u32 = 40;

fn refused(what: &std::path::Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", what.display()),
    )
}

/// Open directory `path` walking it one component at a time, each opened
/// with `O_NOFOLLOW`, and follow only symbolic links that root owns.
///
/// A root process that opens a path with the plain calls follows every link
/// on it, also links that a less privileged uid planted in a directory it
/// can write (the roles' own directories, /tmp): root would then open or
/// create whatever the link names. Links that root made (/var/run -> /run,
/// systemd's /var/lib/NAME -> private/NAME) still work. With `create`,
/// missing directories are made with that mode (filtered by the umask), by
/// `mkdirat` beneath the directory walked so far, never through a link.
///
/// Returns the directory (opened for reading) and whether its last
/// component was created by this call.
pub fn open_dir_root_links_only(path: &Path, create: Option<u32>) -> io::Result<(OwnedFd, bool)> {
    let mut links = 0;
    let (dir, created) = walk_dirs(path, create, &mut links)?;
    let dir = rustix::fs::openat(
        &dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dir, created))
}

/// `path` split into its components, "." and empty ones dropped.
fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".")
}

fn start_of(path: &[u8]) -> io::Result<OwnedFd> {
    let at = if path.first() == Some(&b'/') { "/" } else { "." };
    Ok(rustix::fs::open(
        at,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The walk of [`open_dir_root_links_only`]; returns an `O_PATH` descriptor.
fn walk_dirs(path: &Path, create: Option<u32>, links: &mut u32) -> io::Result<(OwnedFd, bool)> {
    use std::collections::VecDeque;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let mut cur = start_of(bytes)?;
    let mut todo: VecDeque<Vec<u8>> = components(bytes).map(<[u8]>::to_vec).collect();
    let mut created = false;
    while let Some(name) = todo.pop_front() {
        created = false;
        if name == b".." {
            cur = rustix::fs::openat(
                &cur,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            continue;
        }
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&cur, name.as_slice(), flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create.is_some() => {
                let mode = Mode::from_raw_mode(create.unwrap_or(0o700));
                match rustix::fs::mkdirat(&cur, name.as_slice(), mode) {
                    Ok(()) => created = true,
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&cur, name.as_slice(), flags, Mode::empty())?
            }
            r => r?,
        };
        let st = rustix::fs::fstat(&fd)?;
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => cur = fd,
            rustix::fs::FileType::Symlink => {
                let target = follow_link(path, &fd, &st, links)?;
                if target.first() == Some(&b'/') {
                    cur = start_of(&target)?;
                }
                for c in components(&target).rev() {
                    todo.push_front(c.to_vec());
                }
            }
            _ => {
                return Err(refused(
                    path,
                    format!("{} is not a directory", String::from_utf8_lossy(&name)),
                ));
            }
        }
    }
    Ok((cur, created))
}

/// The target of the link `fd` (an `O_PATH|O_NOFOLLOW` descriptor), if
/// root owns it. A second name for a root link (a hard link to it, which
/// another uid can make where `fs.protected_hardlinks` is 0) is refused too.
fn follow_link(path: &Path, fd: &OwnedFd, st: &rustix::fs::Stat, links: &mut u32) -> io::Result<Vec<u8>> {
    if st.st_uid != 0 {
        return Err(refused(
            path,
            format!(
                "a symbolic link on the way is owned by uid {}; only links owned by root are followed",
                st.st_uid
            ),
        ));
    }
    if st.st_nlink != 1 {
        return Err(refused(
            path,
            "a symbolic link on the way has several names".into(),
        ));
    }
    *links += 1;
    if *links > MAX_LINKS {
        return Err(rustix::io::Errno::LOOP.into());
    }
    Ok(rustix::fs::readlinkat(fd, "", Vec::new())?.into_bytes())
}

/// A file opened for writing by [`open_file_root_links_only`].
#[derive(Debug)]
pub struct WritableFile {
    /// The directory that really holds the file (links resolved).
    pub dir: OwnedFd,
    pub file: OwnedFd,
    /// The file's name in `dir`.
    pub name: String,
    /// Whether this call created the file.
    pub created: bool,
    /// Owner of `dir`.
    pub dir_owner: u32,
    /// Whether anyone but root may add names to `dir` (another owner, or
    /// write access for a group other than root's or for everyone): the
    /// file may then have been put (or hard-linked) there by someone else.
    pub dir_shared: bool,
}

/// Open (or create, with `mode`) the regular file `path` for writing, with
/// the rules of [`open_dir_root_links_only`]: links are followed only when
/// root owns them, also the last one, and a new file is created with
/// `O_EXCL|O_NOFOLLOW` in the directory that really holds it, so nothing is
/// ever created through a link. The directories on the way are not created.
pub fn open_file_root_links_only(path: &Path, mode: u32) -> io::Result<WritableFile> {
    use std::os::unix::ffi::OsStrExt;
    let mut links = 0;
    let mut at = path.to_path_buf();
    loop {
        let (Some(parent), Some(name)) = (at.parent(), at.file_name()) else {
            return Err(refused(path, "not a file path".into()));
        };
        let name = name.to_owned();
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let (dir, _) = walk_dirs(parent, None, &mut links)?;
        let dir = rustix::fs::openat(
            &dir,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dst = rustix::fs::fstat(&dir)?;
        let dir_owner = dst.st_uid;
        let dir_shared =
            dst.st_uid != 0 || dst.st_mode & 0o002 != 0 || (dst.st_mode & 0o020 != 0 && dst.st_gid != 0);
        let name_str = name
            .to_str()
            .ok_or_else(|| refused(path, "the file name is not UTF-8".into()))?
            .to_owned();
        let write = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match rustix::fs::openat(
            &dir,
            name.as_bytes(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Err(rustix::io::Errno::NOENT) => {
                let file = rustix::fs::openat(
                    &dir,
                    name.as_bytes(),
                    write | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(mode),
                )?;
                return Ok(WritableFile {
                    dir,
                    file,
                    name: name_str,
                    created: true,
                    dir_owner,
                    dir_shared,
                });
            }
            Err(e) => return Err(e.into()),
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
                    let target = follow_link(path, &fd, &st, &mut links)?;
                    let target = Path::new(std::ffi::OsStr::from_bytes(&target));
                    at = parent.join(target);
                    continue;
                }
                // ELOOP here: the name became a link since the check.
                let file = rustix::fs::openat(&dir, name.as_bytes(), write, Mode::empty())?;
                let st = rustix::fs::fstat(&file)?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
                    return Err(refused(path, "not a regular file".into()));
                }
                return Ok(WritableFile {
                    dir,
                    file,
                    name: name_str,
                    created: false,
                    dir_owner,
                    dir_shared,
                });
            }
        }
    }
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

/// Replace `dir/name` atomically ([`write_atomic`]), or, where it cannot
/// be renamed over (a bind-mounted resolv.conf, a directory the role may
/// not write), rewrite `file`, the same file opened for writing, in place
/// ([`rewrite_in_place`]).
pub fn replace_or_rewrite(
    dir: impl AsFd,
    name: &str,
    file: impl AsFd,
    contents: &[u8],
    mode: u32,
) -> io::Result<()> {
    write_atomic(dir, name, contents, mode).or_else(|e| {
        log::debug!("{name} cannot be replaced ({e}); rewriting it in place");
        rewrite_in_place(file, contents)
    })
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

/// Most `search` domains written: glibc before 2.26 kept 6 (MAXDNSRCH) and
/// ignored the rest; older resolvers still do.
pub const MAX_SEARCH_DOMAINS: usize = 6;

/// Longest `search` line written, its newline included. musl reads
/// resolv.conf lines into 256 bytes and skips a longer line whole (the
/// search list is lost), glibc before 2.26 kept 256 bytes of it, and a
/// resolver that reads fixed-size chunks (dnsmasq: 1024 bytes) takes the
/// rest of a longer line as a line of its own: a `nameserver` planted at
/// the cut becomes a directive.
pub const MAX_SEARCH_LINE: usize = 255;

/// Words that start a directive in some resolver's resolv.conf: glibc and
/// musl (resolv.conf(5)), the BSDs (`lookup`, `family`), and dnsmasq, which
/// takes `server` for `nameserver`.
pub const RESOLV_KEYWORDS: [&str; 8] = [
    "nameserver",
    "server",
    "domain",
    "search",
    "sortlist",
    "options",
    "lookup",
    "family",
];

/// Is `word` a resolv.conf keyword (in any case, with or without a final
/// dot), so that a resolver reading it at the start of a line would take it
/// for a directive?
pub fn is_resolv_keyword(word: &str) -> bool {
    let w = word.strip_suffix('.').unwrap_or(word);
    RESOLV_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

/// resolv.conf text for a lease, and the search domains left out of it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ResolvConf {
    pub text: String,
    /// Search domains not written: a keyword, not a plain DNS name, past
    /// [`MAX_SEARCH_DOMAINS`], or not fitting in [`MAX_SEARCH_LINE`].
    pub dropped: Vec<String>,
}

/// resolv.conf for a lease (resolv.conf(5)): `search` (option 119, else
/// option 15) and `nameserver` lines, nothing else. Names were validated by
/// the lease policy; they are checked again here, because this text is read
/// by every resolver on the host: every line fits what glibc and musl read
/// (so no resolver splits one), and no word is a directive keyword (so a
/// split that did happen could not start a directive).
pub fn resolv_conf(interface: &str, lease: &Lease) -> ResolvConf {
    let servers: Vec<IpAddr> = lease.dns_servers.iter().map(|&a| IpAddr::V4(a)).collect();
    resolv_conf_naming(interface, lease, &servers)
}

/// [`resolv_conf`] with `nameservers` instead of the lease's DNS servers
/// (the lease's search domains kept): for a host whose resolver is a local
/// stub that forwards to the lease's servers.
pub fn resolv_conf_naming(interface: &str, lease: &Lease, nameservers: &[IpAddr]) -> ResolvConf {
    // Interface names come from the kernel, which refuses spaces and
    // control characters; kept to one comment line whatever happens.
    let iface: String = interface
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let given: Vec<&str> = if lease.search.is_empty() {
        lease.domain_name.iter().map(|d| d.as_str()).collect()
    } else {
        lease.search.iter().map(|d| d.as_str()).collect()
    };
    resolv_conf_text(
        &format!("Generated by mirage-dhcp for {iface}; changes are overwritten."),
        &given,
        nameservers,
    )
}

/// resolv.conf text: a comment line (`comment`, one line of printable
/// ASCII), `search` with what of `search` is safe to write (see
/// [`resolv_conf`]), then one `nameserver` line each (an address, or a
/// link-local one with its interface, `fe80::1%eth0`, which glibc and
/// musl read).
pub fn resolv_conf_text<T: std::fmt::Display>(
    comment: &str,
    search: &[&str],
    nameservers: &[T],
) -> ResolvConf {
    let comment: String = comment
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect();
    let mut text = format!("# {comment}\n");
    let mut line = String::from("search");
    let mut kept = 0;
    let mut dropped = Vec::new();
    for &name in search {
        // A space, the name and the newline.
        let fits = line.len() + 1 + name.len() < MAX_SEARCH_LINE;
        if kept == MAX_SEARCH_DOMAINS
            || !fits
            || is_resolv_keyword(name)
            || !mirage_ipc::is_valid_domain_name(name)
        {
            dropped.push(name.to_string());
            continue;
        }
        line.push(' ');
        line.push_str(name);
        kept += 1;
    }
    if kept > 0 {
        text.push_str(&line);
        text.push('\n');
    }
    for ns in nameservers {
        let _ = writeln!(text, "nameserver {ns}");
    }
    ResolvConf { text, dropped }
}

/// The text of [`resolv_conf`].
pub fn render_resolv_conf(interface: &str, lease: &Lease) -> String {
    resolv_conf(interface, lease).text
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
        state::to_json(self)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        state::from_json(bytes)
    }
}

impl Versioned for StoredLease {
    const VERSION: u32 = LEASE_FILE_VERSION;
    const WHAT: &'static str = "lease file";
}

/// status.json: the published view, for `mirage-dhcp status` and operators.
/// `search_dropped`: the search domains the actuator left out of
/// resolv.conf (see [`resolv_conf`]), which only it knows.
pub fn render_status_json(p: &PublishedStatus, search_dropped: &[String]) -> String {
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
            "search_dropped": search_dropped,
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
        "sandbox_reason": p.sandbox_reason,
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
            "routes_dropped": c.routes_dropped,
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
    let iface = [("interface", p.interface.as_str())];
    let mut m = Metrics::new("dhcp");
    m.gauge(
        "bound",
        "1 when a lease is held and applied.",
        &iface,
        s.lease.is_some(),
    );
    let remaining = s.lease.as_ref().map_or(0, |l| l.remaining_secs(p.now));
    m.gauge(
        "lease_remaining_seconds",
        "Seconds until the lease expires.",
        &iface,
        remaining,
    );
    m.gauge(
        "engine_restarts",
        "Times the engine role was restarted.",
        &iface,
        p.engine_restarts,
    );
    m.gauge(
        "state",
        "Current client state (RFC 2131).",
        &[iface[0], ("state", s.state.as_str())],
        1,
    );
    m.gauge(
        "sandbox",
        "Sandbox in force for the engine.",
        &[iface[0], ("kind", p.sandbox.as_str())],
        1,
    );
    let counters: [(&str, &str, u64); 16] = [
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
            "routes_dropped_total",
            "Routes from offers and ACKs dropped by the lease policy.",
            c.routes_dropped,
        ),
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
        m.counter(name, help, &iface, value);
    }
    m.finish()
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

    /// A symbolic link at `at` to `target`, owned by `uid`.
    fn link_owned_by(target: &str, at: &std::path::Path, uid: u32) {
        std::os::unix::fs::symlink(target, at).unwrap();
        std::os::unix::fs::lchown(at, Some(uid), Some(uid)).unwrap();
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn directory_walk_follows_root_links_only_and_creates_beneath() {
        assert!(is_root(), "needs root (lchown)");
        let d = tempdir();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/marker"), b"m").unwrap();
        link_owned_by("real", &d.join("by-root"), 0);
        link_owned_by("real", &d.join("by-role"), 65534);
        // A root-owned link, also in the middle of the path and absolute.
        let (dir, created) = open_dir_root_links_only(&d.join("by-root"), None).unwrap();
        assert!(!created);
        assert_eq!(read_bounded(&dir, "marker", 8).unwrap().unwrap(), b"m");
        link_owned_by(d.join("real").to_str().unwrap(), &d.join("abs"), 0);
        let (dir, created) = open_dir_root_links_only(&d.join("abs/sub"), Some(0o700)).unwrap();
        assert!(created);
        assert!(d.join("real/sub").is_dir());
        drop(dir);
        // Anyone else's link, anywhere on the path: refused, nothing created.
        for p in [
            d.join("by-role"),
            d.join("by-role/new"),
            d.join("by-root/../by-role/new"),
        ] {
            let e = open_dir_root_links_only(&p, Some(0o700)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{p:?}: {e}");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
        assert!(!d.join("real/new").exists());
        // Missing without `create`; a file where a directory should be.
        assert_eq!(
            open_dir_root_links_only(&d.join("absent"), None)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert!(open_dir_root_links_only(&d.join("real/marker"), None).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn file_open_never_writes_or_creates_through_a_foreign_link() {
        assert!(is_root(), "needs root (lchown)");
        let d = tempdir();
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(d.join("root-only")).unwrap();
        std::fs::set_permissions(d.join("root-only"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(d.join("root-only/secret"), b"secret").unwrap();
        std::fs::set_permissions(d.join("root-only/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = d.join("root-only/secret");
        link_owned_by(secret.to_str().unwrap(), &d.join("to-secret"), 65534);
        link_owned_by(
            d.join("root-only/new").to_str().unwrap(),
            &d.join("to-new"),
            65534,
        );
        for name in ["to-secret", "to-new"] {
            let e = open_file_root_links_only(&d.join(name), 0o644).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{name}: {e}");
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
        assert!(!d.join("root-only/new").exists());
        // A root-owned link (/etc/resolv.conf -> /run/...) leads to the file
        // and to the directory that really holds it.
        std::fs::create_dir(d.join("run")).unwrap();
        std::fs::write(d.join("run/stub.conf"), b"old").unwrap();
        link_owned_by("run/stub.conf", &d.join("resolv.conf"), 0);
        let w = open_file_root_links_only(&d.join("resolv.conf"), 0o644).unwrap();
        assert!(!w.created);
        assert_eq!(w.name, "stub.conf");
        rewrite_in_place(&w.file, b"new").unwrap();
        assert_eq!(std::fs::read(d.join("run/stub.conf")).unwrap(), b"new");
        write_atomic(&w.dir, &w.name, b"newer", 0o644).unwrap();
        assert_eq!(std::fs::read(d.join("run/stub.conf")).unwrap(), b"newer");
        // A missing file is created in place; a dangling root link creates
        // nothing either (O_EXCL refuses to go through it).
        let w = open_file_root_links_only(&d.join("fresh.conf"), 0o644).unwrap();
        assert!(w.created && d.join("fresh.conf").is_file());
        link_owned_by("run/dangling", &d.join("dangling.conf"), 0);
        let w = open_file_root_links_only(&d.join("dangling.conf"), 0o644).unwrap();
        assert!(w.created && d.join("run/dangling").is_file());
        // A FIFO or directory is not a file to write.
        rustix::fs::mknodat(
            open_dir(&d).unwrap(),
            "fifo",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(open_file_root_links_only(&d.join("fifo"), 0o644).is_err());
        assert!(open_file_root_links_only(&d.join("run"), 0o644).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resolv_conf_can_name_a_stub_and_keep_the_search_domains() {
        let stub: IpAddr = "127.0.0.53".parse().unwrap();
        let text = resolv_conf_naming("eth0", &lease(), &[stub]).text;
        assert!(
            text.contains("search a.example.org example.org\nnameserver 127.0.0.53\n"),
            "{text}"
        );
        assert!(!text.contains("10.0.0.1"), "{text}");
        let t = resolv_conf_text(
            "uplink\nnameserver 6.6.6.6",
            &["search", "ok.example"],
            &[] as &[IpAddr],
        );
        assert_eq!(t.text, "# uplink?nameserver 6.6.6.6\nsearch ok.example\n");
        assert_eq!(t.dropped, ["search"]);
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

    /// The directives a resolver finds when it reads `text` with fgets into
    /// a buffer of `buf` bytes, as glibc, musl and dnsmasq do: a line longer
    /// than the buffer comes in pieces, each taken as a line of its own.
    /// Each directive is its first word and the rest of the piece; a piece
    /// starts a directive when its first word is a keyword (dnsmasq
    /// tokenizes, glibc matches the keyword then a blank).
    fn directives(text: &str, buf: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let upto = rest
                .iter()
                .take(buf - 1)
                .position(|&b| b == b'\n')
                .map_or((buf - 1).min(rest.len()), |i| i + 1);
            let piece = String::from_utf8_lossy(&rest[..upto]).into_owned();
            rest = &rest[upto..];
            let mut words = piece.split_ascii_whitespace();
            if let Some(first) = words.next()
                && RESOLV_KEYWORDS.contains(&first)
            {
                out.push((first.to_string(), words.collect::<Vec<_>>().join(" ")));
            }
        }
        out
    }

    /// What the search line of the report looked like before:
    /// "search" and every name, whatever the length.
    fn unbounded_search_line(names: &[String]) -> String {
        format!("search {}\n", names.join(" "))
    }

    /// Option 119 names of 202 bytes (LDH labels of 63 bytes), then
    /// "nameserver" and "6.6.6.6", so that "nameserver 6.6.6.6" starts at
    /// byte 1024 of the search line: where dnsmasq's 1024-byte read cuts it.
    fn injection_search_list() -> Vec<String> {
        let l63 = "a".repeat(63);
        let name = |tail: &str| format!("{l63}.{l63}.{l63}.{tail}");
        let mut names: Vec<String> = (0..4).map(|i| name(&format!("{i}{}", "b".repeat(9)))).collect();
        names.push(name(&format!("c{}", "d".repeat(11))));
        names.push("nameserver".into());
        names.push("6.6.6.6".into());
        names
    }

    #[test]
    fn the_reported_search_line_injection_is_not_rendered() {
        let names = injection_search_list();
        assert!(names.iter().all(|n| mirage_ipc::is_valid_domain_name(n)));
        // The shape really is the attack on the old rendering.
        let old = unbounded_search_line(&names);
        assert_eq!(old.find("nameserver 6.6.6.6"), Some(1024));
        assert!(directives(&old, 1025).contains(&("nameserver".into(), "6.6.6.6".into())));
        let mut l = lease();
        l.search = names.clone();
        let r = resolv_conf("eth0", &l);
        assert!(!r.text.contains("nameserver 6.6.6.6"), "{}", r.text);
        // The first 202-byte name fits; the other long ones do not, and the
        // keyword never goes in; 6.6.6.6 is a (silly) name that fits.
        let search = r.text.lines().find(|l| l.starts_with("search ")).unwrap();
        assert_eq!(search, format!("search {} 6.6.6.6", names[0]));
        assert_eq!(r.dropped, names[1..6].to_vec());
        for buf in [1025, 1024, 513, 512, 257, 256] {
            assert_eq!(
                directives(&r.text, buf),
                vec![
                    ("search".into(), format!("{} 6.6.6.6", names[0])),
                    ("nameserver".into(), "10.0.0.1".into()),
                    ("nameserver".into(), "10.0.0.2".into()),
                ],
                "buffer {buf}"
            );
        }
    }

    #[test]
    fn resolv_conf_keeps_six_domains_and_drops_keywords() {
        let mut l = lease();
        l.search = ["a.example", "search", "Options", "b.example", "domain.", "server"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..8).map(|i| format!("d{i}.example")))
            .collect();
        let r = resolv_conf("eth0", &l);
        assert!(
            r.text
                .contains("search a.example b.example d0.example d1.example d2.example d3.example\n"),
            "{}",
            r.text
        );
        assert_eq!(r.dropped.len(), 8);
        // Option 15 as the fallback goes through the same rules.
        l.search.clear();
        l.domain_name = Some("nameserver".into());
        let r = resolv_conf("eth0", &l);
        assert!(!r.text.contains("search"), "{}", r.text);
        assert_eq!(r.dropped, vec!["nameserver".to_string()]);
    }

    /// xorshift64*: deterministic, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A valid DNS name of about `len` bytes, labels drawn from keywords,
    /// digits and letters (keywords as labels and whole names too).
    fn random_name(rng: &mut Rng) -> String {
        let pieces = [
            "nameserver",
            "search",
            "options",
            "server",
            "6",
            "a",
            "x-y",
            "_srv",
        ];
        match rng.below(4) {
            0 => pieces[rng.below(pieces.len())].to_string(),
            1 => format!("{}.{}", rng.below(256), rng.below(256)),
            _ => {
                let target = 1 + rng.below(253);
                let mut name = String::new();
                while name.len() < target {
                    let label = match rng.below(3) {
                        0 => pieces[rng.below(pieces.len())].to_string(),
                        _ => "q".repeat(1 + rng.below(63)),
                    };
                    if name.len() + label.len() + 1 > 253 {
                        break;
                    }
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&label);
                }
                if name.is_empty() { "z".into() } else { name }
            }
        }
    }

    #[test]
    fn no_cut_of_any_rendered_resolv_conf_yields_an_extra_directive() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let mut l = lease();
            l.search = (0..rng.below(20)).map(|_| random_name(&mut rng)).collect();
            if rng.below(4) == 0 {
                l.search.clear();
                l.domain_name = Some(random_name(&mut rng));
            }
            l.dns_servers = (0..rng.below(9))
                .map(|_| Ipv4Addr::from(rng.next() as u32))
                .collect();
            let r = resolv_conf("eth0", &l);
            // What the resolver reads line by line, unlimited.
            let lines: Vec<(String, String)> = r
                .text
                .lines()
                .filter_map(|line| {
                    let mut w = line.split_ascii_whitespace();
                    let first = w.next()?;
                    RESOLV_KEYWORDS
                        .contains(&first)
                        .then(|| (first.to_string(), w.collect::<Vec<_>>().join(" ")))
                })
                .collect();
            for buf in [1024, 512, 256] {
                assert_eq!(
                    directives(&r.text, buf),
                    lines,
                    "round {round}, buffer {buf}:\n{}",
                    r.text
                );
            }
            let search: Vec<&str> = r
                .text
                .lines()
                .filter(|l| l.starts_with("search"))
                .flat_map(|l| l.split(' ').skip(1))
                .collect();
            assert!(search.len() <= MAX_SEARCH_DOMAINS, "round {round}");
            assert!(search.iter().all(|w| !is_resolv_keyword(w)), "round {round}");
            assert!(r.text.lines().all(|l| l.len() < MAX_SEARCH_LINE), "round {round}");
            // Nothing invented, nothing lost without a word.
            let given = if l.search.is_empty() {
                l.domain_name.iter().cloned().collect()
            } else {
                l.search.clone()
            };
            assert_eq!(search.len() + r.dropped.len(), given.len(), "round {round}");
            assert!(search.iter().all(|w| given.iter().any(|g| g == w)));
            assert_eq!(
                lines.iter().filter(|(k, _)| k == "nameserver").count(),
                l.dns_servers.len()
            );
        }
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
            sandbox_reason: "--sandbox seccomp".into(),
            now: Instant(65_000),
            ..Default::default()
        };
        let j: serde_json::Value =
            serde_json::from_str(&render_status_json(&p, &["x.example".into()])).unwrap();
        assert_eq!(j["lease"]["search_dropped"], serde_json::json!(["x.example"]));
        assert_eq!(j["counters"]["routes_dropped"], 0);
        assert_eq!(j["state"], "bound");
        assert_eq!(j["lease"]["address"], "10.0.0.5");
        assert_eq!(j["lease"]["remaining_secs"], 3540);
        let m = render_metrics(&p);
        assert!(m.contains("mirage_dhcp_bound{interface=\"eth0\"} 1\n"));
        assert!(m.contains("mirage_dhcp_lease_remaining_seconds{interface=\"eth0\"} 3540\n"));
        assert!(m.contains("mirage_dhcp_state{interface=\"eth0\",state=\"bound\"} 1\n"));
    }

    /// The whole file, byte for byte as it was written before the SDK's
    /// metrics writer (`service::metrics`) took over: scrapers and
    /// dashboards see no change. A name that must be escaped too.
    #[test]
    // Fields PublishedStatus gains later keep their defaults.
    #[allow(clippy::needless_update)]
    fn metrics_are_unchanged_by_the_generic_writer() {
        let mut p = PublishedStatus {
            status: Status {
                state: mirage_ipc::ClientState::Bound,
                lease: Some(lease()),
                ..Default::default()
            },
            interface: "et\"h\\0\n".into(),
            sandbox: "seccomp".into(),
            sandbox_reason: "--sandbox seccomp".into(),
            now: Instant(65_000),
            engine_restarts: 2,
            frames_refused: 3,
            intents_refused: 4,
            ..Default::default()
        };
        let c = &mut p.status.counters;
        for (i, f) in [
            &mut c.frames_received,
            &mut c.frames_dropped,
            &mut c.offers,
            &mut c.acks,
            &mut c.naks,
            &mut c.leases_refused,
            &mut c.renewals,
            &mut c.rebinds,
            &mut c.declines,
            &mut c.expiries,
            &mut c.transmitted,
            &mut c.conflicts,
            &mut c.routes_dropped,
            &mut c.transmits_limited,
        ]
        .into_iter()
        .enumerate()
        {
            *f = 10 + i as u64;
        }
        assert_eq!(render_metrics(&p), include_str!("../testdata/dhcp-metrics.prom"));
        p.status.lease = None;
        let m = render_metrics(&p);
        assert!(
            m.contains("\nmirage_dhcp_bound{interface=\"et\\\"h\\\\0\\n\"} 0\n"),
            "{m}"
        );
    }
}
