//! Sans-IO DHCPv4 client engine.
//!
//! The engine is a deterministic state machine (RFC 2131 section 4.4) that
//! consumes whole Ethernet frames and produces whole Ethernet frames plus
//! typed intents ([`mirage_ipc::EngineAction`]). It performs no syscalls:
//! time and randomness are inputs, so the same code runs in a sandboxed
//! process, in a KVM guest, under a fuzzer and in virtual-time simulations.
//!
//! # Driving the engine
//! ```text
//! let mut client = Client::new(config, stored_lease, now, seed);
//! let mut actions = Vec::new();
//! client.handle(now, EngineEvent::Tick, &mut actions);   // kicks off DISCOVER/INIT-REBOOT
//! loop {
//!     for a in actions.drain(..) { /* transmit / apply / persist / publish */ }
//!     wait until client.poll_at() or an event arrives;
//!     client.handle(now, event, &mut actions)            // Err(reason): log + count, nothing else
//! }
//! ```
//!
//! - `now` is [`Instant`]: milliseconds of a clock that counts through
//!   suspend (CLOCK_BOOTTIME on Linux). It must not go backwards (an
//!   earlier value is treated as the last one).
//! - Actions are carried out in order. Every `ApplyLease`, `RemoveLease` and
//!   `PersistLease` should be answered with
//!   `EngineEvent::IntentResult { kind, ok }`: a failed apply is retried with
//!   back-off while the lease is valid.
//! - Frames come in with `EngineEvent::Frame`, flagged `checksum_offloaded`
//!   when the kernel said the UDP checksum is not filled in yet.
//! - `EngineEvent::LinkDown`/`LinkUp` follow the carrier; `Renew` forces a
//!   renewal; `Stop` releases (if configured) and ends the client, after
//!   which `poll_at` is `Instant::NEVER`.
//! - Every `ApplyLease` passes [`Lease::check`]; the caller's actuator runs
//!   the same check again.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod client;
mod contract;
pub mod lease;
pub mod rng;
pub mod wire;

pub use client::Client;
pub use mirage_ipc::{DropReason, EngineAction, EngineConfig, EngineEvent, Instant, Lease};
