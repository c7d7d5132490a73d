//! The engine role: every untrusted byte is parsed here, by a process with
//! no capabilities, no files, no sockets but its channel, and a seccomp
//! allow-list of a handful of calls. It only relays between the channel and
//! the sans-IO [`dhcp_engine::Client`], stamping events with CLOCK_BOOTTIME.

use std::os::fd::AsFd;

use dhcp_engine::Client;
use mirage_ipc::{EngineAction, EngineEvent, FromEngine, ToEngine};
use mirage_sdk::channel::{Channel, wait_readable};
use mirage_sdk::clock::boottime;

use super::{FD_CHANNEL, RoleArgs};

/// Longest single sleep of the engine loop (see the suspend note below).
const MAX_SLEEP_MS: u64 = 5_000;

pub fn run(args: &RoleArgs) -> Result<(), String> {
    let chan = Channel::from_raw_fd(FD_CHANNEL).map_err(|e| format!("channel: {e}"))?;
    super::sandbox::enter(args, super::sandbox::Profile::Engine)?;
    let Some(ToEngine::Start {
        config,
        stored,
        seed,
        link_up,
    }) = chan
        .recv::<ToEngine>()
        .map_err(|e| format!("first message: {e}"))?
    else {
        return Err("the first message was not Start".into());
    };
    let mut client = Client::new(config, stored, boottime(), seed);
    let mut actions: Vec<EngineAction> = Vec::new();
    let first = if link_up {
        EngineEvent::Tick
    } else {
        EngineEvent::LinkDown
    };
    let _ = client.handle(boottime(), first, &mut actions);
    let mut routes_dropped = 0;
    loop {
        for action in actions.drain(..) {
            if let EngineAction::PublishStatus(st) = &action
                && st.counters.routes_dropped > routes_dropped
            {
                // The engine is no_std and logs nothing itself; its counter
                // says the policy dropped routes from a server's reply.
                log::warn!(
                    "the lease policy dropped {} route(s) from the server's replies \
                     (see [limits] min_route_prefix_len, ignore_classless_routes)",
                    st.counters.routes_dropped - routes_dropped
                );
                routes_dropped = st.counters.routes_dropped;
            }
            chan.send(&FromEngine::Action(action))
                .map_err(|e| format!("send: {e}"))?;
        }
        let now = boottime();
        let due = client.poll_at();
        if due.0 == u64::MAX {
            // Stopped: nothing more to do; wait for the supervisor to close.
            let _ = wait_readable(&[chan.as_fd()], None);
        } else if due > now {
            // poll's timeout runs on CLOCK_MONOTONIC, which stops during
            // suspend; waking at least every few seconds and re-reading
            // CLOCK_BOOTTIME finds the lease state right soon after resume.
            let wait = due.since(now).min(MAX_SLEEP_MS);
            wait_readable(&[chan.as_fd()], Some(wait)).map_err(|e| format!("poll: {e}"))?;
        }
        // Whatever woke us, read what is there without blocking.
        let ready = wait_readable(&[chan.as_fd()], Some(0)).map_err(|e| format!("poll: {e}"))?;
        let event = if ready[0] {
            match chan.recv::<ToEngine>() {
                Ok(Some(ToEngine::Event(e))) => e,
                Ok(Some(ToEngine::Start { .. })) => return Err("unexpected second Start".into()),
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad message from the supervisor: {e}")),
            }
        } else {
            EngineEvent::Tick
        };
        if let Err(reason) = client.handle(boottime(), event, &mut actions) {
            chan.send(&FromEngine::Dropped(reason))
                .map_err(|e| format!("send: {e}"))?;
        }
    }
}
