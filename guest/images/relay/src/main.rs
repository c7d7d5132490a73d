//! A test guest for the direct channel between an engine and another role
//! (`mirage_sdk::runtime::Runtime::link`): its actions go to the
//! supervisor or to the peer by [`Engine::route`], and it reads events from
//! both. Plain numbers, so a test speaks to it without a shared crate:
//! `Start` is `()`, an event is a `u32`, an action is a `u32`.
//! - at start: action 0, to the supervisor (a hello);
//! - an even event `n > 0`: action `n`, to the peer;
//! - an odd event: refused (the refusal goes to the supervisor);
//! - event 0: action 0 again, to the supervisor.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use mirage_engine::{Engine, Instant, Route};

pub struct Relay;

impl Engine for Relay {
    type Start = ();
    type Event = u32;
    type Action = u32;
    type Refusal = u32;

    fn start(_: (), _: Instant, _: [u8; 32], out: &mut Vec<u32>) -> Self {
        out.push(0);
        Relay
    }

    fn handle(&mut self, _: Instant, n: u32, out: &mut Vec<u32>) -> Result<(), u32> {
        if n % 2 == 1 {
            return Err(n);
        }
        out.push(n);
        Ok(())
    }

    fn on_timer(&mut self, _: Instant, _: &mut Vec<u32>) {}

    fn poll_at(&self) -> Instant {
        Instant::NEVER
    }

    fn route(action: &u32) -> Route {
        if *action == 0 {
            Route::Supervisor
        } else {
            Route::Peer
        }
    }
}

mirage_guest_rt::guest!(Relay);
