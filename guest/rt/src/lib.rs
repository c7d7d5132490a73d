//! The runtime of a MirageSDK KVM guest: everything an engine needs to run
//! as a freestanding ring-3 program under the tender (`mirage-kvm`).
//!
//! - `_start` (the image's entry): the tender hands over the heap's place
//!   in registers and the stack in `rsp` ([`mirage_kvm_abi`]);
//! - the heap: a free-list allocator over that region;
//! - panics: the message goes out through the log hypercall, then the guest
//!   exits with [`PANIC_STATUS`];
//! - [`HypercallHost`]: the engine contract's [`Host`] over the hypercalls,
//!   so [`guest_main`] is the same runner ([`mirage_engine::run`]) that a
//!   sandboxed process uses.
//!
//! An image is one line: [`guest!`] with its engine type.
//!
//! `unsafe` lives in [`hypercall`] (the `out` instruction and the pointers
//! the tender reads or fills) and in the entry and heap set-up here; each
//! block says why it holds.
#![no_std]

extern crate alloc;
// The memory functions the compiler calls: linked into every image.
extern crate mirage_guest_mem as _;

pub mod hypercall;

use core::fmt::{self, Write};

use mirage_engine::{Engine, Host, Instant, Received, Route};

/// The status a guest exits with after a panic.
pub const PANIC_STATUS: u64 = 101;
/// The status a guest exits with when its engine's runner stops with an
/// error (logged first).
pub const ERROR_STATUS: u64 = 1;

/// Define an image's entry: run engine `$engine` until the supervisor
/// closes the channel.
#[macro_export]
macro_rules! guest {
    ($engine:ty) => {
        // The runtime's entry calls this once the heap is ready.
        #[unsafe(no_mangle)]
        extern "Rust" fn __mirage_guest_main() -> ! {
            $crate::guest_main::<$engine>()
        }
    };
}

/// Run `E` over the hypercalls; exit 0 when the supervisor closes the
/// channel, [`ERROR_STATUS`] (after logging why) when the runner fails.
pub fn guest_main<E: Engine>() -> ! {
    let mut host = HypercallHost::default();
    match mirage_engine::run::<E, _>(&mut host) {
        Ok(()) => hypercall::exit(0),
        Err(e) => {
            log_fmt(format_args!("engine stopped: {e}"));
            hypercall::exit(ERROR_STATUS)
        }
    }
}

/// The engine contract's [`Host`] inside a guest: every receive and send is
/// one hypercall, and the clock is the one the last receive returned (the
/// runner reads it right after each receive; the guest has no clock of its
/// own and a hypercall only for the time would double the exits).
#[derive(Default)]
pub struct HypercallHost {
    now: Instant,
}

/// What the tender answered that the runner cannot go on from.
#[derive(Debug)]
pub enum HostError {
    /// The tender answered a send with something other than SEND_OK.
    SendRefused(u64),
    /// A length that does not fit the buffer given (a broken tender).
    BadLength(u64),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::SendRefused(code) => write!(f, "the tender refused a message ({code})"),
            HostError::BadLength(n) => {
                write!(f, "the tender returned a message of {n} bytes, over the buffer")
            }
        }
    }
}

impl Host for HypercallHost {
    type Error = HostError;

    fn now(&mut self) -> Instant {
        self.now
    }

    fn recv(&mut self, deadline: Instant, buf: &mut [u8]) -> Result<Received, HostError> {
        let (got, now) = hypercall::recv(buf, deadline.millis());
        self.now = Instant(now);
        Ok(match got {
            hypercall::Recv::Message(n) if n <= buf.len() => Received::Message(n),
            hypercall::Recv::Message(n) => return Err(HostError::BadLength(n as u64)),
            hypercall::Recv::Timeout => Received::Timeout,
            hypercall::Recv::Closed => Received::Closed,
        })
    }

    fn send(&mut self, to: Route, message: &[u8]) -> Result<(), HostError> {
        match hypercall::send(to, message) {
            mirage_kvm_abi::SEND_OK => Ok(()),
            code => Err(HostError::SendRefused(code)),
        }
    }
}

/// A line for the tender's log, formatted without the heap (it may be what
/// failed) and cut at [`mirage_kvm_abi::LOG_MAX`].
pub fn log_fmt(args: fmt::Arguments<'_>) {
    let mut line = LineBuf {
        buf: [0; mirage_kvm_abi::LOG_MAX],
        len: 0,
    };
    let _ = line.write_fmt(args);
    hypercall::log(&line.buf[..line.len]);
}

struct LineBuf {
    buf: [u8; mirage_kvm_abi::LOG_MAX],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() { Err(fmt::Error) } else { Ok(()) }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log_fmt(format_args!("guest panic: {info}"));
    hypercall::exit(PANIC_STATUS)
}

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

unsafe extern "Rust" {
    /// Defined by the image ([`guest!`]).
    fn __mirage_guest_main() -> !;
}

// The entry point: the tender starts the guest here in ring 3 with the
// stack ready (`rsp`) and the heap's place in `rdi`/`rsi`, which go on to
// `start` as its arguments. No frame pointer chain above this.
core::arch::global_asm!(
    ".pushsection .text._start,\"ax\",@progbits",
    ".globl _start",
    "_start:",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call {start}",
    "    ud2",
    ".popsection",
    start = sym start,
);

extern "C" fn start(heap_base: usize, heap_len: usize) -> ! {
    // SAFETY: the tender hands this region to the guest for its heap alone
    // (mapped writable, outside the image, the stack and everything the
    // tender owns), and this runs once, before anything allocates.
    unsafe { HEAP.lock().init(heap_base as *mut u8, heap_len) };
    // SAFETY: defined by the image through `guest!`, with this signature.
    unsafe { __mirage_guest_main() }
}

// The precompiled core carries unwinding references that a panic=abort
// image never reaches; these only satisfy the linker.
#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    hypercall::exit(PANIC_STATUS)
}

#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
