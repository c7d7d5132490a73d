//! The forwarding core through the engine contract: client queries and
//! upstream replies in as the network role batches them, answers and
//! upstream queries out, in virtual time.

use std::net::Ipv4Addr;

use dns_engine::{Action, Event, Forwarder, Inbound, Outbound, Reason, Start, Transport};
use dns_wire::{Edns, Message, Name, Opcode, RData, Rcode, Record, Type};
use mirage_engine::{Engine, Instant};

fn start(upstreams: usize) -> (Forwarder, Vec<Action>) {
    let mut out = Vec::new();
    let start = Start {
        upstreams: (0..upstreams)
            .map(|i| format!("192.0.2.{}:53", i + 1).parse().unwrap())
            .collect(),
        ..Start::default()
    };
    let f = Forwarder::start(start, Instant(1000), [7; 32], &mut out);
    (f, out)
}

fn query(id: u16, name: &str, qtype: Type, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query(id, Name::from_ascii(name).unwrap(), qtype);
    m.edns = edns.map(Edns::new);
    m.to_bytes().unwrap()
}

fn q(client: u64, data: Vec<u8>) -> Inbound {
    Inbound::Query {
        client,
        transport: Transport::Udp,
        data,
    }
}

/// The outbound items of `actions`, batches flattened.
fn items(actions: Vec<Action>) -> Vec<Outbound> {
    actions
        .into_iter()
        .flat_map(|a| match a {
            Action::Batch(items) => items,
            Action::Status(_) => vec![],
        })
        .collect()
}

fn step(f: &mut Forwarder, now: u64, inbound: Vec<Inbound>) -> (Vec<Outbound>, Vec<(Reason, u32)>) {
    let mut out = Vec::new();
    let refused = f.handle(Instant(now), Event::Batch(inbound), &mut out);
    (items(out), refused.err().map(|r| r.counts).unwrap_or_default())
}

/// The single upstream query among `out`: its number, upstream, message.
fn upstream_query(out: &[Outbound]) -> (u32, u8, Message) {
    let qs: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Query {
                query,
                upstream,
                data,
            } => Some((*query, *upstream, Message::parse(data).unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(qs.len(), 1, "{out:?}");
    qs.into_iter().next().unwrap()
}

fn answer_of(out: &[Outbound], client: u64) -> Message {
    let a: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Answer { client: c, data } if *c == client => Some(Message::parse(data).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(a.len(), 1, "one answer for client {client}: {out:?}");
    a.into_iter().next().unwrap()
}

/// The upstream's answer to `sent`: `records` A records for its name.
fn reply(sent: &Message, records: usize) -> Vec<u8> {
    let mut r = sent.clone();
    r.header.response = true;
    r.header.recursion_available = true;
    let name = sent.questions[0].name.clone();
    r.answers = (0..records)
        .map(|i| Record {
            name: name.clone(),
            class: dns_wire::Class::IN,
            ttl: 300,
            data: RData::A(Ipv4Addr::new(192, 0, 2, (i % 250) as u8)),
        })
        .collect();
    r.to_bytes().unwrap()
}

#[test]
fn a_query_goes_upstream_with_a_fresh_id_and_edns_and_the_answer_comes_back_with_the_clients() {
    let (mut f, first) = start(1);
    assert!(matches!(first[..], [Action::Status(_)]));
    let (out, refused) = step(
        &mut f,
        1000,
        vec![q(1, query(0x1234, "www.Example.test", Type::A, None))],
    );
    assert!(refused.is_empty());
    let (num, upstream, sent) = upstream_query(&out);
    assert_eq!(upstream, 0);
    assert_ne!(
        sent.header.id, 0x1234,
        "a fresh id (the seed makes it fixed here)"
    );
    assert!(sent.header.recursion_desired && !sent.header.response);
    assert_eq!(sent.edns.as_ref().unwrap().udp_payload_size, 1232);
    let question = &sent.questions[0];
    assert_eq!(question.name, Name::from_ascii("www.example.test").unwrap());
    assert!(
        !question
            .name
            .eq_exact(&Name::from_ascii("www.Example.test").unwrap()),
        "0x20: the case is drawn afresh"
    );

    // A reply with another id, or the question in another case: refused,
    // and the query stays outstanding.
    let mut forged = sent.clone();
    forged.header.id ^= 1;
    let mut lower = sent.clone();
    lower.questions[0].name = Name::from_ascii("www.example.test").unwrap();
    let (out, refused) = step(
        &mut f,
        1010,
        vec![
            Inbound::Reply {
                query: num,
                data: reply(&forged, 1),
            },
            Inbound::Reply {
                query: num,
                data: reply(&lower, 1),
            },
            Inbound::Reply {
                query: num,
                data: b"junk".to_vec(),
            },
            Inbound::Reply {
                query: num.wrapping_add(1),
                data: reply(&sent, 1),
            },
        ],
    );
    assert!(out.is_empty(), "{out:?}");
    let mut refused = refused;
    refused.sort();
    assert_eq!(
        refused,
        [
            (Reason::UnknownQuery, 1),
            (Reason::MalformedReply, 1),
            (Reason::MismatchedReply, 2)
        ]
    );

    let (out, refused) = step(
        &mut f,
        1020,
        vec![Inbound::Reply {
            query: num,
            data: reply(&sent, 2),
        }],
    );
    assert!(refused.is_empty());
    assert!(out.contains(&Outbound::Close { query: num }));
    let a = answer_of(&out, 1);
    assert_eq!(a.header.id, 0x1234);
    assert!(a.header.response && a.header.recursion_available);
    assert!(
        a.questions[0]
            .name
            .eq_exact(&Name::from_ascii("www.Example.test").unwrap())
    );
    assert_eq!(a.answers.len(), 2);
    assert!(
        a.answers[0]
            .name
            .eq_exact(&Name::from_ascii("www.Example.test").unwrap())
    );
    assert!(a.edns.is_none(), "the client sent no EDNS");
    // A late duplicate is for a query no longer in flight.
    let (_, refused) = step(
        &mut f,
        1030,
        vec![Inbound::Reply {
            query: num,
            data: reply(&sent, 2),
        }],
    );
    assert_eq!(refused, [(Reason::UnknownQuery, 1)]);
}

#[test]
fn malformed_and_unsupported_queries_are_answered_formerr_and_notimp() {
    let (mut f, _) = start(1);
    let mut two = Message::parse(&query(1, "a.test", Type::A, None)).unwrap();
    two.questions.push(two.questions[0].clone());
    let mut status = Message::parse(&query(2, "a.test", Type::A, None)).unwrap();
    status.header.opcode = 2;
    let mut trailing = query(3, "a.test", Type::A, None);
    trailing.push(0);
    let mut response = query(4, "a.test", Type::A, None);
    response[2] |= 0x80;
    let mut new_edns = Message::parse(&query(5, "a.test", Type::A, Some(1232))).unwrap();
    new_edns.edns.as_mut().unwrap().version = 1;
    let (out, refused) = step(
        &mut f,
        1000,
        vec![
            q(1, two.to_bytes().unwrap()),
            q(2, status.to_bytes().unwrap()),
            q(3, trailing),
            q(4, response),
            q(5, new_edns.to_bytes().unwrap()),
            q(6, query(6, "a.test", Type(252), None)),
        ],
    );
    assert_eq!(refused, [(Reason::NotAQuery, 1)]);
    assert!(out.contains(&Outbound::Drop { client: 4 }));
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Query { .. })),
        "nothing went upstream"
    );
    assert_eq!(answer_of(&out, 1).rcode(), Rcode::FORMERR);
    let notimp = answer_of(&out, 2);
    assert_eq!(
        (notimp.rcode(), Opcode(notimp.header.opcode)),
        (Rcode::NOTIMP, Opcode(2))
    );
    assert_eq!(answer_of(&out, 3).rcode(), Rcode::FORMERR);
    assert_eq!(answer_of(&out, 5).rcode(), Rcode::BADVERS);
    assert_eq!(answer_of(&out, 6).rcode(), Rcode::NOTIMP);
    for c in [1, 2, 3, 5, 6] {
        assert_eq!(answer_of(&out, c).header.id, c as u16);
    }
}

#[test]
fn a_silent_upstream_is_followed_by_the_next_then_servfail() {
    let (mut f, _) = start(2);
    let (out, _) = step(&mut f, 1000, vec![q(9, query(9, "a.test", Type::A, Some(1232)))]);
    let (first, up, _) = upstream_query(&out);
    assert_eq!(up, 0);
    // The status is due first (every second), then the attempt's end.
    assert!(f.poll_at() <= Instant(2500));
    let mut out = Vec::new();
    f.on_timer(Instant(2499), &mut out);
    assert!(items(out).is_empty(), "1.5 s per attempt");
    let mut out = Vec::new();
    f.on_timer(Instant(2500), &mut out);
    let out = items(out);
    assert!(out.contains(&Outbound::Close { query: first }));
    let (second, up, _) = upstream_query(&out);
    assert_eq!(up, 1);
    // The network role says the second one failed (ICMP unreachable).
    let (out, _) = step(&mut f, 2600, vec![Inbound::Failed { query: second }]);
    let a = answer_of(&out, 9);
    assert_eq!(a.rcode(), Rcode::SERVFAIL);
    assert_eq!(a.edns.as_ref().unwrap().udp_payload_size, 1232);
    let mut out = Vec::new();
    f.on_timer(Instant(60_000), &mut out);
    assert!(items(out).is_empty(), "nothing left to time out");
}

#[test]
fn without_an_upstream_a_query_gets_servfail_at_once() {
    let (mut f, _) = start(0);
    let (out, refused) = step(&mut f, 1000, vec![q(1, query(0x42, "a.test", Type::A, None))]);
    assert!(refused.is_empty());
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Query { .. })),
        "{out:?}"
    );
    let a = answer_of(&out, 1);
    assert_eq!((a.header.id, a.rcode()), (0x42, Rcode::SERVFAIL));
}

#[test]
fn identical_questions_in_flight_share_one_upstream_query() {
    let (mut f, _) = start(1);
    let (out, _) = step(
        &mut f,
        1000,
        vec![
            q(1, query(11, "a.test", Type::A, None)),
            q(2, query(22, "A.TEST", Type::A, None)),
            q(3, query(33, "a.test", Type::AAAA, None)),
        ],
    );
    let queries: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Outbound::Query { .. }))
        .collect();
    assert_eq!(queries.len(), 2, "A merged, AAAA apart: {out:?}");
    let (num, sent) = out
        .iter()
        .find_map(|o| match o {
            Outbound::Query { query, data, .. } => {
                let m = Message::parse(data).unwrap();
                (m.questions[0].qtype == Type::A).then_some((*query, m))
            }
            _ => None,
        })
        .unwrap();
    let (out, _) = step(
        &mut f,
        1010,
        vec![Inbound::Reply {
            query: num,
            data: reply(&sent, 1),
        }],
    );
    let (a1, a2) = (answer_of(&out, 1), answer_of(&out, 2));
    assert_eq!((a1.header.id, a2.header.id), (11, 22));
    assert!(
        a2.questions[0]
            .name
            .eq_exact(&Name::from_ascii("A.TEST").unwrap())
    );
}

#[test]
fn an_answer_too_large_for_the_client_is_truncated_and_a_large_batch_is_split() {
    let (mut f, _) = start(1);
    let (out, _) = step(
        &mut f,
        1000,
        vec![
            q(1, query(1, "big.test", Type::A, None)),
            q(2, query(2, "big.test", Type::A, Some(4096))),
            Inbound::Query {
                client: 3,
                transport: Transport::Tcp,
                data: query(3, "big.test", Type::A, None),
            },
        ],
    );
    let (num, _, sent) = upstream_query(&out);
    // 60 A records: 60 * 16 = 960 octets of answers, over 512.
    let mut actions = Vec::new();
    f.handle(
        Instant(1010),
        Event::Batch(vec![Inbound::Reply {
            query: num,
            data: reply(&sent, 60),
        }]),
        &mut actions,
    )
    .unwrap();
    let out = items(actions);
    let classic = answer_of(&out, 1);
    assert!(classic.header.truncated && classic.answers.is_empty());
    let edns = answer_of(&out, 2);
    assert!(!edns.header.truncated);
    assert_eq!(edns.answers.len(), 60);
    assert_eq!(answer_of(&out, 3).answers.len(), 60, "TCP: no truncation");
}

#[test]
fn batches_fit_the_channel_cap_under_a_flood() {
    let (mut f, _) = start(1);
    let inbound: Vec<Inbound> = (0..200)
        .map(|i| q(i, query(i as u16, &format!("n{i}.test"), Type::A, Some(1232))))
        .collect();
    let mut out = Vec::new();
    let _ = f.handle(Instant(1000), Event::Batch(inbound), &mut out);
    let batches = out.iter().filter(|a| matches!(a, Action::Batch(_))).count();
    assert!(batches > 1, "200 queries need more than one batch");
    for a in out {
        let msg = mirage_engine::FromEngine::<Action, dns_engine::Refusal>::Action(a);
        assert!(mirage_engine::codec::encode(&msg).is_ok());
    }
}

/// The upstream's answer to `sent` with one A record of `ttl`, or
/// NXDOMAIN.
fn reply_with(sent: &Message, ttl: u32, nxdomain: bool) -> Vec<u8> {
    let mut r = Message::parse(&reply(sent, usize::from(!nxdomain))).unwrap();
    for rec in &mut r.answers {
        rec.ttl = ttl;
    }
    if nxdomain {
        r.header.rcode = 3;
    }
    r.to_bytes().unwrap()
}

#[test]
fn positive_answers_are_served_from_the_cache_for_their_ttl_counted_down() {
    let (mut f, _) = start(1);
    let (out, _) = step(&mut f, 1000, vec![q(1, query(1, "a.test", Type::A, None))]);
    let (num, _, sent) = upstream_query(&out);
    step(
        &mut f,
        1010,
        vec![Inbound::Reply {
            query: num,
            data: reply_with(&sent, 300, false),
        }],
    );

    // 10 s later, another spelling: from the cache, 290 s left, in the
    // client's spelling, not authoritative.
    let (out, _) = step(&mut f, 11_010, vec![q(2, query(2, "A.Test", Type::A, None))]);
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Query { .. })),
        "{out:?}"
    );
    let a = answer_of(&out, 2);
    assert_eq!((a.header.id, a.answers.len(), a.answers[0].ttl), (2, 1, 290));
    assert!(a.answers[0].name.eq_exact(&Name::from_ascii("A.Test").unwrap()));
    assert!(!a.header.authoritative);
    // Another type, or the DO bit, is another question.
    let mut do_bit = Message::parse(&query(3, "a.test", Type::A, Some(1232))).unwrap();
    do_bit.edns.as_mut().unwrap().dnssec_ok = true;
    let (out, _) = step(&mut f, 11_020, vec![q(3, do_bit.to_bytes().unwrap())]);
    let (num, _, sent) = upstream_query(&out);
    assert!(sent.edns.unwrap().dnssec_ok);
    let (out, _) = step(&mut f, 11_030, vec![Inbound::Failed { query: num }]);
    let (num, _, _) = upstream_query(&out);
    let (out, _) = step(&mut f, 11_040, vec![Inbound::Failed { query: num }]);
    assert_eq!(answer_of(&out, 3).rcode(), Rcode::SERVFAIL);
    // Expired: upstream again.
    let (out, _) = step(&mut f, 301_010, vec![q(4, query(4, "a.test", Type::A, None))]);
    upstream_query(&out);
}

#[test]
fn errors_and_zero_ttls_are_not_cached_and_a_zero_budget_caches_nothing() {
    for (ttl, nxdomain, bytes) in [(0, false, 4 << 20), (300, true, 4 << 20), (300, false, 0)] {
        let mut out = Vec::new();
        let start = Start {
            upstreams: vec!["192.0.2.1:53".parse().unwrap()],
            cache_bytes: bytes,
            ..Start::default()
        };
        let mut f = Forwarder::start(start, Instant(1000), [1; 32], &mut out);
        let (out, _) = step(&mut f, 1000, vec![q(1, query(1, "a.test", Type::A, None))]);
        let (num, _, sent) = upstream_query(&out);
        step(
            &mut f,
            1010,
            vec![Inbound::Reply {
                query: num,
                data: reply_with(&sent, ttl, nxdomain),
            }],
        );
        let (out, _) = step(&mut f, 2000, vec![q(2, query(2, "a.test", Type::A, None))]);
        upstream_query(&out);
    }
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp_of_the_same_upstream() {
    let (mut f, _) = start(2);
    let (out, _) = step(
        &mut f,
        1000,
        vec![Inbound::Query {
            client: 1,
            transport: Transport::Tcp,
            data: query(1, "big.test", Type::A, None),
        }],
    );
    let (udp, _, sent) = upstream_query(&out);
    let mut truncated = Message::parse(&reply(&sent, 0)).unwrap();
    truncated.header.truncated = true;
    let (out, refused) = step(
        &mut f,
        1010,
        vec![Inbound::Reply {
            query: udp,
            data: truncated.to_bytes().unwrap(),
        }],
    );
    assert!(refused.is_empty());
    assert!(out.contains(&Outbound::Close { query: udp }));
    assert!(
        !out.iter().any(|o| matches!(o, Outbound::Answer { .. })),
        "no answer yet: {out:?}"
    );
    let (tcp, upstream, over_tcp) = out
        .iter()
        .find_map(|o| match o {
            Outbound::TcpQuery {
                query,
                upstream,
                data,
            } => Some((*query, *upstream, Message::parse(data).unwrap())),
            _ => None,
        })
        .expect("a TCP query");
    assert_eq!(upstream, 0, "the same upstream");
    assert_ne!(over_tcp.header.id, sent.header.id, "a fresh id");
    // 200 records: 3.2 KB, more than UDP carries.
    let (out, _) = step(
        &mut f,
        1020,
        vec![Inbound::Reply {
            query: tcp,
            data: reply(&over_tcp, 200),
        }],
    );
    assert!(out.contains(&Outbound::Close { query: tcp }));
    let a = answer_of(&out, 1);
    assert_eq!(
        (a.header.id, a.header.truncated, a.answers.len()),
        (1, false, 200)
    );
}

/// `max_pending` bounds the clients waiting: past it a cache miss gets
/// SERVFAIL at once (in the batch that crosses it, too), a cache hit is
/// still answered, merging into a flight counts, and an answered flight
/// makes room again.
#[test]
fn max_pending_bounds_the_waiting_clients_but_not_the_cache() {
    let start = Start {
        upstreams: vec!["192.0.2.1:53".parse().unwrap()],
        max_pending: 4,
        ..Start::default()
    };
    let mut f = Forwarder::start(start, Instant(1000), [7; 32], &mut Vec::new());
    // A cached name first.
    let (out, _) = step(&mut f, 1000, vec![q(1, query(1, "hit.test", Type::A, None))]);
    let (num, _, sent) = upstream_query(&out);
    step(
        &mut f,
        1010,
        vec![Inbound::Reply {
            query: num,
            data: reply(&sent, 1),
        }],
    );
    // Three misses and a client joining one of them: four waiting. Then,
    // in the same batch, a fifth miss, a sixth joining, and a hit.
    let (out, _) = step(
        &mut f,
        1020,
        vec![
            q(10, query(10, "m1.test", Type::A, None)),
            q(11, query(11, "m2.test", Type::A, None)),
            q(12, query(12, "m3.test", Type::A, None)),
            q(13, query(13, "m1.test", Type::A, None)),
            q(14, query(14, "m4.test", Type::A, None)),
            q(15, query(15, "m2.test", Type::A, None)),
            q(16, query(16, "hit.test", Type::A, None)),
        ],
    );
    let asked: Vec<(u32, Message)> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Query { query, data, .. } => Some((*query, Message::parse(data).unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 3, "m1, m2, m3 asked, m4 not: {out:?}");
    for c in [14, 15] {
        assert_eq!(answer_of(&out, c).rcode(), Rcode::SERVFAIL, "client {c}");
    }
    assert_eq!(answer_of(&out, 16).rcode(), Rcode::NOERROR);
    assert_eq!(answer_of(&out, 16).answers.len(), 1);
    // Still full in the next batch; a hit still answered.
    let (out, _) = step(
        &mut f,
        1030,
        vec![
            q(20, query(20, "m5.test", Type::A, None)),
            q(21, query(21, "hit.test", Type::A, None)),
        ],
    );
    assert_eq!(answer_of(&out, 20).rcode(), Rcode::SERVFAIL);
    assert_eq!(answer_of(&out, 21).rcode(), Rcode::NOERROR);
    // m1's answer frees its two clients: two more may wait.
    let (num, m1) = asked
        .iter()
        .find(|(_, m)| m.questions[0].name == Name::from_ascii("m1.test").unwrap())
        .unwrap();
    let (out, _) = step(
        &mut f,
        1040,
        vec![Inbound::Reply {
            query: *num,
            data: reply(m1, 1),
        }],
    );
    for c in [10, 13] {
        assert_eq!(answer_of(&out, c).rcode(), Rcode::NOERROR, "client {c}");
    }
    let (out, _) = step(
        &mut f,
        1050,
        vec![
            q(30, query(30, "m6.test", Type::A, None)),
            q(31, query(31, "m7.test", Type::A, None)),
            q(32, query(32, "m8.test", Type::A, None)),
        ],
    );
    let asked = out.iter().filter(|o| matches!(o, Outbound::Query { .. })).count();
    assert_eq!(asked, 2, "{out:?}");
    assert_eq!(answer_of(&out, 32).rcode(), Rcode::SERVFAIL);
}
