//! The hypercalls ([`mirage_kvm_abi`]): one `out` each, arguments in
//! registers. This module is where the guest trusts the tender: the tender
//! writes into the buffers given to [`recv`] and [`seed`] while the guest is
//! stopped at the `out`, and nowhere else.

use mirage_engine::Route;
use mirage_kvm_abi as abi;

/// One hypercall: returns `rax` and `rdx` as the tender left them.
///
/// # Safety
/// Every address among the arguments must be one the call may use as the
/// ABI says: the tender writes up to the given length at a receive or seed
/// buffer, and reads a send or log buffer.
pub unsafe fn raw(port: u16, a: u64, b: u64, c: u64) -> (u64, u64) {
    let r0: u64;
    let r1: u64;
    // SAFETY: `out` to a hypercall port (the only ports the TSS opens to
    // ring 3) exits to the tender, which reads or writes only what the
    // caller's contract allows, then resumes after the instruction with
    // `rax`/`rdx` set. Memory is not declared untouched: the tender may
    // have written guest memory.
    unsafe {
        core::arch::asm!(
            "out dx, al",
            inout("rdx") u64::from(port) => r1,
            inout("rax") 0u64 => r0,
            in("rdi") a,
            in("rsi") b,
            in("r8") c,
            options(nostack)
        );
    }
    (r0, r1)
}

/// What [`recv`] got.
pub enum Recv {
    Message(usize),
    Timeout,
    Closed,
}

/// Wait until `deadline_ms` for the next message into `buf`; also returns
/// the boot clock when the wait ended.
pub fn recv(buf: &mut [u8], deadline_ms: u64) -> (Recv, u64) {
    // SAFETY: `buf` is writable for its length, the most the tender writes.
    let (r, now) = unsafe {
        raw(
            abi::PORT_RECV,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            deadline_ms,
        )
    };
    let got = match r {
        abi::RECV_TIMEOUT => Recv::Timeout,
        abi::RECV_CLOSED => Recv::Closed,
        n => Recv::Message(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    (got, now)
}

/// Send one message: the tender's answer, [`abi::SEND_OK`] (a tender that
/// cannot deliver it ends the guest instead).
pub fn send(to: Route, message: &[u8]) -> u64 {
    let route = match to {
        Route::Supervisor => abi::ROUTE_SUPERVISOR,
        Route::Peer => abi::ROUTE_PEER,
    };
    // SAFETY: the tender only reads `message`, within its length.
    unsafe {
        raw(
            abi::PORT_SEND,
            route,
            message.as_ptr() as u64,
            message.len() as u64,
        )
    }
    .0
}

/// One line for the tender's log.
pub fn log(line: &[u8]) {
    // SAFETY: the tender only reads `line`, within its length.
    unsafe { raw(abi::PORT_LOG, line.as_ptr() as u64, line.len() as u64, 0) };
}

/// Randomness from the host.
pub fn seed() -> [u8; abi::SEED_LEN] {
    let mut seed = [0u8; abi::SEED_LEN];
    // SAFETY: `seed` is writable for SEED_LEN bytes, what the tender fills.
    unsafe { raw(abi::PORT_SEED, seed.as_mut_ptr() as u64, 0, 0) };
    seed
}

/// Stop the guest with `status`.
pub fn exit(status: u64) -> ! {
    loop {
        // SAFETY: no memory is involved; the tender never resumes a guest
        // after this call (the loop only keeps the type honest).
        unsafe { raw(abi::PORT_EXIT, status, 0, 0) };
    }
}
