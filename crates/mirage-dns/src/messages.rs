//! What the network role tells the supervisor (postcard, one message per
//! datagram, like every SDK channel). Its traffic with the engine is the
//! engine's own envelope (`mirage_engine::ToEngineOf<Forwarder>`) over the
//! direct channel; the supervisor sends the network role nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::OutboundRefusal;

/// Network role -> supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromNetwork {
    /// Its counters, sent at most once a second when they changed.
    Stats(NetworkStats),
}

/// Supervisor -> network role: nothing (the type has no value, so any
/// message is a protocol error).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToNetwork {}

/// The network role's counters since it started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub udp_queries: u64,
    pub tcp_queries: u64,
    pub tcp_accepted: u64,
    /// Connections closed at once: `limits.tcp_clients` were open.
    pub tcp_over_limit: u64,
    /// Connections closed after `limits.tcp_idle_ms` with nothing
    /// outstanding, or for a framing error or an oversized query.
    pub tcp_closed_idle: u64,
    pub tcp_closed_bad: u64,
    /// Answers sent to clients.
    pub answers: u64,
    /// Client datagrams not passed on: shorter than a header, or responses.
    pub not_queries: u64,
    /// Client queries not passed on: `limits.pending_queries` waiting.
    pub pending_full: u64,
    /// Client queries (and TCP connections) from outside `allow`: dropped
    /// unanswered.
    pub not_allowed: u64,
    /// Client queries over their address's `limits.client_per_second`:
    /// dropped unanswered.
    pub rate_limited: u64,
    /// Client queries that got no answer within `limits.query_timeout_ms`.
    pub expired: u64,
    /// Batches the engine's channel would not take at once (dropped: DNS
    /// clients retry).
    pub engine_busy: u64,
    pub upstream_queries: u64,
    /// Of which over TCP (a truncated answer's retry).
    pub tcp_upstream_queries: u64,
    pub upstream_replies: u64,
    /// Upstream sockets that could not be opened or sent on.
    pub upstream_errors: u64,
    /// What the engine asked that the role's policy refused, by reason.
    pub refused: BTreeMap<OutboundRefusal, u64>,
}
