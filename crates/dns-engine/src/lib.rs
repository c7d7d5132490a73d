//! The DNS forwarder's engine (docs/dns.md): a sans-IO state machine that
//! reads every untrusted byte of the service (client queries, upstream
//! replies) and decides everything, implementing [`mirage_engine::Engine`].
//!
//! Its traffic comes and goes in batches over the direct channel to the
//! network role ([`Event::Batch`], [`Action::Batch`]; docs/architecture.md
//! says why): the network role names each client query by a token it
//! chose and each upstream query by the number the engine chose, and never
//! an address the engine could pick. What the engine says about itself
//! ([`Action::Status`]) and its refusals go to the supervisor.
//!
//! The forwarding core ([`Forwarder`]): a client query is checked strictly
//! (one question, opcode QUERY: RFC 1035 section 4.1.2; else FORMERR or
//! NOTIMP), sent upstream with a fresh random id and EDNS0 with a
//! 1232-octet payload (RFC 6891, the DNS flag day 2020 size), and a reply
//! is accepted only from the upstream it was sent to (the network role's
//! connected socket), with that id and the very question asked (RFC 5452
//! section 9.1); it is re-encoded for the client with the client's id and
//! question, its EDNS and its size limit (TC set and records dropped when
//! the answer does not fit, RFC 2181 section 9). A truncated upstream
//! answer is asked again over TCP (RFC 7766 section 5). Identical questions in
//! flight share one upstream query. Every upstream answer is cut down to
//! the question's CNAME chain before it reaches a client or the cache
//! (`sanitize`: no record for a name nobody asked); answers are cached,
//! positive for their smallest TTL and negative from their SOA (RFC
//! 2308), clamped, by question, bounded by their estimated memory with
//! the least recently used evicted first, TTLs counted down when served,
//! and optionally served stale when the upstreams fail (RFC 8767).
//! `localhost`, `invalid` and `onion` are answered here (RFC 6761, RFC
//! 7686). AD is never set in an answer: nothing is validated.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

/// Public for the memory test (`tests/cache_memory.rs`), not an API.
#[doc(hidden)]
pub mod cache;
mod forward;
mod sanitize;
pub mod upstreams;

use alloc::vec::Vec;
use core::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use forward::Forwarder;
pub use sanitize::MAX_CHAIN;

/// The port upstream servers are asked on unless configured otherwise.
pub const DNS_PORT: u16 = 53;
/// The UDP payload size we advertise upstream and to clients, and the
/// largest UDP answer we send (RFC 6891 section 6.2.5; the DNS flag day
/// 2020 value, which avoids IP fragmentation on common paths).
pub const EDNS_PAYLOAD: u16 = 1232;
/// A UDP answer to a client without EDNS (RFC 1035 section 4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// The largest datagram either side passes in a batch: a query or a reply
/// over UDP. Larger ones are dropped by the network role.
pub const MAX_DATAGRAM: usize = 4096;
/// The largest answer sent to a TCP client: what a DNS message's two-octet
/// TCP length can say (RFC 1035 section 4.2.2). One over [`PART_BYTES`]
/// crosses the channel in parts ([`Outbound::AnswerPart`]).
pub const MAX_TCP_ANSWER: usize = 65_535;
/// The largest answer taken from an upstream over TCP (the same); one
/// over [`PART_BYTES`] comes in parts ([`Inbound::ReplyPart`]).
pub const MAX_TCP_REPLY: usize = MAX_TCP_ANSWER;
/// The most of one message a batch item carries: a larger message is
/// split into parts of this size, so every item fits a batch (and a batch
/// the 8 KiB channel message).
pub const PART_BYTES: usize = 4096;
/// `data` as it crosses the channel: the parts of [`PART_BYTES`] before its
/// last (none for a message of at most one part), and the last, which goes
/// as the ordinary item ([`Outbound::Answer`], [`Inbound::Reply`]). Both
/// sides cut the same way.
pub fn parts(data: &[u8]) -> (core::slice::Chunks<'_, u8>, &[u8]) {
    let split = data.len().saturating_sub(1) / PART_BYTES * PART_BYTES;
    let (head, last) = data.split_at(split);
    (head.chunks(PART_BYTES), last)
}

/// What the engine holds at once of replies still arriving in parts; more
/// is refused (a network role cannot make it hoard memory).
pub const MAX_PARTS_HELD: usize = 1 << 20;
/// Payload bytes packed into one batch message: with the per-item framing
/// a batch stays under the channel's 8 KiB message cap
/// (`mirage_engine::codec::MAX_MESSAGE_LEN`), so a full batch never fails
/// to encode (which would end the engine).
pub const BATCH_BYTES: usize = 7168;
/// Framing allowance per batch item (enum tag, token, length prefix).
pub const ITEM_OVERHEAD: usize = 24;

/// How a client asked: its answer's size limit depends on it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The engine's configuration, from the supervisor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The upstream servers, in order of preference; a query names one by
    /// its index here.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream attempt may take before the next upstream is
    /// asked (milliseconds; clamped to 100..=10000).
    pub attempt_ms: u32,
    /// Upstream attempts per client query (clamped to 1..=4); when all
    /// fail the client gets SERVFAIL.
    pub attempts: u8,
    /// Client queries waiting for an upstream at once (clamped to
    /// 1..=65536); more are answered SERVFAIL at once.
    pub max_pending: u32,
    /// How often a changed status goes to the supervisor (milliseconds;
    /// clamped to 100..=60000).
    pub status_every_ms: u32,
    /// Randomize the case of each upstream question's letters and require
    /// it echoed exactly (draft-vixie-dnsext-dns0x20): more bits an
    /// off-path forger must guess. Off for an upstream that does not
    /// preserve case.
    pub randomize_case: bool,
    /// Memory the cache may take, in octets: its entries' blocks (key and
    /// answer) and its tables' whole capacity, with the allocator's
    /// overhead per block (0: no cache; at most 64 MiB).
    pub cache_bytes: u32,
    /// The longest an answer is cached or relayed with, whatever its TTLs
    /// say (seconds; clamped to 1..=604800).
    pub max_ttl_secs: u32,
    /// The shortest time an answer is cached (seconds, at most 86400;
    /// the TTLs served are never raised by it).
    pub min_ttl_secs: u32,
    /// The longest a negative answer (NXDOMAIN, NODATA) is cached
    /// (seconds, at most 86400).
    pub negative_max_ttl_secs: u32,
    /// Serve expired answers when every upstream attempt fails (RFC 8767),
    /// with a TTL of 30 s.
    pub serve_stale: bool,
    /// How long after its expiry an answer may still be served stale
    /// (seconds; clamped to 1..=604800).
    pub stale_max_age_secs: u32,
    /// The client response timer of RFC 8767 section 5: with serve-stale
    /// on, a client whose question has a stale answer and whose upstream
    /// query is still unanswered this long gets the stale answer, while
    /// the query goes on to refresh the cache (milliseconds; clamped to
    /// 100..=10000).
    pub stale_answer_ms: u32,
    /// Ask again for a cached answer that a client asks for in the last
    /// tenth of its time (and that is kept 10 s or more), while the client
    /// gets the cached answer at once: a name in use never expires from
    /// the cache (unbound's `prefetch`).
    pub prefetch: bool,
}

impl Default for Start {
    fn default() -> Start {
        Start {
            upstreams: Vec::new(),
            attempt_ms: 1500,
            attempts: 2,
            max_pending: 4096,
            status_every_ms: 1000,
            randomize_case: true,
            cache_bytes: 4 << 20,
            max_ttl_secs: 86_400,
            min_ttl_secs: 0,
            negative_max_ttl_secs: 3600,
            serve_stale: false,
            stale_max_age_secs: 86_400,
            // RFC 8767 section 5's suggestion: before a typical 2 s
            // client timeout.
            stale_answer_ms: 1800,
            prefetch: false,
        }
    }
}

/// Network role -> engine (over the direct channel).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// What the network role read since its last batch, in arrival order.
    Batch(Vec<Inbound>),
}

/// One item of an inbound batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A client's query; `client` is the network role's token for it, the
    /// only way to answer it.
    Query {
        client: u64,
        transport: Transport,
        data: Vec<u8>,
    },
    /// A datagram on the socket of upstream query `query` (connected to
    /// that query's upstream, so from its address and port).
    Reply { query: u32, data: Vec<u8> },
    /// Upstream query `query` could not be sent or its upstream refused it
    /// (ICMP port unreachable); its socket is closed.
    Failed { query: u32 },
    /// The next [`PART_BYTES`] of a TCP reply of `total` octets to upstream
    /// query `query`, in order; its last part comes as [`Inbound::Reply`].
    ReplyPart { query: u32, total: u16, data: Vec<u8> },
}

/// Engine -> network role (a batch) or supervisor (its status).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Batch(Vec<Outbound>),
    Status(Status),
}

/// One item of an outbound batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// The answer to client query `client`.
    Answer { client: u64, data: Vec<u8> },
    /// Client query `client` gets no answer (a query too broken to answer:
    /// no header to echo); the network role forgets it.
    Drop { client: u64 },
    /// Send `data` to upstream `upstream` (an index into
    /// [`Start::upstreams`]) from a fresh socket, named `query` from now on.
    Query { query: u32, upstream: u8, data: Vec<u8> },
    /// Send `data` to upstream `upstream` over a fresh TCP connection
    /// (framed with its two-octet length, RFC 7766 section 8), named
    /// `query`; its answer comes back as [`Inbound::Reply`], at most
    /// [`MAX_TCP_REPLY`] octets, and the connection is closed after it.
    TcpQuery { query: u32, upstream: u8, data: Vec<u8> },
    /// Upstream query `query` is over: close its socket.
    Close { query: u32 },
    /// The next [`PART_BYTES`] of an answer of `total` octets to TCP client
    /// query `client`, in order; its last part comes as
    /// [`Outbound::Answer`], and the network role checks the whole.
    AnswerPart { client: u64, total: u16, data: Vec<u8> },
}

/// Why inbound items were refused, with how many of each in one batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub counts: Vec<(Reason, u32)>,
}

/// Why one inbound item was refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A client datagram that is not a DNS message (no header, or a
    /// response).
    NotAQuery,
    /// A reply for an upstream query that is not outstanding.
    UnknownQuery,
    /// A reply that does not parse.
    MalformedReply,
    /// A reply whose id, flags or question is not the query's (RFC 5452
    /// section 9.1): spoofed, or a confused upstream.
    MismatchedReply,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotAQuery => "not-a-query",
            Reason::UnknownQuery => "unknown-query",
            Reason::MalformedReply => "malformed-reply",
            Reason::MismatchedReply => "mismatched-reply",
        }
    }
}

/// What the engine publishes about itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Client queries waiting for an upstream now.
    pub pending: u32,
    /// Each upstream's time and failures, in [`Start::upstreams`]' order
    /// (docs/dns.md, "Upstream choice").
    pub upstreams: Vec<upstreams::UpstreamStatus>,
    /// Answers in the cache now, and their estimated memory.
    pub cache_entries: u32,
    pub cache_bytes: u32,
    pub counters: Counters,
}

/// Counters since the engine started.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub queries: u64,
    /// Answers relayed from an upstream.
    pub answered: u64,
    /// Answers truncated to fit the client's size (TC set).
    pub truncated: u64,
    pub formerr: u64,
    pub notimp: u64,
    /// SERVFAIL: every attempt failed, or too many queries pending.
    pub servfail: u64,
    /// Client queries joined to an identical one already upstream.
    pub merged: u64,
    /// Client queries answered from the cache (negative answers too).
    pub cache_hits: u64,
    /// Of those, negative answers (NXDOMAIN, NODATA).
    pub negative_hits: u64,
    /// Client queries the cache could not answer.
    pub cache_misses: u64,
    /// Expired answers served because the upstreams failed (RFC 8767).
    pub stale_answers: u64,
    /// Special-use names answered without an upstream (RFC 6761, 7686).
    pub local_answers: u64,
    /// Cached answers asked for again before they expire (`prefetch`).
    pub prefetches: u64,
    /// Upstream answers refused for their CNAME chain (a loop, two CNAMEs
    /// for one name, over 16 hops): SERVFAIL.
    pub unusable: u64,
    pub upstream_queries: u64,
    /// Upstream queries asked again over TCP after a truncated answer.
    pub tcp_retries: u64,
    pub upstream_timeouts: u64,
    pub upstream_failures: u64,
    /// Replies accepted from upstreams.
    pub upstream_replies: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_cut_into_whole_parts_and_a_last_one() {
        for (len, head, last) in [
            (0, 0, 0),
            (1, 0, 1),
            (4096, 0, 4096),
            (4097, 1, 1),
            (8192, 1, 4096),
            (65_535, 15, 4095),
        ] {
            let data = alloc::vec![7u8; len];
            let (parts, rest) = parts(&data);
            let parts: alloc::vec::Vec<&[u8]> = parts.collect();
            assert_eq!((parts.len(), rest.len()), (head, last), "{len}");
            assert!(parts.iter().all(|p| p.len() == PART_BYTES));
        }
    }
}
