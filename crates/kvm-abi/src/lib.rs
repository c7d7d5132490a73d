//! The contract between the KVM tender (`mirage-kvm`) and a guest image
//! (`mirage-guest-rt`): both sides build from these numbers, so they cannot
//! drift apart.
//!
//! A hypercall is one `out dx, al` from ring 3 with the port (below) in
//! `rdx` and the arguments in `rdi`, `rsi` and `r8`; the TSS's I/O bitmap
//! opens exactly these ports to ring 3 (IOPL stays 0). The tender answers in
//! `rax` (and `rdx` for [`PORT_RECV`]) and resumes the guest after the `out`.
//! The byte written is ignored. Every pointer is a guest address; the
//! tender checks it against the guest's memory map before it copies a byte.
//!
//! At entry (the image's ELF entry point, in ring 3) `rdi` is the heap's
//! first byte and `rsi` its length, and `rsp` is the top of the stack; both
//! regions are the guest's alone.
#![no_std]
#![forbid(unsafe_code)]

/// Receive the next message: `rdi` buffer, `rsi` its capacity, `r8` the
/// deadline (boot-clock milliseconds, `u64::MAX` for none). Returns in `rax`
/// the message length, [`RECV_TIMEOUT`] or [`RECV_CLOSED`], and in `rdx` the
/// boot clock when the call returned. An engine with a direct channel to a
/// peer role gets the next message of either channel (the supervisor's
/// first when both have one), as `mirage_engine::Host::recv` says: both
/// send the same messages, so no channel index is needed, and one exit
/// still moves one message.
pub const PORT_RECV: u16 = 0x7a0;
/// Send one message: `rdi` the route ([`ROUTE_SUPERVISOR`] or
/// [`ROUTE_PEER`]), `rsi` the bytes, `r8` their length (at most the
/// runtime's cap, `mirage_engine::codec::MAX_MESSAGE_LEN`). Returns
/// [`SEND_OK`] in `rax`; a message the tender cannot deliver (a route with
/// no channel, a closed channel) ends the guest instead.
pub const PORT_SEND: u16 = 0x7a1;
/// Log one line: `rdi` the bytes, `rsi` their length (longer lines are cut
/// at [`LOG_MAX`]).
pub const PORT_LOG: u16 = 0x7a2;
/// Fill [`SEED_LEN`] bytes at `rdi` with randomness from the host.
pub const PORT_SEED: u16 = 0x7a3;
/// Stop the guest with status `rdi` (0: the supervisor closed the channel
/// and the engine's work is over). Never returns.
pub const PORT_EXIT: u16 = 0x7a4;
/// Used only by the tender's own exception stubs, which run in ring 0 when
/// the guest faults: `rdi` is the exception vector. A guest that writes to
/// it only reports itself as crashed.
pub const PORT_FAULT: u16 = 0x7af;

pub const RECV_TIMEOUT: u64 = u64::MAX - 1;
pub const RECV_CLOSED: u64 = u64::MAX;

pub const ROUTE_SUPERVISOR: u64 = 0;
pub const ROUTE_PEER: u64 = 1;

pub const SEND_OK: u64 = 0;

pub const SEED_LEN: usize = 32;
pub const LOG_MAX: usize = 1024;

/// Where a guest image is linked (`guest.ld`) and loaded: everything below
/// belongs to the tender (descriptor tables, exception stubs, page tables).
pub const IMAGE_BASE: u64 = 0x10_0000;

pub const PAGE_SIZE: u64 = 4096;
