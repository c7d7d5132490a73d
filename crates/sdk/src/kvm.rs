//! The engine as a KVM guest (`--sandbox kvm`, and `auto` where it works).
//!
//! The supervisor, before it drops its privileges, resolves the sandbox
//! ([`choose`]): it opens the KVM device, boots the service's guest image
//! once with nothing to say to it (the guest must start, ask for its first
//! message and exit when told the channel is closed, within
//! [`PROBE_BOUND`]), and keeps the device open. With `auto`, anything that
//! fails there falls back to seccomp and the reason is logged and
//! published; with `kvm` it is an error at start.
//!
//! The engine role gets the device at [`FD_KVM`] and runs the guest
//! instead of the engine ([`crate::engine_role::run_sandboxed`]): it builds
//! the VM, closes the device, drops its privileges (its plan), starts the
//! watchdog thread, and installs the tender's seccomp filter
//! ([`crate::sandbox::seccomp::TENDER`] over
//! [`crate::sandbox::seccomp::BASE`]) on both threads; then it relays the
//! guest's messages over its channel ([`crate::engine_role::ChannelHost`]),
//! and over its direct channel to a peer role if it has one
//! ([`crate::engine_role::run_sandboxed_with_peer`]: a send hypercall names
//! its route, a receive takes whichever channel has a message).
//! The supervisor decodes them exactly as a process engine's.
//!
//! A service may be configured with a guest image file instead of its
//! built-in one ([`GuestImage`]; mirage-dhcp's `kvm_guest_image`): the
//! supervisor opens it before dropping privileges, boots it for the probe,
//! and gives every engine it starts a duplicate of the descriptor at
//! [`FD_GUEST_IMAGE`]; the engine reads the file through it at its start.
//! Any guest is contained by the tender whatever it runs, so the image
//! needs no more trust than the network's bytes; the file must still be
//! its owner's alone (a wrong guest is a wrong DHCP client).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use mirage_engine::{Host, Instant, Received, Route};
use mirage_kvm::{Config, Kvm, Vm};

use crate::channel::Channel;
use crate::role::{RolePlan, Starting};
use crate::sandbox::seccomp::{self, BASE, TENDER};
use crate::service::SandboxKind;

/// A service's guest image, embedded from the file at `$path` (as
/// `include_bytes!`) in a section of its own, `.mirage.guest`, instead of
/// among the constants every process reads. A binary whose link puts that
/// section on pages of its own (mirage-dhcp's build script) has the image
/// resident only in the processes that boot the guest, and only until the
/// VM is built ([`release_image_pages`]); without such a layout the linker
/// places it after the other constants, as `include_bytes!` would.
///
/// ```ignore
/// pub const GUEST: &[u8] = mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-x.elf"));
/// ```
#[macro_export]
macro_rules! guest_image {
    ($path:expr) => {{
        // SAFETY: the section holds nothing but this immutable array of
        // plain bytes; it is not one the linker or the C runtime gives a
        // meaning to (as `.init_array` would be), so placing the array
        // there changes where it is mapped, not what it is.
        #[unsafe(link_section = ".mirage.guest")]
        static IMAGE: [u8; include_bytes!($path).len()] = *include_bytes!($path);
        &IMAGE
    }};
}

/// Where the KVM device is unless configured otherwise.
pub const DEFAULT_DEVICE: &str = "/dev/kvm";

/// The engine role's KVM device (its only descriptor besides the channel).
pub const FD_KVM: RawFd = crate::role::FD_CHANNEL + 1;

/// The engine role's configured guest image, when there is one (after
/// the KVM device; read and closed before the VM is built, so the VM's
/// descriptors are the same either way).
pub const FD_GUEST_IMAGE: RawFd = FD_KVM + 1;

/// A guest image file configured instead of the service's built-in image.
#[derive(Debug)]
pub struct GuestImage {
    /// Open read-only; each engine started gets a duplicate.
    pub file: File,
    /// Its contents at start, for the probe.
    pub bytes: Vec<u8>,
}

impl GuestImage {
    /// Open and read `path` (in the supervisor, before it drops its
    /// privileges): a regular file of at most [`MAX_IMAGE_LEN`] bytes,
    /// owned by root or the supervisor's user, writable by its owner alone.
    pub fn open(path: &Path) -> Result<GuestImage, String> {
        let named = |e: std::io::Error| format!("guest image {}: {e}", path.display());
        let file = File::open(path).map_err(named)?;
        let meta = file.metadata().map_err(named)?;
        let euid = rustix::process::geteuid().as_raw();
        if !meta.is_file() {
            return Err(format!("guest image {}: not a regular file", path.display()));
        }
        if (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "guest image {}: must be owned by root or uid {euid} and writable by its owner alone \
                 (owner {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
        let bytes = read_image(&file).map_err(|e| format!("guest image {}: {e}", path.display()))?;
        Ok(GuestImage { file, bytes })
    }
}

/// The largest guest image file read: far over any engine's (the DHCP
/// guest is under 100 KiB, and a guest's memory is 4 MiB).
pub const MAX_IMAGE_LEN: usize = 16 << 20;

/// The whole file from offset 0 (a descriptor shared by every engine
/// started: no shared position), at most [`MAX_IMAGE_LEN`] bytes.
fn read_image(file: &File) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match file.read_at(&mut chunk, bytes.len() as u64) {
            Ok(0) => return Ok(bytes),
            Ok(n) if bytes.len() + n > MAX_IMAGE_LEN => {
                return Err(format!("over {MAX_IMAGE_LEN} bytes"));
            }
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether `fd` is open on a regular file: a configured image, and not
/// whatever else a role might hold at that number (a direct peer's
/// channel follows a role's own descriptors).
fn is_image_file(fd: RawFd) -> bool {
    if !crate::fd::is_open(fd) {
        return false;
    }
    // SAFETY: `fd` is open (checked); the borrow ends with this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::fs::fstat(fd).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
}

/// The longest the probe guest may take to boot, ask for a message and
/// exit; its watchdog bound too. Measured here: about 2 ms.
pub const PROBE_BOUND: Duration = Duration::from_secs(1);

/// The sandbox in force, why, and the KVM device when it is `kvm`.
#[derive(Debug)]
pub struct Choice {
    /// `Kvm`, `Seccomp` or `None` (never `Auto`).
    pub kind: SandboxKind,
    /// For the log line and status: what was asked for and what decided.
    pub reason: String,
    /// The open device (only with `Kvm`), for each engine the supervisor
    /// starts.
    pub device: Option<Kvm>,
}

impl Choice {
    /// The device, for the engine role's [`FD_KVM`].
    pub fn device_fd(&self) -> Option<BorrowedFd<'_>> {
        self.device.as_ref().map(|k| {
            // SAFETY: the descriptor is the Kvm's own, open as long as
            // `self` and the borrow that is tied to it.
            unsafe { BorrowedFd::borrow_raw(k.as_raw_fd()) }
        })
    }

    /// The engine's plan for this choice: with `kvm`, the tender's filter
    /// instead of the engine's own list.
    pub fn engine_plan(&self, plan: RolePlan) -> RolePlan {
        match self.kind {
            SandboxKind::Kvm => tender_plan(plan),
            _ => plan,
        }
    }
}

/// The plan of an engine role that runs a guest: the same ids and limits,
/// the tender's seccomp list ([`TENDER`] over [`BASE`]), and no
/// `RLIMIT_NPROC` 0: with it, `KVM_RUN` fails with EAGAIN on every call
/// under `kvm_pvm` (measured; the limit counts against a non-root uid).
/// The tender's filter holds no `clone`, `fork` or `vfork`, so it still
/// cannot start a process or thread.
pub fn tender_plan(mut plan: RolePlan) -> RolePlan {
    plan.seccomp = vec![BASE, TENDER];
    plan.nproc_zero = false;
    plan
}

/// Resolve `requested` for a service whose engine's guest image is `image`
/// (`None`: it has none), with the KVM device at `device`. Call it in the
/// supervisor before it drops its privileges. `Err` only for `kvm` where
/// KVM is unusable: the message says why.
pub fn choose(requested: SandboxKind, image: Option<&[u8]>, device: &Path) -> Result<Choice, String> {
    let fixed = |kind, reason: &str| Choice {
        kind,
        reason: reason.to_owned(),
        device: None,
    };
    match requested {
        SandboxKind::None => return Ok(fixed(SandboxKind::None, "--sandbox none")),
        SandboxKind::Seccomp => return Ok(fixed(SandboxKind::Seccomp, "--sandbox seccomp")),
        SandboxKind::Kvm | SandboxKind::Auto => {}
    }
    let tried = image
        .ok_or_else(|| "this service has no guest image".to_owned())
        .and_then(|image| probe(image, device));
    match (tried, requested) {
        (Ok((kvm, took)), _) => Ok(Choice {
            kind: SandboxKind::Kvm,
            reason: format!(
                "--sandbox {}: {} opens, the guest booted and answered in {} us",
                requested.as_str(),
                device.display(),
                took.as_micros()
            ),
            device: Some(kvm),
        }),
        (Err(why), SandboxKind::Kvm) => Err(format!("--sandbox kvm: KVM is unusable here: {why}")),
        (Err(why), _) => Ok(fixed(
            SandboxKind::Seccomp,
            &format!("--sandbox auto: kvm unusable ({why}), seccomp instead"),
        )),
    }
}

/// The probe guest's host: nothing to say, the channel is closed at once.
struct ClosedHost;

impl Host for ClosedHost {
    type Error = std::io::Error;
    fn now(&mut self) -> Instant {
        crate::clock::boottime()
    }
    fn recv(&mut self, _: Instant, _: &mut [u8]) -> Result<Received, Self::Error> {
        Ok(Received::Closed)
    }
    fn send(&mut self, _: Route, _: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Open `device` and boot `image` once: it must ask for a message and exit
/// with status 0 when told the channel is closed, within [`PROBE_BOUND`].
fn probe(image: &[u8], device: &Path) -> Result<(Kvm, Duration), String> {
    let t0 = StdInstant::now();
    let kvm = mirage_kvm::open_at(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let config = Config {
        watchdog: PROBE_BOUND,
        ..Config::default()
    };
    let vm = Vm::new(&kvm, image, &config).map_err(|e| e.to_string())?;
    if !vm.uses_sync_regs() {
        return Err("KVM_CAP_SYNC_REGS is missing (the tender's filter allows no KVM_GET_REGS)".into());
    }
    let mut lines = Vec::new();
    let ran = vm.run(&mut ClosedHost, &mut |l: &str| lines.push(l.to_owned()));
    let took = t0.elapsed();
    // The supervisor boots no other guest: the image's pages go.
    release_image_pages(image);
    ran.map_err(|e| format!("the probe guest: {e} {lines:?}"))?;
    if took > PROBE_BOUND {
        return Err(format!("the probe guest took {} ms", took.as_millis()));
    }
    Ok((kvm, took))
}

/// The tender's configuration for a plan's guest memory (0: the default).
fn guest_config(memory: usize) -> Config {
    let default = Config::default();
    Config {
        memory: if memory == 0 { default.memory } else { memory },
        ..default
    }
}

/// The guest memory in MiB a service's engine gets by default for
/// `state` bytes of configured state on its heap (a cache): twice that,
/// for the allocator's slack and what an estimate of the state leaves
/// out, plus the default guest's memory for everything else, in whole
/// MiB, at most [`mirage_kvm::MAX_MEMORY`].
pub fn guest_memory_mib_for(state: usize) -> u32 {
    // Constants only: the supervisor calls this, and mirage_kvm's code is
    // the tender's (never resident in a supervisor under seccomp).
    let bytes = state.saturating_mul(2).saturating_add(mirage_kvm::DEFAULT_MEMORY);
    (bytes.div_ceil(1 << 20).min(mirage_kvm::MAX_MEMORY >> 20)) as u32
}

/// Check a configured guest memory of `mib` MiB for `state` bytes of
/// configured state: within the tender's bounds
/// ([`mirage_kvm::MIN_MEMORY`] to [`mirage_kvm::MAX_MEMORY`]) and at
/// least the state plus the default guest's memory. Its size in bytes,
/// for [`RolePlan::guest_memory`].
pub fn check_guest_memory_mib(mib: u32, state: usize) -> Result<usize, String> {
    let (min, max) = (mirage_kvm::MIN_MEMORY >> 20, mirage_kvm::MAX_MEMORY >> 20);
    let bytes = (mib as usize) << 20;
    if !(min..=max).contains(&(mib as usize)) {
        return Err(format!("{mib} MiB of guest memory is not within {min}..={max}"));
    }
    let needed = state.saturating_add(mirage_kvm::DEFAULT_MEMORY);
    if bytes < needed {
        return Err(format!(
            "{mib} MiB of guest memory is too little for {state} bytes of state: at least {} MiB",
            needed.div_ceil(1 << 20)
        ));
    }
    Ok(bytes)
}

/// Where a tender's direct channel to a peer role goes before its VM is
/// built: the runtime hands it over at the descriptor after the device (5),
/// which is the VM's number ([`seccomp::FD_VCPU`] is the one after), so it
/// moves to the first free number above the vCPU's. Call it before
/// `Vm::new`.
pub fn peer_above_the_vm(peer: Channel) -> Result<Channel, String> {
    peer.moved_to_at_least(seccomp::FD_VCPU + 1)
        .map_err(|e| format!("moving the direct channel above the vCPU: {e}"))
}

/// The engine role as a tender: build the VM of `image` (or of the
/// configured image at [`FD_GUEST_IMAGE`], read as the file is now) on the
/// device at [`FD_KVM`], enter the sandbox with the watchdog started, and
/// run the guest over the role's channel (and its direct channel to
/// `peer`, if it has one) until it exits. A configured image and a direct
/// peer do not combine: both would be handed over at fd 5.
pub(crate) fn run_guest(role: Starting, image: &[u8], peer: Option<Channel>) -> Result<(), String> {
    if !crate::fd::is_open(FD_KVM) {
        return Err(format!(
            "told to run a KVM guest, but no KVM device at fd {FD_KVM}"
        ));
    }
    let configured = if is_image_file(FD_GUEST_IMAGE) {
        // SAFETY: FD_GUEST_IMAGE is open (checked) and was given to this
        // role for this use alone; the File owns it and closes it here,
        // before the VM's descriptors are made.
        let file = unsafe { File::from_raw_fd(FD_GUEST_IMAGE) };
        let bytes = read_image(&file).map_err(|e| format!("the configured guest image: {e}"))?;
        log::info!(
            "engine runs the configured guest image ({} bytes), not the built-in one",
            bytes.len()
        );
        Some(bytes)
    } else {
        None
    };
    let image = configured.as_deref().unwrap_or(image);
    let peer = peer.map(peer_above_the_vm).transpose()?;
    // SAFETY: FD_KVM is open (checked) and was given to this role for this
    // use alone; the Kvm owns and closes it.
    let kvm = unsafe { Kvm::from_raw_fd(FD_KVM) };
    let config = guest_config(role.guest_memory());
    let vm = Vm::new(&kvm, image, &config).map_err(|e| format!("building the guest: {e}"))?;
    // The tender never makes another VM, and the guest runs from its own
    // copy of the image.
    drop(kvm);
    release_image_pages(image);
    if vm.vcpu_fd() != seccomp::FD_VCPU {
        return Err(format!(
            "the vCPU is fd {}, not {}, which the tender's filter names",
            vm.vcpu_fd(),
            seccomp::FD_VCPU
        ));
    }
    if !vm.uses_sync_regs() {
        return Err("KVM_CAP_SYNC_REGS is missing (the tender's filter allows no KVM_GET_REGS)".into());
    }
    let (started, armed) = role.enter_with(|| vm.arm().map_err(|e| format!("the guest's watchdog: {e}")))?;
    let direct = match &peer {
        Some(peer) => format!(", direct channel fd {}", peer.as_raw_fd()),
        None => String::new(),
    };
    log::info!(
        "engine runs as a KVM guest (vCPU fd {}, channel fd {}{direct})",
        seccomp::FD_VCPU,
        started.channel.as_fd().as_raw_fd()
    );
    let mut host = match peer {
        Some(peer) => crate::engine_role::ChannelHost::with_peer(started.channel, peer),
        None => crate::engine_role::ChannelHost::new(started.channel),
    };
    let ended = armed.run(&mut host, &mut |line: &str| log::info!("guest: {line}"));
    // The channel stays open until the process exits, after the role's
    // entry has logged why the guest ended: the supervisor kills a role as
    // soon as its channel closes, and a line written after that is lost.
    std::mem::forget(host);
    ended.map_err(|e| format!("guest: {e}"))
}

/// Unmap the pages of `image` from this process once its guest is built
/// from it (the VM holds its own copy), so that they stop counting in its
/// resident memory: `madvise(MADV_DONTNEED)`. Done only where that loses
/// nothing: where every page it touches is the executable's own read-only
/// file page (an image embedded with [`guest_image!`]), which a later read
/// faults back in from the file unchanged, whatever else shares the page.
/// Any other image (on the heap, in a writable segment) is left alone.
/// Returns the bytes released.
pub fn release_image_pages(image: &[u8]) -> usize {
    let page = page_size();
    let start = image.as_ptr() as usize / page * page;
    let Some(end) = (image.as_ptr() as usize)
        .checked_add(image.len())
        .and_then(|end| end.checked_next_multiple_of(page))
    else {
        return 0;
    };
    if image.is_empty() || !in_read_only_segment(start, end) {
        return 0;
    }
    // SAFETY: [start, end) lies inside a read-only PT_LOAD segment of this
    // executable (checked above): a private file mapping that nothing can
    // have written, so after MADV_DONTNEED a read faults the same bytes
    // back in from the file. No reference observes a change, and no other
    // mapping is touched.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc == 0 { end - start } else { 0 }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n)
        .ok()
        .filter(|&n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// Whether [start, end) lies inside the pages of one loadable, non-writable
/// segment of the executable (the first object `dl_iterate_phdr` reports).
fn in_read_only_segment(start: usize, end: usize) -> bool {
    struct Query {
        start: usize,
        end: usize,
        page: usize,
        found: bool,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Query` passed below, alive and not
        // otherwise borrowed during the call; `info` and its program
        // headers are valid for the duration of the callback (the
        // dl_iterate_phdr contract), `dlpi_phnum` of them.
        let (query, info) = unsafe { (&mut *data.cast::<Query>(), &*info) };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: as above.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        // A segment is mapped in whole pages: the tail of its last page
        // is part of the same read-only mapping.
        query.found = phdrs.iter().any(|ph| {
            let seg_start = (info.dlpi_addr as usize).checked_add(ph.p_vaddr as usize);
            let seg_end = seg_start
                .and_then(|s| s.checked_add(ph.p_memsz as usize))
                .and_then(|e| e.checked_next_multiple_of(query.page));
            let (Some(seg_start), Some(seg_end)) = (seg_start, seg_end) else {
                return false;
            };
            ph.p_type == libc::PT_LOAD
                && ph.p_flags & libc::PF_W == 0
                && seg_start / query.page * query.page <= query.start
                && query.end <= seg_end
        });
        // The executable is reported first: stop there.
        1
    }
    let mut query = Query {
        start,
        end,
        page: page_size(),
        found: false,
    };
    // SAFETY: `visit` matches the callback's C signature and only reads
    // what it is given; `query` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut query).cast()) };
    query.found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    /// Several pages of the test binary's read-only data.
    static CONSTANT_PAGES: [u8; 5 * 4096] = [0xa5; 5 * 4096];

    /// Several pages of its writable data.
    static WRITABLE_PAGES: Mutex<[u8; 3 * 4096]> = Mutex::new([1; 3 * 4096]);

    #[test]
    fn guest_memory_follows_the_state_and_is_checked() {
        assert_eq!(guest_config(0).memory, Config::default().memory);
        assert_eq!(guest_config(32 << 20).memory, 32 << 20);
        // 4 MiB of state: 8 MiB doubled plus the default 4 MiB.
        assert_eq!(guest_memory_mib_for(4 << 20), 12);
        assert_eq!(guest_memory_mib_for(0), 4);
        assert_eq!(guest_memory_mib_for(usize::MAX), 256);
        assert_eq!(check_guest_memory_mib(12, 4 << 20), Ok(12 << 20));
        assert_eq!(check_guest_memory_mib(8, 4 << 20), Ok(8 << 20));
        let e = check_guest_memory_mib(7, 4 << 20).unwrap_err();
        assert!(e.contains("at least 8 MiB"), "{e}");
        assert!(
            check_guest_memory_mib(1, 0)
                .unwrap_err()
                .contains("not within 2..=256")
        );
        assert!(check_guest_memory_mib(257, 0).is_err());
    }

    #[test]
    fn an_image_in_read_only_data_is_released_and_reads_back_the_same() {
        let image: &[u8] = black_box(&CONSTANT_PAGES[..]);
        let released = release_image_pages(image);
        assert!(released >= image.len(), "{released} bytes released");
        assert!(black_box(image).iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn an_image_on_the_heap_or_in_writable_data_is_left_alone() {
        let heap = vec![0x5a_u8; 5 * 4096];
        assert_eq!(release_image_pages(&heap), 0);
        assert!(heap.iter().all(|&b| b == 0x5a));

        let mut data = WRITABLE_PAGES.lock().unwrap();
        data[4096] = 2;
        assert_eq!(release_image_pages(&data[..]), 0);
        assert_eq!(data[4096], 2);

        assert_eq!(release_image_pages(&[]), 0);
    }

    /// A configured image is read whole; one others may write, or that is
    /// not a regular file, is refused before anything runs it.
    #[test]
    fn a_guest_image_file_is_read_whole_and_must_be_its_owners_alone() {
        let dir = std::env::temp_dir().join(format!("mirage-guest-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest.elf");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let image = GuestImage::open(&path).unwrap();
        assert_eq!(image.bytes, bytes);
        // Read again from offset 0 through the same descriptor, as each
        // engine does: the file as it is now.
        std::fs::write(&path, b"changed").unwrap();
        assert_eq!(read_image(&image.file).unwrap(), b"changed");
        // What the engine role takes for an image: a regular file, never a
        // socket (a direct peer's channel) at that number.
        assert!(is_image_file(image.file.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_image_file(a.as_raw_fd()));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = GuestImage::open(&path).unwrap_err();
        assert!(e.contains("writable by its owner alone"), "{e}");
        let e = GuestImage::open(&dir).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = GuestImage::open(&dir.join("missing.elf")).unwrap_err();
        assert!(e.contains("missing.elf"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
