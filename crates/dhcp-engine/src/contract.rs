//! The DHCP client as a MirageSDK engine ([`mirage_engine::Engine`]), so
//! that the SDK's runners (role process, KVM guest, simulation, fuzzer)
//! drive it like every other service's engine.

use alloc::vec::Vec;

use mirage_engine::Engine;
use mirage_ipc::{DropReason, EngineAction, EngineEvent, EngineStart, Instant};

use crate::Client;

impl Engine for Client {
    type Start = EngineStart;
    type Event = EngineEvent;
    type Action = EngineAction;
    type Refusal = DropReason;

    fn start(start: EngineStart, now: Instant, seed: [u8; 32], out: &mut Vec<EngineAction>) -> Client {
        let mut client = Client::new(start.config, start.stored, now, seed);
        // Carrier decides the first step: INIT-REBOOT or DISCOVER now, or
        // wait for the link (keeping any stored lease).
        let first = if start.link_up {
            EngineEvent::Tick
        } else {
            EngineEvent::LinkDown
        };
        let _ = client.handle(now, first, out);
        client
    }

    fn handle(
        &mut self,
        now: Instant,
        event: EngineEvent,
        out: &mut Vec<EngineAction>,
    ) -> Result<(), DropReason> {
        Client::handle(self, now, event, out)
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<EngineAction>) {
        let _ = Client::handle(self, now, EngineEvent::Tick, out);
    }

    fn poll_at(&self) -> Instant {
        Client::poll_at(self)
    }
}
