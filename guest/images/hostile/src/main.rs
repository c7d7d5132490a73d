//! A guest that attacks its tender, for the tender's tests: its first
//! message names the attack (a [`case`] byte, then an argument, u64
//! little-endian). Each one must end the guest with a clear error, or, for
//! the few that are legitimate, behave as the test expects. An attack that
//! is not stopped reports `survived` and exits with [`SURVIVED`].
//!
//! Run as a service's engine (mirage-dhcp's `kvm_guest_image`), the first
//! message is the service's own; there the attack is read from the image
//! itself: a test writes it into [`ATTACK`]'s bytes in the image file,
//! after the marker.
//!
//! This image is unsafe by design (`unsafe` is the attack); it is built only
//! with the `hostile` feature and never shipped.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use core::hint::black_box;

use case::*;
use mirage_guest_rt::hypercall::{self, Recv};
use mirage_kvm_abi as abi;

/// The exit status of a guest whose attack went unnoticed.
const SURVIVED: u64 = 77;

/// The attacks, by the first byte of the first message.
mod case {
    pub const SPIN: u8 = 1;
    pub const WRITE_CODE: u8 = 2;
    pub const READ_OUTSIDE: u8 = 3;
    pub const READ_TENDER: u8 = 4;
    pub const POINTER_PAST_MEMORY: u8 = 5;
    pub const RECV_INTO_CODE: u8 = 6;
    pub const UNKNOWN_PORT: u8 = 7;
    pub const OVERSIZED: u8 = 8;
    pub const UNDECODABLE: u8 = 9;
    pub const DIVIDE_BY_ZERO: u8 = 10;
    pub const EXECUTE_DATA: u8 = 11;
    pub const PANIC: u8 = 12;
    pub const HLT: u8 = 13;
    pub const HYPERCALLS: u8 = 14;
    pub const WRITE_PAGE_TABLES: u8 = 15;
    pub const LOG_FLOOD: u8 = 16;
}

/// The attack when the guest runs as a service's engine: the marker, then
/// the case byte and the argument (u64 little-endian) that a test writes
/// into the image file in place of the zeros. All zeros: the first message
/// picks the attack.
#[unsafe(no_mangle)]
#[used]
static ATTACK: [u8; 32] = *b"MIRAGE-HOSTILE-ATTACK:\0\0\0\0\0\0\0\0\0\0";
const MARKER_LEN: usize = 22;

#[unsafe(no_mangle)]
extern "Rust" fn __mirage_guest_main() -> ! {
    // Room for any message: a service's first one is its engine's start.
    let mut buf = [0u8; mirage_engine::codec::MAX_MESSAGE_LEN];
    // Volatile: the bytes are the image file's, not the constant's.
    // SAFETY: a read of a static's own bytes, aligned and initialised.
    let attack: [u8; 32] = unsafe { core::ptr::read_volatile(&raw const ATTACK) };
    let n = match hypercall::recv(&mut buf, u64::MAX).0 {
        Recv::Message(n) if n >= 1 => n,
        _ => hypercall::exit(2),
    };
    let n = if attack[MARKER_LEN] != 0 {
        // The service's message is not the attack: the image's bytes are.
        buf[..9].copy_from_slice(&attack[MARKER_LEN..MARKER_LEN + 9]);
        9
    } else {
        n
    };
    let mut arg = [0u8; 8];
    let m = n.saturating_sub(1).min(8);
    arg[..m].copy_from_slice(&buf[1..1 + m]);
    let arg = u64::from_le_bytes(arg);
    match buf[0] {
        SPIN => loop {
            black_box(());
        },
        WRITE_CODE => {
            let code = __mirage_guest_main as *const u8 as *mut u8;
            // SAFETY: none: the attack. The page is mapped read-only.
            unsafe { code.write_volatile(0xcc) };
        }
        READ_OUTSIDE => {
            // SAFETY: none: the attack. Nothing is mapped at 1 GiB.
            black_box(unsafe { (0x4000_0000 as *const u64).read_volatile() });
        }
        READ_TENDER => {
            // SAFETY: none: the attack. The tender's descriptor tables are
            // mapped for ring 0 only.
            black_box(unsafe { (0x1000 as *const u64).read_volatile() });
        }
        WRITE_PAGE_TABLES => {
            // SAFETY: none: the attack. The page tables are not mapped at all.
            unsafe { (arg as *mut u64).write_volatile(u64::MAX) };
        }
        POINTER_PAST_MEMORY => {
            // `arg` is the guest's memory size: 16 bytes straddling its end.
            // SAFETY: none: the attack (the tender must refuse to read).
            unsafe { hypercall::raw(abi::PORT_SEND, abi::ROUTE_SUPERVISOR, arg - 8, 16) };
        }
        RECV_INTO_CODE => {
            let code = __mirage_guest_main as *const u8 as u64;
            // SAFETY: none: the attack (the tender must refuse to write).
            unsafe { hypercall::raw(abi::PORT_RECV, code, 64, u64::MAX) };
        }
        UNKNOWN_PORT => {
            // SAFETY: none: the attack. Port 0x80 means nothing to the tender.
            unsafe { core::arch::asm!("out 0x80, al", in("al") 0u8, options(nostack)) };
        }
        OVERSIZED => {
            let big = vec![0u8; usize::try_from(arg).unwrap_or(0)];
            hypercall::send(mirage_engine::Route::Supervisor, &big);
        }
        UNDECODABLE => {
            // Relayed as it is: the supervisor's decoder refuses it.
            hypercall::send(mirage_engine::Route::Supervisor, &[0xff; 16]);
            let (got, _) = hypercall::recv(&mut buf, u64::MAX);
            hypercall::exit(if matches!(got, Recv::Closed) { 0 } else { 3 })
        }
        DIVIDE_BY_ZERO => {
            // SAFETY: none: the attack (a real `div` by zero, #DE).
            unsafe {
                core::arch::asm!("div ecx", inout("eax") 1u32 => _, inout("edx") 0u32 => _, in("ecx") black_box(0u32), options(nostack, nomem))
            };
        }
        EXECUTE_DATA => {
            // On the heap: the data the attack tries to run.
            let ret = alloc::boxed::Box::new([0xc3u8; 16]);
            // SAFETY: none: the attack. The heap is never executable.
            let f: extern "C" fn() = unsafe { core::mem::transmute(ret.as_ptr()) };
            f();
        }
        PANIC => panic!("hostile guest panics on purpose ({arg})"),
        HLT => {
            // SAFETY: none: the attack (`hlt` is for ring 0).
            unsafe { core::arch::asm!("hlt", options(nostack, nomem)) };
        }
        HYPERCALLS => {
            // `arg` seed hypercalls, then one message: a round-trip probe.
            let mut acc = 0u8;
            for _ in 0..arg {
                acc ^= hypercall::seed()[0];
            }
            hypercall::send(mirage_engine::Route::Supervisor, &[acc]);
            hypercall::exit(0)
        }
        LOG_FLOOD => {
            // `arg` lines as fast as the guest can: the tender rate-limits them.
            for i in 0..arg {
                mirage_guest_rt::log_fmt(format_args!("flood line {i}"));
            }
            hypercall::exit(0)
        }
        _ => hypercall::exit(2),
    }
    hypercall::send(mirage_engine::Route::Supervisor, b"survived");
    hypercall::exit(SURVIVED)
}
