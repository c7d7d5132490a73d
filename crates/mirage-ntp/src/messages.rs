//! What the supervisor and the roles say to each other (postcard, one
//! message per datagram, like every SDK channel). The engine's own
//! messages are the SDK envelope around `ntp_engine`'s types
//! (`mirage_engine::ToEngineOf<Ntp>`).

use std::net::SocketAddr;

use ntp_engine::NtpTimestamp;
use serde::{Deserialize, Serialize};

use crate::policy::{ClockIntent, ClockRefusal, StepAcceptance};

/// Supervisor -> network role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToNetwork {
    /// One request of the engine's (`ntp_engine::Action::Send`).
    Send {
        to: SocketAddr,
        transmit: NtpTimestamp,
        data: Vec<u8>,
    },
    /// One DNS query of the engine's (`ntp_engine::Action::Resolve`): sent
    /// from one of the resolver's sockets, whose answers come back as
    /// [`FromNetwork::Resolved`] with the same `query`.
    Resolve {
        query: u64,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

/// Network role -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromNetwork {
    /// A datagram from server `from` (its socket is connected to it), and
    /// when the kernel received it (T4); `kernel_stamp` false: the kernel
    /// gave no timestamp and `at` was read when the role read it.
    Received {
        from: SocketAddr,
        data: Vec<u8>,
        at: NtpTimestamp,
        kernel_stamp: bool,
    },
    /// The request with this transmit cookie left for `to` at `at` (T1,
    /// read right before the send: see the network role).
    Sent {
        to: SocketAddr,
        transmit: NtpTimestamp,
        at: NtpTimestamp,
    },
    /// A request the role would not send.
    Refused { to: SocketAddr, why: OutboundRefusal },
    /// A request that could not leave: no route to `to` (ENETUNREACH,
    /// EHOSTUNREACH), or its socket is not connected yet because there was
    /// none at start (the supervisor connects it once there is).
    NoRoute { to: SocketAddr },
    /// A datagram from resolver `from` on the socket that carried DNS
    /// query `query` (the socket is connected to the resolver).
    Resolved {
        query: u64,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

/// Why the network role refused to send.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutboundRefusal {
    /// Not one of the configured servers (address and port).
    NotAServer,
    /// Not exactly a client request carrying only its transmit cookie.
    NotARequest,
    /// More requests to that server than any poll schedule sends.
    RateCapped,
    /// A DNS query to another than a configured resolver.
    NotAResolver,
    /// Not exactly a standard query for A or AAAA of a configured name.
    NotAQuery,
    /// Every socket of that resolver has a query in flight.
    ResolverBusy,
}

impl OutboundRefusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboundRefusal::NotAServer => "not-a-server",
            OutboundRefusal::NotARequest => "not-a-request",
            OutboundRefusal::RateCapped => "rate-capped",
            OutboundRefusal::NotAResolver => "not-a-resolver",
            OutboundRefusal::NotAQuery => "not-a-query",
            OutboundRefusal::ResolverBusy => "resolver-busy",
        }
    }
}

/// Supervisor -> actuator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToActuator {
    /// Check `intent` against the policy and apply it; answered by
    /// [`FromActuator::Result`] with the same `id`.
    Apply { id: u64, intent: ClockIntent },
    /// An operator accepted a held step (`mirage-ntp accept-step`): the
    /// actuator checks and records it ([`crate::policy::PolicyState::accept_step`]);
    /// answered by [`FromActuator::Acceptance`].
    AcceptStep(StepAcceptance),
}

/// Actuator -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromActuator {
    /// First message: the mode, and whether the kernel lets it steer the
    /// clock (probed at start; always false when observing, which never
    /// probes).
    Ready {
        observe: bool,
        steerable: bool,
    },
    Result {
        id: u64,
        outcome: Outcome,
    },
    /// The answer to [`ToActuator::AcceptStep`]: `Applied` (recorded) or
    /// `Refused`.
    Acceptance {
        outcome: Outcome,
    },
}

/// What became of an intent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// `--observe`: it passed the policy and was not applied.
    Observed,
    Refused(ClockRefusal),
    /// The kernel or the file system said no (the error's text).
    Failed(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Observed => "observed",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }
}
