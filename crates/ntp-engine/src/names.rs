//! Host names and pools: the engine resolves them itself.
//!
//! No privileged or unfiltered process parses DNS. For each configured
//! name the engine builds the queries (A and AAAA, a random id, the name's
//! letters in random case: the 0x20 bit, draft-vixie-dnsext-dns0x20) with
//! [`dns_wire`], asks the network role to send each from a fresh socket
//! connected to a resolver ([`Action::Resolve`]), and accepts an answer
//! ([`Event::Resolved`]) only from that resolver's address and port, with
//! the query's id and its question echoed octet for octet. The addresses
//! become sources of origin [`SourceOrigin::Server`] (one) or
//! [`SourceOrigin::Pool`] (up to [`Config::pool_sources`]).
//!
//! A name is resolved again when its sources are dropped: denied by a
//! Kiss-o'-Death, unreachable for [`DROP_AFTER_POLLS`] polls, or a
//! falseticker at as many selections in a row. Dropped addresses are not
//! taken again while newer ones are on offer (the last
//! [`REMEMBERED_REJECTS`] are remembered); a name left with no source at
//! all takes back those that were unreachable or falsetickers (a small
//! pool after an outage), never one that sent DENY or RSTR. A lookup that yields nothing is
//! retried with back-off, doubling from [`RETRY_FIRST_MS`] to
//! [`RETRY_MAX_MS`], each try at the next resolver. TTLs are not used: a
//! source stays while it serves (as chrony and ntpd do).

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

use dns_wire::{Message, Name, Rcode, Type};
use mirage_engine::Instant;
use rand_core::RngCore;

use crate::{Action, Config, NameStatus, Refusal, SourceOrigin};

/// How long the answers to one lookup's queries are waited for.
pub const QUERY_TIMEOUT_MS: u64 = 5_000;
/// The first retry after a lookup that gave no address.
pub const RETRY_FIRST_MS: u64 = 2_000;
/// The longest pause between retries.
pub const RETRY_MAX_MS: u64 = 1_024_000;
/// A lookup that gave fewer sources than wanted is repeated after this.
pub const REFILL_MS: u64 = 900_000;
/// Polls without an answer (a whole reach register), or selections as a
/// falseticker in a row, after which a named source is dropped.
pub const DROP_AFTER_POLLS: u8 = 8;
/// Dropped addresses remembered per name.
pub const REMEMBERED_REJECTS: usize = 16;

/// One query in flight.
#[derive(Clone, Debug)]
struct Pending {
    /// The handle the network role echoes in [`crate::Event::Resolved`].
    handle: u64,
    resolver: SocketAddr,
    query: Message,
    answered: bool,
}

#[derive(Clone, Debug)]
enum State {
    /// The next lookup is due at this time.
    Idle(Instant),
    /// Queries sent; waited for until the deadline.
    Waiting {
        deadline: Instant,
        queries: Vec<Pending>,
        found: Vec<IpAddr>,
    },
    /// Enough sources: nothing to do until one is dropped.
    Satisfied,
}

/// One configured name.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub name: Name,
    pub text: String,
    pub port: u16,
    pub pool: bool,
    state: State,
    /// Lookups in a row that gave no address.
    pub failures: u32,
    /// Lookups sent (each of one query per address family).
    pub lookups: u64,
    /// Dropped addresses, and whether for a DENY or RSTR kiss.
    rejected: Vec<(IpAddr, bool)>,
}

/// What a finished lookup asks of the engine: add these sources.
pub struct Found {
    pub origin: SourceOrigin,
    pub addrs: Vec<SocketAddr>,
}

impl Resolution {
    pub fn new(name: Name, text: String, port: u16, pool: bool, now: Instant) -> Resolution {
        Resolution {
            name,
            text,
            port,
            pool,
            state: State::Idle(now),
            failures: 0,
            lookups: 0,
            rejected: Vec::new(),
        }
    }

    /// The origin of this name's sources.
    pub fn origin(&self) -> SourceOrigin {
        if self.pool {
            SourceOrigin::Pool(self.text.clone())
        } else {
            SourceOrigin::Server(self.text.clone())
        }
    }

    /// How many sources this name should give.
    pub fn wanted(&self, config: &Config) -> usize {
        if self.pool {
            usize::from(config.pool_sources)
        } else {
            1
        }
    }

    /// When this name next needs the engine.
    pub fn wake_at(&self) -> Instant {
        match &self.state {
            State::Idle(at) => *at,
            State::Waiting { deadline, .. } => *deadline,
            State::Satisfied => Instant::NEVER,
        }
    }

    /// A source of this name was dropped (`addr`; `denied`: by a DENY or
    /// RSTR kiss): remember it and look again now, unless a lookup is
    /// already under way.
    pub fn dropped(&mut self, addr: IpAddr, denied: bool, now: Instant) {
        self.rejected.retain(|(a, _)| *a != addr);
        if self.rejected.len() == REMEMBERED_REJECTS {
            self.rejected.remove(0);
        }
        self.rejected.push((addr, denied));
        if matches!(self.state, State::Satisfied) {
            self.state = State::Idle(now);
        } else if let State::Idle(at) = &mut self.state
            && self.failures == 0
        {
            // A refill pause is cut short; a back-off after failures is not.
            *at = (*at).min(now);
        }
    }

    /// Send the lookup if it is due: one query per address family, to the
    /// next resolver in turn.
    pub fn start_lookup(
        &mut self,
        now: Instant,
        resolvers: &[SocketAddr],
        randomize_case: bool,
        rng: &mut impl RngCore,
        next_handle: &mut u64,
        out: &mut Vec<Action>,
    ) {
        let State::Idle(at) = self.state else {
            return;
        };
        if at > now || resolvers.is_empty() {
            return;
        }
        let resolver = resolvers[(self.lookups % resolvers.len() as u64) as usize];
        self.lookups += 1;
        let mut queries = Vec::new();
        for qtype in [Type::A, Type::AAAA] {
            let name = if randomize_case {
                let mut bits = rng.next_u64();
                let mut used = 0;
                self.name.with_random_case(|| {
                    if used == 64 {
                        bits = rng.next_u64();
                        used = 0;
                    }
                    used += 1;
                    let bit = bits & 1 == 1;
                    bits >>= 1;
                    bit
                })
            } else {
                self.name.clone()
            };
            let query = Message::query(rng.next_u32() as u16, name, qtype);
            let Ok(data) = query.to_bytes() else {
                continue;
            };
            *next_handle += 1;
            out.push(Action::Resolve {
                query: *next_handle,
                to: resolver,
                data,
            });
            queries.push(Pending {
                handle: *next_handle,
                resolver,
                query,
                answered: false,
            });
        }
        self.state = State::Waiting {
            deadline: now.add_millis(QUERY_TIMEOUT_MS),
            queries,
            found: Vec::new(),
        };
    }

    /// Whether `handle` is one of this name's queries in flight.
    pub fn owns(&self, handle: u64) -> bool {
        matches!(&self.state, State::Waiting { queries, .. } if queries.iter().any(|q| q.handle == handle && !q.answered))
    }

    /// An answer to query `handle` from `from`. Strict: the resolver's
    /// address and port, the query's id, opcode and question (case
    /// included), a response; then the addresses for the name, through
    /// CNAMEs (NXDOMAIN and other codes give none). Returns whether every
    /// query of the lookup is answered now.
    pub fn answer(&mut self, handle: u64, from: SocketAddr, data: &[u8]) -> Result<bool, Refusal> {
        let State::Waiting { queries, found, .. } = &mut self.state else {
            return Err(Refusal::DnsNotAwaited);
        };
        let pending = queries
            .iter_mut()
            .find(|q| q.handle == handle && !q.answered)
            .ok_or(Refusal::DnsNotAwaited)?;
        if from != pending.resolver {
            return Err(Refusal::DnsWrongSource);
        }
        let reply = Message::parse(data).map_err(|_| Refusal::DnsMalformed)?;
        if !reply.is_response_to(&pending.query) {
            return Err(Refusal::DnsMismatch);
        }
        pending.answered = true;
        if reply.rcode() == Rcode::NOERROR {
            let qtype = pending.query.questions[0].qtype;
            for (addr, _ttl) in reply.addresses(&pending.query.questions[0].name) {
                // Only what was asked: an AAAA answer to an A query is not.
                let asked = matches!(
                    (addr, qtype),
                    (IpAddr::V4(_), Type::A) | (IpAddr::V6(_), Type::AAAA)
                );
                if asked && !found.contains(&addr) {
                    found.push(addr);
                }
            }
        }
        Ok(queries.iter().all(|q| q.answered))
    }

    /// End the lookup (all answered, or the deadline passed). `present`
    /// are the addresses of every source the engine has; `live` the number
    /// of this name's sources; `room` how many more sources the engine may
    /// hold. Returns the sources to add.
    pub fn finish(
        &mut self,
        now: Instant,
        present: &[SocketAddr],
        live: usize,
        room: usize,
        config: &Config,
    ) -> Found {
        let found = match core::mem::replace(&mut self.state, State::Satisfied) {
            State::Waiting { found, .. } => found,
            other => {
                self.state = other;
                return Found {
                    origin: self.origin(),
                    addrs: Vec::new(),
                };
            }
        };
        let wanted = self.wanted(config);
        let take = wanted.saturating_sub(live).min(room);
        let new: Vec<SocketAddr> = found
            .iter()
            .map(|&ip| SocketAddr::new(ip, self.port))
            .filter(|a| !present.contains(a))
            .collect();
        let rejected = |a: &SocketAddr| {
            self.rejected
                .iter()
                .find(|(r, _)| *r == a.ip())
                .map(|&(_, denied)| denied)
        };
        let mut addrs: Vec<SocketAddr> = new
            .iter()
            .copied()
            .filter(|a| rejected(a).is_none())
            .take(take)
            .collect();
        // A name whose every address was dropped (a small pool after an
        // outage) would otherwise never serve again: with no source of its
        // own left, it takes back those that were unreachable or
        // falsetickers, never one that said DENY or RSTR.
        if addrs.is_empty() && live == 0 {
            addrs = new
                .into_iter()
                .filter(|a| rejected(a) == Some(false))
                .take(take)
                .collect();
            for a in &addrs {
                self.rejected.retain(|(r, _)| *r != a.ip());
            }
        }
        if found.is_empty() {
            self.failures = self.failures.saturating_add(1);
            let shift = (self.failures - 1).min(20);
            self.state = State::Idle(now.add_millis((RETRY_FIRST_MS << shift).min(RETRY_MAX_MS)));
        } else {
            self.failures = 0;
            if live + addrs.len() < wanted {
                self.state = State::Idle(now.add_millis(REFILL_MS));
            }
        }
        Found {
            origin: self.origin(),
            addrs,
        }
    }

    /// Whether the lookup's deadline has passed.
    pub fn timed_out(&self, now: Instant) -> bool {
        matches!(&self.state, State::Waiting { deadline, .. } if *deadline <= now)
    }

    pub fn status(&self, sources: u8) -> NameStatus {
        NameStatus {
            name: self.text.clone(),
            pool: self.pool,
            sources,
            resolving: matches!(self.state, State::Waiting { .. }),
            failures: self.failures,
            lookups: self.lookups,
        }
    }
}
