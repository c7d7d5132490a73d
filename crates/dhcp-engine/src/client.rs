//! The RFC 2131 client state machine.
//!
//! INTERFACE CONTRACT (used by the engine role, the KVM guest, fuzzers and
//! simulations; keep these signatures stable):

use alloc::vec::Vec;
use mirage_ipc::{DropReason, EngineAction, EngineConfig, EngineEvent, Instant, Lease};

pub struct Client {
    _private: (),
}

impl Client {
    /// `stored`: a lease from a previous run, already on this boot's clock;
    /// if still valid the client starts in INIT-REBOOT, else INIT.
    /// Nothing is sent until the first `handle` call.
    pub fn new(config: EngineConfig, stored: Option<Lease>, now: Instant, seed: [u8; 32]) -> Client {
        let _ = (config, stored, now, seed);
        todo!()
    }

    /// Feed one event at time `now` (never earlier than a previous call).
    /// Actions are appended to `out` in the order they must be carried out.
    /// `Err` means a frame was dropped (counted already); the caller logs it.
    pub fn handle(
        &mut self,
        now: Instant,
        event: EngineEvent,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        let _ = (now, event, out);
        todo!()
    }

    /// The next instant at which `handle(now, Tick)` must be called; always
    /// finite unless the client is stopped.
    pub fn poll_at(&self) -> Instant {
        todo!()
    }
}
