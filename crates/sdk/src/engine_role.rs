//! The engine role as a process: the contract's runner
//! ([`mirage_engine::run`]) over the role's channel and the boot clock.
//! Every service's engine role is this plus its sandbox.

use std::os::fd::AsFd;

use mirage_engine::{Engine, Host, Instant, Received};

use crate::channel::{Channel, ChannelError, wait_readable};
use crate::clock::boottime;

/// Longest single sleep: poll's timeout runs on CLOCK_MONOTONIC, which
/// stops during suspend; waking at least this often and re-reading
/// CLOCK_BOOTTIME notices a lease or poll interval that ran out meanwhile.
const MAX_SLEEP_MS: u64 = 5_000;

/// A sandboxed process's [`Host`]: its channel to the supervisor.
pub struct ChannelHost {
    chan: Channel,
}

impl ChannelHost {
    pub fn new(chan: Channel) -> Self {
        ChannelHost { chan }
    }
}

impl Host for ChannelHost {
    type Error = ChannelError;

    fn now(&mut self) -> Instant {
        boottime()
    }

    fn recv(&mut self, deadline: Instant, buf: &mut [u8]) -> Result<Received, ChannelError> {
        let timeout = if deadline == Instant::NEVER {
            None
        } else {
            Some(deadline.since(boottime()).min(MAX_SLEEP_MS))
        };
        if !wait_readable(&[self.chan.as_fd()], timeout)?[0] {
            return Ok(Received::Timeout);
        }
        Ok(match self.chan.recv_into(buf)? {
            Some(n) => Received::Message(n),
            None => Received::Closed,
        })
    }

    fn send(&mut self, message: &[u8]) -> Result<(), ChannelError> {
        Ok(self.chan.send_raw(message)?)
    }
}

/// Run engine `E` in this process on `chan` until the supervisor closes it.
/// Call it once the role's sandbox is in force.
pub fn run<E: Engine>(chan: Channel) -> Result<(), String> {
    mirage_engine::run::<E, _>(&mut ChannelHost::new(chan)).map_err(|e| e.to_string())
}
