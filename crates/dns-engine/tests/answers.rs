//! What an upstream answer may become, through the engine's contract in
//! virtual time: cut down to the question's CNAME chain (bailiwick),
//! cached positive and negative (RFC 2308) with clamped TTLs, bounded by
//! memory, served stale when enabled (RFC 8767), special-use names
//! answered locally (RFC 6761, RFC 7686), AD never set.

use std::net::{Ipv4Addr, Ipv6Addr};

use dns_engine::{Action, Event, Forwarder, Inbound, Outbound, Start, Status, Transport};
use dns_wire::{Class, Edns, Message, Name, RData, Rcode, Record, Soa, Type};
use mirage_engine::{Engine, Instant};

struct Eng {
    f: Forwarder,
    status: Option<Status>,
}

/// What one client query led to.
enum Outcome {
    /// Sent upstream: the query number and the message sent.
    Upstream(u32, Message),
    /// Answered at once (local, cached or refused).
    Answer(Message),
}

impl Eng {
    fn new(start: Start) -> Eng {
        let start = Start {
            upstreams: vec!["192.0.2.1:53".parse().unwrap()],
            ..start
        };
        let mut out = Vec::new();
        Eng {
            f: Forwarder::start(start, Instant(0), [9; 32], &mut out),
            status: None,
        }
    }

    fn step(&mut self, now_ms: u64, items: Vec<Inbound>) -> Vec<Outbound> {
        let mut out = Vec::new();
        let _ = self.f.handle(Instant(now_ms), Event::Batch(items), &mut out);
        self.take(out)
    }

    fn take(&mut self, out: Vec<Action>) -> Vec<Outbound> {
        let mut items = Vec::new();
        for a in out {
            match a {
                Action::Batch(b) => items.extend(b),
                Action::Status(s) => self.status = Some(s),
            }
        }
        items
    }

    /// The engine's timer at `now_ms`: what it sent.
    fn timer(&mut self, now_ms: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.f.on_timer(Instant(now_ms), &mut out);
        self.take(out)
    }

    /// The latest status, after a timer far enough on to send it.
    fn status(&mut self, now_ms: u64) -> Status {
        let mut out = Vec::new();
        self.f.on_timer(Instant(now_ms), &mut out);
        self.take(out);
        self.status.clone().unwrap()
    }

    fn ask_msg(&mut self, now_ms: u64, m: &Message) -> Outcome {
        let out = self.step(
            now_ms,
            vec![Inbound::Query {
                client: u64::from(m.header.id),
                transport: Transport::Udp,
                data: m.to_bytes().unwrap(),
            }],
        );
        for o in &out {
            match o {
                Outbound::Query { query, data, .. } => {
                    let sent = Message::parse(data).unwrap();
                    // Not another question's next attempt.
                    if sent.questions[0].name == m.questions[0].name
                        && sent.questions[0].qtype == m.questions[0].qtype
                    {
                        return Outcome::Upstream(*query, sent);
                    }
                }
                // Another client's answer may share the batch (an attempt
                // timed out meanwhile).
                Outbound::Answer { client, data } if *client == u64::from(m.header.id) => {
                    return Outcome::Answer(Message::parse(data).unwrap());
                }
                _ => {}
            }
        }
        panic!("neither an answer nor an upstream query: {out:?}")
    }

    fn ask(&mut self, now_ms: u64, id: u16, name: &str, qtype: Type) -> Outcome {
        let mut m = Message::query(id, Name::from_ascii(name).unwrap(), qtype);
        m.edns = Some(Edns::new(1232));
        self.ask_msg(now_ms, &m)
    }

    /// `reply` (made from the query sent) delivered: the client's answer.
    fn reply(&mut self, now_ms: u64, query: u32, reply: &Message) -> Message {
        let out = self.step(
            now_ms,
            vec![Inbound::Reply {
                query,
                data: reply.to_bytes().unwrap(),
            }],
        );
        answer_in(&out)
    }

    /// Ask, expect it upstream, answer with `make(sent)`: the client's answer.
    fn fetch(&mut self, now_ms: u64, name: &str, qtype: Type, make: impl Fn(&Message) -> Message) -> Message {
        let Outcome::Upstream(num, sent) = self.ask(now_ms, 1, name, qtype) else {
            panic!("{name} answered without an upstream query");
        };
        self.reply(now_ms, num, &make(&sent))
    }
}

fn answer_in(out: &[Outbound]) -> Message {
    let a: Vec<Message> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Answer { data, .. } => Some(Message::parse(data).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(a.len(), 1, "{out:?}");
    a.into_iter().next().unwrap()
}

fn upstream(o: Outcome) -> (u32, Message) {
    match o {
        Outcome::Upstream(n, m) => (n, m),
        Outcome::Answer(a) => panic!("answered, not asked upstream: {a:?}"),
    }
}

fn answered(o: Outcome) -> Message {
    match o {
        Outcome::Answer(a) => a,
        Outcome::Upstream(_, m) => panic!("asked upstream, not answered: {m:?}"),
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record {
        name: name(owner),
        class: Class::IN,
        ttl,
        data,
    }
}

fn a(owner: &str, ttl: u32, last: u8) -> Record {
    rec(owner, ttl, RData::A(Ipv4Addr::new(192, 0, 2, last)))
}

fn cname(owner: &str, target: &str) -> Record {
    rec(owner, 300, RData::Cname(name(target)))
}

fn soa(ttl: u32, minimum: u32) -> Record {
    rec(
        "test",
        ttl,
        RData::Soa(Soa {
            mname: name("ns.test"),
            rname: name("admin.test"),
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum,
        }),
    )
}

/// The upstream's response to `sent` with these sections: the question
/// echoed as sent (0x20 case), owner names as written here (an upstream
/// may spell them in any case).
fn response(sent: &Message, rcode: Rcode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
    let mut r = sent.clone();
    r.header.response = true;
    r.header.recursion_available = true;
    r.header.rcode = rcode.0 as u8;
    r.answers = answers;
    r.authorities = authorities;
    r
}

fn texts(rs: &[Record]) -> Vec<String> {
    rs.iter()
        .map(|r| format!("{} {:?}", r.name, r.data).to_ascii_lowercase())
        .collect()
}

#[test]
fn records_outside_the_chain_are_dropped_and_never_served_for_their_names() {
    let mut e = Eng::new(Start::default());
    let got = e.fetch(0, "www.test", Type::A, |sent| {
        let mut r = response(
            sent,
            Rcode::NOERROR,
            vec![
                // An injected address for a name nobody asked...
                a("bank.example", 86400, 66),
                cname("www.test", "b.test"),
                a("b.test", 300, 7),
                // ...and another type of a name on the chain.
                rec("b.test", 300, RData::Txt(vec![b"x".to_vec()])),
            ],
            vec![rec("example", 86400, RData::Ns(name("ns.evil.example")))],
        );
        r.additionals = vec![a("ns.evil.example", 86400, 9)];
        r.header.authentic_data = true;
        r
    });
    assert_eq!(
        texts(&got.answers),
        ["www.test cname(name(b.test))", "b.test a(192.0.2.7)"]
    );
    assert!(
        got.authorities.is_empty() && got.additionals.is_empty(),
        "{got:?}"
    );
    assert!(!got.header.authentic_data, "AD is never ours to set");
    // The injected name, the glue's and even the chain's own members are
    // asked upstream: the cache answers only the question it was given.
    for n in ["bank.example", "ns.evil.example", "b.test"] {
        upstream(e.ask(1000, 2, n, Type::A));
    }
    let again = answered(e.ask(1000, 3, "www.test", Type::A));
    assert_eq!(again.answers.len(), 2);
}

#[test]
fn a_cname_loop_is_servfail_uncached_and_a_12_hop_chain_resolves() {
    let mut e = Eng::new(Start::default());
    let got = e.fetch(0, "loop.test", Type::A, |sent| {
        response(
            sent,
            Rcode::NOERROR,
            vec![cname("loop.test", "loop.test")],
            vec![],
        )
    });
    assert_eq!((got.rcode(), got.answers.len()), (Rcode::SERVFAIL, 0));
    let got = e.fetch(10, "l1.test", Type::A, |sent| {
        response(
            sent,
            Rcode::NOERROR,
            vec![
                cname("l1.test", "l2.test"),
                cname("l2.test", "L1.test"),
                a("l1.test", 300, 1),
            ],
            vec![],
        )
    });
    assert_eq!(got.rcode(), Rcode::SERVFAIL);
    // Not cached: asked again.
    upstream(e.ask(20, 4, "loop.test", Type::A));
    let st = e.status(5000);
    assert_eq!(st.counters.unusable, 2);

    // 12 CNAMEs, given out of order: followed, and answered in order.
    let got = e.fetch(6000, "c0.test", Type::A, |sent| {
        let mut rs: Vec<Record> = (0..12)
            .rev()
            .map(|i| cname(&format!("c{i}.test"), &format!("c{}.test", i + 1)))
            .collect();
        rs.insert(5, a("c12.test", 300, 12));
        response(sent, Rcode::NOERROR, rs, vec![])
    });
    assert_eq!(got.rcode(), Rcode::NOERROR);
    assert_eq!(got.answers.len(), 13);
    for (i, r) in got.answers.iter().enumerate() {
        assert_eq!(r.name, name(&format!("c{i}.test")));
    }
    // Over 16 hops: SERVFAIL.
    let got = e.fetch(7000, "d0.test", Type::A, |sent| {
        let mut rs: Vec<Record> = (0..17)
            .map(|i| cname(&format!("d{i}.test"), &format!("d{}.test", i + 1)))
            .collect();
        rs.push(a("d17.test", 300, 1));
        response(sent, Rcode::NOERROR, rs, vec![])
    });
    assert_eq!(got.rcode(), Rcode::SERVFAIL);
}

#[test]
fn nxdomain_is_cached_for_every_type_from_the_soa_and_nodata_per_type() {
    let mut e = Eng::new(Start::default());
    // SOA TTL 300, MINIMUM 60: the negative TTL is 60 (RFC 2308 section 5).
    let got = e.fetch(0, "nx.test", Type::A, |sent| {
        response(
            sent,
            Rcode::NXDOMAIN,
            vec![],
            vec![soa(300, 60), rec("test", 300, RData::Ns(name("ns.test")))],
        )
    });
    assert_eq!(got.rcode(), Rcode::NXDOMAIN);
    assert_eq!(texts(&got.authorities).len(), 1);
    assert_eq!(got.authorities[0].ttl, 60, "the SOA carries the negative TTL");
    // 20 s later, another type of the same name, another spelling: from
    // the cache, the SOA's TTL counted down.
    let got = answered(e.ask(20_000, 2, "NX.test", Type::AAAA));
    assert_eq!((got.rcode(), got.header.id), (Rcode::NXDOMAIN, 2));
    assert_eq!(got.authorities[0].ttl, 40);
    assert_eq!(got.authorities[0].rtype(), Type::SOA);
    // Expired after 60 s.
    upstream(e.ask(60_001, 3, "nx.test", Type::A));

    // NODATA: cached for its type only.
    let got = e.fetch(100_000, "a.test", Type::AAAA, |sent| {
        response(sent, Rcode::NOERROR, vec![], vec![soa(30, 3600)])
    });
    assert_eq!((got.rcode(), got.answers.len()), (Rcode::NOERROR, 0));
    let got = answered(e.ask(110_000, 4, "a.test", Type::AAAA));
    assert_eq!(
        (got.rcode(), got.answers.len(), got.authorities[0].ttl),
        (Rcode::NOERROR, 0, 20)
    );
    upstream(e.ask(110_000, 5, "a.test", Type::A));
    let st = e.status(200_000);
    assert_eq!((st.counters.cache_hits, st.counters.negative_hits), (2, 2));

    // Without an SOA nothing is cached.
    let mut e = Eng::new(Start::default());
    e.fetch(0, "nosoa.test", Type::A, |sent| {
        response(sent, Rcode::NXDOMAIN, vec![], vec![])
    });
    upstream(e.ask(1000, 2, "nosoa.test", Type::A));
}

#[test]
fn ttls_are_clamped_and_the_top_bit_counts_as_zero() {
    let mut e = Eng::new(Start {
        min_ttl_secs: 60,
        max_ttl_secs: 600,
        negative_max_ttl_secs: 120,
        ..Start::default()
    });
    // TTL 5 under a minimum of 60: kept 60 s, never served with more than
    // the upstream gave.
    let got = e.fetch(0, "short.test", Type::A, |sent| {
        response(sent, Rcode::NOERROR, vec![a("short.test", 5, 1)], vec![])
    });
    assert_eq!(got.answers[0].ttl, 5);
    let got = answered(e.ask(30_000, 2, "short.test", Type::A));
    assert_eq!(got.answers[0].ttl, 0);
    upstream(e.ask(60_001, 3, "short.test", Type::A));
    // A day's TTL under a maximum of 600: relayed and kept for 600 s.
    let got = e.fetch(100_000, "long.test", Type::A, |sent| {
        response(sent, Rcode::NOERROR, vec![a("long.test", 86_400, 1)], vec![])
    });
    assert_eq!(got.answers[0].ttl, 600);
    assert_eq!(
        answered(e.ask(200_000, 2, "long.test", Type::A)).answers[0].ttl,
        500
    );
    upstream(e.ask(700_001, 3, "long.test", Type::A));
    // A negative TTL over the negative maximum.
    e.fetch(800_000, "nx.test", Type::A, |sent| {
        response(sent, Rcode::NXDOMAIN, vec![], vec![soa(7200, 7200)])
    });
    answered(e.ask(919_000, 2, "nx.test", Type::A));
    upstream(e.ask(920_001, 3, "nx.test", Type::A));

    // RFC 2181 section 8: a TTL with the top bit set is 0, so not cached
    // (no minimum here) and relayed as 0.
    let mut e = Eng::new(Start::default());
    let got = e.fetch(0, "top.test", Type::A, |sent| {
        response(sent, Rcode::NOERROR, vec![a("top.test", 0x8000_0010, 1)], vec![])
    });
    assert_eq!(got.answers[0].ttl, 0);
    upstream(e.ask(1000, 2, "top.test", Type::A));
}

#[test]
fn a_truncated_answer_is_relayed_but_never_cached() {
    let mut e = Eng::new(Start::default());
    let (num, sent) = upstream(e.ask(0, 1, "big.test", Type::TXT));
    let mut tc = response(&sent, Rcode::NOERROR, vec![], vec![]);
    tc.header.truncated = true;
    let out = e.step(
        5,
        vec![Inbound::Reply {
            query: num,
            data: tc.to_bytes().unwrap(),
        }],
    );
    // Asked again over TCP, which answers truncated as well (a broken
    // upstream): relayed with TC, not kept.
    let (num, sent) = out
        .iter()
        .find_map(|o| match o {
            Outbound::TcpQuery { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
            _ => None,
        })
        .expect("a TCP retry");
    let mut tc = response(&sent, Rcode::NOERROR, vec![a("big.test", 300, 1)], vec![]);
    tc.header.truncated = true;
    let got = e.reply(10, num, &tc);
    assert!(got.header.truncated);
    upstream(e.ask(1000, 2, "big.test", Type::TXT));
    assert_eq!(e.status(5000).cache_entries, 0);
}

/// Both attempts of `num` fail (the default is two): the client's answer.
fn fail_both(e: &mut Eng, now: u64, num: u32) -> Message {
    let out = e.step(now, vec![Inbound::Failed { query: num }]);
    let next = out
        .iter()
        .find_map(|o| match o {
            Outbound::Query { query, .. } => Some(*query),
            _ => None,
        })
        .expect("the second attempt");
    answer_in(&e.step(now + 1, vec![Inbound::Failed { query: next }]))
}

#[test]
fn serve_stale_is_off_by_default_and_when_on_answers_with_ttl_30_up_to_its_cap() {
    let positive = |sent: &Message| response(sent, Rcode::NOERROR, vec![a("s.test", 60, 1)], vec![]);
    let mut off = Eng::new(Start::default());
    off.fetch(0, "s.test", Type::A, positive);
    let (num, _) = upstream(off.ask(61_000, 2, "s.test", Type::A));
    assert_eq!(fail_both(&mut off, 61_010, num).rcode(), Rcode::SERVFAIL);

    let mut e = Eng::new(Start {
        serve_stale: true,
        stale_max_age_secs: 3600,
        ..Start::default()
    });
    e.fetch(0, "s.test", Type::A, positive);
    // Expired: the upstream is asked first; it fails; the stale answer.
    let (num, _) = upstream(e.ask(61_000, 2, "s.test", Type::A));
    let got = fail_both(&mut e, 61_010, num);
    assert_eq!(
        (got.rcode(), got.answers.len(), got.answers[0].ttl),
        (Rcode::NOERROR, 1, 30)
    );
    // An upstream answering SERVFAIL is a failure too.
    let (num, sent) = upstream(e.ask(70_000, 3, "s.test", Type::A));
    let got = e.reply(70_010, num, &response(&sent, Rcode::SERVFAIL, vec![], vec![]));
    assert_eq!((got.rcode(), got.answers[0].ttl), (Rcode::NOERROR, 30));
    // Fresh data wins once it arrives.
    let got = e.fetch(80_000, "s.test", Type::A, |sent| {
        response(sent, Rcode::NOERROR, vec![a("s.test", 60, 2)], vec![])
    });
    assert_eq!(got.answers[0].data, RData::A(Ipv4Addr::new(192, 0, 2, 2)));
    let got = answered(e.ask(90_000, 4, "s.test", Type::A));
    assert_eq!(
        (got.answers[0].ttl, &got.answers[0].data),
        (50, &RData::A(Ipv4Addr::new(192, 0, 2, 2)))
    );
    // Past expiry plus the stale cap: SERVFAIL.
    let (num, _) = upstream(e.ask(140_000 + 3_600_000, 5, "s.test", Type::A));
    assert_eq!(
        fail_both(&mut e, 140_010 + 3_600_000, num).rcode(),
        Rcode::SERVFAIL
    );
    assert_eq!(e.status(4_000_000).counters.stale_answers, 2);
}

/// The clients answered in `out`, by id, with their messages.
fn answers_in(out: &[Outbound]) -> Vec<(u64, Message)> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Answer { client, data } => Some((*client, Message::parse(data).unwrap())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stale_answer_goes_out_when_the_client_response_timer_ends_and_the_query_refreshes_the_cache() {
    let positive =
        |last| move |sent: &Message| response(sent, Rcode::NOERROR, vec![a("s.test", 60, last)], vec![]);
    let mut e = Eng::new(Start {
        serve_stale: true,
        stale_max_age_secs: 3600,
        // Longer than the 1.8 s timer: the upstream is slow, not failed.
        attempt_ms: 2500,
        ..Start::default()
    });
    e.fetch(0, "s.test", Type::A, positive(1));
    // Expired: asked upstream, the client waits for the upstream first.
    let (num, sent) = upstream(e.ask(61_000, 2, "s.test", Type::A));
    assert_eq!(e.f.poll_at(), Instant(62_800), "1.8 s after the client asked");
    // A second client joins the same upstream query 500 ms later.
    let mut m = Message::query(3, name("s.test"), Type::A);
    m.edns = Some(Edns::new(1232));
    let joined = e.step(
        61_500,
        vec![Inbound::Query {
            client: 3,
            transport: Transport::Udp,
            data: m.to_bytes().unwrap(),
        }],
    );
    assert!(joined.is_empty(), "merged, nothing sent: {joined:?}");
    assert!(answers_in(&e.timer(62_799)).is_empty());
    // 1.8 s on: the first client gets the stale answer, TTL 30, and the
    // upstream query goes on.
    let out = e.timer(62_800);
    let got = answers_in(&out);
    assert_eq!(got.len(), 1, "{out:?}");
    assert_eq!(
        (
            got[0].0,
            got[0].1.rcode(),
            got[0].1.answers[0].ttl,
            &got[0].1.answers[0].data
        ),
        (2, Rcode::NOERROR, 30, &RData::A(Ipv4Addr::new(192, 0, 2, 1)))
    );
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Close { .. })),
        "{out:?}"
    );
    assert_eq!(e.f.poll_at(), Instant(63_300), "the second client's timer");
    let got = answers_in(&e.timer(63_300));
    assert_eq!((got.len(), got[0].0, got[0].1.answers[0].ttl), (1, 3, 30));
    assert_eq!(e.f.poll_at(), Instant(63_500), "the attempt still runs");
    // The upstream answers after all: nobody left to answer, the cache
    // takes the fresh data and the next client gets it without a query.
    let out = e.step(
        63_400,
        vec![Inbound::Reply {
            query: num,
            data: positive(7)(&sent).to_bytes().unwrap(),
        }],
    );
    assert!(answers_in(&out).is_empty(), "{out:?}");
    assert!(
        out.iter()
            .any(|o| matches!(o, Outbound::Close { query } if *query == num))
    );
    let got = answered(e.ask(64_000, 4, "s.test", Type::A));
    assert_eq!(
        (got.answers[0].ttl, &got.answers[0].data),
        (60, &RData::A(Ipv4Addr::new(192, 0, 2, 7)))
    );
    assert_eq!(e.status(70_000).counters.stale_answers, 2);
    // A name with nothing stale waits for its attempts: no timer.
    upstream(e.ask(71_000, 5, "never.test", Type::A));
    assert_eq!(e.f.poll_at(), Instant(73_500));

    // Its own length, from the config.
    let mut e = Eng::new(Start {
        serve_stale: true,
        stale_answer_ms: 400,
        ..Start::default()
    });
    e.fetch(0, "s.test", Type::A, positive(1));
    upstream(e.ask(61_000, 2, "s.test", Type::A));
    assert_eq!(e.f.poll_at(), Instant(61_400));
    assert_eq!(answers_in(&e.timer(61_400))[0].1.answers[0].ttl, 30);
    // Serve-stale off: no timer, whatever its length.
    let mut off = Eng::new(Start {
        stale_answer_ms: 400,
        ..Start::default()
    });
    off.fetch(0, "s.test", Type::A, positive(1));
    upstream(off.ask(61_000, 2, "s.test", Type::A));
    assert_eq!(off.f.poll_at(), Instant(62_500));
}

#[test]
fn special_use_names_are_answered_locally_and_never_forwarded() {
    let mut e = Eng::new(Start::default());
    let cases: [(&str, Type, Rcode, Option<RData>); 6] = [
        (
            "localhost",
            Type::A,
            Rcode::NOERROR,
            Some(RData::A(Ipv4Addr::LOCALHOST)),
        ),
        (
            "x.LocalHost",
            Type::AAAA,
            Rcode::NOERROR,
            Some(RData::Aaaa(Ipv6Addr::LOCALHOST)),
        ),
        ("localhost", Type::MX, Rcode::NOERROR, None),
        ("foo.invalid", Type::A, Rcode::NXDOMAIN, None),
        ("invalid", Type::AAAA, Rcode::NXDOMAIN, None),
        ("hidden.service.onion", Type::A, Rcode::NXDOMAIN, None),
    ];
    for (i, (n, t, rcode, data)) in cases.into_iter().enumerate() {
        let got = answered(e.ask(i as u64, 10 + i as u16, n, t));
        assert_eq!((got.header.id, got.rcode()), (10 + i as u16, rcode), "{n}");
        assert!(
            got.questions[0].name.eq_exact(&name(n)),
            "{n}: the client's spelling"
        );
        assert_eq!(
            got.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            data.into_iter().collect::<Vec<_>>()
        );
        assert!(got.header.recursion_available && !got.header.authentic_data);
    }
    let st = e.status(5000);
    assert_eq!((st.counters.local_answers, st.counters.upstream_queries), (6, 0));
    // A name that merely contains one is forwarded.
    upstream(e.ask(6000, 1, "localhost.test", Type::A));
}

#[test]
fn do_and_cd_pass_and_rrsigs_with_them_but_ad_is_cleared() {
    let mut e = Eng::new(Start::default());
    let mut m = Message::query(7, name("signed.test"), Type::A);
    m.header.checking_disabled = true;
    let mut edns = Edns::new(1232);
    edns.dnssec_ok = true;
    m.edns = Some(edns);
    let (num, sent) = upstream(e.ask_msg(0, &m));
    assert!(sent.header.checking_disabled && sent.edns.as_ref().unwrap().dnssec_ok);
    let mut r = response(
        &sent,
        Rcode::NOERROR,
        vec![
            a("signed.test", 300, 1),
            rec(
                "signed.test",
                300,
                RData::Unknown {
                    rtype: Type(46),
                    data: vec![0, 1, 8, 2, 0, 0, 1, 44],
                },
            ),
        ],
        vec![],
    );
    r.header.authentic_data = true;
    r.edns.as_mut().unwrap().dnssec_ok = true;
    let got = e.reply(5, num, &r);
    assert_eq!(got.answers.len(), 2, "the RRSIG passes");
    assert!(got.header.checking_disabled && got.edns.unwrap().dnssec_ok);
    assert!(!got.header.authentic_data);
}

#[test]
fn the_cache_stays_within_its_memory_bound_evicting_the_least_recently_used() {
    let bound = 64 * 1024;
    let mut e = Eng::new(Start {
        cache_bytes: bound,
        ..Start::default()
    });
    let fill = |e: &mut Eng, n: u32, now: u64| {
        let host = format!("host-{n}.test");
        e.fetch(now, &host, Type::A, |sent| {
            response(
                sent,
                Rcode::NOERROR,
                vec![a(&host, 3600, (n % 250) as u8)],
                vec![],
            )
        });
    };
    fill(&mut e, 0, 0);
    for n in 1..2000u32 {
        // host-0 is used all along: it stays.
        answered(e.ask(u64::from(n) * 10, 2, "host-0.test", Type::A));
        fill(&mut e, n, u64::from(n) * 10 + 1);
    }
    let st = e.status(100_000);
    assert!(st.cache_bytes <= bound, "{st:?}");
    assert!(st.cache_entries > 100 && st.cache_entries < 2000, "{st:?}");
    // Each entry is counted above its wire size (about 70 octets) with
    // its key, slot and index, and stays compact (under 200 octets).
    let each = st.cache_bytes / st.cache_entries;
    assert!(each > 120 && each < 200, "{st:?}");
    answered(e.ask(100_000, 3, "host-0.test", Type::A));
    answered(e.ask(100_000, 4, "host-1999.test", Type::A));
    upstream(e.ask(100_000, 5, "host-1.test", Type::A));
}

#[test]
fn refused_upstream_is_asked_again_and_the_client_never_gets_refused() {
    let mut e = Eng::new(Start::default());
    let (num, sent) = upstream(e.ask(0, 1, "r.test", Type::A));
    let out = e.step(
        5,
        vec![Inbound::Reply {
            query: num,
            data: response(&sent, Rcode::REFUSED, vec![], vec![])
                .to_bytes()
                .unwrap(),
        }],
    );
    // The next attempt, not an answer.
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Answer { .. })),
        "{out:?}"
    );
    let (num, sent) = out
        .iter()
        .find_map(|o| match o {
            Outbound::Query { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
            _ => None,
        })
        .expect("asked again");
    let got = e.reply(10, num, &response(&sent, Rcode::REFUSED, vec![], vec![]));
    assert_eq!(got.rcode(), Rcode::SERVFAIL);
    let st = e.status(5000);
    assert_eq!((st.counters.upstream_failures, st.counters.servfail), (2, 1));
}

/// The TCP retry of `name`: its query number and message, after a UDP
/// attempt answered with TC.
fn to_tcp(e: &mut Eng, now: u64, client: u64, name: &str) -> (u32, Message) {
    let mut m = Message::query(client as u16, Name::from_ascii(name).unwrap(), Type::TXT);
    m.edns = Some(Edns::new(1232));
    let out = e.step(
        now,
        vec![Inbound::Query {
            client,
            transport: Transport::Tcp,
            data: m.to_bytes().unwrap(),
        }],
    );
    let (num, sent) = out
        .iter()
        .find_map(|o| match o {
            Outbound::Query { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
            _ => None,
        })
        .unwrap();
    let mut tc = response(&sent, Rcode::NOERROR, vec![], vec![]);
    tc.header.truncated = true;
    let out = e.step(
        now,
        vec![Inbound::Reply {
            query: num,
            data: tc.to_bytes().unwrap(),
        }],
    );
    out.iter()
        .find_map(|o| match o {
            Outbound::TcpQuery { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
            _ => None,
        })
        .expect("a TCP retry")
}

#[test]
fn a_large_tcp_reply_arrives_in_parts_and_leaves_in_parts() {
    let mut e = Eng::new(Start::default());
    let (num, sent) = to_tcp(&mut e, 0, 5, "huge.test");
    // 40 TXT records of 500 octets: about 21 KB.
    let records: Vec<Record> = (0..40)
        .map(|i| {
            rec(
                "huge.test",
                300,
                RData::Txt(vec![vec![b'a' + i as u8; 250], vec![b'z'; 250]]),
            )
        })
        .collect();
    let data = response(&sent, Rcode::NOERROR, records, vec![])
        .to_bytes()
        .unwrap();
    assert!(data.len() > 20_000);
    let total = data.len() as u16;
    let mut items: Vec<Inbound> = data
        .chunks(dns_engine::PART_BYTES)
        .map(|c| Inbound::ReplyPart {
            query: num,
            total,
            data: c.to_vec(),
        })
        .collect();
    let Some(Inbound::ReplyPart { data: last, .. }) = items.pop() else {
        unreachable!()
    };
    items.push(Inbound::Reply {
        query: num,
        data: last,
    });
    // Parts may straddle batches.
    let tail = items.split_off(2);
    assert!(e.step(10, items).is_empty());
    let mut actions = Vec::new();
    let _ = e.f.handle(Instant(11), Event::Batch(tail), &mut actions);
    // Every batch still fits one channel message.
    for a in &actions {
        let msg = mirage_engine::FromEngine::<Action, dns_engine::Refusal>::Action(a.clone());
        assert!(
            mirage_engine::codec::encode(&msg).is_ok(),
            "a batch over the channel's cap"
        );
    }
    let out = e.take(actions);
    // The answer: parts of at most PART_BYTES, then the last as the answer.
    let mut whole = Vec::new();
    let mut parts = 0;
    for o in &out {
        match o {
            Outbound::AnswerPart {
                client: 5,
                total,
                data,
            } => {
                assert!(data.len() <= dns_engine::PART_BYTES);
                whole.extend_from_slice(data);
                parts += 1;
                assert!(usize::from(*total) > 20_000);
            }
            Outbound::Answer { client: 5, data } => whole.extend_from_slice(data),
            _ => {}
        }
    }
    assert!(parts >= 5, "{parts} parts");
    let got = Message::parse(&whole).unwrap();
    assert_eq!(
        (got.header.id, got.answers.len(), got.header.truncated),
        (5, 40, false)
    );
}

#[test]
fn parts_that_do_not_add_up_fail_the_tcp_attempt_and_udp_gets_none() {
    let mut e = Eng::new(Start::default());
    let (num, sent) = to_tcp(&mut e, 0, 6, "bad.test");
    let data = response(&sent, Rcode::NOERROR, vec![a("bad.test", 300, 1)], vec![])
        .to_bytes()
        .unwrap();
    // Announced 9000 octets, delivered far fewer: the TCP attempt is spent,
    // the next attempt asked (over UDP again).
    let out = e.step(
        5,
        vec![
            Inbound::ReplyPart {
                query: num,
                total: 9000,
                data: vec![0; 100],
            },
            Inbound::Reply { query: num, data },
        ],
    );
    assert!(out.iter().any(|o| matches!(o, Outbound::Query { .. })), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Answer { .. })),
        "{out:?}"
    );
    // A part for a UDP attempt: refused, the attempt goes on.
    let (num, _) = upstream(e.ask(100, 7, "udp.test", Type::A));
    let mut out = Vec::new();
    let refused = e.f.handle(
        Instant(101),
        Event::Batch(vec![Inbound::ReplyPart {
            query: num,
            total: 9000,
            data: vec![0; 100],
        }]),
        &mut out,
    );
    assert_eq!(
        refused.unwrap_err().counts,
        vec![(dns_engine::Reason::MalformedReply, 1)]
    );
}

#[test]
fn prefetch_refreshes_an_answer_asked_for_in_the_last_tenth_of_its_time() {
    for prefetch in [false, true] {
        let mut e = Eng::new(Start {
            prefetch,
            ..Start::default()
        });
        let got = e.fetch(0, "p.test", Type::A, |sent| {
            let owner = sent.questions[0].name.to_string();
            response(sent, Rcode::NOERROR, vec![a(&owner, 100, 1)], vec![])
        });
        assert_eq!(got.answers[0].ttl, 100);
        // At 89 s, outside the last tenth: from the cache, nothing upstream.
        let out = e.step(
            89_000,
            vec![Inbound::Query {
                client: 2,
                transport: Transport::Udp,
                data: {
                    let mut m = Message::query(2, name("p.test"), Type::A);
                    m.edns = Some(Edns::new(1232));
                    m.to_bytes().unwrap()
                },
            }],
        );
        assert!(
            !out.iter().any(|o| matches!(o, Outbound::Query { .. })),
            "{out:?}"
        );
        assert_eq!(answer_in(&out).answers[0].ttl, 11);
        // At 91 s: the client is answered from the cache at once, and with
        // prefetch on the question goes upstream too, in the same batch.
        let mut m = Message::query(3, name("p.test"), Type::A);
        m.edns = Some(Edns::new(1232));
        let out = e.step(
            91_000,
            vec![Inbound::Query {
                client: 3,
                transport: Transport::Udp,
                data: m.to_bytes().unwrap(),
            }],
        );
        assert_eq!(answer_in(&out).answers[0].ttl, 9, "the cached answer, at once");
        let sent: Vec<(u32, Message)> = out
            .iter()
            .filter_map(|o| match o {
                Outbound::Query { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
                _ => None,
            })
            .collect();
        if !prefetch {
            assert!(sent.is_empty(), "{out:?}");
            // The answer expires and the next client waits for the upstream.
            assert!(matches!(
                e.ask(101_000, 4, "p.test", Type::A),
                Outcome::Upstream(..)
            ));
            continue;
        }
        assert_eq!(sent.len(), 1, "one prefetch: {out:?}");
        let (num, q) = &sent[0];
        // A second hit meanwhile asks nothing more: one query in flight.
        let Outcome::Answer(again) = e.ask(91_200, 5, "p.test", Type::A) else {
            panic!("a hit while the prefetch is in flight is still a hit");
        };
        assert_eq!(again.answers[0].ttl, 9);
        // The upstream's answer refreshes the cache; nobody gets it now.
        let owner = q.questions[0].name.to_string();
        let out = e.step(
            91_500,
            vec![Inbound::Reply {
                query: *num,
                data: response(q, Rcode::NOERROR, vec![a(&owner, 100, 2)], vec![])
                    .to_bytes()
                    .unwrap(),
            }],
        );
        assert!(
            !out.iter().any(|o| matches!(o, Outbound::Answer { .. })),
            "{out:?}"
        );
        // Past the first answer's expiry, the refreshed one is served.
        let fresh = answered(e.ask(150_000, 6, "p.test", Type::A));
        assert_eq!(fresh.answers[0].ttl, 42);
        assert_eq!(fresh.answers[0].data, RData::A(Ipv4Addr::new(192, 0, 2, 2)));
        let s = e.status(200_000);
        assert_eq!(s.counters.prefetches, 1);
        assert_eq!(s.counters.upstream_queries, 2);
    }
}
