//! The KVM tender of MirageSDK: runs one engine's guest image (built by the
//! guest workspace, `guest/`, with `mirage-guest-rt`) in a micro-VM of its
//! own and relays its messages.
//!
//! The guest is a static ring-3 program: no kernel, no devices, no
//! interrupts, a few MiB of memory whose map the tender decides
//! ([`layout`](crate) docs in `src/layout.rs`, and docs/security.md): code
//! read-only, data never executable, the descriptor tables, exception
//! path and page tables out of its reach. Its only way out is a hypercall,
//! one `out` instruction with the arguments in registers
//! ([`mirage_kvm_abi`]): receive a message (with a deadline), send one, log
//! a line (rate-limited: [`LOG_BURST`] at once, then [`LOG_PER_SECOND`],
//! the rest counted), get a random seed, exit. Messages are the engine runner's bytes,
//! relayed opaquely to and from a [`mirage_engine::Host`], the same trait
//! a process engine runs over, so the SDK's channel host plugs in as it is
//! and the supervisor decodes a guest's messages like any engine's.
//!
//! Anything else the guest does ends it with a [`VmError`] that says what:
//! an exception (with its vector, address and, for a page fault, the
//! faulting address), a triple fault, an unknown port, memory-mapped I/O,
//! a hypercall pointer outside its own pages, an oversized message, or
//! running longer than [`Config::watchdog`] without a hypercall.
//!
//! Why ring 3: where `/dev/kvm` is a software implementation (`kvm_pvm`),
//! ring-0 guest code is emulated thousands of times slower while ring-3
//! code runs natively; on hardware KVM the same guest runs as well.
//! docs/architecture.md has the rest.

mod elf;
#[doc(hidden)]
pub mod fuzzing;
mod hypercall;
mod layout;
mod loglimit;
mod vm;
mod watchdog;

use std::fmt;
use std::io;
use std::time::Duration;

pub use hypercall::LogSink;
pub use kvm_ioctls::Kvm;
pub use layout::{MAX_MEMORY, MIN_MEMORY};
pub use loglimit::{LOG_BURST, LOG_PER_SECOND};
pub use vm::{ArmedVm, Vm};
pub use watchdog::KICK_SIGNAL;

/// The size of a guest.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest memory in bytes (whole pages, [`MIN_MEMORY`] to
    /// [`MAX_MEMORY`]); what the image, heap and stack do not use is
    /// never touched, so never committed.
    pub memory: usize,
    /// The stack at the top of memory.
    pub stack: usize,
    /// The longest the guest may run without a hypercall.
    pub watchdog: Duration,
}

/// [`Config::memory`] by default: enough for an engine whose state does
/// not grow with its configuration. A constant, so that a supervisor sizes
/// a guest without running this crate's code (its pages are the tender's,
/// `mirage_kvm_build::link_by_process`).
pub const DEFAULT_MEMORY: usize = 4 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            memory: DEFAULT_MEMORY,
            stack: 256 << 10,
            watchdog: Duration::from_secs(1),
        }
    }
}

/// The ioctl requests a running tender makes, all on its vCPU's
/// descriptor ([`Vm::vcpu_fd`]): the tender's seccomp filter allows these
/// and no other. Building the VM takes many more, before the filter.
pub mod ioctls {
    const KVMIO: u64 = 0xae;
    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn ior(nr: u64, size: usize) -> u64 {
        (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iow(nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    use kvm_bindings::{kvm_cpuid2, kvm_fpu, kvm_regs, kvm_sregs, kvm_userspace_memory_region};
    use std::mem::size_of;
    /// Enter the guest until its next exit.
    pub const KVM_RUN: u64 = io(0x80);
    // What `Vm::new` calls, once, before any filter of the tender's own.
    pub const KVM_CREATE_VM: u64 = io(0x01);
    pub const KVM_CHECK_EXTENSION: u64 = io(0x03);
    pub const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
    pub const KVM_GET_SUPPORTED_CPUID: u64 = iowr(0x05, size_of::<kvm_cpuid2>());
    pub const KVM_CREATE_VCPU: u64 = io(0x41);
    pub const KVM_SET_USER_MEMORY_REGION: u64 = iow(0x46, size_of::<kvm_userspace_memory_region>());
    pub const KVM_SET_REGS: u64 = iow(0x82, size_of::<kvm_regs>());
    pub const KVM_SET_SREGS: u64 = iow(0x84, size_of::<kvm_sregs>());
    pub const KVM_SET_FPU: u64 = iow(0x8d, size_of::<kvm_fpu>());
    pub const KVM_SET_CPUID2: u64 = iow(0x90, size_of::<kvm_cpuid2>());
    /// Read the guest's system registers: only after a page fault, for
    /// the faulting address (CR2) in the error.
    pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kvm_sregs>());
}

/// Open `/dev/kvm` (the supervisor does, before it drops privileges).
pub fn open() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| VmError::Kvm("opening /dev/kvm", io::Error::from_raw_os_error(e.errno())))
}

/// Open the KVM device at `path` (a configured one; [`open`] is
/// `/dev/kvm`), close-on-exec.
pub fn open_at(path: &std::path::Path) -> Result<Kvm, VmError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::Config(format!("{}: a NUL in the path", path.display())))?;
    Kvm::new_with_path(&c)
        .map_err(|e| VmError::Kvm("opening the KVM device", io::Error::from_raw_os_error(e.errno())))
}

/// Why a guest ended, other than its own exit with status 0.
#[derive(Debug)]
pub enum VmError {
    /// A KVM or system call of the tender failed.
    Kvm(&'static str, io::Error),
    /// The image is not one the tender runs.
    Image(String),
    /// The memory or stack size does not fit the image.
    Config(String),
    /// The guest ran this long without a hypercall.
    Watchdog {
        bound: Duration,
    },
    /// A CPU exception in the guest.
    Exception {
        vector: u8,
        rip: u64,
        error_code: Option<u64>,
        /// The address of a page fault.
        addr: Option<u64>,
    },
    /// The CPU shut down (an exception while delivering one).
    TripleFault,
    UnknownPort {
        port: u16,
    },
    Mmio {
        addr: u64,
        write: bool,
    },
    /// A hypercall's buffer is not all in pages the guest itself may use
    /// that way.
    BadPointer {
        call: &'static str,
        addr: u64,
        len: u64,
    },
    BadArgument {
        call: &'static str,
        value: u64,
    },
    /// A message longer than the channel's cap.
    Oversized {
        len: u64,
    },
    /// The host (the channels) failed; the guest is not to blame.
    Host(String),
    /// The guest exited with this status (after logging why).
    Exited {
        status: u64,
    },
    UnexpectedExit(String),
}

fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        12 => "stack fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point error",
        _ => "exception",
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Kvm(what, e) => write!(f, "{what}: {e}"),
            VmError::Image(e) => write!(f, "guest image: {e}"),
            VmError::Config(e) => write!(f, "guest size: {e}"),
            VmError::Watchdog { bound } => {
                write!(
                    f,
                    "guest ran over {} ms without a hypercall: stopped",
                    bound.as_millis()
                )
            }
            VmError::Exception {
                vector,
                rip,
                error_code,
                addr,
            } => {
                write!(
                    f,
                    "guest {} (vector {vector}) at {rip:#x}",
                    exception_name(*vector)
                )?;
                if let Some(addr) = addr {
                    write!(f, ", address {addr:#x}")?;
                }
                if let Some(code) = error_code {
                    write!(f, ", error code {code:#x}")?;
                }
                Ok(())
            }
            VmError::TripleFault => f.write_str("guest triple fault (CPU shutdown)"),
            VmError::UnknownPort { port } => write!(f, "guest used I/O port {port:#x}, not a hypercall"),
            VmError::Mmio { addr, write } => {
                let rw = if *write { "write" } else { "read" };
                write!(f, "guest memory-mapped I/O {rw} at {addr:#x}")
            }
            VmError::BadPointer { call, addr, len } => {
                write!(
                    f,
                    "guest {call} hypercall with a buffer outside the pages it may use so ({len} bytes at {addr:#x})"
                )
            }
            VmError::BadArgument { call, value } => {
                write!(f, "guest {call} hypercall with a bad argument {value:#x}")
            }
            VmError::Oversized { len } => write!(f, "guest message of {len} bytes, over the cap"),
            VmError::Host(e) => write!(f, "host: {e}"),
            VmError::Exited { status } => write!(f, "guest exited with status {status}"),
            VmError::UnexpectedExit(e) => write!(f, "unexpected guest exit: {e}"),
        }
    }
}

impl std::error::Error for VmError {}

#[cfg(test)]
mod tests {
    use super::ioctls::*;

    /// The numbers of linux/kvm.h on x86-64: the tender's seccomp tables
    /// name these, so a wrong one would kill a working tender.
    #[test]
    fn ioctl_numbers_are_the_kernels() {
        for (got, want) in [
            (KVM_RUN, 0xae80),
            (KVM_GET_SREGS, 0x8138_ae83),
            (KVM_CREATE_VM, 0xae01),
            (KVM_CHECK_EXTENSION, 0xae03),
            (KVM_GET_VCPU_MMAP_SIZE, 0xae04),
            (KVM_GET_SUPPORTED_CPUID, 0xc008_ae05),
            (KVM_CREATE_VCPU, 0xae41),
            (KVM_SET_USER_MEMORY_REGION, 0x4020_ae46),
            (KVM_SET_REGS, 0x4090_ae82),
            (KVM_SET_SREGS, 0x4138_ae84),
            (KVM_SET_FPU, 0x41a0_ae8d),
            (KVM_SET_CPUID2, 0x4008_ae90),
        ] {
            assert_eq!(got, want, "{want:#x}");
        }
    }
}
