//! The forwarding core: client queries in, one upstream query per distinct
//! question, replies matched strictly and re-encoded for each client.
//!
//! An upstream answer reaches clients and the cache only cut down to the
//! question's CNAME chain (`sanitize`); a client query reaches upstream
//! only through [`Forwarder::ask_upstream`], after the special-use names
//! (answered here) and the cache; and an attempt is a value of its own
//! ([`InFlight`]), so a TCP retry after a truncated answer is one more
//! kind of attempt.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

use dns_wire::{Class, Edns, Header, Message, Opcode, Question, RData, Rcode, Record, Type};
use mirage_engine::{Engine, Instant, Route};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::cache::{ANY_TYPE, Cache, Key};
use crate::sanitize::{Kind, sanitize, ttl_of};
use crate::upstreams::Upstreams;
use crate::{
    Action, BATCH_BYTES, CLASSIC_UDP_PAYLOAD, Counters, EDNS_PAYLOAD, Event, ITEM_OVERHEAD, Inbound,
    MAX_PARTS_HELD, MAX_TCP_ANSWER, Outbound, PART_BYTES, Reason, Refusal, Start, Status, Transport,
};

/// Zone transfers are not forwarded over this path (RFC 5936, RFC 1995).
const AXFR: Type = Type(252);
const IXFR: Type = Type(251);
/// The TTL of a stale answer (RFC 8767 section 4: 30 s recommended).
const STALE_TTL: u32 = 30;
/// The TTL of a local answer for `localhost`.
const LOCAL_TTL: u32 = 300;

/// Special-use names answered here, never forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    /// `localhost` and below (RFC 6761 section 6.3): the loopback
    /// addresses, NODATA for other types.
    Localhost,
    /// `invalid` (RFC 6761 section 6.4) and `onion` (RFC 7686 section 2)
    /// and below: NXDOMAIN.
    NxDomain,
}

fn special(name: &dns_wire::Name) -> Option<Special> {
    let tld = name.labels().last()?;
    if tld.eq_ignore_ascii_case(b"localhost") {
        Some(Special::Localhost)
    } else if tld.eq_ignore_ascii_case(b"invalid") || tld.eq_ignore_ascii_case(b"onion") {
        Some(Special::NxDomain)
    } else {
        None
    }
}

/// A client waiting for an answer.
#[derive(Clone, Debug)]
struct Waiter {
    client: u64,
    transport: Transport,
    id: u16,
    /// The question as the client wrote it (its case is echoed).
    question: Question,
    recursion_desired: bool,
    checking_disabled: bool,
    /// The client's EDNS: its payload size and DO bit (RFC 3225).
    edns: Option<(u16, bool)>,
    /// When it gets the stale answer if the upstream has not answered
    /// (RFC 8767 section 5's client response timer); set only when the
    /// cache held one as the client asked.
    stale_at: Option<Instant>,
}

/// One upstream attempt and the clients waiting for it.
#[derive(Debug)]
struct InFlight {
    key: Key,
    /// The question as sent (0x20 case), which the reply must echo.
    question: Question,
    id: u16,
    attempt: Attempt,
    /// When it was sent: the answer's round-trip time ranks the upstream.
    sent_at: Instant,
    deadline: Instant,
    waiters: Vec<Waiter>,
    /// The parts of a TCP reply received so far, and its announced size.
    parts: Vec<u8>,
    parts_total: usize,
}

/// Where and how a question is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempt {
    upstream: u8,
    /// Attempts made so far, this one included (a TCP retry after a
    /// truncated answer is not counted: it is the same attempt, completed).
    number: u8,
    /// Over TCP (RFC 7766 section 5: after a truncated UDP answer).
    tcp: bool,
    /// The upstreams this question went to so far, this one included
    /// (bit `i` for upstream `i`).
    tried: u64,
    /// An upstream answered it truncated (TC): if every attempt fails, a
    /// UDP client gets TC too (field note 9), to ask over TCP itself.
    truncated: bool,
}

/// The forwarder (see the crate docs).
pub struct Forwarder {
    start: Start,
    rng: ChaCha8Rng,
    in_flight: BTreeMap<u32, InFlight>,
    by_key: BTreeMap<Key, u32>,
    /// Which upstream answers best (`crate::upstreams`).
    upstreams: Upstreams,
    cache: Cache,
    next_query: u32,
    counters: Counters,
    /// The status last sent, and when the next may go.
    sent: Option<Status>,
    next_status: Instant,
    /// [`Forwarder::load`] as of this batch: counted once, on its first
    /// cache miss, then raised by each waiter or flight the batch adds (a
    /// flight a reply of the same batch ended still counts: the bound
    /// holds early, never late). Counting per miss would cost the whole
    /// table per query, which a flood of queries for a silent upstream
    /// fills.
    batch_load: Option<u32>,
    /// Something happened since the status was last compared with the one
    /// sent: the next one may differ (so `poll_at` need not build it).
    status_stale: bool,
}

/// Outbound items of one call, packed into batches under the cap.
#[derive(Default)]
struct Batches {
    done: Vec<Vec<Outbound>>,
    current: Vec<Outbound>,
    bytes: usize,
}

impl Batches {
    fn push(&mut self, item: Outbound) {
        // An answer over one part's size (only a TCP client's can be) goes
        // in parts, the last one as the answer itself.
        if let Outbound::Answer { client, data } = &item
            && data.len() > PART_BYTES
            && let Ok(total) = u16::try_from(data.len())
        {
            let client = *client;
            let (head, last) = crate::parts(data);
            for part in head {
                self.push_one(Outbound::AnswerPart {
                    client,
                    total,
                    data: part.to_vec(),
                });
            }
            self.push_one(Outbound::Answer {
                client,
                data: last.to_vec(),
            });
            return;
        }
        self.push_one(item);
    }

    fn push_one(&mut self, item: Outbound) {
        let size = ITEM_OVERHEAD
            + match &item {
                Outbound::Answer { data, .. }
                | Outbound::AnswerPart { data, .. }
                | Outbound::Query { data, .. }
                | Outbound::TcpQuery { data, .. } => data.len(),
                Outbound::Drop { .. } | Outbound::Close { .. } => 0,
            };
        if self.bytes + size > BATCH_BYTES && !self.current.is_empty() {
            self.done.push(core::mem::take(&mut self.current));
            self.bytes = 0;
        }
        self.bytes += size;
        self.current.push(item);
    }

    fn finish(mut self, out: &mut Vec<Action>) {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        out.extend(self.done.into_iter().map(Action::Batch));
    }
}

/// Refusals of one call, counted by reason.
#[derive(Default)]
struct Refusals(Vec<(Reason, u32)>);

impl Refusals {
    fn add(&mut self, reason: Reason) {
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.0.push((reason, 1)),
        }
    }
}

fn clamp(v: u32, lo: u32, hi: u32) -> u32 {
    v.clamp(lo, hi)
}

impl Forwarder {
    fn key_of(question: &Question, dnssec_ok: bool, checking_disabled: bool) -> Key {
        Key {
            name: question.name.as_wire().to_ascii_lowercase(),
            qtype: question.qtype.0,
            qclass: question.qclass.0,
            dnssec_ok,
            checking_disabled,
        }
    }

    /// A query number not in flight.
    fn fresh_query(&mut self) -> u32 {
        loop {
            let q = self.next_query;
            self.next_query = self.next_query.wrapping_add(1);
            if !self.in_flight.contains_key(&q) {
                return q;
            }
        }
    }

    fn pending(&self) -> u32 {
        self.in_flight.values().map(|f| f.waiters.len() as u32).sum()
    }

    /// [`Forwarder::load`] as this batch counts it (`batch_load`).
    fn load_now(&mut self) -> u32 {
        match self.batch_load {
            Some(l) => l,
            None => {
                let l = self.load();
                self.batch_load = Some(l);
                l
            }
        }
    }

    fn max_pending(&self) -> u32 {
        clamp(self.start.max_pending, 1, 65_536)
    }

    /// What `max_pending` bounds: the clients waiting, and a query whose
    /// clients all got a stale answer still counts as one while it runs.
    fn load(&self) -> u32 {
        self.in_flight
            .values()
            .map(|f| f.waiters.len().max(1) as u32)
            .sum()
    }

    /// A reply to `w` with only a header (and its question, if any),
    /// with `rcode`.
    fn error_answer(
        w_id: u16,
        opcode: u8,
        question: Option<&Question>,
        rd: bool,
        edns: bool,
        rcode: Rcode,
    ) -> Vec<u8> {
        Self::error_message(w_id, opcode, question, rd, edns, rcode)
            .to_bytes()
            // A header and one question always encode.
            .unwrap_or_default()
    }

    fn error_message(
        w_id: u16,
        opcode: u8,
        question: Option<&Question>,
        rd: bool,
        edns: bool,
        rcode: Rcode,
    ) -> Message {
        let mut m = Message {
            header: Header {
                id: w_id,
                response: true,
                opcode,
                recursion_desired: rd,
                recursion_available: true,
                rcode: (rcode.0 & 0xf) as u8,
                ..Header::default()
            },
            questions: question.cloned().into_iter().collect(),
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: None,
        };
        if edns || rcode.0 > 0xf {
            let mut e = Edns::new(EDNS_PAYLOAD);
            e.extended_rcode = (rcode.0 >> 4) as u8;
            m.edns = Some(e);
        }
        m
    }

    /// NOERROR with TC and no records: "ask over TCP".
    fn truncated_answer(w: &Waiter) -> Vec<u8> {
        let mut m = Self::error_message(
            w.id,
            0,
            Some(&w.question),
            w.recursion_desired,
            w.edns.is_some(),
            Rcode::NOERROR,
        );
        m.header.truncated = true;
        m.to_bytes().unwrap_or_default()
    }

    fn servfail(w: &Waiter) -> Vec<u8> {
        Self::error_answer(
            w.id,
            0,
            Some(&w.question),
            w.recursion_desired,
            w.edns.is_some(),
            Rcode::SERVFAIL,
        )
    }

    /// One client query.
    fn on_query(
        &mut self,
        now: Instant,
        client: u64,
        transport: Transport,
        data: &[u8],
        out: &mut Batches,
        refused: &mut Refusals,
    ) {
        self.counters.queries += 1;
        let Ok((header, _)) = Header::parse(data) else {
            refused.add(Reason::NotAQuery);
            out.push(Outbound::Drop { client });
            return;
        };
        if header.response {
            refused.add(Reason::NotAQuery);
            out.push(Outbound::Drop { client });
            return;
        }
        let answer = |rcode: Rcode, question: Option<&Question>, edns: bool| {
            Self::error_answer(
                header.id,
                header.opcode,
                question,
                header.recursion_desired,
                edns,
                rcode,
            )
        };
        // RFC 1035 4.1.1: only standard queries are implemented here.
        if Opcode(header.opcode) != Opcode::QUERY {
            self.counters.notimp += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::NOTIMP, None, false),
            });
            return;
        }
        let Ok(query) = Message::parse(data) else {
            self.counters.formerr += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::FORMERR, None, false),
            });
            return;
        };
        let mut query = query;
        let has_edns = query.edns.is_some();
        // Exactly one question, and nothing in the answer and authority
        // sections of a query (RFC 1035 4.1.2; RFC 9619 for QDCOUNT).
        if query.questions.len() != 1 || !query.answers.is_empty() || !query.authorities.is_empty() {
            self.counters.formerr += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::FORMERR, None, has_edns),
            });
            return;
        }
        let question = query.questions.swap_remove(0);
        if question.qtype == Type::OPT {
            self.counters.formerr += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::FORMERR, Some(&question), has_edns),
            });
            return;
        }
        // RFC 6891 6.1.3: a version we do not speak.
        if let Some(e) = &query.edns
            && e.version > 0
        {
            self.counters.formerr += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::BADVERS, Some(&question), true),
            });
            return;
        }
        if question.qtype == AXFR || question.qtype == IXFR {
            self.counters.notimp += 1;
            out.push(Outbound::Answer {
                client,
                data: answer(Rcode::NOTIMP, Some(&question), has_edns),
            });
            return;
        }
        let waiter = Waiter {
            client,
            transport,
            id: header.id,
            question,
            recursion_desired: header.recursion_desired,
            checking_disabled: header.checking_disabled,
            edns: query.edns.as_ref().map(|e| (e.udp_payload_size, e.dnssec_ok)),
            stale_at: None,
        };
        if let Some(kind) = special(&waiter.question.name) {
            self.counters.local_answers += 1;
            let data = self.local_answer(kind, &waiter);
            out.push(Outbound::Answer { client, data });
            return;
        }
        self.ask_upstream(now, waiter, out);
    }

    /// Join an identical question in flight, or ask the first upstream.
    fn ask_upstream(&mut self, now: Instant, mut waiter: Waiter, out: &mut Batches) {
        let dnssec_ok = waiter.edns.is_some_and(|(_, d)| d);
        let key = Self::key_of(&waiter.question, dnssec_ok, waiter.checking_disabled);
        if let Some(data) = self.cached_answer(now, &key, &waiter, false) {
            self.counters.cache_hits += 1;
            out.push(Outbound::Answer {
                client: waiter.client,
                data,
            });
            // Not past `max_pending`: a prefetch is a flight like any other.
            if self.prefetch_due(now, &key) && self.load_now() < self.max_pending() {
                self.counters.prefetches += 1;
                self.batch_load = Some(self.load_now() + 1);
                // Nobody waits: the answer only refreshes the cache.
                self.ask_first(now, key, waiter.question.clone(), Vec::new(), out);
            }
            return;
        }
        self.counters.cache_misses += 1;
        // The bound on waiting clients; an answer from the cache above
        // makes nobody wait, and goes out however many do.
        let load = self.load_now();
        if load >= self.max_pending() {
            self.counters.servfail += 1;
            out.push(Outbound::Answer {
                client: waiter.client,
                data: Self::servfail(&waiter),
            });
            return;
        }
        self.batch_load = Some(load + 1);
        if self.has_stale(now, &key) {
            let ms = clamp(self.start.stale_answer_ms, 100, 10_000);
            waiter.stale_at = Some(now.add_millis(u64::from(ms)));
        }
        if let Some(q) = self.by_key.get(&key)
            && let Some(f) = self.in_flight.get_mut(q)
        {
            self.counters.merged += 1;
            f.waiters.push(waiter);
            return;
        }
        // No upstream (a service following DHCP before any lease): an
        // answer at once rather than a query nobody would send.
        if self.start.upstreams.is_empty() {
            self.counters.servfail += 1;
            out.push(Outbound::Answer {
                client: waiter.client,
                data: Self::servfail(&waiter),
            });
            return;
        }
        let question = waiter.question.clone();
        self.ask_first(now, key, question, vec![waiter], out);
    }

    /// A question's first attempt, to the best upstream.
    fn ask_first(
        &mut self,
        now: Instant,
        key: Key,
        question: Question,
        waiters: Vec<Waiter>,
        out: &mut Batches,
    ) {
        let first = Attempt {
            upstream: self.upstreams.first(now),
            number: 1,
            tcp: false,
            tried: 0,
            truncated: false,
        };
        self.send_attempt(now, key, question, first, waiters, out);
    }

    /// Send `attempt` of a question.
    fn send_attempt(
        &mut self,
        now: Instant,
        key: Key,
        question: Question,
        attempt: Attempt,
        waiters: Vec<Waiter>,
        out: &mut Batches,
    ) {
        let query = self.fresh_query();
        let id = (self.rng.next_u32() & 0xffff) as u16;
        let mut sent = question.clone();
        if self.start.randomize_case {
            let mut bits = self.rng.next_u64();
            let mut left = 64;
            sent.name = question.name.with_random_case(|| {
                if left == 0 {
                    bits = self.rng.next_u64();
                    left = 64;
                }
                left -= 1;
                let b = bits & 1 == 1;
                bits >>= 1;
                b
            });
        }
        let mut m = Message::query(id, sent.name.clone(), sent.qtype);
        m.questions[0].qclass = sent.qclass;
        m.header.checking_disabled = key.checking_disabled;
        let mut edns = Edns::new(EDNS_PAYLOAD);
        edns.dnssec_ok = key.dnssec_ok;
        m.edns = Some(edns);
        let data = match m.to_bytes() {
            Ok(d) => d,
            Err(_) => {
                // A parsed question always encodes; answer SERVFAIL if not.
                for w in &waiters {
                    self.counters.servfail += 1;
                    out.push(Outbound::Answer {
                        client: w.client,
                        data: Self::servfail(w),
                    });
                }
                return;
            }
        };
        self.counters.upstream_queries += 1;
        let upstream = attempt.upstream;
        self.upstreams.asked(upstream, now);
        let mut attempt = attempt;
        if upstream < 64 {
            attempt.tried |= 1 << upstream;
        }
        out.push(if attempt.tcp {
            self.counters.tcp_retries += 1;
            Outbound::TcpQuery {
                query,
                upstream,
                data,
            }
        } else {
            Outbound::Query {
                query,
                upstream,
                data,
            }
        });
        self.by_key.insert(key.clone(), query);
        self.in_flight.insert(
            query,
            InFlight {
                key,
                question: sent,
                id,
                attempt,
                sent_at: now,
                deadline: now.add_millis(u64::from(clamp(self.start.attempt_ms, 100, 10_000))),
                waiters,
                parts: Vec::new(),
                parts_total: 0,
            },
        );
    }

    /// Attempt `query` failed (timeout, ICMP error, REFUSED; `penalize`:
    /// the upstream loses its place, see `crate::upstreams`; not for a
    /// SERVFAIL): the next upstream, or a stale answer or SERVFAIL for
    /// everyone waiting.
    fn attempt_failed(&mut self, now: Instant, query: u32, out: &mut Batches, penalize: bool) {
        let Some(f) = self.in_flight.remove(&query) else {
            return;
        };
        self.by_key.remove(&f.key);
        out.push(Outbound::Close { query });
        self.upstreams.failed(f.attempt.upstream, penalize);
        let attempts = self.start.attempts.clamp(1, 4);
        if f.attempt.number < attempts {
            let next = Attempt {
                upstream: self.upstreams.next(f.attempt.tried),
                number: f.attempt.number + 1,
                tcp: false,
                tried: f.attempt.tried,
                truncated: f.attempt.truncated,
            };
            let question = f.question.clone();
            self.send_attempt(now, f.key, question, next, f.waiters, out);
            return;
        }
        self.fail_waiters(now, &f.key, &f.waiters, f.attempt.truncated, out);
    }

    /// Every attempt failed: a stale answer (RFC 8767) if serve-stale is
    /// on and the cache still holds one; else, when an upstream answered
    /// truncated and only the TCP retry failed, TC without records to a
    /// UDP client (it asks again over TCP; field note 9, as knot-resolver
    /// and Tailscale's forwarder do); else SERVFAIL.
    fn fail_waiters(
        &mut self,
        now: Instant,
        key: &Key,
        waiters: &[Waiter],
        truncated: bool,
        out: &mut Batches,
    ) {
        for w in waiters {
            let data = match self.cached_answer(now, key, w, true) {
                Some(data) => {
                    self.counters.stale_answers += 1;
                    data
                }
                None if truncated && w.transport == Transport::Udp => {
                    self.counters.truncated += 1;
                    Self::truncated_answer(w)
                }
                None => {
                    self.counters.servfail += 1;
                    Self::servfail(w)
                }
            };
            out.push(Outbound::Answer {
                client: w.client,
                data,
            });
        }
    }

    /// A part of a TCP reply: kept until the last part (a
    /// [`Inbound::Reply`]) completes it.
    fn on_reply_part(&mut self, query: u32, total: u16, data: &[u8], refused: &mut Refusals) {
        let held: usize = self.in_flight.values().map(|f| f.parts.len()).sum();
        let Some(f) = self.in_flight.get_mut(&query) else {
            refused.add(Reason::UnknownQuery);
            return;
        };
        let total = usize::from(total);
        // Parts only for TCP, all announcing the same size, the last one
        // still to come, within what the engine holds at once.
        if !f.attempt.tcp
            || (!f.parts.is_empty() && f.parts_total != total)
            || f.parts.len() + data.len() >= total
            || held + data.len() > MAX_PARTS_HELD
        {
            f.parts = Vec::new();
            refused.add(Reason::MalformedReply);
            return;
        }
        f.parts_total = total;
        f.parts.extend_from_slice(data);
    }

    /// A datagram for upstream query `query` (or the last part of a TCP
    /// reply).
    fn on_reply(&mut self, now: Instant, query: u32, data: &[u8], out: &mut Batches, refused: &mut Refusals) {
        let Some(f) = self.in_flight.get_mut(&query) else {
            refused.add(Reason::UnknownQuery);
            return;
        };
        let whole;
        let data = if f.parts.is_empty() {
            data
        } else {
            let mut all = core::mem::take(&mut f.parts);
            all.extend_from_slice(data);
            whole = all;
            &whole[..]
        };
        let tcp = f.attempt.tcp;
        let parsed = if tcp && f.parts_total != 0 && data.len() != f.parts_total {
            None
        } else {
            Message::parse(data).ok()
        };
        let Some(reply) = parsed else {
            refused.add(Reason::MalformedReply);
            // Garbage does not end a UDP attempt: the real answer may
            // follow. A TCP connection carries one answer, now spent.
            if tcp {
                self.attempt_failed(now, query, out, true);
            }
            return;
        };
        let f = &self.in_flight[&query];
        // RFC 5452 9.1: the id, the question (and its 0x20 case) and the
        // source (the network role's connected socket) must all match.
        let ok = reply.header.response
            && reply.header.id == f.id
            && Opcode(reply.header.opcode) == Opcode::QUERY
            && reply.questions.len() == 1
            && reply.questions[0].eq_exact(&f.question);
        if !ok {
            refused.add(Reason::MismatchedReply);
            // A forgery does not end a UDP attempt (the real answer may
            // follow); a TCP connection carries one answer, now spent.
            if tcp {
                self.attempt_failed(now, query, out, true);
            }
            return;
        }
        // REFUSED says nothing about the name: the next upstream is asked,
        // and a client never gets it from us (musl's resolver waits out
        // its timeout on REFUSED instead of trying again).
        if reply.rcode() == Rcode::REFUSED {
            self.counters.upstream_replies += 1;
            self.counters.upstream_failures += 1;
            self.attempt_failed(now, query, out, true);
            return;
        }
        // A SERVFAIL goes to another upstream while one is left untried
        // within the attempts; from the last, it is relayed (or a stale
        // answer served, below).
        if reply.rcode() == Rcode::SERVFAIL
            && f.attempt.number < self.start.attempts.clamp(1, 4)
            && self.upstreams.any_untried(f.attempt.tried)
        {
            self.counters.upstream_replies += 1;
            self.counters.upstream_failures += 1;
            self.attempt_failed(now, query, out, false);
            return;
        }
        let f = self.in_flight.remove(&query).expect("looked up above");
        self.by_key.remove(&f.key);
        out.push(Outbound::Close { query });
        self.counters.upstream_replies += 1;
        if reply.rcode() == Rcode::SERVFAIL {
            self.upstreams.failed(f.attempt.upstream, false);
        } else {
            let rtt = (!f.attempt.tcp).then(|| now.since(f.sent_at));
            self.upstreams.answered(f.attempt.upstream, rtt);
        }
        // RFC 7766 section 5 (RFC 1035 4.2.2): a truncated UDP answer is
        // asked again over TCP, of the same upstream, in the same attempt.
        if reply.header.truncated && !f.attempt.tcp {
            let tcp = Attempt {
                tcp: true,
                truncated: true,
                ..f.attempt
            };
            let question = f.question.clone();
            self.send_attempt(now, f.key, question, tcp, f.waiters, out);
            return;
        }
        // Only the question's chain goes on (see `sanitize`).
        let mut clean = match sanitize(&reply, &f.question, f.key.dnssec_ok) {
            Ok(clean) => clean,
            Err(_) => {
                self.counters.unusable += 1;
                for w in &f.waiters {
                    self.counters.servfail += 1;
                    out.push(Outbound::Answer {
                        client: w.client,
                        data: Self::servfail(w),
                    });
                }
                return;
            }
        };
        if clean.message.rcode() == Rcode::SERVFAIL && self.has_stale(now, &f.key) {
            // RFC 8767 section 4: an upstream's failure is a failure too.
            self.fail_waiters(now, &f.key, &f.waiters, false, out);
            return;
        }
        // No answer is relayed for longer than it would be cached.
        let max_ttl = self.start.max_ttl_secs.clamp(1, 604_800);
        for r in clean
            .message
            .answers
            .iter_mut()
            .chain(&mut clean.message.authorities)
        {
            r.ttl = r.ttl.min(max_ttl);
        }
        self.accept_reply(&clean.message, &f.question, &f.waiters, out);
        self.keep_answer(now, f.key, &clean);
    }

    /// Whether the answer cached under `key` itself (not a name-wide
    /// NXDOMAIN) is in the last tenth of a life of 10 s or more, with
    /// prefetch on, upstreams known and no query for it in flight.
    fn prefetch_due(&mut self, now: Instant, key: &Key) -> bool {
        if !self.start.prefetch || self.start.upstreams.is_empty() || self.by_key.contains_key(key) {
            return false;
        }
        let Some(e) = self.cache.get(key, now) else {
            return false;
        };
        let life = e.expires.since(e.stored);
        life >= 10_000 && e.expires > now && now.since(e.stored) >= life - life / 10
    }

    /// Whether a stale answer for `key` would be served.
    fn has_stale(&mut self, now: Instant, key: &Key) -> bool {
        if !self.start.serve_stale {
            return false;
        }
        [key.clone(), Self::name_key(key)]
            .iter()
            .any(|k| self.cache.get(k, now).is_some_and(|e| e.expires <= now))
    }

    /// A `localhost`, `invalid` or `onion` question answered here.
    fn local_answer(&mut self, kind: Special, w: &Waiter) -> Vec<u8> {
        let q = &w.question;
        let mut reply = Message::query(w.id, q.name.clone(), q.qtype);
        reply.questions[0].qclass = q.qclass;
        reply.header.response = true;
        reply.header.recursion_available = true;
        match kind {
            Special::NxDomain => reply.header.rcode = Rcode::NXDOMAIN.0 as u8,
            Special::Localhost if q.qclass == Class::IN || q.qclass == Class::ANY => {
                let record = |data| Record {
                    name: q.name.clone(),
                    class: Class::IN,
                    ttl: LOCAL_TTL,
                    data,
                };
                if q.qtype == Type::A || q.qtype == Type::ANY {
                    reply.answers.push(record(RData::A(Ipv4Addr::LOCALHOST)));
                }
                if q.qtype == Type::AAAA || q.qtype == Type::ANY {
                    reply.answers.push(record(RData::Aaaa(Ipv6Addr::LOCALHOST)));
                }
            }
            Special::Localhost => {}
        }
        self.answer_for(&reply, q, w)
    }

    /// An upstream answer accepted: one answer per waiting client.
    fn accept_reply(&mut self, reply: &Message, sent: &Question, waiters: &[Waiter], out: &mut Batches) {
        for w in waiters {
            let data = self.answer_for(reply, sent, w);
            self.counters.answered += 1;
            out.push(Outbound::Answer {
                client: w.client,
                data,
            });
        }
    }

    /// `reply` re-encoded for `w`: its id, its question, its EDNS, its size;
    /// records owned by the question's name carry the client's spelling,
    /// not the 0x20 one `sent` upstream.
    fn answer_for(&mut self, reply: &Message, sent: &Question, w: &Waiter) -> Vec<u8> {
        let sections = Message {
            header: reply.header,
            questions: Vec::new(),
            answers: reply.answers.clone(),
            authorities: reply.authorities.clone(),
            additionals: reply.additionals.clone(),
            edns: reply.edns.clone(),
        };
        self.answer_owned(sections, sent, w)
    }

    /// [`Self::answer_for`] with `reply`'s sections moved, not copied (a
    /// cache hit's freshly parsed answer).
    fn answer_owned(&mut self, reply: Message, sent: &Question, w: &Waiter) -> Vec<u8> {
        let rcode = reply.rcode();
        // An extended rcode cannot be told to a client without EDNS.
        if w.edns.is_none() && rcode.0 > 0xf {
            return Self::servfail(w);
        }
        let mut m = Message {
            header: Header {
                id: w.id,
                response: true,
                opcode: 0,
                authoritative: reply.header.authoritative,
                truncated: reply.header.truncated,
                recursion_desired: w.recursion_desired,
                recursion_available: reply.header.recursion_available,
                z: false,
                // We validate nothing: AD is never ours to claim, and a
                // stub that trusts 127.0.0.53 (trust-ad) would believe it.
                authentic_data: false,
                checking_disabled: w.checking_disabled,
                rcode: (rcode.0 & 0xf) as u8,
            },
            questions: vec![w.question.clone()],
            answers: reply.answers,
            authorities: reply.authorities,
            additionals: reply.additionals,
            edns: w.edns.map(|(_, dnssec_ok)| {
                let mut e = Edns::new(EDNS_PAYLOAD);
                e.extended_rcode = (rcode.0 >> 4) as u8;
                e.dnssec_ok = dnssec_ok && reply.edns.as_ref().is_some_and(|e| e.dnssec_ok);
                e
            }),
        };
        for r in m
            .answers
            .iter_mut()
            .chain(&mut m.authorities)
            .chain(&mut m.additionals)
        {
            if r.name.eq_exact(&sent.name) {
                r.name = w.question.name.clone();
            }
        }
        let limit = match w.transport {
            // RFC 6891 6.2.3: at least 512, at most what we advertise.
            Transport::Udp => usize::from(w.edns.map_or(CLASSIC_UDP_PAYLOAD, |(size, _)| {
                size.clamp(CLASSIC_UDP_PAYLOAD, EDNS_PAYLOAD)
            })),
            Transport::Tcp => MAX_TCP_ANSWER,
        };
        // Sized for most answers: one allocation, not a few growing ones
        // (it lives only until it is sent).
        let mut data = Vec::with_capacity(512);
        if m.emit(&mut data).is_ok() && data.len() <= limit {
            return data;
        }
        // Too large: the additional section goes first (no TC needed,
        // RFC 2181 9), then everything, with TC set so the client retries
        // over TCP.
        m.additionals.clear();
        if let Ok(data) = m.to_bytes()
            && data.len() <= limit
        {
            return data;
        }
        self.counters.truncated += 1;
        m.answers.clear();
        m.authorities.clear();
        m.header.truncated = true;
        m.to_bytes().unwrap_or_else(|_| Self::servfail(w))
    }

    /// The key of a name-wide negative entry (NXDOMAIN) for `key`'s name.
    fn name_key(key: &Key) -> Key {
        Key {
            qtype: ANY_TYPE,
            ..key.clone()
        }
    }

    /// Keep an answer: a positive one for its smallest TTL, a negative one
    /// (NXDOMAIN, NODATA) for its SOA's negative TTL (RFC 2308 section 5;
    /// none without an SOA), each clamped by the configuration. Truncated
    /// answers (RFC 1035 section 7.4) and errors are not kept, nor
    /// anything with a TTL of 0 after the clamps. An NXDOMAIN for the
    /// question's own name answers every type of that name.
    fn keep_answer(&mut self, now: Instant, key: Key, clean: &crate::sanitize::Clean) {
        let max_bytes = (self.start.cache_bytes as usize).min(64 << 20);
        if max_bytes == 0 || clean.message.header.truncated {
            return;
        }
        let min_ttl = self.start.min_ttl_secs.min(86_400);
        let max_ttl = self.start.max_ttl_secs.clamp(1, 604_800);
        let records = clean.message.answers.iter().map(|r| ttl_of(r.ttl)).min();
        let ttl = match clean.kind {
            Kind::Positive => records.unwrap_or(0).max(min_ttl).min(max_ttl),
            Kind::NoData | Kind::NxDomain => {
                let Some(negative) = clean.negative_ttl else {
                    return;
                };
                let negative_max = self.start.negative_max_ttl_secs.min(86_400);
                records
                    .map_or(negative, |r| r.min(negative))
                    .max(min_ttl)
                    .min(negative_max)
                    .min(max_ttl)
            }
            Kind::Error => return,
        };
        if ttl == 0 {
            return;
        }
        let negative = clean.kind != Kind::Positive;
        let key = if clean.kind == Kind::NxDomain && clean.message.answers.is_empty() {
            self.cache.remove(&key);
            Self::name_key(&key)
        } else {
            key
        };
        let Ok(data) = clean.message.to_bytes() else {
            return;
        };
        let expires = now.add_secs(u64::from(ttl));
        let drop_at = if self.start.serve_stale {
            expires.add_secs(u64::from(self.start.stale_max_age_secs.clamp(1, 604_800)))
        } else {
            expires
        };
        self.cache
            .store(key, data, now, expires, drop_at, negative, max_bytes);
    }

    /// A cached answer for `w`: a fresh one (`stale` false) with its TTLs
    /// counted down by the time it spent in the cache, or an expired one
    /// still in its stale window (`stale` true) with every TTL 30 s
    /// (RFC 8767 section 4). Never authoritative (RFC 1035 section 6.1:
    /// it was not read from a zone). The question's own entry first, then
    /// an NXDOMAIN for its name.
    fn cached_answer(&mut self, now: Instant, key: &Key, w: &Waiter, stale: bool) -> Option<Vec<u8>> {
        if stale && !self.start.serve_stale {
            return None;
        }
        // The name-wide key is made only when the question's own misses.
        let mut name_key = None;
        for first in [true, false] {
            let k = if first {
                key
            } else {
                name_key.insert(Self::name_key(key))
            };
            let Some(e) = self.cache.get(k, now) else {
                continue;
            };
            if (e.expires <= now) != stale {
                continue;
            }
            let Ok(mut reply) = Message::parse(e.data) else {
                continue;
            };
            let life = u32::try_from(e.expires.since(e.stored) / 1000).unwrap_or(u32::MAX);
            let elapsed = u32::try_from(now.since(e.stored) / 1000).unwrap_or(u32::MAX);
            if e.negative && !stale {
                self.counters.negative_hits += 1;
            }
            reply.header.authoritative = false;
            for r in reply
                .answers
                .iter_mut()
                .chain(&mut reply.authorities)
                .chain(&mut reply.additionals)
            {
                r.ttl = if stale {
                    STALE_TTL
                } else {
                    r.ttl.min(life).saturating_sub(elapsed)
                };
            }
            if reply.questions.is_empty() {
                return None;
            }
            // Moved out: the reply is built with the client's question.
            let asked = reply.questions.swap_remove(0);
            return Some(self.answer_owned(reply, &asked, w));
        }
        None
    }

    fn status(&self) -> Status {
        Status {
            pending: self.pending(),
            upstreams: self.upstreams.status(),
            cache_entries: self.cache.len() as u32,
            cache_bytes: self.cache.bytes() as u32,
            counters: self.counters,
        }
    }

    fn status_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Built only when one may go: it counts every query in flight.
        if now < self.next_status {
            return;
        }
        self.status_stale = false;
        let status = self.status();
        if self.sent.as_ref() != Some(&status) {
            self.sent = Some(status.clone());
            self.next_status = now.add_millis(u64::from(clamp(self.start.status_every_ms, 100, 60_000)));
            out.push(Action::Status(status));
        }
    }

    fn expire(&mut self, now: Instant, out: &mut Batches) {
        self.cache.expire(now);
        let due: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for q in due {
            self.counters.upstream_timeouts += 1;
            self.attempt_failed(now, q, out, true);
        }
        self.stale_due(now, out);
    }

    /// RFC 8767 section 5: the clients whose response timer ran out get
    /// the stale answer now; their upstream query goes on, and its answer
    /// refreshes the cache for the next client.
    fn stale_due(&mut self, now: Instant, out: &mut Batches) {
        let due: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.waiters.iter().any(|w| w.stale_at.is_some_and(|t| t <= now)))
            .map(|(q, _)| *q)
            .collect();
        for q in due {
            let Some(f) = self.in_flight.get_mut(&q) else {
                continue;
            };
            let key = f.key.clone();
            let waiters = core::mem::take(&mut f.waiters);
            let mut kept = Vec::with_capacity(waiters.len());
            for mut w in waiters {
                if w.stale_at.is_none_or(|t| t > now) {
                    kept.push(w);
                    continue;
                }
                match self.cached_answer(now, &key, &w, true) {
                    Some(data) => {
                        self.counters.stale_answers += 1;
                        out.push(Outbound::Answer {
                            client: w.client,
                            data,
                        });
                    }
                    // Dropped from the cache meanwhile: the upstream's
                    // answer, or SERVFAIL, as without the timer.
                    None => {
                        w.stale_at = None;
                        kept.push(w);
                    }
                }
            }
            if let Some(f) = self.in_flight.get_mut(&q) {
                f.waiters = kept;
            }
        }
    }
}

impl Engine for Forwarder {
    type Start = Start;
    type Event = Event;
    type Action = Action;
    type Refusal = Refusal;

    fn start(start: Start, now: Instant, seed: [u8; 32], out: &mut Vec<Action>) -> Self {
        // The cache's hash key from another stream of the same seed: the
        // query numbers and 0x20 spellings stay as they were.
        let mut keys = ChaCha8Rng::from_seed(seed);
        keys.set_stream(1);
        let hash_key = (keys.next_u64(), keys.next_u64());
        let upstreams = Upstreams::new(start.upstreams.len());
        let mut f = Forwarder {
            start,
            rng: ChaCha8Rng::from_seed(seed),
            in_flight: BTreeMap::new(),
            by_key: BTreeMap::new(),
            upstreams,
            cache: Cache::new(hash_key),
            next_query: 0,
            counters: Counters::default(),
            sent: None,
            next_status: now,
            batch_load: None,
            status_stale: true,
        };
        // Query numbers start at a random point: nothing to guess there,
        // but two generations of the engine never reuse each other's.
        f.next_query = f.rng.next_u32();
        f.status_due(now, out);
        f
    }

    fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) -> Result<(), Refusal> {
        let Event::Batch(items) = event;
        self.batch_load = None;
        self.status_stale = true;
        let mut batches = Batches::default();
        let mut refused = Refusals::default();
        self.expire(now, &mut batches);
        for item in items {
            match item {
                Inbound::Query {
                    client,
                    transport,
                    data,
                } => self.on_query(now, client, transport, &data, &mut batches, &mut refused),
                Inbound::Reply { query, data } => {
                    self.on_reply(now, query, &data, &mut batches, &mut refused)
                }
                Inbound::ReplyPart { query, total, data } => {
                    self.on_reply_part(query, total, &data, &mut refused)
                }
                Inbound::Failed { query } => {
                    if self.in_flight.contains_key(&query) {
                        self.counters.upstream_failures += 1;
                        self.attempt_failed(now, query, &mut batches, true);
                    }
                }
            }
        }
        batches.finish(out);
        self.status_due(now, out);
        if refused.0.is_empty() {
            Ok(())
        } else {
            Err(Refusal { counts: refused.0 })
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.status_stale = true;
        let mut batches = Batches::default();
        self.expire(now, &mut batches);
        batches.finish(out);
        self.status_due(now, out);
    }

    fn poll_at(&self) -> Instant {
        let mut at = self
            .in_flight
            .values()
            .map(|f| f.deadline)
            .chain(
                self.in_flight
                    .values()
                    .flat_map(|f| f.waiters.iter().filter_map(|w| w.stale_at)),
            )
            .min()
            .unwrap_or(Instant::NEVER);
        if self.status_stale {
            at = at.min(self.next_status);
        }
        at
    }

    fn route(action: &Action) -> Route {
        match action {
            Action::Batch(_) => Route::Peer,
            Action::Status(_) => Route::Supervisor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_cap() {
        let mut b = Batches::default();
        for client in 0..20 {
            b.push(Outbound::Answer {
                client,
                data: vec![0; 1232],
            });
        }
        let mut out = Vec::new();
        b.finish(&mut out);
        assert!(out.len() >= 4);
        for a in &out {
            let bytes = mirage_engine::codec::encode(&mirage_engine::FromEngine::<Action, Refusal>::Action(
                a.clone(),
            ));
            assert!(bytes.is_ok(), "a batch over the message cap");
        }
    }
}
