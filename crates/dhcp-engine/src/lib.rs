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
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod client;
pub mod lease;
pub mod rng;
pub mod wire;

pub use client::Client;
pub use mirage_ipc::{DropReason, EngineAction, EngineConfig, EngineEvent, Instant, Lease};
